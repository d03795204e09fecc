"""The README's main command: MixGRPO LoRA training of the toy FLUX base model on the offline toy task.

    mixgrpo-toy-demo [--method mixgrpo|flash|flash_star|dancegrpo] [--output_dir DIR] [--steps N]
    python examples/toy_world_demo.py ...  (the same command)

Runs the real `GRPOTrainer` on `GRPOTrainingPipeline` (no separate code path): it trains on training prompts and
measures, before and after, on held-out prompts (object combinations that neither the base model's data nor the
GRPO prompts contain) sampled from held-out noise (`toy_world.evaluation`). Writes the LoRA, `reward_curve.png`
(held-out reward and accuracy vs training step), `before_after.png` (held-out prompts, same noise: base model on
top, aligned model below), `summary.json`, and prints a one-line summary.
"""

import argparse
import json
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from ..pipelines.pipeline_grpo import GRPOTrainingPipeline
from ..training.config import GRPOConfig
from ..training.logging_utils import tile_images
from ..training.presets import METHODS
from ..training.trainer import GRPOTrainer
from .base_model import (
    TOY_GUIDANCE_SCALE,
    TOY_IMAGE_SIZE,
    TOY_MAX_SEQUENCE_LENGTH,
    TOY_NUM_INFERENCE_STEPS,
)
from .base_weights import load_toy_base_pipeline
from .evaluation import (
    HELDOUT_NOISE_SEED,
    TRAIN_EVAL_NOISE_SEED,
    evaluate_alignment,
    heldout_eval_prompts,
    paired_gain,
    train_eval_prompts,
)
from .world import train_prompts

# Demo hyper-parameters: the paper's method presets, scaled to a 10-step, 32 px task that learns in minutes on a CPU.
DEMO_DEFAULTS = dict(
    num_inference_steps=TOY_NUM_INFERENCE_STEPS,
    resolution=TOY_IMAGE_SIZE,
    guidance_scale=TOY_GUIDANCE_SCALE,
    shift=None,  # the base model's own grid (FLUX dynamic shifting at 64 tokens, s = exp(mu) = 1.6), as it was trained
    num_generations=8,
    sample_prompts_per_device=4,
    sample_max_batch_size=32,
    window_size=3,
    window_shift_interval=25,
    window_max_start=4,
    learning_rate=1e-3,
    weight_decay=1e-4,
    max_grad_norm=1.0,
    lora_rank=8,
    lora_alpha=8,
    gradient_accumulation_steps=1,
    adv_clip_max=5.0,
    validation_steps=25,
    checkpointing_steps=0,
    logging_steps=1,
)
DEMO_STEPS = 300
NUM_TRAIN_PROMPTS = 1024  # drawn from the training pool (`train_prompts(1024, seed=0)`)
EVAL_IMAGES_PER_PROMPT = 16  # before / after: 32 held-out prompts x 16 = 512 images (gain SE ~0.019)
CURVE_IMAGES_PER_PROMPT = 4  # the periodic held-out points of the curve (cheaper, noisier)
#: The reward the demo trains on: the toy preference score (prompt following x contrast, `toy_world.preference`).
DEMO_REWARD = "toy_preference"
#: What the evaluation reports for each reward the demo can train on (the field of `ToyAlignmentScores`).
_METRIC_OF_REWARD = {"toy_preference": "preference", "toy_world": "reward", "toy_contrast": "contrast"}


