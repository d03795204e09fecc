"""Score images on another machine: a small HTTP reward server and the `RemoteReward` client the trainer calls.

Heavy reward models (VLM judges, GenEval pipelines, several scorers at once) can live on other GPUs than the
denoiser. The server wraps any reward (a registered name or a callable); the client sends images in batches, with a
timeout per request and retries with exponential backoff, and fails with one sentence when the server is down.

    # on the reward machine (or another GPU of the same one)
    python -m diffusers_mixgrpo.rewards.remote --reward pickscore --host 0.0.0.0 --port 8700 --batch_size 32
    # in the training config
    rewards: {remote: 1.0}
    reward_kwargs: {remote: {url: "http://reward-host:8700", timeout: 60, max_retries: 2}}

Protocol (JSON over HTTP, stdlib only): `GET /health` -> `{"ok": true, "reward": name}`; `POST /score` with
`{"images": base64 of the (B, H, W, 3) uint8 array, "shape": [B, H, W, 3], "prompts": [...]}` -> `{"scores": [...]}`;
an error is `{"error": message}` with status 400 (bad request) or 500 (the reward raised). Images travel as raw uint8
pixels (lossless: the server scores exactly the pixels a local reward would).
"""

import argparse
import base64
import json
import logging
import threading
import urllib.parse
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

import numpy as np
import torch

from ._http import ServerRefused, ServerUnavailable, request_with_retries
from .base import ImageBatch, check_prompts, to_uint8_hwc

logger = logging.getLogger(__name__)


class RewardServerError(RuntimeError):
    """The reward server could not be reached, timed out, or refused a request (after the retries)."""


def encode_batch(images: ImageBatch, prompts: Sequence[str]) -> bytes:
    pixels = to_uint8_hwc(images)
    prompts = check_prompts(prompts, len(pixels))
    body = {"images": base64.b64encode(pixels.tobytes()).decode("ascii"), "shape": list(pixels.shape)}
    body["prompts"] = prompts
    return json.dumps(body).encode("utf-8")


def decode_batch(body: bytes) -> tuple[np.ndarray, list[str]]:
    data = json.loads(body)
    shape = tuple(int(s) for s in data["shape"])
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"shape must be [B, H, W, 3], got {list(shape)}")
    pixels = np.frombuffer(base64.b64decode(data["images"]), dtype=np.uint8)
    if pixels.size != int(np.prod(shape)):
        raise ValueError(f"{pixels.size} bytes of pixels do not fill shape {list(shape)}")
    prompts = data.get("prompts")
    if not isinstance(prompts, list) or len(prompts) != shape[0]:
        raise ValueError(f"prompts must be a list of {shape[0]} strings")
    return pixels.reshape(shape), [str(p) for p in prompts]


