"""Tiny, randomly initialised FLUX / SD3 / SD1.5 pipelines built fully offline, for tests, demos and benchmarks.

Same classes and code paths as the real models, a few hundred thousand parameters each. Tokenizers are a local
`tokenizers` WordLevel model wrapped in `PreTrainedTokenizerFast`, so nothing touches the Hugging Face Hub.
"""

from collections.abc import Iterable
from typing import Optional

import torch

DEFAULT_VOCAB = (
    "a an the on of in and with left right top bottom center middle red green blue yellow white black purple orange "
    "circle square triangle cross ring cat dog photo picture painting astronaut horse riding"
).split()


def build_word_level_tokenizer(vocab: Optional[Iterable[str]] = None, model_max_length: int = 16):
    """A whitespace word-level fast tokenizer usable in CLIP and T5 slots (pad/unk/eos/bos specials)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    words = [w for w in (vocab if vocab is not None else DEFAULT_VOCAB) if w not in specials]
    word_to_id = {tok: i for i, tok in enumerate(specials + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab=word_to_id, unk_token="<unk>"))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=model_max_length,
    )


def _tiny_clip(vocab_size: int, hidden: int, projection: Optional[int] = None, seed: int = 0, **config):
    """A 2-layer CLIP text encoder (with a text projection when `projection` is given), weights from `seed`; `config`
    overrides `CLIPTextConfig` values. The special token ids are those of `build_word_level_tokenizer`."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    values = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        projection_dim=projection or hidden,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    cfg = CLIPTextConfig(**{**values, **config})
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _tiny_t5(vocab_size: int, d_model: int, seed: int = 0, umt5: bool = False, **config):
    """A 2-layer T5 encoder (UMT5 with `umt5=True`, as Wan uses), weights from `seed`; `config` overrides the
    `T5Config` / `UMT5Config` values."""
    if umt5:
        from transformers import UMT5Config as Config
        from transformers import UMT5EncoderModel as Model
    else:
        from transformers import T5Config as Config
        from transformers import T5EncoderModel as Model

    torch.manual_seed(seed)
    values = dict(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=3,
        decoder_start_token_id=0,
    )
    return Model(Config(**{**values, **config})).eval()


def _tiny_vae(latent_channels: int, seed: int = 0, **kwargs):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
        **kwargs,
    ).eval()


def build_tiny_flux_pipeline(seed: int = 0, vocab: Optional[Iterable[str]] = None):
    """A tiny `FluxPipeline` (about 123k transformer parameters, VAE with 2 blocks => 2x downsampling)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer = build_word_level_tokenizer(vocab)
    tokenizer_2 = build_word_level_tokenizer(vocab)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=[4, 6, 6],
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=_tiny_vae(4, seed + 1, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=_tiny_clip(len(tokenizer), 32, seed=seed + 2),
        tokenizer=tokenizer,
        text_encoder_2=_tiny_t5(len(tokenizer_2), 32, seed=seed + 3),
        tokenizer_2=tokenizer_2,
        transformer=transformer.eval(),
    )


def build_tiny_sd3_pipeline(seed: int = 0, vocab: Optional[Iterable[str]] = None):
    """A tiny `StableDiffusion3Pipeline` (SD3 transformer, three text encoders, true CFG)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok = build_word_level_tokenizer(vocab)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(  # latents and patches; depth and width; text (T5 / CLIP) widths
        sample_size=16, patch_size=1, pos_embed_max_size=32, in_channels=4, out_channels=4,
        num_layers=2, num_attention_heads=2, attention_head_dim=8,
        joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
    )  # fmt: skip
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_vae(4, seed + 1, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=_tiny_clip(len(tok), 16, projection=16, seed=seed + 2),
        tokenizer=tok,
        text_encoder_2=_tiny_clip(len(tok), 16, projection=16, seed=seed + 3),
        tokenizer_2=build_word_level_tokenizer(vocab),
        text_encoder_3=_tiny_t5(len(tok), 32, seed=seed + 4),
        tokenizer_3=build_word_level_tokenizer(vocab),
        transformer=transformer.eval(),
    )


def build_tiny_sd_pipeline(seed: int = 0, vocab: Optional[Iterable[str]] = None, prediction_type: str = "epsilon"):
    """A tiny `StableDiffusionPipeline` (UNet, DDIM-compatible scheduler, epsilon or v-prediction)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tok = build_word_level_tokenizer(vocab)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    return StableDiffusionPipeline(
        vae=_tiny_vae(4, seed + 1),
        text_encoder=_tiny_clip(len(tok), 32, seed=seed + 2),
        tokenizer=tok,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
