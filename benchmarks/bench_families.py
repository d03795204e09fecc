"""Rollout NFE and cost per iteration of DanceGRPO-style, MixGRPO, Flash and Flash* on the 2026 families' tiny models.

For Qwen-Image, FLUX.2 [dev], FLUX.2 [klein] and Z-Image (tiny random-weight models built offline,
`diffusers_mixgrpo.utils.tiny_family_models`), one run trains each variant for a few GRPO iterations with the
trainer's presets and measures, per variant:

- rollout NFE per image (the pipeline's counter, through the trainer's `nfe/rollout_per_image` log; a CFG step counts
  once, as in the algorithm notes) and training NFE per image, next to the expected values of `benchmarks/costs.py`;
- wall time per iteration (rollout + reward + update) and its ratio to DanceGRPO-style measured in the same run
  (variants interleaved round-robin; the ratio is the median over repeats of the per-round ratio).

The window is at w = 0 (where Flash* stays) and, for MixGRPO and Flash, at the middle of a 300-iteration progressive
run (w = 6 / 7), where their pre-window Euler steps make them costlier. Usage:

    python benchmarks/bench_families.py [--families qwenimage flux2 ...] [--repeats 3] [--output benchmarks/results]

Writes `families_i11b.json` and `families_i11b.md` to `--output`. Self-contained: it does not use benchmarks/run.py.
"""

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import costs  # noqa: E402

FAMILIES = {
    # family -> (builder name, rollout guidance, label)
    "qwenimage": ("build_tiny_qwenimage_pipeline", 4.0, "Qwen-Image (true CFG 4)"),
    "flux2": ("build_tiny_flux2_pipeline", 4.0, "FLUX.2 [dev] (embedded guidance 4)"),
    "flux2_klein": ("build_tiny_flux2_klein_pipeline", 4.0, "FLUX.2 [klein] base (CFG 4)"),
    "zimage": ("build_tiny_zimage_pipeline", 4.0, "Z-Image (CFG 4)"),
}
VARIANTS = ("dancegrpo", "mixgrpo", "flash", "flash_star")


def brightness(images, prompts):
    return images.float().mean(dim=(1, 2, 3))


def make_trainer(method, stock, family, args, out_dir):
    from diffusers_mixgrpo import GRPOTrainingPipeline
    from diffusers_mixgrpo.training.config import GRPOConfig
    from diffusers_mixgrpo.training.trainer import GRPOTrainer

    values = dict(
        output_dir=out_dir,
        method=method,
        num_inference_steps=args.num_steps,
        num_generations=args.group_size,
        sample_prompts_per_device=1,
        resolution=32,
        guidance_scale=FAMILIES[family][1],
        shift=None,  # the family's own grid, as the shipped configs
        sample_share_prefix=True,
        learning_rate=1e-4,
        report_to="none",
        lora_rank=4,
        lora_alpha=4,
        gradient_accumulation_steps=1,
        checkpointing_steps=0,
        validation_steps=0,
        max_train_steps=10_000,
        max_sequence_length=64,
        seed=0,
    )
    if method != "dancegrpo":
        values["window_size"] = args.window_size
    pipe = GRPOTrainingPipeline.from_pipe(copy.deepcopy(stock))
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle on the left", "a blue square on the right", "a green cross on the top"]
    return GRPOTrainer(GRPOConfig(**values), pipe, rewards={brightness: 1.0}, train_prompts=prompts)


def timed_step(trainer, start):
    trainer.window.start = min(start, trainer.window.max_start)
    trainer.window.iter_in_interval = 0
    t0 = time.perf_counter()
    logs = trainer.train_step()
    wall = time.perf_counter() - t0
    return {
        "window": [int(logs["window/start"]), int(logs["window/size"])],
        "nfe_rollout_per_image": logs["nfe/rollout_per_image"],
        "nfe_train_per_image": logs["nfe/train_per_image"],
        "time_rollout": logs["time/rollout"],
        "time_update": logs["time/update"],
        "time_total": wall,
    }


