"""Image preprocessing of the original reward models, written with PIL (no torchvision) and the authors' constants."""

import numpy as np
import torch
from PIL import Image

# OpenAI CLIP normalisation, used by CLIP, open_clip's ViT-H-14 (HPS), BLIP (ImageReward) and the aesthetic predictor.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_shortest_center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision `Resize(size, BICUBIC)` then `CenterCrop(size)` on a PIL image (CLIP's and BLIP's eval transform)."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)  # torchvision truncates the long side
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def resize_max_size_pad(image: Image.Image, size: int, fill: int = 0) -> Image.Image:
    """open_clip's `ResizeMaxSize` (HPSv2's eval transform): longest side to `size` (bicubic), pad to a square."""
    w, h = image.size
    scale = size / float(max(w, h))
    new_w, new_h = round(w * scale), round(h * scale)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    pad_w, pad_h = size - new_w, size - new_h
    canvas = Image.new("RGB", (size, size), (fill, fill, fill))
    canvas.paste(image, (pad_w // 2, pad_h // 2))
    return canvas


def to_normalized_tensor(
    images: list[Image.Image], mean: tuple[float, ...] = OPENAI_CLIP_MEAN, std: tuple[float, ...] = OPENAI_CLIP_STD
) -> torch.Tensor:
    """`ToTensor()` + `Normalize(mean, std)` on a list of equally sized RGB PIL images: (B, 3, H, W) float32."""
    x = torch.from_numpy(np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]))
    x = x.permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
