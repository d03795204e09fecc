"""The contract every model family passes (docs/adding_a_model_family.md), on a tiny offline pipeline.

In the style of diffusers' `PipelineTesterMixin`: `FamilyContract` holds the tests, and each family's module
(`tests/pipelines/test_<family>.py`) subclasses it as `Test<Family>Contract` with a small fixture: the registry name,
the tiny stock pipeline, the rollout guidance, the LoRA targets and the measured tolerances. The family's own
behaviour (its prompt encoding, its scheduler options, ...) is tested beside it in the same module.

The contract:

1. the family is detected, its stock pipeline wrapped and the scheduler swapped for the family's Mix scheduler; with
   a flow-matching stock scheduler the swap keeps its grid exactly (the `set_timesteps` arguments the stock
   pipeline passes);
2. an empty SDE window reproduces the stock pipeline's sampler (to `stock_atol`), with and without CFG;
3. a rollout has the grouped layout (shapes, group ids, shared noise and prefix, branching in the window);
4. a rollout with a window recomputes its own log-probs exactly (ratio 1, bitwise);
5. LoRA gradients reach every LoRA weight through `log_prob` (except `lora_unused`), none the frozen base;
6. the trainer's saved LoRA loads into the stock pipeline (`load_lora_weights`) and reproduces the trained outputs;
7. prefix sharing gives the trajectories of no sharing (to `prefix_atol`) and saves the prefix forward passes;
8. gradient checkpointing leaves the log-prob and its LoRA gradients unchanged;
9. the trainer's first-update consistency check (`training/consistency.py`) passes on the rollout's samples recomputed
   one at a time, in float32 and in bf16, with the default tolerances.

Tolerances are CPU float32 and sit beside the value measured on the tiny models (`measured ...`).
"""

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from peft import LoraConfig

from diffusers_mixgrpo import GRPOTrainingPipeline, MixODESDEScheduler
from diffusers_mixgrpo.pipelines.families import family_spec
from diffusers_mixgrpo.training.config import GRPOConfig
from diffusers_mixgrpo.training.consistency import RatioCheck, default_ratio_tolerance
from diffusers_mixgrpo.training.trainer import GRPOTrainer

PROMPTS = ["a red circle on the left", "a blue square on the right"]


def grpo(stock) -> GRPOTrainingPipeline:
    pipe = GRPOTrainingPipeline.from_pipe(stock)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _mean_pixel(images, prompts):
    return images.float().flatten(1).mean(dim=1)


