"""The run's health checks between iterations: how many steps in a row had non-finite rewards, took no optimiser step,
left every advantage at 0, or left most groups without reward spread, and when that stops the run (`TrainingStopped`)
or warns. (The warnings about settings and the first optimiser step are in `health_warnings.py`.)"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import torch

from .errors import TrainingStopped
from .setting_ranges import far_above

logger = logging.getLogger(__name__)

#: Training steps in a row whose rewards leave every advantage at 0 before the run warns.
CONSTANT_REWARD_WARN_STEPS = 3
#: The share of groups with zero reward spread (logged as `reward/zero_spread_groups`) above which a step counts
#: towards the zero-spread warning, and the steps in a row that trigger it (once per run).
ZERO_SPREAD_WARN_SHARE = 0.5
ZERO_SPREAD_WARN_STEPS = 5


def zero_spread_share(advantages: torch.Tensor, group_ids: torch.Tensor) -> float:
    """The share of the groups in `group_ids` whose advantages are all exactly 0: every member got the same reward
    (of every reward, with `advantage_aggr`), so the group adds nothing to the gradient. 0 without groups."""
    groups, inverse = torch.unique(group_ids, return_inverse=True)
    if not len(groups):
        return 0.0
    nonzero = torch.zeros(len(groups), dtype=torch.bool, device=advantages.device)
    nonzero.index_put_((inverse.to(advantages.device),), advantages != 0, accumulate=True)
    return float((~nonzero).float().mean())


def describe_checkpoint(path: Optional[str]) -> str:
    """The sentence that ends a stop message: where the last complete checkpoint is, or that there is none yet."""
    if path is None:
        return "No checkpoint has been written yet."
    return f"The last complete checkpoint is {path}."


@dataclass
class RunHealth:
    """The streak counters of a run (`bad_group_streak` is saved in checkpoints) and the rules that read them.

    Args:
        max_consecutive_bad_groups (`int`): steps in a row with dropped groups, or without an optimiser step, that
            stop the run.
        latest_checkpoint (`Callable[[], Optional[str]]`): the last complete checkpoint, named when the run stops.
        unusual (`list[str]`): the settings far above their usual range (`setting_ranges.unusual_settings`), named
            first in the advice when the run goes non-finite or learns nothing.
    """

    max_consecutive_bad_groups: int
    latest_checkpoint: Callable[[], Optional[str]]
    unusual: list[str] = field(default_factory=list)
    bad_group_streak: int = 0
    skipped_update_streak: int = 0
    constant_reward_streak: int = 0
    zero_spread_streak: int = 0
    zero_spread_low: float = 1.0  # the lowest share of the current zero-spread streak
    zero_spread_warned: bool = False

    def check_dropped_groups(self, step: int, dropped: int) -> None:
        """Warn when groups with non-finite rewards were dropped; stop after `max_consecutive_bad_groups` such steps."""
        if not dropped:
            self.bad_group_streak = 0
            return
        self.bad_group_streak += 1
        logger.warning("Step %d: %d samples in groups with non-finite rewards were dropped.", step, dropped)
        if self.bad_group_streak >= self.max_consecutive_bad_groups:
            raise TrainingStopped(
                f"{self.bad_group_streak} training steps in a row had non-finite rewards "
                f"(max_consecutive_bad_groups={self.max_consecutive_bad_groups}){self._suspects()}; stopping. "
                f"{describe_checkpoint(self.latest_checkpoint())}"
            )

    def check_update(
        self, step: int, any_kept: bool, stepped: bool, advantages_all_zero: bool, scores: dict[str, torch.Tensor]
    ) -> None:
        """Stop when no optimiser step was taken (`stepped` False) for `max_consecutive_bad_groups` steps in a row
        (non-finite losses or gradients: the LoRA would silently stay untrained); warn loudly when the rewards leave
        every advantage at 0 for `CONSTANT_REWARD_WARN_STEPS` steps in a row (nothing is learned). `scores`: the kept
        samples' scores."""
        if any_kept and not stepped:
            self.skipped_update_streak += 1
            if self.skipped_update_streak >= max(1, self.max_consecutive_bad_groups):
                described = ", ".join(
                    f"{k} mean {float(v.double().mean()):.3g} (max |r| {float(v.abs().max()):.3g})"
                    for k, v in scores.items()
                    if v.numel()
                )
                advice = (
                    f"Bring {' and '.join(self.unusual)} back into range"
                    if self.unusual
                    else "Lower the learning rate or rescale the reward"
                )
                raise TrainingStopped(
                    f"{self.skipped_update_streak} training steps in a row skipped every optimiser step (non-finite "
                    f"loss or gradients) up to step {step}; rewards: {described}. {advice}. "
                    f"{describe_checkpoint(self.latest_checkpoint())}"
                )
        elif any_kept:
            self.skipped_update_streak = 0
        if any_kept and advantages_all_zero:
            self.constant_reward_streak += 1
            if self.constant_reward_streak == CONSTANT_REWARD_WARN_STEPS:
                self._warn_constant_rewards(scores)
        elif any_kept:
            self.constant_reward_streak = 0

    def check_zero_spread(self, step: int, share: Optional[float]) -> None:
        """Warn once per run when more than `ZERO_SPREAD_WARN_SHARE` of the groups had zero reward spread for
        `ZERO_SPREAD_WARN_STEPS` steps in a row (`share`: this step's share of the kept groups; `None`: none kept)."""
        if share is None:
            return
        if share <= ZERO_SPREAD_WARN_SHARE:
            self.zero_spread_streak, self.zero_spread_low = 0, 1.0
            return
        self.zero_spread_streak += 1
        self.zero_spread_low = min(self.zero_spread_low, share)
        if self.zero_spread_streak >= ZERO_SPREAD_WARN_STEPS and not self.zero_spread_warned:
            self.zero_spread_warned = True
            logger.warning(
                "Up to step %d, for %d training steps in a row at least %.0f%% of the groups (%.0f%% at this step) had "
                "zero reward spread: every image of the group got the same reward, so its advantages are 0 and it "
                "teaches nothing (logged as reward/zero_spread_groups). Raise num_generations or the SDE noise (eta), "
                "use a reward with finer resolution, or use prompts the model neither always nor never gets right.",
                step,
                self.zero_spread_streak,
                100 * self.zero_spread_low,
                100 * share,
            )

    def _suspects(self) -> str:
        """`"; eta=1e+06 (usual 0.7 for sde_type='flow_grpo') is far above the usual range"`, or `""`."""
        return f"; {far_above(self.unusual)}" if self.unusual else ""

    def _warn_constant_rewards(self, scores: dict[str, torch.Tensor]) -> None:
        constant = {k: float(v[0]) for k, v in scores.items() if v.numel() and bool((v == v[0]).all())}
        what = (
            "every image got the same reward (" + ", ".join(f"{k}={v:.4g}" for k, v in constant.items()) + ")"
            if constant and len(constant) == len(scores)
            else "every image of each group got the same reward"
        )
        logger.warning(
            "!!! For %d training steps in a row %s, so every advantage is 0 and nothing is learned. %s",
            self.constant_reward_streak,
            what,
            f"Bring {' and '.join(self.unusual)} back into range first."
            if self.unusual
            else "Look at the samples (all black or identical? a prompt length the model was not trained with, see "
            "max_sequence_length) and at the reward.",
        )
