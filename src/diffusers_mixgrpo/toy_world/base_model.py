"""The toy world's tiny FLUX base model: its architecture, sampling settings and evaluation (its weights:
`toy_world.base_weights.load_toy_base_pipeline()`).

A stock `FluxPipeline` (AutoencoderKL, CLIP-slot and T5-slot text encoders, `FluxTransformer2DModel` with guidance
embedding, `FlowMatchEulerDiscreteScheduler`), a few hundred thousand parameters, trained on the toy world by
`diffusers_mixgrpo.toy_world.train_base`. Its images are 32x32; the VAE downsamples 2x, so latents are 4x16x16 and
the transformer sees 8x8 = 64 packed tokens.

Prompt encoding: both tokenizers are word-level over the toy vocabulary and append ``</s>``. The text encoders are
random and frozen, with one deliberate choice in the T5 slot: its single attention layer looks only at the token
itself and the five before it, with uniform weights (zeroed queries, a fixed relative-position bias). So the feature
of a position word ("left") carries its whole phrase ("a red circle on the left"), which lets the transformer bind
colour and shape to a side in two-object prompts, and no prompt token sees the padding. The transformer was trained
with ``max_sequence_length=TOY_MAX_SEQUENCE_LENGTH`` (16 text tokens): pass the same value when sampling (FluxPipeline's
default of 512 pads the prompt with ~500 more tokens, which the model never saw).
"""

from pathlib import Path

import torch

from ..utils.tiny_models import _tiny_clip, _tiny_t5
from .world import DEFAULT_IMAGE_SIZE, VOCABULARY

TOY_MAX_SEQUENCE_LENGTH = 16
TOY_GUIDANCE_SCALE = 3.5
TOY_NUM_INFERENCE_STEPS = 10
TOY_IMAGE_SIZE = DEFAULT_IMAGE_SIZE
TOY_LATENT_CHANNELS = 4  # VAE latent channels; the transformer sees them packed 2x2 (16 channels per token)

#: What `pipe(...)` needs to sample like the base model was trained and evaluated.
TOY_PIPELINE_CALL_KWARGS = {
    "height": TOY_IMAGE_SIZE,
    "width": TOY_IMAGE_SIZE,
    "guidance_scale": TOY_GUIDANCE_SCALE,
    "num_inference_steps": TOY_NUM_INFERENCE_STEPS,
    "max_sequence_length": TOY_MAX_SEQUENCE_LENGTH,
}

ASSETS_DIR = Path(__file__).resolve().parent / "assets" / "toy_flux_base"
_T5_WINDOW = 6  # the token itself and the 5 before it


def build_toy_tokenizer(model_max_length: int = TOY_MAX_SEQUENCE_LENGTH):
    """A word-level fast tokenizer over the toy vocabulary that appends ``</s>`` (CLIP pools at the first ``</s>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(VOCABULARY)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=model_max_length,
    )


def _clip_text_encoder(vocab_size: int, seed: int):
    """The CLIP slot: the tiny models' 2-layer CLIP text encoder of width 32, positions for the toy prompt length."""
    return _tiny_clip(vocab_size, 32, seed=seed, max_position_embeddings=TOY_MAX_SEQUENCE_LENGTH).requires_grad_(False)


def _t5_text_encoder(vocab_size: int, seed: int, d_model: int = 64):
    """The T5 slot: one layer of 4 heads whose attention is a fixed causal window (see the module's docstring)."""
    model = _tiny_t5(
        vocab_size,
        d_model,
        seed=seed,
        d_kv=16,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=64,
    ).requires_grad_(False)
    attn = model.encoder.block[0].layer[0].SelfAttention
    with torch.no_grad():
        # Uniform attention over a causal window: scores are the bias alone. Buckets 0..7 are the exact distances
        # 0..7 to earlier tokens (bidirectional bucketing, 32 buckets); everything else is masked out.
        attn.q.weight.zero_()
        bias = torch.full_like(attn.relative_attention_bias.weight, -60.0)
        bias[:_T5_WINDOW] = 0.0
        attn.relative_attention_bias.weight.copy_(bias)
    return model


def _vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=TOY_LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=TOY_IMAGE_SIZE,
        mid_block_add_attention=False,
    )
    with torch.no_grad():
        # Start with a near-deterministic posterior (std e^-5): with std 1 the decoder first sees mostly noise, and
        # the tiny KL weight of a short training takes long to shrink it.
        vae.quant_conv.weight[TOY_LATENT_CHANNELS:] = 0.0
        vae.quant_conv.bias[TOY_LATENT_CHANNELS:] = -10.0
    return vae


def _transformer(seed: int, num_layers: int, num_single_layers: int, num_attention_heads: int):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * TOY_LATENT_CHANNELS,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=16,
        num_attention_heads=num_attention_heads,
        joint_attention_dim=64,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=[4, 6, 6],
    )


def build_untrained_toy_pipeline(
    seed: int = 0, num_layers: int = 2, num_single_layers: int = 2, num_attention_heads: int = 4
):
    """The base model's `FluxPipeline` before training (random VAE and transformer, the fixed text encoders)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    tokenizer, tokenizer_2 = build_toy_tokenizer(), build_toy_tokenizer()
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
        vae=_vae(seed + 1).eval(),
        text_encoder=_clip_text_encoder(len(tokenizer), seed + 2),
        tokenizer=tokenizer,
        text_encoder_2=_t5_text_encoder(len(tokenizer_2), seed + 3),
        tokenizer_2=tokenizer_2,
        transformer=_transformer(seed, num_layers, num_single_layers, num_attention_heads).eval(),
    )


@torch.no_grad()
def evaluate_toy_pipeline(
    pipe,
    prompts: list[str],
    num_images_per_prompt: int = 1,
    seed: int = 0,
    batch_size: int = 64,
    **call_kwargs,
) -> dict:
    """Sample `prompts` and score them with the toy-world reward.

    Returns ``{"accuracy", "reward", "accuracy_single", "accuracy_two"}``: the fraction judged correct, the mean
    reward, and the accuracy on single- and two-object prompts (`None` when there are none). Images come from
    ``pipe(..., **TOY_PIPELINE_CALL_KWARGS)`` (overridable by `call_kwargs`), one seeded generator per batch.
    """
    import numpy as np

    from .reward import ToyWorldReward
    from .world import parse_prompt

    kwargs = {**TOY_PIPELINE_CALL_KWARGS, **call_kwargs}
    flat = [p for p in prompts for _ in range(num_images_per_prompt)]
    reward = ToyWorldReward()
    scores, correct = [], []
    for k, i in enumerate(range(0, len(flat), batch_size)):
        chunk = flat[i : i + batch_size]
        generator = torch.Generator().manual_seed(seed + k)
        images = pipe(chunk, generator=generator, output_type="pt", **kwargs).images
        result = reward.evaluate(images, chunk)
        scores.append(result.score)
        correct.append(result.correct)
    score, correct = np.concatenate(scores), np.concatenate(correct)
    n_obj = np.array([len(parse_prompt(p)) for p in flat])

    def _acc(mask):
        return float(correct[mask].mean()) if mask.any() else None

    return {
        "accuracy": float(correct.mean()),
        "reward": float(score.mean()),
        "accuracy_single": _acc(n_obj == 1),
        "accuracy_two": _acc(n_obj == 2),
    }
