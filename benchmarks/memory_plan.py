"""What a real-size MixGRPO run needs per GPU: parameters, LoRA, optimiser state, activations, per strategy.

Every model is built from its published config on the `meta` device (no download, no memory), so the parameter
counts are exact. The activation figure of one training micro-batch is counted, not guessed: the transformer runs
forward on `meta` tensors under `torch.autograd.graph.saved_tensors_hooks`, and every tensor autograd keeps for the
backward pass is added up once per storage (parameters excluded). Attention is counted as flash / memory-efficient
SDPA keeps it (q, k, v, output, float32 log-sum-exp; no N x N matrix), which is what CUDA and torch's CPU kernel do.
With gradient checkpointing a block keeps only its inputs; during the backward pass one block is recomputed at a
time, so the peak is the outside-block tensors + every block's inputs + the largest block's own tensors.

The denoisers of every shipped config have a spec (`MODELS`; `HUB_MODELS` maps the configs' Hub ids): the FLUX.1 /
FLUX.2 / SD3 / Qwen-Image / SANA / Z-Image transformers, Wan 2.1's video transformer (latents of `num_frames` frames,
any height x width) and the SD1.5 / SDXL UNets (their checkpointed units: every ResNet and transformer block).
`dummy_inputs` shapes each one's forward as the family's adapter calls it.

`--validate` runs a smaller FLUX-shaped config for real on the CPU (float32, forward + backward, in a fresh process)
and compares the estimate with the measured peak resident memory (see `validate_on_cpu`).

    python benchmarks/memory_plan.py                     # tables for every model, 512/720/1024 px, 1/8/32 GPUs
    python benchmarks/memory_plan.py --model flux1-dev --resolution 720 --json plan.json
    python benchmarks/memory_plan.py --validate          # estimate vs measured CPU peak
    python benchmarks/memory_plan.py --shipped           # the shipped configs x launch configs (docs/training.md)

Assumptions the per-GPU totals make (stated in the output): weights in bf16, trained weights in float32 (the trainer
keeps them so), AdamW (2 float32 moments; `adamw8bit`: 2 bytes), gradients in float32, micro-batch of 1 image (x2
rows for true classifier-free guidance), text encoders freed after the prompt embeddings are cached (or resident),
the VAE resident in bf16, and a fixed 1.5 GiB for the CUDA context, workspaces and allocator slack.
"""

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from diffusers_mixgrpo.pipelines.families import default_lora_target_modules

GiB = 1024**3
RESOLUTIONS = (512, 720, 1024)
GPU_COUNTS = (1, 8, 32)
STRATEGIES = ("ddp", "zero2", "fsdp2", "zero3")
GPU_SIZES_GB = (24, 48, 80)
# What such cards report as total memory (nvidia-smi, MiB): RTX 4090 / L4-class, RTX 6000 Ada / L40S / A6000, A100 / H100.
GPU_MEMORY_BYTES = {24: 24564 * 2**20, 48: 46068 * 2**20, 80: 81559 * 2**20}
OVERHEAD_BYTES = int(1.5 * GiB)  # CUDA context + cuBLAS/attention workspaces + allocator slack (an assumption)
# A plan "fits" a card with 10% to spare: the activation count is 6-8% under a measured peak (`--validate`).
HEADROOM = 1.10


def fits(total_bytes: float, card_gb: int) -> bool:
    """Whether a per-GPU total fits a `card_gb` card (`GPU_MEMORY_BYTES`) with `HEADROOM`."""
    return total_bytes * HEADROOM <= GPU_MEMORY_BYTES[card_gb]


# The LoRA targets the trainer uses by default (GRPOConfig.lora_target_modules=None).
_FLUX_LORA = default_lora_target_modules("flux")
_SD3_LORA = default_lora_target_modules("sd3")
# FLUX.2: the double blocks' attention as for FLUX.1, the single blocks' fused projections (a regex: in the double
# blocks `attn.to_out` is a ModuleList, in the single blocks a Linear).
_FLUX2_LORA = (
    r".*(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out|to_qkv_mlp_proj)"
    r"|single_transformer_blocks\.\d+\.attn\.to_out)"
)

_CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
_CLIP_L.update(vocab_size=49408, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")
_CLIP_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20}
_CLIP_G.update(vocab_size=49408, max_position_embeddings=77, projection_dim=1280, hidden_act="gelu")
_T5_XXL = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24, "vocab_size": 32128}
_T5_XXL.update(feed_forward_proj="gated-gelu", is_encoder_decoder=False)
_QWEN3_4B = {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32}
_QWEN3_4B.update(num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True)
_VAE_16 = {"latent_channels": 16, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2}
_VAE_16.update(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
# The SD1.5 / SDXL VAE (vae/config.json of both): the same blocks with 4 latent channels.
_VAE_4 = {**_VAE_16, "latent_channels": 4}
# Qwen2.5-VL-7B-Instruct (Qwen-Image's text_encoder/config.json, Qwen2_5_VLForConditionalGeneration: the language
# model and the vision tower, 8.29 B).
_QWEN25_VL_7B = {
    "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "vocab_size": 152064},
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16},
    "tie_word_embeddings": False,
}
_QWEN25_VL_7B["text_config"].update(num_attention_heads=28, num_key_value_heads=4)
_QWEN25_VL_7B["vision_config"].update(out_hidden_size=3584, patch_size=14, spatial_merge_size=2, window_size=112)
_QWEN25_VL_7B["vision_config"].update(temporal_patch_size=2, fullatt_block_indexes=[7, 15, 23, 31])
# Gemma-2-2B-it (SANA's text_encoder/config.json, Gemma2Model: no LM head).
_GEMMA2_2B = {"hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26, "num_attention_heads": 8}
_GEMMA2_2B.update(num_key_value_heads=4, head_dim=256, vocab_size=256000)
# UMT5-XXL encoder (Wan 2.1's text_encoder/config.json, UMT5EncoderModel): T5-XXL's widths, a 256k vocabulary.
_UMT5_XXL = {**_T5_XXL, "vocab_size": 256384, "tie_word_embeddings": False}
# Mistral-Small-3.1-24B-Instruct-2503 (FLUX.2-dev's text_encoder/config.json, Mistral3ForConditionalGeneration: the
# 40-layer language model with its LM head, the Pixtral vision tower and the projector; 24.0 B).
_MISTRAL3_24B = {
    "text_config": {"hidden_size": 5120, "intermediate_size": 32768, "num_hidden_layers": 40, "head_dim": 128},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "head_dim": 64},
    "spatial_merge_size": 2,
    "multimodal_projector_bias": False,
    "tie_word_embeddings": False,
}
_MISTRAL3_24B["text_config"].update(num_attention_heads=32, num_key_value_heads=8, vocab_size=131072)
_MISTRAL3_24B["vision_config"].update(num_attention_heads=16, patch_size=14, image_size=1540)


