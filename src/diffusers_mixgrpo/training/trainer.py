"""`GRPOTrainer`: the MixGRPO training loop (rollout -> rewards -> advantages -> clipped GRPO update) on accelerate."""

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from ..pipelines.pipeline_grpo import GRPOTrainingPipeline
from ..pipelines.rollout_batch import RolloutBatch
from ..rewards import MultiReward
from ..schedulers.sliding_window import SlidingWindowSchedule
from .advantages import compute_advantages, finite_group_mask
from .checkpointing import CheckpointManager
from .config import GRPOConfig, default_lora_target_modules
from .ema import ParameterEMA
from .logging_utils import init_trackers, log_image_grid, plot_reward_curve, resolve_report_to
from .losses import grpo_loss

logger = logging.getLogger(__name__)

RewardSpec = Union[MultiReward, Mapping[Union[str, Callable], float], Callable]


class TrainingStopped(RuntimeError):
    """Raised when the run cannot go on safely (too many non-finite groups in a row, a failing reward model)."""


@dataclass
class TrainOutput:
    """What `GRPOTrainer.train` returns: the step reached and the logged curves."""

    global_step: int
    reward_history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    output_dir: Optional[str] = None


def load_training_pipeline(config: GRPOConfig, torch_dtype: Optional[torch.dtype] = None) -> GRPOTrainingPipeline:
    """Load `config.pretrained_model_name_or_path` (Hub id or local folder) as a `GRPOTrainingPipeline`."""
    from diffusers import DiffusionPipeline

    path = config.pretrained_model_name_or_path
    if path is None:
        raise ValueError("pretrained_model_name_or_path is required to load the model (a Hub id or a local folder).")
    try:
        stock = DiffusionPipeline.from_pretrained(
            path, revision=config.revision, variant=config.variant, torch_dtype=torch_dtype
        )
    except (OSError, ValueError) as err:
        raise OSError(
            f"Could not load the pipeline {path!r}: {err}\nIf it is a Hub id, download it first while online "
            f"(`huggingface-cli download {path}`) or pass a local folder written by `save_pretrained`."
        ) from err
    return GRPOTrainingPipeline.from_pipe(stock)


