"""`GRPOTrainer`: the MixGRPO training loop (rollout -> rewards -> advantages -> clipped GRPO update) on accelerate.

This module holds the algorithm; the infrastructure it runs on lives in modules named for it: `model_setup.py` (the
model, optimiser and learning-rate schedule made ready to train), `reward_runner.py` (building and calling the
rewards), `backends.py` (what differs between DDP, FSDP2 and DeepSpeed), `export.py` (checkpoint and final weight
formats), `run_state.py` (the recorded config, resuming, the pre-emption bookkeeping) and `evaluation.py`."""

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..pipelines.pipeline_grpo import GRPOTrainingPipeline
from ..pipelines.prompt_cache import PromptEmbedsCache
from ..pipelines.rollout_batch import PromptEmbeds, RolloutBatch
from ..schedulers.sliding_window import SlidingWindowSchedule
from .advantages import compute_advantages, finite_group_mask
from .backends import all_ranks, make_backend
from .checkpointing import CheckpointManager
from .config import GRPOConfig
from .distributed import FSDP2Options
from .errors import ConfigError, TrainingStopped
from .evaluation import (
    EvaluationResult,
    eval_items,
    eval_seed,
    gather_items,
    log_evaluation,
    resolve_eval_prompts,
    score_items,
    shard_items,
)
from .export import export_final_model, push_run_to_hub
from .health import RunHealth
from .interrupts import GracefulInterrupt, Preempted, signal_name
from .iteration_plan import (
    draw_train_steps,
    micro_batches,
    num_train_steps,
    prompt_generators,
    prompt_indices,
    step_pieces,
)
from .logging_utils import announce_truncated_prompts, init_trackers, quiet_prompt_truncation
from .losses import grpo_loss
from .model_setup import (
    apply_model_defaults,
    apply_tf32,
    build_accelerator,
    load_training_pipeline,
    prepare_model,
    resolve_fsdp2,
    setup_frozen_modules,
)
from .preflight import check_reward_device_available, read_prompt_file
from .resume import prompts_fingerprint, set_learning_rate
from .reward_runner import RewardRunner, RewardSpec, build_rewards
from .run_state import (
    Preemption,
    load_checkpoint,
    note_config_changes,
    record_run_inputs,
    resume_latest_usable,
    write_run_config,
)
from .run_summary import RunSummary

logger = logging.getLogger(__name__)

__all__ = ["GRPOTrainer", "TrainOutput", "TrainingStopped", "apply_tf32", "load_training_pipeline"]

#: Prompts of the evaluation whose images make the logged grid (one row per prompt).
VALIDATION_GRID_PROMPTS = 8


@dataclass
class TrainOutput:
    """What `GRPOTrainer.train` returns: the step reached, the logged curves, the end-of-run summary, and the signal
    that stopped the run early (`None` when it ran to `max_train_steps`)."""

    global_step: int
    reward_history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    output_dir: Optional[str] = None
    summary: Optional[RunSummary] = None
    interrupted_by: Optional[str] = None
    checkpoint: Optional[str] = None


