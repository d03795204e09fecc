"""The checks every model family passes (issue 11), parametrised by a `FamilySpec` (tests/pipelines/test_<family>.py).

1. an empty SDE window reproduces the stock pipeline's sampler (to `stock_atol`);
2. a rollout with a window recomputes its own log-probs exactly (ratio 1, bitwise);
3. LoRA gradients reach the adapter weights through `log_prob`;
4. the trainer's saved LoRA loads into the stock pipeline (`load_lora_weights`) and reproduces the trained outputs;
5. prefix sharing gives the trajectories of no sharing (to `prefix_atol`) and saves the prefix forward passes.
"""

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
from peft import LoraConfig

from diffusers_mixgrpo import GRPOTrainingPipeline
from diffusers_mixgrpo.training.config import GRPOConfig
from diffusers_mixgrpo.training.trainer import GRPOTrainer

PROMPTS = ["a red circle on the left", "a blue square on the right"]


@dataclasses.dataclass
class FamilySpec:
    name: str
    build: Callable[[int], Any]  # seed -> stock pipeline
    guidance: float
    size: int
    lora_targets: list[str]
    # (stock pipeline, prompt, initial noise, steps, guidance, size) -> output in the rollout's image layout
    stock_sample: Callable[..., torch.Tensor]
    rollout_kwargs: dict = dataclasses.field(default_factory=dict)
    stock_atol: float = 1e-5
    prefix_atol: float = 1e-5
    # the stock pipeline's sampler that the Mix scheduler's ODE equals (None: the stock one, unchanged)
    reference_scheduler: Optional[Callable[[Any], Any]] = None


def grpo(stock) -> GRPOTrainingPipeline:
    pipe = GRPOTrainingPipeline.from_pipe(stock)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def rollout(spec: FamilySpec, pipe, seed=0, **kwargs):
    kwargs.setdefault("num_generations", 3)
    kwargs.setdefault("num_inference_steps", 6)
    kwargs.setdefault("sde_window", (1, 2))
    kwargs.setdefault("guidance_scale", spec.guidance)
    kwargs = {**spec.rollout_kwargs, **kwargs}
    gen = torch.Generator().manual_seed(seed)
    return pipe.rollout(PROMPTS, height=spec.size, width=spec.size, generator=gen, **kwargs)


def _reference_pipeline(spec: FamilySpec, stock):
    ref = type(stock)(**stock.components)
    if spec.reference_scheduler is not None:
        ref.scheduler = spec.reference_scheduler(stock.scheduler)
    ref.set_progress_bar_config(disable=True)
    return ref


def _empty_window_pair(spec: FamilySpec, stock, pipe, guidance: float, steps: int = 6):
    noise = pipe.adapter.prepare_noise(
        1, spec.size, spec.size, torch.Generator().manual_seed(3), "cpu", torch.float32, **spec.rollout_kwargs
    )
    ours = pipe.rollout(
        PROMPTS[:1],
        1,
        steps,
        (0, 0),
        height=spec.size,
        width=spec.size,
        latents=noise,
        guidance_scale=guidance,
        **spec.rollout_kwargs,
    )
    ref = spec.stock_sample(_reference_pipeline(spec, stock), PROMPTS[0], noise, steps, guidance, spec.size)
    return ours, ref


def check_empty_window_reproduces_the_stock_pipeline(spec: FamilySpec, guidance: Optional[float] = None):
    stock = spec.build(0)
    pipe = grpo(stock)
    ours, ref = _empty_window_pair(spec, stock, pipe, spec.guidance if guidance is None else guidance)
    assert ours.log_probs.shape == (1, 0)
    assert ours.images.shape == ref.shape
    torch.testing.assert_close(ours.images, ref.float(), rtol=0, atol=spec.stock_atol)


