"""Model card and Hub upload for a finished run: README.md with metadata, config, reward curve and loading code.

`write_model_card` fills a folder (the trainer's final output: LoRA weights saved with the pipeline's
`save_lora_weights`) with `README.md`, `reward_curve.png` and `training_config.yaml`; `push_folder_to_hub` creates the
repository and uploads the folder. The Hub token comes from huggingface_hub's usual places (`hf auth login`, the
`HF_TOKEN` environment variable) or the `token` argument, and is never written to the card, the config or a log:
`push_folder_to_hub` refuses to upload a folder whose files contain it. Neither the card nor the uploaded config holds
a local path (`public_config.public_config_dict`): the base model is named by its Hub id when it has one.
"""

import fnmatch
import logging
import os
from collections.abc import Sequence
from typing import Any, Optional, Union

from huggingface_hub import HfApi, ModelCardData, get_token

from ..pipelines.families.registry import FAMILIES
from .logging_utils import RewardHistory, normalize_reward_history, plot_reward_curve
from .public_config import base_model_hub_id, is_hub_id, public_config_dict

logger = logging.getLogger(__name__)

__all__ = ["push_folder_to_hub", "stage_upload_folder", "write_model_card", "DEFAULT_IGNORE_PATTERNS"]

MODEL_CARD_NAME = "README.md"
REWARD_CURVE_NAME = "reward_curve.png"
CONFIG_NAME = "training_config.yaml"
# Resumable checkpoints (and interrupted saves) stay local: they hold optimiser states and are large.
DEFAULT_IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", ".tmp-checkpoint-*", ".trash-checkpoint-*"]

METHOD_NAMES = {
    "mixgrpo": "MixGRPO",
    "flash": "MixGRPO-Flash",
    "flash_star": "MixGRPO-Flash*",
    "dancegrpo": "DanceGRPO",
}

METHOD_DESCRIPTIONS = {
    "mixgrpo": (
        "MixGRPO ([arXiv 2507.21802](https://arxiv.org/abs/2507.21802)) samples each rollout with an ODE solver "
        "everywhere except inside a short sliding window of SDE steps, and trains only on those window steps with "
        "the clipped GRPO objective. The window starts at the noise end and slides towards the data end during "
        "training."
    ),
    "flash": (
        "MixGRPO-Flash ([arXiv 2507.21802](https://arxiv.org/abs/2507.21802)): MixGRPO's sliding SDE window, with the "
        "ODE steps after the window compressed and solved by a second-order DPM-Solver++ to cut sampling cost."
    ),
    "flash_star": (
        "MixGRPO-Flash* ([arXiv 2507.21802](https://arxiv.org/abs/2507.21802)): MixGRPO-Flash with the SDE window "
        "frozen at the first steps and a stronger compression of the ODE steps after it."
    ),
    "dancegrpo": (
        "DanceGRPO ([arXiv 2505.07818](https://arxiv.org/abs/2505.07818)): every sampling step is an SDE step and a "
        "random subset of the steps is trained with the clipped GRPO objective."
    ),
}

# Licences of well-known base models (a LoRA inherits its base model's terms).
_KNOWN_LICENSES = [
    (
        "flux.1-dev",
        {
            "license": "other",
            "license_name": "flux-1-dev-non-commercial-license",
            "license_link": "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
        },
    ),
    ("flux.1-schnell", {"license": "apache-2.0"}),
    ("stable-diffusion-3", {"license": "other", "license_name": "stabilityai-ai-community"}),
    ("stable-diffusion-v1-5", {"license": "creativeml-openrail-m"}),
]

