"""The evaluation command (`mixgrpo-eval`, `examples/eval_rewards.py`): generate images with a diffusers pipeline
(optionally + LoRA) for a prompt file and report every reward's mean and standard error, as a table and as JSON.

    mixgrpo-eval --model black-forest-labs/FLUX.1-dev --lora ./my_lora \
        --prompts prompts.txt --rewards hpsv2.1 pickscore imagereward --num-images-per-prompt 4 \
        --steps 25 --height 720 --width 720 --guidance-scale 3.5 --device cuda --dtype bfloat16 --output-json eval.json

    accelerate launch --num_processes 8 examples/eval_rewards.py --preset mixgrpo-paper \
        --model black-forest-labs/FLUX.1-dev --lora ./my_lora --prompts prompts_test.txt --output-json eval.json

The protocol is that of the trainer's evaluation (`diffusers_mixgrpo.training.evaluation`): image j of prompt i starts
from the noise of its own seed, `eval_seed(--seed, i, j)`, so the images and scores are the same whatever the batch
size and the number of processes. Under `accelerate launch` the prompt x image items are split across the processes
and the scores gathered; the main process prints the table and writes the JSON, whose `protocol` block records the
steps, guidance, size, seed rule, images per prompt and the prompt file (path, SHA-256). `--preset mixgrpo-paper` sets
the MixGRPO paper's protocol (docs/rewards.md); flags given explicitly win over it.

Steps, size, guidance and prompt length default to the preset, else the model folder's `sampling_defaults.json` when it
has one (the toy-world base model does), else to the pipeline's defaults (25 steps). Reward options: `--reward-option
name.option=value` (repeatable, e.g. `hpsv2.1.checkpoint=/models/HPS_v2.1_compressed.pt`,
`unifiedreward.base_url=http://127.0.0.1:8000/v1`) or `--reward-kwargs` as JSON.
"""

import argparse
import inspect
import json
import math
import os
import sys

__all__ = ["evaluate", "main", "parse_args"]

DESCRIPTION = (
    "Generate images with a diffusers pipeline (optionally + LoRA) for a prompt file and report every reward's mean "
    "and standard error, as a table and as JSON."
)
DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_REWARDS = ("hpsv2.1", "pickscore", "imagereward")


def _epilog() -> str:
    from ..rewards import available_rewards
    from .evaluation import EVAL_PRESETS

    presets = "; ".join(f"{name}: {p.description}" for name, p in EVAL_PRESETS.items())
    return "rewards: " + ", ".join(available_rewards()) + ".\npresets: " + presets + "."


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=DESCRIPTION, epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="Pipeline Hub id or local directory (DiffusionPipeline).")
    p.add_argument("--lora", default=None, help="LoRA weights (directory or file) loaded with load_lora_weights.")
    p.add_argument("--prompts", default=None, help="Text file, one prompt per line (blank lines ignored).")
    p.add_argument(
        "--preset",
        default=None,
        help="A named evaluation protocol (steps, size, guidance, images per prompt, seed, rewards); flags win.",
    )
    p.add_argument(
        "--rewards",
        nargs="+",
        default=None,
        help=f"Reward names (default: the preset's, else {' '.join(DEFAULT_REWARDS)}).",
    )
    p.add_argument("--reward-kwargs", default="{}", help="JSON: {reward name: {option: value}}.")
    p.add_argument(
        "--reward-option",
        action="append",
        default=[],
        metavar="NAME.OPTION=VALUE",
        help="One reward option (repeatable), e.g. unifiedreward.timeout=30; wins over --reward-kwargs.",
    )
    p.add_argument(
        "--num-images-per-prompt", type=int, default=None, help="Images per prompt (default: the preset's, else 1)."
    )
    p.add_argument("--batch-size", type=int, default=4, help="Images per pipeline call, per process.")
    p.add_argument("--steps", type=int, default=None, help="Sampling steps (default: the model's, else 25).")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument(
        "--max-sequence-length", type=int, default=None, help="T5 prompt tokens (FLUX, SD3); default: the model's."
    )
    p.add_argument(
        "--seed", type=int, default=None, help="Seed of the evaluation noise (default: the preset's, else 0)."
    )
    p.add_argument("--device", default=None, help="Default: this process's accelerate device (cuda when available).")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="Default: bfloat16 on cuda, else float32.")
    p.add_argument("--output-json", default=None, help="Write the summary (and per-image scores) here.")
    p.add_argument("--save-images", default=None, help="Directory to save the generated images as PNG.")
    return p.parse_args(argv)


def _reward_options(args):
    from .errors import ConfigError
    from .reward_spec import parse_reward_kwargs

    try:
        options = json.loads(args.reward_kwargs)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--reward-kwargs {args.reward_kwargs!r} is not valid JSON ({err.msg}).") from None
    options = parse_reward_kwargs(options) or {}
    for name, values in (parse_reward_kwargs(args.reward_option) or {}).items():
        options.setdefault(name, {}).update(values)
    extra = sorted(set(options) - set(args.rewards))
    if extra:
        raise ConfigError(f"Reward options are given for {extra}, which are not among --rewards {args.rewards}.")
    return options


