"""LAION aesthetic predictor v2 ("improved-aesthetic-predictor", sac+logos+ava1-l14-linearMSE): an MLP on the
L2-normalised CLIP ViT-L/14 image embedding, predicting a 1-10 aesthetic rating. No prompt is used.

The image goes through OpenAI CLIP's `preprocess` (what the predictor was trained and published with):
`Resize(224, bicubic)`, `CenterCrop(224)` with torchvision's rounding of the crop offset, `ToTensor`, `Normalize`.
transformers' CLIP processors floor that offset instead (1 px off for 1216x832 and 832x1216), so the transform is
ours (`resize_shortest_center_crop`), with the sizes and constants read from the model's processor config.
"""

from typing import Optional, Union

import torch
from PIL import Image

from ._preprocess import load_pil_image_processor, resize_shortest_center_crop, to_normalized_tensor
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

    Args (and `device`, `batch_size` as in `ModelReward`):
        dtype (`torch.dtype`, *optional*, defaults to float32): the CLIP backbone's dtype (the head runs in float32).
        clip_model (`str`, defaults to `"openai/clip-vit-large-patch14"`): Hub id or local directory of the CLIP model
            and processor.
        head (`str`, defaults to `"trl-lib/ddpo-aesthetic-predictor"`): the MLP weights: a `.pth`/`.safetensors` file,
            a directory holding `head_filename`, or a Hub repository id.
        head_filename (`str`, defaults to `"aesthetic-model.pth"`): the file name inside `head` when it is a directory
            or a Hub id.
        weights_only (`bool`, defaults to `True`): load the `.pth` with `torch.load(weights_only=True)`.
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
        super().__init__(device=device, batch_size=batch_size, dtype=dtype)
        from transformers import CLIPConfig, CLIPVisionModelWithProjection

        self.image_processor = load_pil_image_processor(clip_model, "aesthetic CLIP processor")  # sizes, constants
        self.resize_size = int(self.image_processor.size["shortest_edge"])
        crop = self.image_processor.crop_size
        if crop["height"] != crop["width"]:
            raise ValueError(f"The aesthetic CLIP processor's crop_size must be square, got {dict(crop)}.")
        self.crop_size = int(crop["height"])
        self.image_mean = tuple(self.image_processor.image_mean)
        self.image_std = tuple(self.image_processor.image_std)
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

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """OpenAI CLIP's `preprocess`: Resize(shortest side, bicubic), CenterCrop (torchvision rounding), Normalize."""
        crops = [resize_shortest_center_crop(im.convert("RGB"), self.resize_size, self.crop_size) for im in images]
        return to_normalized_tensor(crops, self.image_mean, self.image_std)

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        pixels = self.preprocess(images)
        embed = self.clip(pixel_values=pixels.to(self.device_, self.dtype)).image_embeds.float()
        embed = embed / embed.norm(dim=-1, keepdim=True)
        return self.mlp(embed).squeeze(-1)
