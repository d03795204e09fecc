"""Generate images with a diffusers pipeline (optionally + LoRA) for a prompt file and report every reward's mean and
standard error, as a table and as JSON.

    python examples/eval_rewards.py --model black-forest-labs/FLUX.1-dev --lora ./my_lora \
        --prompts prompts.txt --rewards hpsv2.1 pickscore imagereward --num-images-per-prompt 4 \
        --steps 25 --height 720 --width 720 --guidance-scale 3.5 --device cuda --dtype bfloat16 --output-json eval.json

Steps, size, guidance and prompt length default to the model folder's `sampling_defaults.json` when it has one (the
toy-world base model does), else to the pipeline's defaults (25 steps). Reward options: `--reward-option
name.option=value` (repeatable, e.g. `hpsv2.1.checkpoint=/models/HPS_v2.1_compressed.pt`,
`unifiedreward.base_url=http://127.0.0.1:8000/v1`) or `--reward-kwargs` as JSON.
"""

import argparse
import inspect
import json
import math
import os
import sys

DTYPES = ("float32", "float16", "bfloat16")


def _epilog() -> str:
    from diffusers_mixgrpo.rewards import available_rewards

    return "rewards: " + ", ".join(available_rewards()) + "."


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="Pipeline Hub id or local directory (DiffusionPipeline).")
    p.add_argument("--lora", default=None, help="LoRA weights (directory or file) loaded with load_lora_weights.")
    p.add_argument("--prompts", required=True, help="Text file, one prompt per line (blank lines ignored).")
    p.add_argument("--rewards", nargs="+", default=["hpsv2.1", "pickscore", "imagereward"], help="Reward names.")
    p.add_argument("--reward-kwargs", default="{}", help="JSON: {reward name: {option: value}}.")
    p.add_argument(
        "--reward-option",
        action="append",
        default=[],
        metavar="NAME.OPTION=VALUE",
        help="One reward option (repeatable), e.g. unifiedreward.timeout=30; wins over --reward-kwargs.",
    )
    p.add_argument("--num-images-per-prompt", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4, help="Prompts per pipeline call.")
    p.add_argument("--steps", type=int, default=None, help="Sampling steps (default: the model's, else 25).")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument(
        "--max-sequence-length", type=int, default=None, help="T5 prompt tokens (FLUX, SD3); default: the model's."
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="Default: bfloat16 on cuda, else float32.")
    p.add_argument("--output-json", default=None, help="Write the summary (and per-image scores) here.")
    p.add_argument("--save-images", default=None, help="Directory to save the generated images as PNG.")
    return p.parse_args(argv)


def _reward_options(args):
    from diffusers_mixgrpo.training.config import parse_reward_kwargs
    from diffusers_mixgrpo.training.errors import ConfigError

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


def _sampling(args) -> dict:
    """Pipeline call arguments: the flags, else the model folder's sampling defaults, else 25 steps."""
    from diffusers_mixgrpo.training.model_defaults import read_sampling_defaults

    defaults = read_sampling_defaults(args.model)
    size = defaults.get("resolution")
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
    from diffusers_mixgrpo.training.errors import ModelLoadError
    from diffusers_mixgrpo.training.preflight import _HUB_ID

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
    from diffusers_mixgrpo.training.errors import ConfigError
    from diffusers_mixgrpo.training.preflight import check_output_dir

    if args.output_json:
        if os.path.isdir(args.output_json):
            raise ConfigError(f"--output-json {args.output_json!r} is a folder; give a file name.")
        check_output_dir(os.path.dirname(os.path.abspath(args.output_json)), "the folder of --output-json")
    if args.save_images:
        check_output_dir(args.save_images, "--save-images")


def evaluate(args):
    from diffusers_mixgrpo.rewards import load_reward
    from diffusers_mixgrpo.training.errors import ConfigError, ModelLoadError, RewardLoadError
    from diffusers_mixgrpo.training.preflight import check_model_source, check_reward_options, read_prompt_file

    reward_options = _reward_options(args)
    check_reward_options(dict.fromkeys(args.rewards, 1.0), reward_options)
    prompts = read_prompt_file(args.prompts)
    call_kwargs = _sampling(args)
    for name, value in (("--num-images-per-prompt", args.num_images_per_prompt), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ConfigError(f"{name} {value} is not allowed; it must be >= 1.")
    check_model_source(args.model, "--model")
    if args.lora:
        _check_lora(args.lora)
    _check_outputs(args)

    import torch
    from diffusers import DiffusionPipeline

    from diffusers_mixgrpo.rewards.evaluation import format_table, score_all, summarize
    from diffusers_mixgrpo.training.logging_utils import quiet_prompt_truncation

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
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

    generator = torch.Generator("cpu").manual_seed(args.seed)
    scores = {name: [] for name in rewards}
    all_prompts = []
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start : start + args.batch_size]
        images = pipe(
            prompt=batch, num_images_per_prompt=args.num_images_per_prompt, generator=generator, **call_kwargs
        ).images
        batch_prompts = [p for p in batch for _ in range(args.num_images_per_prompt)]  # diffusers' image order
        for name, s in score_all(rewards, images.float(), batch_prompts).items():
            scores[name].append(s)
        if args.save_images:
            from diffusers_mixgrpo.rewards.base import to_pil_images

            os.makedirs(args.save_images, exist_ok=True)
            for i, image in enumerate(to_pil_images(images.float())):
                image.save(os.path.join(args.save_images, f"{len(all_prompts) + i:05d}.png"))
        all_prompts.extend(batch_prompts)

    per_image = {name: torch.cat(v) for name, v in scores.items()}
    for name, values in per_image.items():
        if values.numel() > 1 and bool((values == values[0]).all()):
            print(
                f"WARNING: every image got the same {name} score ({float(values[0]):.4g}): look at the images (all "
                "black? a prompt length or size the model was not trained with) before trusting the table.",
                file=sys.stderr,
            )
    summary = summarize(per_image)
    print(format_table(summary))
    if args.output_json:
        report = {
            "model": args.model,
            "lora": args.lora,
            "num_prompts": len(prompts),
            "num_images": len(all_prompts),
            "sampling": {k: v for k, v in call_kwargs.items() if k != "output_type"},
            "rewards": {k: {m: (None if isinstance(x, float) and math.isnan(x) else x) for m, x in v.items()}
                        for k, v in summary.items()},
            "per_image": {"prompts": all_prompts, **{k: v.tolist() for k, v in per_image.items()}},
        }  # fmt: skip
        with open(args.output_json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return summary


def main(argv=None):
    """Parse, evaluate, print the table; the library's errors are printed as one line (exit status 1)."""
    from diffusers_mixgrpo.training.errors import MixGRPOError

    args = parse_args(argv)
    try:
        return evaluate(args)
    except MixGRPOError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
