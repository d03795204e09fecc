"""HPS v2.1 (Wu et al., 2023): open_clip ViT-H-14 fine-tuned on HPD v2; score = cos(image, text) of its embeddings.

open_clip needs torchvision, so the model runs as a transformers `CLIPModel`: the open_clip checkpoint
(``xswu/HPSv2`` / ``HPS_v2.1_compressed.pt``) is converted key by key by `convert_open_clip_state_dict` (an exact
re-layout: fused attention projections are split, projections transposed). The tokenizer is open_clip's CLIP BPE
(the same vocabulary as ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``'s tokenizer), fed with prompts cleaned as open_clip
cleans them (ftfy, HTML unescaping, whitespace); the image transform is HPSv2's evaluation transform in its order:
to a [0, 1] tensor, longest side to 224 (bicubic with antialias, on the tensor), black padding to a square, OpenAI
CLIP normalisation.
"""

import re
from typing import Optional, Union

import torch
from PIL import Image

from ._preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize, open_clip_clean, resize_max_size_pad
from .base import ModelReward, from_pretrained_or_explain, hf_hub_file, torch_load_weights

HPS_REPO = "xswu/HPSv2"
HPS_FILE = "HPS_v2.1_compressed.pt"
HPS_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

_BLOCK_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def _convert_block(prefix_in: str, prefix_out: str, sd: dict, out: dict, layer: int) -> None:
    src = f"{prefix_in}.transformer.resblocks.{layer}."
    dst = f"{prefix_out}.encoder.layers.{layer}."
    for name, tensor in ((k[len(src) :], v) for k, v in sd.items() if k.startswith(src)):
        if name.startswith("attn.in_proj_"):
            q, k, v = tensor.chunk(3, dim=0)
            kind = name.rsplit("_", 1)[-1]  # weight | bias
            for proj, t in zip(("q_proj", "k_proj", "v_proj"), (q, k, v)):
                out[f"{dst}self_attn.{proj}.{kind}"] = t.clone()
            continue
        module, _, kind = name.rpartition(".")
        if module not in _BLOCK_RENAMES:
            raise KeyError(f"Unexpected open_clip key {src}{name} (LayerScale / custom blocks are not supported).")
        out[f"{dst}{_BLOCK_RENAMES[module]}.{kind}"] = tensor


def _num_layers(sd: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    ids = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
    return max(ids) + 1 if ids else 0


def convert_open_clip_state_dict(
    state_dict: dict, vision_head_width: int = 80, text_head_width: int = 64, dtype: Optional[torch.dtype] = None
):
    """Convert an open_clip CLIP state dict (ViT image tower, built-in text tower) to a transformers `CLIPModel`.

    Key mapping (``i`` = block index; ``T`` = transposed):

    ========================================  ==========================================================
    open_clip                                 transformers `CLIPModel`
    ========================================  ==========================================================
    visual.conv1.weight                       vision_model.embeddings.patch_embedding.weight
    visual.class_embedding                    vision_model.embeddings.class_embedding
    visual.positional_embedding               vision_model.embeddings.position_embedding.weight
    visual.ln_pre / visual.ln_post            vision_model.pre_layrnorm / vision_model.post_layernorm
    visual.proj (D, E)                        visual_projection.weight (E, D) = T
    token_embedding.weight                    text_model.embeddings.token_embedding.weight
    positional_embedding                      text_model.embeddings.position_embedding.weight
    ln_final                                  text_model.final_layer_norm
    text_projection (W, E)                    text_projection.weight (E, W) = T
    logit_scale                               logit_scale
    {tower}.transformer.resblocks.i.ln_1/2    {tower}.encoder.layers.i.layer_norm1/2
    ... .attn.in_proj_weight/bias (3D, ...)   ... .self_attn.{q,k,v}_proj.weight/bias (split in 3, q first)
    ... .attn.out_proj                        ... .self_attn.out_proj
    ... .mlp.c_fc / .mlp.c_proj               ... .mlp.fc1 / .mlp.fc2
    ========================================  ==========================================================

    where the image tower is ``visual`` -> ``vision_model`` and the text tower is the top level -> ``text_model``.
    Sizes come from the tensors; the head counts from `vision_head_width` (open_clip's ViT-H-14: 80) and
    `text_head_width` (64). Activation GELU (not QuickGELU), LayerNorm eps 1e-5, as open_clip's ViT-H-14.

    Returns:
        `(CLIPConfig, dict)`: the config and a state dict that `CLIPModel(config).load_state_dict(strict=True)` takes.
    """
    from transformers import CLIPConfig

    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if any(k.startswith("text.") for k in sd):
        raise ValueError("This open_clip checkpoint uses a Hugging Face text tower (`text.*`); not supported here.")
    v_width = sd["visual.conv1.weight"].shape[0]
    patch = sd["visual.conv1.weight"].shape[-1]
    n_pos = sd["visual.positional_embedding"].shape[0]
    grid = int(round((n_pos - 1) ** 0.5))
    t_width = sd["token_embedding.weight"].shape[1]
    vision = {
        "hidden_size": v_width,
        "intermediate_size": sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_hidden_layers": _num_layers(sd, "visual."),
        "num_attention_heads": v_width // vision_head_width,
        "patch_size": patch,
        "image_size": grid * patch,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": sd["visual.proj"].shape[1],
    }
    text = {
        "hidden_size": t_width,
        "intermediate_size": sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_hidden_layers": _num_layers(sd, ""),
        "num_attention_heads": t_width // text_head_width,
        "vocab_size": sd["token_embedding.weight"].shape[0],
        "max_position_embeddings": sd["positional_embedding"].shape[0],
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        # open_clip pools the text at argmax(token id), i.e. the end-of-text token, the largest id in the vocabulary.
        "eos_token_id": sd["token_embedding.weight"].shape[0] - 1,
        "bos_token_id": sd["token_embedding.weight"].shape[0] - 2,
        "pad_token_id": 0,
        "projection_dim": sd["text_projection"].shape[1],
    }
    config = CLIPConfig(
        vision_config=vision, text_config=text, projection_dim=sd["visual.proj"].shape[1], logit_scale_init_value=0.0
    )
    out = {
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].t().contiguous(),
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].t().contiguous(),
        "logit_scale": sd["logit_scale"].reshape(()),
    }
    for i in range(vision["num_hidden_layers"]):
        _convert_block("visual", "vision_model", sd, out, i)
    for i in range(text["num_hidden_layers"]):
        _convert_block("", "text_model", {("." + k): v for k, v in sd.items()}, out, i)
    if dtype is not None:
        out = {k: v.to(dtype) for k, v in out.items()}
    return config, out