@dataclass
class DemoResult:
    """Held-out and training-prompt scores before and after, the gain of the trained reward with its standard
    error, wall time, and where the files are.

    `gain` / `gain_se` are the held-out gain of the trained reward (`reward_name`) and the standard error of that
    evaluation (paired: the same prompts and noise before and after; prompts as the independent units, see
    `toy_world.evaluation.paired_gain`); `accuracy_gain_se` likewise for the accuracy monitor.
    """

    method: str
    reward_name: str
    heldout_before: dict[str, Any]
    heldout_after: dict[str, Any]
    train_before: dict[str, Any]
    train_after: dict[str, Any]
    train_seconds: float
    steps: int
    output_dir: str
    gain: float = float("nan")
    gain_se: float = float("nan")
    accuracy_gain_se: float = float("nan")
    curve: list[dict[str, float]] = field(default_factory=list)

    @property
    def metric(self) -> str:
        """The `ToyAlignmentScores` field of the trained reward."""
        return _METRIC_OF_REWARD[self.reward_name]

    @property
    def accuracy_gain(self) -> float:
        return self.heldout_after["accuracy"] - self.heldout_before["accuracy"]

    @property
    def reward_gain(self) -> float:
        """Held-out gain of the toy-world (prompt-following) reward."""
        return self.heldout_after["reward"] - self.heldout_before["reward"]

    def summary(self) -> str:
        b, a, m = self.heldout_before, self.heldout_after, self.metric
        return (
            f"[{self.method}] held-out {self.reward_name} {b[m]:.3f} -> {a[m]:.3f} "
            f"(gain {self.gain:+.3f}, SE {self.gain_se:.3f}: {self.gain / self.gain_se:.0f} SE); accuracy "
            f"{b['accuracy']:.2f} -> {a['accuracy']:.2f} (monitor) after {self.steps} steps in "
            f"{self.train_seconds:.0f} s; results in {self.output_dir}"
        )


def make_demo_config(method: str, output_dir: str, steps: int, seed: int, **overrides) -> GRPOConfig:
    """The demo's `GRPOConfig` for a method (DanceGRPO: every step SDE, 60% of them trained)."""
    values = {**DEMO_DEFAULTS, **overrides}
    if method == "dancegrpo":
        values["window_size"] = None  # every trainable step
        values.pop("window_max_start", None)
    values.setdefault("report_to", "tensorboard" if _has("tensorboard") else "none")
    values.setdefault("overwrite_output_dir", True)  # the demo replaces its own earlier results (see --output_dir)
    return GRPOConfig(method=method, output_dir=output_dir, max_train_steps=steps, seed=seed, **values)


