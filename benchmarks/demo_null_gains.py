"""What the demo's held-out gain is compared with: the gain of LoRAs that learned nothing.

    python benchmarks/demo_null_gains.py --lora mixgrpo-toy-demo [--draws 3] [--output benchmarks/results/demo_null_gains.json]

The demo reports the held-out gain of its trained reward (`toy_preference`) with the evaluation's standard error.
A gain is only evidence of learning if a model that learned nothing does not reach it. This script evaluates, on the
demo's exact held-out set (32 prompts x 16 images, held-out noise, ODE, N = 10):

* the trained LoRA (`--lora`: the demo's output folder), which should reproduce the demo's "after" figure;
* `--draws` random LoRAs with the trained one's per-tensor norms (every `lora_A` / `lora_B` matrix replaced by Gaussian
  noise rescaled to the trained matrix's Frobenius norm): as large a change of the weights as training made, in a
  direction that knows nothing of the reward;
* the same random LoRAs at the norm of one optimiser step's worth of change (1/300 of the trained norm): a model that
  barely moved.

Each row gives the paired gain over the base model and its SE (prompts as the units, `evaluation.paired_gain`).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


def _lora_parameters(transformer) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in transformer.named_parameters() if "lora_" in n}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lora", required=True, help="folder with the demo's pytorch_lora_weights.safetensors")
    parser.add_argument("--draws", type=int, default=3, help="random LoRAs per norm")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "demo_null_gains.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from diffusers_mixgrpo import GRPOTrainingPipeline
    from diffusers_mixgrpo.toy_world import TOY_MAX_SEQUENCE_LENGTH, load_toy_base_pipeline
    from diffusers_mixgrpo.toy_world.demo import EVAL_IMAGES_PER_PROMPT
    from diffusers_mixgrpo.toy_world.evaluation import (
        HELDOUT_NOISE_SEED,
        evaluate_alignment,
        heldout_eval_prompts,
        paired_gain,
    )

    start = time.perf_counter()
    weights = Path(args.lora) / "pytorch_lora_weights.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"--lora {args.lora!r} has no pytorch_lora_weights.safetensors (run the demo first).")
    base = load_toy_base_pipeline()
    pipe = GRPOTrainingPipeline.from_pipe(base)
    pipe.max_sequence_length = TOY_MAX_SEQUENCE_LENGTH
    prompts = heldout_eval_prompts()

    def evaluate():
        return evaluate_alignment(
            pipe, prompts, images_per_prompt=EVAL_IMAGES_PER_PROMPT, noise_seed=HELDOUT_NOISE_SEED
        )[0]

    before = evaluate()
    base.load_lora_weights(str(Path(args.lora)))
    lora = _lora_parameters(base.transformer)
    if not lora:
        raise RuntimeError(f"no LoRA parameters were loaded from {weights}.")
    trained = {n: p.detach().clone() for n, p in lora.items()}

    rows = []

    def record(name, after):
        gain, se = paired_gain(before, after, "preference")
        acc_gain, acc_se = paired_gain(before, after, "correct")
        rows.append(
            {
                "model": name,
                "preference": after.preference,
                "gain": gain,
                "gain_se": se,
                "gain_in_se": gain / se,
                "accuracy": after.accuracy,
                "accuracy_gain": acc_gain,
                "accuracy_gain_se": acc_se,
            }
        )
        print(
            f"{name:40s} preference {after.preference:.3f}  gain {gain:+.3f} (SE {se:.3f}, {gain / se:+.1f} SE)  "
            f"accuracy {after.accuracy:.3f}",
            flush=True,
        )

    record("trained LoRA", evaluate())
    for scale_name, scale in (("random, trained norm", 1.0), ("random, 1/300 of the trained norm", 1 / 300)):
        for draw in range(args.draws):
            g = torch.Generator().manual_seed(1000 + draw)
            with torch.no_grad():
                for n, p in lora.items():
                    noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
                    p.copy_(noise * (scale * trained[n].norm() / noise.norm().clamp_min(1e-12)))
            record(f"{scale_name} #{draw}", evaluate())

    result = {
        "command": "python benchmarks/demo_null_gains.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "base_preference": before.preference,
        "base_accuracy": before.accuracy,
        "images": before.num_images,
        "rows": rows,
        "seconds": round(time.perf_counter() - start, 1),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
