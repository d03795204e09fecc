"""`GRPOTrainer`: the MixGRPO training loop (rollout -> rewards -> advantages -> clipped GRPO update) on accelerate.

This module holds the algorithm; the infrastructure it runs on lives in modules named for it: `model_setup.py` (the
model, optimiser and learning-rate schedule made ready to train), `reward_runner.py` (building and calling the
rewards), `backends.py` (what differs between DDP, FSDP2 and DeepSpeed), `export.py` (checkpoint and final weight
formats), `run_state.py` (the recorded config, resuming, the pre-emption bookkeeping) and `evaluation.py`."""

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any, Optional, Union

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.contrib.logging import logging_redirect_tqdm

from ..pipelines.pipeline_grpo import GRPOTrainingPipeline
from ..pipelines.prompt_cache import PromptEmbedsCache, cached_rows
from ..pipelines.rollout_batch import RolloutBatch
from .advantages import compute_advantages, finite_group_mask
from .backends import all_ranks, make_backend
from .base_model import base_model_record
from .checkpointing import CheckpointManager
from .config import GRPOConfig
from .consistency import RatioCheck
from .distributed import FSDP2Options
from .errors import TrainingStopped
from .evaluation import (
    VALIDATION_GRID_PROMPTS,
    EvaluationResult,
    evaluate_policy,
    log_periodic_evaluation,
    read_eval_prompt_file,
    resolve_eval_prompts,
)
from .export import export_final_model, push_failure, push_run_to_hub
from .health import RunHealth, zero_spread_share
from .health_warnings import GradientWarning, warn_on_settings
from .interrupts import GracefulInterrupt, Preempted, signal_name
from .iteration_plan import (
    draw_train_steps,
    micro_batches,
    num_train_steps,
    prompt_generators,
    prompt_indices,
    step_pieces,
)
from .logging_utils import (
    RunProgressBar,
    announce_truncated_prompts,
    init_trackers,
    quiet_prompt_truncation,
    record_history,
    step_logs,
)
from .losses import grpo_loss, guard_loss_kwargs
from .model_setup import (
    apply_model_defaults,
    apply_tf32,
    autocast_dtype,
    build_accelerator,
    check_family_settings,
    load_training_pipeline,
    prepare_model,
    reference_policy,
    resolve_fsdp2,
    rollout_settings,
    setup_frozen_modules,
)
from .preflight import check_hub_push, check_reward_device_available, load_train_prompts
from .reward_runner import RewardRunner, RewardSpec, build_monitor_rewards, build_rewards
from .run_state import (
    Preemption,
    apply_trainer_state,
    load_checkpoint,
    record_run_inputs,
    resume_latest_usable,
    resume_or_start_fresh,
    trainer_state,
    write_run_config,
)
from .run_summary import TrainOutput, finish_run
from .setting_ranges import unusual_settings
from .step_selection import build_step_schedule

logger = logging.getLogger(__name__)

