"""What the reference KL with LoRA (`kl_type: reference`) costs on the toy model: update time and peak memory.

The reference policy is the base model with the LoRA adapter switched off (`GRPOTrainer._reference_policy`), so the KL
adds one forward (no backward, no gradient) of the denoiser per trained window step and keeps no second copy of the
model. This script measures it on the shipped toy FLUX base model with the toy demo's settings (MixGRPO, N = 10,
K = 3 window steps trained, 32 px, G = 8, 2 prompts per step, LoRA rank 8) on one torch thread:

- **time**: both variants (`kl_type: none` and `kl_type: reference`, `kl_coeff: 0.01`) run round-robin in this
  process (one warm-up round, then `--repeats` rounds), so a slow period of the shared machine hits both alike; the
  ratio is the median over rounds of the per-round `time/update` ratio (and of the whole step's), "paired".
- **memory**: each variant in a subprocess; after the trainer is built the kernel's peak-RSS mark is reset
  (`/proc/self/clear_refs` = 5) and the peak RSS (`VmHWM`) of two iterations minus the RSS before them is reported.

    python benchmarks/kl_reference_cost.py --repeats 5
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

VARIANTS = {"none": {}, "reference": {"kl_type": "reference", "kl_coeff": 0.01}}


def build(variant: str, out: str):
    from diffusers_mixgrpo.toy_world.demo import build_toy_trainer

    return build_toy_trainer(
        "mixgrpo",
        os.path.join(out, variant),
        1_000_000,
        0,
        num_generations=8,
        sample_prompts_per_device=2,
        lora_rank=8,
        lora_alpha=8,
        validation_steps=0,
        report_to="none",
        **VARIANTS[variant],
    )


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(variant: str) -> None:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        trainer = build(variant, out)
        before = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        for _ in range(2):
            trainer.train_step()
        print(json.dumps({"variant": variant, "peak_mib": (_status_kib("VmHWM") - before) / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        trainers = {v: build(v, out) for v in VARIANTS}
        rounds = []
        for r in range(args.repeats + 1):
            row = {}
            for v, trainer in trainers.items():
                t0 = time.perf_counter()
                logs = trainer.train_step()
                row[v] = {"update": logs["time/update"], "step": time.perf_counter() - t0, "kl": logs["train/kl"]}
            if r:  # round 0 is the warm-up
                rounds.append(row)
    ratio = {k: statistics.median(row["reference"][k] / row["none"][k] for row in rounds) for k in ("update", "step")}
    median = {v: {k: statistics.median(row[v][k] for row in rounds) for k in ("update", "step")} for v in VARIANTS}
    memory = {}
    for v in VARIANTS:
        cmd = [sys.executable, __file__, "--memory-child", v]
        memory[v] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    print(json.dumps({"median_seconds": median, "paired_ratio": ratio, "memory": memory, "rounds": rounds}, indent=1))


if __name__ == "__main__":
    main()
