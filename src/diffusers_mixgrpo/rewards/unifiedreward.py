"""UnifiedReward: a vision-language judge (CodeGoat24/UnifiedReward-*) served over an OpenAI-compatible chat API
(vLLM, sglang), asked for a 1-5 "Final Score" per image, as in MixGRPO's and Flow-GRPO's reference code.

Requests are sent concurrently (asyncio + a thread pool over the standard library's HTTP client, so no extra
dependency), each with a timeout, retried with exponential backoff on timeouts, connection errors, HTTP 408/429/5xx,
and malformed answers. A request that still fails raises `UnifiedRewardError` naming the image, the prompt and the
last error or answer: a reward is never silently replaced by a default value.

Threads: one pool of `max_concurrency` worker threads per `UnifiedReward`, reused across calls (`close()` ends it).
A request that reaches its timeout has its connection shut down, so its worker thread returns at once instead of
waiting on a slow server: calls against a server that never answers do not pile up threads.

An API key other than the placeholder "EMPTY" is only sent over HTTPS or to this machine (127.0.0.0/8, ::1,
localhost); sending it in clear text to another host needs `allow_insecure_api_key=True`.

Serving the judge, e.g.::

    vllm serve CodeGoat24/UnifiedReward-qwen-7b --port 8000
"""

import asyncio
import concurrent.futures
import http.client
import json
import os
import re
import socket
import threading
import urllib.parse
from collections.abc import Sequence
from typing import Optional, Union

import torch
from PIL import Image

from ._http import image_data_url, is_loopback
from .base import ImageBatch, check_prompts, resolve_device, to_pil_images

UNIFIEDREWARD_MODEL = "CodeGoat24/UnifiedReward-qwen-7b"
UNIFIEDREWARD_URL = "http://127.0.0.1:8000/v1"

# The point-score question of the reference implementations; {prompt} is the caption.
UNIFIEDREWARD_TEMPLATE = (
    "<image>\nYou are given a text caption and a generated image based on that caption. Your task is to evaluate "
    "this image based on two key criteria:\n1. Alignment with the Caption: Assess how well this image aligns with "
    "the provided caption. Consider the accuracy of depicted objects, their relationships, and attributes as "
    "described in the caption.\n2. Overall Image Quality: Examine the visual quality of this image, including "
    "clarity, detail preservation, color accuracy, and overall aesthetic appeal.\nBased on the above criteria, "
    "assign a score from 1 to 5 after 'Final Score:'.\nYour task is provided as follows:\nText Caption: [{prompt}]"
)

_SCORE = re.compile(r"Final Score\s*:\s*\**\s*([-+]?\d+(?:\.\d+)?)", re.IGNORECASE)
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class UnifiedRewardError(RuntimeError):
    """A judge request failed for good (after retries), or the server refused it."""


class MalformedAnswerError(UnifiedRewardError):
    """The judge's answer holds no "Final Score: x" with x in the allowed range."""


class _Retryable(Exception):
    pass


def parse_score(text: str, low: float = 1.0, high: float = 5.0) -> float:
    """The number after the last "Final Score:" in `text`; raises `MalformedAnswerError` if absent or outside
    [`low`, `high`]."""
    if not isinstance(text, str):
        raise MalformedAnswerError(f"Expected the judge's answer as text, got {type(text).__name__}.")
    matches = _SCORE.findall(text)
    if not matches:
        raise MalformedAnswerError(f"No 'Final Score: <number>' in the judge's answer: {text[:200]!r}.")
    score = float(matches[-1])
    if not low <= score <= high:
        raise MalformedAnswerError(f"Final Score {score} is outside [{low}, {high}] in the answer: {text[:200]!r}.")
    return score


