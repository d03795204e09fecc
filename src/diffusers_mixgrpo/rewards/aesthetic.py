"""LAION aesthetic predictor v2 ("improved-aesthetic-predictor", sac+logos+ava1-l14-linearMSE): an MLP on the
L2-normalised CLIP ViT-L/14 image embedding, predicting a 1-10 aesthetic rating. No prompt is used."""

from typing import Optional, Union

import torch
from PIL import Image

from .base import ModelReward, from_pretrained_or_explain, hf_hub_file, torch_load_weights

AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
# The authors publish the head on GitHub (christophschuhmann/improved-aesthetic-predictor); this Hub mirror holds the
# same sac+logos+ava1-l14-linearMSE.pth state dict (it is the one TRL's DDPO example uses).
AESTHETIC_HEAD_REPO = "trl-lib/ddpo-aesthetic-predictor"
AESTHETIC_HEAD_FILE = "aesthetic-model.pth"


class AestheticMLP(torch.nn.Module):
    """The predictor's head: Linear layers 768-1024-128-64-16-1 with dropout and no activations (as published)."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_size, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, embed: torch.Tensor) -> torch.Tensor:
        return self.layers(embed)


class AestheticReward(ModelReward):
    """LAION aesthetic score (about 1-10) of each image.

    Args:
        device (`str` or `torch.device`, *optional*): where the model runs and scores are returned (CPU if `None`).
        dtype (`torch.dtype`, *optional*, defaults to float32): the CLIP backbone's dtype (the head runs in float32).
        clip_model (`str`, defaults to `"openai/clip-vit-large-patch14"`): Hub id or local directory of the CLIP model
            and processor.
        head (`str`, defaults to `"trl-lib/ddpo-aesthetic-predictor"`): the MLP weights: a `.pth`/`.safetensors` file,
            a directory holding `head_filename`, or a Hub repository id.
        head_filename (`str`, defaults to `"aesthetic-model.pth"`): the file name inside `head` when it is a directory
            or a Hub id.
        weights_only (`bool`, defaults to `True`): load the `.pth` with `torch.load(weights_only=True)`.
        batch_size (`int`, defaults to 16): images per forward pass.
    """

    name = "aesthetic"

    def __init__(
        self,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        clip_model: str = AESTHETIC_CLIP,
        head: str = AESTHETIC_HEAD_REPO,
        head_filename: str = AESTHETIC_HEAD_FILE,
        weights_only: bool = True,
        batch_size: int = 16,
    ):
        super().__init__(device=device, batch_size=batch_size)
        from transformers import AutoImageProcessor, CLIPConfig, CLIPVisionModelWithProjection

        self.dtype = dtype or torch.float32
        self.image_processor = from_pretrained_or_explain(AutoImageProcessor, clip_model, "aesthetic CLIP processor")
        # Only the image tower of the full CLIP checkpoint is loaded; its projection size lives in the top config.
        clip_config = from_pretrained_or_explain(CLIPConfig, clip_model, "aesthetic CLIP")
        vision_config = clip_config.vision_config
        vision_config.projection_dim = clip_config.projection_dim
        self.clip = from_pretrained_or_explain(
            CLIPVisionModelWithProjection, clip_model, "aesthetic CLIP", config=vision_config, dtype=self.dtype
        )
        state = torch_load_weights(hf_hub_file(head, head_filename, "aesthetic head"), weights_only=weights_only)
        state = state.get("state_dict", state)
        self.mlp = AestheticMLP(self.clip.config.projection_dim)
        self.mlp.load_state_dict(state)
        self.clip.to(self.device_).eval().requires_grad_(False)
        self.mlp.to(self.device_).eval().requires_grad_(False)

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        embed = self.clip(pixel_values=pixels.to(self.device_, self.dtype)).image_embeds.float()
        embed = embed / embed.norm(dim=-1, keepdim=True)
        return self.mlp(embed).squeeze(-1)
