"""`vlm_judge` against a real OpenAI-compatible `/v1/chat/completions` server on 127.0.0.1 (a `ThreadingHTTPServer`
started per test): both score rules, malformed/slow/failing replies, the concurrency limit, a closed port, and the
API key (sent in the header, never shown)."""

import base64
import io
import json
import logging
import math
import pickle
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
import torch
from PIL import Image

from diffusers_mixgrpo.rewards import load_reward
from diffusers_mixgrpo.rewards.vlm_judge import VLMJudgeError, VLMJudgeReward, parse_number, yes_probability
from testing_utils import loopback_http_server

KEY_ENV = "VLM_JUDGE_TEST_KEY"
SECRET = "sk-test-SECRET-4242"
# The first token's alternatives in "yesno" mode: P(yes) = 0.6, P(no) = 0.2 + 0.1, so the score is 0.6 / 0.9.
YES_NO_TOP = [("Yes", 0.6), (" no", 0.2), ("NO", 0.1), ("maybe", 0.05)]


class _Judge(BaseHTTPRequestHandler):
    """`POST /v1/chat/completions`: checks the request's shape, then answers by the caption (the whole question)."""

    state: dict  # set per server: calls per caption, in-flight count, request bodies and headers

    def log_message(self, *args):
        pass

    def _reply(self, status, body):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _answer(self, content, logprobs=None):
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        if logprobs is not None:
            choice["logprobs"] = logprobs
        return self._reply(200, {"id": "x", "object": "chat.completion", "model": "judge", "choices": [choice]})

    def do_POST(self):
        state = self.state
        if self.path != "/v1/chat/completions":
            return self._reply(404, {"error": {"message": f"no route {self.path}"}})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][-1]["content"]
        image_part, text_part = content
        url = image_part["image_url"]["url"]
        if image_part["type"] != "image_url" or text_part["type"] != "text" or not url.startswith("data:image/png;"):
            return self._reply(400, {"error": {"message": "expected an image_url part then a text part"}})
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("L")
        caption = text_part["text"]
        with state["lock"]:
            n = state["calls"][caption] = state["calls"].get(caption, 0) + 1
            state["bodies"].append(body)
            state["auth"].append(self.headers.get("Authorization"))
            state["in_flight"] += 1
            state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
        try:
            self._handle(caption, n, image)
        finally:
            with state["lock"]:
                state["in_flight"] -= 1

    def _handle(self, caption, n, image):
        if caption.startswith("bright"):  # proves the pixels arrived: 10 x the mean grey level
            brightness = sum(image.getdata()) / (255.0 * image.size[0] * image.size[1])
            return self._answer(f"Score: {10 * brightness:.3f} out of 10.")
        if caption.startswith("echo "):
            return self._answer(caption[len("echo ") :])
        if caption == "hold":  # wait (up to 1 s) until 3 requests were in flight at once, then overlap a little
            deadline = time.monotonic() + 1.0
            while self.state["max_in_flight"] < 3 and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.02)
            return self._answer("5")
        if caption == "yesno":
            top = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in YES_NO_TOP]
            return self._answer("Yes", {"content": [{"token": "Yes", "logprob": math.log(0.6), "top_logprobs": top}]})
        if caption == "malformed" or (caption == "malformed-once" and n == 1):
            return self._reply(200, '{"choices": [{"message": "truncat')
        if (caption == "slow-once" and n == 1) or caption == "slow":
            time.sleep(0.8)  # past the client's timeout of 0.3 s
        if (caption == "500-once" and n == 1) or caption == "500":  # echoes the header, as a careless proxy might
            return self._reply(500, {"error": f"overloaded (got {self.headers.get('Authorization')})"})
        if caption == "400":
            return self._reply(400, {"error": {"message": "The model `nope` does not exist.", "code": 404}})
        return self._answer("5")


@pytest.fixture
def judge():
    state = {"calls": {}, "bodies": [], "auth": [], "in_flight": 0, "max_in_flight": 0, "lock": threading.Lock()}
    handler = type("Judge", (_Judge,), {"state": state})
    with loopback_http_server(handler) as base_url:
        state["base_url"] = base_url
        yield state


def _gray(levels):
    return torch.stack([torch.full((3, 12, 16), v, dtype=torch.uint8) for v in levels])


