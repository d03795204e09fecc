"""Rollout NFE and cost per GRPO iteration of DanceGRPO-style, MixGRPO, Flash and Flash* on the families' tiny models.

For each family of `diffusers_mixgrpo.utils.tiny_family_models` (SDXL, SANA, Wan text-to-video, Qwen-Image,
FLUX.2 [dev], FLUX.2 [klein], Z-Image; tiny random-weight models built offline; `--families`), one run trains each
variant for a few GRPO iterations with the trainer's presets (prefix sharing on, a weight-free mean-pixel reward) and
measures, per variant:

- rollout NFE per image (the pipeline's counter, through the trainer's `nfe/rollout_per_image` log; a CFG step counts
  once, as in the algorithm notes) and training NFE per image, checked against the expected values of
  `benchmarks/costs.py` (the script fails on a mismatch);
- wall time per iteration (rollout + reward + update) and its ratio to DanceGRPO-style measured in the same run
  (variants interleaved round-robin; the ratio is the median over rounds of the per-round ratio).

The window is at w = 0 (where Flash* stays) and, for MixGRPO and Flash, at the middle of a 300-iteration progressive
run (`costs.mid_run_start`), where their pre-window Euler steps make them costlier. Flash and Flash* need the flow
scheduler's compressed DPM-Solver++ tail, so a VP family (SDXL, `MixDDIMSDEScheduler`) reports them as n/a. With
`--memory` the peak RSS of one Wan iteration (tiny model, CPU) is measured in a fresh process per variant.

Usage:

    python benchmarks/bench_families.py [--families sdxl wan ...] [--repeats 3] [--out results.md] [--json r.json]
    python benchmarks/bench_families.py --smoke ...        # N = 6, K = 2, G = 2, 1 round: checks that it runs
    python benchmarks/bench_families.py --markdown-from r.json --out results.md

Earlier runs: `benchmarks/results/families_i11a.md` (SDXL / SANA / Wan) and `families_i11b.{json,md}` (the four
2026 families). Self-contained: it does not use benchmarks/run.py.
"""

import argparse
import copy
import json
import logging
import os
import platform
import statistics
import subprocess
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
    "sdxl": ("build_tiny_sdxl_pipeline", 4.0, "SDXL (CFG 4)"),
    "sana": ("build_tiny_sana_pipeline", 4.0, "SANA (CFG 4)"),
    "wan": ("build_tiny_wan_pipeline", 4.0, "Wan 2.1 text-to-video (CFG 4, 5 frames)"),
    "qwenimage": ("build_tiny_qwenimage_pipeline", 4.0, "Qwen-Image (true CFG 4)"),
    "flux2": ("build_tiny_flux2_pipeline", 4.0, "FLUX.2 [dev] (embedded guidance 4)"),
    "flux2_klein": ("build_tiny_flux2_klein_pipeline", 4.0, "FLUX.2 [klein] base (CFG 4)"),
    "zimage": ("build_tiny_zimage_pipeline", 4.0, "Z-Image (CFG 4)"),
}
NUM_FRAMES = {"wan": 5}
VP_FAMILIES = ("sdxl",)  # no compressed tail: Flash / Flash* are n/a
PROMPTS = ["a red circle on the left", "a blue square on the right", "a green cross on the top"]


def mean_pixel(images, prompts):
    """A weight-free reward for any layout ((B, 3, H, W) or video (B, F, 3, H, W)): the mean pixel value."""
    return images.float().flatten(1).mean(dim=1)


def variants_of(family: str) -> tuple[str, ...]:
    return ("dancegrpo", "mixgrpo") if family in VP_FAMILIES else costs.VARIANTS


def build_stock(family: str):
    import torch

    from diffusers_mixgrpo.utils import tiny_family_models

    torch.manual_seed(0)
    return getattr(tiny_family_models, FAMILIES[family][0])(seed=0)


