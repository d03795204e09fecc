"""Logging helpers for the trainer: accelerate trackers (tensorboard by default), sample-image grids, reward curves.

`resolve_report_to` gives the `log_with` argument of `Accelerator`; `init_trackers` starts the trackers with a config
safe to log (no secrets, no local paths, flat scalars); `tile_images` / `log_image_grid` log validation samples;
`log_table` logs the evaluation's per-prompt table; `step_logs` are the scalars of a training step
and `RunProgressBar` the run's progress bar; `plot_reward_curve` draws the reward curve used in the logs and in
the model card (`hub.py`). `setup_script_logging`
is the scripts' logging (this package at INFO, other libraries at WARNING), and `quiet_prompt_truncation` replaces the
pipelines' per-call "input was truncated" warnings (hundreds of `<pad>` tokens each) by one line per run.
"""

import importlib.util
import logging
import math
import os
from collections.abc import Mapping, Sequence
from importlib import import_module
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:  # numpy, torch and PIL load on first use: the scripts' `--help` imports this module
    from PIL import Image

__all__ = [
    "count_truncated_prompts",
    "init_trackers",
    "tracker_init_kwargs",
    "quiet_prompt_truncation",
    "announce_truncated_prompts",
    "setup_script_logging",
    "log_image_grid",
    "log_table",
    "markdown_table",
    "tile_images",
    "normalize_reward_history",
    "plot_reward_curve",
    "resolve_report_to",
    "RunProgressBar",
    "record_history",
    "step_logs",
    "tracker_config",
]

logger = logging.getLogger(__name__)

RewardHistory = Union[Sequence[float], Sequence[tuple[int, float]], Mapping[str, Sequence[Any]]]


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


#: The trackers `report_to` can name (accelerate's names): the modules any one of which provides it, and how to
#: install it. `resolve_report_to` reads it; adding a tracker starts here (and in `choices.REPORT_TO`).
TRACKER_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboard"),
    "wandb": (("wandb",), "pip install wandb"),
}


def _tracker_installed(name: str) -> bool:
    return any(_installed(module) for module in TRACKER_PACKAGES[name][0])


def _tracker_importable(name: str) -> bool:
    """Whether a module of tracker `name` imports: a package that is found but broken (or shadowed by a folder of
    the same name) fails here, before the model loads, not when the trackers start."""
    for module in TRACKER_PACKAGES[name][0]:
        if _installed(module):
            try:
                importlib.import_module(module)
                return True
            except Exception:  # ImportError, or whatever a broken install raises on import
                continue
    return False


def resolve_report_to(report_to: Optional[str]) -> Optional[list[str]]:
    """The `log_with` list for `Accelerator`, or `None` for no tracker.

    `None` (the config default): `["tensorboard"]` when tensorboard (or tensorboardX) is installed, else no tracker.
    `"none"`: no tracker. `"all"`: every installed tracker of `TRACKER_PACKAGES`. Otherwise a comma-separated list;
    a named tracker that is not installed is a `ConfigError` naming the package and the command that installs it
    (the command line checks this before the model loads, `preflight.check_run_inputs`).
    """
    from .errors import ConfigError

    if report_to is None:
        return ["tensorboard"] if _tracker_installed("tensorboard") else None
    names = [t.strip().lower() for t in str(report_to).split(",") if t.strip()]
    if not names or names == ["none"]:
        return None
    if "none" in names:
        raise ConfigError(f"report_to={report_to!r} mixes 'none' with trackers; use one or the other.")
    if names == ["all"]:
        found = [name for name in TRACKER_PACKAGES if _tracker_installed(name)]
        return found or None
    for name in names:
        if name not in TRACKER_PACKAGES:
            allowed = ", ".join([*TRACKER_PACKAGES, "all", "none"])
            raise ConfigError(f"report_to names {name!r}; allowed: {allowed}.")
        if not _tracker_importable(name):
            modules, install = TRACKER_PACKAGES[name]
            raise ConfigError(
                f"report_to={report_to!r} needs the {modules[0]} package, which is not installed (or does not "
                f"import); install it with "
                f"`{install}`, or set report_to to another tracker or 'none'."
            )
    return names


def tracker_config(config: Any) -> dict[str, Union[int, float, str, bool]]:
    """A flat dict of scalars to log as hyper-parameters (tensorboard's hparams accept no lists, dicts or None).

    `config` is a `GRPOConfig` or a mapping, reduced by `public_config_dict` (no token, no local paths: trackers such
    as wandb leave the machine). Lists and dicts are logged as strings, `None` as `"None"`.
    """
    from .public_config import public_config_dict

    values = public_config_dict(config)
    out: dict[str, Union[int, float, str, bool]] = {}
    for key, value in values.items():
        if "token" in key.lower():
            continue
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif value is None:
            out[key] = "None"
        else:
            out[key] = str(value)
    return out


