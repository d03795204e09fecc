"""The `Reward` protocol and the image/score conventions every reward follows.

A reward is any callable ``reward(images, prompts) -> torch.Tensor`` returning a 1-D float32 tensor with one score
per image, in input order. `images` is a list of PIL images, a uint8 tensor/array (B, 3, H, W) or (B, H, W, 3) in
[0, 255], or a float tensor (B, 3, H, W) in [0, 1] (what a diffusers pipeline returns with ``output_type="pt"``).
"""

from collections.abc import Sequence
from typing import Any, Optional, Protocol, Union, runtime_checkable

import numpy as np
import torch
from PIL import Image

ImageBatch = Union[torch.Tensor, np.ndarray, Sequence[Image.Image]]


@runtime_checkable
class Reward(Protocol):
    """What the trainer calls: ``reward(images, prompts) -> (B,) float32 tensor``, higher is better."""

    def __call__(self, images: ImageBatch, prompts: Sequence[str]) -> torch.Tensor: ...


def to_pil_images(images: ImageBatch) -> list[Image.Image]:
    """Convert a batch of images (PIL list, uint8 or [0, 1] float tensor/array) to a list of RGB PIL images."""
    if isinstance(images, Image.Image):
        return [images.convert("RGB")]
    if isinstance(images, (list, tuple)) and all(isinstance(im, Image.Image) for im in images):
        return [im.convert("RGB") for im in images]
    return [Image.fromarray(a) for a in to_uint8_hwc(images)]


def to_uint8_hwc(images: ImageBatch) -> np.ndarray:
    """Convert a batch of images to a (B, H, W, 3) uint8 numpy array (floats are read as [0, 1] and rounded)."""
    if isinstance(images, Image.Image) or (
        isinstance(images, (list, tuple)) and images and isinstance(images[0], Image.Image)
    ):
        return np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in to_pil_images(images)])
    if isinstance(images, (list, tuple)):
        images = torch.stack([torch.as_tensor(np.asarray(im)) for im in images])
    x = torch.as_tensor(images).detach().cpu()
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim == 5:
        raise ValueError(
            f"Got a batch of videos {tuple(x.shape)} (B, F, 3, H, W) for an image reward; score videos with a video "
            "reward ('temporal_consistency') or average an image reward over the frames ('frame_mean', "
            "rewards.video.FrameMeanReward)."
        )
    if x.ndim != 4:
        raise ValueError(f"Expected a batch of images (B, 3, H, W) or (B, H, W, 3), got shape {tuple(x.shape)}.")
    if x.shape[1] in (1, 3):  # (B, C, H, W), the documented layout; (B, H, W, C) otherwise
        x = x.permute(0, 2, 3, 1)
    if x.shape[-1] == 1:
        x = x.expand(*x.shape[:-1], 3)
    if x.shape[-1] != 3:
        raise ValueError(f"Expected 3 colour channels, got shape {tuple(x.shape)}.")
    if x.dtype == torch.uint8:
        return x.contiguous().numpy()
    if not torch.is_floating_point(x):
        raise TypeError(f"Integer images must be uint8, got {x.dtype}.")
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8).contiguous().numpy()


def check_prompts(prompts: Optional[Union[str, Sequence[str]]], n: int) -> list[str]:
    """Broadcast a single prompt to `n` images and check that a list has one prompt per image."""
    if prompts is None:
        return [""] * n
    if isinstance(prompts, str):
        return [prompts] * n
    prompts = list(prompts)
    if len(prompts) != n:
        raise ValueError(f"Got {n} images but {len(prompts)} prompts; give one prompt per image.")
    return prompts


def batch_size_of(images: ImageBatch) -> int:
    if isinstance(images, Image.Image):
        return 1
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return 1 if images.ndim == 3 else int(images.shape[0])
    return len(images)


def describe_output(value: Any) -> str:
    """What a reward returned, for a message: `None`, `a list of 8 str`, `a Tensor of shape (3,) and dtype float32`."""
    if value is None:
        return "None"
    if isinstance(value, (torch.Tensor, np.ndarray)):
        dtype = str(value.dtype).replace("torch.", "")
        return f"a {type(value).__name__} of shape {tuple(value.shape)} and dtype {dtype}"
    if isinstance(value, (list, tuple)):
        kinds = ", ".join(sorted({type(v).__name__ for v in value})) or "nothing"
        return f"a {type(value).__name__} of {len(value)} {kinds}"
    text = repr(value)
    return f"a {type(value).__name__} ({text[:40] + '...' if len(text) > 40 else text})"


