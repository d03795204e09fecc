"""CLIP score (Hessel et al., 2021), ``max(100 * cos(image, text), 0)`` per image, through torchmetrics' `CLIPScore`.

torchmetrics 1.9 with transformers 5 needs two workarounds, both kept here: a local directory is refused as
`model_name_or_path` (we always pass a loader callable), and `CLIPModel.get_image_features` now returns a model
output instead of a tensor (`_ProjectedCLIP` returns the projected embeddings as tensors).
"""

from typing import Optional, Union

import numpy as np
import torch
from PIL import Image

from ._preprocess import load_pil_image_processor
from .base import ModelReward, from_pretrained_or_explain

CLIPSCORE_MODEL = "openai/clip-vit-large-patch14"


class _ProjectedCLIP(torch.nn.Module):
    """A `CLIPModel` whose `get_image_features`/`get_text_features` return the projected embeddings as tensors (what
    torchmetrics expects), with inputs cast to the model's dtype."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=pixel_values.to(self.model.dtype))
        return (out if isinstance(out, torch.Tensor) else out.pooler_output).float()

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None):
        out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return (out if isinstance(out, torch.Tensor) else out.pooler_output).float()


class CLIPScoreReward(ModelReward):
    """Per-image CLIP score in [0, 100] from `torchmetrics.multimodal.CLIPScore`'s model, processor and update function.

    Args:
        device (`str` or `torch.device`, *optional*): where the model runs and scores are returned (CPU if `None`).
        dtype (`torch.dtype`, *optional*, defaults to float32): the CLIP model's dtype.
        model_name_or_path (`str`, defaults to `"openai/clip-vit-large-patch14"`, torchmetrics' default): a Hub id or
            a local directory holding a transformers `CLIPModel` and `CLIPProcessor`.
        batch_size (`int`, defaults to 16): images per forward pass.

    The torchmetrics metric itself (which averages over images) is available as `self.metric`.
    """

    name = "clipscore"

    def __init__(
        self,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        model_name_or_path: str = CLIPSCORE_MODEL,
        batch_size: int = 16,
    ):
        super().__init__(device=device, batch_size=batch_size)
        from torchmetrics.multimodal import CLIPScore
        from transformers import AutoTokenizer, CLIPModel, CLIPProcessor

        def _load():
            model = from_pretrained_or_explain(CLIPModel, model_name_or_path, "CLIP", dtype=dtype or torch.float32)
            # torchmetrics' own loader takes the default backend (torchvision when it imports); pin the PIL one.
            processor = CLIPProcessor(
                image_processor=load_pil_image_processor(model_name_or_path, "CLIP processor"),
                tokenizer=from_pretrained_or_explain(AutoTokenizer, model_name_or_path, "CLIP tokenizer"),
            )
            return _ProjectedCLIP(model.eval().requires_grad_(False)), processor

        self.metric = CLIPScore(model_name_or_path=_load).to(self.device_)
        self.metric.model.eval()

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        from torchmetrics.functional.multimodal.clip_score import _clip_score_update

        # torchmetrics reads images as uint8-valued (C, H, W) tensors; the model runs on the images' device.
        tensors = [torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).to(self.device_) for im in images]
        score, _ = _clip_score_update(tensors, list(prompts), self.metric.model, self.metric.processor)
        return score.float().clamp_min(0.0)