class RewardServer:
    """Serve `reward(images, prompts)` over HTTP (`ThreadingHTTPServer`; one reward call at a time, in order).

    Args:
        reward (`Callable` or `str`): a reward, or the registered name of one (`load_reward(name, **reward_kwargs)`).
        host (`str`, defaults to `"127.0.0.1"`): the address to listen on (`"0.0.0.0"` for other machines).
        port (`int`, defaults to 0): the port (0: a free one; see `url`).
        batch_size (`int`, *optional*): the largest batch given to the reward at once; bigger requests are split.
        reward_kwargs (`dict`, *optional*): options for `load_reward` when `reward` is a name.
    """

    def __init__(
        self,
        reward: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        batch_size: Optional[int] = None,
        reward_kwargs: Optional[dict] = None,
    ):
        if isinstance(reward, str):
            from .registry import load_reward

            name, reward = reward, load_reward(reward, **(reward_kwargs or {}))
        else:
            name = getattr(reward, "__name__", type(reward).__name__)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}.")
        self.reward, self.name, self.batch_size = reward, name, batch_size
        self._lock = threading.Lock()
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):  # quiet: one line per request at DEBUG
                logger.debug("reward server: " + fmt, *args)

            def _reply(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.rstrip("/") == "/health":
                    self._reply(200, {"ok": True, "reward": server.name})
                else:
                    self._reply(404, {"error": f"unknown path {self.path}; use GET /health or POST /score"})

            def do_POST(self):
                if self.path.rstrip("/") != "/score":
                    self._reply(404, {"error": f"unknown path {self.path}; use POST /score"})
                    return
                try:
                    length = int(self.headers.get("Content-Length", 0))
                    pixels, prompts = decode_batch(self.rfile.read(length))
                except Exception as err:
                    self._reply(400, {"error": f"bad request: {type(err).__name__}: {err}"})
                    return
                try:
                    scores = server.score(pixels, prompts)
                except Exception as err:
                    logger.exception("reward %s failed", server.name)
                    self._reply(500, {"error": f"reward {server.name!r} failed: {type(err).__name__}: {err}"})
                    return
                self._reply(200, {"scores": scores})

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def score(self, pixels: np.ndarray, prompts: list[str]) -> list[float]:
        step = self.batch_size or len(pixels) or 1
        out: list[float] = []
        with self._lock:  # one reward call at a time: a GPU model is not re-entrant
            self.requests += 1
            for lo in range(0, len(pixels), step):
                images = torch.from_numpy(pixels[lo : lo + step].copy()).permute(0, 3, 1, 2)
                s = torch.as_tensor(self.reward(images, prompts[lo : lo + step])).reshape(-1).float()
                if s.numel() != len(images):
                    raise ValueError(f"returned {s.numel()} scores for {len(images)} images")
                out.extend(float(v) for v in s)
        return out

    def start(self) -> "RewardServer":
        """Serve in a background thread (returns at once); `stop()` ends it."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="reward-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        logger.info("Serving reward %r at %s", self.name, self.url)
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "RewardServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RemoteReward:
    """A reward scored by a `RewardServer`: `reward(images, prompts) -> (B,) float32` like a local one.

    Args:
        url (`str`): the server, e.g. `"http://reward-host:8700"`.
        batch_size (`int`, defaults to 32): images per request (a batch is sent as several requests in order).
        timeout (`float`, defaults to 60.0): seconds per request attempt (connect + score + reply).
        max_retries (`int`, defaults to 2): retries after a failed attempt (connection refused or reset, timeout,
            HTTP 5xx), waiting `backoff * 2**attempt` seconds in between; a 4xx answer is not retried.
        backoff (`float`, defaults to 0.5): the first wait between attempts.
        check_health (`bool`, defaults to `True`): ask `GET /health` at construction, so that a wrong URL or a server
            that is down fails when the run starts, not at the first reward call.
    """

    def __init__(
        self,
        url: str,
        batch_size: int = 32,
        timeout: float = 60.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        check_health: bool = True,
        device: Any = None,
        dtype: Any = None,
    ):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http(s)://host:port, got {url!r}.")
        if batch_size < 1 or timeout <= 0 or max_retries < 0 or backoff < 0:
            raise ValueError(
                f"RemoteReward needs batch_size >= 1, timeout > 0, max_retries >= 0 and backoff >= 0; got "
                f"batch_size={batch_size}, timeout={timeout}, max_retries={max_retries}, backoff={backoff}."
            )
        self.url, self._parts = url.rstrip("/"), parts
        self.batch_size, self.timeout, self.max_retries, self.backoff = batch_size, timeout, max_retries, backoff
        self.name = "remote"
        self.server_reward: Optional[str] = None
        if check_health:
            health = json.loads(self._request("GET", "/health", None))
            self.server_reward = health.get("reward")

    def _request(self, method: str, path: str, body: Optional[bytes]) -> bytes:
        try:
            return request_with_retries(
                self._parts,
                method,
                path,
                body,
                timeout=self.timeout,
                max_retries=self.max_retries,
                backoff=self.backoff,
            )
        except ServerRefused as err:
            raise RewardServerError(
                f"The reward server at {self.url} refused the request ({err.status}: {err.message})."
            ) from None
        except ServerUnavailable as err:
            raise RewardServerError(
                f"The reward server at {self.url} failed {err.attempts} attempt(s) ({err.last}); is it running "
                f"(python -m diffusers_mixgrpo.rewards.remote --reward NAME --port {self._parts.port}) and reachable "
                f"from here?"
            ) from None

    def __call__(self, images: ImageBatch, prompts: Sequence[str]) -> torch.Tensor:
        pixels = to_uint8_hwc(images)
        prompts = check_prompts(prompts, len(pixels))
        scores: list[float] = []
        for lo in range(0, len(pixels), self.batch_size):
            body = encode_batch(pixels[lo : lo + self.batch_size], prompts[lo : lo + self.batch_size])
            got = json.loads(self._request("POST", "/score", body))["scores"]
            if len(got) != min(self.batch_size, len(pixels) - lo):
                raise RewardServerError(
                    f"The reward server at {self.url} returned {len(got)} scores for "
                    f"{min(self.batch_size, len(pixels) - lo)} images."
                )
            scores.extend(got)
        return torch.tensor(scores, dtype=torch.float32)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a registered reward over HTTP for RemoteReward clients.")
    parser.add_argument("--reward", required=True, help="a registered reward name (see rewards.available_rewards())")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept other machines")
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument("--batch_size", type=int, default=None, help="largest batch per reward call")
    parser.add_argument("--option", action="append", default=[], help="reward option key=value (repeatable)")
    args = parser.parse_args(argv)
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--option takes key=value, got {item!r}")
        options[key] = value
    logging.basicConfig(level=logging.INFO)
    RewardServer(args.reward, args.host, args.port, args.batch_size, options).serve_forever()


if __name__ == "__main__":
    main()
