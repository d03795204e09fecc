"""Generate images with a diffusers pipeline (optionally + LoRA) for a prompt file and report every reward's mean and
standard error, as a table and as JSON.

    python examples/eval_rewards.py --model black-forest-labs/FLUX.1-dev --lora ./my_lora \
        --prompts prompts.txt --rewards hpsv2.1 pickscore imagereward --num-images-per-prompt 4 \
        --steps 25 --height 720 --width 720 --guidance-scale 3.5 --device cuda --dtype bfloat16 --output-json eval.json

Reward options go in --reward-kwargs as JSON, e.g. '{"unifiedreward": {"base_url": "http://127.0.0.1:8000/v1"}}'.
"""

import argparse
import json
import math
import os

import torch

from diffusers_mixgrpo.rewards import available_rewards, load_reward
from diffusers_mixgrpo.rewards.evaluation import format_table, score_all, summarize

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="Pipeline Hub id or local directory (DiffusionPipeline).")
    p.add_argument("--lora", default=None, help="LoRA weights (directory or file) loaded with load_lora_weights.")
    p.add_argument("--prompts", required=True, help="Text file, one prompt per line (blank lines ignored).")
    p.add_argument("--rewards", nargs="+", default=["hpsv2.1", "pickscore", "imagereward"], help="Reward names.")
    p.add_argument("--reward-kwargs", default="{}", help="JSON: {reward name: {option: value}}.")
    p.add_argument("--num-images-per-prompt", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4, help="Prompts per pipeline call.")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16" if torch.cuda.is_available() else "float32")
    p.add_argument("--output-json", default=None, help="Write the summary (and per-image scores) here.")
    p.add_argument("--save-images", default=None, help="Directory to save the generated images as PNG.")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from diffusers import DiffusionPipeline

    unknown = set(args.rewards) - set(available_rewards())
    if unknown:
        raise SystemExit(f"Unknown rewards {sorted(unknown)}; available: {', '.join(available_rewards())}")
    with open(args.prompts) as f:
        prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
        raise SystemExit(f"No prompts in {args.prompts}.")

    dtype = DTYPES[args.dtype]
    pipe = DiffusionPipeline.from_pretrained(args.model, dtype=dtype).to(args.device)
    if args.lora:
        pipe.load_lora_weights(args.lora)
    pipe.set_progress_bar_config(disable=True)
    reward_kwargs = json.loads(args.reward_kwargs)
    rewards = {
        name: load_reward(name, device=args.device, dtype=dtype, **reward_kwargs.get(name, {}))
        for name in args.rewards
    }

    call_kwargs = {"num_inference_steps": args.steps, "output_type": "pt"}
    for key in ("height", "width", "guidance_scale"):
        if getattr(args, key) is not None:
            call_kwargs[key] = getattr(args, key)
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
    summary = summarize(per_image)
    print(format_table(summary))
    if args.output_json:
        report = {
            "model": args.model,
            "lora": args.lora,
            "num_prompts": len(prompts),
            "num_images": len(all_prompts),
            "rewards": {k: {m: (None if isinstance(x, float) and math.isnan(x) else x) for m, x in v.items()}
                        for k, v in summary.items()},
            "per_image": {"prompts": all_prompts, **{k: v.tolist() for k, v in per_image.items()}},
        }  # fmt: skip
        with open(args.output_json, "w") as f:
            json.dump(report, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
