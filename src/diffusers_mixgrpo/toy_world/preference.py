"""A toy preference score: prompt following (the toy-world reward) times an aesthetic term (contrast), from pixels.

Learned preference models (HPS, PickScore, ImageReward) score how well an image follows its prompt *and* how good it
looks, mixed in one number. This is that kind of score for the toy world, with both parts written out:

    toy_preference(image, prompt) = toy_world(image, prompt) * toy_contrast(image)

* ``toy_world`` (`ToyWorldReward`) is the GenEval-style prompt-following score in [0, 1]: the named colours, sides
  and shapes, nothing else drawn.
* ``toy_contrast`` is the Michelson contrast of the picture, ``(fg - bg) / (fg + bg)``, where ``fg`` is the mean
  brightness (max over RGB) of the brightest 3% of pixels (at least part of an object: the smallest object covers
  about 3% of the image) and ``bg`` that of the darkest half (background: the world's objects cover at most about
  a fifth of the image). A clean render (saturated shapes on black) scores about 1; the same picture washed out by
  the "hazy" style scores about 0.5; a blank or uniform image scores 0.

The product is the guard: contrast alone can be raised by drawing anything bright on black, whatever the prompt
asked for, so the demo trains on the product and monitors prompt following (held-out accuracy) beside it.
Blank, uniform and noise images score 0 or close to it (tested).
"""

from collections.abc import Sequence
from typing import Optional, Union

import numpy as np
import torch

from .reward import ToyWorldReward, _to_float_images

#: Share of the brightest pixels taken as foreground, and of the darkest taken as background.
FOREGROUND_QUANTILE = 0.03
BACKGROUND_QUANTILE = 0.5


def toy_contrast(images) -> np.ndarray:
    """Michelson contrast of each image, ``(fg - bg) / (fg + bg)`` in [0, 1] (see the module docstring); (B,) float32.

    `images`: PIL images, uint8 arrays/tensors (B, H, W, 3), or float tensors in [0, 1] (B, 3, H, W) or (B, H, W, 3).
    """
    x = _to_float_images(images)
    b, h, w, _ = x.shape
    value = np.sort(x.max(axis=-1).reshape(b, h * w), axis=1)
    n_fg = max(1, round(FOREGROUND_QUANTILE * h * w))
    fg = value[:, -n_fg:].mean(axis=1)
    bg = value[:, : max(1, round(BACKGROUND_QUANTILE * h * w))].mean(axis=1)
    return np.where(fg + bg > 1e-6, (fg - bg) / np.maximum(fg + bg, 1e-6), 0.0).clip(0, 1).astype(np.float32)


class ToyContrastReward:
    """The aesthetic term alone, ``toy_contrast(images)``: an *unguarded* preference reward (it ignores the prompt).

    Registered as "toy_contrast" so the reward-hacking experiment (docs/toy_world.md) can train on it; use it as a
    monitor (`monitor_rewards`) or inside `ToyPreferenceReward`, not alone.
    """

    def __init__(self, device: Optional[Union[str, torch.device]] = None, dtype: Optional[torch.dtype] = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def __repr__(self) -> str:
        return f"ToyContrastReward(device={self.device})"

    def __call__(self, images, prompts: Union[str, Sequence[str], None] = None) -> torch.Tensor:
        return torch.from_numpy(toy_contrast(images)).to(self.device)


class ToyPreferenceReward:
    """Toy preference score ``toy_world(image, prompt) * toy_contrast(image)`` in [0, 1], higher is better.

    Args:
        device (`str` or `torch.device`, *optional*): where the scores are returned (computed on the CPU).
        dtype (`torch.dtype`, *optional*): ignored (scores are float32); accepted for the registry's interface.
        **kwargs: passed to `ToyWorldReward` (its weights and thresholds).
    """

    def __init__(
        self, device: Optional[Union[str, torch.device]] = None, dtype: Optional[torch.dtype] = None, **kwargs
    ):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.prompt_following = ToyWorldReward(**kwargs)

    def __repr__(self) -> str:
        return f"ToyPreferenceReward(prompt_following={self.prompt_following!r}, device={self.device})"

    def __call__(self, images, prompts: Union[str, Sequence[str]]) -> torch.Tensor:
        follow = self.prompt_following.evaluate(images, prompts).score
        return torch.from_numpy(follow * toy_contrast(images)).to(self.device)


def make_toy_preference_reward(device=None, dtype=None, **kwargs) -> ToyPreferenceReward:
    """Registry factory of the "toy_preference" reward."""
    return ToyPreferenceReward(device=device, dtype=dtype, **kwargs)


def make_toy_contrast_reward(device=None, dtype=None) -> ToyContrastReward:
    """Registry factory of the "toy_contrast" reward."""
    return ToyContrastReward(device=device, dtype=dtype)
