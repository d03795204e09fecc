"""Tiny, randomly initialised SDXL / SANA / Wan text-to-video pipelines built fully offline (tests and benchmarks).

The real classes and configs of each family at a few hundred thousand parameters; the tokenizers are local WordLevel
models (`tiny_models.build_word_level_tokenizer`), so nothing touches the Hugging Face Hub.
"""

from collections.abc import Iterable
from typing import Optional

import torch

from .tiny_models import _tiny_clip, _tiny_vae, build_word_level_tokenizer

__all__ = ["build_tiny_sdxl_pipeline"]


def build_tiny_sdxl_pipeline(seed: int = 0, vocab: Optional[Iterable[str]] = None):
    """A tiny `StableDiffusionXLPipeline` with SDXL's stock `EulerDiscreteScheduler` config (leading, offset 1)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tok, tok_2 = build_word_level_tokenizer(vocab), build_word_level_tokenizer(vocab)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six time ids of 8 dims + the pooled text embedding
        cross_attention_dim=64,  # both encoders' hidden states, concatenated
        norm_num_groups=8,
    )
    scheduler = EulerDiscreteScheduler(  # the values of SDXL base 1.0's scheduler_config.json
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
        use_karras_sigmas=False,
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(4, seed + 1, scaling_factor=0.13025),
        text_encoder=_tiny_clip(len(tok), 32, seed=seed + 2),
        text_encoder_2=_tiny_clip(len(tok_2), 32, projection=32, seed=seed + 3),
        tokenizer=tok,
        tokenizer_2=tok_2,
        unet=unet.eval(),
        scheduler=scheduler,
        add_watermarker=False,
    )
