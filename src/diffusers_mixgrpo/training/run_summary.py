"""The end-of-run summary: where the weights are, the reward at the start and end, the best one, the evaluation reward,
steps and time. Logged by the trainer when a run ends (or is stopped) and written to `training_summary.json`; part of
the `TrainOutput` that `GRPOTrainer.train` returns (`finish_run`)."""

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

__all__ = ["RunSummary", "SUMMARY_FILE", "TrainOutput", "finish_run"]

logger = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"
_WINDOW = 10  # training rewards are noisy: "first" and "final" are means over up to this many steps


def _mean(values: list[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass
class RunSummary:
    """What a finished (or stopped) run reports. Reward fields are `None` when nothing was logged."""

    output_dir: str
    weights: Optional[str]
    steps: int
    max_train_steps: int
    seconds: float
    first_reward: Optional[float] = None
    final_reward: Optional[float] = None
    best_reward: Optional[float] = None
    best_reward_step: Optional[int] = None
    eval_reward: Optional[float] = None
    eval_reward_step: Optional[int] = None
    best_eval_reward: Optional[float] = None
    best_eval_reward_step: Optional[int] = None
    interrupted_by: Optional[str] = None
    checkpoint: Optional[str] = None
    config_changes: list[dict[str, Any]] = field(default_factory=list)
    reward_window: int = _WINDOW

    @classmethod
    def from_history(
        cls, history: dict[str, list[tuple[int, float]]], start_step: int = 0, **fields: Any
    ) -> "RunSummary":
        """Build it from the trainer's reward history (`train_reward`, `eval_reward`: `[(step, value)]`)."""
        train = [(s, v) for s, v in history.get("train_reward", []) if math.isfinite(v)]
        evals = [(s, v) for s, v in history.get("eval_reward", []) if math.isfinite(v)]
        out = cls(**fields)
        if train:
            values = [v for _, v in train]
            out.reward_window = max(1, min(_WINDOW, len(values) // 2))
            out.first_reward = _mean(values[: out.reward_window])
            out.final_reward = _mean(values[-out.reward_window :])
            out.best_reward_step, out.best_reward = max(train, key=lambda p: p[1])
        if evals:
            out.eval_reward_step, out.eval_reward = evals[-1]
            out.best_eval_reward_step, out.best_eval_reward = max(evals, key=lambda p: p[1])
        return out

    def lines(self) -> list[str]:
        """The summary as a few human-readable lines."""
        if self.interrupted_by:
            head = f"Stopped by {self.interrupted_by} at step {self.steps} of {self.max_train_steps}"
        else:
            head = f"Training finished: {self.steps} of {self.max_train_steps} steps"
        out = [f"{head} in {_duration(self.seconds)}."]
        if self.checkpoint:
            out.append(f"  checkpoint:   {self.checkpoint}")
        if self.weights:
            out.append(f"  weights:      {self.weights}")
        if self.final_reward is not None:
            out.append(
                f"  train reward: {self.first_reward:.4g} (mean of the first {self.reward_window} steps) -> "
                f"{self.final_reward:.4g} (last {self.reward_window}); best step {self.best_reward:.4g} at step "
                f"{self.best_reward_step}"
            )
        if self.eval_reward is not None:
            out.append(
                f"  eval reward:  {self.eval_reward:.4g} at step {self.eval_reward_step} (best "
                f"{self.best_eval_reward:.4g} at step {self.best_eval_reward_step})"
            )
        for change in self.config_changes:
            applied = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in change["changes"].items())
            out.append(f"  changed on resume at step {change['step']}: {applied}")
        return out

    def report(self) -> None:
        """Log the summary's lines and write it next to the weights (a failed write is a warning, not an error)."""
        for line in self.lines():
            logger.info(line)
        try:
            self.write()
        except OSError as err:
            logger.warning("Could not write the run summary: %s", err)

    def write(self, path: Optional[str] = None) -> str:
        """Write the summary as JSON (default: `output_dir/training_summary.json`); returns the path."""
        path = path or os.path.join(self.output_dir, SUMMARY_FILE)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=2)
            f.write("\n")
        return path


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


def finish_run(
    history: dict[str, list[tuple[int, float]]],
    config: Any,
    steps: int,
    seconds: float,
    weights: Optional[str],
    interrupted_by: Optional[str],
    checkpoint: Optional[str],
    config_changes: list[dict[str, Any]],
    report: bool,
) -> TrainOutput:
    """The `TrainOutput` of a run that ended (or was stopped) at step `steps` after `seconds`, with its `RunSummary`;
    `report`: log the summary and write `training_summary.json` (the main process)."""
    summary = RunSummary.from_history(
        history,
        output_dir=config.output_dir,
        weights=weights,
        steps=steps,
        max_train_steps=config.max_train_steps,
        seconds=seconds,
        interrupted_by=interrupted_by,
        checkpoint=checkpoint,
        config_changes=list(config_changes),
    )
    if report:
        summary.report()
    return TrainOutput(steps, dict(history), config.output_dir, summary, interrupted_by, checkpoint)