# The hyper-parameters shown in the card's table (the full config is in training_config.yaml).
_TABLE_FIELDS = [
    ("method", "method preset"),
    ("num_inference_steps", "sampling steps N"),
    ("height", "height"),
    ("width", "width"),
    ("shift", "time shift s"),
    ("guidance_scale", "guidance scale"),
    ("sde_type", "SDE"),
    ("eta", "noise level eta"),
    ("window_size", "window size K"),
    ("window_shift_interval", "shift interval tau"),
    ("window_stride", "window stride S"),
    ("window_strategy", "window strategy"),
    ("sde_steps", "SDE steps (instead of the window)"),
    ("num_sde_steps", "SDE steps drawn per iteration (instead of the window)"),
    ("sde_step_range", "range of the drawn SDE steps"),
    ("tail_solver", "ODE solver after the window"),
    ("tail_ratio", "tail compression r"),
    ("num_generations", "group size G"),
    ("clip_range", "clip range eps"),
    ("adv_clip_max", "advantage clip"),
    ("kl_type", "KL term"),
    ("kl_coeff", "KL coefficient"),
    ("rewards", "rewards (weights)"),
    ("reward_mix", "reward mixing"),
    ("learning_rate", "learning rate"),
    ("weight_decay", "weight decay"),
    ("max_grad_norm", "gradient clip"),
    ("train_batch_size", "training micro-batch"),
    ("gradient_accumulation_steps", "gradient accumulation"),
    ("max_train_steps", "training steps"),
    ("mixed_precision", "mixed precision"),
    ("use_lora", "LoRA"),
    ("lora_rank", "LoRA rank"),
    ("lora_alpha", "LoRA alpha"),
    ("seed", "seed"),
]


_is_hub_id = is_hub_id  # kept for callers of the old private name


def _license_for(base_model: Optional[str]) -> dict[str, str]:
    lowered = (base_model or "").lower()
    for key, meta in _KNOWN_LICENSES:
        if key in lowered:
            return dict(meta)
    return {"license": "other"}


def _config_value(config: Any, name: str) -> Any:
    if isinstance(config, dict):
        return config.get(name)
    return getattr(config, name, None)


def _config_dict(config: Any) -> dict[str, Any]:
    return public_config_dict(config)