def bench_family(family, args, log):
    import torch

    from diffusers_mixgrpo.utils import tiny_family_models

    torch.manual_seed(0)
    stock = getattr(tiny_family_models, FAMILIES[family][0])()
    combos = [(m, 0) for m in VARIANTS] + [(m, costs.mid_run_start(m, args.num_steps)) for m in ("mixgrpo", "flash")]
    with tempfile.TemporaryDirectory(prefix="bench-families-") as tmp:
        trainers = {m: make_trainer(m, stock, family, args, os.path.join(tmp, m)) for m in VARIANTS}
        samples = {c: [] for c in combos}
        for r in range(args.warmup + args.repeats):
            for c in combos:
                result = timed_step(trainers[c[0]], c[1])
                if r >= args.warmup:
                    samples[c].append(result)
            log(f"  {family}: round {r + 1}/{args.warmup + args.repeats}")
    base = samples[("dancegrpo", 0)]
    rows = []
    for (method, start), runs in samples.items():
        exp = costs.expected_nfe(method, args.num_steps, args.window_size, start, args.group_size, 1, True)
        base_exp = costs.expected_nfe("dancegrpo", args.num_steps, args.window_size, 0, args.group_size, 1, True)
        rows.append(
            {
                "method": method,
                "start": start,
                "window": runs[0]["window"],
                "nfe_rollout_per_image": statistics.median(r["nfe_rollout_per_image"] for r in runs),
                "nfe_train_per_image": statistics.median(r["nfe_train_per_image"] for r in runs),
                "expected_nfe_rollout_per_image": exp.sampling_per_rollout,
                "expected_nfe_train_per_image": exp.training_per_rollout,
                "time_total_s": statistics.median(r["time_total"] for r in runs),
                "ratio_total": statistics.median(a["time_total"] / b["time_total"] for a, b in zip(runs, base)),
                "expected_ratio_3x": costs.cost_units(exp, 3.0) / costs.cost_units(base_exp, 3.0),
            }
        )
    return {"family": family, "label": FAMILIES[family][2], "rows": rows}


def to_markdown(results, args):
    lines = [
        "# Rollout NFE and cost per iteration on the 2026 families' tiny models (issue 11, helper i11b)",
        "",
        f"One run of `python benchmarks/bench_families.py` (N = {args.num_steps}, K = {args.window_size}, "
        f"G = {args.group_size}, 1 prompt per iteration, 32x32, prefix sharing on, LoRA rank 4, CPU, "
        f"{args.repeats} timed rounds after {args.warmup} warm-up, variants interleaved). NFE: denoiser evaluations "
        "per image from the pipeline's counter (a CFG step counts once; prefix sharing amortised over the group). "
        "Ratio: wall time of one iteration / DanceGRPO-style's, median over rounds of the per-round ratio; "
        "expected: the cost model of `benchmarks/costs.py` (sampling + 3 x training NFE). Tiny models on a shared "
        "CPU: the NFE columns are exact, the times are indicative (text encoding, VAE decoding and Python "
        "overhead weigh more than at real size).",
        "",
        f"Machine load average at the end: {results['loadavg']}. Total wall time {results['wall_s']:.0f} s.",
        "",
        "`s / iteration` is the median over rounds and the ratio the median of the per-round ratios, so the two can "
        "disagree when other jobs disturb a round of a shared CPU. The rows at w = 6 / 7 are MixGRPO and Flash "
        "halfway through a 300-iteration progressive run.",
    ]
    labels = {
        "dancegrpo": "DanceGRPO-style",
        "mixgrpo": "MixGRPO",
        "flash": "MixGRPO-Flash",
        "flash_star": "MixGRPO-Flash*",
    }
    for fam in results["families"]:
        lines += [
            "",
            f"## {fam['label']}",
            "",
            "| variant | window (start, size) | rollout NFE / image (expected) | train NFE / image (expected) "
            "| s / iteration | cost ratio vs DanceGRPO (expected) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in fam["rows"]:
            lines.append(
                f"| {labels[r['method']]} | ({r['window'][0]}, {r['window'][1]}) | "
                f"{r['nfe_rollout_per_image']:.2f} ({r['expected_nfe_rollout_per_image']:.2f}) | "
                f"{r['nfe_train_per_image']:.0f} ({r['expected_nfe_train_per_image']}) | {r['time_total_s']:.2f} | "
                f"{r['ratio_total']:.2f} ({r['expected_ratio_3x']:.2f}) |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--num-steps", type=int, default=25)
    parser.add_argument("--window-size", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(BENCH_DIR / "results"))
    parser.add_argument("--markdown-from", help="only rewrite the markdown from a results JSON of an earlier run")
    args = parser.parse_args(argv)
    if args.markdown_from:
        results = json.loads(Path(args.markdown_from).read_text())
        text = to_markdown(results, argparse.Namespace(**results["args"]))
        (Path(args.output) / "families_i11b.md").write_text(text)
        return results

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    results = {"args": vars(args), "families": []}
    for family in args.families:
        results["families"].append(bench_family(family, args, lambda m: print(m, flush=True)))
    results["wall_s"] = time.perf_counter() - t0
    results["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "families_i11b.json").write_text(json.dumps(results, indent=2))
    (out / "families_i11b.md").write_text(to_markdown(results, args))
    print(to_markdown(results, args))
    return results


if __name__ == "__main__":
    main()
