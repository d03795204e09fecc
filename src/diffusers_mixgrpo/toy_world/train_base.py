"""Train the toy world's tiny FLUX base model from scratch on the CPU, deterministically.

    python -m diffusers_mixgrpo.toy_world.train_base --output_dir toy_flux_base

Recipe: (1) render a fixed data set of training-prompt images; (2) train the VAE briefly on it (reconstruction +
a small KL) and set its `scaling_factor` / `shift_factor` from the latent statistics; (3) train the transformer with
the rectified-flow loss, ``x_sigma = (1 - sigma) x0 + sigma eps`` and target ``eps - x0``, sigma logit-normal then
shifted like the pipeline's scheduler at 64 image tokens, guidance input fixed at 3.5, text encoders frozen;
(4) evaluate the EMA weights on held-out prompts every `eval_every` steps with the toy-world reward and stop once the
accuracy reaches `target_accuracy` (the base model is meant to be imperfect, leaving GRPO something to fix);
(5) save a stock `FluxPipeline` (safetensors) plus ``toy_base_training.json`` (config, steps, accuracy, time).
"""

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from .base_model import (
    TOY_GUIDANCE_SCALE,
    TOY_IMAGE_SIZE,
    TOY_MAX_SEQUENCE_LENGTH,
    TOY_NUM_INFERENCE_STEPS,
    build_untrained_toy_pipeline,
    evaluate_toy_pipeline,
)
from .reward import ToyWorldReward
from .world import COLOR_NAMES, ToyObject, heldout_prompts, parse_prompt, render_objects, train_prompts


@dataclass
class ToyBaseTrainingConfig:
    """Settings of the base-model recipe (the defaults built the shipped weights).

    Data:
        seed: seed of everything (data, initialisation, batches, noise).
        num_train_images: size of the rendered training set (drawn from the training prompts).
        two_object_fraction: share of two-object prompts in it.
        caption_color_noise: probability that an object is drawn in another colour than its caption names (one of
            the other five, uniformly): the noisy captions of web-scale data in miniature. The base model learns the
            captions' statistics and draws the named colour less often. 0 (the shipped model) draws every caption
            faithfully; docs/toy_world.md reports what 0.4 gave (a weaker base model, no faster GRPO gain).
        hazy_fraction: share of training images rendered in the "hazy" style (washed out by a grey haze, see
            `world.STYLES`), captioned like the clean ones: the low-quality part of a web-scale data set. The
            base model learns to draw either style, which preference alignment (`toy_preference`) then resolves.
    VAE:
        vae_steps, vae_batch_size, vae_lr, vae_kl_weight: its short reconstruction training.
    Transformer:
        num_layers, num_single_layers, num_attention_heads: FLUX double/single-stream blocks and heads (of dim 16).
        train_steps, train_batch_size, train_lr, train_warmup_steps, train_ema_decay: flow-matching training.
    Evaluation / stopping:
        eval_every, eval_images_per_prompt: held-out evaluation (10 steps, guidance 3.5) of the EMA weights.
        target_accuracy: stop at the first evaluation whose held-out accuracy reaches this (`None`: never).
        num_threads: torch CPU threads (fixed, so results reproduce).
    """

    seed: int = 0
    num_train_images: int = 12288
    two_object_fraction: float = 0.5
    caption_color_noise: float = 0.0
    hazy_fraction: float = 0.5
    vae_steps: int = 1500
    vae_batch_size: int = 32
    vae_lr: float = 5e-3
    vae_kl_weight: float = 1e-6
    num_layers: int = 2
    num_single_layers: int = 2
    num_attention_heads: int = 4
    train_steps: int = 3000
    train_batch_size: int = 32
    train_lr: float = 1e-3
    train_warmup_steps: int = 100
    train_ema_decay: float = 0.99
    eval_every: int = 100
    eval_images_per_prompt: int = 2
    target_accuracy: Optional[float] = 0.5
    num_threads: int = 2


def noisy_caption_objects(prompts: list[str], noise: float, seed: int) -> list[tuple[ToyObject, ...]]:
    """The objects actually drawn for each caption: each object keeps its named colour with probability
    `1 - noise`, else takes one of the other colours uniformly (deterministic given `seed`)."""
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"caption_color_noise must be in [0, 1), got {noise}.")
    rng = np.random.default_rng(seed)
    drawn = []
    for prompt in prompts:
        objects = []
        for obj in parse_prompt(prompt):
            if rng.random() < noise:
                others = [c for c in COLOR_NAMES if c != obj.color]
                obj = ToyObject(others[rng.integers(len(others))], obj.shape, obj.position)
            objects.append(obj)
        drawn.append(tuple(objects))
    return drawn