def _reward(judge, **kw):
    kw = {"model": "judge", "prompt_template": "{prompt}", "timeout": 0.3, "max_retries": 2, "backoff": 0.01, **kw}
    return load_reward("vlm_judge", base_url=judge["base_url"], **kw)


def test_number_scores_follow_the_images_in_order_and_the_request_has_the_openai_shape(judge, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    reward = _reward(judge, system_prompt="You judge images.")
    assert isinstance(reward, VLMJudgeReward)
    levels = [0, 255, 51, 204]
    scores = reward(_gray(levels), [f"bright {i}" for i in range(4)])
    assert scores.dtype == torch.float32 and scores.shape == (4,)
    torch.testing.assert_close(scores, torch.tensor([v / 255 for v in levels]), atol=1e-3, rtol=0)
    body = judge["bodies"][0]
    assert body["model"] == "judge" and body["max_tokens"] == 32 and body["temperature"] == 0.0
    assert "logprobs" not in body and body["messages"][0] == {"role": "system", "content": "You judge images."}
    assert judge["auth"] == [None] * 4  # no key in the environment: no Authorization header


def test_the_number_rule():
    assert parse_number("I'd give it 8/10.", 0, 10) == 0.8
    assert parse_number("7.5", 1, 10) == pytest.approx(6.5 / 9)
    assert math.isnan(parse_number("Score: 11", 0, 10)) and math.isnan(parse_number("-1", 0, 10))
    assert math.isnan(parse_number("no idea", 0, 10)) and math.isnan(parse_number("", 0, 10))
    assert parse_number("Criteria 1 and 2. Final Score: 4", 1, 5, r"Final Score:\s*([\d.]+)") == 0.75


def test_a_reply_without_a_number_scores_nan_with_a_warning(judge, caplog):
    with caplog.at_level(logging.WARNING, logger="diffusers_mixgrpo.rewards.vlm_judge"):
        scores = _reward(judge)(_gray([0, 0, 0]), ["echo I cannot rate this image.", "echo 3", "echo 42"])
    assert math.isnan(scores[0]) and scores[1] == pytest.approx(0.3) and math.isnan(scores[2])
    assert judge["calls"]["echo I cannot rate this image."] == 1  # a readable reply is not retried
    assert "no score by the 'number' rule" in caplog.text and "cannot rate" in caplog.text


def test_nan_scores_drop_their_group_in_the_trainer():
    from diffusers_mixgrpo.training.advantages import finite_group_mask

    keep = finite_group_mask(torch.tensor([0.3, math.nan, 0.5, 0.7]), [0, 0, 1, 1])
    assert keep.tolist() == [False, False, True, True]


def test_yes_no_logprob_rule_reads_the_first_token_alternatives(judge):
    reward = _reward(judge, score="yes_no_logprob", top_logprobs=5)
    scores = reward(_gray([0, 0]), ["yesno", "echo No, it does not."])
    torch.testing.assert_close(scores, torch.tensor([0.6 / 0.9, 0.0]))  # logprobs; no logprobs -> the text
    body = judge["bodies"][0]
    assert body["logprobs"] is True and body["top_logprobs"] == 5 and body["max_tokens"] == 1
    assert yes_probability({"message": {"content": " yes."}}) == (1.0, False)
    assert math.isnan(yes_probability({"message": {"content": "Perhaps"}, "logprobs": None})[0])


def test_slow_malformed_and_failing_replies_are_retried(judge):
    captions = ["slow-once", "500-once", "malformed-once"]
    start = time.monotonic()
    scores = _reward(judge)(_gray([0, 0, 0]), captions)
    torch.testing.assert_close(scores, torch.full((3,), 0.5))
    assert all(judge["calls"][c] == 2 for c in captions)
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize(
    "caption, attempts, message",
    [
        ("slow", 2, r"failed 2 attempt\(s\) for image 0 \(no answer within timeout=0.3 s\)"),
        ("500", 2, r"failed 2 attempt\(s\) for image 0 \(HTTP 500: overloaded"),
        ("malformed", 2, r"failed 2 attempt\(s\) for image 0 \(malformed reply \(not a chat completion"),
        ("400", 1, r"refused the request for image 0 \(HTTP 400: The model `nope` does not exist.\); check model="),
    ],
)
def test_persistent_failures_raise_naming_the_url(judge, caption, attempts, message):
    url = judge["base_url"] + "/chat/completions"
    with pytest.raises(VLMJudgeError, match=rf"^The VLM judge at {url} {message}"):
        _reward(judge, max_retries=1)(_gray([0]), [caption])
    assert judge["calls"][caption] == attempts  # 4xx is not retried


def test_a_closed_port_fails_fast_in_one_sentence_naming_the_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reward = load_reward("vlm_judge", model="judge", base_url=f"http://127.0.0.1:{port}/v1", backoff=0.01)
    start = time.monotonic()
    with pytest.raises(VLMJudgeError) as err:
        reward(_gray([0, 0]), ["a", "b"])
    assert time.monotonic() - start < 2.0
    text = str(err.value)
    assert text.startswith(f"The VLM judge at http://127.0.0.1:{port}/v1/chat/completions failed 3 attempt(s)")
    assert "ConnectionRefusedError" in text and text.endswith("reachable from here?") and "\n" not in text


def test_the_concurrency_limit_is_honoured(judge):
    start = time.monotonic()
    scores = _reward(judge, max_concurrency=3)(_gray([0] * 12), ["hold"] * 12)
    assert scores.shape == (12,) and judge["calls"]["hold"] == 12
    assert judge["max_in_flight"] == 3  # reached, never passed
    assert time.monotonic() - start < 2.0


def test_the_api_key_reaches_the_server_and_nothing_else(judge, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    reward = _reward(judge, api_key_env=KEY_ENV, max_retries=0)
    with caplog.at_level(logging.DEBUG):
        reward(_gray([0, 0]), ["echo 5", "echo none"])
        with pytest.raises(VLMJudgeError) as err:  # the server echoes the header in its error body
            reward(_gray([0]), ["500"])
    assert set(judge["auth"]) == {f"Bearer {SECRET}"}
    assert "HTTP 500: overloaded (got Bearer ***)" in str(err.value)
    for text in (str(err.value), repr(err.value), repr(reward), str(vars(reward)), caplog.text):
        assert SECRET not in text
    assert SECRET.encode() not in pickle.dumps(reward)
    assert repr(reward).endswith(f"score='number', api_key_env='{KEY_ENV}')")

    monkeypatch.setenv(KEY_ENV, "sk-rotated")  # read at each call, not at construction
    reward(_gray([0]), ["echo 5"])
    assert judge["auth"][-1] == "Bearer sk-rotated"


def test_the_key_is_not_sent_in_clear_text_to_another_host(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with pytest.raises(ValueError, match=rf"API key of \${KEY_ENV} in clear text to '10.0.0.1'") as err:
        load_reward("vlm_judge", model="judge", base_url="http://10.0.0.1:8000/v1", api_key_env=KEY_ENV)
    assert SECRET not in str(err.value)
    assert load_reward(
        "vlm_judge", model="m", base_url="http://10.0.0.1:8000/v1", api_key_env=KEY_ENV, allow_insecure_api_key=True
    )


def test_a_run_config_keeps_the_variable_name_not_the_key():
    from diffusers_mixgrpo.training import GRPOConfig

    config = GRPOConfig(reward_kwargs=["vlm_judge.model=judge", f"vlm_judge.api_key_env={KEY_ENV}"])
    assert config.to_dict()["reward_kwargs"] == {"vlm_judge": {"model": "judge", "api_key_env": KEY_ENV}}
    with pytest.raises(TypeError, match="api_key"):  # there is no option to pass the key itself
        load_reward("vlm_judge", model="judge", api_key=SECRET)


def test_options_are_checked():
    with pytest.raises(ValueError, match="score must be one of"):
        VLMJudgeReward("judge", score="likert")
    with pytest.raises(ValueError, match="low < high"):
        VLMJudgeReward("judge", low=5, high=1)
    with pytest.raises(ValueError, match="is not an http"):
        VLMJudgeReward("judge", base_url="localhost:8000/v1")
    with pytest.raises(ValueError, match="must contain '{prompt}'"):
        VLMJudgeReward("judge", prompt_template="Rate it.")
    with pytest.raises(ValueError, match="max_concurrency >= 1"):
        VLMJudgeReward("judge", max_concurrency=0)