@dataclass(frozen=True)
class ModelSpec:
    """A model family's denoiser config as published (`transformer/config.json`), its text encoders and VAE."""

    name: str
    transformer_class: str
    transformer_config: dict
    lora_targets: Any  # peft target_modules: a list of name suffixes or a regex
    text_tokens: int  # conditioning tokens the denoiser attends to (max_sequence_length of the pipeline)
    cfg_rows: int  # denoiser rows per image in a training forward (2: true CFG, uncond + cond)
    text_encoders: dict  # name -> (transformers class, config kwargs)
    vae_class: str = "AutoencoderKL"
    vae_config: dict = field(default_factory=lambda: dict(_VAE_16))
    # The modules gradient checkpointing recomputes one at a time: the module lists named here, or (UNets, whose
    # checkpointed units are spread over the down / mid / up blocks) every module of a class in `block_classes`.
    block_lists: tuple = ("transformer_blocks", "single_transformer_blocks")
    block_classes: tuple = ()
    vae_scale_factor: int = 8  # pixels per latent pixel (SANA's DC-AE: 32)
    patch_size: int = 2  # latent pixels per image token side (FLUX's 2x2 packing, SD3 / Wan / Z-Image patches)
    num_frames: int = 1  # video families: frames per sample when a config does not set `num_frames`; 1: images


