"""The evaluation protocol shared by the trainer's periodic evaluation and `examples/eval_rewards.py`.

An evaluation is a list of held-out prompts x `images_per_prompt` images. Image `j` of prompt `i` is one *work item*
with its own seed, `eval_seed(seed, i, j)`, so its initial noise depends on nothing else: not on the batch it is
generated in, not on the process that generates it, not on how many processes there are. The items are dealt to the
processes round-robin (`shard_items`, padded so that every process runs the same number of denoiser calls, which
FSDP / ZeRO-3 need), scored where they are generated, and the scores are gathered back into item order
(`gather_items`). `EvaluationResult` holds the gathered scores: per-reward means, the weighted reward, a per-prompt
table.

`EVAL_PRESETS` holds named protocols; `"mixgrpo-paper"` is the one of the MixGRPO paper's released evaluation (see
docs/rewards.md, "The MixGRPO paper's protocol").
"""

import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import ConfigError

logger = logging.getLogger(__name__)

#: Prompts of the evaluation whose images make the logged grid (one row per prompt).
VALIDATION_GRID_PROMPTS = 8

__all__ = [
    "EVAL_PRESETS",
    "EvalPreset",
    "EvaluationResult",
    "describe_protocol",
    "eval_items",
    "eval_seed",
    "evaluate_policy",
    "file_sha256",
    "gather_items",
    "get_eval_preset",
    "log_evaluation",
    "log_periodic_evaluation",
    "read_eval_prompt_file",
    "read_preset_prompts",
    "resolve_eval_prompts",
    "score_items",
    "shard_items",
]


