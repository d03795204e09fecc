"""DDPO's weight-free rewards: the size of each image saved as JPEG (quality 95), in kilobytes.

`jpeg_incompressibility` rewards large files (detail, texture), `jpeg_compressibility` small ones (flat images);
useful to test an RL loop offline, since the reward is exact and needs no model.

Float image tensors are turned into pixels exactly as DDPO does, `(images * 255).round().clamp(0, 255)` in the input's
own dtype: for bf16 / fp16 images the product rounds in that precision first, so the bytes (and the reward) are the
reference's, not those of a float32 conversion (which differs on 8% of the pixels of uniform bf16 noise, 4% for fp16).
"""

import io
from collections.abc import Sequence
from typing import Optional, Union

import torch
from PIL import Image

from .base import ImageBatch, batch_size_of, check_prompts, resolve_device, to_uint8_hwc


def ddpo_uint8(images: ImageBatch) -> ImageBatch:
    """DDPO's float-to-pixel rule for tensors, `(x * 255).round().clamp(0, 255).to(uint8)` in the tensor's dtype.

    Anything else (PIL images, uint8, NumPy arrays) is returned unchanged for `to_uint8_hwc`.
    """
    if isinstance(images, torch.Tensor) and torch.is_floating_point(images):
        return (images.detach() * 255).round().clamp(0, 255).to(torch.uint8)
    return images


def jpeg_sizes_kb(images: ImageBatch, quality: int = 95) -> torch.Tensor:
    """(B,) float32: bytes of each image encoded by PIL as JPEG at `quality`, divided by 1000 (as DDPO).

    Float tensors become pixels by DDPO's rule in their own dtype (`ddpo_uint8`)."""
    sizes = []
    for array in to_uint8_hwc(ddpo_uint8(images)):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


class _JpegReward:
    sign = 1.0
    name = "jpeg"

    def __init__(
        self, device: Optional[Union[str, torch.device]] = None, dtype: Optional[torch.dtype] = None, quality: int = 95
    ):
        if not 1 <= quality <= 100:
            raise ValueError(f"quality must be in [1, 100], got {quality}.")
        self.device = resolve_device(device)
        self.quality = quality

    def __call__(self, images: ImageBatch, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        check_prompts(prompts, batch_size_of(images))
        return (self.sign * jpeg_sizes_kb(images, self.quality)).to(self.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(quality={self.quality})"


class JpegIncompressibility(_JpegReward):
    """Reward = JPEG size in kB (higher for detailed images). `dtype` is accepted and ignored (no model)."""

    sign = 1.0
    name = "jpeg_incompressibility"


class JpegCompressibility(_JpegReward):
    """Reward = minus the JPEG size in kB (higher for flat images). `dtype` is accepted and ignored (no model)."""

    sign = -1.0
    name = "jpeg_compressibility"