def _sampling(args, preset=None) -> dict:
    """Pipeline call arguments: the flags, else the preset's, else the model folder's sampling defaults, else 25
    steps."""
    from .model_defaults import read_sampling_defaults

    defaults = read_sampling_defaults(args.model)
    size = defaults.get("resolution")
    if preset is not None:
        defaults = {**defaults, **preset.sampling()}
        size = None
    call = {
        "num_inference_steps": args.steps or defaults.get("num_inference_steps") or 25,
        "height": args.height or defaults.get("height") or size,
        "width": args.width or defaults.get("width") or size,
        "guidance_scale": args.guidance_scale if args.guidance_scale is not None else defaults.get("guidance_scale"),
        "max_sequence_length": args.max_sequence_length or defaults.get("max_sequence_length"),
    }
    return {k: v for k, v in call.items() if v is not None}


def _check_lora(lora):
    """A LoRA given as a local path must exist and hold a weights file; a Hub id is left to load_lora_weights."""
    from .errors import ModelLoadError
    from .preflight import _HUB_ID

    if os.path.isdir(lora):
        if os.path.isfile(os.path.join(lora, "checkpoint_complete.json")):
            raise ModelLoadError(
                f"--lora {lora!r} is a resumable training checkpoint (its adapter is not in the diffusers LoRA "
                "format); pass the run's output folder once it has finished (pytorch_lora_weights.safetensors)."
            )
        if not any(f.endswith((".safetensors", ".bin")) for f in os.listdir(lora)):
            raise ModelLoadError(
                f"--lora {lora!r} holds no LoRA weights (no .safetensors or .bin file); pass the output folder of a "
                "finished run (pytorch_lora_weights.safetensors) or the file itself."
            )
    elif not os.path.exists(lora) and (not _HUB_ID.match(lora) or lora.startswith((".", "~"))):
        raise ModelLoadError(f"--lora {lora!r} does not exist (no such file or folder, and it is not a Hub id).")


def _check_outputs(args):
    """--output-json and --save-images can be written, checked before any image is generated."""
    from .errors import ConfigError
    from .preflight import check_output_dir

    if args.output_json:
        if os.path.isdir(args.output_json):
            raise ConfigError(f"--output-json {args.output_json!r} is a folder; give a file name.")
        check_output_dir(os.path.dirname(os.path.abspath(args.output_json)), "the folder of --output-json")
    if args.save_images:
        check_output_dir(args.save_images, "--save-images")


def _resolve_protocol(args):
    """Fill the flags left unset from `--preset` (else the script's defaults); returns the preset or `None`."""
    from .errors import ConfigError
    from .evaluation import get_eval_preset

    preset = get_eval_preset(args.preset) if args.preset else None
    if args.rewards is None:
        args.rewards = list(preset.rewards if preset else DEFAULT_REWARDS)
    if args.num_images_per_prompt is None:
        args.num_images_per_prompt = preset.images_per_prompt if preset else 1
    if args.seed is None:
        args.seed = preset.seed if preset else 0
    if preset is None and not args.prompts:
        raise ConfigError("--prompts is required (a text file, one prompt per line), or name a --preset.")
    if args.seed < 0:
        raise ConfigError(f"--seed {args.seed} is not allowed; it must be >= 0.")
    return preset


def _read_prompts(args, preset):
    """The prompts and the `prompts` block of the report (path, SHA-256, count, whether it is the preset's file)."""
    from .evaluation import file_sha256, read_preset_prompts
    from .preflight import read_prompt_file

    matches = None
    if preset is not None:
        prompts, matches = read_preset_prompts(preset, args.prompts)
    else:
        prompts = read_prompt_file(args.prompts, "--prompts")
    source = {"path": args.prompts, "sha256": file_sha256(args.prompts), "num_prompts": len(prompts)}
    if preset is not None:
        source["matches_preset"] = matches
    return prompts, source


