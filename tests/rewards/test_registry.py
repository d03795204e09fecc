import subprocess
import sys

import pytest
import torch

from diffusers_mixgrpo.rewards import available_rewards, load_reward, register_reward, unregister_reward
from diffusers_mixgrpo.rewards.base import Reward

BUILTINS = {
    "pickscore",
    "hpsv2.1",
    "imagereward",
    "clipscore",
    "aesthetic",
    "unifiedreward",
    "vlm_judge",
    "ocr",
    "jpeg_compressibility",
    "jpeg_incompressibility",
}


def test_available_rewards_lists_every_builtin():
    assert BUILTINS <= set(available_rewards())


def test_importing_the_registry_imports_no_model_library():
    code = (
        "import sys; import diffusers_mixgrpo.rewards as r; r.load_reward('jpeg_compressibility'); "
        "bad = [m for m in ('transformers', 'open_clip', 'torchmetrics') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_register_as_function_and_load_by_name_with_kwargs():
    def factory(device=None, dtype=None, offset=0.0):
        return lambda images, prompts: torch.full((len(prompts),), offset)

    register_reward("Test_Const", factory)
    try:
        assert "test_const" in available_rewards()
        reward = load_reward("test_const", offset=2.0)
        assert torch.equal(reward(None, ["a", "b"]), torch.tensor([2.0, 2.0]))
    finally:
        unregister_reward("test_const")
    assert "test_const" not in available_rewards()


def test_register_as_decorator_returns_the_factory():
    @register_reward("test_deco")
    def factory(device=None, dtype=None):
        return lambda images, prompts: torch.zeros(len(prompts))

    try:
        assert callable(factory) and isinstance(load_reward("test_deco"), Reward)
    finally:
        unregister_reward("test_deco")


def test_lazy_string_factory_is_imported_at_load_time():
    register_reward("test_lazy", "diffusers_mixgrpo.rewards.jpeg:JpegIncompressibility")
    try:
        assert type(load_reward("test_lazy")).__name__ == "JpegIncompressibility"
    finally:
        unregister_reward("test_lazy")


def test_duplicate_name_is_refused_unless_overwrite():
    with pytest.raises(ValueError, match="already registered"):
        register_reward("jpeg_compressibility", lambda device=None, dtype=None: None)


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(KeyError, match="jpeg_compressibility"):
        load_reward("no_such_reward")


def test_a_callable_is_passed_through():
    def mine(images, prompts):
        return torch.ones(len(prompts))

    assert load_reward(mine) is mine
    with pytest.raises(TypeError):
        load_reward(mine, scale=2)
