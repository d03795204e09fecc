"""Image and prompt preprocessing of the original reward models, written without torchvision, with the authors'
constants and rounding: what each official scorer does, step for step, whatever happens to be installed."""

import html
import re
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# OpenAI CLIP normalisation, used by CLIP, open_clip's ViT-H-14 (HPS), BLIP (ImageReward) and the aesthetic predictor.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_shortest_center_crop(image: Image.Image, size: int, crop_size: Optional[int] = None) -> Image.Image:
    """torchvision `Resize(size, BICUBIC)` then `CenterCrop(crop_size or size)` on a PIL image (CLIP's and BLIP's eval
    transform). The crop offset rounds as torchvision's `CenterCrop` (`int(round((h - crop) / 2.0))`), not floored as
    transformers' processors do."""
    crop = size if crop_size is None else crop_size
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)  # torchvision truncates the long side
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    left = int(round((new_w - crop) / 2.0))
    top = int(round((new_h - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def resize_max_size_pad(image: Image.Image, size: int, fill: float = 0.0) -> torch.Tensor:
    """HPSv2's eval transform before `Normalize`: `ToTensor()`, then open_clip's `ResizeMaxSize(size)` on the tensor.

    The order is HPSv2's (`_convert_to_rgb`, `ToTensor`, `ResizeMaxSize`): the [0, 1] float tensor is resized with
    torchvision's tensor path (`interpolate(mode="bicubic", align_corners=False, antialias=True)`, no clamping, so
    bicubic overshoot stays), longest side to `size` with sides `round(side * size / longest)`, then padded with
    `fill` to a square (`pad // 2` before, the rest after). Returns a (3, size, size) float32 tensor. Unlike the
    reference, an image whose longest side already is `size` is still padded (the reference would hand the model a
    non-square input).
    """
    x = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    h, w = x.shape[-2:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        new_h, new_w = round(h * scale), round(w * scale)
        x = F.interpolate(x[None], size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)[0]
    pad_h, pad_w = size - x.shape[-2], size - x.shape[-1]
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)


def load_pil_image_processor(repo_id_or_path: str, what: str):
    """`AutoImageProcessor.from_pretrained(..., backend="pil")`: the PIL processor whether torchvision is installed or not.

    transformers 5 picks a torchvision-based processor whenever torchvision imports, and the two backends differ by 1-4
    grey levels (scores by up to 7.8e-3). The official recipes (PickScore's model card, torchmetrics' CLIP score, the
    aesthetic predictor's CLIP) were written with the PIL/NumPy processor, so that is the one we pin.
    """
    from transformers import AutoImageProcessor

    from .base import from_pretrained_or_explain

    return from_pretrained_or_explain(AutoImageProcessor, repo_id_or_path, what, backend="pil")


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """`Normalize(mean, std)` on a (B, 3, H, W) float tensor."""
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def open_clip_clean(text: str) -> str:
    """The text cleaning of OpenAI CLIP's / open_clip's tokenizer before BPE (HPS v2.1 tokenizes with it).

    `ftfy.fix_text` (mojibake, NFC), `html.unescape` twice (`&amp;amp;` -> `&`), strip, then every whitespace run to
    one space. The Hugging Face CLIP tokenizer lowercases and collapses whitespace but does neither of the first two,
    so HPS prompts are cleaned with this first: `"Tom &amp; Jerry"` tokenizes as `"Tom & Jerry"`, as in open_clip.
    """
    import ftfy  # a dependency of this package (pure Python); open_clip requires it too

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def to_normalized_tensor(
    images: list[Image.Image], mean: tuple[float, ...] = OPENAI_CLIP_MEAN, std: tuple[float, ...] = OPENAI_CLIP_STD
) -> torch.Tensor:
    """`ToTensor()` + `Normalize(mean, std)` on a list of equally sized RGB PIL images: (B, 3, H, W) float32."""
    x = torch.from_numpy(np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]))
    return normalize(x.permute(0, 3, 1, 2).float() / 255.0, mean, std)
