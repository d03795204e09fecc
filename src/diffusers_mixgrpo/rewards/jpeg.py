"""DDPO's weight-free rewards: the size of each image saved as JPEG (quality 95), in kilobytes.

`jpeg_incompressibility` rewards large files (detail, texture), `jpeg_compressibility` small ones (flat images);
useful to test an RL loop offline, since the reward is exact and needs no model.
"""

import io
from collections.abc import Sequence
from typing import Optional, Union

import torch
from PIL import Image

from .base import ImageBatch, batch_size_of, check_prompts, resolve_device, to_uint8_hwc


def jpeg_sizes_kb(images: ImageBatch, quality: int = 95) -> torch.Tensor:
    """(B,) float32: bytes of each image encoded by PIL as JPEG at `quality`, divided by 1000 (as DDPO)."""
    sizes = []
    for array in to_uint8_hwc(images):
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
