"""Tiny, randomly initialised pipelines of the newer families, built fully offline (tests and benchmarks).

SDXL, SANA and Wan text-to-video; Qwen-Image, FLUX.2 [dev], FLUX.2 [klein] and Z-Image. Same classes and code paths as
the real models (their text encoders, VAEs, transformers / UNets and stock scheduler configs), a few hundred thousand
parameters each. The tokenizers are local word-level `tokenizers` models (`tiny_models.build_word_level_tokenizer`,
or `build_chat_tokenizer` with the chat-template special tokens and a small Jinja chat template, so the stock
pipelines' chat formatting runs unchanged), so nothing touches the Hugging Face Hub.
"""

from collections.abc import Iterable
from typing import Optional

import torch

from .tiny_models import DEFAULT_VOCAB, _tiny_clip, _tiny_t5, _tiny_vae, build_word_level_tokenizer

# Words of the stock pipelines' system prompts / chat templates, so they tokenize to real ids instead of <unk>.
_TEMPLATE_WORDS = (
    "system user assistant Describe image by detailing color shape size texture quantity text spatial "
    "relationships objects background You are AI that reasons about descriptions give structured responses "
    "focusing object attribution actions without speculation think"
).split()
_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "[INST]", "[/INST]"]

# A ChatML template (Qwen2.5 / Qwen3 style: system/user/assistant turns, optional empty think block) that also accepts
# Mistral-style content lists ([{"type": "text", "text": ...}]).
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}{{ c['text'] }}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
# The Mistral-3 layout: system text, then [INST] user [/INST].
MISTRAL_TEMPLATE = (
    "<s>{% for m in messages %}{% if m['role'] == 'system' %}{% for c in m['content'] %}{{ c['text'] }}{% endfor %}"
    "{% else %}[INST]{% for c in m['content'] %}{{ c['text'] }}{% endfor %}[/INST]{% endif %}{% endfor %}"
)