WANDB_RUN_ID_FILE = "wandb_run_id.txt"


def tracker_init_kwargs(config: Any, log_with: Sequence[Any], resuming: bool = False) -> dict[str, dict]:
    """The `init_kwargs` of `accelerator.init_trackers`: for wandb a run name (`tracker_run_name`, else the name of
    `output_dir`) and a run id kept in `output_dir/wandb_run_id.txt`, with `resume="allow"`, so a resumed run logs
    into the same wandb run. A fresh run (`resuming=False`) gets a new id and writes it; a resumed one reads it
    (and writes a new one when the file is missing). Empty without wandb. Call on the main process (it writes)."""
    if not any(str(getattr(t, "value", t)).lower() in ("wandb", "all") for t in log_with or []):
        return {}
    import uuid

    output_dir = getattr(config, "output_dir", None) or "."
    path = os.path.join(output_dir, WANDB_RUN_ID_FILE)
    run_id = None
    if resuming and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            run_id = f.read().strip() or None
    if run_id is None:
        run_id = uuid.uuid4().hex[:16]
        os.makedirs(output_dir, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(run_id + "\n")
    name = getattr(config, "tracker_run_name", None) or os.path.basename(os.path.normpath(os.path.abspath(output_dir)))
    return {"wandb": {"name": name, "id": run_id, "resume": "allow"}}


def init_trackers(accelerator: Any, config: Any, project_name: Optional[str] = None, resuming: bool = False) -> None:
    """Start the trackers of `accelerator` (made with `log_with=resolve_report_to(config.report_to)`) on the main
    process, logging `tracker_config(config)` as hyper-parameters; wandb gets a run name and an id that a resumed run
    reuses (`tracker_init_kwargs`). Does nothing when there is no tracker."""
    if not getattr(accelerator, "log_with", None):
        return
    name = project_name or getattr(config, "tracker_project_name", None) or "mixgrpo"
    if accelerator.is_main_process:
        init_kwargs = tracker_init_kwargs(config, accelerator.log_with, resuming=resuming)
        accelerator.init_trackers(name, config=tracker_config(config), init_kwargs=init_kwargs)


def record_history(history: dict[str, list[tuple[int, float]]], step: int, logs: Mapping[str, float]) -> None:
    """Append step `step`'s curves to the run's `history` (kept in checkpoints, drawn in the summary and the model
    card): the training reward (`train_reward`) and each monitor reward (`monitor_<name>`, NaN steps left out)."""
    if "reward/mean" in logs:
        history.setdefault("train_reward", []).append((step, logs["reward/mean"]))
    for key, value in logs.items():
        if key.startswith("monitor/") and value == value:  # not NaN
            history.setdefault(f"monitor_{key[len('monitor/') :]}", []).append((step, value))


def step_logs(
    update_stats: Mapping[str, float],
    finite: Mapping[str, Any],
    weights: Mapping[str, float],
    per_reward: Mapping[str, Any],
    kept_advantages: Any,
    all_keep: Any,
    window: tuple[int, int],
    nfe: tuple[float, int],
    lr: float,
    times: Mapping[str, float],
    monitor: Optional[Mapping[str, Any]] = None,
) -> dict:
    """The scalars `GRPOTrainer.train_step` logs: update statistics, rewards (`finite`: the scores of the kept samples,
    mixed with `weights`; `reward/mean` and one `reward/<name>` per trained reward), advantages (`per_reward`,
    `kept_advantages`), the SDE window, the denoiser calls per image (`nfe`: rollout, training), the learning rate, the
    phases' seconds and the monitor rewards (`monitor`: `{name: scores of every sample}`, NaN where a monitor failed;
    `monitor/<name>` is the mean of the finite scores, NaN when there is none)."""
    logs = {f"train/{k}": v for k, v in update_stats.items()}
    for k, v in (monitor or {}).items():
        logs[f"monitor/{k}"] = float(v.float().nanmean()) if v.numel() else math.nan
    if all_keep.any():
        total = sum(weights[k] * finite[k] for k in finite)
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
            "nfe/rollout_per_image": nfe[0],
            "nfe/train_per_image": nfe[1],
            "data/dropped_samples": int((~all_keep).sum()),
            "lr": lr,
            **times,
        }
    )
    return logs


