"""`RewardServer` / `RemoteReward` on loopback: the same scores as the local reward, batching, timeouts, retries, and
one clear sentence when the server is down."""

import socket
import threading
import time

import pytest
import torch

from diffusers_mixgrpo.rewards import load_reward
from diffusers_mixgrpo.rewards.remote import RemoteReward, RewardServer, RewardServerError


def mean_and_prompt_length(images, prompts):
    return images.float().mean(dim=(1, 2, 3)) / 255 + torch.tensor([len(p) for p in prompts], dtype=torch.float32)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(5, 3, 16, 16, generator=g)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_remote_scores_equal_the_local_reward_in_order_across_batches(images):
    prompts = ["a", "bb", "ccc", "dddd", "eeeee"]
    calls = []

    def reward(x, p):
        calls.append(len(x))
        return mean_and_prompt_length(x, p)

    with RewardServer(reward, batch_size=2) as server:
        assert server.url.startswith("http://127.0.0.1:")
        remote = RemoteReward(server.url, batch_size=3)
        got = remote(images, prompts)
    local = mean_and_prompt_length((images.clamp(0, 1) * 255).round().to(torch.uint8), prompts)
    assert got.dtype == torch.float32 and got.shape == (5,)
    torch.testing.assert_close(got, local, rtol=0, atol=1e-6)  # the same uint8 pixels, scored the same way
    assert server.requests == 2 and calls == [2, 1, 2]  # client batches of 3 + 2, server batches of <= 2


def test_registered_name_and_server_side_registered_reward(images):
    with RewardServer("jpeg_compressibility") as server:
        remote = load_reward("remote", url=server.url)
        assert remote.server_reward == "jpeg_compressibility"
        got = remote(images, ["x"] * 5)
    torch.testing.assert_close(got, load_reward("jpeg_compressibility")(images, ["x"] * 5), rtol=0, atol=1e-6)


def test_a_server_that_is_down_fails_in_one_sentence_after_the_retries():
    port = _free_port()
    t0 = time.perf_counter()
    with pytest.raises(
        RewardServerError, match=rf"127.0.0.1:{port} failed 3 attempt\(s\) \(ConnectionRefusedError.*is it running"
    ):
        RemoteReward(f"http://127.0.0.1:{port}", max_retries=2, backoff=0.05)
    assert time.perf_counter() - t0 >= 0.05 + 0.1  # backoff 0.05 then 0.1 s


def test_a_hung_reward_times_out_and_a_failing_one_names_its_error(images):
    release = threading.Event()

    def hung(x, p):
        release.wait(5)
        return torch.zeros(len(x))

    with RewardServer(hung) as server:
        remote = RemoteReward(server.url, timeout=0.3, max_retries=1, backoff=0)
        with pytest.raises(RewardServerError, match=r"failed 2 attempt\(s\) \(no answer within timeout=0.3 s\)"):
            remote(images, ["x"] * 5)
        release.set()

    def broken(x, p):
        raise RuntimeError("CUDA out of memory")

    with RewardServer(broken) as server:
        with pytest.raises(
            RewardServerError, match="HTTP 500: reward 'broken' failed: RuntimeError: CUDA out of memory"
        ):
            RemoteReward(server.url, max_retries=0)(images, ["x"] * 5)


def test_bad_requests_and_arguments_are_refused_clearly(images):
    with RewardServer(mean_and_prompt_length) as server:
        remote = RemoteReward(server.url)
        with pytest.raises(RewardServerError, match=r"refused the request \(400: bad request"):
            remote._request("POST", "/score", b'{"images": "", "shape": [1, 2, 2], "prompts": ["a"]}')
        with pytest.raises(RewardServerError, match="404"):
            remote._request("GET", "/nothing", None)
        with pytest.raises(ValueError, match="2 prompts for 5 images|5"):
            remote(images, ["a", "b"])
    with pytest.raises(ValueError, match=r"url must be http\(s\)://host:port, got 'localhost:8700'"):
        RemoteReward("localhost:8700")
    with pytest.raises(ValueError, match="batch_size >= 1"):
        RemoteReward("http://127.0.0.1:1", batch_size=0, check_health=False)
