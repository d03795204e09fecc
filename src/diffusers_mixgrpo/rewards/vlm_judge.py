"""`vlm_judge`: any vision-language model served behind an OpenAI-compatible chat API, asked to judge each image.

One `POST {base_url}/chat/completions` per image (the image as a `data:image/png;base64,...` `image_url` part, then
the question), up to `max_concurrency` in flight: the server (vLLM, SGLang) batches concurrent requests itself. The
reply becomes a score by one of two documented rules:

- `"number"`: the first number in the reply text (or the first group of `number_pattern`); it must lie in
  [`low`, `high`] and is mapped to [0, 1] by `(x - low) / (high - low)`.
- `"yes_no_logprob"`: `P(yes) / (P(yes) + P(no))` from the first generated token's `top_logprobs` (requested with
  `logprobs: true, top_logprobs: N`), summing the token variants that are "yes" / "no" once case, spaces and
  tokenizer word markers are ignored ("Yes", " yes", "YES", "▁no"). A reply without logprobs, or with neither word
  among them, is scored from its text: 1.0 if it starts with "yes", 0.0 if with "no".

A reply the rule cannot read (no number, a number out of range, neither yes nor no) scores NaN, with a warning: the
trainer drops every group holding a non-finite reward from that step's update and stops after
`max_consecutive_bad_groups` such steps in a row (`training/advantages.py:finite_group_mask`). Everything else that
goes wrong is an error, never a made-up score: connection errors, timeouts, HTTP 5xx and replies that are not a chat
completion are retried with exponential back-off, HTTP 4xx is not, and a request that still fails raises
`VLMJudgeError` naming the URL.

The API key is read from the environment variable named by `api_key_env` at each call and sent as
`Authorization: Bearer ...`; the reward keeps only the variable's name, so the key is in no attribute, `repr`,
pickle, log or error message (an error body that echoes it is redacted), and a run config saves `api_key_env`, never
the key.
"""

import json
import logging
import math
import os
import re
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Union

import torch
from PIL import Image

from ._http import ServerRefused, ServerUnavailable, image_data_url, is_loopback, request_with_retries
from .base import ImageBatch, check_prompts, resolve_device, to_pil_images

logger = logging.getLogger(__name__)

SCORE_RULES = ("number", "yes_no_logprob")

NUMBER_TEMPLATE = (
    'This image was generated for the caption "{prompt}". Rate how well it matches the caption and how good it looks, '
    "on a scale from {low:g} to {high:g}. Answer with the number only."
)
YES_NO_TEMPLATE = 'Does this image match the caption "{prompt}"? Answer yes or no.'

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_YES_NO_TEXT = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


class VLMJudgeError(RuntimeError):
    """A judge request failed for good (after the retries), or the server refused it."""


def parse_number(text: str, low: float, high: float, pattern: Union[str, re.Pattern, None] = None) -> float:
    """The first number of `text` (the first group of `pattern` when it has one) mapped from [`low`, `high`] to
    [0, 1]; NaN when there is none or it lies outside the range."""
    regex = _NUMBER if pattern is None else re.compile(pattern)
    match = regex.search(text or "")
    if match is None:
        return math.nan
    try:
        value = float(match.group(1) if regex.groups else match.group(0))
    except (TypeError, ValueError):
        return math.nan
    if not low <= value <= high:
        return math.nan
    return (value - low) / (high - low)


def _word(token: str) -> str:
    return token.replace("\u2581", " ").replace("\u0120", " ").strip().lower()


