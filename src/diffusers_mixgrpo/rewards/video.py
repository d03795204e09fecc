"""Video rewards: the `(B, F, 3, H, W)` batch convention, a weight-free temporal-consistency reward, and a wrapper
that scores every frame (or every k-th) with an image reward and averages per video.

A video reward is any callable ``reward(videos, prompts) -> (B,) float32`` that accepts frames ``(B, F, 3, H, W)``
(float in [0, 1], or uint8 in [0, 255]), which is what `GRPOTrainingPipeline.rollout` returns for Wan. Image rewards
refuse such a batch; wrap them in `FrameMeanReward` (registered as ``"frame_mean"``).
"""

from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import torch

from .base import check_prompts, resolve_device

__all__ = ["FrameMeanReward", "TemporalConsistencyReward", "as_video_tensor"]


def as_video_tensor(videos: Any) -> torch.Tensor:
    """`(B, F, 3, H, W)` float32 in [0, 1] from a float tensor in [0, 1] or a uint8 tensor of that shape."""
    x = torch.as_tensor(videos).detach()
    if x.ndim != 5 or x.shape[2] != 3:
        raise ValueError(
            f"Expected a batch of videos (B, F, 3, H, W), got shape {tuple(x.shape)}; an image batch (B, 3, H, W) "
            "goes to an image reward."
        )
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not torch.is_floating_point(x):
        raise TypeError(f"Integer videos must be uint8, got {x.dtype}.")
    return x.float().clamp(0, 1)


class TemporalConsistencyReward:
    """Reward = ``1 - mean |frame_{f+1} - frame_f|`` over pixels, channels and consecutive frame pairs, in [0, 1].

    Higher for videos whose consecutive frames differ less (no flicker); a one-frame video scores 1. Weight-free and
    exact, like the JPEG rewards: a check that an RL loop on video moves a measurable property, not a quality model
    (on its own it also rewards a still video). `dtype` is accepted and ignored.
    """

    name = "temporal_consistency"

    def __init__(self, device: Optional[Union[str, torch.device]] = None, dtype: Optional[torch.dtype] = None):
        self.device = resolve_device(device)

    def __call__(self, videos: Any, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        x = as_video_tensor(videos)
        check_prompts(prompts, x.shape[0])
        if x.shape[1] < 2:
            return torch.ones(x.shape[0], dtype=torch.float32, device=self.device)
        change = (x[:, 1:] - x[:, :-1]).abs().flatten(1).mean(dim=1)
        return (1.0 - change).to(device=self.device, dtype=torch.float32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FrameMeanReward:
    """An image reward applied to the frames of each video, averaged per video: ``mean_f reward(frame_f, prompt)``.

    Args:
        image_reward (callable or `str`): an image reward ``(images (N, 3, H, W), prompts) -> (N,)``, or the name of a
            registered one (built with `device`, `dtype` and `reward_kwargs`).
        frame_stride (`int`, defaults to 1): score frames `0, k, 2k, ...` (and always the last one) to save reward
            compute on long videos.
        batch_frames (`int`, *optional*): most frames per call of the image reward (default: all frames at once).
    """

    name = "frame_mean"

    def __init__(
        self,
        image_reward: Union[str, Callable, None] = None,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        frame_stride: int = 1,
        batch_frames: Optional[int] = None,
        **reward_kwargs: Any,
    ):
        if isinstance(frame_stride, bool) or not isinstance(frame_stride, int) or frame_stride < 1:
            raise ValueError(f"frame_stride must be an integer >= 1, got {frame_stride!r}.")
        if batch_frames is not None and batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1 or None, got {batch_frames!r}.")
        if image_reward is None:
            raise ValueError(
                "frame_mean needs the image reward to average: image_reward='pickscore' (a registered name) or a "
                "callable; in a training config: reward_kwargs frame_mean.image_reward=pickscore."
            )
        if isinstance(image_reward, str):
            from .registry import load_reward

            if image_reward.strip().lower() in ("frame_mean", "temporal_consistency"):
                raise ValueError(f"frame_mean needs an image reward, got the video reward {image_reward!r}.")
            image_reward = load_reward(image_reward, device=device, dtype=dtype, **reward_kwargs)
        elif reward_kwargs:
            raise TypeError(f"Options {sorted(reward_kwargs)} were given with a reward object; build it with them.")
        if not callable(image_reward):
            raise TypeError(f"image_reward must be callable or a registered name, got {type(image_reward).__name__}.")
        self.image_reward = image_reward
        self.frame_stride = frame_stride
        self.batch_frames = batch_frames
        self.device = resolve_device(device)

    def frame_indices(self, num_frames: int) -> list[int]:
        idx = list(range(0, num_frames, self.frame_stride))
        if idx[-1] != num_frames - 1:
            idx.append(num_frames - 1)
        return idx

    def __call__(self, videos: Any, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        x = as_video_tensor(videos)
        b, f = x.shape[:2]
        texts = check_prompts(prompts, b)
        idx = self.frame_indices(f)
        frames = x[:, idx].flatten(0, 1)  # (B * F_scored, 3, H, W), video-major
        frame_prompts = [p for p in texts for _ in idx]
        step = self.batch_frames or len(frame_prompts)
        scores = [
            torch.as_tensor(self.image_reward(frames[i : i + step], frame_prompts[i : i + step])).reshape(-1).float()
            for i in range(0, len(frame_prompts), step)
        ]
        scores = torch.cat([s.to(self.device) for s in scores])
        if scores.numel() != b * len(idx):
            raise ValueError(
                f"The image reward returned {scores.numel()} scores for {b * len(idx)} frames; it must return one "
                "score per image."
            )
        return scores.view(b, len(idx)).mean(dim=1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.image_reward!r}, frame_stride={self.frame_stride})"
