"""Per-family cost of one GRPO iteration on the tiny models: MixGRPO / Flash / Flash* against DanceGRPO-style.

For each family (`--families`, default: the ones built in `utils/tiny_family_models.py`) and variant, one trainer
runs `--repeats` iterations with the window at its mid-run position (`costs.mid_run_start`), prefix sharing on, a
weight-free reward. Reported per family, all measured in the same run: the rollout NFE per image (the pipeline's
counter), the trained steps per image, the cost in forward units (sampling + 3 x training, `costs.cost_units`) and
the measured wall time of rollout + update, both as a ratio to DanceGRPO-style. The NFE are checked against
`benchmarks/costs.py`. Flash and Flash* need the flow scheduler's compressed DPM-Solver++ tail, so a VP family (SDXL,
`MixDDIMSDEScheduler`) reports them as n/a. With `--memory` the peak RSS of one Wan iteration (tiny model, CPU) is
measured in a fresh process per variant.

Usage: `python benchmarks/bench_families.py [--smoke] [--families sdxl,sana,wan] [--out results.md]`.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import costs  # noqa: E402

BUILDERS = {
    "sdxl": "build_tiny_sdxl_pipeline",
    "sana": "build_tiny_sana_pipeline",
    "wan": "build_tiny_wan_pipeline",
}
NUM_FRAMES = {"wan": 5}
PROMPTS = ["a red circle on the left", "a blue square on the right", "a green cross on the top", "a cat"]


def mean_pixel(images, prompts):
    """A weight-free reward for any layout ((B, 3, H, W) or video (B, F, 3, H, W)): the mean pixel value."""
    return images.float().flatten(1).mean(dim=1)


def build_stock(family: str):
    from diffusers_mixgrpo.utils import tiny_family_models

    return getattr(tiny_family_models, BUILDERS[family])(seed=0)


def make_trainer(family: str, method: str, args, output_dir: str):
    from diffusers_mixgrpo import GRPOTrainingPipeline
    from diffusers_mixgrpo.training.config import GRPOConfig
    from diffusers_mixgrpo.training.trainer import GRPOTrainer

    values = dict(
        output_dir=output_dir,
        model_family=family,
        method=method,
        num_inference_steps=args.num_steps,
        num_generations=args.group_size,
        sample_prompts_per_device=1,
        resolution=args.resolution,
        sample_share_prefix=True,
        learning_rate=1e-4,
        report_to="none",
        lora_rank=4,
        lora_alpha=4,
        lora_target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        gradient_accumulation_steps=1,
        checkpointing_steps=0,
        validation_steps=0,
        max_train_steps=10_000,
        seed=0,
        num_frames=NUM_FRAMES.get(family),
    )
    if method != "dancegrpo":
        values["window_size"] = args.window_size
    pipe = GRPOTrainingPipeline.from_pipe(build_stock(family))
    pipe.set_progress_bar_config(disable=True)
    return GRPOTrainer(GRPOConfig(**values), pipe, rewards={mean_pixel: 1.0}, train_prompts=PROMPTS)


def one_iteration(trainer, start: int) -> dict:
    trainer.window.start = min(start, trainer.window.max_start)
    trainer.window.iter_in_interval = 0
    pipe = trainer.pipeline
    before = pipe.nfe_counter
    logs = trainer.train_step()
    images = trainer.config.rollouts_per_device
    sampling = logs["nfe/rollout_per_image"] * images
    return {
        "window": (int(logs["window/start"]), int(logs["window/size"])),
        "nfe_sampling_per_image": logs["nfe/rollout_per_image"],
        "nfe_training_per_image": (pipe.nfe_counter - before - sampling) / images,
        "time_rollout": logs["time/rollout"],
        "time_update": logs["time/update"],
    }


def measure_family(family: str, args, log) -> list[dict]:
    variants = costs.VARIANTS if family != "sdxl" else ("dancegrpo", "mixgrpo")
    rows = []
    for method in variants:
        start = costs.mid_run_start(method, args.num_steps)
        with tempfile.TemporaryDirectory(prefix="bench-families-") as out:
            trainer = make_trainer(family, method, args, out)
            one_iteration(trainer, start)  # warm-up: first-call allocations, lazy imports
            samples = [one_iteration(trainer, start) for _ in range(args.repeats)]
        med = {k: statistics.median(s[k] for s in samples) for k in samples[0] if k != "window"}
        expected = costs.expected_nfe(method, args.num_steps, args.window_size, start, args.group_size, 1, True)
        if family == "sdxl" or method in ("dancegrpo", "mixgrpo"):
            assert med["nfe_sampling_per_image"] == expected.sampling_per_rollout, (family, method, med, expected)
            assert med["nfe_training_per_image"] == expected.training_per_rollout, (family, method, med, expected)
        rows.append(
            {
                "family": family,
                "method": method,
                "window": samples[0]["window"],
                **med,
                "expected_sampling_per_image": expected.sampling_per_rollout,
                "expected_training_per_image": expected.training_per_rollout,
                "cost_units": med["nfe_sampling_per_image"] + 3.0 * med["nfe_training_per_image"],
                "time_total": med["time_rollout"] + med["time_update"],
            }
        )
        log(f"  {family} {method}: {rows[-1]['nfe_sampling_per_image']:.2f} NFE/image, {rows[-1]['time_total']:.3f} s")
    base = next(r for r in rows if r["method"] == "dancegrpo")
    for r in rows:
        r["cost_ratio"] = r["cost_units"] / base["cost_units"]
        r["time_ratio"] = r["time_total"] / base["time_total"]
    return rows


def memory_child(spec: dict) -> dict:
    """In a fresh process: the peak RSS of `iterations` iterations above the RSS after setup (VmHWM reset)."""
    torch.set_num_threads(1)
    args = argparse.Namespace(**spec["args"])
    with tempfile.TemporaryDirectory(prefix="bench-families-mem-") as out:
        trainer = make_trainer(spec["family"], spec["method"], args, out)
        start = costs.mid_run_start(spec["method"], args.num_steps)

        def status_kib(field):
            with open("/proc/self/status", encoding="utf-8") as f:
                return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

        before = status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")  # reset the peak mark (VmHWM) to the current RSS
        for _ in range(spec["iterations"]):
            one_iteration(trainer, start)
        peak = status_kib("VmHWM")
        rollout = trainer.pipeline.rollout(
            PROMPTS[:1],
            args.group_size,
            args.num_steps,
            costs.window_of(spec["method"], args.num_steps, args.window_size, start),
            height=args.resolution,
            width=args.resolution,
            num_frames=NUM_FRAMES.get(spec["family"]),
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


def render(rows: list[dict], memory: dict, args, info: dict) -> str:
    lines = [
        "# Per-family iteration cost on the tiny models (`benchmarks/bench_families.py`)",
        "",
        f"Measured in one run on {info['machine']} ({info['threads']} torch thread, load average "
        f"{info['loadavg']}), torch {info['torch']}, {info['date']}. N = {args.num_steps} steps, window size "
        f"{args.window_size} at its mid-run start, G = {args.group_size}, 1 prompt, {args.resolution} px "
        f"(Wan: {NUM_FRAMES['wan']} frames), prefix sharing on, median of {args.repeats} iterations after one "
        "warm-up. NFE are the pipeline's counter (a CFG step counts once); cost units = sampling + 3 x training "
        "(forward + backward) per image; time = rollout + update wall time. Ratios are to DanceGRPO-style (all N - 1 "
        "steps SDE, 60% of them trained) of the same family in the same run.",
        "",
        "| family | variant | window (start, size) | rollout NFE / image | trained steps / image | cost units | "
        "cost ratio | time (s) | time ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {costs.LABELS[r['method']]} | {tuple(r['window'])} | {r['nfe_sampling_per_image']:.2f}"
            f" | {r['nfe_training_per_image']:.0f} | {r['cost_units']:.2f} | {r['cost_ratio']:.3f} | "
            f"{r['time_total']:.3f} | {r['time_ratio']:.3f} |"
        )
    if "sdxl" in {r["family"] for r in rows}:
        lines += [
            "",
            "SDXL (VP diffusion on `MixDDIMSDEScheduler`): Flash and Flash* are n/a, the compressed DPM-Solver++ tail "
            "is defined for the flow scheduler only.",
        ]
    for family, per_method in memory.items():
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
        lines += [
            "",
            "Real-size memory was **not measured**: no GPU was available to this work. For scale only (computed, not "
            "measured): a Wan 2.1 latent at 480 x 832 x 81 frames is 16 x 21 x 60 x 104 floats = 8.4 MB in float32, "
            "so a 4-step window keeps 5 x 8.4 = 42 MB per sample; the transformer activations dominate and are not "
            "estimated here.",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(BUILDERS), help="comma-separated (default: sdxl,sana,wan)")
    parser.add_argument("--num-steps", type=int, default=25)
    parser.add_argument("--window-size", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="also measure Wan's peak RSS per variant")
    parser.add_argument("--smoke", action="store_true", help="N = 6, 1 repeat (checks that the script runs)")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return
    if args.smoke:
        args.num_steps, args.repeats, args.window_size, args.group_size = 6, 1, 2, 2
    torch.set_num_threads(1)
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    info = {
        "machine": f"{platform.machine()} {os.cpu_count()}-core CPU",
        "threads": 1,
        "loadavg": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    rows, memory = [], {}
    for family in [f.strip() for f in args.families.split(",") if f.strip()]:
        if family not in BUILDERS:
            parser.error(f"unknown family {family!r}; choose from {', '.join(BUILDERS)}")
        rows += measure_family(family, args, lambda m: print(m, file=sys.stderr))
        if args.memory and family == "wan":
            memory[family] = measure_memory(family, args, lambda m: print(m, file=sys.stderr))
    report = render(rows, memory, args, info)
    if args.out:
        Path(args.out).write_text(report, encoding="utf-8")
    print(report)
    print(f"(peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