class RunProgressBar:
    """The progress bar of `GRPOTrainer.train` (tqdm, on the local main process): the steps, the current phase
    (rollout / reward / update / eval) and the last step's reward and window."""

    def __init__(self) -> None:
        self.bar = None

    def open(self, total: int, initial: int, disable: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="MixGRPO", disable=disable)

    def phase(self, name: str) -> None:
        """Show the current phase on the bar (nothing while no bar is open)."""
        if self.bar is not None:
            self.bar.set_description(f"MixGRPO [{name}]")

    def step(self, logs: Mapping[str, Any]) -> None:
        self.bar.update(1)
        self.bar.set_postfix(reward=f"{logs.get('reward/mean', float('nan')):.3f}", window=logs["window/start"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _to_pil(image: Any) -> "Image.Image":
    import numpy as np
    import torch
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)  # floats in [0, 1]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array).convert("RGB")


def tile_images(
    images: Sequence[Any],
    cols: Optional[int] = None,
    captions: Optional[Sequence[str]] = None,
    padding: int = 2,
    background: tuple[int, int, int] = (255, 255, 255),
) -> "Image.Image":
    """Tile images into one PIL image, row by row (with optional captions).

    Not `make_image_grid`: diffusers has a `diffusers.utils.make_image_grid(images, rows, cols, resize)` of another
    signature, which users of both libraries would otherwise confuse.

    Args:
        images: PIL images, `(C, H, W)`/`(H, W, C)` tensors or arrays (floats in [0, 1] or uint8). Cells take the
            largest width and height; smaller images are centred.
        cols (`int`, *optional*): images per row; default `ceil(sqrt(n))`. The last row may be incomplete.
        captions (`Sequence[str]`, *optional*): one short text per image, drawn under it.
        padding (`int`, defaults to 2): pixels between cells.
        background: fill colour.
    """
    from PIL import Image, ImageDraw

    pil = [_to_pil(im) for im in images]
    if not pil:
        raise ValueError("tile_images needs at least one image.")
    if captions is not None and len(captions) != len(pil):
        raise ValueError(f"Got {len(captions)} captions for {len(pil)} images.")
    n = len(pil)
    cols = max(1, min(cols or math.ceil(math.sqrt(n)), n))
    rows = math.ceil(n / cols)
    cell_w = max(im.width for im in pil)
    cell_h = max(im.height for im in pil)
    caption_h = 12 if captions is not None else 0
    grid = Image.new(
        "RGB",
        (cols * cell_w + (cols + 1) * padding, rows * (cell_h + caption_h) + (rows + 1) * padding),
        background,
    )
    draw = ImageDraw.Draw(grid) if captions is not None else None
    for i, im in enumerate(pil):
        r, c = divmod(i, cols)
        x = padding + c * (cell_w + padding)
        y = padding + r * (cell_h + caption_h + padding)
        grid.paste(im, (x + (cell_w - im.width) // 2, y + (cell_h - im.height) // 2))
        if draw is not None:
            max_chars = max(1, cell_w // 6)
            draw.text((x, y + cell_h), str(captions[i])[:max_chars], fill=(0, 0, 0))
    return grid


def log_image_grid(
    accelerator: Any,
    images: Sequence[Any],
    step: int,
    tag: str = "validation",
    captions: Optional[Sequence[str]] = None,
    cols: Optional[int] = None,
) -> "Image.Image":
    """Log `images` as one grid to every tracker of `accelerator` (tensorboard, wandb) and return the grid."""
    import numpy as np

    grid = tile_images(images, cols=cols, captions=captions)
    if not accelerator.is_main_process:
        return grid
    for tracker in getattr(accelerator, "trackers", []):
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, np.asarray(grid), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: [wandb.Image(grid)]}, step=step)
    return grid


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> str:
    """A Markdown table; floats with `digits` decimals, `|` in cells escaped."""

    def cell(value: Any) -> str:
        text = f"{value:.{digits}f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, columns)) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def log_table(accelerator: Any, tag: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> str:
    """Log a table to every tracker of `accelerator`: a `wandb.Table` for wandb, Markdown text for tensorboard (its
    text tab renders it). Returns the Markdown."""
    text = markdown_table(columns, rows)
    if not accelerator.is_main_process:
        return text
    for tracker in getattr(accelerator, "trackers", []):
        if tracker.name == "tensorboard":
            tracker.writer.add_text(tag, text, step)
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Table(columns=list(columns), data=[list(r) for r in rows])}, step=step)
    return text


def normalize_reward_history(history: RewardHistory) -> dict[str, tuple[list[int], list[float]]]:
    """Reward history in any of the accepted forms -> `{curve name: (steps, values)}`.

    Accepted: a sequence of values (steps 0, 1, ...), a sequence of `(step, value)` pairs, a mapping of curve name
    to either of those, or a mapping `{"step": [...], name: [...], ...}` of aligned columns.
    """
    if isinstance(history, Mapping):
        items = dict(history)
        steps = items.pop("step", None)
        out = {}
        for name, series in items.items():
            if steps is not None:
                out[str(name)] = ([int(s) for s in steps], [float(v) for v in series])
            else:
                out[str(name)] = normalize_reward_history(series)["reward"]
        return out
    series = list(history)
    if series and isinstance(series[0], (tuple, list)):
        return {"reward": ([int(s) for s, _ in series], [float(v) for _, v in series])}
    return {"reward": (list(range(len(series))), [float(v) for v in series])}


