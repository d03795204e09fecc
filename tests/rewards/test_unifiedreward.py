"""UnifiedReward against a local OpenAI-compatible server on 127.0.0.1 (started and stopped by the fixture)."""

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
import torch
from PIL import Image

from diffusers_mixgrpo.rewards import load_reward
from diffusers_mixgrpo.rewards.unifiedreward import MalformedAnswerError, UnifiedRewardError, parse_score
from testing_utils import loopback_http_server


class _Judge(BaseHTTPRequestHandler):
    """Answers "Final Score: 1 + 4 * brightness"; the caption picks a misbehaviour (slow, 500, 400, malformed)."""

    calls: dict = {}
    hung_up: list = []
    lock = threading.Lock()

    def log_message(self, *args):  # keep test output clean
        pass

    def _reply(self, status, body):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][0]["content"]
        caption = content[1]["text"].rsplit("Text Caption: [", 1)[1].rstrip("]")
        url = content[0]["image_url"]["url"]
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        with self.lock:
            n = self.calls[caption] = self.calls.get(caption, 0) + 1
        if caption.startswith("trickle"):  # headers, then a byte every 50 ms: each read is fast, the answer never ends
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(400):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:  # the client hung up
                with self.lock:
                    self.hung_up.append(time.monotonic())
            return
        if caption.startswith("slow") and n == 1:
            time.sleep(1.0)  # longer than the client's timeout: the first attempt times out
        if caption.startswith("error-once") and n == 1:
            return self._reply(500, {"error": "overloaded"})
        if caption.startswith("bad-request"):
            return self._reply(400, {"error": "unknown model"})
        if caption.startswith("always-malformed") or (caption.startswith("malformed-once") and n == 1):
            return self._reply(200, {"choices": [{"message": {"content": "A lovely picture, I'd say four."}}]})
        if caption.startswith("not-json") and n == 1:
            return self._reply(200, "<html>gateway</html>")
        brightness = sum(image.convert("L").getdata()) / (255.0 * image.size[0] * image.size[1])
        answer = f"The image matches.\nFinal Score: {1 + 4 * brightness:.3f}"
        return self._reply(
            200, {"choices": [{"message": {"role": "assistant", "content": answer}}], "size": image.size}
        )


@pytest.fixture
def judge():
    _Judge.calls = {}
    _Judge.hung_up = []
    with loopback_http_server(_Judge) as base_url:
        yield base_url


def _gray(levels):
    return torch.stack([torch.full((3, 24, 32), v, dtype=torch.uint8) for v in levels])


def _reward(url, **kw):
    kw = {"timeout": 0.4, "max_retries": 2, "backoff": 0.01, **kw}
    return load_reward("unifiedreward", base_url=url, image_size=16, **kw)


def test_scores_follow_the_images_in_order(judge):
    levels = [0, 255, 51, 204]
    scores = _reward(judge, normalize=False)(_gray(levels), [f"p{i}" for i in range(4)])
    expected = torch.tensor([1 + 4 * v / 255 for v in levels])
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, atol=2e-3, rtol=0)


def test_normalized_scores_are_divided_by_five(judge):
    scores = _reward(judge)(_gray([255, 0]), ["a", "b"])
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.2]), atol=1e-3, rtol=0)


def test_slow_answers_time_out_and_are_retried(judge):
    start = time.monotonic()
    scores = _reward(judge, normalize=False)(_gray([255, 255]), ["slow a", "slow b"])
    torch.testing.assert_close(scores, torch.tensor([5.0, 5.0]))
    assert _Judge.calls == {"slow a": 2, "slow b": 2}
    assert time.monotonic() - start < 3.0  # concurrent, and bounded by the timeout


def test_server_errors_malformed_answers_and_bad_json_are_retried(judge):
    captions = ["error-once", "malformed-once", "not-json"]
    scores = _reward(judge, normalize=False)(_gray([0, 0, 0]), captions)
    torch.testing.assert_close(scores, torch.ones(3))
    assert all(_Judge.calls[c] == 2 for c in captions)


def test_persistently_malformed_answer_fails_clearly_after_the_retries(judge):
    with pytest.raises(UnifiedRewardError, match=r"always-malformed.*3 attempts.*Final Score"):
        _reward(judge)(_gray([0, 0]), ["always-malformed", "fine"])
    assert _Judge.calls["always-malformed"] == 3


def test_client_errors_are_not_retried(judge):
    with pytest.raises(UnifiedRewardError, match="HTTP 400"):
        _reward(judge)(_gray([0]), ["bad-request"])
    assert _Judge.calls["bad-request"] == 1


def test_unreachable_server_fails_after_bounded_retries():
    start = time.monotonic()
    with pytest.raises(UnifiedRewardError, match="failed after 2 attempts"):
        _reward("http://127.0.0.1:9/v1", max_retries=1)(_gray([0]), ["x"])
    assert time.monotonic() - start < 5.0


@pytest.mark.parametrize(
    "text, score",
    [("Final Score: 4", 4.0), ("final score: **3.5**", 3.5), ("Final Score: 2\n...\nFinal Score: 5", 5.0)],
)
def test_parse_score_reads_the_last_final_score(text, score):
    assert parse_score(text) == score


@pytest.mark.parametrize("text", ["Score: 4", "Final Score: 7", "Final Score: -1", "", "Final Score: high"])
def test_parse_score_rejects_malformed_answers(text):
    with pytest.raises(MalformedAnswerError):
        parse_score(text)


def _client_threads(baseline):
    return [t for t in threading.enumerate() if t not in baseline and "process_request" not in t.name]


def test_a_trickling_server_leaks_no_thread_and_no_connection(judge):
    """Each read returns within the timeout but the answer never ends: the request is aborted at its timeout (the
    server sees the client hang up), and repeated calls reuse one pool of `max_concurrency` threads."""
    baseline = set(threading.enumerate())
    reward = _reward(judge, timeout=0.3, max_retries=0, max_concurrency=2)
    for call in range(3):
        start = time.monotonic()
        with pytest.raises(UnifiedRewardError, match="timed out after 0.3 s"):
            reward(_gray([0, 0]), [f"trickle {call} a", f"trickle {call} b"])
        assert time.monotonic() - start < 1.5
    time.sleep(0.5)
    assert len(_Judge.hung_up) == 6  # every aborted request closed its connection
    assert len(_client_threads(baseline)) <= 2
    reward.close()
    assert _client_threads(baseline) == []


@pytest.mark.parametrize(
    "base_url, api_key, allowed",
    [
        ("http://judge.example.org:8000/v1", "sk-secret", False),
        ("https://judge.example.org/v1", "sk-secret", True),
        ("http://127.0.0.1:8000/v1", "sk-secret", True),
        ("http://localhost:8000/v1", "sk-secret", True),
        ("http://[::1]:8000/v1", "sk-secret", True),
        ("http://judge.example.org:8000/v1", None, True),  # the "EMPTY" placeholder is no secret
    ],
)
def test_an_api_key_never_travels_in_clear_text_to_another_host(base_url, api_key, allowed, monkeypatch):
    monkeypatch.delenv("UNIFIEDREWARD_API_KEY", raising=False)
    if allowed:
        load_reward("unifiedreward", base_url=base_url, api_key=api_key)
    else:
        with pytest.raises(ValueError, match="Refusing to send the UnifiedReward API key in clear text"):
            load_reward("unifiedreward", base_url=base_url, api_key=api_key)
        load_reward("unifiedreward", base_url=base_url, api_key=api_key, allow_insecure_api_key=True)