def _has(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is not None


def build_toy_trainer(
    method: str,
    output_dir: str,
    steps: int,
    seed: int,
    prompts: Optional[Sequence[str]] = None,
    pipeline: Optional[GRPOTrainingPipeline] = None,
    eval_images_per_prompt: int = CURVE_IMAGES_PER_PROMPT,
    reward: str = DEMO_REWARD,
    **config_overrides,
) -> GRPOTrainer:
    """A `GRPOTrainer` on the toy base model, trained on `reward` (a registered reward name), whose periodic
    evaluation scores the held-out set (prompts and noise never used in training) and logs `eval/preference`,
    `eval/accuracy` and `eval/reward`."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not allowed; choose one of {', '.join(METHODS)}.")
    if reward not in _METRIC_OF_REWARD:
        raise ValueError(f"reward={reward!r} is not allowed; choose one of {', '.join(_METRIC_OF_REWARD)}.")
    os.makedirs(output_dir, exist_ok=True)
    config = make_demo_config(method, output_dir, steps, seed, **config_overrides)
    pipe = pipeline if pipeline is not None else GRPOTrainingPipeline.from_pipe(load_toy_base_pipeline())
    pipe.max_sequence_length = TOY_MAX_SEQUENCE_LENGTH
    train = list(prompts) if prompts is not None else train_prompts(NUM_TRAIN_PROMPTS, seed=0)
    heldout = heldout_eval_prompts()
    trainer = GRPOTrainer(config, pipe, rewards={reward: 1.0}, train_prompts=train, eval_prompts=heldout)

    def heldout_scores(t: GRPOTrainer) -> dict[str, float]:
        scores, _ = _evaluate(t, heldout, HELDOUT_NOISE_SEED, eval_images_per_prompt)
        return {name: getattr(scores, name) for name in _CURVE_METRICS}

    trainer.evaluation_hook = heldout_scores
    return trainer


def _evaluate(trainer: GRPOTrainer, prompts, noise_seed: int, images_per_prompt: int = EVAL_IMAGES_PER_PROMPT):
    """The held-out evaluation of the trainer's current weights (the EMA weights when EMA is on, as saved)."""
    cfg = trainer.config
    ema = trainer.ema.average_parameters(trainer.trainable) if trainer.ema is not None else nullcontext()
    with ema:
        return evaluate_alignment(
            trainer.pipeline,
            prompts,
            images_per_prompt=images_per_prompt,
            noise_seed=noise_seed,
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale,
            resolution=cfg.resolution,
        )


def run_demo(
    method: str = "mixgrpo",
    output_dir: str = "mixgrpo-toy-demo",
    steps: int = DEMO_STEPS,
    seed: int = 0,
    prompts: Optional[Sequence[str]] = None,
    progress: bool = True,
    reward: str = DEMO_REWARD,
    **config_overrides,
) -> DemoResult:
    """Train on training prompts with `reward`; evaluate before/after on held-out prompts with held-out noise (and on
    training prompts with fresh noise); write the plots and `summary.json`; returns a `DemoResult`."""
    trainer = build_toy_trainer(method, output_dir, steps, seed, prompts, reward=reward, **config_overrides)
    if not progress:
        os.environ.setdefault("TQDM_DISABLE", "1")
    heldout, seen = heldout_eval_prompts(), train_eval_prompts()

    heldout_before, before_batch = _evaluate(trainer, heldout, HELDOUT_NOISE_SEED)
    train_before, _ = _evaluate(trainer, seen, TRAIN_EVAL_NOISE_SEED)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    heldout_after, after_batch = _evaluate(trainer, heldout, HELDOUT_NOISE_SEED)
    train_after, _ = _evaluate(trainer, seen, TRAIN_EVAL_NOISE_SEED)

    curve = _heldout_curve(trainer.history, heldout_before, heldout_after, trainer.global_step)
    plot_heldout_curve(
        curve,
        trainer.history.get("train_reward", []),
        os.path.join(output_dir, "reward_curve.png"),
        reward_name=reward,
    )
    before_after_grid(before_batch, after_batch, os.path.join(output_dir, "before_after.png"))
    metric = _METRIC_OF_REWARD[reward]
    gain, gain_se = paired_gain(heldout_before, heldout_after, metric)
    _, accuracy_gain_se = paired_gain(heldout_before, heldout_after, "correct")
    result = DemoResult(
        method,
        reward,
        heldout_before.to_dict(),
        heldout_after.to_dict(),
        train_before.to_dict(),
        train_after.to_dict(),
        seconds,
        trainer.global_step,
        output_dir,
        gain,
        gain_se,
        accuracy_gain_se,
        curve,
    )
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(
            {**asdict(result), "accuracy_gain": result.accuracy_gain, "reward_gain": result.reward_gain}, f, indent=2
        )
    return result


#: The held-out scores the demo's curve follows (fields of `ToyAlignmentScores`).
_CURVE_METRICS = ("preference", "accuracy", "reward")


def _heldout_curve(history, before, after, last_step: int) -> list[dict[str, float]]:
    """Held-out preference, accuracy and toy-world reward per evaluated step, step 0 and the last step included."""
    points = {}
    for name in _CURVE_METRICS:
        for step, value in history.get(f"eval_{name}", []):
            points.setdefault(int(step), {})[name] = value
    # the first and last points are the before / after evaluations (more images than the periodic ones)
    points[0] = {name: getattr(before, name) for name in _CURVE_METRICS}
    points[last_step] = {name: getattr(after, name) for name in _CURVE_METRICS}
    return [{"step": s, **v} for s, v in sorted(points.items()) if len(v) == len(_CURVE_METRICS)]


def plot_heldout_curve(curve, train_reward, path: str, reward_name: str = DEMO_REWARD) -> str:
    """The trained reward on the held-out set, the prompt-following monitors, and the training (rollout) reward with
    its running mean, against training step."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.8), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    steps = [p["step"] for p in curve]
    trained = _METRIC_OF_REWARD[reward_name]
    labels = {"preference": "toy_preference", "accuracy": "accuracy (monitor)", "reward": "toy_world (monitor)"}
    styles = {"preference": ("D-", "tab:green"), "accuracy": ("o-", "tab:blue"), "reward": ("s-", "tab:orange")}
    for name in _CURVE_METRICS:
        marker, color = styles[name]
        label = f"held-out {labels[name]}" + (", trained" if name == trained else "")
        ax.plot(
            steps, [p[name] for p in curve], marker, label=label, color=color, linewidth=2 if name == trained else 1
        )
    if train_reward:
        s, v = (np.asarray(a, dtype=float) for a in zip(*train_reward))
        ax.plot(s, v, color="grey", alpha=0.3, linewidth=0.8, label=f"training reward ({reward_name}, rollouts)")
        k = max(1, min(20, len(v) // 10))
        if len(v) >= k:
            mean = np.convolve(v, np.ones(k) / k, mode="valid")
            ax.plot(s[k - 1 :], mean, color="black", linewidth=1.2, label=f"training reward, mean of {k}")
    ax.set_xlabel("training step")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    ax.set_title("Held-out prompts and noise (ODE samples); training reward (SDE rollouts)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def before_after_grid(before, after, path: str, max_prompts: int = 8, scale: int = 4) -> None:
    """The first sample of the first `max_prompts` held-out prompts (4 single-, 4 two-object), base model on top,
    aligned model below (same prompts, same initial noise), with the prompts printed under the images."""
    from PIL import Image, ImageDraw

    per = before.batch_size // len(set(before.prompts)) if before.batch_size else 1
    firsts = list(range(0, before.batch_size, per))
    singles = [i for i in firsts if " and " not in before.prompts[i]][: max_prompts // 2]
    pairs = [i for i in firsts if " and " in before.prompts[i]][: max_prompts - len(singles)]
    idx = singles + pairs
    size = 32 * scale
    row = [before.pil_images()[i].resize((size, size), resample=0) for i in idx]
    row += [after.pil_images()[i].resize((size, size), resample=0) for i in idx]
    grid = tile_images(row, cols=len(idx))
    label_h, pad = 58, 2
    out = Image.new("RGB", (grid.width + 60, grid.height + label_h), (255, 255, 255))
    out.paste(grid, (60, 0))
    draw = ImageDraw.Draw(out)
    draw.text((4, size // 2), "before", fill=(0, 0, 0))
    draw.text((4, size + pad + size // 2), "after", fill=(0, 0, 0))
    for k, i in enumerate(idx):
        words = before.prompts[i].split()
        lines = [" ".join(words[j : j + 3]) for j in range(0, len(words), 3)]  # up to 5 lines of 3 words
        x = 60 + pad + k * (size + pad)
        for n, line in enumerate(lines):
            draw.text((x, grid.height + 1 + 11 * n), line, fill=(0, 0, 0))
    out.save(path)


def main(argv: Optional[Sequence[str]] = None) -> DemoResult:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="mixgrpo", choices=METHODS)
    parser.add_argument(
        "--output_dir",
        default="mixgrpo-toy-demo",
        help="Where the results go; a demo run replaces those of an earlier demo run in the same folder.",
    )
    parser.add_argument("--steps", type=int, default=DEMO_STEPS, help="GRPO iterations.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reward",
        default=DEMO_REWARD,
        choices=list(_METRIC_OF_REWARD),
        help="Reward to train on (toy_contrast alone is the unguarded aesthetic of the reward-hacking comparison).",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    result = run_demo(args.method, args.output_dir, args.steps, args.seed, reward=args.reward)
    print(result.summary())
    return result