class GRPOTrainer:
    r"""
    MixGRPO / MixGRPO-Flash / Flash* / DanceGRPO-style training of a text-to-image model on accelerate.

    One training step (a "GRPO iteration"): every process rolls out `sample_prompts_per_device` prompts x
    `num_generations` images with the current SDE window, scores them, the rewards are gathered across processes and
    turned into group-normalised advantages, and the window steps are trained with the clipped GRPO loss (one
    micro-batch per rollout chunk; an optimiser step every `gradient_accumulation_steps` micro-batches and at the end
    of the iteration). The window then moves by the `SlidingWindowSchedule`.

    Args:
        config (`GRPOConfig`): every hyper-parameter.
        pipeline (`GRPOTrainingPipeline`, *optional*): the model; loaded from `config.pretrained_model_name_or_path`
            when omitted.
        rewards (`MultiReward`, mapping or callable, *optional*): `{name_or_callable: weight}`, a `MultiReward`, or
            one callable `(images, prompts) -> (B,)`; default: `config.rewards`.
        train_prompts (`Sequence[str]`, *optional*): the prompt dataset; default: `config.prompt_file`.
        eval_prompts (`Sequence[str]`, *optional*): prompts for the periodic evaluation (deterministic ODE samples,
            mean reward logged as `eval/reward`, image grid logged); default: `config.validation_prompts`.
        accelerator (`Accelerator`, *optional*): bring your own; otherwise built from the config.
    """

    def __init__(
        self,
        config: GRPOConfig,
        pipeline: Optional[GRPOTrainingPipeline] = None,
        rewards: Optional[RewardSpec] = None,
        train_prompts: Optional[Sequence[str]] = None,
        eval_prompts: Optional[Sequence[str]] = None,
        accelerator: Optional[Accelerator] = None,
    ):
        self.config = config
        self.accelerator = accelerator or Accelerator(
            mixed_precision=config.mixed_precision,
            log_with=resolve_report_to(config.report_to),
            project_config=ProjectConfiguration(
                project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, config.logging_dir)
            ),
        )
        set_seed(config.seed)
        self.pipeline = pipeline if pipeline is not None else load_training_pipeline(config)
        self.pipeline.set_progress_bar_config(disable=True)
        self.train_prompts = self._load_prompts(train_prompts)
        self.eval_prompts = list(eval_prompts) if eval_prompts is not None else list(config.validation_prompts or [])
        self.reward = self._build_rewards(rewards)
        self.window = SlidingWindowSchedule(**config.sliding_window_kwargs())
        self.checkpoints = CheckpointManager(config.output_dir, config.checkpoints_total_limit)
        self.global_step = 0
        self.bad_group_streak = 0
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._setup_model()
        self._bar = None
        self.eval_images_per_prompt = 1  # images per prompt of the periodic evaluation

    # ------------------------------------------------------------------ setup
    def _load_prompts(self, prompts: Optional[Sequence[str]]) -> list[str]:
        if prompts is None and self.config.prompt_file:
            with open(self.config.prompt_file, encoding="utf-8") as f:
                prompts = [line.strip() for line in f if line.strip()]
        if not prompts:
            raise ValueError("No training prompts: pass train_prompts=[...] or set prompt_file.")
        return list(prompts)

    def _build_rewards(self, rewards: Optional[RewardSpec]) -> MultiReward:
        cfg = self.config
        if rewards is None:
            rewards = cfg.rewards
        if rewards is None:
            raise ValueError("No reward: pass rewards={...} or set `rewards` in the config.")
        if isinstance(rewards, MultiReward):
            return rewards
        if callable(rewards) and not isinstance(rewards, Mapping):
            rewards = {rewards: 1.0}
        return MultiReward(
            rewards,
            mix=cfg.reward_mix,
            device=self.accelerator.device,
            std=cfg.adv_std,
            trim=cfg.adv_trim,
            clip=cfg.adv_clip_max,
        )

    def _setup_model(self) -> None:
        cfg, acc, pipe = self.config, self.accelerator, self.pipeline
        pipe.to(acc.device)
        scheduler_overrides = {
            "sde_type": cfg.sde_type,
            "eta": cfg.eta,
            "log_prob_reduction": cfg.log_prob_reduction,
        }
        if pipe.adapter.scheduler_kind == "flow":
            # The paper's grid: a fixed shift s (no resolution-dependent `mu`), Flash tail per the method preset.
            if cfg.shift is not None:
                scheduler_overrides.update(shift=cfg.shift, use_dynamic_shifting=False)
            scheduler_overrides.update(
                tail_solver=cfg.tail_solver,
                tail_solver_order=cfg.tail_solver_order,
                tail_ratio=cfg.tail_ratio,
            )
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **scheduler_overrides)
        pipe.adapter.stock.scheduler = pipe.scheduler

        for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.requires_grad_(False).eval()
        denoiser = pipe.denoiser
        denoiser.eval()  # no dropout: the rollout and the training pass must be the same function
        if cfg.use_lora:
            from peft import LoraConfig

            denoiser.requires_grad_(False)
            targets = cfg.lora_target_modules or default_lora_target_modules(pipe.model_family)
            denoiser.add_adapter(
                LoraConfig(
                    r=cfg.lora_rank,
                    lora_alpha=cfg.lora_alpha,
                    lora_dropout=cfg.lora_dropout,
                    target_modules=targets,
                    init_lora_weights="gaussian",
                )
            )
        else:
            denoiser.requires_grad_(True)
        if cfg.gradient_checkpointing:
            pipe.enable_gradient_checkpointing()
        self.trainable = [p for p in denoiser.parameters() if p.requires_grad]
        if not self.trainable:
            raise ValueError("The denoiser has no trainable parameter; check lora_target_modules.")
        for p in self.trainable:  # LoRA weights train in float32 even in a bf16 model
            p.data = p.data.float()

        optimizer_cls = torch.optim.AdamW
        if cfg.optimizer == "adamw8bit":
            try:
                import bitsandbytes as bnb
            except ImportError as err:
                raise ImportError("optimizer='adamw8bit' needs bitsandbytes: pip install bitsandbytes") from err
            optimizer_cls = bnb.optim.AdamW8bit
        optimizer = optimizer_cls(
            self.trainable,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_epsilon,
            weight_decay=cfg.weight_decay,
        )
        from diffusers.optimization import get_scheduler

        lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
            num_training_steps=self._optimizer_steps_per_iteration() * cfg.max_train_steps * acc.num_processes,
        )
        wrapped, self.optimizer, self.lr_scheduler = acc.prepare(denoiser, optimizer, lr_scheduler)
        pipe.adapter.forward_module = wrapped if wrapped is not denoiser else None
        self.model = wrapped
        self.ema = (
            ParameterEMA(self.trainable, decay=cfg.ema_decay, update_interval=cfg.ema_update_interval)
            if cfg.use_ema
            else None
        )
        if cfg.use_lora:
            acc.register_save_state_pre_hook(self._save_lora_hook)
            acc.register_load_state_pre_hook(self._load_lora_hook)

    def _optimizer_steps_per_iteration(self) -> int:
        cfg = self.config
        per_chunk = cfg.sample_max_batch_size or cfg.rollouts_per_device
        g = cfg.num_generations
        chunks = (
            math.ceil(cfg.sample_prompts_per_device / max(1, per_chunk // g))
            if g <= per_chunk
            else cfg.sample_prompts_per_device * math.ceil(g / per_chunk)
        )
        return cfg.num_inner_epochs * math.ceil(chunks / cfg.gradient_accumulation_steps)

    # Checkpoints of LoRA runs hold the adapter weights only (not the frozen base model).
    def _save_lora_hook(self, models, weights, output_dir):
        from peft.utils import get_peft_model_state_dict

        if self.accelerator.is_main_process:
            state = get_peft_model_state_dict(self.accelerator.unwrap_model(self.pipeline.denoiser))
            from safetensors.torch import save_file

            save_file(
                {k: v.detach().float().contiguous().cpu() for k, v in state.items()},
                os.path.join(output_dir, "lora_adapter.safetensors"),
            )
        while weights:
            weights.pop()

    def _load_lora_hook(self, models, input_dir):
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        while models:
            models.pop()
        state = load_file(os.path.join(input_dir, "lora_adapter.safetensors"))
        result = set_peft_model_state_dict(self.pipeline.denoiser, state)
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"Checkpoint LoRA keys do not match the model: {result.unexpected_keys[:5]} ...")

    # ------------------------------------------------------------------ data
    def _prompt_indices(self, step: int) -> list[int]:
        """Global prompt indices of training step `step` for this process: a seeded permutation per epoch, so the
        data position is a function of the step (exact resume) and of nothing process-specific."""
        cfg, acc = self.config, self.accelerator
        per_step = cfg.sample_prompts_per_device * acc.num_processes
        n = len(self.train_prompts)
        out = []
        for k in range(step * per_step, (step + 1) * per_step):
            epoch, pos = divmod(k, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 1000003 * epoch))
            out.append(int(perm[pos]))
        lo = acc.process_index * cfg.sample_prompts_per_device
        return out[lo : lo + cfg.sample_prompts_per_device]

    def _prompt_generators(self, step: int, global_slots: Sequence[int]) -> list[torch.Generator]:
        """One generator per prompt slot of the global batch: a group's noise depends on (seed, step, slot) only."""
        base = self.config.seed * 1_000_003 + step * 7919
        return [torch.Generator().manual_seed(base + 31 * slot) for slot in global_slots]

    def _global_slot_offset(self) -> int:
        return self.accelerator.process_index * self.config.sample_prompts_per_device

    # ------------------------------------------------------------------ one iteration
    def _rollout(self, step: int) -> RolloutBatch:
        cfg = self.config
        idx = self._prompt_indices(step)
        prompts = [self.train_prompts[i] for i in idx]
        start, size = self.window.current()
        slots = [self._global_slot_offset() + j for j in range(len(idx))]
        return self.pipeline.rollout(
            prompts,
            num_generations=cfg.num_generations,
            num_inference_steps=cfg.num_inference_steps,
            sde_window=(start, size),
            guidance_scale=cfg.guidance_scale,
            height=cfg.height or cfg.resolution,
            width=cfg.width or cfg.resolution,
            generator=self._prompt_generators(step, slots),
            share_prefix=cfg.sample_share_prefix,
            same_initial_noise=cfg.sample_same_noise,
            max_batch_size=cfg.sample_max_batch_size,
            autocast_dtype=self._autocast_dtype(),
        )

    def _autocast_dtype(self) -> Optional[torch.dtype]:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.mixed_precision)

    def _score(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        scores = {}
        for name, fn in self.reward.rewards.items():
            try:
                s = torch.as_tensor(fn(batch.images, batch.prompts)).reshape(-1).float().to(self.accelerator.device)
            except Exception as err:  # a reward model that raises stops the run, naming the model and the prompt
                raise TrainingStopped(
                    f"Reward model {name!r} failed at step {self.global_step} on prompts "
                    f"{sorted(set(batch.prompts))[:4]}: {type(err).__name__}: {err}"
                ) from err
            if s.numel() != batch.batch_size:
                raise TrainingStopped(
                    f"Reward model {name!r} returned {s.numel()} scores for {batch.batch_size} images."
                )
            scores[name] = s
        return scores

    def _advantages(self, batch: RolloutBatch, scores: dict[str, torch.Tensor]):
        """Gather scores of every process (global group ids), drop non-finite groups, normalise; this rank's slice."""
        acc, cfg = self.accelerator, self.config
        group_ids = (batch.group_ids + self._global_slot_offset()).to(acc.device)
        all_groups = acc.gather(group_ids)
        all_scores = {k: acc.gather(v.contiguous()) for k, v in scores.items()}
        keep = finite_group_mask(all_scores, all_groups)
        adv = torch.zeros_like(all_groups, dtype=torch.float32)
        per_reward = {}
        if keep.any():
            kept_adv, per_reward = compute_advantages(
                {k: v[keep] for k, v in all_scores.items()},
                all_groups[keep],
                weights=self.reward.weights,
                mix=self.reward.mix,
                std=cfg.adv_std,
                trim=cfg.adv_trim,
                clip=cfg.adv_clip_max,
            )
            adv[keep] = kept_adv
        n_local = batch.batch_size
        lo = acc.process_index * n_local  # every process rolls out the same number of samples
        return adv[lo : lo + n_local], keep[lo : lo + n_local], all_scores, keep, per_reward

    def _train_steps(self, batch: RolloutBatch, step: int) -> list[int]:
        """The window steps trained this iteration: all of them, or a seeded random fraction (DanceGRPO)."""
        steps = list(batch.step_indices)
        k = max(1, int(len(steps) * self.config.train_timestep_fraction))
        if k >= len(steps):
            return steps
        g = torch.Generator().manual_seed(self.config.seed * 7 + step)
        chosen = torch.randperm(len(steps), generator=g)[:k].sort().values
        return [steps[i] for i in chosen.tolist()]

    @contextmanager
    def _reference_policy(self):
        """The base model for the Flow-GRPO reference KL: LoRA disabled (full fine-tune: not available)."""
        denoiser = self.pipeline.denoiser
        denoiser.disable_adapters()
        try:
            yield
        finally:
            denoiser.enable_adapters()

    def _update(self, batch: RolloutBatch, advantages: torch.Tensor, keep: torch.Tensor, step: int) -> dict:
        cfg, acc, pipe = self.config, self.accelerator, self.pipeline
        train_steps = self._train_steps(batch, step)
        stats: dict[str, list[float]] = {}
        micro = [c[keep[c.to(keep.device)].cpu()] for c in batch.chunks]
        micro = [c for c in micro if len(c)]
        accum = cfg.gradient_accumulation_steps
        autocast = self._autocast_dtype()
        skipped = 0
        for _ in range(cfg.num_inner_epochs):
            order = torch.randperm(len(micro), generator=torch.Generator().manual_seed(cfg.seed + step))
            for n, mi in enumerate(order.tolist()):
                idx = micro[mi]
                group_end = n // accum * accum + accum
                in_group = min(group_end, len(micro)) - (n // accum * accum)
                sync = (n + 1) % accum == 0 or n + 1 == len(micro)
                ctx = acc.no_sync(self.model) if not sync and acc.num_processes > 1 else nullcontext()
                with ctx:
                    for t in train_steps:
                        j = batch.step_position(t)
                        logp, mean, std = pipe.log_prob(batch, t, idx, autocast_dtype=autocast, return_stats=True)
                        ref_mean = None
                        if cfg.kl_type == "reference" and cfg.kl_coeff > 0:
                            with torch.no_grad(), self._reference_policy():
                                _, ref_mean, _ = pipe.log_prob(
                                    batch, t, idx, autocast_dtype=autocast, return_stats=True
                                )
                        out = grpo_loss(
                            logp,
                            batch.log_probs[idx, j].to(logp.device),
                            advantages[idx.to(advantages.device)],
                            clip_range=cfg.clip_range,
                            kl_type=cfg.kl_type if cfg.kl_coeff > 0 else "none",
                            kl_coeff=cfg.kl_coeff,
                            prev_sample_mean=mean,
                            ref_prev_sample_mean=ref_mean,
                            std_dev=std,
                        )
                        loss = out.loss / (len(train_steps) * in_group)
                        if not torch.isfinite(loss):
                            skipped += 1
                            continue
                        acc.backward(loss)
                        for key, value in {"loss": out.loss, "kl": out.kl, **out.policy.stats()}.items():
                            stats.setdefault(key, []).append(
                                float(value.detach() if torch.is_tensor(value) else value)
                            )
                if sync:
                    grads_ok = all(p.grad is None or torch.isfinite(p.grad).all() for p in self.trainable)
                    if grads_ok and skipped == 0:
                        grad_norm = acc.clip_grad_norm_(self.trainable, cfg.max_grad_norm)
                        stats.setdefault("grad_norm", []).append(float(grad_norm))
                        self.optimizer.step()
                        self.lr_scheduler.step()
                        if self.ema is not None:
                            self.ema.step(self.trainable)
                    else:
                        stats.setdefault("skipped_updates", []).append(1.0)
                        logger.warning("Step %d: non-finite loss or gradient; optimiser step skipped.", step)
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped = 0
        return {k: sum(v) / len(v) for k, v in stats.items()}

    def train_step(self) -> dict[str, float]:
        """One GRPO iteration; returns the logged scalars."""
        cfg, step = self.config, self.global_step
        times = {}
        t0 = time.perf_counter()
        start, size = self.window.current()
        self._phase("rollout")
        batch = self._rollout(step)
        times["time/rollout"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self._phase("reward")
        scores = self._score(batch)
        times["time/reward"] = time.perf_counter() - t0
        advantages, keep, all_scores, all_keep, per_reward = self._advantages(batch, scores)
        dropped = int((~all_keep).sum())
        if dropped:
            self.bad_group_streak += 1
            logger.warning("Step %d: %d samples in groups with non-finite rewards were dropped.", step, dropped)
            if self.bad_group_streak >= cfg.max_consecutive_bad_groups:
                raise TrainingStopped(
                    f"{self.bad_group_streak} training steps in a row had non-finite rewards "
                    f"(max_consecutive_bad_groups={cfg.max_consecutive_bad_groups}); stopping. The last good "
                    f"checkpoint is {self.checkpoints.latest()}."
                )
        else:
            self.bad_group_streak = 0
        t0 = time.perf_counter()
        self._phase("update")
        update_stats = self._update(batch, advantages, keep, step) if keep.any() else {}
        times["time/update"] = time.perf_counter() - t0
        self.window.step()
        self.global_step += 1

        logs = {f"train/{k}": v for k, v in update_stats.items()}
        finite = {k: v[all_keep] for k, v in all_scores.items()}
        total = sum(self.reward.weights[k] * finite[k] for k in finite)
        if all_keep.any():
            logs["reward/mean"] = float(total.mean())
            logs["reward/std"] = float(total.std()) if total.numel() > 1 else 0.0
            for k, v in finite.items():
                logs[f"reward/{k}"] = float(v.mean())
            for k, v in per_reward.items():
                logs[f"advantage/{k}_std"] = float(v.std()) if v.numel() > 1 else 0.0
        logs.update(
            {
                "advantage/mean": float(advantages[keep].mean()) if keep.any() else 0.0,
                "advantage/abs_mean": float(advantages[keep].abs().mean()) if keep.any() else 0.0,
                "window/start": start,
                "window/size": size,
                "nfe/rollout_per_image": batch.nfe / batch.batch_size,
                "nfe/train_per_image": len(self._train_steps(batch, step)) * cfg.num_inner_epochs,
                "data/dropped_samples": dropped,
                "lr": self.lr_scheduler.get_last_lr()[0],
                **times,
            }
        )
        if "reward/mean" in logs:
            self.history.setdefault("train_reward", []).append((self.global_step, logs["reward/mean"]))
        return logs

    def _phase(self, name: str) -> None:
        """Show the current phase (rollout / reward / update / eval) on the run's progress bar."""
        if self._bar is not None:
            self._bar.set_description(f"MixGRPO [{name}]")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(
        self, prompts: Optional[Sequence[str]] = None, num_images_per_prompt: Optional[int] = None, seed: int = 0
    ):
        """Deterministic (ODE, no SDE window) samples of `prompts`; returns `(mean reward, per-reward means, images)`.

        Uses the EMA weights when EMA is on. Every process evaluates the same prompts (cheap, and no gather)."""
        prompts = list(prompts if prompts is not None else self.eval_prompts)
        num_images_per_prompt = num_images_per_prompt or self.eval_images_per_prompt
        if not prompts:
            return None, {}, None
        cfg = self.config
        ctx = self.ema.average_parameters(self.trainable) if self.ema is not None else nullcontext()
        with ctx:
            gens = [torch.Generator().manual_seed(seed * 100003 + i) for i in range(len(prompts))]
            batch = self.pipeline.rollout(
                prompts,
                num_generations=num_images_per_prompt,
                num_inference_steps=cfg.num_inference_steps,
                sde_window=(0, 0),
                guidance_scale=cfg.guidance_scale,
                height=cfg.height or cfg.resolution,
                width=cfg.width or cfg.resolution,
                generator=gens,
                max_batch_size=cfg.sample_max_batch_size,
                autocast_dtype=self._autocast_dtype(),
            )
        scores = self._score(batch)
        means = {k: float(v.mean()) for k, v in scores.items()}
        total = float(sum(self.reward.weights[k] * v for k, v in scores.items()).mean())
        return total, means, batch

    def _log_eval(self) -> Optional[float]:
        self._phase("eval")
        total, means, batch = self.evaluate()
        if total is None:
            return None
        self.history.setdefault("eval_reward", []).append((self.global_step, total))
        self.accelerator.log(
            {"eval/reward": total, **{f"eval/{k}": v for k, v in means.items()}}, step=self.global_step
        )
        if self.accelerator.is_main_process:
            log_image_grid(
                self.accelerator, batch.pil_images(), self.global_step, tag="validation", captions=batch.prompts
            )
        return total

    # ------------------------------------------------------------------ checkpoints
    def _trainer_state(self) -> dict[str, Any]:
        state = {
            "global_step": self.global_step,
            "window": self.window.state_dict(),
            "bad_group_streak": self.bad_group_streak,
            "history": {k: [list(p) for p in v] for k, v in self.history.items()},
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def save_checkpoint(self) -> str:
        return self.checkpoints.save(self.global_step, self.accelerator, self._trainer_state())

    def resume(self, resume_from_checkpoint: Optional[str]) -> bool:
        path = self.checkpoints.resolve(resume_from_checkpoint)
        if path is None:
            return False
        state = self.checkpoints.load(path, self.accelerator)
        self.global_step = int(state["global_step"])
        self.window.load_state_dict(state["window"])
        self.bad_group_streak = int(state.get("bad_group_streak", 0))
        self.history = {k: [tuple(p) for p in v] for k, v in state.get("history", {}).items()}
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        logger.info("Resumed from %s at step %d.", path, self.global_step)
        return True

    # ------------------------------------------------------------------ the run
    def train(self) -> TrainOutput:
        """Run to `max_train_steps`: resume if asked, checkpoint, evaluate, log; save (and push) the result."""
        cfg, acc = self.config, self.accelerator
        if cfg.resume_from_checkpoint:
            self.resume(cfg.resume_from_checkpoint)
        init_trackers(acc, cfg)
        if self.global_step == 0 and self.eval_prompts and cfg.validation_steps:
            self._log_eval()
        self._bar = bar = tqdm(
            total=cfg.max_train_steps, initial=self.global_step, desc="MixGRPO", disable=not acc.is_local_main_process
        )
        while self.global_step < cfg.max_train_steps:
            logs = self.train_step()
            if self.global_step % cfg.logging_steps == 0:
                acc.log(logs, step=self.global_step)
            bar.update(1)
            bar.set_postfix(reward=f"{logs.get('reward/mean', float('nan')):.3f}", window=logs["window/start"])
            if cfg.validation_steps and self.eval_prompts and self.global_step % cfg.validation_steps == 0:
                self._log_eval()
            if cfg.checkpointing_steps and self.global_step % cfg.checkpointing_steps == 0:
                self.save_checkpoint()
        bar.close()
        self._bar = None
        self.save_model(cfg.output_dir)
        acc.wait_for_everyone()
        if cfg.push_to_hub and acc.is_main_process:
            self.push_to_hub()
        acc.end_training()
        return TrainOutput(self.global_step, dict(self.history), cfg.output_dir)

    # ------------------------------------------------------------------ saving
    def save_model(self, output_dir: str) -> None:
        """LoRA: the family's diffusers LoRA file (`pytorch_lora_weights.safetensors`, loadable by a stock pipeline's
        `load_lora_weights`); full fine-tune: the whole pipeline folder. Plus the reward curve and config."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return
        os.makedirs(output_dir, exist_ok=True)
        denoiser = acc.unwrap_model(self.pipeline.denoiser)
        ctx = self.ema.average_parameters(self.trainable) if self.ema is not None else nullcontext()
        with ctx:
            if self.config.use_lora:
                from diffusers.utils import convert_state_dict_to_diffusers
                from peft.utils import get_peft_model_state_dict

                layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(denoiser))
                key = "unet_lora_layers" if self.pipeline.model_family == "sd15" else "transformer_lora_layers"
                self.pipeline.save_lora_weights(output_dir, **{key: layers}, safe_serialization=True)
            else:
                self.pipeline.stock_pipeline.save_pretrained(output_dir, safe_serialization=True)
        self.config.to_yaml(os.path.join(output_dir, "training_config.yaml"))
        if self.history:
            plot_reward_curve(self.history, os.path.join(output_dir, "reward_curve.png"))

    def push_to_hub(self) -> str:
        """Model card + weights to `hub_model_id` (token from huggingface_hub's usual mechanisms)."""
        from .hub import push_folder_to_hub, write_model_card

        cfg = self.config
        repo_id = cfg.resolved_hub_model_id()
        write_model_card(
            cfg.output_dir,
            cfg,
            base_model=cfg.pretrained_model_name_or_path,
            method=cfg.method,
            reward_history=self.history,
            repo_id=repo_id,
        )
        return push_folder_to_hub(cfg.output_dir, repo_id, private=cfg.hub_private, token=cfg.hub_token)