def eval_seed(seed: int, prompt_index: int, image_index: int) -> int:
    """The seed of image `image_index` of prompt `prompt_index` (0-based, in the order of the prompt file): a 63-bit
    hash of the three numbers, so distinct (prompt, image) pairs get unrelated noise and the same pair always gets the
    same noise."""
    digest = hashlib.sha256(f"{int(seed)}:{int(prompt_index)}:{int(image_index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def eval_items(num_prompts: int, images_per_prompt: int) -> list[tuple[int, int]]:
    """The work items `(prompt index, image index)` in item order: item `k` is image `k % n` of prompt `k // n`."""
    return [(i, j) for i in range(num_prompts) for j in range(images_per_prompt)]


def shard_items(num_items: int, process_index: int, num_processes: int) -> list[Optional[int]]:
    """The item indices process `process_index` of `num_processes` evaluates: every `num_processes`-th item from its
    own index, padded with `None` to `ceil(num_items / num_processes)` entries, so every process makes the same number
    of denoiser calls (a `None` slot repeats a real item and its result is dropped)."""
    mine: list[Optional[int]] = list(range(process_index, num_items, num_processes))
    per_process = math.ceil(num_items / num_processes) if num_items else 0
    return mine + [None] * (per_process - len(mine))


def gather_items(local: Sequence[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """`(item index, value)` pairs of every process (accelerate's `gather_object`; the pairs themselves with one
    process), sorted by item index."""
    from accelerate.utils import gather_object

    return sorted(gather_object(list(local)), key=lambda pair: pair[0])


def read_eval_prompt_file(config: Any, eval_prompts: Optional[Sequence[str]]) -> Optional[list[str]]:
    """The prompts of `validation_prompt_file` when they are the evaluation's (no `eval_prompts`, no
    `validation_prompts`), else `None`; the trainer reads them before the model loads, so a bad file fails at once."""
    if eval_prompts is None and config.validation_prompts is None and config.validation_prompt_file:
        from .preflight import read_prompt_file

        return read_prompt_file(config.validation_prompt_file, "validation_prompt_file")
    return None


def resolve_eval_prompts(
    config: Any, eval_prompts: Optional[Sequence[str]], file_prompts: Optional[list[str]], train_prompts: list[str]
) -> tuple[list[str], str]:
    """The prompts of the trainer's periodic evaluation and where they come from: `eval_prompts`, else
    `validation_prompts`, else the prompts of `validation_prompt_file` (`file_prompts`), else the first
    `DEFAULT_NUM_VALIDATION_PROMPTS` training prompts, with a warning (that measures fit, not generalisation)."""
    from .run_arguments import DEFAULT_NUM_VALIDATION_PROMPTS

    if eval_prompts is not None:
        return list(eval_prompts), "eval_prompts"
    if config.validation_prompts is not None:
        return list(config.validation_prompts), "validation_prompts"
    if file_prompts is not None:
        return file_prompts, f"validation_prompt_file={config.validation_prompt_file}"
    prompts = train_prompts[:DEFAULT_NUM_VALIDATION_PROMPTS]
    if config.validation_steps:
        logger.warning(
            "Neither validation_prompts nor validation_prompt_file is set: the periodic evaluation scores "
            "the first %d training prompts, which measures fit, not generalisation. Set "
            "validation_prompt_file to a file of held-out prompts.",
            len(prompts),
        )
    return prompts, f"the first {len(prompts)} training prompts"


def score_items(
    sample: Callable[[list[str], list[Any]], Any],
    score: Callable[[Any], Mapping[str, Any]],
    prompts: Sequence[str],
    items: Sequence[tuple[int, int]],
    slots: Sequence[Optional[int]],
    seed: int,
    chunk: int,
    grid_prompts: int,
) -> tuple[list[tuple[int, dict[str, float]]], list[tuple[int, Any]]]:
    """This process's share of an evaluation (`slots` from `shard_items`), generated `chunk` items at a time:
    `(item, {reward: score})` pairs and `(item, image)` pairs of the first `grid_prompts` prompts.

    `sample(prompts, generators)` returns a rollout batch of one image per prompt (the generators seeded with
    `eval_seed`), `score(batch)` its `{reward name: (B,) scores}`. Padding slots repeat this process's first item (a
    process with no item of its own repeats item 0) and their results are dropped."""
    import torch

    real = [k for k in slots if k is not None]
    run = [k if k is not None else (real[0] if real else 0) for k in slots]
    scored, pictures = [], []
    for lo in range(0, len(run), chunk):
        keys, live = run[lo : lo + chunk], slots[lo : lo + chunk]
        generators = [torch.Generator().manual_seed(eval_seed(seed, *items[k])) for k in keys]
        batch = sample([prompts[items[k][0]] for k in keys], generators)
        scores = {name: v.detach().float().cpu() for name, v in score(batch).items()}
        images = None
        for row, k in enumerate(live):
            if k is None:
                continue
            scored.append((k, {name: float(v[row]) for name, v in scores.items()}))
            if items[k][0] < grid_prompts:
                images = images if images is not None else batch.pil_images()
                pictures.append((k, images[row]))
    return scored, pictures


def log_evaluation(accelerator: Any, result: "EvaluationResult", step: int) -> None:
    """`eval/reward` and the per-reward means to the trackers; on the main process also the per-prompt table and the
    image grid (one row per prompt)."""
    from .logging_utils import log_image_grid, log_table

    monitors = {f"eval/monitor/{k}": v for k, v in result.monitor_means.items()}
    accelerator.log(
        {"eval/reward": result.reward, **{f"eval/{k}": v for k, v in result.means.items()}, **monitors}, step=step
    )
    if not accelerator.is_main_process:
        return
    log_table(accelerator, "eval/per_prompt", result.table_columns(), result.table_rows(), step)
    if result.images:
        captions = result.item_prompts[: len(result.images)]
        log_image_grid(
            accelerator, result.images, step, tag="validation", captions=captions, cols=result.images_per_prompt
        )


def evaluate_policy(
    sample: Callable[[list[str], list[Any]], Any],
    score: Callable[[Any], Mapping[str, Any]],
    prompts: list[str],
    reward: Any,
    accelerator: Any,
    images_per_prompt: int,
    seed: int,
    chunk: int,
    grid_prompts: int,
    prompts_source: str,
    monitor_names: Sequence[str] = (),
) -> "EvaluationResult":
    """`GRPOTrainer.evaluate` on explicit arguments: `prompts` x `images_per_prompt` items split across the processes
    (`shard_items`), sampled with `sample` and scored with `score` (`score_items`, `chunk` items at a time), gathered
    (`gather_items`) into the same `EvaluationResult` on every process. `reward`: the run's `MultiReward` (its names
    and weights). `monitor_names`: monitor rewards, whose scores `score` returns as `"monitor/<name>"` (NaN where one
    failed); they go to `EvaluationResult.monitor_scores`, outside the weighted reward."""
    acc = accelerator
    items = eval_items(len(prompts), images_per_prompt)
    slots = shard_items(len(items), acc.process_index, acc.num_processes)
    scored, pictures = score_items(sample, score, prompts, items, slots, seed, chunk, grid_prompts)
    scored, pictures = gather_items(scored), gather_items(pictures)
    return EvaluationResult(
        prompts=prompts,
        images_per_prompt=images_per_prompt,
        seeds=[eval_seed(seed, i, j) for i, j in items],
        scores={name: [values[name] for _, values in scored] for name in reward.rewards},
        monitor_scores={name: [values[f"monitor/{name}"] for _, values in scored] for name in monitor_names},
        weights=dict(reward.weights),
        images=[image for _, image in pictures],
        seed=seed,
        prompts_source=prompts_source,
    )


def log_periodic_evaluation(
    evaluate: Callable[[], Optional["EvaluationResult"]],
    hook: Optional[Callable[[], Mapping[str, float]]],
    accelerator: Any,
    history: dict[str, list[tuple[int, float]]],
    step: int,
) -> Optional[float]:
    """One periodic evaluation of a run at `step`: the scalars of `hook()` when set (logged as `eval/<name>`, each
    appended to `history` as `eval_<name>`), else `evaluate()` (`eval_reward`, logged by `log_evaluation`). Returns
    the evaluation reward (`None` without one)."""
    if hook is not None:
        scalars = dict(hook())
        for name, value in scalars.items():
            history.setdefault(f"eval_{name}", []).append((step, float(value)))
        accelerator.log({f"eval/{k}": v for k, v in scalars.items()}, step=step)
        return scalars.get("reward")
    result = evaluate()
    if result is None:
        return None
    history.setdefault("eval_reward", []).append((step, result.reward))
    log_evaluation(accelerator, result, step)
    return result.reward


@dataclass
class EvaluationResult:
    """The gathered result of one evaluation, in item order (see the module docstring).

    Attributes:
        prompts (`list[str]`): the evaluated prompts.
        images_per_prompt (`int`): images per prompt.
        seeds (`list[int]`): the seed of each item, `eval_seed(seed, i, j)`.
        scores (`dict[str, list[float]]`): each reward's score of each item.
        weights (`dict[str, float]`): the weight of each reward in `reward`.
        images (`list`): the images of the first prompts (for the grid), in item order; may be empty.
        seed (`int`): the evaluation seed.
        prompts_source (`str`): where the prompts came from (`"validation_prompt_file=..."`, ...).
        monitor_scores (`dict[str, list[float]]`): each monitor reward's score of each item (NaN where it failed);
            not part of `reward`.
    """

    prompts: list[str]
    images_per_prompt: int
    seeds: list[int]
    scores: dict[str, list[float]]
    weights: dict[str, float] = field(default_factory=dict)
    images: list = field(default_factory=list)
    seed: int = 0
    prompts_source: str = ""
    monitor_scores: dict[str, list[float]] = field(default_factory=dict)

    @property
    def item_prompts(self) -> list[str]:
        """The prompt of each item (each prompt repeated `images_per_prompt` times)."""
        return [p for p in self.prompts for _ in range(self.images_per_prompt)]

    @property
    def means(self) -> dict[str, float]:
        """Each reward's mean over every image."""
        return {name: _mean(values) for name, values in self.scores.items()}

    @property
    def monitor_means(self) -> dict[str, float]:
        """Each monitor reward's mean over the images it scored (NaN when it scored none)."""
        return {name: _mean([v for v in values if math.isfinite(v)]) for name, values in self.monitor_scores.items()}

    @property
    def reward(self) -> float:
        """The weighted sum of the means (the mean of the weighted per-image reward); weight 1 for an unlisted
        reward."""
        return float(sum(self.weights.get(name, 1.0) * mean for name, mean in self.means.items()))

    def summary(self) -> dict[str, dict[str, float]]:
        """`{reward: {"mean", "sem", "std", "n"}}` over every image (`rewards.evaluation.summarize`)."""
        import torch

        from ..rewards.evaluation import summarize

        return summarize({name: torch.tensor(values, dtype=torch.float64) for name, values in self.scores.items()})

    def table_columns(self) -> list[str]:
        return ["prompt", *self.scores]

    def table_rows(self) -> list[list]:
        """One row per prompt: the prompt, then each reward's mean over its `images_per_prompt` images."""
        n = self.images_per_prompt
        return [
            [prompt, *(_mean(values[i * n : (i + 1) * n]) for values in self.scores.values())]
            for i, prompt in enumerate(self.prompts)
        ]


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if len(values) else math.nan


@dataclass(frozen=True)
class EvalPreset:
    """A named evaluation protocol: sampling settings, images per prompt, seed, rewards, and the prompt set (which
    is never shipped: `read_preset_prompts` names what to download)."""

    name: str
    description: str
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    max_sequence_length: Optional[int]
    images_per_prompt: int
    seed: int
    rewards: tuple[str, ...]
    prompts_name: str
    prompts_download: str
    prompts_sha256: Optional[str] = None
    num_prompts: Optional[int] = None
    notes: str = ""

    def sampling(self) -> dict[str, Any]:
        """The pipeline-call settings of the preset."""
        values = {
            "num_inference_steps": self.num_inference_steps,
            "height": self.height,
            "width": self.width,
            "guidance_scale": self.guidance_scale,
            "max_sequence_length": self.max_sequence_length,
        }
        return {k: v for k, v in values.items() if v is not None}


# The MixGRPO paper's evaluation as its code release runs it (Tencent-Hunyuan/MixGRPO): README "Run Inference" (the
# test set is the HPDv2 test prompts, data/prompts_test.txt, 400 lines), scripts/inference/inference_flux.sh (50
# sampling steps, seed 617) and fastvideo/sample/sample_flux.py (FLUX.1-dev, 1024 x 1024, guidance 3.5, 512 T5 tokens,
# the stock FLUX time grid, one image per prompt), scored by scripts/evaluate/eval_reward.sh (HPS-v2.1, ImageReward,
# PickScore, CLIP score and, with a server, UnifiedReward). Differences: the release seeds image i with
# 617 + i + 1000 * rank (so its images depend on the number of GPUs); here each image's seed is eval_seed(617, i, 0).
EVAL_PRESETS: dict[str, EvalPreset] = {
    "mixgrpo-paper": EvalPreset(
        name="mixgrpo-paper",
        description="MixGRPO paper (arXiv 2507.21802) evaluation: HPDv2 test prompts, FLUX.1-dev, 1024 px, 50 steps",
        num_inference_steps=50,
        guidance_scale=3.5,
        height=1024,
        width=1024,
        max_sequence_length=512,
        images_per_prompt=1,
        seed=617,
        rewards=("hpsv2.1", "pickscore", "imagereward"),
        prompts_name="the 400 HPDv2 test prompts",
        prompts_download=(
            "data/prompts_test.txt of https://github.com/Tencent-Hunyuan/MixGRPO (the HPDv2 test prompts, "
            "https://huggingface.co/datasets/ymhao/HPDv2)"
        ),
        prompts_sha256="6eb1c5561a58da305155ba00755822de4f8b0bc239175e20334e431e978f4a82",
        num_prompts=400,
        notes=(
            "The paper's tables also report UnifiedReward (add it with --rewards ... unifiedreward and its server's "
            "base_url); the release reports PickScore divided by 100."
        ),
    ),
}


def get_eval_preset(name: str) -> EvalPreset:
    """The preset called `name`; an unknown name fails with the known ones."""
    if name not in EVAL_PRESETS:
        raise ConfigError(f"Unknown evaluation preset {name!r}; known: {', '.join(sorted(EVAL_PRESETS))}.")
    return EVAL_PRESETS[name]


def read_preset_prompts(preset: EvalPreset, path: Optional[str], what: str = "--prompts") -> tuple[list[str], bool]:
    """The prompts of `preset` from `path`, and whether the file is the one the preset names (its SHA-256).

    No `path`: a `ConfigError` naming what to download. A file with other contents is read with a warning (the
    numbers are then not comparable with the paper's)."""
    from .preflight import read_prompt_file

    if not path:
        raise ConfigError(
            f"The evaluation preset {preset.name!r} runs on {preset.prompts_name}, which are not shipped with this "
            f"package: download {preset.prompts_download} and pass the file as {what}."
        )
    prompts = read_prompt_file(path, what)
    matches = preset.prompts_sha256 is None or file_sha256(path) == preset.prompts_sha256
    if not matches:
        logger.warning(
            "%s=%r is not the prompt file of the preset %r (%d prompts; expected %s, SHA-256 %s...): the scores are "
            "not comparable with the published ones.",
            what,
            path,
            preset.name,
            len(prompts),
            preset.prompts_name,
            preset.prompts_sha256[:12],
        )
    return prompts, matches


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def describe_protocol(
    sampling: Mapping[str, Any],
    images_per_prompt: int,
    seed: int,
    prompts_source: Mapping[str, Any],
    num_processes: int,
    preset: Optional[str] = None,
) -> dict[str, Any]:
    """The protocol block of an evaluation report (what another run needs to reproduce the numbers)."""
    return {
        "preset": preset,
        **dict(sampling),
        "images_per_prompt": int(images_per_prompt),
        "seed": int(seed),
        "seed_rule": "image j of prompt i starts from the noise of eval_seed(seed, i, j) "
        "(diffusers_mixgrpo.training.evaluation)",
        "prompts": dict(prompts_source),
        "num_processes": int(num_processes),
    }