class HPSv21Reward(ModelReward):
    """Human Preference Score v2.1: ``cos(image_embedding, text_embedding)`` (about 0.2-0.35 for typical images).

    Args (and `device`, `batch_size` as in `ModelReward`):
        dtype (`torch.dtype`, *optional*, defaults to float32): the model's dtype (the authors score under fp16 AMP).
        checkpoint (`str`, defaults to `"xswu/HPSv2"`): the open_clip checkpoint: a `.pt`/`.safetensors` file, a
            directory holding `filename`, or a Hub repository id.
        filename (`str`, defaults to `"HPS_v2.1_compressed.pt"`): the file inside `checkpoint` (directory / Hub id).
        tokenizer (`str`, defaults to `"laion/CLIP-ViT-H-14-laion2B-s32B-b79K"`): Hub id or local directory of a
            CLIP BPE tokenizer (open_clip's vocabulary).
        image_size (`int`, *optional*): input resolution; by default the checkpoint's (224 for ViT-H-14).
        vision_head_width / text_head_width (`int`): attention head widths of the open_clip model (80 / 64).
        weights_only (`bool`, defaults to `True`): load the `.pt` with `torch.load(weights_only=True)`.
    """

    name = "hpsv2.1"

    def __init__(
        self,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        checkpoint: str = HPS_REPO,
        filename: str = HPS_FILE,
        tokenizer: str = HPS_TOKENIZER,
        vision_head_width: int = 80,
        text_head_width: int = 64,
        weights_only: bool = True,
        batch_size: int = 16,
    ):
        super().__init__(device=device, batch_size=batch_size, dtype=dtype)
        from transformers import AutoTokenizer, CLIPModel

        state = torch_load_weights(hf_hub_file(checkpoint, filename, "HPS v2.1"), weights_only=weights_only)
        state = state.get("state_dict", state)
        config, converted = convert_open_clip_state_dict(state, vision_head_width, text_head_width, dtype=self.dtype)
        self.tokenizer = from_pretrained_or_explain(AutoTokenizer, tokenizer, "HPS v2.1 tokenizer")
        self.context_length = config.text_config.max_position_embeddings
        config.text_config.eos_token_id = self.tokenizer.eos_token_id
        with torch.device("meta"):
            model = CLIPModel(config)
        model.load_state_dict(converted, strict=True, assign=True)
        _materialize_position_ids(model)
        self.model = model.to(self.device_, self.dtype).eval().requires_grad_(False)
        self.image_size = config.vision_config.image_size

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """HPSv2's `preprocess_val`: ToTensor, ResizeMaxSize(224, bicubic + antialias on the tensor, fill 0),
        Normalize(OpenAI CLIP)."""
        squares = torch.stack([resize_max_size_pad(im, self.image_size) for im in images])
        return normalize(squares, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """open_clip's `tokenize`: cleaned text (`open_clip_clean`), BPE, padded with 0 to the context length."""
        # open_clip pads to the full context with 0 and uses no padding mask (the causal mask makes it irrelevant).
        return self.tokenizer(
            [open_clip_clean(p) for p in prompts],
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )["input_ids"]

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        pixels = self.preprocess(images).to(self.device_, self.dtype)
        ids = self.tokenize(prompts).to(self.device_)
        image_embs = self.model.get_image_features(pixel_values=pixels)
        text_embs = self.model.get_text_features(input_ids=ids)
        image_embs = _features(image_embs).float()
        text_embs = _features(text_embs).float()
        image_embs = image_embs / image_embs.norm(dim=-1, keepdim=True)
        text_embs = text_embs / text_embs.norm(dim=-1, keepdim=True)
        return (image_embs * text_embs).sum(-1)


def _materialize_position_ids(model: torch.nn.Module) -> None:
    """Non-persistent `position_ids` buffers are not in the state dict: rebuild them after a meta-device load."""
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if not buf.is_meta:
                continue
            if name != "position_ids":
                raise RuntimeError(f"Buffer {name!r} of {type(module).__name__} was not loaded.")
            module.register_buffer(name, torch.arange(buf.shape[-1]).expand(1, -1), persistent=False)


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output