class FamilyContract:
    """The family tests; a subclass sets the fixture attributes and `build_stock`."""

    family: ClassVar[str]  # the registry name
    guidance: ClassVar[float]  # rollout guidance (CFG on, for families with CFG)
    stock_guidances: ClassVar[tuple[float, ...]] = ()  # guidances compared with the stock sampler; () = (guidance,)
    size: ClassVar[int] = 32
    lora_targets: ClassVar[list[str]]
    # LoRA weights that get no gradient: a dual-stream transformer discards its last block's text-stream output
    lora_unused: ClassVar[tuple[str, ...]] = ()
    mix_scheduler: ClassVar[type] = MixODESDEScheduler
    rollout_kwargs: ClassVar[dict] = {}  # e.g. Wan's num_frames
    stock_atol: ClassVar[float]  # empty window vs the stock sampler (images)
    lora_atol: ClassVar[float]  # stock pipeline + the trainer's saved LoRA vs the trained pipeline (images)
    prefix_atol: ClassVar[float]  # prefix sharing vs none (latents, images)
    prefix_logp_atol: ClassVar[float]  # prefix sharing vs none (log-probs)

    # ------------------------------------------------------------------ the fixture
    def build_stock(self, seed: int = 0):
        """The tiny stock pipeline of the family."""
        raise NotImplementedError

    def reference_scheduler(self, scheduler):
        """The stock sampler that the Mix scheduler's ODE equals (default: the stock scheduler itself)."""
        return scheduler

    def stock_call_kwargs(self, guidance: float) -> dict:
        """The stock `__call__` arguments of a rollout at `guidance` (the registry's guidance argument)."""
        spec = family_spec(self.family)
        kwargs = {spec.guidance_argument: guidance}
        if spec.default_negative_prompt is not None:
            kwargs["negative_prompt"] = spec.default_negative_prompt
        return kwargs

    def stock_latents(self, noise: torch.Tensor) -> torch.Tensor:
        """The rollout's initial noise in the layout the stock `__call__` takes as `latents`."""
        return noise

    # ------------------------------------------------------------------ helpers
    @pytest.fixture(scope="class")
    def stock(self):
        return self.build_stock()

    def rollout(self, pipe, seed=0, prompts=PROMPTS, **kwargs):
        kwargs.setdefault("num_generations", 3)
        kwargs.setdefault("num_inference_steps", 6)
        kwargs.setdefault("sde_window", (1, 2))
        kwargs.setdefault("guidance_scale", self.guidance)
        kwargs = {**self.rollout_kwargs, **kwargs}
        gen = torch.Generator().manual_seed(seed)
        return pipe.rollout(prompts, height=self.size, width=self.size, generator=gen, **kwargs)

    def noise(self, pipe, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return pipe.family.prepare_noise(1, self.size, self.size, gen, "cpu", torch.float32, **self.rollout_kwargs)

    def reference_pipeline(self, stock, pipe):
        ref = type(stock)(**{**stock.components, **pipe.family.extra_stock_kwargs()})
        ref.scheduler = self.reference_scheduler(stock.scheduler)
        ref.set_progress_bar_config(disable=True)
        return ref

    def empty_window_pair(self, stock, pipe, guidance: float, steps: int = 6, seed: int = 3):
        """(our ODE rollout, the stock pipeline's output) for the same initial noise."""
        noise = self.noise(pipe, seed)
        ours = pipe.rollout(
            PROMPTS[:1],
            1,
            steps,
            (0, 0),
            height=self.size,
            width=self.size,
            latents=noise,
            guidance_scale=guidance,
            **self.rollout_kwargs,
        )
        out = self.reference_pipeline(stock, pipe)(
            prompt=PROMPTS[0],
            height=self.size,
            width=self.size,
            num_inference_steps=steps,
            latents=self.stock_latents(noise),
            output_type="pt",
            **self.stock_call_kwargs(guidance),
        )
        ref = out.frames if family_spec(self.family).is_video else out.images
        return ours, ref.float()

    def image_shape(self, batch_size: int) -> tuple[int, ...]:
        frames = self.rollout_kwargs.get("num_frames")
        return (batch_size, frames, 3, self.size, self.size) if frames else (batch_size, 3, self.size, self.size)

    def add_lora(self, pipe, seed: int = 0) -> None:
        torch.manual_seed(seed)
        config = LoraConfig(r=4, lora_alpha=4, target_modules=self.lora_targets, init_lora_weights="gaussian")
        pipe.denoiser.add_adapter(config)

    # ------------------------------------------------------------------ the contract
    def test_family_is_detected_and_the_scheduler_swapped(self, stock):
        pipe = grpo(stock)
        assert pipe.model_family == self.family
        assert type(pipe.stock_pipeline).__name__ == family_spec(self.family).pipeline_class
        assert isinstance(pipe.scheduler, self.mix_scheduler)

    def test_scheduler_swap_keeps_the_flow_matching_grid(self, stock):
        """The Mix scheduler built from a stock `FlowMatchEulerDiscreteScheduler` config gives its grid exactly, with
        the `set_timesteps` arguments the stock pipeline passes (its sigmas, its `mu` rule, its config flags)."""
        if not isinstance(stock.scheduler, FlowMatchEulerDiscreteScheduler):
            pytest.skip(f"stock {type(stock.scheduler).__name__}: the family module tests its own scheduler swap")
        pipe = grpo(stock)
        reference = FlowMatchEulerDiscreteScheduler.from_config(stock.scheduler.config)
        noise = pipe.family.prepare_noise(
            1, self.size, self.size, torch.Generator().manual_seed(0), "cpu", torch.float32
        )
        for n in (4, 6, 25):
            kwargs = pipe.family.timestep_kwargs(noise, n)
            ours = copy.deepcopy(pipe.scheduler)
            ours.set_sde_window(0, 0)
            ours.set_timesteps(**kwargs)
            reference.set_timesteps(**kwargs)
            assert torch.equal(ours.timesteps, reference.timesteps), (n, ours.timesteps, reference.timesteps)
            assert torch.equal(ours.sigmas.float(), reference.sigmas.float()), n

    def test_empty_window_reproduces_the_stock_pipeline(self, stock):
        pipe = grpo(stock)
        for guidance in self.stock_guidances or (self.guidance,):
            ours, ref = self.empty_window_pair(stock, pipe, guidance)
            assert ours.log_probs.shape == (1, 0)
            assert ours.images.shape == ref.shape
            torch.testing.assert_close(ours.images, ref, rtol=0, atol=self.stock_atol, msg=f"guidance {guidance}")

    def test_rollout_shapes_groups_and_decoded_images(self, stock):
        batch = self.rollout(grpo(stock))
        assert batch.batch_size == 6 and batch.num_generations == 3
        assert batch.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
        assert batch.prompts == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
        assert batch.images.shape == self.image_shape(6) and batch.images.dtype == torch.float32
        assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
        assert batch.step_indices == [1, 2] and batch.sde_window == (1, 3)
        assert batch.log_probs.shape == (6, 2) and torch.isfinite(batch.log_probs).all()
        assert batch.latents.shape[:2] == (6, 3)
        assert len(batch.pil_images()) == 6
        # the group shares its noise and its ODE prefix, and branches inside the window
        assert torch.equal(batch.latents[0, 0], batch.latents[1, 0])
        assert not torch.equal(batch.latents[0, 1], batch.latents[1, 1])

    def test_on_policy_ratio_is_exactly_one(self, stock):
        pipe = grpo(stock)
        batch = self.rollout(pipe, max_batch_size=3)
        with torch.no_grad():
            for j, step in enumerate(batch.step_indices):
                for chunk in batch.chunks:
                    ratio = torch.exp(pipe.log_prob(batch, step, chunk) - batch.log_probs[chunk, j])
                    assert torch.equal(ratio, torch.ones_like(ratio)), (self.family, step, ratio)

    def test_lora_gradients_reach_every_lora_weight(self):
        pipe = grpo(self.build_stock())
        self.add_lora(pipe)
        batch = self.rollout(pipe, num_generations=2)
        pipe.log_prob(batch, batch.step_indices[0]).sum().backward()
        named = dict(pipe.denoiser.named_parameters())
        lora = {n: p for n, p in named.items() if "lora_" in n and not any(u in n for u in self.lora_unused)}
        assert lora and all(p.grad is not None for p in lora.values()), [n for n, p in lora.items() if p.grad is None]
        assert sum(float(p.grad.abs().sum()) for n, p in lora.items() if "lora_B" in n) > 0
        assert all(p.grad is None for n, p in named.items() if "lora" not in n)  # add_adapter froze the base

    def test_trained_lora_loads_into_the_stock_pipeline(self, tmp_path: Path):
        """Two GRPO steps with the trainer, then the saved file in a fresh stock pipeline gives the trained outputs."""
        values: dict[str, Any] = dict(
            output_dir=str(tmp_path / "run"),
            model_family=self.family,
            method="mixgrpo",
            num_inference_steps=4,
            num_generations=2,
            sample_prompts_per_device=2,
            resolution=self.size,
            guidance_scale=self.guidance,
            shift=None,  # the stock scheduler's own grid, which the stock pipeline samples on
            window_size=1,
            window_shift_interval=1,
            learning_rate=3e-2,
            max_train_steps=2,
            report_to="none",
            lora_rank=4,
            lora_alpha=4,
            lora_target_modules=list(self.lora_targets),
            checkpointing_steps=0,
            validation_steps=0,
            seed=3,
            **self.rollout_kwargs,
        )
        trainer = GRPOTrainer(
            GRPOConfig(**values), grpo(self.build_stock()), rewards={_mean_pixel: 1.0}, train_prompts=PROMPTS
        )
        trainer.train()
        out_dir = Path(values["output_dir"])
        assert (out_dir / "pytorch_lora_weights.safetensors").is_file()

        fresh = self.build_stock()
        with torch.no_grad():
            trained, base = self.empty_window_pair(fresh, trainer.pipeline, self.guidance, steps=4)
            fresh.load_lora_weights(str(out_dir))
            _, loaded = self.empty_window_pair(fresh, trainer.pipeline, self.guidance, steps=4)
        torch.testing.assert_close(trained.images, loaded, rtol=0, atol=self.lora_atol)
        # the LoRA changed the outputs, so the comparison above is not between two base models
        assert float((loaded - base).abs().max()) > max(1e-4, 10 * self.stock_atol)

    def test_prefix_sharing_equals_no_sharing(self, stock):
        """Window start 6, size 2, G = 3, N = 8: the 6 prefix steps run once per prompt instead of 3 times."""
        pipe = grpo(stock)
        kw = dict(num_generations=3, num_inference_steps=8, sde_window=(6, 2))
        shared = self.rollout(pipe, share_prefix=True, **kw)
        unshared = self.rollout(pipe, share_prefix=False, **kw)
        torch.testing.assert_close(shared.latents, unshared.latents, rtol=0, atol=self.prefix_atol)
        torch.testing.assert_close(shared.images, unshared.images, rtol=0, atol=self.prefix_atol)
        torch.testing.assert_close(shared.log_probs, unshared.log_probs, rtol=0, atol=self.prefix_logp_atol)
        assert (unshared.nfe - shared.nfe) / len(PROMPTS) == 2 * 6
        assert unshared.nfe == len(PROMPTS) * 3 * 8
        assert shared.nfe == len(PROMPTS) * (6 + 3 * 2)

    def test_gradient_checkpointing_keeps_the_log_prob_and_its_gradients(self):
        """`enable_gradient_checkpointing` (the shipped configs turn it on): the backward re-runs the same forward."""
        pipe = grpo(self.build_stock())
        self.add_lora(pipe)
        batch = self.rollout(pipe, num_generations=2)
        step = batch.step_indices[0]

        def logp_and_grads():
            pipe.denoiser.zero_grad(set_to_none=True)
            logp = pipe.log_prob(batch, step)
            logp.sum().backward()
            return logp.detach(), {
                n: p.grad.clone() for n, p in pipe.denoiser.named_parameters() if p.grad is not None
            }

        plain, plain_grads = logp_and_grads()
        pipe.enable_gradient_checkpointing()
        try:
            ckpt, ckpt_grads = logp_and_grads()
        finally:
            pipe.disable_gradient_checkpointing()
        torch.testing.assert_close(ckpt, plain, rtol=0, atol=1e-6)  # measured 0 (every family)
        assert ckpt_grads.keys() == plain_grads.keys() and plain_grads
        for name, grad in plain_grads.items():
            torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)  # measured 0

    def test_first_update_ratio_check_passes_in_float32_and_bf16(self, stock):
        """The consistency check on the rollout's own samples, recomputed one per forward (a batch composition other
        than the rollout's chunks of 3: the largest honest deviation), rollout and recompute under the same autocast."""
        pipe = grpo(stock)
        one_process = SimpleNamespace(num_processes=1, device=torch.device("cpu"))
        for mixed_precision, dtype in (("no", None), ("bf16", torch.bfloat16)):
            batch = self.rollout(pipe, max_batch_size=3, autocast_dtype=dtype)
            tolerance = default_ratio_tolerance(mixed_precision)
            check = RatioCheck(every=None, tolerance=tolerance, mixed_precision=mixed_precision)
            check.begin(0)
            with torch.no_grad():
                for j, step in enumerate(batch.step_indices):
                    for i in range(batch.batch_size):
                        idx = torch.tensor([i])
                        logp = pipe.log_prob(batch, step, idx, autocast_dtype=dtype)
                        ratio = torch.exp(logp - batch.log_probs[idx, j])
                        check.observe(ratio.min(), ratio.max())
            deviation = check.finish(one_process)  # raises TrainingStopped above the tolerance
            # measured: float32 0 to 1.2e-7 (one float32 ulp; FLUX, Qwen-Image, SD1.5), bf16 0 (every family: the bf16
            # CPU kernels do not depend on the batch size)
            assert deviation <= 2.4e-7, (self.family, mixed_precision, deviation)