def reward_scores(name: str, value: Any, batch_size: int, where: str = "") -> torch.Tensor:
    """What reward `name` returned for `batch_size` images, as `(batch_size,)` float32 scores; anything else (`None`,
    strings, a complex or wrong-sized result) is a `ValueError` in one sentence naming the reward, what it returned and
    what a reward must return (`where`, e.g. `" at step 3"`, goes after the name)."""
    expected = f"a reward must return one number per image (a float tensor, array or list of length {batch_size})"
    try:
        scores = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        scores = None
    if scores is None or scores.is_complex() or value is None:
        raise ValueError(f"Reward {name!r} returned {describe_output(value)}{where}; {expected}.")
    if scores.numel() != batch_size:
        raise ValueError(
            f"Reward {name!r} returned {scores.numel()} scores ({describe_output(value)}) for {batch_size} "
            f"images{where}; {expected}."
        )
    return scores.detach().reshape(-1).to(torch.float32)


def resolve_device(device: Optional[Union[str, torch.device]]) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


class ModelReward(torch.nn.Module):
    """Base class of the model-backed rewards: eval mode, no grad, mini-batching and the float32 (B,) contract.

    Subclasses implement `score_batch(images: list[PIL.Image], prompts: list[str]) -> torch.Tensor` for one
    mini-batch of at most `batch_size` items.

    Args (shared by every model reward):
        device (`str` or `torch.device`, *optional*): where the model runs and scores are returned (CPU if `None`).
        batch_size (`int`, defaults to 16): images per forward pass.
        dtype (`torch.dtype`, *optional*, defaults to float32): the model's dtype, as `self.dtype` (each reward says
            which of its parts use it).
    """

    def __init__(
        self,
        device: Optional[Union[str, torch.device]] = None,
        batch_size: int = 16,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.device_ = resolve_device(device)
        self.batch_size = int(batch_size)
        self.dtype = dtype or torch.float32
        self.training = False

    def train(self, mode: bool = True) -> "ModelReward":
        """Reward models always stay in eval mode (no dropout): `train()` is a no-op that keeps them frozen."""
        return super().train(False)

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: ImageBatch, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        pil = to_pil_images(images)
        texts = check_prompts(prompts, len(pil))
        out = [
            self.score_batch(pil[i : i + self.batch_size], texts[i : i + self.batch_size]).reshape(-1)
            for i in range(0, len(pil), self.batch_size)
        ]
        if not out:
            return torch.zeros(0, dtype=torch.float32, device=self.device_)
        return torch.cat(out).to(device=self.device_, dtype=torch.float32)

    def __repr__(self) -> str:  # nn.Module's repr would print the whole backbone
        return f"{type(self).__name__}(device={self.device_}, batch_size={self.batch_size})"


def describe_missing_weights(what: str, repo_id: str, filename: Optional[str] = None) -> str:
    """The message of an offline/missing-checkpoint error: what was looked for and how to pre-download it."""
    import os

    if os.path.isabs(repo_id) or repo_id.startswith(".") or os.path.exists(repo_id):
        return f"Could not load the {what} weights from the local path {repo_id!r}: it is missing or incomplete."
    cmd = f"hf download {repo_id}" + (f" {filename}" if filename else "")
    return (
        f"Could not load the {what} weights from {repo_id!r}"
        + (f" (file {filename!r})" if filename else "")
        + f". Pre-download them on a machine with internet access with `{cmd}` (then copy the Hugging Face cache, "
        "or pass a local path), or point the reward at a local directory/file: in a training run with "
        "`reward_kwargs` (e.g. `--reward_kwargs hpsv2.1.checkpoint=/models/HPS_v2.1_compressed.pt`, see "
        "docs/rewards.md), in examples/eval_rewards.py with `--reward-option`."
    )


def hf_hub_file(repo_id_or_path: str, filename: str, what: str, **kwargs: Any) -> str:
    """A local path to `filename`: `repo_id_or_path` may be a file, a directory holding it, or a Hub repo id."""
    import os

    if os.path.isfile(repo_id_or_path):
        return repo_id_or_path
    if os.path.isdir(repo_id_or_path):
        path = os.path.join(repo_id_or_path, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist; the {what} reward expects {filename!r} there.")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id_or_path, filename, **kwargs)
    except Exception as err:  # offline, gated, missing: one actionable message
        raise OSError(describe_missing_weights(what, repo_id_or_path, filename)) from err


def from_pretrained_or_explain(loader: Any, repo_id_or_path: str, what: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained(repo_id_or_path, **kwargs)`, turning "not found / offline" into an actionable error.

    `trust_remote_code` is never passed: every built-in reward uses classes that ship with transformers.
    """
    try:
        return loader.from_pretrained(repo_id_or_path, **kwargs)
    except OSError as err:
        raise OSError(describe_missing_weights(what, repo_id_or_path)) from err


def torch_load_weights(path: str, weights_only: bool = True) -> dict:
    """Load a third-party `.pt`/`.pth` checkpoint on the CPU; `weights_only=True` (tensors only, no code) by default.

    `weights_only=False` unpickles arbitrary objects (and can run code): use it only for files you trust.
    """
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:
        if not weights_only:
            raise
        raise RuntimeError(
            f"torch.load(weights_only=True) refused {path}: it holds more than tensors ({err}). If you trust the "
            "file, pass `weights_only=False` to the reward to unpickle it."
        ) from err
