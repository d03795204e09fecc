"""Tiny, randomly initialised SDXL / SANA / Wan text-to-video pipelines built fully offline (tests and benchmarks).

The real classes and configs of each family at a few hundred thousand parameters; the tokenizers are local WordLevel
models (`tiny_models.build_word_level_tokenizer`), so nothing touches the Hugging Face Hub.
"""

from collections.abc import Iterable
from typing import Optional

import torch

from .tiny_models import _tiny_clip, _tiny_vae, build_word_level_tokenizer

__all__ = ["build_tiny_sana_pipeline", "build_tiny_sdxl_pipeline", "build_tiny_wan_pipeline"]


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


def build_tiny_wan_pipeline(seed: int = 0, vocab: Optional[Iterable[str]] = None, flow_shift: float = 3.0):
    """A tiny `WanPipeline` (text-to-video) with Wan 2.1's stock `UniPCMultistepScheduler` flow-sigma config."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tok = build_word_level_tokenizer(vocab)
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    torch.manual_seed(seed + 2)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tok),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=2,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=3,
            decoder_start_token_id=0,
        )
    )
    scheduler = UniPCMultistepScheduler(  # Wan2.1-T2V-1.3B-Diffusers' scheduler_config.json, flow_shift 3 (480p)
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        num_train_timesteps=1000,
        flow_shift=flow_shift,
        solver_order=2,
        solver_type="bh2",
    )
    return WanPipeline(
        tokenizer=tok,
        text_encoder=text_encoder.eval(),
        vae=vae.eval(),
        transformer=transformer.eval(),
        scheduler=scheduler,
    )


def build_tiny_sana_pipeline(seed: int = 0, vocab: Optional[Iterable[str]] = None, flow_shift: float = 3.0):
    """A tiny `SanaPipeline` (Gemma-2 encoder, DC-AE) with SANA's stock `DPMSolverMultistepScheduler` flow config."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    tok = build_word_level_tokenizer(vocab)
    torch.manual_seed(seed)
    transformer = SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=4,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=16,
        sample_size=16,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=[1, 1],
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    torch.manual_seed(seed + 2)
    text_encoder = Gemma2Model(
        Gemma2Config(
            vocab_size=len(tok),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=512,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        )
    )
    scheduler = DPMSolverMultistepScheduler(  # Sana_1600M_1024px_diffusers' scheduler_config.json
        algorithm_type="dpmsolver++",
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=flow_shift,
        solver_order=2,
        solver_type="midpoint",
    )
    return SanaPipeline(
        tokenizer=tok,
        text_encoder=text_encoder.eval(),
        vae=vae.eval(),
        transformer=transformer.eval(),
        scheduler=scheduler,
    )