def evaluate(args):
    from ..rewards import load_reward
    from .errors import ConfigError, ModelLoadError, RewardLoadError
    from .preflight import check_model_source, check_reward_options

    preset = _resolve_protocol(args)
    reward_options = _reward_options(args)
    check_reward_options(dict.fromkeys(args.rewards, 1.0), reward_options)
    prompts, prompts_source = _read_prompts(args, preset)
    call_kwargs = _sampling(args, preset)
    for name, value in (("--num-images-per-prompt", args.num_images_per_prompt), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ConfigError(f"{name} {value} is not allowed; it must be >= 1.")
    check_model_source(args.model, "--model")
    if args.lora:
        _check_lora(args.lora)
    _check_outputs(args)

    import torch
    from accelerate import PartialState
    from diffusers import DiffusionPipeline

    from ..rewards.evaluation import format_table, score_all
    from .evaluation import (
        EvaluationResult,
        describe_protocol,
        eval_items,
        eval_seed,
        gather_items,
        shard_items,
    )
    from .logging_utils import quiet_prompt_truncation

    state = PartialState(cpu=args.device == "cpu")
    device = args.device or str(state.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    quiet_prompt_truncation()
    try:
        pipe = DiffusionPipeline.from_pretrained(args.model, dtype=dtype).to(device)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"Could not load the pipeline {args.model!r} ({str(err).strip().splitlines()[0]}); pass a local folder "
            "written by save_pretrained, or download the Hub id first."
        ) from err
    if args.lora:
        try:
            pipe.load_lora_weights(args.lora)
        except Exception as err:  # diffusers, peft, safetensors and the Hub client raise many types
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelLoadError(
                f"Could not load the LoRA {args.lora!r} into {type(pipe).__name__} ({first_line}); pass the output "
                "folder of a training run of this model (pytorch_lora_weights.safetensors)."
            ) from err
    pipe.set_progress_bar_config(disable=True)
    accepted = inspect.signature(pipe.__call__).parameters
    call_kwargs = {k: v for k, v in call_kwargs.items() if k in accepted}
    call_kwargs["output_type"] = "pt"
    try:
        rewards = {
            name: load_reward(name, device=device, dtype=dtype, **reward_options.get(name, {}))
            for name in args.rewards
        }
    except (OSError, TypeError, ValueError) as err:
        raise RewardLoadError(f"Could not load the rewards {args.rewards}: {err}") from err

    # This process's share of the prompt x image items, each from its own seed (see the module docstring); padding
    # slots (None) repeat a real item so that every process makes the same number of pipeline calls.
    n = args.num_images_per_prompt
    items = eval_items(len(prompts), n)
    slots = shard_items(len(items), state.process_index, state.num_processes)
    real = [k for k in slots if k is not None]
    run = [k if k is not None else (real[0] if real else 0) for k in slots]
    local = []
    for lo in range(0, len(run), args.batch_size):
        keys, live = run[lo : lo + args.batch_size], slots[lo : lo + args.batch_size]
        batch_prompts = [prompts[items[k][0]] for k in keys]
        generators = [torch.Generator("cpu").manual_seed(eval_seed(args.seed, *items[k])) for k in keys]
        images = pipe(prompt=batch_prompts, num_images_per_prompt=1, generator=generators, **call_kwargs).images
        scores = score_all(rewards, images.float(), batch_prompts)
        if args.save_images:
            from ..rewards.base import to_pil_images

            os.makedirs(args.save_images, exist_ok=True)
            pil = to_pil_images(images.float())
        for row, k in enumerate(live):
            if k is None:
                continue
            local.append((k, {name: float(s[row]) for name, s in scores.items()}))
            if args.save_images:
                pil[row].save(os.path.join(args.save_images, f"{k:05d}.png"))  # item index: the same for any launch
    gathered = gather_items(local)
    result = EvaluationResult(
        prompts=prompts,
        images_per_prompt=n,
        seeds=[eval_seed(args.seed, i, j) for i, j in items],
        scores={name: [values[name] for _, values in gathered] for name in rewards},
        seed=args.seed,
        prompts_source=args.prompts or "",
    )
    summary = result.summary()
    if not state.is_main_process:
        return summary
    for name, values in result.scores.items():
        if len(values) > 1 and all(v == values[0] for v in values):
            print(
                f"WARNING: every image got the same {name} score ({values[0]:.4g}): look at the images (all "
                "black? a prompt length or size the model was not trained with) before trusting the table.",
                file=sys.stderr,
            )
    print(format_table(summary))
    if args.output_json:
        sampling = {k: v for k, v in call_kwargs.items() if k != "output_type"}
        report = {
            "model": args.model,
            "lora": args.lora,
            "num_prompts": len(prompts),
            "num_images": len(items),
            "protocol": {
                **describe_protocol(sampling, n, args.seed, prompts_source, state.num_processes, args.preset),
                "dtype": str(dtype).replace("torch.", ""),
                "rewards": list(rewards),
            },
            "sampling": sampling,
            "rewards": {k: {m: (None if isinstance(x, float) and math.isnan(x) else x) for m, x in v.items()}
                        for k, v in summary.items()},
            "per_prompt": [dict(zip(result.table_columns(), row)) for row in result.table_rows()],
            "per_image": {
                "prompts": result.item_prompts,
                "prompt_index": [i for i, _ in items],
                "image_index": [j for _, j in items],
                "seeds": result.seeds,
                **result.scores,
            },
        }  # fmt: skip
        with open(args.output_json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return summary


def main(argv=None):
    """Parse, evaluate, print the table; the library's errors are printed as one line (exit status 1)."""
    from .errors import MixGRPOError

    args = parse_args(argv)
    try:
        summary = evaluate(args)
    except MixGRPOError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    _leave_process_group()
    return summary


def _leave_process_group() -> None:
    """Under `accelerate launch`, every rank leaves the process group together once the evaluation is done: a
    gloo group still alive at interpreter exit can abort a rank ("terminate called without an active exception")."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