def _draw_styles(n: int, hazy_fraction: float, seed: int) -> list[str]:
    """The rendering style of each training image: "hazy" with probability `hazy_fraction` (deterministic)."""
    if not 0.0 <= hazy_fraction <= 1.0:
        raise ValueError(f"hazy_fraction must be in [0, 1], got {hazy_fraction}.")
    hazy = np.random.default_rng(seed).random(n) < hazy_fraction
    return ["hazy" if h else "clean" for h in hazy]


def _set_determinism(seed: int, num_threads: int) -> None:
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    np.random.seed(seed)


def _images_to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _train_vae(vae, images: torch.Tensor, cfg: ToyBaseTrainingConfig, log) -> None:
    gen = torch.Generator().manual_seed(cfg.seed + 10)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae.train()
    for step in range(cfg.vae_steps):
        lr = cfg.vae_lr * 0.5 * (1 + math.cos(math.pi * step / cfg.vae_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        x = images[torch.randint(len(images), (cfg.vae_batch_size,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        loss = F.mse_loss(recon, x) + cfg.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step}: loss {loss.item():.4f}")
    vae.eval().requires_grad_(False)


@torch.no_grad()
def _encode_latents(vae, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat(
        [vae.encode(images[i : i + batch_size]).latent_dist.mean for i in range(0, len(images), batch_size)]
    )


def _image_seq_len_shift(pipe) -> float:
    """exp(mu): the time shift the pipeline's scheduler applies at this resolution (FLUX dynamic shifting)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    seq_len = (TOY_IMAGE_SIZE // (pipe.vae_scale_factor * 2)) ** 2
    c = pipe.scheduler.config
    return math.exp(calculate_shift(seq_len, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift))


def build_toy_base_pipeline(
    output_dir: Optional[Union[str, Path]] = None,
    config: Optional[ToyBaseTrainingConfig] = None,
    progress: bool = True,
    log_fn=print,
):
    """Run the whole recipe and return the trained `FluxPipeline` (saved to `output_dir` if given).

    Deterministic for a given config on a given machine (fixed seeds, thread count and deterministic algorithms).
    """
    from tqdm.auto import tqdm

    cfg = config or ToyBaseTrainingConfig()
    t_start = time.time()
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    _set_determinism(cfg.seed, cfg.num_threads)
    try:
        pipe = build_untrained_toy_pipeline(
            seed=cfg.seed,
            num_layers=cfg.num_layers,
            num_single_layers=cfg.num_single_layers,
            num_attention_heads=cfg.num_attention_heads,
        )
        pipe.set_progress_bar_config(disable=True)

        # 1. data: rendered training-prompt images, one seed each
        prompts = train_prompts(cfg.num_train_images, seed=cfg.seed, two_object_fraction=cfg.two_object_fraction)
        seeds = np.arange(cfg.num_train_images) + 1_000_000 * (cfg.seed + 1)
        drawn = noisy_caption_objects(prompts, cfg.caption_color_noise, seed=cfg.seed + 30)
        styles = _draw_styles(cfg.num_train_images, cfg.hazy_fraction, seed=cfg.seed + 40)
        images = _images_to_tensor(
            np.stack([render_objects(objs, seed=int(s), style=st) for objs, s, st in zip(drawn, seeds, styles)])
        )
        log_fn(
            f"rendered {len(images)} training images, {cfg.caption_color_noise:.0%} of objects in another colour "
            f"than captioned, {np.mean([st == 'hazy' for st in styles]):.0%} hazy ({time.time() - t_start:.0f} s)"
        )

        # 2. VAE
        torch.manual_seed(cfg.seed + 1)
        _train_vae(pipe.vae, images, cfg, log_fn)
        raw = _encode_latents(pipe.vae, images)
        shift, scale = raw.mean().item(), 1.0 / raw.std().item()
        pipe.vae.register_to_config(shift_factor=shift, scaling_factor=scale)
        latents = (raw - shift) * scale
        # judged against what was drawn: the first 256 images whose objects kept their captioned colours
        clean = [i for i, (p, d) in enumerate(zip(prompts, drawn)) if parse_prompt(p) == d][:256]
        with torch.no_grad():
            recon = pipe.vae.decode(raw[clean]).sample
        vae_check = ToyWorldReward().evaluate((recon + 1) / 2, [prompts[i] for i in clean])
        log_fn(
            f"vae done: recon mse {F.mse_loss(recon, images[clean]).item():.4f}, reward on reconstructions "
            f"{vae_check.score.mean():.3f} (accuracy {vae_check.correct.mean():.3f}), shift {shift:.4f}, "
            f"scale {scale:.4f} ({time.time() - t_start:.0f} s)"
        )
        b, c, h, w = latents.shape
        packed = pipe._pack_latents(latents, b, c, h, w)  # (N, 64, 16)
        img_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", torch.float32)

        # text features of every distinct training prompt (the encoders are frozen)
        pool = sorted(set(prompts))
        index = {p: i for i, p in enumerate(pool)}
        prompt_idx = torch.tensor([index[p] for p in prompts])
        with torch.no_grad():
            embeds, pooled, txt_ids = pipe.encode_prompt(pool, None, max_sequence_length=TOY_MAX_SEQUENCE_LENGTH)

        # 3. transformer: rectified flow, sigma logit-normal then time-shifted like the sampler
        transformer = pipe.transformer.train()
        ema = copy.deepcopy(transformer).eval().requires_grad_(False)
        opt = torch.optim.AdamW(transformer.parameters(), lr=cfg.train_lr, weight_decay=0.0)
        time_shift = _image_seq_len_shift(pipe)
        gen = torch.Generator().manual_seed(cfg.seed + 20)
        guidance = torch.full((cfg.train_batch_size,), TOY_GUIDANCE_SCALE)
        eval_prompts = heldout_prompts()
        history, accuracy, step = [], None, 0
        bar = tqdm(total=cfg.train_steps, desc="toy base transformer", disable=not progress)
        for step in range(1, cfg.train_steps + 1):
            warm = min(1.0, step / max(cfg.train_warmup_steps, 1))
            for g in opt.param_groups:
                g["lr"] = cfg.train_lr * warm
            idx = torch.randint(len(packed), (cfg.train_batch_size,), generator=gen)
            x0 = packed[idx]
            eps = torch.randn(x0.shape, generator=gen)
            u = torch.sigmoid(torch.randn(cfg.train_batch_size, generator=gen))
            sigma = time_shift * u / (1 + (time_shift - 1) * u)
            x_sigma = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * eps
            p = prompt_idx[idx]
            pred = transformer(
                hidden_states=x_sigma,
                timestep=sigma,
                guidance=guidance,
                pooled_projections=pooled[p],
                encoder_hidden_states=embeds[p],
                txt_ids=txt_ids,
                img_ids=img_ids,
                return_dict=False,
            )[0]
            loss = F.mse_loss(pred, eps - x0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                decay = min(cfg.train_ema_decay, (1 + step) / (10 + step))
                for pe, pt in zip(ema.parameters(), transformer.parameters()):
                    pe.lerp_(pt, 1 - decay)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.train_steps):
                pipe.transformer = ema
                result = evaluate_toy_pipeline(
                    pipe, eval_prompts, num_images_per_prompt=cfg.eval_images_per_prompt, seed=cfg.seed + 12345
                )
                pipe.transformer = transformer
                accuracy = result["accuracy"]
                history.append({"step": step, "loss": loss.item(), **result})
                log_fn(
                    f"step {step}: loss {loss.item():.4f}, held-out accuracy {accuracy:.3f}, "
                    f"reward {result['reward']:.3f} ({time.time() - t_start:.0f} s)"
                )
                if cfg.target_accuracy is not None and accuracy >= cfg.target_accuracy:
                    break
        bar.close()

        pipe.transformer = ema
        elapsed = time.time() - t_start
        summary = {
            "config": asdict(cfg),
            "steps": step,
            "heldout_accuracy": accuracy,
            "train_time_s": round(elapsed, 1),
            "sampling": {
                "num_inference_steps": TOY_NUM_INFERENCE_STEPS,
                "guidance_scale": TOY_GUIDANCE_SCALE,
                "max_sequence_length": TOY_MAX_SEQUENCE_LENGTH,
            },
            "history": history,
        }
        log_fn(f"done after {step} steps in {elapsed:.0f} s; held-out accuracy {accuracy}")
        if output_dir is not None:
            out = Path(output_dir)
            pipe.save_pretrained(out, safe_serialization=True)
            (out / "toy_base_training.json").write_text(json.dumps(summary, indent=2) + "\n")
            log_fn(f"saved to {out}")
        return pipe
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)


def main(argv: Optional[list[str]] = None) -> None:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(ToyBaseTrainingConfig, description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True, help="Where to save the FluxPipeline.")
    parser.add_argument("--no_progress", action="store_true", help="Disable the progress bar.")
    cfg, rest = parser.parse_args_into_dataclasses(args=argv)
    build_toy_base_pipeline(output_dir=rest.output_dir, config=cfg, progress=not rest.no_progress)


if __name__ == "__main__":
    main()