def _format(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def write_model_card(
    folder: Union[str, os.PathLike],
    config: Any,
    base_model: Optional[str] = None,
    method: Optional[str] = None,
    reward_history: Optional[RewardHistory] = None,
    repo_id: Optional[str] = None,
    license: Optional[str] = None,
    tags: Sequence[str] = (),
    example_prompt: str = "a photo of an astronaut riding a horse on the moon",
    extra_text: Optional[str] = None,
) -> str:
    """Write `README.md` (and `reward_curve.png`, `training_config.yaml`) into `folder`; returns the card's path.

    Args:
        folder: the folder to upload (the trainer's final weights).
        config (`GRPOConfig` or `dict`): the run's config; saved to `training_config.yaml` without secrets and
            summarised in a table.
        base_model (`str`, *optional*): the base pipeline; defaults to `config.pretrained_model_name_or_path`. Named
            (metadata, text, loading code) only by its Hub id (`public_config.base_model_hub_id`: given, found in the
            Hugging Face cache path, or `config.hub_base_model`); a local path is never written.
        method (`str`, *optional*): `"mixgrpo"`, `"flash"`, `"flash_star"` or `"dancegrpo"`; defaults to
            `config.method`.
        reward_history (*optional*): rewards logged during training (any form `normalize_reward_history` accepts);
            plotted to `reward_curve.png`.
        repo_id (`str`, *optional*): the Hub repository, used in the loading snippet; defaults to
            `config.hub_model_id` or the folder name.
        license (`str`, *optional*): licence id for the metadata; defaults to the base model's known licence, else
            `"other"`.
        tags: extra metadata tags.
        example_prompt (`str`): prompt of the loading snippet.
        extra_text (`str`, *optional*): markdown appended to the card.
    """
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    base_model = base_model_hub_id(
        base_model or _config_value(config, "pretrained_model_name_or_path"), _config_value(config, "hub_base_model")
    )
    method = method or _config_value(config, "method") or "mixgrpo"
    use_lora = _config_value(config, "use_lora")
    use_lora = True if use_lora is None else bool(use_lora)
    repo_id = repo_id or _config_value(config, "hub_model_id") or os.path.basename(os.path.normpath(folder))
    method_name = METHOD_NAMES.get(method, method)

    # Metadata
    license_meta = {"license": license} if license else _license_for(base_model)
    family = _config_value(config, "model_family")
    spec = FAMILIES.get(family) if isinstance(family, str) else None
    is_video = spec is not None and spec.is_video
    task = "text-to-video" if is_video else "text-to-image"
    card_tags = [task, "diffusers", "diffusers-training", "mixgrpo", "grpo"]
    if use_lora:
        card_tags.append("lora")
    if method != "mixgrpo":
        card_tags.append(method.replace("_", "-"))
    if family:
        card_tags.append(family)
    card_tags += [t for t in tags if t not in card_tags]
    data = ModelCardData(
        base_model=base_model,
        library_name="diffusers",
        pipeline_tag=task,
        tags=card_tags,
        **license_meta,
    )

    # Files next to the card
    config_values = _config_dict(config)
    import yaml

    with open(os.path.join(folder, CONFIG_NAME), "w", encoding="utf-8") as f:
        yaml.safe_dump(config_values, f, sort_keys=False)
    curve_md = ""
    if reward_history is not None:
        curves = normalize_reward_history(reward_history)
        if any(values for _, values in curves.values()):
            plot_reward_curve(curves_to_history(curves), os.path.join(folder, REWARD_CURVE_NAME))
            lines = []
            for name, (steps, values) in curves.items():
                if values:
                    lines.append(
                        f"- `{name}`: {values[0]:.4g} at step {steps[0]} -> {values[-1]:.4g} at step {steps[-1]}"
                    )
            curve_md = "## Reward during training\n\n" + f"![reward curve]({REWARD_CURVE_NAME})\n\n" + "\n".join(lines)

    # Body
    unset_hidden = ("sde_steps", "num_sde_steps", "sde_step_range")  # shown only when they replace the window
    rows = [
        f"| {label} | {_format(config_values[name])} |"
        for name, label in _TABLE_FIELDS
        if name in config_values and not (name in unset_hidden and config_values[name] is None)
    ]
    table = "| hyper-parameter | value |\n| --- | --- |\n" + "\n".join(rows)
    steps = config_values.get("num_inference_steps", 25)
    guidance = config_values.get("guidance_scale", 3.5)
    base_for_code = base_model or "<Hub id or folder of the base model>"
    family_name = spec.display_name if spec is not None else family
    # the stock pipeline's guidance argument (Qwen-Image: `true_cfg_scale`, with CFG only when a negative prompt is set)
    guidance_arg = f"{spec.guidance_argument if spec is not None else 'guidance_scale'}={guidance}"
    if spec is not None and spec.default_negative_prompt is not None:
        guidance_arg += f', negative_prompt="{spec.default_negative_prompt}"'

    base_text = (
        f"[{base_model}](https://huggingface.co/{base_model})"
        if base_model
        else f"a {family_name} base model"
        if family_name
        else "its base model"
    )
    sample_code = (
        f'image = pipe("{example_prompt}", num_inference_steps={steps}, {guidance_arg}).images[0]\n'
        'image.save("sample.png")\n```'
    )
    if is_video:  # a video pipeline: `.frames`, written with diffusers' export_to_video
        frames = config_values.get("num_frames") or 81
        sample_code = (
            f'video = pipe("{example_prompt}", num_frames={frames}, num_inference_steps={steps}, '
            f"{guidance_arg}).frames[0]\n"
            'from diffusers.utils import export_to_video\n\nexport_to_video(video, "sample.mp4", fps=16)\n```'
        )
    if use_lora:
        load_code = (
            "```python\nimport torch\nfrom diffusers import DiffusionPipeline\n\n"
            f'pipe = DiffusionPipeline.from_pretrained("{base_for_code}", dtype=torch.bfloat16).to("cuda")\n'
            f'pipe.load_lora_weights("{repo_id}")\n' + sample_code
        )
        what = f"LoRA weights for {base_text}"
    else:
        load_code = (
            "```python\nimport torch\nfrom diffusers import DiffusionPipeline\n\n"
            f'pipe = DiffusionPipeline.from_pretrained("{repo_id}", dtype=torch.bfloat16).to("cuda")\n' + sample_code
        )
        what = f"A fine-tuned version of {base_text}"
    sections = [
        f"# {os.path.basename(repo_id)}",
        f"{what}, trained with {method_name} using the `diffusers-mixgrpo` library (GRPO for diffusers image models).",
        "## Method\n\n" + METHOD_DESCRIPTIONS.get(method, f"Trained with `{method}`."),
        "## Training configuration\n\n"
        + table
        + f"\n\nThe full configuration is in [`{CONFIG_NAME}`]({CONFIG_NAME}).",
    ]
    if curve_md:
        sections.append(curve_md)
    sections.append("## How to use\n\n" + load_code)
    if extra_text:
        sections.append(extra_text)
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"
    path = os.path.join(folder, MODEL_CARD_NAME)
    with open(path, "w", encoding="utf-8") as f:
        f.write(content)
    return path


#: Files of a run's output folder that describe the local run (paths, prompts) and are never uploaded as they are.
LOCAL_ONLY_FILES = ("training_config.yaml", "training_summary.json", "train_prompts.txt", MODEL_CARD_NAME)
STAGING_DIR = ".hub-upload"


def stage_upload_folder(output_dir: Union[str, os.PathLike]) -> str:
    """Fill `output_dir/.hub-upload` with what a push uploads from a run's folder: everything except resumable
    checkpoints (`DEFAULT_IGNORE_PATTERNS`) and `LOCAL_ONLY_FILES`, hard-linked (copied where links fail). The
    caller adds the model card and the public config (`write_model_card`) and deletes the folder afterwards."""
    import shutil

    output_dir = os.fspath(output_dir)
    staging = os.path.join(output_dir, STAGING_DIR)
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    for dirpath, dirnames, filenames in os.walk(output_dir):
        rel_dir = os.path.relpath(dirpath, output_dir).replace(os.sep, "/")
        dirnames[:] = [
            d
            for d in dirnames
            if d != STAGING_DIR or rel_dir != "."
            if not any(fnmatch.fnmatch(d if rel_dir == "." else f"{rel_dir}/{d}", p) for p in DEFAULT_IGNORE_PATTERNS)
        ]
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if (
                rel in LOCAL_ONLY_FILES
                or name.startswith(".")
                or any(fnmatch.fnmatch(rel, p) for p in DEFAULT_IGNORE_PATTERNS)
            ):
                continue
            target = os.path.join(staging, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                os.link(os.path.join(dirpath, name), target)
            except OSError:
                shutil.copy2(os.path.join(dirpath, name), target)
    return staging


def curves_to_history(curves: dict[str, tuple[list[int], list[float]]]) -> dict[str, list[tuple[int, float]]]:
    """Inverse of `normalize_reward_history`: `{name: [(step, value), ...]}`."""
    return {name: list(zip(steps, values)) for name, (steps, values) in curves.items()}


def _check_no_token(folder: str, token: str, ignore_patterns: Sequence[str], max_bytes: int = 5 * 2**20) -> None:
    needle = token.encode()
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            if any(fnmatch.fnmatch(rel, p) for p in ignore_patterns) or os.path.getsize(path) > max_bytes:
                continue
            with open(path, "rb") as f:
                if needle in f.read():
                    raise ValueError(f"{rel!r} in {folder!r} contains your Hub token; refusing to upload it.")


def push_folder_to_hub(
    folder: Union[str, os.PathLike],
    repo_id: str,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    commit_message: str = "Upload MixGRPO training result",
    ignore_patterns: Optional[Sequence[str]] = None,
) -> str:
    """Create the model repository `repo_id` (if needed) and upload `folder` to it; returns the repository URL.

    Args:
        folder: what to upload (weights, `README.md`, `training_config.yaml`, `reward_curve.png`, logs).
        repo_id (`str`): `"user/name"` or `"name"` (under your account).
        private (`bool`, *optional*): create the repository private; `None`: the Hub's default.
        token (`str`, *optional*): Hub token; `None`: huggingface_hub's usual mechanisms (`hf auth login`,
            `HF_TOKEN`). Used for the calls only; the upload is refused if a file of `folder` contains it.
        commit_message (`str`): message of the upload commit.
        ignore_patterns: glob patterns not to upload; default `DEFAULT_IGNORE_PATTERNS` (resumable checkpoints).
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"folder={folder!r} is not a directory.")
    patterns = list(DEFAULT_IGNORE_PATTERNS if ignore_patterns is None else ignore_patterns)
    effective_token = token or get_token()
    if effective_token:
        _check_no_token(folder, effective_token, patterns)
    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    full_id = repo_url.repo_id if isinstance(getattr(repo_url, "repo_id", None), str) else repo_id
    api.upload_folder(
        repo_id=full_id,
        folder_path=folder,
        repo_type="model",
        commit_message=commit_message,
        ignore_patterns=patterns,
    )
    logger.info("Uploaded %s to https://huggingface.co/%s", folder, full_id)
    return f"https://huggingface.co/{full_id}"