MODELS: dict[str, ModelSpec] = {
    # black-forest-labs/FLUX.1-dev, transformer/config.json
    "flux1-dev": ModelSpec(
        name="FLUX.1-dev",
        transformer_class="FluxTransformer2DModel",
        transformer_config=dict(
            patch_size=1,
            in_channels=64,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=[16, 56, 56],
        ),
        lora_targets=_FLUX_LORA,
        text_tokens=512,
        cfg_rows=1,  # embedded guidance: one forward per image
        text_encoders={"clip-l": ("CLIPTextModel", _CLIP_L), "t5-xxl": ("T5EncoderModel", _T5_XXL)},
    ),
    # stabilityai/stable-diffusion-3.5-medium, transformer/config.json
    "sd3.5-medium": ModelSpec(
        name="SD3.5-Medium",
        transformer_class="SD3Transformer2DModel",
        transformer_config=dict(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            num_layers=24,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            out_channels=16,
            pos_embed_max_size=384,
            dual_attention_layers=list(range(13)),
            qk_norm="rms_norm",
        ),
        lora_targets=_SD3_LORA,
        text_tokens=333,  # 77 CLIP + 256 T5 tokens
        cfg_rows=2,
        text_encoders={
            "clip-l": ("CLIPTextModelWithProjection", _CLIP_L),
            "clip-g": ("CLIPTextModelWithProjection", _CLIP_G),
            "t5-xxl": ("T5EncoderModel", _T5_XXL),
        },
        block_lists=("transformer_blocks",),
    ),
    # stabilityai/stable-diffusion-3.5-large, transformer/config.json
    "sd3.5-large": ModelSpec(
        name="SD3.5-Large",
        transformer_class="SD3Transformer2DModel",
        transformer_config=dict(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            num_layers=38,
            attention_head_dim=64,
            num_attention_heads=38,
            joint_attention_dim=4096,
            caption_projection_dim=2432,
            pooled_projection_dim=2048,
            out_channels=16,
            pos_embed_max_size=192,
            qk_norm="rms_norm",
        ),
        lora_targets=_SD3_LORA,
        text_tokens=333,
        cfg_rows=2,
        text_encoders={
            "clip-l": ("CLIPTextModelWithProjection", _CLIP_L),
            "clip-g": ("CLIPTextModelWithProjection", _CLIP_G),
            "t5-xxl": ("T5EncoderModel", _T5_XXL),
        },
        block_lists=("transformer_blocks",),
    ),
    # black-forest-labs/FLUX.2-klein-base-4B (January 2026), transformer/config.json
    "flux2-klein-4b": ModelSpec(
        name="FLUX.2-klein-base-4B",
        transformer_class="Flux2Transformer2DModel",
        transformer_config=dict(
            patch_size=1,
            in_channels=128,
            num_layers=5,
            num_single_layers=20,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=7680,
            timestep_guidance_channels=256,
            mlp_ratio=3.0,
            axes_dims_rope=[32, 32, 32, 32],
            rope_theta=2000,
            eps=1e-6,
            guidance_embeds=False,
        ),
        lora_targets=_FLUX2_LORA,
        text_tokens=512,
        cfg_rows=2,  # the base (trainable) model samples with true CFG
        text_encoders={"qwen3-4b": ("Qwen3ForCausalLM", _QWEN3_4B)},
        vae_class="AutoencoderKLFlux2",
        vae_config={},
    ),
    # black-forest-labs/FLUX.2-dev, transformer/config.json (Flux2Transformer2DModel's defaults are this config)
    "flux2-dev": ModelSpec(
        name="FLUX.2-dev",
        transformer_class="Flux2Transformer2DModel",
        transformer_config=dict(
            patch_size=1,
            in_channels=128,
            num_layers=8,
            num_single_layers=48,
            attention_head_dim=128,
            num_attention_heads=48,
            joint_attention_dim=15360,  # Mistral's hidden states of layers 10, 20 and 30 stacked: 3 x 5120
            timestep_guidance_channels=256,
            mlp_ratio=3.0,
            axes_dims_rope=[32, 32, 32, 32],
            rope_theta=2000,
            eps=1e-6,
            guidance_embeds=True,
        ),
        lora_targets=_FLUX2_LORA,
        text_tokens=512,
        cfg_rows=1,  # embedded guidance: one forward per image
        text_encoders={"mistral-small-3.1-24b": ("Mistral3ForConditionalGeneration", _MISTRAL3_24B)},
        vae_class="AutoencoderKLFlux2",
        vae_config={},
    ),
    # Qwen/Qwen-Image, transformer/config.json
    "qwen-image": ModelSpec(
        name="Qwen-Image",
        transformer_class="QwenImageTransformer2DModel",
        transformer_config=dict(
            patch_size=2,
            in_channels=64,
            out_channels=16,
            num_layers=60,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=3584,
            guidance_embeds=False,
            axes_dims_rope=[16, 56, 56],
        ),
        lora_targets=default_lora_target_modules("qwenimage"),
        text_tokens=512,  # the prompt's own length, at most max_sequence_length 512: counted at the maximum
        cfg_rows=2,  # true CFG (true_cfg_scale)
        text_encoders={"qwen2.5-vl-7b": ("Qwen2_5_VLForConditionalGeneration", _QWEN25_VL_7B)},
        # vae/config.json: AutoencoderKLQwenImage's defaults (base_dim 96, z_dim 16, dim_mult [1, 2, 4, 4],
        # 2 res blocks, temporal downsampling [False, True, True])
        vae_class="AutoencoderKLQwenImage",
        vae_config={},
    ),
    # Efficient-Large-Model/Sana_1600M_1024px_diffusers, transformer/config.json
    "sana-1600m": ModelSpec(
        name="SANA-1600M",
        transformer_class="SanaTransformer2DModel",
        transformer_config=dict(
            in_channels=32,
            out_channels=32,
            num_attention_heads=70,
            attention_head_dim=32,
            num_layers=20,
            num_cross_attention_heads=20,
            cross_attention_head_dim=112,
            cross_attention_dim=2240,
            caption_channels=2304,
            mlp_ratio=2.5,
            attention_bias=False,
            sample_size=32,
            patch_size=1,
            norm_elementwise_affine=False,
            norm_eps=1e-6,
        ),
        lora_targets=default_lora_target_modules("sana"),
        text_tokens=300,  # SanaPipeline's max_sequence_length
        cfg_rows=2,
        text_encoders={"gemma-2-2b": ("Gemma2Model", _GEMMA2_2B)},
        # vae/config.json of mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers (the DC-AE: 32x down, 32 channels)
        vae_class="AutoencoderDC",
        vae_config=dict(
            latent_channels=32,
            attention_head_dim=32,
            encoder_block_types=["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
            decoder_block_types=["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
            encoder_block_out_channels=[128, 256, 512, 512, 1024, 1024],
            decoder_block_out_channels=[128, 256, 512, 512, 1024, 1024],
            encoder_layers_per_block=[2, 2, 2, 3, 3, 3],
            decoder_layers_per_block=[3, 3, 3, 3, 3, 3],
            encoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
            decoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
            upsample_block_type="interpolate",
            downsample_block_type="Conv",
            decoder_norm_types="rms_norm",
            decoder_act_fns="silu",
        ),
        block_lists=("transformer_blocks",),
        vae_scale_factor=32,
        patch_size=1,
    ),
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers, transformer/config.json
    "wan2.1-t2v-1.3b": ModelSpec(
        name="Wan2.1-T2V-1.3B",
        transformer_class="WanTransformer3DModel",
        transformer_config=dict(
            patch_size=[1, 2, 2],
            num_attention_heads=12,
            attention_head_dim=128,
            in_channels=16,
            out_channels=16,
            text_dim=4096,
            freq_dim=256,
            ffn_dim=8960,
            num_layers=30,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            rope_max_seq_len=1024,
        ),
        lora_targets=default_lora_target_modules("wan"),
        text_tokens=512,  # WanPipeline's max_sequence_length (padded to it)
        cfg_rows=2,
        text_encoders={"umt5-xxl": ("UMT5EncoderModel", _UMT5_XXL)},
        # vae/config.json: AutoencoderKLWan's defaults (base_dim 96, z_dim 16, dim_mult [1, 2, 4, 4], 2 res blocks)
        vae_class="AutoencoderKLWan",
        vae_config={},
        block_lists=("blocks",),
        num_frames=81,  # WanPipeline's default
    ),
    # Tongyi-MAI/Z-Image, transformer/config.json (the same as Z-Image-Turbo's; siglip_feat_dim null)
    "z-image": ModelSpec(
        name="Z-Image",
        transformer_class="ZImageTransformer2DModel",
        transformer_config=dict(
            all_patch_size=[2],
            all_f_patch_size=[1],
            in_channels=16,
            dim=3840,
            n_layers=30,
            n_refiner_layers=2,
            n_heads=30,
            n_kv_heads=30,
            norm_eps=1e-5,
            qk_norm=True,
            cap_feat_dim=2560,
            rope_theta=256.0,
            t_scale=1000.0,
            axes_dims=[32, 48, 48],
            axes_lens=[1536, 512, 512],
        ),
        lora_targets=default_lora_target_modules("zimage"),
        text_tokens=512,  # the prompt's own length (padded to a multiple of 32), at most 512: counted at the maximum
        cfg_rows=2,  # CFG: the conditional and unconditional rows in one forward
        text_encoders={"qwen3-4b": ("Qwen3ForCausalLM", _QWEN3_4B)},
        block_lists=("noise_refiner", "context_refiner", "layers"),
    ),
    # stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json
    "sd1.5": ModelSpec(
        name="SD1.5",
        transformer_class="UNet2DConditionModel",
        transformer_config=dict(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            block_out_channels=[320, 640, 1280, 1280],
            layers_per_block=2,
            attention_head_dim=8,
            cross_attention_dim=768,
            norm_num_groups=32,
        ),
        lora_targets=default_lora_target_modules("sd15"),
        text_tokens=77,
        cfg_rows=2,
        text_encoders={"clip-l": ("CLIPTextModel", _CLIP_L)},
        vae_config=dict(_VAE_4),
        block_lists=(),
        block_classes=("ResnetBlock2D", "BasicTransformerBlock"),
    ),
    # stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
    "sdxl": ModelSpec(
        name="SDXL-base-1.0",
        transformer_class="UNet2DConditionModel",
        transformer_config=dict(
            sample_size=128,
            in_channels=4,
            out_channels=4,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            block_out_channels=[320, 640, 1280],
            layers_per_block=2,
            attention_head_dim=[5, 10, 20],
            transformer_layers_per_block=[1, 2, 10],
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,  # pooled bigG (1280) + 6 size / crop ids x 256
            norm_num_groups=32,
        ),
        lora_targets=default_lora_target_modules("sdxl"),
        text_tokens=77,
        cfg_rows=2,
        text_encoders={
            "clip-l": ("CLIPTextModel", _CLIP_L),
            "clip-g": ("CLIPTextModelWithProjection", _CLIP_G),
        },
        vae_config=dict(_VAE_4),
        block_lists=(),
        block_classes=("ResnetBlock2D", "BasicTransformerBlock"),
    ),
}


# ---------------------------------------------------------------------------------------------------- building
@contextmanager
def _creating(device, dtype: torch.dtype):
    """New modules' tensors are created on `device` in `dtype` directly (no cast, no float32 copy; on `meta`
    nothing is allocated or initialised)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_transformer(spec: ModelSpec, device: str = "meta", dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    import diffusers

    with _creating(device, dtype):
        return getattr(diffusers, spec.transformer_class)(**spec.transformer_config)


def _build_module(library: str, class_name: str, config: dict) -> torch.nn.Module:
    if library == "diffusers":
        import diffusers

        with torch.device("meta"):
            return getattr(diffusers, class_name)(**config)
    import transformers

    cls = getattr(transformers, class_name)
    config_cls = cls.config_class
    with torch.device("meta"):
        return cls(config_cls(**config))


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def add_lora(model: torch.nn.Module, targets: Any, rank: int) -> int:
    """Add a LoRA adapter of `rank` (as the trainer does) and return its number of parameters."""
    from peft import LoraConfig

    model.requires_grad_(False)
    base = next(model.parameters())
    with _creating(base.device, base.dtype):  # in the base weights' dtype, as peft casts them
        model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets))
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def block_modules(model: torch.nn.Module, spec: ModelSpec) -> list[torch.nn.Module]:
    """The modules gradient checkpointing recomputes one at a time (`spec.block_lists`, then `spec.block_classes`)."""
    blocks = [b for name in spec.block_lists for b in getattr(model, name, [])]
    return blocks + [m for m in model.modules() if type(m).__name__ in spec.block_classes]


def height_width(px) -> tuple[int, int]:
    """`(height, width)` of a size given as a square side or as `(height, width)`."""
    return (int(px), int(px)) if isinstance(px, int) else (int(px[0]), int(px[1]))


def size_label(px) -> str:
    """`"512"` for a square size, `"480x832"` (height x width) otherwise: the size part of the activation keys."""
    h, w = height_width(px)
    return str(h) if h == w else f"{h}x{w}"


def sample_frames(spec: ModelSpec, num_frames: Optional[int] = None) -> int:
    """Frames of one sample: `num_frames` (default `spec.num_frames`) for a video family, 1 for an image family."""
    return int(num_frames or spec.num_frames) if spec.num_frames > 1 else 1


def latent_frames(spec: ModelSpec, num_frames: Optional[int] = None) -> int:
    """Latent frames of a sample: Wan's VAE keeps the first frame and compresses the rest 4x in time; 1 for images."""
    return (sample_frames(spec, num_frames) - 1) // 4 + 1


def image_tokens(spec: ModelSpec, px, num_frames: Optional[int] = None) -> int:
    """Image tokens of a `px` (side or `(height, width)`) sample: the VAE's downsampling, then `patch_size` x
    `patch_size` patches (FLUX's packing, SD3 / Qwen-Image / Wan / Z-Image patches; SANA: 32x VAE, 1x1), per latent
    frame for video."""
    h, w = height_width(px)
    f = spec.vae_scale_factor * spec.patch_size
    return latent_frames(spec, num_frames) * (h // f) * (w // f)


def dummy_inputs(
    spec: ModelSpec, model, rows: int, px, device: str, dtype: torch.dtype, num_frames: Optional[int] = None
) -> dict[str, Any]:
    """Keyword arguments of one training forward of `rows` rows at `px` (side or `(height, width)`), shaped as the
    family's adapter (`pipelines/adapters/<family>.py`, `predict`) calls the denoiser, without text padding masks:
    every row holds `spec.text_tokens` tokens, and attention is counted as the unmasked flash kernel keeps it."""
    cfg = model.config
    n_img, n_txt = image_tokens(spec, px, num_frames), spec.text_tokens
    h, w = (side // spec.vae_scale_factor for side in height_width(px))

    def t(*shape, dt=dtype):
        return torch.zeros(*shape, device=device, dtype=dt)

    timestep = t(rows, dt=torch.float32)
    kind = spec.transformer_class
    if kind == "SD3Transformer2DModel":
        return dict(
            hidden_states=t(rows, cfg.in_channels, h, w),
            encoder_hidden_states=t(rows, n_txt, cfg.joint_attention_dim),
            pooled_projections=t(rows, cfg.pooled_projection_dim),
            timestep=timestep,
            return_dict=False,
        )
    if kind == "UNet2DConditionModel":
        kwargs = dict(
            sample=t(rows, cfg.in_channels, h, w),
            timestep=timestep,
            encoder_hidden_states=t(rows, n_txt, cfg.cross_attention_dim),
            return_dict=False,
        )
        if cfg.addition_embed_type == "text_time":  # SDXL: pooled text embedding + 6 size / crop ids
            pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            kwargs["added_cond_kwargs"] = {"text_embeds": t(rows, pooled), "time_ids": t(rows, 6)}
        return kwargs
    if kind == "QwenImageTransformer2DModel":
        p = cfg.patch_size
        return dict(
            hidden_states=t(rows, n_img, cfg.in_channels),
            encoder_hidden_states=t(rows, n_txt, cfg.joint_attention_dim),
            timestep=timestep,
            img_shapes=[[(1, h // p, w // p)]] * rows,
            return_dict=False,
        )
    if kind == "SanaTransformer2DModel":
        return dict(
            hidden_states=t(rows, cfg.in_channels, h, w),
            encoder_hidden_states=t(rows, n_txt, cfg.caption_channels),
            timestep=timestep,
            return_dict=False,
        )
    if kind == "WanTransformer3DModel":
        return dict(
            hidden_states=t(rows, cfg.in_channels, latent_frames(spec, num_frames), h, w),
            timestep=timestep,
            encoder_hidden_states=t(rows, n_txt, cfg.text_dim),
            return_dict=False,
        )
    if kind == "ZImageTransformer2DModel":  # lists of per-row (C, F, H, W) latents and (L, D) captions
        return dict(
            x=[t(cfg.in_channels, 1, h, w) for _ in range(rows)],
            t=timestep,
            cap_feats=[t(n_txt, cfg.cap_feat_dim) for _ in range(rows)],
            return_dict=False,
        )
    ids = len(cfg.axes_dims_rope)  # FLUX.1 / FLUX.2: packed latents, position ids
    kwargs = dict(
        hidden_states=t(rows, n_img, cfg.in_channels),
        encoder_hidden_states=t(rows, n_txt, cfg.joint_attention_dim),
        timestep=timestep,
        img_ids=t(n_img, ids, dt=torch.float32),
        txt_ids=t(n_txt, ids, dt=torch.float32),
        guidance=t(rows, dt=torch.float32) if cfg.guidance_embeds else None,
        return_dict=False,
    )
    if kind == "FluxTransformer2DModel":
        kwargs["pooled_projections"] = t(rows, cfg.pooled_projection_dim)
    return kwargs


def output_bytes(out) -> int:
    """Bytes of a denoiser's output: a tensor, or Z-Image's list of per-row tensors."""
    if torch.is_tensor(out):
        return out.numel() * out.element_size()
    return sum(output_bytes(o) for o in out)


# ---------------------------------------------------------------------------------------------------- activations
class _FlashAttentionCount(torch.autograd.Function):
    """Stand-in for SDPA while counting: keeps what flash / memory-efficient attention keeps for the backward pass
    (q, k, v, the output and a float32 log-sum-exp per query), not the N x N probabilities of the math path."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], device=q.device, dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: counting only
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


@contextmanager
def _flash_attention_counting():
    original = torch.nn.functional.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if attn_mask is not None:
            raise NotImplementedError("counting a masked attention is not supported")
        return _FlashAttentionCount.apply(query, key, value)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s._cdata, s.nbytes()


@dataclass
class ActivationProfile:
    """Bytes autograd keeps for the backward pass of one forward."""

    total: int  # without gradient checkpointing
    outside_blocks: int  # embeddings, final norm/projection, output
    block_inputs: int  # what checkpointed blocks keep (their inputs, shared ones once)
    largest_block: int  # the largest block's own tensors (recomputed one at a time under checkpointing)
    num_blocks: int

    @property
    def checkpointed(self) -> int:
        return self.outside_blocks + self.block_inputs + self.largest_block

    def peak(self, gradient_checkpointing: bool) -> int:
        return self.checkpointed if gradient_checkpointing else self.total


def activation_profile(
    model: torch.nn.Module,
    spec: ModelSpec,
    rows: int,
    px,
    device: str = "meta",
    dtype=torch.bfloat16,
    num_frames: Optional[int] = None,
) -> ActivationProfile:
    """Count the saved-for-backward bytes of one forward of `model` (LoRA or full: as its `requires_grad` says) at
    `px` (side or `(height, width)`; video: `num_frames` frames, default `spec.num_frames`)."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    blocks = block_modules(model, spec)
    seen: dict[int, int] = {}
    per_block: list[dict[int, int]] = [{} for _ in blocks]
    inputs: dict[int, int] = {}
    outside = 0
    current: list[Optional[int]] = [None]
    keep: list[torch.Tensor] = []  # keep every saved tensor alive: storage ids stay unique

    def pack(t: torch.Tensor):
        nonlocal outside
        key, nbytes = _storage_key(t)
        if key in params:
            return t
        keep.append(t)
        if current[0] is not None:
            per_block[current[0]].setdefault(key, nbytes)
        elif key not in seen:
            outside += nbytes
        seen.setdefault(key, nbytes)
        return t

    def pre_hook(i):
        def hook(module, args, kwargs):
            current[0] = i
            for a in list(args) + list(kwargs.values()):
                for x in a if isinstance(a, (tuple, list)) else (a,):
                    if torch.is_tensor(x):
                        keep.append(x)
                        key, nbytes = _storage_key(x)
                        inputs.setdefault(key, nbytes)

        return hook

    def post_hook(module, args, output):
        current[0] = None

    handles = []
    for i, b in enumerate(blocks):
        handles.append(b.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
        handles.append(b.register_forward_hook(post_hook))
    kwargs = dummy_inputs(spec, model, rows, px, device, dtype, num_frames)
    try:
        with _flash_attention_counting(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(**kwargs)[0]
        out_bytes = output_bytes(out)
    finally:
        for h in handles:
            h.remove()
    block_inputs = sum(inputs.values())
    return ActivationProfile(
        total=sum(seen.values()) + out_bytes,
        outside_blocks=outside + out_bytes,
        block_inputs=block_inputs,
        largest_block=max((sum(d.values()) for d in per_block), default=0),
        num_blocks=len(blocks),
    )


# ---------------------------------------------------------------------------------------------------- the plan
@dataclass
class ModelCounts:
    name: str
    denoiser_params: int
    largest_block_params: int
    lora_params: int
    lora_rank: int
    text_encoder_params: dict
    vae_params: int
    # activation bytes per image (all cfg rows), keyed "{size_label(px)}:{lora|full}:{gc|nogc}"
    activations: dict = field(default_factory=dict)
    num_frames: int = 1  # frames per sample the activations were counted at (video families)


def count_model(
    spec: ModelSpec,
    lora_rank: int = 32,
    resolutions: Iterable = RESOLUTIONS,
    activations: bool = True,
    num_frames: Optional[int] = None,
) -> ModelCounts:
    """Parameters of `spec`'s denoiser, text encoders, VAE and a rank-`lora_rank` LoRA, and the activation bytes of
    one sample (`spec.cfg_rows` rows) at each of `resolutions` (sides or `(height, width)`; video: `num_frames`
    frames, default `spec.num_frames`), LoRA and full fine-tune, with and without gradient checkpointing."""
    model = build_transformer(spec)
    num_frames = sample_frames(spec, num_frames)
    blocks = block_modules(model, spec)
    counts = ModelCounts(
        name=spec.name,
        denoiser_params=count_parameters(model),
        largest_block_params=max(count_parameters(b) for b in blocks),
        lora_params=0,
        lora_rank=lora_rank,
        text_encoder_params={
            name: count_parameters(_build_module("transformers", cls, cfg))
            for name, (cls, cfg) in spec.text_encoders.items()
        },
        vae_params=count_parameters(_build_module("diffusers", spec.vae_class, spec.vae_config)),
        num_frames=num_frames,
    )
    if activations:
        model.requires_grad_(True)
        for px in resolutions:
            prof = activation_profile(model, spec, spec.cfg_rows, px, num_frames=num_frames)
            counts.activations[f"{size_label(px)}:full:nogc"] = prof.total
            counts.activations[f"{size_label(px)}:full:gc"] = prof.checkpointed
    counts.lora_params = add_lora(model, spec.lora_targets, lora_rank)
    if activations:
        for px in resolutions:
            prof = activation_profile(model, spec, spec.cfg_rows, px, num_frames=num_frames)
            counts.activations[f"{size_label(px)}:lora:nogc"] = prof.total
            counts.activations[f"{size_label(px)}:lora:gc"] = prof.checkpointed
    return counts


@dataclass
class GPUPlan:
    """Bytes per GPU of one configuration; `total` adds them up."""

    weights: int
    trainable_state: int  # float32 master weights (full) / LoRA weights, float32 gradients, optimiser moments
    gathered: int  # FSDP2 / ZeRO-3: the all-gathered block being computed and the prefetched next one
    text_encoders: int
    vae: int
    activations: int
    rewards: int = 0  # the reward models on the training GPU, in their dtype (0: reward_device elsewhere)
    overhead: int = OVERHEAD_BYTES

    @property
    def total(self) -> int:
        return sum(asdict(self).values())


def per_gpu(
    counts: ModelCounts,
    *,
    mode: str,
    strategy: str,
    num_gpus: int,
    px,
    gradient_checkpointing: bool = True,
    micro_batch: int = 1,
    optimizer: str = "adamw",
    free_text_encoders: bool = True,
    reward_bytes: int = 0,
) -> GPUPlan:
    """Per-GPU bytes of a LoRA (`mode="lora"`) or full fine-tune (`"full"`) under `strategy` on `num_gpus` GPUs."""
    if mode not in ("lora", "full"):
        raise ValueError(f"mode must be 'lora' or 'full', got {mode!r}.")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
    if optimizer not in ("adamw", "adamw8bit"):
        raise ValueError(f"optimizer must be 'adamw' or 'adamw8bit', got {optimizer!r}.")
    n = num_gpus
    moments = 8 if optimizer == "adamw" else 2
    if mode == "lora":
        frozen, trained = counts.denoiser_params * 2, counts.lora_params
        trained_weights = trained * 4
    else:
        frozen, trained = 0, counts.denoiser_params
        trained_weights = trained * 4  # the trainer keeps trained weights in float32
    grads_and_moments = trained * (4 + moments)
    if strategy == "ddp":
        # DDP also keeps its gradient buckets (a copy of the gradients) unless gradient_as_bucket_view.
        weights, state, gathered = frozen + trained_weights, grads_and_moments + trained * 4, 0
    elif strategy == "zero2":
        weights, state, gathered = frozen + trained_weights, grads_and_moments / n, 0
    else:  # fsdp2, zero3: everything sharded; one block computed while the next is prefetched (bf16)
        weights, state = (frozen + trained_weights) / n, grads_and_moments / n
        gathered = 2 * counts.largest_block_params * 2 if n > 1 else 0
    key = f"{size_label(px)}:{mode}:{'gc' if gradient_checkpointing else 'nogc'}"
    if key not in counts.activations:
        raise ValueError(f"No activation count for {key}; count_model(resolutions=...) must include {px}.")
    text = 0 if free_text_encoders else 2 * sum(counts.text_encoder_params.values())
    return GPUPlan(
        weights=int(weights),
        trainable_state=int(state),
        gathered=int(gathered),
        text_encoders=text,
        vae=2 * counts.vae_params,
        activations=micro_batch * counts.activations[key],
        rewards=int(reward_bytes),
    )


# ---------------------------------------------------------------------------------------------------- shipped configs
# Parameters of the registered reward models (docs/rewards.md): HPS v2.1 and PickScore are open_clip / CLIP ViT-H-14
# (986 M), ImageReward BLIP ViT-L/16 + BERT (~450 M), clipscore CLIP ViT-L/14 (428 M), aesthetic its vision tower
# (304 M) + a small MLP; unifiedreward and remote run on another machine. Video: temporal_consistency has no weights;
# frame_mean holds the image reward it averages over the frames (`reward_kwargs: frame_mean: image_reward`).
REWARD_PARAMS = {"hpsv2.1": 986_000_000, "pickscore": 986_000_000, "imagereward": 450_000_000}
REWARD_PARAMS.update(clipscore=428_000_000, aesthetic=305_000_000, unifiedreward=0, remote=0)
REWARD_PARAMS.update(temporal_consistency=0)
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# The Hub ids of the shipped configs -> the plan's model keys.
HUB_MODELS = {
    "black-forest-labs/FLUX.1-dev": "flux1-dev",
    "stabilityai/stable-diffusion-3.5-medium": "sd3.5-medium",
    "stabilityai/stable-diffusion-3.5-large": "sd3.5-large",
    "black-forest-labs/FLUX.2-klein-base-4B": "flux2-klein-4b",
    "black-forest-labs/FLUX.2-dev": "flux2-dev",
    "Qwen/Qwen-Image": "qwen-image",
    "Efficient-Large-Model/Sana_1600M_1024px_diffusers": "sana-1600m",
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": "wan2.1-t2v-1.3b",
    "Tongyi-MAI/Z-Image": "z-image",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd1.5",
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
}


def reward_bytes(rewards: Iterable[str], dtype: str = "float32", reward_kwargs: Optional[dict] = None) -> int:
    """Bytes of the registered reward models `rewards` in `dtype` (an unknown reward raises KeyError); `frame_mean`
    counts the image reward its `reward_kwargs` name."""
    reward_kwargs = reward_kwargs or {}

    def params(name: str) -> int:
        if name == "frame_mean":
            return REWARD_PARAMS[reward_kwargs[name]["image_reward"]]
        return REWARD_PARAMS[name]

    return sum(params(name) for name in rewards) * _DTYPE_BYTES[dtype]


def launch_topology(launch_config: Optional[str]) -> tuple[str, int]:
    """`(strategy, GPUs)` of an accelerate launch config (`None`: one GPU)."""
    if launch_config is None:
        return "ddp", 1
    import yaml

    with open(launch_config) as f:
        launch = yaml.safe_load(f)
    n = int(launch.get("num_processes", 1))
    kind = str(launch.get("distributed_type", "NO"))
    if kind == "FSDP":
        return "fsdp2", n
    if kind == "DEEPSPEED":
        return f"zero{int(launch['deepspeed_config']['zero_stage'])}", n
    return "ddp", n


def config_plan(
    config_path: str, launch_config: Optional[str] = None, counts: Optional[ModelCounts] = None, **overrides: Any
) -> GPUPlan:
    """Per-GPU bytes of a shipped training config (`examples/configs/*.yaml`) under a launch config: its LoRA or full
    fine-tune, training micro-batch (`train_batch_size`, else the rollout chunk), resolution, gradient checkpointing,
    optimiser, text encoders as configured (on the GPU unless `offload_text_encoders` is `cpu` or `free`) and reward
    models in `reward_dtype`, the monitor rewards included (none on the training GPU when `reward_device` is set).
    `overrides`: config fields."""
    from diffusers_mixgrpo.training.config import GRPOConfig

    cfg = GRPOConfig.from_yaml(config_path, **overrides)
    key, px, num_frames, lora_rank = config_counts_key(cfg)
    counts = counts or count_model(MODELS[key], lora_rank, resolutions=(px,), num_frames=num_frames)
    strategy, n = launch_topology(launch_config)
    micro = cfg.train_batch_size or cfg.sample_max_batch_size or cfg.rollouts_per_device
    on_gpu = cfg.reward_device is None  # None: the training device; "cpu" or another GPU ("cuda:1"): off it
    models = [*(cfg.rewards or {}), *(cfg.monitor_rewards or [])]  # monitors are loaded beside the trained rewards
    return per_gpu(
        counts,
        mode="lora" if cfg.use_lora else "full",
        strategy=strategy,
        num_gpus=n,
        px=px,
        gradient_checkpointing=cfg.gradient_checkpointing,
        micro_batch=int(min(micro, cfg.rollouts_per_device)),
        optimizer=cfg.optimizer,
        free_text_encoders=cfg.offload_text_encoders in ("cpu", "free"),
        reward_bytes=reward_bytes(models, cfg.reward_dtype, cfg.reward_kwargs) if on_gpu else 0,
    )


def config_counts_key(cfg) -> tuple[str, Any, int, int]:
    """What `count_model` needs of a training config: `(model key, size, frames, LoRA rank)`; the size is the square
    side, or `(height, width)` when they differ (512 when the config sets neither)."""
    key = HUB_MODELS[cfg.pretrained_model_name_or_path]
    height = int(cfg.height or cfg.resolution or 512)
    width = int(cfg.width or height)
    px = height if height == width else (height, width)
    return key, px, sample_frames(MODELS[key], cfg.num_frames), int(cfg.lora_rank)


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_LAUNCHES = ("single_gpu", "multi_gpu_ddp", "deepspeed_zero2", "fsdp2", "deepspeed_zero3", "multi_node_2x8")


def shipped_table() -> list[dict]:
    """Per-GPU GiB of every shipped training config whose model the plan knows, as shipped (LoRA) and as a full
    fine-tune, under every shipped launch config (`multi_node_2x8`: FSDP2 over 16 GPUs on 2 machines)."""
    import glob

    from diffusers_mixgrpo.training.config import GRPOConfig

    rows, cache = [], {}
    for path in sorted(glob.glob(os.path.join(_ROOT, "examples", "configs", "*.yaml"))):
        cfg = GRPOConfig.from_yaml(path)
        if cfg.pretrained_model_name_or_path not in HUB_MODELS:
            continue
        what = config_counts_key(cfg)
        key, px, num_frames, lora_rank = what
        if what not in cache:
            cache[what] = count_model(MODELS[key], lora_rank, resolutions=(px,), num_frames=num_frames)
        size = f"{size_label(px)} px" + (f", {num_frames} frames" if num_frames > 1 else "")
        for use_lora in (True, False):
            row = {"config": os.path.relpath(path, _ROOT), "model": MODELS[key].name, "size": size, "lora": use_lora}
            mode = {"use_lora": use_lora}
            if (
                not use_lora and cfg.kl_type == "reference"
            ):  # the LoRA-off reference needs a LoRA: full runs go without
                mode.update(kl_type="none", kl_coeff=0.0)  # (it adds no weights or saved activations either way)
            for launch in SHIPPED_LAUNCHES:
                launch_path = os.path.join(_ROOT, "examples", "accelerate", f"{launch}.yaml")
                plan = config_plan(path, launch_path, cache[what], **mode)
                row[launch] = plan.total / GiB
            row["parts"] = asdict(config_plan(path, None, cache[what], **mode))
            rows.append(row)
    return rows


def format_shipped_table(rows: list[dict]) -> str:
    """`shipped_table` as markdown: GiB per GPU per launch config, and the cheapest launch that fits each card."""
    header = "config | training | " + " | ".join(SHIPPED_LAUNCHES) + " | fits 24 / 48 / 80 GB (+10%) with"
    lines = [header, "--- | " * (len(SHIPPED_LAUNCHES) + 2) + "---"]
    for r in rows:
        cheapest = " / ".join(
            next((lc for lc in SHIPPED_LAUNCHES if fits(r[lc] * GiB, g)), "none") for g in GPU_SIZES_GB
        )
        gibs = " | ".join(f"{r[lc]:.1f}" for lc in SHIPPED_LAUNCHES)
        lines.append(f"`{r['config']}` ({r['size']}) | {'LoRA' if r['lora'] else 'full'} | {gibs} | {cheapest}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- validation
_VALIDATION_SPEC = "flux-validation"
MODELS[_VALIDATION_SPEC] = ModelSpec(
    name="FLUX-shaped validation config (4 + 8 blocks, width 384)",
    transformer_class="FluxTransformer2DModel",
    transformer_config=dict(
        patch_size=1,
        in_channels=64,
        num_layers=4,
        num_single_layers=8,
        attention_head_dim=64,
        num_attention_heads=6,
        joint_attention_dim=512,
        pooled_projection_dim=128,
        guidance_embeds=True,
        axes_dims_rope=[16, 24, 24],
    ),
    lora_targets=_FLUX_LORA,
    text_tokens=64,
    cfg_rows=1,
    text_encoders={},
)


def _measure_child(px: int, rows: int, gradient_checkpointing: bool, lora_rank: int) -> dict:
    """In a fresh process: real float32 forward + backward on the CPU; peak resident memory above the baseline."""
    torch.manual_seed(0)
    spec = MODELS[_VALIDATION_SPEC]
    model = build_transformer(spec, device="cpu", dtype=torch.float32)
    add_lora(model, spec.lora_targets, lora_rank)
    for p in model.parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.02)
    if gradient_checkpointing:
        model.enable_gradient_checkpointing()
    kwargs = dummy_inputs(spec, model, rows, px, "cpu", torch.float32)
    for k, v in kwargs.items():
        if torch.is_tensor(v) and v.is_floating_point() and k in ("hidden_states", "encoder_hidden_states"):
            v.normal_()
    # Warm-up on a tiny input (one-off allocations: kernels, thread pools, autograd engine) before the baseline; the
    # real input is never run before the measurement (resident memory is a high-water mark).
    small = dummy_inputs(spec, model, 1, 64, "cpu", torch.float32)
    model(**small)[0].sum().backward()
    model.zero_grad(set_to_none=True)
    base = reset_peak_rss()
    out = model(**kwargs)[0]
    out.float().pow(2).mean().backward()
    return {"measured_bytes": peak_rss_since(base)}


# The measuring method (also used by tests/training/fsdp2_setup_memory_script.py): a fresh process started with
# `MEASURE_ENV` (freed large buffers go back to the OS, so resident memory follows live memory), warmed up, then the
# high-water mark of its resident memory above the baseline `reset_peak_rss` returns.
MEASURE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status (the CPU validation needs Linux)")


def reset_peak_rss() -> int:
    """Reset this process's resident-memory high-water mark (VmHWM) to its current size; returns that size (bytes),
    the baseline of `peak_rss_since`."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _proc_status_bytes("VmRSS")


def peak_rss_since(base: int) -> int:
    """Peak resident memory (bytes) above `base` since `reset_peak_rss` returned it."""
    return _proc_status_bytes("VmHWM") - base


def validate_on_cpu(
    px: int = 512, rows: int = 2, lora_rank: int = 8, gradient_checkpointing: bool = False
) -> dict[str, float]:
    """Estimate (meta count) vs measured peak (real CPU run in a subprocess, `MALLOC_MMAP_THRESHOLD_` set so that
    freed large buffers go back to the OS and resident memory follows live memory). Returns both and the error."""
    spec = MODELS[_VALIDATION_SPEC]
    model = build_transformer(spec, dtype=torch.float32)
    lora = add_lora(model, spec.lora_targets, lora_rank)
    prof = activation_profile(model, spec, rows, px, dtype=torch.float32)
    estimate = prof.peak(gradient_checkpointing) + lora * 4  # + the LoRA gradients
    env = {**os.environ, **MEASURE_ENV}
    here = os.path.dirname(os.path.abspath(__file__))
    call = f"m._measure_child({px}, {rows}, {gradient_checkpointing!r}, {lora_rank})"
    code = f"import json, sys; sys.path.insert(0, {here!r}); import memory_plan as m; print(json.dumps({call}))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])["measured_bytes"]
    return {
        "px": px,
        "rows": rows,
        "gradient_checkpointing": gradient_checkpointing,
        "estimate_bytes": estimate,
        "measured_bytes": measured,
        "relative_error": (estimate - measured) / measured,
    }


# ---------------------------------------------------------------------------------------------------- output
def _gib(b: float) -> str:
    return f"{b / GiB:.1f}"


def format_counts(c: ModelCounts) -> str:
    lines = [
        f"## {c.name}",
        f"denoiser parameters: {c.denoiser_params / 1e9:.3f} B (largest block {c.largest_block_params / 1e6:.0f} M); "
        f"LoRA r={c.lora_rank}: {c.lora_params / 1e6:.1f} M",
        "text encoders: "
        + ", ".join(f"{k} {v / 1e9:.3f} B" for k, v in c.text_encoder_params.items())
        + f"; VAE {c.vae_params / 1e6:.0f} M",
        "",
        f"activations per {'image' if c.num_frames == 1 else f'{c.num_frames}-frame video'} (GiB, bf16) | "
        + " | ".join(f"{px} px" for px in dict.fromkeys(k.split(":")[0] for k in c.activations)),
    ]
    pxs = list(dict.fromkeys(k.split(":")[0] for k in c.activations))  # the size labels, in counting order
    for mode in ("lora", "full"):
        for gc in ("nogc", "gc"):
            label = f"{mode}, {'gradient checkpointing' if gc == 'gc' else 'no checkpointing'}"
            lines.append(f"  {label:<40} | " + " | ".join(_gib(c.activations[f"{px}:{mode}:{gc}"]) for px in pxs))
    return "\n".join(lines)


def fit_table(
    all_counts: dict[str, ModelCounts], px: int = 720, gpu_counts=GPU_COUNTS, optimizer: str = "adamw"
) -> list[dict]:
    rows = []
    for c in all_counts.values():
        for mode in ("lora", "full"):
            for strategy in STRATEGIES:
                for n in gpu_counts:
                    if strategy != "ddp" and n == 1:
                        continue
                    plan = per_gpu(c, mode=mode, strategy=strategy, num_gpus=n, px=px, optimizer=optimizer)
                    rows.append(
                        {
                            "model": c.name,
                            "mode": mode,
                            "strategy": strategy,
                            "gpus": n,
                            "per_gpu_gib": plan.total / GiB,
                            **{f"fits_{g}": plan.total <= GPU_MEMORY_BYTES[g] for g in GPU_SIZES_GB},
                            "plan": asdict(plan),
                        }
                    )
    return rows


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[k for k in MODELS if k != _VALIDATION_SPEC], action="append")
    parser.add_argument("--resolution", type=int, action="append")
    parser.add_argument("--lora_rank", type=int, default=32)
    parser.add_argument("--optimizer", choices=("adamw", "adamw8bit"), default="adamw")
    parser.add_argument("--fit_resolution", type=int, default=720)
    parser.add_argument("--json", help="write the counts and the per-GPU table here")
    parser.add_argument("--validate", action="store_true", help="compare the estimate with a measured CPU peak")
    parser.add_argument("--shipped", action="store_true", help="per-GPU GiB of the shipped configs x launch configs")
    args = parser.parse_args(argv)
    if args.shipped:
        print(format_shipped_table(shipped_table()))
        return
    if args.validate:
        for gc in (False, True):
            r = validate_on_cpu(gradient_checkpointing=gc)
            print(
                f"validation ({MODELS[_VALIDATION_SPEC].name}, {r['px']} px, {r['rows']} images, float32, "
                f"checkpointing={gc}): estimate {r['estimate_bytes'] / 2**20:.0f} MiB, measured peak "
                f"{r['measured_bytes'] / 2**20:.0f} MiB, error {100 * r['relative_error']:+.1f}%"
            )
        return
    keys = args.model or [k for k in MODELS if k != _VALIDATION_SPEC]
    resolutions = sorted(set(args.resolution or RESOLUTIONS) | {args.fit_resolution})
    all_counts = {k: count_model(MODELS[k], args.lora_rank, resolutions) for k in keys}
    for c in all_counts.values():
        print(format_counts(c))
        print()
    rows = fit_table(all_counts, px=args.fit_resolution, optimizer=args.optimizer)
    print(
        f"per GPU at {args.fit_resolution} px, micro-batch 1 image, gradient checkpointing, bf16 weights, "
        f"{args.optimizer}, text encoders freed, +{OVERHEAD_BYTES / GiB:.1f} GiB overhead"
    )
    print("model | mode | strategy | GPUs | GiB per GPU | " + " | ".join(f"{g} GB" for g in GPU_SIZES_GB))
    for r in rows:
        fits = " | ".join("yes" if r[f"fits_{g}"] else "no" for g in GPU_SIZES_GB)
        print(f"{r['model']} | {r['mode']} | {r['strategy']} | {r['gpus']} | {r['per_gpu_gib']:.1f} | {fits}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"counts": {k: asdict(c) for k, c in all_counts.items()}, "per_gpu": rows}, f, indent=1)


if __name__ == "__main__":
    main()
