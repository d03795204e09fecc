"""The HTTP client pieces shared by the rewards that score on a server (`remote`, `vlm_judge`), standard library only.

`request_with_retries` sends one request with a timeout and retries it with exponential back-off on connection errors,
timeouts, HTTP 5xx and replies its `parse` callable rejects; a 4xx answer is the request's fault and is not retried.
Each caller turns the two outcomes, `ServerRefused` and `ServerUnavailable`, into one sentence of its own that names
its URL.
"""

import base64
import http.client
import io
import ipaddress
import json
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Optional, TypeVar

from PIL import Image

T = TypeVar("T")


class ServerRefused(Exception):
    """The server answered 4xx: the request itself is wrong, so it was not retried."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class ServerUnavailable(Exception):
    """Every attempt failed (connection error, timeout, HTTP 5xx, a reply `parse` rejected); `last` says how the last
    one did."""

    def __init__(self, attempts: int, last: str):
        super().__init__(f"{attempts} attempt(s) failed; last: {last}")
        self.attempts, self.last = attempts, last


def error_message(data: bytes) -> str:
    """The error of a JSON error body (`{"error": "..."}`, OpenAI's `{"error": {"message": ...}}` or vLLM's
    `{"message": ...}`), else its first 200 characters."""
    try:
        body = json.loads(data)
        error = body.get("error", body.get("message"))
        if isinstance(error, dict):
            error = error.get("message")
        if isinstance(error, str):
            return error
    except (ValueError, AttributeError):
        pass
    return data[:200].decode("utf-8", "replace")


def request_with_retries(
    parts: urllib.parse.SplitResult,
    method: str,
    path: str,
    body: Optional[bytes],
    *,
    timeout: float,
    max_retries: int,
    backoff: float,
    max_backoff: float = float("inf"),
    headers: Optional[Mapping[str, str]] = None,
    parse: Optional[Callable[[bytes], T]] = None,
) -> T:
    """`method path` on the server of `parts` (a `urllib.parse.urlsplit` result); the body of the 200 reply, through
    `parse` when given.

    Each attempt may take `timeout` seconds per socket operation (connecting, sending, each wait for the reply).
    Before retry k (1, 2, ...) it waits `min(max_backoff, backoff * 2**(k - 1))` seconds. `parse` raising `ValueError`
    (a malformed reply) fails that attempt like a 5xx.

    Raises:
        `ServerRefused`: HTTP 4xx (not retried).
        `ServerUnavailable`: all `max_retries + 1` attempts failed.
    """
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    send_headers = dict(headers or {})
    if body is not None:
        send_headers.setdefault("Content-Type", "application/json")
    last = "no attempt"
    for attempt in range(max_retries + 1):
        if attempt:
            time.sleep(min(max_backoff, backoff * 2 ** (attempt - 1)))
        conn = conn_cls(parts.hostname, parts.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=send_headers)
            response = conn.getresponse()
            data = response.read()
        except TimeoutError:
            last = f"no answer within timeout={timeout:g} s"
            continue
        except (OSError, http.client.HTTPException) as err:  # refused, reset, unreachable, DNS, not HTTP
            last = f"{type(err).__name__}: {err}"
            continue
        finally:
            conn.close()
        if 400 <= response.status < 500:
            raise ServerRefused(response.status, error_message(data))
        if response.status != 200:
            last = f"HTTP {response.status}: {error_message(data)}"
            continue
        if parse is None:
            return data
        try:
            return parse(data)
        except ValueError as err:
            last = f"malformed reply ({err})"
    raise ServerUnavailable(max_retries + 1, last)


def is_loopback(host: Optional[str]) -> bool:
    """Whether `host` is this machine (`localhost`, 127.0.0.0/8, ::1): plain HTTP to it never leaves the machine."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def image_data_url(image: Image.Image) -> str:
    """`image` as a `data:image/png;base64,...` URL, the lossless form of an OpenAI chat API `image_url` part."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
