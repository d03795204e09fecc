"""ImageReward (Xu et al., 2023): BLIP (ViT-L/16 + BERT with cross-attention) and an MLP head, trained on 137k expert
comparisons; the score is the head's output standardised with the authors' mean and std (roughly N(0, 1)).

The `image-reward` package pins timm 0.6 and needs torchvision, so the model is rebuilt on transformers' BLIP modules
(`BlipVisionModel`, `BlipTextModel` with cross-attention) and the original checkpoint (``THUDM/ImageReward`` /
``ImageReward.pt``) is loaded through `convert_imagereward_state_dict`. Preprocessing is the authors':
Resize(224, bicubic) + CenterCrop(224) + OpenAI CLIP normalisation; text: the bert-base-uncased tokenizer with BLIP's
``[DEC]``/``[ENC]`` tokens, padded to 35 tokens; the feature is the text encoder's first token.
"""

import json
import os
import re
from typing import Optional, Union

import torch
from PIL import Image

from ._preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, resize_shortest_center_crop, to_normalized_tensor
from .aesthetic import AestheticMLP
from .base import ModelReward, from_pretrained_or_explain, hf_hub_file, torch_load_weights

IMAGEREWARD_REPO = "THUDM/ImageReward"
IMAGEREWARD_FILE = "ImageReward.pt"
IMAGEREWARD_MED_CONFIG = "med_config.json"
IMAGEREWARD_TOKENIZER = "google-bert/bert-base-uncased"
# Standardisation constants of the released checkpoint (ImageReward.py).
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072

_VIT_RENAMES = (
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.fc(\d)\.", r"encoder.layers.\1.mlp.fc\2."),
    (r"^norm\.", "post_layernorm."),
)
# Parts of the BLIP checkpoint that ImageReward's score does not use.
_UNUSED = ("blip.vision_proj.", "blip.text_proj.", "blip.itm_head.", "blip.text_encoder.embeddings.position_ids")