def yes_probability(choice: dict) -> tuple[float, bool]:
    """`(P(yes) / (P(yes) + P(no)), from_logprobs)` for one chat-completion `choice`; NaN if the reply says neither.

    Read from the first token's `top_logprobs` (and the token itself) when the server returned them; otherwise from the
    text (1.0 for "yes...", 0.0 for "no...")."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if isinstance(content, list) and content and isinstance(content[0], dict):
        first = content[0]
        candidates = {first.get("token"): first.get("logprob")}
        candidates.update(
            {c.get("token"): c.get("logprob") for c in first.get("top_logprobs") or [] if isinstance(c, dict)}
        )
        mass = {"yes": 0.0, "no": 0.0}
        for token, logprob in candidates.items():
            word = _word(token) if isinstance(token, str) else ""
            if word in mass and isinstance(logprob, (int, float)):
                mass[word] += math.exp(logprob)
        if mass["yes"] + mass["no"] > 0:
            return mass["yes"] / (mass["yes"] + mass["no"]), True
    match = _YES_NO_TEXT.match(choice["message"].get("content") or "")
    if match is None:
        return math.nan, False
    return (1.0 if match.group(1).lower() == "yes" else 0.0), False


def _first_choice(data: bytes) -> dict:
    """The first choice of a chat-completion reply; `ValueError` when the body is not one (a malformed reply)."""
    try:
        choice = json.loads(data)["choices"][0]
        if not isinstance(choice["message"], dict) or not isinstance(
            choice["message"].get("content", ""), (str, type(None))
        ):
            raise TypeError("message is not an object with a text content")
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise ValueError(f"not a chat completion: {data[:120]!r}") from err
    return choice


def _redact(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text


class VLMJudgeReward:
    """Scores images with a vision-language model behind an OpenAI-compatible `/v1/chat/completions` endpoint.

    Args:
        model (`str`): the served model name (vLLM's `--served-model-name`, else the model path it serves).
        base_url (`str`, defaults to `"http://127.0.0.1:8000/v1"`): the API root; requests go to
            `{base_url}/chat/completions`.
        score (`str`, defaults to `"number"`): the score rule, `"number"` or `"yes_no_logprob"` (module docstring).
        prompt_template (`str`, *optional*): the question; `{prompt}` is the caption, `{low}` and `{high}` the range
            (write literal braces as `{{`/`}}`). Defaults to `NUMBER_TEMPLATE` or `YES_NO_TEMPLATE`.
        system_prompt (`str`, *optional*): a system message sent before the question.
        low (`float`, defaults to 0.0), high (`float`, defaults to 10.0): the range of the `"number"` rule.
        number_pattern (`str`, *optional*): a regular expression for the `"number"` rule, e.g.
            `r"Final Score:\\s*([\\d.]+)"`; its first group (or whole match) is the number. Default: any number.
        top_logprobs (`int`, defaults to 20): alternatives per token asked for by `"yes_no_logprob"` (vLLM's default
            `--max-logprobs` is 20).
        max_tokens (`int`, *optional*): the reply's length cap; default 32 for `"number"`, 1 for `"yes_no_logprob"`.
        temperature (`float`, defaults to 0.0): sampling temperature (0: the same image gets the same score).
        max_image_size (`int`, *optional*): images with a longer side are shrunk to it (aspect kept) before upload;
            `None` sends them as they are.
        max_concurrency (`int`, defaults to 8): requests in flight at once (a thread pool of that size per call).
        timeout (`float`, defaults to 60.0): seconds per socket operation of an attempt (connecting, sending, each
            wait for the reply).
        max_retries (`int`, defaults to 2): retries after a failed attempt (connection error, timeout, HTTP 5xx,
            a reply that is not a chat completion), waiting `min(max_backoff, backoff * 2**k)` s before retry k + 1.
            HTTP 4xx (a wrong model name, a request the server refuses) is not retried.
        backoff (`float`, defaults to 0.5), max_backoff (`float`, defaults to 30.0): see `max_retries`.
        api_key_env (`str`, defaults to `"OPENAI_API_KEY"`): the environment variable holding the API key, read at
            each call; unset or empty: no `Authorization` header (a vLLM server started without `--api-key`).
        allow_insecure_api_key (`bool`, defaults to `False`): allow sending a key over plain HTTP to a host other
            than this machine (it would travel in clear text).
        device (`str` or `torch.device`, *optional*): where the scores are returned (the model runs on the server).
        dtype (`torch.dtype`, *optional*): accepted for the factory signature; unused.
    """

    name = "vlm_judge"

    def __init__(
        self,
        model: str,
        base_url: str = "http://127.0.0.1:8000/v1",
        score: str = "number",
        prompt_template: Optional[str] = None,
        system_prompt: Optional[str] = None,
        low: float = 0.0,
        high: float = 10.0,
        number_pattern: Optional[str] = None,
        top_logprobs: int = 20,
        max_tokens: Optional[int] = None,
        temperature: float = 0.0,
        max_image_size: Optional[int] = None,
        max_concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        api_key_env: str = "OPENAI_API_KEY",
        allow_insecure_api_key: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        if score not in SCORE_RULES:
            raise ValueError(f"score must be one of {SCORE_RULES}, got {score!r}.")
        if not model or not isinstance(model, str):
            raise ValueError("model must name the served model (vLLM's --served-model-name), e.g. model='judge'.")
        if not low < high:
            raise ValueError(f"The number range needs low < high, got low={low}, high={high}.")
        if max_concurrency < 1 or timeout <= 0 or max_retries < 0 or backoff < 0 or top_logprobs < 1:
            raise ValueError(
                "VLMJudgeReward needs max_concurrency >= 1, timeout > 0, max_retries >= 0, backoff >= 0 and "
                f"top_logprobs >= 1; got max_concurrency={max_concurrency}, timeout={timeout}, "
                f"max_retries={max_retries}, backoff={backoff}, top_logprobs={top_logprobs}."
            )
        if max_image_size is not None and max_image_size < 1:
            raise ValueError(f"max_image_size must be >= 1 or None, got {max_image_size}.")
        self.url = base_url.rstrip("/") + "/chat/completions"
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url={base_url!r} is not an http(s) URL such as 'http://127.0.0.1:8000/v1'.")
        self._parts = parts
        self._path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.model, self.score = model, score
        template = prompt_template or (NUMBER_TEMPLATE if score == "number" else YES_NO_TEMPLATE)
        if "{prompt}" not in template:
            raise ValueError("prompt_template must contain '{prompt}' (where the caption goes).")
        self.prompt_template, self.system_prompt = template, system_prompt
        self.low, self.high = float(low), float(high)
        self.number_pattern = re.compile(number_pattern) if number_pattern else None
        self.top_logprobs = int(top_logprobs)
        self.max_tokens = int(max_tokens) if max_tokens is not None else (32 if score == "number" else 1)
        self.temperature = float(temperature)
        self.max_image_size = max_image_size
        self.max_concurrency = int(max_concurrency)
        self.timeout, self.max_retries = float(timeout), int(max_retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.api_key_env = api_key_env
        self.allow_insecure_api_key = allow_insecure_api_key
        self.device = resolve_device(device)
        self._warned_no_logprobs = False
        self._auth_headers()  # a key that must not go over plain HTTP fails now, not at the first reward call

    def _auth_headers(self) -> dict[str, str]:
        """The `Authorization` header, with the key read from `api_key_env` now (never stored on the reward)."""
        key = os.environ.get(self.api_key_env, "")
        if not key:
            return {}
        if self._parts.scheme == "http" and not is_loopback(self._parts.hostname) and not self.allow_insecure_api_key:
            raise ValueError(
                f"Refusing to send the API key of ${self.api_key_env} in clear text to {self._parts.hostname!r} over "
                "plain HTTP; use an https:// base_url, or pass allow_insecure_api_key=True if that network is trusted."
            )
        return {"Authorization": f"Bearer {key}"}

    def _body(self, image: Image.Image, prompt: str) -> bytes:
        if self.max_image_size is not None and max(image.size) > self.max_image_size:
            image = image.copy()
            image.thumbnail((self.max_image_size, self.max_image_size), Image.BICUBIC)
        question = self.prompt_template.format(prompt=prompt, low=self.low, high=self.high)
        messages: list[dict[str, Any]] = (
            [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        )
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                    {"type": "text", "text": question},
                ],
            }
        )
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if self.score == "yes_no_logprob":
            body.update(logprobs=True, top_logprobs=self.top_logprobs)
        return json.dumps(body).encode("utf-8")

    def _score_one(self, index: int, body: bytes, headers: dict[str, str], key: str) -> float:
        """One image's score; the key (in `headers`) is redacted from the errors and warnings, which quote the
        server."""
        try:
            choice = request_with_retries(
                self._parts,
                "POST",
                self._path,
                body,
                headers=headers,
                timeout=self.timeout,
                max_retries=self.max_retries,
                backoff=self.backoff,
                max_backoff=self.max_backoff,
                parse=_first_choice,
            )
        except ServerRefused as err:
            raise VLMJudgeError(
                f"The VLM judge at {self.url} refused the request for image {index} (HTTP {err.status}: "
                f"{_redact(err.message, key)}); check model={self.model!r} and the server's options."
            ) from None
        except ServerUnavailable as err:
            raise VLMJudgeError(
                f"The VLM judge at {self.url} failed {err.attempts} attempt(s) for image {index} "
                f"({_redact(err.last, key)}); is an OpenAI-compatible server (vLLM, SGLang) running there and "
                "reachable from here?"
            ) from None
        text = choice["message"].get("content") or ""
        if self.score == "number":
            value = parse_number(text, self.low, self.high, self.number_pattern)
        else:
            value, from_logprobs = yes_probability(choice)
            if not from_logprobs and not self._warned_no_logprobs:
                self._warned_no_logprobs = True
                logger.warning(
                    "The VLM judge at %s returned no yes/no logprobs; scoring from the reply text (0 or 1).", self.url
                )
        if math.isnan(value):
            logger.warning(
                "The VLM judge's reply to image %d gives no score by the %r rule (NaN; the trainer drops its group): "
                "%r",
                index,
                self.score,
                _redact(text[:200], key),
            )
        return value

    def __call__(self, images: ImageBatch, prompts: Sequence[str]) -> torch.Tensor:
        pil = to_pil_images(images)
        texts = check_prompts(prompts, len(pil))
        if not pil:
            return torch.zeros(0, dtype=torch.float32, device=self.device)
        headers = self._auth_headers()
        key = headers.get("Authorization", "")[len("Bearer ") :]
        bodies = [self._body(image, prompt) for image, prompt in zip(pil, texts)]
        with ThreadPoolExecutor(min(self.max_concurrency, len(bodies)), thread_name_prefix="vlm_judge") as pool:
            futures = [pool.submit(self._score_one, i, body, headers, key) for i, body in enumerate(bodies)]
            try:
                scores = [future.result() for future in futures]
            except BaseException:
                for future in futures:  # the requests not yet started are not sent
                    future.cancel()
                raise
        return torch.tensor(scores, dtype=torch.float32, device=self.device)

    def __repr__(self) -> str:
        return (
            f"VLMJudgeReward(url={self.url!r}, model={self.model!r}, score={self.score!r}, "
            f"api_key_env={self.api_key_env!r})"
        )