def plot_reward_curve(
    history: RewardHistory,
    path: Union[str, os.PathLike],
    title: str = "Reward during training",
    ylabel: str = "mean reward",
) -> str:
    """Draw the reward curve(s) of `history` (see `normalize_reward_history`) to a PNG at `path` (matplotlib's Agg
    renderer, no display needed); returns the path."""
    # The object-oriented API renders with Agg and never touches pyplot's global backend or a display.
    from matplotlib.figure import Figure

    curves = normalize_reward_history(history)
    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for name, (steps, values) in curves.items():
        ax.plot(steps, values, label=name, linewidth=1.5)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path)
    return path


# Messages of other libraries that say nothing actionable to a user of the scripts, or say it at every call.
_NOISE = (
    # every prompt-encoding call of a diffusers pipeline, with hundreds of `<pad>` tokens: said once per run instead
    "The following part of your input was truncated",
    # diffusers' `from_pipe` casting a model whose list of float32 modules is empty
    "that should be kept in float32: []",
    # transformers without torchvision: the PIL image processors are used, which is what the rewards expect
    "requires torchvision (not installed); falling back",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = str(record.getMessage())
        except Exception:
            return True
        return not any(text in message for text in _NOISE)


_NOISE_FILTER = _DropNoise()


def quiet_prompt_truncation() -> None:
    """Drop the library messages in `_NOISE` (the diffusers pipelines' per-call prompt-truncation warnings above all;
    the trainer says once per run how many prompts are truncated, see `count_truncated_prompts`). Idempotent; only
    those messages are affected. Imports diffusers' and transformers' logging modules."""
    loggers = [logging.getLogger(""), logging.getLogger("diffusers"), logging.getLogger("transformers")]
    for module in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            loggers.append(import_module(module)._get_library_root_logger())
        except Exception:
            pass
    for logger in loggers:
        for handler in logger.handlers:
            if _NOISE_FILTER not in handler.filters:
                handler.addFilter(_NOISE_FILTER)


def count_truncated_prompts(pipeline: Any, prompts: Sequence[str], max_sequence_length: Optional[int] = None):
    """`[(tokenizer name, limit, number of prompts over it, an example)]` for each tokenizer of `pipeline` that
    truncates some of `prompts`. CLIP-style tokenizers stop at their `model_max_length` (77); T5-style ones at
    `max_sequence_length` when given."""
    found = []
    for slot in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        tok = getattr(pipeline, slot, None)
        if tok is None:
            continue
        limit = int(min(getattr(tok, "model_max_length", 10**6) or 10**6, 10**6))
        encoder = getattr(pipeline, slot.replace("tokenizer", "text_encoder"), None)
        # T5, and the LLM encoders of Qwen-Image / FLUX.2 / Z-Image, are cut at the pipeline's max_sequence_length
        if max_sequence_length is not None and any(
            k in type(encoder).__name__.lower() for k in ("t5", "qwen", "mistral")
        ):
            limit = int(max_sequence_length)
        try:
            lengths = [len(ids) for ids in tok(list(prompts), add_special_tokens=True, verbose=False)["input_ids"]]
        except Exception:
            continue
        over = [p for p, n in zip(prompts, lengths) if n > limit]
        if over:
            found.append((slot, limit, len(over), over[0]))
    return found


def announce_truncated_prompts(pipeline: Any, prompts: Sequence[str]) -> None:
    """Say once per run, per text encoder, how many of `prompts` are longer than its limit and truncated (the
    pipelines would warn at every call, dumping `<pad>` tokens: `quiet_prompt_truncation` silences that)."""
    limit = pipeline.max_sequence_length or getattr(pipeline.family, "max_sequence_length", None)
    for slot, max_len, n, example in count_truncated_prompts(pipeline, prompts, limit):
        logger.warning(
            "%d of %d prompts are longer than the %d tokens of %s and are truncated (e.g. %r).",
            n,
            len(prompts),
            max_len,
            slot,
            example[:80],
        )


def setup_script_logging(level: int = logging.INFO) -> None:
    """Logging for the example scripts: this package's messages at `level`, every other library at WARNING (no
    per-checkpoint INFO lines from accelerate), one format."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("diffusers_mixgrpo").setLevel(level)
