"""PickScore (Kirstain et al., 2023): a CLIP-H model fine-tuned on Pick-a-Pic preferences, scored as in its model card."""

from typing import Optional, Union

import torch
from PIL import Image

from ._preprocess import load_pil_image_processor
from .base import ModelReward, from_pretrained_or_explain

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScoreReward(ModelReward):
    """``logit_scale.exp() * cos(text, image)`` of PickScore_v1 (about 18-24 for typical images).

    Args (and `device`, `batch_size` as in `ModelReward`):
        dtype (`torch.dtype`, *optional*, defaults to float32): the model's dtype.
        checkpoint (`str`, defaults to `"yuvalkirstain/PickScore_v1"`): Hub id or local directory of the
            transformers `CLIPModel` (safetensors preferred when the repository has them).
        processor (`str`, defaults to `"laion/CLIP-ViT-H-14-laion2B-s32B-b79K"`): Hub id or local directory of the
            `CLIPProcessor` (the authors' choice: the CLIP-H processor, not PickScore's own repository).
    """

    name = "pickscore"

    def __init__(
        self,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        checkpoint: str = PICKSCORE_MODEL,
        processor: str = PICKSCORE_PROCESSOR,
        batch_size: int = 16,
    ):
        super().__init__(device=device, batch_size=batch_size, dtype=dtype)
        from transformers import AutoTokenizer, CLIPModel

        # The PIL processor whatever is installed (the model card's AutoProcessor predates torchvision processors).
        self.image_processor = load_pil_image_processor(processor, "PickScore processor")
        self.tokenizer = from_pretrained_or_explain(AutoTokenizer, processor, "PickScore tokenizer")
        self.model = from_pretrained_or_explain(CLIPModel, checkpoint, "PickScore", dtype=self.dtype)
        self.model.to(self.device_).eval().requires_grad_(False)

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        text = self.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        image_embs = self.model.get_image_features(pixel_values=pixels.to(self.device_, self.dtype))
        text_embs = self.model.get_text_features(
            input_ids=text["input_ids"].to(self.device_), attention_mask=text["attention_mask"].to(self.device_)
        )
        image_embs = _features(image_embs).float()
        text_embs = _features(text_embs).float()
        image_embs = image_embs / image_embs.norm(dim=-1, keepdim=True)
        text_embs = text_embs / text_embs.norm(dim=-1, keepdim=True)
        return self.model.logit_scale.float().exp() * (text_embs * image_embs).sum(-1)


def _features(out) -> torch.Tensor:
    """transformers 5 returns a `BaseModelOutputWithPooling` from `get_*_features` (projected embeds in `pooler_output`);
    older versions return the tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output