def build_chat_tokenizer(
    vocab: Optional[Iterable[str]] = None, chat_template: str = CHATML_TEMPLATE, model_max_length: int = 64
):
    """A word-level fast tokenizer with chat special tokens (each one id) and a chat template set."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [w for w in (list(vocab if vocab is not None else DEFAULT_VOCAB) + _TEMPLATE_WORDS) if w not in _SPECIALS]
    words += [":", ",", ".", "\u00b6"]
    word_to_id = {tok: i for i, tok in enumerate(_SPECIALS + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab=word_to_id, unk_token="<unk>"))
    # A newline is one token ("\u00b6"), as in the Qwen tokenizers: Qwen-Image's template prefix is then exactly the 34
    # tokens its pipeline drops.
    tok.normalizer = normalizers.Replace("\n", " \u00b6 ")
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(_SPECIALS)
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        model_max_length=model_max_length,
    )
    out.chat_template = chat_template
    return out


def _tiny_decoder_lm(model_class, config_class, vocab_size: int, hidden: int, layers: int, seed: int, **config):
    """A decoder-only text encoder (Qwen3, Gemma-2: 2 heads sharing one key/value head), weights from `seed`;
    `config` adds to / overrides the config values."""
    torch.manual_seed(seed)
    values = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden // 2,
        pad_token_id=0,
    )
    return model_class(config_class(**{**values, **config})).eval()


def _tiny_qwen3(vocab_size: int, hidden: int, layers: int, seed: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return _tiny_decoder_lm(
        Qwen3ForCausalLM, Qwen3Config, vocab_size, hidden, layers, seed, max_position_embeddings=256
    )


def _flow_scheduler(**kwargs):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**kwargs)


def build_tiny_qwenimage_pipeline(seed: int = 0, vocab: Optional[Iterable[str]] = None):
    """A tiny `QwenImagePipeline`: Qwen2.5-VL text encoder (2 layers), Qwen-Image VAE (4x), MMDiT with 2 blocks.

    The scheduler config is the released Qwen-Image one (exponential dynamic shift, `shift_terminal=0.02`,
    `max_image_seq_len=8192`, `max_shift=0.9`).
    """
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = build_chat_tokenizer(vocab, model_max_length=1024 + 34)
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),
    ).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.1, -0.2, 0.0, 0.3],
        latents_std=[1.5, 0.8, 1.2, 1.0],
    ).eval()
    torch.manual_seed(seed + 2)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 2048,
            "bos_token_id": 2,
            "eos_token_id": 5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [1, 1, 2]},
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": 16,
            "fullatt_block_indexes": [0],
        },
        vocab_size=len(tokenizer),
        bos_token_id=2,
        eos_token_id=5,
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    scheduler = _flow_scheduler(
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )
    return QwenImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


def _tiny_flux2_parts(seed: int, joint_attention_dim: int, guidance_embeds: bool):
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=joint_attention_dim,
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    ).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        mid_block_add_attention=False,
    ).eval()
    # non-trivial batch-norm statistics, so decoding checks the de-normalisation
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.linspace(-0.5, 0.5, vae.bn.running_mean.numel()))
        vae.bn.running_var.copy_(torch.linspace(0.5, 2.0, vae.bn.running_var.numel()))
    # FLUX.2's released scheduler config: dynamic shifting, the pipeline passes its empirical `mu`.
    scheduler = _flow_scheduler(shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential")
    return transformer, vae, scheduler


def build_tiny_flux2_klein_pipeline(seed: int = 0, vocab: Optional[Iterable[str]] = None, is_distilled: bool = False):
    """A tiny `Flux2KleinPipeline`: Qwen3 text encoder (28 layers of width 8, the stock pipeline stacks layers 9, 18
    and 27), FLUX.2 VAE (2x, 2x2 patches) and transformer. `is_distilled=False` is the base model (true CFG)."""
    from diffusers import Flux2KleinPipeline

    tokenizer = build_chat_tokenizer(vocab, model_max_length=512)
    text_encoder = _tiny_qwen3(len(tokenizer), 8, 28, seed + 2)
    transformer, vae, scheduler = _tiny_flux2_parts(seed, 3 * 8, guidance_embeds=False)
    return Flux2KleinPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=is_distilled,
    )


def build_tiny_flux2_pipeline(seed: int = 0, vocab: Optional[Iterable[str]] = None):
    """A tiny `Flux2Pipeline` (FLUX.2-dev layout): Mistral-3 text encoder (31 layers of width 8, the stock pipeline
    stacks layers 10, 20 and 30, with its system message), embedded guidance, no CFG."""
    from diffusers import Flux2Pipeline
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    tokenizer = build_chat_tokenizer(vocab, chat_template=MISTRAL_TEMPLATE, model_max_length=512)
    torch.manual_seed(seed + 2)
    config = Mistral3Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tokenizer),
            "hidden_size": 8,
            "intermediate_size": 16,
            "num_hidden_layers": 31,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 4,
            "max_position_embeddings": 1024,
        },
        vision_config={
            "model_type": "pixtral",
            "hidden_size": 8,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "head_dim": 4,
            "image_size": 16,
            "patch_size": 4,
        },
        spatial_merge_size=1,
        vision_feature_layer=-1,
    )
    text_encoder = Mistral3ForConditionalGeneration(config).eval()
    transformer, vae, scheduler = _tiny_flux2_parts(seed, 3 * 8, guidance_embeds=True)
    return Flux2Pipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


def build_tiny_zimage_pipeline(seed: int = 0, vocab: Optional[Iterable[str]] = None):
    """A tiny `ZImagePipeline`: Qwen3 text encoder (2 layers; the stock pipeline takes the second-to-last hidden
    state), a 2-block `AutoencoderKL` (2x), and a single-stream Z-Image transformer. Z-Image's released scheduler is
    a static shift of 3.0 (no dynamic shifting)."""
    from diffusers import ZImagePipeline, ZImageTransformer2DModel

    tokenizer = build_chat_tokenizer(vocab, model_max_length=512)
    text_encoder = _tiny_qwen3(len(tokenizer), 16, 2, seed + 2).model  # the stock pipeline takes the base Qwen3Model
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=4,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=16,
        axes_dims=[8, 4, 4],
        axes_lens=[256, 32, 32],
    ).eval()
    return ZImagePipeline(
        scheduler=_flow_scheduler(shift=3.0, use_dynamic_shifting=False),
        vae=_tiny_vae(4, seed + 1, shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


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
    text_encoder = _tiny_t5(len(tok), 32, seed=seed + 2, umt5=True)
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
        text_encoder=text_encoder,
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
    transformer = SanaTransformer2DModel(  # latents and patches; self-attention; cross-attention to the text
        sample_size=16, patch_size=1, in_channels=4, out_channels=4,
        num_layers=2, num_attention_heads=2, attention_head_dim=4,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=16,
    )  # fmt: skip
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
    text_encoder = _tiny_decoder_lm(
        Gemma2Model,
        Gemma2Config,
        len(tok),
        16,
        2,
        seed + 2,
        max_position_embeddings=512,
        bos_token_id=2,
        eos_token_id=3,
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
        text_encoder=text_encoder,
        vae=vae.eval(),
        transformer=transformer.eval(),
        scheduler=scheduler,
    )


__all__ = [
    "build_chat_tokenizer",
    "build_tiny_flux2_klein_pipeline",
    "build_tiny_flux2_pipeline",
    "build_tiny_qwenimage_pipeline",
    "build_tiny_sana_pipeline",
    "build_tiny_sdxl_pipeline",
    "build_tiny_wan_pipeline",
    "build_tiny_zimage_pipeline",
]