__all__ = ["GRPOTrainer", "TrainOutput", "TrainingStopped", "apply_tf32", "load_training_pipeline"]


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
        monitor_rewards (list, mapping or `MultiReward`, *optional*): rewards scored and logged (`monitor/<name>`,
            `eval/monitor/<name>`) but never trained on: names or callables; default: `config.monitor_rewards`.
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
        monitor_rewards: Optional[Union[RewardSpec, Sequence[Union[str, Callable]]]] = None,
    ):
        self.config = config
        self.overlap_rewards = config.overlap_rewards if overlap_rewards is None else bool(overlap_rewards)
        self.accelerator = accelerator or build_accelerator(config)
        set_seed(config.seed)
        apply_tf32(config.allow_tf32, self.accelerator.device)
        warn_on_settings(config, self.accelerator, fsdp2)  # LoRA update size, fp16 loss scaling (health_warnings.py)
        check_reward_device_available(config.reward_device)  # before FLUX loads, not after
        check_hub_push(config)  # push_to_hub: repo id, token, not offline; before the run, not after it
        file_prompts = read_eval_prompt_file(config, eval_prompts)  # before the model loads
        self.pipeline = pipeline if pipeline is not None else load_training_pipeline(config)
        self.pipeline.set_progress_bar_config(disable=True)
        check_family_settings(config, self.pipeline)  # what SD1.5 / SDXL refuse (eta > 1, ratio_norm)
        apply_model_defaults(config, self.pipeline)
        self._prompts_given = train_prompts is not None
        self.train_prompts = load_train_prompts(train_prompts, config.prompt_file)
        self.eval_prompts, self.eval_prompts_source = resolve_eval_prompts(
            config, eval_prompts, file_prompts, self.train_prompts
        )
        self.reward = build_rewards(rewards, config, self.reward_device)
        self.monitor = build_monitor_rewards(monitor_rewards, config, self.reward_device)
        self.config = record_run_inputs(config, self.pipeline, self.reward.weights, eval_prompts, self._prompts_given)
        self.window = build_step_schedule(config)  # the sliding window, or sde_steps / num_sde_steps
        self.checkpoints = CheckpointManager(config.output_dir, config.checkpoints_total_limit)
        self.reward_runner = RewardRunner(
            self.reward, self.accelerator.device, self.config.reward_timeout, self.checkpoints.latest, self.monitor
        )
        self.health = RunHealth(config.max_consecutive_bad_groups, self.checkpoints.latest, unusual_settings(config))
        self.ratio_check = RatioCheck.from_config(config, self.accelerator.device)
        self.gradient_warning = GradientWarning(config.adam_epsilon, getattr(self.accelerator, "scaler", None))
        self.global_step = 0
        self.config_changes: list[dict[str, Any]] = []
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.preemption = Preemption()
        self._base_model: Optional[dict[str, Any]] = None  # `base_model.base_model_record`, at the first save
        self._setup_model(resolve_fsdp2(config, fsdp2))
        all_prompts = list(dict.fromkeys(self.train_prompts + self.eval_prompts))
        self.prompt_cache: Optional[PromptEmbedsCache] = setup_frozen_modules(
            self.config, self.accelerator, self.pipeline, all_prompts
        )
        quiet_prompt_truncation()
        if self.accelerator.is_main_process:
            announce_truncated_prompts(self.pipeline, all_prompts)
        self.progress = RunProgressBar()
        # Replaces the periodic evaluation when set: called with the trainer every `validation_steps` (and before
        # the first step), returns scalars logged as `eval/<name>`; its "reward" is the `eval_reward` curve. The
        # toy task uses it to score held-out prompts with held-out noise (`toy_world.evaluation`).
        self.evaluation_hook: Optional[Callable[[GRPOTrainer], Mapping[str, float]]] = None

    # ------------------------------------------------------------------ setup
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

    # ------------------------------------------------------------------ data (`iteration_plan.py`)
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
        return self.pipeline.rollout(
            prompts,
            prompt_embeds=cached_rows(self.prompt_cache, prompts),
            generator=generators,
            step_callback=lambda: self._check_stop(where),
            **kwargs,
            **rollout_settings(self.config, self.pipeline),
        )

    def _rollout(self, step: int, piece: Optional[slice] = None) -> RolloutBatch:
        """The rollout of step `step` (this process's prompts; `piece`: a slice of them, e.g. one chunk's)."""
        cfg = self.config
        positions = list(range(cfg.sample_prompts_per_device))[piece or slice(None)]
        acc, n = self.accelerator, len(self.train_prompts)
        indices = prompt_indices(
            step, cfg.seed, n, cfg.sample_prompts_per_device, acc.num_processes, acc.process_index
        )
        prompts = [self.train_prompts[indices[j]] for j in positions]
        slots = [self._global_slot_offset() + j for j in positions]
        return self._sample(
            prompts,
            prompt_generators(cfg.seed, step, slots),
            "its rollout",
            num_generations=cfg.num_generations,
            sde_steps=self.window.indices(),
            share_prefix=cfg.sample_share_prefix,
            same_initial_noise=cfg.sample_same_noise,
            record_means=cfg.ratio_norm,
        )

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
        self._zero_spread = zero_spread_share(adv[keep], all_groups[keep]) if keep.any() else None
        n_local = batch.batch_size
        lo = acc.process_index * n_local  # every process rolls out the same number of samples
        return adv[lo : lo + n_local], keep[lo : lo + n_local], all_scores, keep, per_reward

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
        elements = batch.latents[0, 0].numel() if cfg.log_prob_reduction == "sum" else 1
        self.ratio_check.begin(step, elements)  # checked in the first accumulation group that runs (consistency.py)
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
                    self.gradient_warning.check(self.trainable)  # once, at the run's first step (before clipping)
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
        autocast = autocast_dtype(self.config.mixed_precision)
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
                    self.ratio_check.observe(out.policy.ratio_min, out.policy.ratio_max)
                    loss = out.loss * (weight * len(sub) / len(idx))
                    finite_loss = bool(torch.isfinite(loss))
                    if not finite_loss:
                        # The backward still runs (the other ranks wait for this rank's gradients); the group's
                        # optimiser step is skipped on every rank. DeepSpeed skips it itself on non-finite
                        # gradients, so a non-finite loss must give non-finite gradients.
                        non_finite += 1
                        loss = loss * float("nan")
                    if boundary and (deviation := self.ratio_check.finish(self.accelerator)) is not None:
                        stats["ratio_check_deviation"] = [deviation]  # before the group's parameter change
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
            with torch.no_grad(), reference_policy(pipe.denoiser):
                _, ref_mean, _ = pipe.log_prob(batch, t, idx, autocast_dtype=autocast, return_stats=True)
        guard = guard_loss_kwargs(pipe, batch, t, idx, mean.device, cfg.log_prob_reduction) if cfg.ratio_norm else {}
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
            **guard,
        )

    def _rollout_and_score(self, step: int, times: dict[str, float]) -> tuple[RolloutBatch, dict[str, torch.Tensor]]:
        """This process's rollout of step `step` and its scores (with `overlap_rewards`, each chunk scored while the
        next is denoised); the phases' seconds go into `times`."""
        cfg = self.config
        t0 = time.perf_counter()
        self.progress.phase("rollout")
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
        self.progress.phase("reward")
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
        if self.monitor is not None:  # rewards logged, never trained on (`monitor_rewards`)
            self.progress.phase("monitor")
        monitor = self.reward_runner.gathered_monitor_scores(batch, self.global_step, self.accelerator, times)
        self._check_stop("its rewards")
        advantages, keep, all_scores, all_keep, per_reward = self._advantages(batch, scores)
        self.health.check_dropped_groups(step, int((~all_keep).sum()))
        t0 = time.perf_counter()
        self.progress.phase("update")
        # `all_keep` (gathered) and not this rank's `keep`: a rank whose groups were all dropped still takes part in
        # the update while another rank trains, or that rank would wait for it in the gradient reduction forever.
        update_stats = self._update(batch, advantages, all_keep, step) if all_keep.any() else {"optimizer_steps": 0}
        times["time/update"] = time.perf_counter() - t0
        finite = {k: v[all_keep] for k, v in all_scores.items()}
        stepped = "grad_norm" in update_stats
        self.health.check_update(step, bool(all_keep.any()), stepped, self._all_advantages_zero, finite)
        self.health.check_zero_spread(step, self._zero_spread)
        self.window.step()
        self.global_step += 1
        self.preemption.end_iteration()
        cfg = self.config
        nfe_train = num_train_steps(len(batch.step_indices), cfg.train_timestep_fraction) * cfg.num_inner_epochs
        nfe, lr = (batch.nfe / batch.batch_size, nfe_train), self.lr_scheduler.get_last_lr()[0]
        logs = step_logs(
            update_stats, finite, self.reward.weights, per_reward, advantages[keep], all_keep, window, nfe, lr, times,
            monitor,
        )  # fmt: skip
        if self._zero_spread is not None:
            logs["reward/zero_spread_groups"] = self._zero_spread
        record_history(self.history, self.global_step, logs)
        return logs

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
        chunk = cfg.sample_max_batch_size or cfg.rollouts_per_device
        source = self.eval_prompts_source if prompts == self.eval_prompts else "evaluate(prompts=...)"
        with self.ema.average_parameters(self.trainable) if self.ema is not None else nullcontext():
            return evaluate_policy(
                self._eval_sample, self._eval_score, prompts, self.reward, acc, n, seed, chunk, grid_prompts, source,
                self.reward_runner.monitor_names,
            )  # fmt: skip

    def _eval_score(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """The evaluation's scores of `batch`: every training reward, and each monitor as `"monitor/<name>"`."""
        monitors = self.reward_runner.score_monitors(batch, self.global_step)
        return {**self._score(batch), **{f"monitor/{k}": v for k, v in monitors.items()}}

    def _eval_sample(self, prompts: list[str], generators: list[torch.Generator]) -> RolloutBatch:
        """Deterministic samples of the evaluation: one image per prompt, ODE only (no SDE window)."""
        return self._sample(prompts, generators, "an evaluation", num_generations=1, sde_window=(0, 0))

    def _log_eval(self) -> Optional[float]:
        """The periodic evaluation (`evaluation.log_periodic_evaluation`): `evaluation_hook`, else `evaluate()`."""
        self.progress.phase("eval")
        hook = None if self.evaluation_hook is None else (lambda: self.evaluation_hook(self))
        return log_periodic_evaluation(self.evaluate, hook, self.accelerator, self.history, self.global_step)

    # ------------------------------------------------------------------ checkpoints and resuming
    def save_checkpoint(self) -> str:
        cfg, step, history = self.config, self.global_step, self.history
        if self._base_model is None:  # the base model's fingerprint: hashed at the first save, not at every one
            self._base_model = base_model_record(cfg)
        state = trainer_state(
            step, self.window, self.bad_group_streak, history, cfg, self.config_changes, self.train_prompts, self.ema,
            self._base_model,
        )  # fmt: skip
        path = self.checkpoints.save(step, self.accelerator, state, **self.backend.checkpoint_kwargs(load=False))
        self.preemption.saved[step] = path
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
        """Load the checkpoint `path` (`run_state.load_checkpoint`) and continue from its step and state
        (`run_state.apply_trainer_state`)."""
        cfg, acc, denoiser = self.config, self.accelerator, self.pipeline.denoiser
        load_kwargs = self.backend.checkpoint_kwargs(load=True)
        state, changes = load_checkpoint(self.checkpoints, path, acc, cfg, self.train_prompts, denoiser, load_kwargs)
        self.global_step, self.history, self.config_changes = apply_trainer_state(
            state, changes, path, cfg, self.window, self.health, self.ema, self.optimizer, self.lr_scheduler
        )

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
        resume_or_start_fresh(self.checkpoints, acc, cfg, self.resume)
        interrupted, checkpoint = None, None
        # logging_redirect_tqdm: a warning during the run gets a line of its own instead of being glued to the bar
        with GracefulInterrupt() as interrupt, logging_redirect_tqdm():
            self.preemption.interrupt = interrupt
            try:
                self._run_loop()
            except Preempted as stop:
                self.progress.close()
                checkpoint = self.preemption.save_on_stop(
                    stop, self.optimizer, self.checkpoints, self.save_checkpoint, self.global_step,
                    cfg.max_train_steps, acc.is_main_process,
                )  # fmt: skip
                interrupted = signal_name(stop.signum)
            finally:
                self.preemption.interrupt = None
                self.progress.close()  # an error's one line starts on a line of its own, not after the bar
        weights, push_error = None, None
        if interrupted is None:
            weights = self.save_model(cfg.output_dir)
            acc.wait_for_everyone()
            if cfg.push_to_hub and acc.is_main_process:
                push_error = push_failure(self.push_to_hub, cfg)  # raised after the summary is written
        acc.end_training()
        seconds, changes = time.perf_counter() - started, self.config_changes
        output = finish_run(
            self.history,
            cfg,
            self.global_step,
            seconds,
            weights,
            interrupted,
            checkpoint,
            changes,
            acc.is_main_process,
        )
        if push_error is not None:
            raise push_error
        return output

    def _run_loop(self) -> None:
        """`train()`'s steps: evaluations, logs and checkpoints; a stop signal raises `Preempted` at a boundary."""
        cfg, acc = self.config, self.accelerator
        if acc.is_main_process:
            write_run_config(cfg, self.train_prompts, self._prompts_given)
        init_trackers(acc, cfg, resuming=self.global_step > 0)
        evaluated = any(k.startswith("eval_") for k in self.history)  # a resume from checkpoint-0 has its eval
        if self.global_step == 0 and self.eval_prompts and cfg.validation_steps and not evaluated:
            self._log_eval()
        self.progress.open(cfg.max_train_steps, self.global_step, disable=not acc.is_local_main_process)
        while self.global_step < cfg.max_train_steps:
            logs = self.train_step()
            if self.global_step % cfg.logging_steps == 0:
                acc.log(logs, step=self.global_step)
            self.progress.step(logs)
            self._check_stop("the end of the step")
            if cfg.validation_steps and self.eval_prompts and self.global_step % cfg.validation_steps == 0:
                self._log_eval()
            if cfg.checkpointing_steps and self.global_step % cfg.checkpointing_steps == 0:
                self.save_checkpoint()
        self.progress.close()
        evals = self.history.get("eval_reward", [])
        if cfg.validation_steps and self.eval_prompts and (not evals or evals[-1][0] != self.global_step):
            self._log_eval()  # the summary's evaluation reward is that of the weights being saved

    # ------------------------------------------------------------------ saving
    def save_model(self, output_dir: str) -> Optional[str]:
        """LoRA: the family's diffusers LoRA file (`pytorch_lora_weights.safetensors`, loadable by a stock pipeline's
        `load_lora_weights`); full fine-tune: the whole pipeline folder. Plus the reward curve and config. Returns
        the path of the weights (on the main process). A full disk raises `DiskFullError`."""
        pipe, acc = self.pipeline, self.accelerator
        return export_final_model(
            output_dir, pipe, acc, self.backend, self.config, self.history, self.ema, self.trainable
        )

    def push_to_hub(self) -> str:
        """Model card + weights to `hub_model_id` (`export.push_run_to_hub`: what is uploaded, and what stays local)."""
        return push_run_to_hub(self.config, self.history)