def check_on_policy_ratio_is_exactly_one(spec: FamilySpec):
    pipe = grpo(spec.build(0))
    batch = rollout(spec, pipe, max_batch_size=3)
    assert batch.log_probs.shape == (6, 2) and torch.isfinite(batch.log_probs).all()
    with torch.no_grad():
        for j, step in enumerate(batch.step_indices):
            for chunk in batch.chunks:
                ratio = torch.exp(pipe.log_prob(batch, step, chunk) - batch.log_probs[chunk, j])
                assert torch.equal(ratio, torch.ones_like(ratio)), (spec.name, step, ratio)
    return batch


def check_lora_gradients_reach_the_adapter(spec: FamilySpec):
    pipe = grpo(spec.build(0))
    pipe.denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=spec.lora_targets))
    batch = rollout(spec, pipe, num_generations=2)
    pipe.log_prob(batch, batch.step_indices[0]).sum().backward()
    lora_b = [p for n, p in pipe.denoiser.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None for p in lora_b)
    assert sum(float(p.grad.abs().sum()) for p in lora_b) > 0
    assert all(p.grad is None for n, p in pipe.denoiser.named_parameters() if "lora" not in n)


def _mean_pixel(images, prompts):
    return images.float().flatten(1).mean(dim=1)


def check_trained_lora_loads_into_the_stock_pipeline(spec: FamilySpec, tmp_path: Path, **config):
    """Two GRPO steps with the trainer, then the saved file in a fresh stock pipeline gives the trained outputs."""
    values = dict(
        output_dir=str(tmp_path / "run"),
        model_family=spec.name,
        method="mixgrpo",
        num_inference_steps=4,
        num_generations=2,
        sample_prompts_per_device=2,
        resolution=spec.size,
        guidance_scale=spec.guidance,
        window_size=1,
        window_shift_interval=1,
        learning_rate=3e-2,
        max_train_steps=2,
        report_to="none",
        lora_rank=4,
        lora_alpha=4,
        lora_target_modules=spec.lora_targets,
        checkpointing_steps=0,
        validation_steps=0,
        seed=3,
    )
    values.update(config)
    trainer = GRPOTrainer(GRPOConfig(**values), grpo(spec.build(0)), rewards={_mean_pixel: 1.0}, train_prompts=PROMPTS)
    trainer.train()
    out_dir = Path(values["output_dir"])
    assert (out_dir / "pytorch_lora_weights.safetensors").is_file()

    fresh = spec.build(0)
    trained_pipe = trainer.pipeline
    with torch.no_grad():
        trained, base = _empty_window_pair(spec, fresh, trained_pipe, spec.guidance, steps=4)
        fresh.load_lora_weights(str(out_dir))
        _, loaded = _empty_window_pair(spec, fresh, trained_pipe, spec.guidance, steps=4)
    torch.testing.assert_close(trained.images, loaded.float(), rtol=0, atol=spec.stock_atol)
    # the LoRA changed the outputs, so the comparison above is not between two base models
    assert float((loaded.float() - base.float()).abs().max()) > 10 * spec.stock_atol


def check_prefix_sharing_equals_no_sharing(spec: FamilySpec):
    pipe = grpo(spec.build(0))
    kw = dict(num_generations=3, num_inference_steps=8, sde_window=(6, 2))
    shared = rollout(spec, pipe, share_prefix=True, **kw)
    unshared = rollout(spec, pipe, share_prefix=False, **kw)
    torch.testing.assert_close(shared.latents, unshared.latents, rtol=0, atol=spec.prefix_atol)
    torch.testing.assert_close(shared.images, unshared.images, rtol=0, atol=spec.prefix_atol)
    torch.testing.assert_close(shared.log_probs, unshared.log_probs, rtol=0, atol=10 * spec.prefix_atol)
    assert unshared.nfe == len(PROMPTS) * 3 * 8
    assert shared.nfe == len(PROMPTS) * (6 + 3 * 2)
    return float((shared.latents - unshared.latents).abs().max())