class GRPOTrainer:
    r"""
    MixGRPO / MixGRPO-Flash / Flash* / DanceGRPO-style training of a text-to-image model on accelerate.

    One training step (a "GRPO iteration"): every process rolls out `sample_prompts_per_device` prompts x
    `num_generations` images with the current SDE window, scores them, the rewards are gathered across processes and
    turned into group-normalised advantages, and the window steps are trained with the clipped GRPO loss (micro-batches
    of `train_batch_size`, or one per rollout chunk; an optimiser step every `gradient_accumulation_steps`
    micro-batches and at the end of the iteration). The window then moves by the `SlidingWindowSchedule`. Every
    decision to skip a backward or an optimiser step is the same on all ranks (see `_update`).

    Args:
        config (`GRPOConfig`): every hyper-parameter.
        pipeline (`GRPOTrainingPipeline`, *optional*): the model; loaded from `config.pretrained_model_name_or_path`
            when omitted.
        rewards (`MultiReward`, mapping or callable, *optional*): `{name_or_callable: weight}`, a `MultiReward`, or
            one callable `(images, prompts) -> (B,)`; default: `config.rewards`.
        train_prompts (`Sequence[str]`, *optional*): the prompt dataset; default: `config.prompt_file`.
        eval_prompts (`Sequence[str]`, *optional*): held-out prompts of the periodic evaluation (`evaluate`:
            deterministic ODE samples, `validation_images_per_prompt` per prompt from fixed seeds, split across the
            processes; `eval/reward`, per-reward means, a per-prompt table and an image grid logged); default:
            `config.validation_prompts`, else `config.validation_prompt_file`, else the first
            `DEFAULT_NUM_VALIDATION_PROMPTS` (4) training prompts, with a warning.
        accelerator (`Accelerator`, *optional*): bring your own; otherwise built from the config.
        overlap_rewards (`bool`, *optional*): score each rollout chunk in a thread while the next chunk is
            denoised (`training/overlap.py`); the same samples and scores as without. Worth it when the reward model
            runs on another device or behind `RemoteReward`. `None`: `config.overlap_rewards`.
        fsdp2 (`FSDP2Options` or `bool`, *optional*): shard the denoiser with torch's FSDP2 (`fully_shard` per
            transformer block) instead of accelerate's DDP; works on GPUs and on the CPU (gloo). A launch with
            accelerate's FSDP2 config (`examples/accelerate/fsdp2.yaml`) takes this path too, with the config's
            settings. See `training/distributed.py`. `None`: `config.fsdp2` (with `fsdp2_reshard_after_forward`,
            `fsdp2_cpu_offload`), else the launch config.
    """

    def __init__(
        self,
        config: GRPOConfig,
        pipeline: Optional[GRPOTrainingPipeline] = None,
        rewards: Optional[RewardSpec] = None,
        train_prompts: Optional[Sequence[str]] = None,
        eval_prompts: Optional[Sequence[str]] = None,
        accelerator: Optional[Accelerator] = None,
        fsdp2: Optional[Union[bool, "FSDP2Options"]] = None,
        overlap_rewards: Optional[bool] = None,
    ):
        self.config = config
        self.overlap_rewards = config.overlap_rewards if overlap_rewards is None else bool(overlap_rewards)
        self.accelerator = accelerator or build_accelerator(config)
        set_seed(config.seed)
        apply_tf32(config.allow_tf32, self.accelerator.device)
        check_reward_device_available(config.reward_device)  # before FLUX loads, not after
        file_prompts = None
        if eval_prompts is None and config.validation_prompts is None and config.validation_prompt_file:
            file_prompts = read_prompt_file(config.validation_prompt_file, "validation_prompt_file")
        self.pipeline = pipeline if pipeline is not None else load_training_pipeline(config)
        self.pipeline.set_progress_bar_config(disable=True)
        apply_model_defaults(config, self.pipeline)
        self._prompts_given = train_prompts is not None
        self.train_prompts = self._load_prompts(train_prompts)
        self.eval_prompts, self.eval_prompts_source = resolve_eval_prompts(
            config, eval_prompts, file_prompts, self.train_prompts
        )
        self.reward = build_rewards(rewards, config, self.reward_device)
        self.config = record_run_inputs(config, self.pipeline, self.reward.weights, eval_prompts, self._prompts_given)
        self.window = SlidingWindowSchedule(**config.sliding_window_kwargs())
        self.checkpoints = CheckpointManager(config.output_dir, config.checkpoints_total_limit)
        self.reward_runner = RewardRunner(
            self.reward, self.accelerator.device, self.config.reward_timeout, self.checkpoints.latest
        )
        self.health = RunHealth(config.max_consecutive_bad_groups, self.checkpoints.latest)
        self.global_step = 0
        self.config_changes: list[dict[str, Any]] = []
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.preemption = Preemption()
        self._setup_model(resolve_fsdp2(config, fsdp2))
        all_prompts = list(dict.fromkeys(self.train_prompts + self.eval_prompts))
        self.prompt_cache: Optional[PromptEmbedsCache] = setup_frozen_modules(
            self.config, self.accelerator, self.pipeline, all_prompts
        )
        quiet_prompt_truncation()
        if self.accelerator.is_main_process:
            announce_truncated_prompts(self.pipeline, all_prompts)
        self._bar = None
        # Replaces the periodic evaluation when set: called with the trainer every `validation_steps` (and before
        # the first step), returns scalars logged as `eval/<name>`; its "reward" is the `eval_reward` curve. The
        # toy task uses it to score held-out prompts with held-out noise (`toy_world.evaluation`).
        self.evaluation_hook: Optional[Callable[[GRPOTrainer], Mapping[str, float]]] = None

    # ------------------------------------------------------------------ setup
    def _load_prompts(self, prompts: Optional[Sequence[str]]) -> list[str]:
        if prompts is None and self.config.prompt_file:
            prompts = read_prompt_file(self.config.prompt_file)
        if not prompts:
            raise ConfigError("No training prompts: pass train_prompts=[...] or set prompt_file.")
        return list(prompts)

    def _setup_model(self, fsdp2: Optional[FSDP2Options]) -> None:
        """The model made ready to train (`model_setup.prepare_model`) and the backend that runs its update."""
        cfg, acc = self.config, self.accelerator
        prepared = prepare_model(cfg, acc, self.pipeline, fsdp2)
        self.model, self.trainable, self.ema = prepared.model, prepared.trainable, prepared.ema
        self.optimizer, self.lr_scheduler = prepared.optimizer, prepared.lr_scheduler
        self.fsdp2, self.zero_stage = prepared.fsdp2, prepared.zero_stage
        self.backend = make_backend(acc, prepared, cfg)
        self.backend.register_checkpoint_hooks(self.pipeline.denoiser, cfg.lora_rank)

    @property
    def bad_group_streak(self) -> int:
        """Training steps in a row, up to now, with dropped groups (non-finite rewards); see `health.RunHealth`."""
        return self.health.bad_group_streak

    @bad_group_streak.setter
    def bad_group_streak(self, value: int) -> None:
        self.health.bad_group_streak = value

    @property
    def reward_device(self) -> torch.device:
        """Where the registered reward models run: `reward_device`, else this process's training device."""
        device = self.config.reward_device
        return torch.device(device) if device is not None else self.accelerator.device

    def _cached_embeds(self, prompts: Sequence[str]) -> Optional[PromptEmbeds]:
        """The cached rows of `prompts`, or `None` (no cache, or a prompt it does not hold: encoded as usual)."""
        if self.prompt_cache is None or self.prompt_cache.missing(prompts):
            return None
        return self.prompt_cache.rows(prompts)

    # ------------------------------------------------------------------ data (`iteration_plan.py`)
    def _prompt_indices(self, step: int) -> list[int]:
        """The prompt indices this process rolls out at step `step` (`iteration_plan.prompt_indices`)."""
        cfg, acc = self.config, self.accelerator
        n, per_device = len(self.train_prompts), cfg.sample_prompts_per_device
        return prompt_indices(step, cfg.seed, n, per_device, acc.num_processes, acc.process_index)

    def _prompt_generators(self, step: int, global_slots: Sequence[int]) -> list[torch.Generator]:
        """One generator per prompt slot of the global batch (`iteration_plan.prompt_generators`)."""
        return prompt_generators(self.config.seed, step, global_slots)

    def _train_steps(self, batch: RolloutBatch, step: int) -> list[list[int]]:
        """The window steps each local sample trains this iteration (`iteration_plan.draw_train_steps`)."""
        cfg = self.config
        first = self.accelerator.process_index * batch.batch_size  # the global index of this rank's first sample
        return draw_train_steps(
            batch.step_indices, batch.batch_size, cfg.seed, step, cfg.train_timestep_fraction, first
        )

    _step_pieces = staticmethod(step_pieces)

    def _global_slot_offset(self) -> int:
        return self.accelerator.process_index * self.config.sample_prompts_per_device

    # ------------------------------------------------------------------ one iteration
    def _sample(self, prompts: list[str], generators: list[torch.Generator], where: str, **kwargs) -> RolloutBatch:
        """`pipeline.rollout` of `prompts` with the run's sampling settings (a stop request is checked after each
        denoiser call; `where` names the phase in the stop message)."""
        cfg = self.config
        return self.pipeline.rollout(
            prompts,
            prompt_embeds=self._cached_embeds(prompts),
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale,
            height=cfg.height or cfg.resolution,
            width=cfg.width or cfg.resolution,
            generator=generators,
            max_batch_size=cfg.sample_max_batch_size,
            autocast_dtype=self._autocast_dtype(),
            step_callback=lambda: self._check_stop(where),
            **kwargs,
            **self._video_kwargs(),
        )

    def _rollout(self, step: int, piece: Optional[slice] = None) -> RolloutBatch:
        """The rollout of step `step` (this process's prompts; `piece`: a slice of them, e.g. one chunk's)."""
        cfg = self.config
        positions = list(range(cfg.sample_prompts_per_device))[piece or slice(None)]
        indices = self._prompt_indices(step)
        prompts = [self.train_prompts[indices[j]] for j in positions]
        slots = [self._global_slot_offset() + j for j in positions]
        return self._sample(
            prompts,
            self._prompt_generators(step, slots),
            "its rollout",
            num_generations=cfg.num_generations,
            sde_window=self.window.current(),
            share_prefix=cfg.sample_share_prefix,
            same_initial_noise=cfg.sample_same_noise,
        )

    def _video_kwargs(self) -> dict:
        """`num_frames` for a video family's rollouts (image families take none)."""
        if self.pipeline.family.is_video:
            return {"num_frames": self.config.num_frames}
        if self.config.num_frames is not None:
            raise ConfigError(
                f"num_frames={self.config.num_frames} is for video families (wan); this run's family is "
                f"{self.pipeline.model_family!r}: leave num_frames unset."
            )
        return {}

    def _autocast_dtype(self) -> Optional[torch.dtype]:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.mixed_precision)

    def _score(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """`{reward name: (B,) scores}` of `batch` (`reward_runner.RewardRunner`)."""
        return self.reward_runner.score(batch, self.global_step)

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
        self._all_advantages_zero = bool(keep.any() and (adv[keep] == 0).all())
        n_local = batch.batch_size
        lo = acc.process_index * n_local  # every process rolls out the same number of samples
        return adv[lo : lo + n_local], keep[lo : lo + n_local], all_scores, keep, per_reward

    @contextmanager
    def _reference_policy(self):
        """The base model for the Flow-GRPO reference KL: LoRA disabled (full fine-tune: not available)."""
        denoiser = self.pipeline.denoiser
        denoiser.disable_adapters()
        try:
            yield
        finally:
            denoiser.enable_adapters()

    def _update(self, batch: RolloutBatch, advantages: torch.Tensor, all_keep: torch.Tensor, step: int) -> dict:
        """The clipped GRPO update on this iteration's rollouts: micro-batches of `train_batch_size`, an optimiser step
        every `gradient_accumulation_steps` of them.

        Samples of dropped groups (`all_keep` False, non-finite rewards) count as samples with advantage 0: they add
        nothing to the gradient and leave the weight of the others unchanged (a micro-batch's loss is the sum over
        its kept samples divided by its full size). Every skip is decided identically on all ranks: `all_keep` is
        the gathered mask, so each rank knows which micro-batches any rank trains; one that no rank trains is left
        out by all, and a rank with nothing kept in a micro-batch that others train runs it with a zeroed loss (the
        gradient reduction needs every rank's backward). A non-finite loss or gradient on any rank skips that
        accumulation group's optimiser step on every rank."""
        cfg, acc, backend = self.config, self.accelerator, self.backend
        train_steps = self._train_steps(batch, step)
        kept_by_rank = all_keep.reshape(acc.num_processes, batch.batch_size).cpu()
        accum = cfg.gradient_accumulation_steps
        stats: dict[str, list[float]] = {}
        taken = skipped = micro_done = 0
        order = torch.Generator().manual_seed(cfg.seed + step)
        if cfg.preemption_snapshot and not backend.steps_in_backward:
            self.preemption.snapshot(
                self.trainable, self.optimizer, self.lr_scheduler, self.ema, getattr(acc, "scaler", None)
            )
        for _ in range(cfg.num_inner_epochs):
            micro = micro_batches(batch.batch_size, batch.chunks, cfg.train_batch_size, order)
            for start in range(0, len(micro), accum):
                group = micro[start : start + accum]
                runs = [m for m in group if bool(kept_by_rank[:, m].any())]
                if not runs:
                    continue  # no rank keeps a sample of this accumulation group: no backward, no optimiser step
                # A stop rewinds the iteration: possible while no optimiser step was taken, or with the restore
                # point. DeepSpeed steps inside its boundary backward: no rewind, the step finishes.
                rewindable = not backend.steps_in_backward and (
                    taken == 0 or self.preemption.restore_point is not None
                )
                where = (micro_done + start, cfg.num_inner_epochs * len(micro)) if rewindable else None
                non_finite = self._accumulate(batch, advantages, train_steps, group, runs, kept_by_rank, stats, where)
                if all_ranks(acc, backend.grads_finite() and non_finite == 0):
                    stats.setdefault("grad_norm", []).append(backend.clip_and_step())
                    if self.ema is not None:
                        self.ema.step(self.trainable)
                    taken = self.preemption.optimizer_steps = taken + 1
                else:
                    skipped += 1
                    logger.warning("Step %d: non-finite loss or gradient on a rank; optimiser step skipped.", step)
                backend.zero_grad()
            micro_done += len(micro)
        logs = {k: sum(v) / len(v) for k, v in stats.items()}
        logs["optimizer_steps"] = taken
        if skipped:
            logs["skipped_updates"] = skipped
        return logs

    def _accumulate(self, batch, advantages, train_steps, group, runs, kept_by_rank, stats, where) -> int:
        """The forwards and backwards of one accumulation group (`runs`: its micro-batches that some rank trains);
        returns how many of this rank's losses were non-finite. `where`: (micro-batches before the group, micro-batches
        of the update) when a stop may interrupt it, else `None`.

        Each backward carries the mean loss over its kept samples / (micro-batches in the group x trained steps K),
        the loss of a piece scaled by its share of the micro-batch (`docs/training.md`, "Loss")."""
        local_keep = kept_by_rank[self.accelerator.process_index]
        autocast = self._autocast_dtype()
        k = len(train_steps[0])
        non_finite = 0
        for i, m in enumerate(runs):
            kept = m[local_keep[m]]
            idx = kept if len(kept) else m[:1]
            weight = len(kept) / (len(m) * len(group) * k)
            pieces = self._step_pieces(train_steps, idx)
            for pi, (t, sub) in enumerate(pieces):
                if where is not None:
                    position = where[0] + next(j for j, g in enumerate(group) if g is m) + 1
                    self._check_stop(f"its update (micro-batch {position} of {where[1]})")
                # Only the last backward of the group (its last micro-batch that runs, that micro-batch's last piece)
                # is the boundary; the same on every rank: `runs` and `pieces` are.
                boundary = i == len(runs) - 1 and pi == len(pieces) - 1
                with self.backend.accumulation_context(boundary):
                    out = self._window_step_loss(batch, t, sub, advantages, autocast)
                    loss = out.loss * (weight * len(sub) / len(idx))
                    finite_loss = bool(torch.isfinite(loss))
                    if not finite_loss:
                        # The backward still runs (the other ranks wait for this rank's gradients); the group's
                        # optimiser step is skipped on every rank. DeepSpeed skips it itself on non-finite
                        # gradients, so a non-finite loss must give non-finite gradients.
                        non_finite += 1
                        loss = loss * float("nan")
                    self.backend.backward(loss, boundary)
                if finite_loss and len(kept):
                    for key, value in {"loss": out.loss, "kl": out.kl, **out.policy.stats()}.items():
                        stats.setdefault(key, []).append(float(value.detach() if torch.is_tensor(value) else value))
        return non_finite

    def _window_step_loss(self, batch, t, idx, advantages, autocast):
        """`grpo_loss` of the samples `idx` at window step `t`, recomputing their log-probs under the current weights
        (and, with the reference KL, under the base model)."""
        cfg, pipe = self.config, self.pipeline
        logp, mean, std = pipe.log_prob(batch, t, idx, autocast_dtype=autocast, return_stats=True)
        ref_mean = None
        if cfg.kl_type == "reference" and cfg.kl_coeff > 0:
            with torch.no_grad(), self._reference_policy():
                _, ref_mean, _ = pipe.log_prob(batch, t, idx, autocast_dtype=autocast, return_stats=True)
        return grpo_loss(
            logp,
            batch.log_probs[idx, batch.step_position(t)].to(logp.device),
            advantages[idx.to(advantages.device)],
            clip_range=cfg.clip_range,
            kl_type=cfg.kl_type if cfg.kl_coeff > 0 else "none",
            kl_coeff=cfg.kl_coeff,
            prev_sample_mean=mean,
            ref_prev_sample_mean=ref_mean,
            std_dev=std,
        )

    def _rollout_and_score(self, step: int, times: dict[str, float]) -> tuple[RolloutBatch, dict[str, torch.Tensor]]:
        """This process's rollout of step `step` and its scores (with `overlap_rewards`, each chunk scored while the
        next is denoised); the phases' seconds go into `times`."""
        cfg = self.config
        t0 = time.perf_counter()
        self._phase("rollout")
        per_piece = max(1, (cfg.sample_max_batch_size or cfg.rollouts_per_device) // cfg.num_generations)
        if self.overlap_rewards and cfg.sample_prompts_per_device > per_piece:
            from .overlap import rollout_with_rewards_alongside

            pieces = [slice(p, p + per_piece) for p in range(0, cfg.sample_prompts_per_device, per_piece)]
            batch, scores, waited = rollout_with_rewards_alongside(
                pieces, lambda piece: self._rollout(step, piece), self._score
            )
            times["time/rollout"] = time.perf_counter() - t0 - waited
            times["time/reward"] = waited  # the reward time not hidden behind the rollout
            return batch, scores
        batch = self._rollout(step)
        times["time/rollout"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self._phase("reward")
        scores = self._score(batch)
        times["time/reward"] = time.perf_counter() - t0
        return batch, scores

    def train_step(self) -> dict[str, float]:
        """One GRPO iteration; returns the logged scalars."""
        step, times = self.global_step, {}
        # A stop before this iteration ends rewinds to here (`Preemption.rewind`): the RNGs and counters it changes.
        self.preemption.start_iteration(self, counters=("bad_group_streak",))
        window = self.window.current()
        batch, scores = self._rollout_and_score(step, times)
        self._check_stop("its rewards")
        advantages, keep, all_scores, all_keep, per_reward = self._advantages(batch, scores)
        self.health.check_dropped_groups(step, int((~all_keep).sum()))
        t0 = time.perf_counter()
        self._phase("update")
        # `all_keep` (gathered) and not this rank's `keep`: a rank whose groups were all dropped still takes part in
        # the update while another rank trains, or that rank would wait for it in the gradient reduction forever.
        update_stats = self._update(batch, advantages, all_keep, step) if all_keep.any() else {"optimizer_steps": 0}
        times["time/update"] = time.perf_counter() - t0
        finite = {k: v[all_keep] for k, v in all_scores.items()}
        stepped = "grad_norm" in update_stats
        self.health.check_update(step, bool(all_keep.any()), stepped, self._all_advantages_zero, finite)
        self.window.step()
        self.global_step += 1
        self.preemption.end_iteration()
        logs = self._step_logs(batch, update_stats, finite, per_reward, advantages[keep], window, all_keep, times)
        if "reward/mean" in logs:
            self.history.setdefault("train_reward", []).append((self.global_step, logs["reward/mean"]))
        return logs

    def _step_logs(self, batch, update_stats, finite, per_reward, kept_advantages, window, all_keep, times) -> dict:
        """The scalars `train_step` logs: update statistics, rewards (of the kept samples), advantages, window, cost."""
        cfg = self.config
        logs = {f"train/{k}": v for k, v in update_stats.items()}
        if all_keep.any():
            total = sum(self.reward.weights[k] * finite[k] for k in finite)
            logs["reward/mean"] = float(total.mean())
            logs["reward/std"] = float(total.std()) if total.numel() > 1 else 0.0
            for k, v in finite.items():
                logs[f"reward/{k}"] = float(v.mean())
            for k, v in per_reward.items():
                logs[f"advantage/{k}_std"] = float(v.std()) if v.numel() > 1 else 0.0
        any_kept = kept_advantages.numel() > 0
        logs.update(
            {
                "advantage/mean": float(kept_advantages.mean()) if any_kept else 0.0,
                "advantage/abs_mean": float(kept_advantages.abs().mean()) if any_kept else 0.0,
                "window/start": window[0],
                "window/size": window[1],
                "nfe/rollout_per_image": batch.nfe / batch.batch_size,
                "nfe/train_per_image": num_train_steps(len(batch.step_indices), cfg.train_timestep_fraction)
                * cfg.num_inner_epochs,
                "data/dropped_samples": int((~all_keep).sum()),
                "lr": self.lr_scheduler.get_last_lr()[0],
                **times,
            }
        )
        return logs

    def _phase(self, name: str) -> None:
        """Show the current phase (rollout / reward / update / eval) on the run's progress bar."""
        if self._bar is not None:
            self._bar.set_description(f"MixGRPO [{name}]")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(
        self,
        prompts: Optional[Sequence[str]] = None,
        num_images_per_prompt: Optional[int] = None,
        seed: Optional[int] = None,
        grid_prompts: int = VALIDATION_GRID_PROMPTS,
    ) -> Optional[EvaluationResult]:
        """Score deterministic (ODE, no SDE window) samples of `prompts` (default: `eval_prompts`) with every reward.

        Image `j` of prompt `i` starts from the noise of `eval_seed(seed, i, j)` (`seed` default:
        `validation_seed`; `num_images_per_prompt` default: `validation_images_per_prompt`); the prompt x image items
        are split across the processes (`evaluation.shard_items`) and the scores gathered, so every process returns
        the same `EvaluationResult` and the scores do not depend on the number of processes. The result keeps the
        images of the first `grid_prompts` prompts. Uses the EMA weights when EMA is on. `None` without prompts."""
        cfg, acc = self.config, self.accelerator
        prompts = list(prompts if prompts is not None else self.eval_prompts)
        if not prompts:
            return None
        n = int(num_images_per_prompt or cfg.validation_images_per_prompt)
        seed = cfg.validation_seed if seed is None else int(seed)
        items = eval_items(len(prompts), n)
        slots = shard_items(len(items), acc.process_index, acc.num_processes)
        chunk = cfg.sample_max_batch_size or cfg.rollouts_per_device
        with self.ema.average_parameters(self.trainable) if self.ema is not None else nullcontext():
            scored, pictures = score_items(
                self._eval_sample, self._score, prompts, items, slots, seed, chunk, grid_prompts
            )
        scored, pictures = gather_items(scored), gather_items(pictures)
        return EvaluationResult(
            prompts=prompts,
            images_per_prompt=n,
            seeds=[eval_seed(seed, i, j) for i, j in items],
            scores={name: [values[name] for _, values in scored] for name in self.reward.rewards},
            weights=dict(self.reward.weights),
            images=[image for _, image in pictures],
            seed=seed,
            prompts_source=self.eval_prompts_source if prompts == self.eval_prompts else "evaluate(prompts=...)",
        )

    def _eval_sample(self, prompts: list[str], generators: list[torch.Generator]) -> RolloutBatch:
        """Deterministic samples of the evaluation: one image per prompt, ODE only (no SDE window)."""
        return self._sample(prompts, generators, "an evaluation", num_generations=1, sde_window=(0, 0))

    def _log_eval(self) -> Optional[float]:
        self._phase("eval")
        if self.evaluation_hook is not None:
            scalars = dict(self.evaluation_hook(self))
            for name, value in scalars.items():
                self.history.setdefault(f"eval_{name}", []).append((self.global_step, float(value)))
            self.accelerator.log({f"eval/{k}": v for k, v in scalars.items()}, step=self.global_step)
            return scalars.get("reward")
        result = self.evaluate()
        if result is None:
            return None
        self.history.setdefault("eval_reward", []).append((self.global_step, result.reward))
        log_evaluation(self.accelerator, result, self.global_step)
        return result.reward

    # ------------------------------------------------------------------ checkpoints and resuming
    def _trainer_state(self) -> dict[str, Any]:
        """What a checkpoint holds besides what `accelerator.save_state` writes."""
        state = {
            "global_step": self.global_step,
            "window": self.window.state_dict(),
            "bad_group_streak": self.bad_group_streak,
            "history": {k: [list(p) for p in v] for k, v in self.history.items()},
            "config": self.config.to_dict(),
            "config_changes": list(self.config_changes),
            "prompts_sha256": prompts_fingerprint(self.train_prompts),
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def save_checkpoint(self) -> str:
        path = self.checkpoints.save(
            self.global_step, self.accelerator, self._trainer_state(), **self.backend.checkpoint_kwargs(load=False)
        )
        self.preemption.saved[self.global_step] = path
        return path

    def resume(self, resume_from_checkpoint: Optional[str]) -> bool:
        """Resume from `"latest"` or a checkpoint folder; returns whether a checkpoint was loaded.

        `"latest"` tries the complete checkpoints newest first: one whose files are missing, truncated or corrupt
        is named in a warning and the previous one is used. A checkpoint trained with other settings (see
        `resume.APPLIED_ON_RESUME`) or holding non-finite weights stops with `CheckpointError`."""
        return resume_latest_usable(
            self.checkpoints, resume_from_checkpoint, self.config.output_dir, self._resume_from
        )

    def _resume_from(self, path: str) -> None:
        """Load the checkpoint `path` (`run_state.load_checkpoint`) and continue from its step and state."""
        cfg = self.config
        state, changes = load_checkpoint(
            self.checkpoints,
            path,
            self.accelerator,
            cfg,
            self.train_prompts,
            self.pipeline.denoiser,
            self.backend.checkpoint_kwargs(load=True),
        )
        self.global_step = int(state["global_step"])
        self.window.load_state_dict(state["window"])
        self.bad_group_streak = int(state.get("bad_group_streak", 0))
        self.history = {k: [tuple(p) for p in v] for k, v in state.get("history", {}).items()}
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        self.config_changes = list(state.get("config_changes", []))
        if "learning_rate" in changes:
            set_learning_rate(self.optimizer, self.lr_scheduler, cfg.learning_rate)
        logger.info("Resuming from %s at step %d of %d.", path, self.global_step, cfg.max_train_steps)
        note_config_changes(self.config_changes, changes, self.global_step)

    def _check_stop(self, where: str) -> None:
        """A boundary of the run: raise `Preempted` on every rank when any rank received SIGTERM / SIGINT."""
        self.preemption.check(self.accelerator, where)

    # ------------------------------------------------------------------ the run
    def train(self) -> TrainOutput:
        """Run to `max_train_steps`: resume if asked, checkpoint, evaluate, log; save (and push) the result.

        SIGTERM / SIGINT during the run stop at the next boundary (a denoiser call, a trained micro-batch: see
        `interrupts.py`), rewind the unfinished iteration, write a complete checkpoint of the state at its start and
        return early (`TrainOutput.interrupted_by`, `TrainOutput.checkpoint`); a second signal stops at once."""
        cfg, acc = self.config, self.accelerator
        started = time.perf_counter()
        if acc.is_main_process:
            self.checkpoints.cleanup()  # leftovers of an interrupted save or prune
        acc.wait_for_everyone()
        if cfg.resume_from_checkpoint:
            self.resume(cfg.resume_from_checkpoint)
        elif self.checkpoints.latest() is not None:
            logger.warning(
                "%s already holds checkpoints (newest: %s); this run starts fresh (resume_from_checkpoint is unset) "
                "and replaces those of the same steps.",
                cfg.output_dir,
                os.path.basename(self.checkpoints.latest()),
            )
        start_step = self.global_step
        interrupted, checkpoint = None, None
        # logging_redirect_tqdm: a warning during the run gets a line of its own instead of being glued to the bar
        with GracefulInterrupt() as interrupt, logging_redirect_tqdm():
            self.preemption.interrupt = interrupt
            try:
                self._run_loop()
            except Preempted as stop:
                if self._bar is not None:
                    self._bar.close()
                    self._bar = None
                checkpoint = self.preemption.save_on_stop(
                    stop,
                    self.optimizer,
                    self.checkpoints,
                    self.save_checkpoint,
                    self.global_step,
                    cfg.max_train_steps,
                    acc.is_main_process,
                )
                interrupted = signal_name(stop.signum)
            finally:
                self.preemption.interrupt = None
        weights = None
        if interrupted is None:
            weights = self.save_model(cfg.output_dir)
            acc.wait_for_everyone()
            if cfg.push_to_hub and acc.is_main_process:
                self.push_to_hub()
        acc.end_training()
        summary = self._summarize(start_step, time.perf_counter() - started, weights, interrupted, checkpoint)
        return TrainOutput(self.global_step, dict(self.history), cfg.output_dir, summary, interrupted, checkpoint)

    def _run_loop(self) -> None:
        """`train()`'s steps: evaluations, logs and checkpoints; a stop signal raises `Preempted` at a boundary."""
        cfg, acc = self.config, self.accelerator
        if acc.is_main_process:
            write_run_config(cfg, self.train_prompts, self._prompts_given)
        init_trackers(acc, cfg, resuming=self.global_step > 0)
        evaluated = any(k.startswith("eval_") for k in self.history)  # a resume from checkpoint-0 has its eval
        if self.global_step == 0 and self.eval_prompts and cfg.validation_steps and not evaluated:
            self._log_eval()
        self._bar = bar = tqdm(
            total=cfg.max_train_steps,
            initial=self.global_step,
            desc="MixGRPO",
            disable=not acc.is_local_main_process,
        )
        while self.global_step < cfg.max_train_steps:
            logs = self.train_step()
            if self.global_step % cfg.logging_steps == 0:
                acc.log(logs, step=self.global_step)
            bar.update(1)
            bar.set_postfix(reward=f"{logs.get('reward/mean', float('nan')):.3f}", window=logs["window/start"])
            self._check_stop("the end of the step")
            if cfg.validation_steps and self.eval_prompts and self.global_step % cfg.validation_steps == 0:
                self._log_eval()
            if cfg.checkpointing_steps and self.global_step % cfg.checkpointing_steps == 0:
                self.save_checkpoint()
        bar.close()
        self._bar = None
        evals = self.history.get("eval_reward", [])
        if cfg.validation_steps and self.eval_prompts and (not evals or evals[-1][0] != self.global_step):
            self._log_eval()  # the summary's evaluation reward is that of the weights being saved

    def _summarize(self, start_step, seconds, weights, interrupted, checkpoint) -> RunSummary:
        summary = RunSummary.from_history(
            self.history,
            output_dir=self.config.output_dir,
            weights=weights,
            steps=self.global_step,
            max_train_steps=self.config.max_train_steps,
            seconds=seconds,
            interrupted_by=interrupted,
            checkpoint=checkpoint,
            config_changes=list(self.config_changes),
        )
        if self.accelerator.is_main_process:
            summary.report()
        return summary

    # ------------------------------------------------------------------ saving
    def save_model(self, output_dir: str) -> Optional[str]:
        """LoRA: the family's diffusers LoRA file (`pytorch_lora_weights.safetensors`, loadable by a stock pipeline's
        `load_lora_weights`); full fine-tune: the whole pipeline folder. Plus the reward curve and config. Returns
        the path of the weights (on the main process). A full disk raises `DiskFullError`."""
        acc = self.accelerator
        acc.wait_for_everyone()
        # every rank takes part in gathering sharded weights (rank 0 gets them)
        gathered = self.backend.full_state_dict(self.pipeline.denoiser, trainable_only=self.config.use_lora)
        if not acc.is_main_process:
            return None
        return export_final_model(
            output_dir, self.pipeline, acc, self.config, self.history, self.ema, self.trainable, gathered
        )

    def push_to_hub(self) -> str:
        """Model card + weights to `hub_model_id` (`export.push_run_to_hub`: what is uploaded, and what stays local)."""
        return push_run_to_hub(self.config, self.history)
