"""Time one `MixODESDEScheduler.step` against `FlowMatchEulerDiscreteScheduler.step` and print a markdown table.

A 1x4096x64 float32 latent (FLUX at 1024px: 64x64 tokens of 64 channels). Each step is timed on its own, the
variants are interleaved round-robin so that they share the machine's state, and the median is reported with its
ratio to the Euler step measured in the same run. Usage: `python benchmarks/bench_scheduler_step.py [--smoke]`.
"""

import argparse
import platform
import statistics
import time

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_mixgrpo.schedulers.scheduling_mix_ode_sde import MixODESDEScheduler

SHAPE = (1, 4096, 64)
NUM_STEPS = 25
STEP = 5  # a step in the middle of the grid, inside the SDE window where there is one


def make_variants():
    sigmas = np.linspace(1.0, 1.0 / NUM_STEPS, NUM_STEPS)
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    noise = torch.randn(SHAPE, generator=g)

    euler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    euler.set_timesteps(sigmas=sigmas)
    ode = MixODESDEScheduler(shift=3.0)
    ode.set_timesteps(sigmas=sigmas)
    sde = MixODESDEScheduler(shift=3.0, sde_type="flow_grpo", sde_window_start=STEP, sde_window_size=4)
    sde.set_timesteps(sigmas=sigmas)
    prev = sde.step(v, sde.timesteps[STEP], x, generator=g).prev_sample

    def at_step(scheduler, **kwargs):
        def run():
            scheduler._step_index = STEP
            scheduler.step(v, scheduler.timesteps[STEP], x, **kwargs)

        return run

    return [
        ("FlowMatchEulerDiscreteScheduler.step (Euler)", at_step(euler)),
        ("MixODESDEScheduler.step, ODE step", at_step(ode)),
        ("MixODESDEScheduler.step, SDE step (flow_grpo, draws noise)", at_step(sde, generator=g)),
        ("MixODESDEScheduler.step, SDE step (flow_grpo, noise given)", at_step(sde, noise=noise)),
        ("MixODESDEScheduler.step_log_prob (training recomputation)", lambda: sde.step_log_prob(v, x, prev, STEP)),
        ("reference: torch.randn of the latent alone", lambda: torch.randn(SHAPE, generator=g)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few repeats only (checks that the script runs)")
    parser.add_argument("--repeats", type=int, default=500, help="timed calls per variant (default 500)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: stable timings on a shared machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 5 if args.smoke else args.repeats
    variants = make_variants()

    for _, fn in variants:  # warm-up
        for _ in range(3 if args.smoke else 20):
            fn()
    times = {name: [] for name, _ in variants}
    for _ in range(repeats):
        for name, fn in variants:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    medians = {name: statistics.median(t) for name, t in times.items()}
    baseline = medians[variants[0][0]]
    print(
        f"Scheduler step on a {'x'.join(map(str, SHAPE))} float32 latent, median of {repeats} calls "
        f"(torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"
    )
    print()
    print("| step | median (µs) | vs Euler |")
    print("| --- | ---: | ---: |")
    for name, _ in variants:
        print(f"| {name} | {medians[name] * 1e6:.1f} | {medians[name] / baseline:.2f}x |")


if __name__ == "__main__":
    main()