class _Request:
    """One HTTP attempt's socket, so that a timed-out attempt can be aborted from the event loop's thread (the
    response keeps reading from this socket after `HTTPConnection` hands it over)."""

    def __init__(self):
        self.sock: Optional[socket.socket] = None
        self.aborted = False
        self.lock = threading.Lock()

    def attach(self, sock: socket.socket) -> None:
        with self.lock:
            self.sock = sock
            aborted = self.aborted
        if aborted:
            self.abort()
            raise _Retryable("aborted before it started")

    def abort(self) -> None:
        """Shut the socket down: a worker blocked in `recv` returns at once."""
        with self.lock:
            self.aborted = True
            sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class UnifiedReward:
    """Scores images with a UnifiedReward judge served behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        device (`str` or `torch.device`, *optional*): device of the returned scores (the model runs on the server).
        dtype (`torch.dtype`, *optional*): accepted for the factory signature; unused.
        base_url (`str`, *optional*): the API root, e.g. ``"http://127.0.0.1:8000/v1"``; defaults to the
            ``UNIFIEDREWARD_BASE_URL`` environment variable, then to that address.
        model (`str`, *optional*): the served model name; defaults to ``UNIFIEDREWARD_MODEL``, then
            ``"CodeGoat24/UnifiedReward-qwen-7b"``.
        api_key (`str`, *optional*): sent as a bearer token; defaults to ``UNIFIEDREWARD_API_KEY``, then ``"EMPTY"``.
        image_size (`int`, *optional*, defaults to 512): images are resized to this square before upload (as the
            reference code does); `None` sends them unchanged.
        max_concurrency (`int`, defaults to 16): requests in flight at once.
        timeout (`float`, defaults to 120.0): seconds per request attempt.
        max_retries (`int`, defaults to 3): retries after the first attempt.
        backoff (`float`, defaults to 1.0): the wait before retry k is ``min(max_backoff, backoff * 2**k)`` seconds.
        max_backoff (`float`, defaults to 30.0): the longest wait between attempts.
        normalize (`bool`, defaults to `True`): divide the 1-5 score by 5 (the reference code's scale, in [0.2, 1]).
        allow_insecure_api_key (`bool`, defaults to `False`): allow sending a real `api_key` over plain HTTP to a
            host other than this machine (it would travel in clear text).
        temperature (`float`, defaults to 0.0): sampling temperature of the judge.
        max_tokens (`int`, *optional*): cap on the answer's length.
        prompt_template (`str`): the question, with ``{prompt}`` where the caption goes.
    """

    name = "unifiedreward"

    def __init__(
        self,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        base_url: Optional[str] = None,
        model: Optional[str] = None,
        api_key: Optional[str] = None,
        image_size: Optional[int] = 512,
        max_concurrency: int = 16,
        timeout: float = 120.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        normalize: bool = True,
        temperature: float = 0.0,
        max_tokens: Optional[int] = None,
        prompt_template: str = UNIFIEDREWARD_TEMPLATE,
        allow_insecure_api_key: bool = False,
    ):
        if max_concurrency < 1 or max_retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError(
                f"UnifiedReward needs max_concurrency >= 1, max_retries >= 0, timeout > 0 and backoff >= 0; got "
                f"max_concurrency={max_concurrency}, max_retries={max_retries}, timeout={timeout}, backoff={backoff}."
            )
        if "{prompt}" not in prompt_template:
            raise ValueError("prompt_template must contain '{prompt}'.")
        self.device = resolve_device(device)
        base_url = base_url or os.environ.get("UNIFIEDREWARD_BASE_URL", UNIFIEDREWARD_URL)
        self.url = base_url.rstrip("/") + "/chat/completions"
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url={base_url!r} is not an http(s) URL such as 'http://127.0.0.1:8000/v1'.")
        self._parts = parts
        self.model = model or os.environ.get("UNIFIEDREWARD_MODEL", UNIFIEDREWARD_MODEL)
        self.api_key = api_key or os.environ.get("UNIFIEDREWARD_API_KEY", "EMPTY")
        if (
            self.api_key != "EMPTY"
            and parts.scheme == "http"
            and not is_loopback(parts.hostname)
            and not allow_insecure_api_key
        ):
            raise ValueError(
                f"Refusing to send the UnifiedReward API key in clear text to {parts.hostname!r} over plain HTTP; use "
                f"an https:// base_url, or pass allow_insecure_api_key=True if that network is trusted."
            )
        self.image_size = image_size
        self.max_concurrency = max_concurrency
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.normalize = normalize
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.prompt_template = prompt_template
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._pool_lock = threading.Lock()

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.max_concurrency, thread_name_prefix="unifiedreward"
                )
            return self._pool

    def close(self) -> None:
        """End the worker threads (a later call starts new ones)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _payload(self, image: Image.Image, prompt: str) -> bytes:
        if self.image_size is not None:
            image = image.resize((self.image_size, self.image_size), Image.BICUBIC)
        body = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                        {"type": "text", "text": self.prompt_template.format(prompt=prompt)},
                    ],
                }
            ],
            "temperature": self.temperature,
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return json.dumps(body).encode("utf-8")

    def _post(self, payload: bytes, request: Optional[_Request] = None) -> str:
        """One blocking request; returns the answer text. `_Retryable` for transient failures."""
        parts = self._parts
        conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(parts.hostname, parts.port, timeout=self.timeout)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"}
        try:
            conn.connect()
            if request is not None:
                request.attach(conn.sock)
            conn.request("POST", path, body=payload, headers=headers)
            response = conn.getresponse()
            status, raw = response.status, response.read()
        except (OSError, http.client.HTTPException) as err:
            raise _Retryable(f"{type(err).__name__} talking to {self.url}: {err}") from err
        finally:
            conn.close()
        if status >= 400:
            detail = raw[:300].decode("utf-8", "replace")
            if status in _RETRY_STATUS:
                raise _Retryable(f"HTTP {status} from {self.url}: {detail}")
            raise UnifiedRewardError(f"HTTP {status} from {self.url} (not retried): {detail}")
        try:
            return json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise _Retryable(f"Not an OpenAI chat completion response: {raw[:200]!r}") from err

    async def _score_one(self, loop, pool, index: int, payload: bytes, prompt: str) -> float:
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            request = _Request()
            try:
                text = await asyncio.wait_for(loop.run_in_executor(pool, self._post, payload, request), self.timeout)
                return parse_score(text)
            except asyncio.TimeoutError:
                request.abort()  # the worker thread returns now instead of waiting on the server
                last = f"timed out after {self.timeout} s"
            except (_Retryable, MalformedAnswerError) as err:
                last = str(err)
            except UnifiedRewardError as err:
                raise UnifiedRewardError(f"Image {index} (prompt {prompt!r}): {err}") from err
        raise UnifiedRewardError(
            f"Image {index} (prompt {prompt!r}) failed after {self.max_retries + 1} attempts; last error: {last}"
        )

    async def ascore(self, images: ImageBatch, prompts: Sequence[str]) -> torch.Tensor:
        """The async form of `__call__`, for callers that already run an event loop."""
        pil = to_pil_images(images)
        texts = check_prompts(prompts, len(pil))
        payloads = [self._payload(im, p) for im, p in zip(pil, texts)]
        loop = asyncio.get_running_loop()
        semaphore = asyncio.Semaphore(self.max_concurrency)
        pool = self._executor()

        async def bounded(i: int) -> float:
            async with semaphore:
                return await self._score_one(loop, pool, i, payloads[i], texts[i])

        results = await asyncio.gather(*(bounded(i) for i in range(len(pil))), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            summary = "\n".join(f"  - {e}" for e in errors[:5])
            more = f"\n  (and {len(errors) - 5} more)" if len(errors) > 5 else ""
            raise UnifiedRewardError(f"{len(errors)} of {len(pil)} UnifiedReward requests failed:\n{summary}{more}")
        scores = torch.tensor(results, dtype=torch.float32)
        return (scores / 5.0 if self.normalize else scores).to(self.device)

    def __call__(self, images: ImageBatch, prompts: Sequence[str]) -> torch.Tensor:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.ascore(images, prompts))
        # Called from inside an event loop (a notebook): run ours in a helper thread.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as helper:
            return helper.submit(asyncio.run, self.ascore(images, prompts)).result()

    def __repr__(self) -> str:
        return f"UnifiedReward(url={self.url!r}, model={self.model!r})"