def make_trainer(method, stock, family, args, out_dir):
    from diffusers_mixgrpo import GRPOTrainingPipeline
    from diffusers_mixgrpo.training.config import GRPOConfig
    from diffusers_mixgrpo.training.trainer import GRPOTrainer

    values = dict(
        output_dir=out_dir,
        model_family=family,
        method=method,
        num_inference_steps=args.num_steps,
        num_generations=args.group_size,
        sample_prompts_per_device=1,
        resolution=args.resolution,
        num_frames=NUM_FRAMES.get(family),
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
    return GRPOTrainer(GRPOConfig(**values), pipe, rewards={mean_pixel: 1.0}, train_prompts=PROMPTS)


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
    stock = build_stock(family)
    variants = variants_of(family)
    mid = [m for m in ("mixgrpo", "flash") if m in variants]
    combos = [(m, 0) for m in variants] + [(m, costs.mid_run_start(m, args.num_steps)) for m in mid]
    with tempfile.TemporaryDirectory(prefix="bench-families-") as tmp:
        trainers = {m: make_trainer(m, stock, family, args, os.path.join(tmp, m)) for m in variants}
        samples = {c: [] for c in combos}
        for r in range(args.warmup + args.repeats):
            for c in combos:
                result = timed_step(trainers[c[0]], c[1])
                if r >= args.warmup:
                    samples[c].append(result)
            log(f"  {family}: round {r + 1}/{args.warmup + args.repeats}")
    base = samples[("dancegrpo", 0)]
    base_exp = costs.expected_nfe("dancegrpo", args.num_steps, args.window_size, 0, args.group_size, 1, True)
    rows = []
    for (method, start), runs in samples.items():
        exp = costs.expected_nfe(method, args.num_steps, args.window_size, start, args.group_size, 1, True)
        row = {
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
        measured = (row["nfe_rollout_per_image"], row["nfe_train_per_image"])
        expected = (exp.sampling_per_rollout, exp.training_per_rollout)
        if measured != expected:
            raise AssertionError(
                f"{family} {method} w={start}: NFE (rollout, train) {measured} != costs.py {expected}"
            )
        rows.append(row)
    return {"family": family, "label": FAMILIES[family][2], "rows": rows}


def memory_child(spec: dict) -> dict:
    """In a fresh process: the peak RSS of `iterations` iterations above the RSS after setup (VmHWM reset)."""
    import torch

    torch.set_num_threads(1)
    args = argparse.Namespace(**spec["args"])
    family, method = spec["family"], spec["method"]
    start = costs.mid_run_start(method, args.num_steps)
    with tempfile.TemporaryDirectory(prefix="bench-families-mem-") as out:
        trainer = make_trainer(method, build_stock(family), family, args, out)

        def status_kib(field):
            with open("/proc/self/status", encoding="utf-8") as f:
                return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

        before = status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")  # reset the peak mark (VmHWM) to the current RSS
        for _ in range(spec["iterations"]):
            timed_step(trainer, start)
        peak = status_kib("VmHWM")
        rollout = trainer.pipeline.rollout(
            PROMPTS[:1],
            args.group_size,
            args.num_steps,
            costs.window_of(method, args.num_steps, args.window_size, start),
            height=args.resolution,
            width=args.resolution,
            num_frames=NUM_FRAMES.get(family),
            generator=torch.Generator().manual_seed(0),
        )
    return {
        "iteration_rss_delta_bytes": (peak - before) * 1024,
        "setup_rss_bytes": before * 1024,
        "recorded_latents_bytes_per_sample": rollout.latents[0].nbytes,
        "latent_shape": list(rollout.latents.shape[2:]),
    }


def measure_memory(family: str, args, log) -> dict:
    out = {}
    for method in costs.VARIANTS:
        spec = {"family": family, "method": method, "iterations": 2, "args": vars(args)}
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"memory child {family}/{method} failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
        out[method] = json.loads(lines[-1])
        log(f"  memory {family} {method}: +{out[method]['iteration_rss_delta_bytes'] / 2**20:.1f} MiB")
    return out


def to_markdown(results, args):
    resolution = getattr(args, "resolution", 32)
    lines = [
        "# Rollout NFE and cost per iteration on the families' tiny models (`benchmarks/bench_families.py`)",
        "",
        f"One run of `python benchmarks/bench_families.py` (N = {args.num_steps}, K = {args.window_size}, "
        f"G = {args.group_size}, 1 prompt per iteration, {resolution}x{resolution} (Wan: {NUM_FRAMES['wan']} "
        f"frames), prefix sharing on, LoRA rank 4, CPU, {args.repeats} timed rounds after {args.warmup} warm-up, "
        "variants interleaved). NFE: denoiser evaluations per image from the pipeline's counter (a CFG step counts "
        "once; prefix sharing amortised over the group), checked equal to the cost model. Ratio: wall time of one "
        "iteration / DanceGRPO-style's, median over rounds of the per-round ratio; expected: the cost model of "
        "`benchmarks/costs.py` (sampling + 3 x training NFE). Tiny models on a shared CPU: the NFE columns are "
        "exact, the times are indicative (text encoding, VAE decoding and Python overhead weigh more than at real "
        "size).",
        "",
        f"Machine: {results.get('machine', 'n/a')}; load average at the end: {results['loadavg']}. Total wall time "
        f"{results['wall_s']:.0f} s.",
        "",
        "`s / iteration` is the median over rounds and the ratio the median of the per-round ratios, so the two can "
        "disagree when other jobs disturb a round of a shared CPU. The rows at w > 0 are MixGRPO and Flash halfway "
        "through a 300-iteration progressive run.",
    ]
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
                f"| {costs.LABELS[r['method']]} | ({r['window'][0]}, {r['window'][1]}) | "
                f"{r['nfe_rollout_per_image']:.2f} ({r['expected_nfe_rollout_per_image']:.2f}) | "
                f"{r['nfe_train_per_image']:.0f} ({r['expected_nfe_train_per_image']}) | {r['time_total_s']:.2f} | "
                f"{r['ratio_total']:.2f} ({r['expected_ratio_3x']:.2f}) |"
            )
        if fam["family"] in VP_FAMILIES:
            lines += [
                "",
                "VP diffusion on `MixDDIMSDEScheduler`: Flash and Flash* are n/a, the compressed DPM-Solver++ tail is "
                "defined for the flow scheduler only.",
            ]
    for family, per_method in results.get("memory", {}).items():
        lines += [
            "",
            f"## Memory, {family} (tiny model, CPU, measured)",
            "",
            "Peak RSS of two iterations above the RSS after setup (Linux VmHWM reset), one fresh process per variant; "
            "recorded latents = the `(K + 1)` window latents one sample keeps in the `RolloutBatch` (DanceGRPO: "
            "K = N - 1). At this size the RSS deltas are allocator-dominated (tens of MiB against tens of KiB of "
            "latents): they do not resolve the variants' difference and say nothing about a real model.",
            "",
            "| variant | iteration peak RSS delta (MiB) | setup RSS (MiB) | latent shape | recorded latents / sample (KiB) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for method, m in per_method.items():
            lines.append(
                f"| {costs.LABELS[method]} | {m['iteration_rss_delta_bytes'] / 2**20:.1f} | "
                f"{m['setup_rss_bytes'] / 2**20:.0f} | {tuple(m['latent_shape'])} | "
                f"{m['recorded_latents_bytes_per_sample'] / 1024:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), help=f"any of {', '.join(FAMILIES)}")
    parser.add_argument("--num-steps", type=int, default=25)
    parser.add_argument("--window-size", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory", action="store_true", help="also measure Wan's peak RSS per variant")
    parser.add_argument("--smoke", action="store_true", help="N = 6, K = 2, G = 2, 1 round, no warm-up")
    parser.add_argument("--out", default=None, help="write the markdown here")
    parser.add_argument("--json", default=None, help="write the results JSON here")
    parser.add_argument("--markdown-from", help="only render the markdown of a results JSON of an earlier run")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return None
    if args.markdown_from:
        results = json.loads(Path(args.markdown_from).read_text())
        text = to_markdown(results, argparse.Namespace(**results["args"]))
        if args.out:
            Path(args.out).write_text(text, encoding="utf-8")
        print(text)
        return results
    families = [f for item in args.families for f in item.split(",") if f]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    if args.smoke:
        args.num_steps, args.window_size, args.group_size, args.repeats, args.warmup = 6, 2, 2, 1, 0

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    results = {"args": {k: v for k, v in vars(args).items() if k != "families"}, "families": [], "memory": {}}
    results["args"]["families"] = families

    def log(message):
        print(message, file=sys.stderr, flush=True)

    for family in families:
        results["families"].append(bench_family(family, args, log))
        if args.memory and family == "wan":
            results["memory"][family] = measure_memory(family, args, log)
    results["wall_s"] = time.perf_counter() - t0
    results["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    results["machine"] = f"{platform.machine()} {os.cpu_count()}-core CPU, {args.threads} torch thread(s), torch "
    results["machine"] += torch.__version__
    text = to_markdown(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return results


if __name__ == "__main__":
    main()