def convert_imagereward_state_dict(state_dict: dict) -> tuple[dict, dict, dict]:
    """Split an ImageReward checkpoint into transformers BLIP vision / text state dicts and the MLP head.

    Key mapping (``i`` = block index):

    ===========================================  ===================================================
    ImageReward.pt                               target
    ===========================================  ===================================================
    blip.visual_encoder.cls_token                vision: embeddings.class_embedding
    blip.visual_encoder.pos_embed                vision: embeddings.position_embedding
    blip.visual_encoder.patch_embed.proj.*       vision: embeddings.patch_embedding.*
    blip.visual_encoder.blocks.i.norm1/norm2.*   vision: encoder.layers.i.layer_norm1/layer_norm2.*
    blip.visual_encoder.blocks.i.attn.qkv.*      vision: encoder.layers.i.self_attn.qkv.* (fused, same layout)
    blip.visual_encoder.blocks.i.attn.proj.*     vision: encoder.layers.i.self_attn.projection.*
    blip.visual_encoder.blocks.i.mlp.fc1/fc2.*   vision: encoder.layers.i.mlp.fc1/fc2.*
    blip.visual_encoder.norm.*                   vision: post_layernorm.*
    blip.text_encoder.<rest>                     text: <rest> (BLIP's med.py BERT and `BlipTextModel` share names)
    mlp.layers.{0,2,4,6,7}.*                     head: layers.{0,2,4,6,7}.*
    ===========================================  ===================================================

    ``blip.vision_proj``, ``blip.text_proj`` and a saved ``position_ids`` buffer are dropped; any other key raises.
    """
    vision, text, head = {}, {}, {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith(_UNUSED):
            continue
        if key.startswith("blip.visual_encoder."):
            name = key[len("blip.visual_encoder.") :]
            for pattern, repl in _VIT_RENAMES:
                new, n = re.subn(pattern, repl, name)
                if n:
                    vision[new] = value
                    break
            else:
                raise KeyError(f"Unexpected ImageReward vision key {key!r}.")
        elif key.startswith("blip.text_encoder."):
            text[key[len("blip.text_encoder.") :]] = value
        elif key.startswith("mlp."):
            head[key[len("mlp.") :]] = value
        else:
            raise KeyError(f"Unexpected ImageReward checkpoint key {key!r}.")
    return vision, text, head


def _blip_configs(vision_sd: dict, med_config: dict, vision_head_width: int = 64):
    from transformers import BlipTextConfig, BlipVisionConfig

    width = vision_sd["embeddings.class_embedding"].shape[-1]
    patch = vision_sd["embeddings.patch_embedding.weight"].shape[-1]
    grid = int(round((vision_sd["embeddings.position_embedding"].shape[1] - 1) ** 0.5))
    layers = 1 + max(int(k.split(".")[2]) for k in vision_sd if k.startswith("encoder.layers."))
    vision = BlipVisionConfig(
        hidden_size=width,
        intermediate_size=vision_sd["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=layers,
        num_attention_heads=width // vision_head_width,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=1e-6,  # BLIP's ViT: partial(nn.LayerNorm, eps=1e-6)
    )
    text = BlipTextConfig(
        vocab_size=med_config["vocab_size"],
        hidden_size=med_config["hidden_size"],
        encoder_hidden_size=width,  # BLIP sets encoder_width to the ViT width
        intermediate_size=med_config["intermediate_size"],
        num_hidden_layers=med_config["num_hidden_layers"],
        num_attention_heads=med_config["num_attention_heads"],
        max_position_embeddings=med_config["max_position_embeddings"],
        hidden_act=med_config.get("hidden_act", "gelu"),
        layer_norm_eps=med_config.get("layer_norm_eps", 1e-12),
        pad_token_id=med_config.get("pad_token_id", 0),
        bos_token_id=med_config.get("bos_token_id"),
        sep_token_id=med_config.get("sep_token_id"),
        is_decoder=True,  # builds the cross-attention layers; the forward runs with is_decoder=False (bidirectional)
    )
    return vision, text


class ImageRewardReward(ModelReward):
    """ImageReward v1.0 score (standardised: about N(0, 1) over the authors' data).

    Args (and `device`, `batch_size` as in `ModelReward`):
        dtype (`torch.dtype`, *optional*, defaults to float32): BLIP's dtype (the head runs in float32).
        checkpoint (`str`, defaults to `"THUDM/ImageReward"`): a `.pt`/`.safetensors` file, a directory holding
            `filename` and ``med_config.json``, or a Hub repository id.
        filename (`str`, defaults to `"ImageReward.pt"`): the file inside `checkpoint` (directory / Hub id).
        med_config (`str`, *optional*): path of BLIP's text-encoder config; by default ``med_config.json`` beside the
            checkpoint (same directory or Hub repository).
        tokenizer (`str`, defaults to `"google-bert/bert-base-uncased"`): Hub id or local directory of the BERT
            tokenizer.
        vision_head_width (`int`, defaults to 64): attention head width of BLIP's ViT (ViT-L/16: 16 heads of 64).
        weights_only (`bool`, defaults to `True`): load the `.pt` with `torch.load(weights_only=True)`.
    """

    name = "imagereward"
    max_length = 35

    def __init__(
        self,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        checkpoint: str = IMAGEREWARD_REPO,
        filename: str = IMAGEREWARD_FILE,
        med_config: Optional[str] = None,
        tokenizer: str = IMAGEREWARD_TOKENIZER,
        vision_head_width: int = 64,
        weights_only: bool = True,
        batch_size: int = 16,
    ):
        super().__init__(device=device, batch_size=batch_size, dtype=dtype)
        from transformers import AutoTokenizer, BlipTextModel, BlipVisionModel

        ckpt_path = hf_hub_file(checkpoint, filename, "ImageReward")
        if med_config is None:
            base = os.path.dirname(ckpt_path) if os.path.isfile(checkpoint) else checkpoint
            med_config = hf_hub_file(base, IMAGEREWARD_MED_CONFIG, "ImageReward med_config")
        with open(med_config) as f:
            med = json.load(f)
        state = torch_load_weights(ckpt_path, weights_only=weights_only)
        vision_sd, text_sd, head_sd = convert_imagereward_state_dict(state.get("state_dict", state))
        vision_cfg, text_cfg = _blip_configs(vision_sd, med, vision_head_width)

        self.vision = BlipVisionModel(vision_cfg)
        self.vision.load_state_dict(vision_sd, strict=True)
        self.text = BlipTextModel(text_cfg, add_pooling_layer=False)
        self.text.load_state_dict(text_sd, strict=True)
        self.mlp = AestheticMLP(text_cfg.hidden_size)  # same 1024-128-64-16-1 linear stack as ImageReward's MLP
        self.mlp.load_state_dict(head_sd, strict=True)
        self.vision.to(self.device_, self.dtype).eval().requires_grad_(False)
        self.text.to(self.device_, self.dtype).eval().requires_grad_(False)
        self.mlp.to(self.device_).eval().requires_grad_(False)
        self.image_size = vision_cfg.image_size

        self.tokenizer = from_pretrained_or_explain(AutoTokenizer, tokenizer, "ImageReward tokenizer")
        # BLIP's init_tokenizer(): [DEC] as bos, [ENC] as an extra special token (ids 30522, 30523 for BERT).
        self.tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """ImageReward's `_transform(224)`: Resize(224, bicubic), CenterCrop(224), ToTensor, Normalize(OpenAI CLIP)."""
        crops = [resize_shortest_center_crop(im.convert("RGB"), self.image_size) for im in images]
        return to_normalized_tensor(crops, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        pixels = self.preprocess(images).to(self.device_, self.dtype)
        text = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device_)
        out = self.text(
            input_ids=text["input_ids"].to(self.device_),
            attention_mask=text["attention_mask"].to(self.device_),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
            is_decoder=False,
        )
        rewards = self.mlp(out.last_hidden_state[:, 0, :].float()).squeeze(-1)
        return (rewards - IMAGEREWARD_MEAN) / IMAGEREWARD_STD
