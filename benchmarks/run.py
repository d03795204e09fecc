"""One benchmark run of DanceGRPO-style, MixGRPO, MixGRPO-Flash and Flash* on the same model and prompts.

Measures, in one process (variants interleaved round-robin so they share the machine's state):

- cost per training iteration on tiny FLUX: sampling / training NFE (pipeline counter and trainer logs, next to the
  expected values of the algorithm notes, section 7), wall time split into rollout / reward / update, with prefix
  sharing off and on, with the window at w = 0 and at the middle of a 300-iteration progressive run;
- peak memory per variant (one subprocess each: `resource.getrusage` max-RSS delta over the iterations);
- rollout throughput (images/s) and NFE per rollout of `GRPOTrainingPipeline.rollout` alone, prefix sharing off/on;
- scaling: the same iteration at two resolutions and two group sizes;
- the toy task: held-out reward against wall time and iterations, several seeds (needs the toy base model).

Writes `results.json`, `results.md` and PNG plots to `--output-dir`. Ratios are medians over repeats, relative to
DanceGRPO-style measured in the same run. Usage:

    python benchmarks/run.py --suite quick|full|smoke [--output-dir benchmarks/results] [--seeds 0 1 2]
    python benchmarks/run.py --suite learning [learning.py options]   # the learning results, see learning.py
"""

import argparse
import contextlib
import copy
import io
import json
import logging
import os
import platform
import resource
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
from costs import VARIANTS  # noqa: E402

SUITES = {
    # 1 iteration each, tiny sizes: CI checks that the script runs and the NFE counts are right (< ~60 s).
    "smoke": {
        "num_steps": 25,
        "window_size": 4,
        "group_size": 2,
        "num_prompts": 1,
        "resolution": 16,
        "repeats": 1,
        "warmup": 0,
        "memory": True,
        "memory_iterations": 1,
        "rollout_repeats": 1,
        "scaling": None,
        "toy": {"iterations": 1, "eval_every": 1, "eval_prompts": 2, "group_size": 2, "num_prompts": 1, "seeds": 1},
    },
    "quick": {
        "num_steps": 25,
        "window_size": 4,
        "group_size": 8,
        "num_prompts": 1,
        "resolution": 32,
        "repeats": 3,
        "warmup": 1,
        "memory": True,
        "memory_iterations": 2,
        "rollout_repeats": 3,
        "scaling": {"sizes": [(32, 4), (64, 4), (32, 8)], "repeats": 2, "variants": ["dancegrpo", "mixgrpo", "flash"]},
        "toy": {"iterations": 20, "eval_every": 5, "eval_prompts": 16, "group_size": 4, "num_prompts": 1, "seeds": 2},
    },
    "full": {
        "num_steps": 25,
        "window_size": 4,
        "group_size": 12,
        "num_prompts": 1,
        "resolution": 32,
        "repeats": 7,
        "warmup": 1,
        "memory": True,
        "memory_iterations": 3,
        "rollout_repeats": 5,
        "scaling": {
            "sizes": [(32, 4), (64, 4), (32, 8), (64, 8)],
            "repeats": 3,
            "variants": ["dancegrpo", "mixgrpo", "flash", "flash_star"],
        },
        "toy": {"iterations": 60, "eval_every": 10, "eval_prompts": 32, "group_size": 6, "num_prompts": 2, "seeds": 3},
    },
}


# ----------------------------------------------------------------------------------------------------------- setup
def quiet_libraries() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("diffusers", "transformers", "accelerate", "diffusers_mixgrpo"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()


def machine_info(threads: int) -> dict:
    import diffusers
    import torch

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "torch_threads": threads,
        "loadavg_start": _loadavg(),
    }


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def tiny_flux(seed: int = 0):
    from diffusers_mixgrpo.toy_world import VOCABULARY
    from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline

    return build_tiny_flux_pipeline(seed=seed, vocab=VOCABULARY)


# Set by --gradient-checkpointing: the paper trains with it (the backward then re-runs the forward).
GRADIENT_CHECKPOINTING = False


def make_trainer(
    method: str,
    stock,
    *,
    num_steps: int,
    window_size: int,
    group_size: int,
    num_prompts: int,
    resolution: int,
    share_prefix: bool,
    prompts: list,
    seed: int = 0,
    learning_rate: float = 1e-4,
    shift_interval=None,
    max_sequence_length=None,
    output_dir=None,
    copy_stock: bool = True,
):
    """A `GRPOTrainer` of `method` on a private copy of `stock` (LoRA is added in place, so never share one)."""
    from diffusers_mixgrpo import GRPOTrainingPipeline
    from diffusers_mixgrpo.training.config import GRPOConfig
    from diffusers_mixgrpo.training.trainer import GRPOTrainer

    values = {
        "output_dir": output_dir or tempfile.mkdtemp(prefix="mixgrpo-bench-"),
        "method": method,
        "num_inference_steps": num_steps,
        "num_generations": group_size,
        "sample_prompts_per_device": num_prompts,
        "resolution": resolution,
        "sample_share_prefix": share_prefix,
        "learning_rate": learning_rate,
        "report_to": "none",
        "lora_rank": 8,
        "lora_alpha": 8,
        "gradient_accumulation_steps": 1,
        "checkpointing_steps": 0,
        "validation_steps": 0,
        "max_train_steps": 10_000,
        "seed": seed,
        "gradient_checkpointing": GRADIENT_CHECKPOINTING,
    }
    if method != "dancegrpo":
        values["window_size"] = window_size
    if shift_interval is not None:
        values["window_shift_interval"] = shift_interval
    pipe = GRPOTrainingPipeline.from_pipe(copy.deepcopy(stock) if copy_stock else stock)
    pipe.max_sequence_length = max_sequence_length
    return GRPOTrainer(GRPOConfig(**values), pipe, rewards={"toy_world": 1.0}, train_prompts=prompts)


def set_window(trainer, start: int) -> None:
    """Put the trainer's sliding window at `start` (a benchmark shortcut to a mid-run position)."""
    trainer.window.start = min(start, trainer.window.max_start)
    trainer.window.iter_in_interval = 0


def timed_step(trainer, start: int) -> dict:
    """One iteration with the window at `start`: the trainer's logs plus the NFE read from the pipeline's counter."""
    set_window(trainer, start)
    pipe, cfg = trainer.pipeline, trainer.config
    before = pipe.nfe_counter
    logs = trainer.train_step()
    total = pipe.nfe_counter - before
    images = cfg.rollouts_per_device
    sampling = logs["nfe/rollout_per_image"] * images
    return {
        "window_start": int(logs["window/start"]),
        "window_size": int(logs["window/size"]),
        "time_rollout": logs["time/rollout"],
        "time_reward": logs["time/reward"],
        "time_update": logs["time/update"],
        "time_total": logs["time/rollout"] + logs["time/reward"] + logs["time/update"],
        "nfe_sampling_per_rollout": logs["nfe/rollout_per_image"],
        "nfe_training_per_rollout_logged": logs["nfe/train_per_image"],
        "nfe_sampling_per_iteration": sampling,
        "nfe_training_per_iteration": total - sampling,  # the log_prob forwards of the update, each with a backward
        "reward": logs.get("reward/mean"),
    }


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(samples: list[dict]) -> dict:
    keys = [k for k in samples[0] if isinstance(samples[0][k], (int, float)) or samples[0][k] is None]
    out = {k: median([s[k] for s in samples]) for k in keys}
    out["repeats"] = len(samples)
    out["time_total_all"] = [s["time_total"] for s in samples]
    return out


# -------------------------------------------------------------------------------------------------- 1. iteration cost
def cost_combos(num_steps: int) -> list[dict]:
    """Variant x prefix sharing x window position (w = 0 and mid-run; Flash* and DanceGRPO never leave w = 0)."""
    combos = []
    for method in VARIANTS:
        starts = sorted({0, costs.mid_run_start(method, num_steps)})
        for start in starts:
            for share in (False, True):
                combos.append({"method": method, "share_prefix": share, "start": start})
    return combos


def measure_costs(cfg: dict, prompts: list, log) -> dict:
    stock = tiny_flux()
    common = {k: cfg[k] for k in ("num_steps", "window_size", "group_size", "num_prompts", "resolution")}
    combos = cost_combos(cfg["num_steps"])
    trainers = {}
    for c in combos:
        key = (c["method"], c["share_prefix"])
        if key not in trainers:
            trainers[key] = make_trainer(c["method"], stock, share_prefix=c["share_prefix"], prompts=prompts, **common)
    samples = {i: [] for i in range(len(combos))}
    rounds = cfg["warmup"] + cfg["repeats"]
    for r in range(rounds):
        for i, c in enumerate(combos):
            result = timed_step(trainers[(c["method"], c["share_prefix"])], c["start"])
            if r >= cfg["warmup"]:
                samples[i].append(result)
        log(f"  cost round {r + 1}/{rounds} done (load {_loadavg()})")
    rows = []
    for i, c in enumerate(combos):
        row = {**c, **summarise(samples[i])}
        exp = costs.expected_nfe(
            c["method"],
            cfg["num_steps"],
            cfg["window_size"],
            c["start"],
            cfg["group_size"],
            cfg["num_prompts"],
            c["share_prefix"],
        )
        row["expected"] = {
            "window": list(exp.window),
            "steps_per_rollout": exp.steps_per_rollout,
            "nfe_sampling_per_rollout": exp.sampling_per_rollout,
            "nfe_training_per_rollout": exp.training_per_rollout,
            "nfe_sampling_per_iteration": exp.sampling_per_iteration,
            "nfe_training_per_iteration": exp.training_per_iteration,
        }
        rows.append(row)
    base = next(r for r in rows if r["method"] == "dancegrpo" and not r["share_prefix"])
    # Forward+backward cost in forward units, from DanceGRPO's own measurement (all its steps are the same shape).
    fwd = base["time_rollout"] / base["nfe_sampling_per_iteration"]
    fwd_bwd = base["time_update"] / base["nfe_training_per_iteration"]
    backward_factor = fwd_bwd / fwd
    base_units = costs.cost_units(
        costs.expected_nfe(
            "dancegrpo", cfg["num_steps"], cfg["window_size"], 0, cfg["group_size"], cfg["num_prompts"]
        ),
        backward_factor,
    )
    for row in rows:
        for phase in ("rollout", "reward", "update", "total"):
            row[f"ratio_{phase}"] = row[f"time_{phase}"] / base["time_total"]
        # ratio of the totals, per repeat pair (same round), then the median: robust to a slow round
        pairs = [a / b for a, b in zip(row["time_total_all"], base["time_total_all"])]
        row["ratio_total_paired"] = statistics.median(pairs)
        exp = costs.expected_nfe(
            row["method"],
            cfg["num_steps"],
            cfg["window_size"],
            row["start"],
            cfg["group_size"],
            cfg["num_prompts"],
            row["share_prefix"],
        )
        row["expected_ratio"] = costs.cost_units(exp, backward_factor) / base_units
        row["expected_ratio_3x"] = costs.cost_units(exp, 3.0) / costs.cost_units(
            costs.expected_nfe(
                "dancegrpo", cfg["num_steps"], cfg["window_size"], 0, cfg["group_size"], cfg["num_prompts"]
            ),
            3.0,
        )
    schedule = {}
    for method in VARIANTS:
        for share in (False, True):
            ratio = costs.schedule_average_cost(
                method, cfg["num_steps"], cfg["window_size"], cfg["group_size"], share, 3.0
            ) / costs.schedule_average_cost(
                "dancegrpo", cfg["num_steps"], cfg["window_size"], cfg["group_size"], False, 3.0
            )
            schedule[f"{method}/{'share' if share else 'noshare'}"] = ratio
    return {
        "rows": rows,
        "backward_factor_measured": backward_factor,
        "expected_schedule_average_ratio_3x": schedule,
        "mid_run_starts": {m: costs.mid_run_start(m, cfg["num_steps"]) for m in VARIANTS},
    }


# ------------------------------------------------------------------------------------------------------- 2. memory
def _proc_status_kib(field: str):
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(spec: dict) -> dict:
    """In a fresh process: build the trainer, then the peak RSS of `iterations` iterations above the RSS before them.

    Method: on Linux the peak-RSS mark (VmHWM) is reset to the current RSS after setup (`/proc/self/clear_refs`), so
    transient setup peaks (model construction) do not hide the iteration's own peak; elsewhere the delta of
    `resource.getrusage(RUSAGE_SELF).ru_maxrss` (a lower bound when setup peaked higher). One variant per process, so
    no variant reuses memory another one freed.
    """
    import gc

    import torch

    quiet_libraries()
    torch.set_num_threads(spec["threads"])
    from diffusers_mixgrpo.toy_world import train_prompts

    stock = tiny_flux()
    trainer = make_trainer(
        spec["method"],
        stock,
        share_prefix=spec["share_prefix"],
        prompts=train_prompts(16, seed=0),
        copy_stock=False,
        **{k: spec[k] for k in ("num_steps", "window_size", "group_size", "num_prompts", "resolution")},
    )
    gc.collect()
    kib = 1024
    rusage_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib  # KiB on Linux
    rss_before = _proc_status_kib("VmRSS")
    hwm = rss_before is not None and _reset_peak_rss()
    for _ in range(spec["iterations"]):
        timed_step(trainer, spec["start"])
    rusage_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib
    if hwm:
        peak = _proc_status_kib("VmHWM") * kib
        return {
            "method": "VmHWM reset",
            "peak_rss_bytes": rusage_after,
            "setup_rss_bytes": rss_before * kib,
            "iteration_rss_delta_bytes": peak - rss_before * kib,
        }
    return {
        "method": "ru_maxrss delta",
        "peak_rss_bytes": rusage_after,
        "setup_rss_bytes": rusage_before,
        "iteration_rss_delta_bytes": rusage_after - rusage_before,
    }


def measure_memory(cfg: dict, threads: int, log) -> dict:
    out = {}
    for method in VARIANTS:
        spec = {
            "method": method,
            "share_prefix": True,
            "start": 0,
            "iterations": cfg["memory_iterations"],
            "threads": threads,
            **{k: cfg[k] for k in ("num_steps", "window_size", "group_size", "num_prompts", "resolution")},
        }
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"memory child for {method} failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
        out[method] = json.loads(lines[-1])
        log(f"  memory {method}: +{out[method]['iteration_rss_delta_bytes'] / 2**20:.1f} MiB")
    return out


# ------------------------------------------------------------------------------------------- 3. rollout throughput
def measure_rollouts(cfg: dict, prompts: list, log) -> dict:
    """`GRPOTrainingPipeline.rollout` alone (no LoRA, no training), each variant's scheduler, sharing off/on."""
    from diffusers_mixgrpo import GRPOTrainingPipeline
    from diffusers_mixgrpo.training.config import GRPOConfig

    stock = tiny_flux()
    pipes = {}
    for method in VARIANTS:
        c = GRPOConfig(method=method, num_inference_steps=cfg["num_steps"], report_to="none")
        pipe = GRPOTrainingPipeline.from_pipe(copy.deepcopy(stock))
        pipe.scheduler = type(pipe.scheduler).from_config(
            pipe.scheduler.config,
            sde_type=c.sde_type,
            eta=c.eta,
            shift=c.shift,
            use_dynamic_shifting=False,
            tail_solver=c.tail_solver,
            tail_solver_order=c.tail_solver_order,
            tail_ratio=c.tail_ratio,
        )
        pipe.set_progress_bar_config(disable=True)
        pipes[method] = (pipe, c)
    combos = cost_combos(cfg["num_steps"])
    p, g = cfg["num_prompts"], cfg["group_size"]
    samples = {i: [] for i in range(len(combos))}
    rounds = cfg["warmup"] + cfg["rollout_repeats"]
    for r in range(rounds):
        for i, combo in enumerate(combos):
            pipe, c = pipes[combo["method"]]
            window = costs.window_of(combo["method"], cfg["num_steps"], cfg["window_size"], combo["start"])
            t0 = time.perf_counter()
            batch = pipe.rollout(
                prompts[:p],
                num_generations=g,
                num_inference_steps=cfg["num_steps"],
                sde_window=window,
                height=cfg["resolution"],
                width=cfg["resolution"],
                share_prefix=combo["share_prefix"],
                generator=torch_generator(r),
            )
            elapsed = time.perf_counter() - t0
            if r >= cfg["warmup"]:
                samples[i].append({"seconds": elapsed, "nfe": batch.nfe, "images": batch.batch_size})
    rows = []
    for i, combo in enumerate(combos):
        secs = median([s["seconds"] for s in samples[i]])
        nfe, images = samples[i][0]["nfe"], samples[i][0]["images"]
        exp = costs.expected_nfe(
            combo["method"], cfg["num_steps"], cfg["window_size"], combo["start"], g, p, combo["share_prefix"]
        )
        rows.append(
            {
                **combo,
                "seconds": secs,
                "images_per_s": images / secs,
                "nfe_per_rollout": nfe / images,
                "expected_nfe_per_rollout": exp.sampling_per_rollout,
                "repeats": len(samples[i]),
            }
        )
    base = next(r for r in rows if r["method"] == "dancegrpo" and not r["share_prefix"])
    for row in rows:
        row["throughput_vs_dancegrpo"] = row["images_per_s"] / base["images_per_s"]
    log("  rollout throughput done")
    return {"rows": rows}


def torch_generator(seed: int):
    import torch

    return torch.Generator().manual_seed(1234 + seed)


# -------------------------------------------------------------------------------------------------------- 4. scaling
def measure_scaling(cfg: dict, prompts: list, log) -> dict:
    """The same iteration (w = 0, sharing on) at two resolutions and two group sizes; times vs the smallest size."""
    sc = cfg["scaling"]
    stock = tiny_flux()
    runs = []
    for res, g in sc["sizes"]:
        for method in sc["variants"]:
            trainer = make_trainer(
                method,
                stock,
                num_steps=cfg["num_steps"],
                window_size=cfg["window_size"],
                group_size=g,
                num_prompts=1,
                resolution=res,
                share_prefix=True,
                prompts=prompts,
            )
            runs.append({"resolution": res, "group_size": g, "method": method, "trainer": trainer, "samples": []})
    for r in range(1 + sc["repeats"]):
        for run in runs:
            result = timed_step(run["trainer"], 0)
            if r >= 1:
                run["samples"].append(result)
    rows = []
    for run in runs:
        s = summarise(run["samples"])
        rows.append(
            {
                "resolution": run["resolution"],
                "group_size": run["group_size"],
                "method": run["method"],
                "tokens": (run["resolution"] // 4) ** 2,  # tiny FLUX: VAE /2, then 2x2 packing
                "time_rollout": s["time_rollout"],
                "time_update": s["time_update"],
                "time_total": s["time_total"],
                "nfe_sampling_per_iteration": s["nfe_sampling_per_iteration"],
                "nfe_training_per_iteration": s["nfe_training_per_iteration"],
            }
        )
    for row in rows:
        base = next(
            r
            for r in rows
            if r["method"] == "dancegrpo"
            and r["resolution"] == row["resolution"]
            and r["group_size"] == row["group_size"]
        )
        row["ratio_vs_dancegrpo"] = row["time_total"] / base["time_total"]
        small = next(
            r
            for r in rows
            if r["method"] == row["method"]
            and r["resolution"] == sc["sizes"][0][0]
            and r["group_size"] == sc["sizes"][0][1]
        )
        row["time_vs_smallest"] = row["time_total"] / small["time_total"]
        row["nfe_vs_smallest"] = (row["nfe_sampling_per_iteration"] + 3 * row["nfe_training_per_iteration"]) / (
            small["nfe_sampling_per_iteration"] + 3 * small["nfe_training_per_iteration"]
        )
    log("  scaling done")
    return {"rows": rows}


# ------------------------------------------------------------------------------------------------------ 5. toy task
def run_toy(cfg: dict, seeds: list, log, model_path=None) -> dict:
    """GRPO on the toy task: every variant and seed stepped round-robin; held-out reward every `eval_every` steps."""
    from diffusers_mixgrpo.toy_world import TOY_MAX_SEQUENCE_LENGTH, heldout_prompts, load_toy_base_pipeline
    from diffusers_mixgrpo.toy_world import train_prompts as toy_train_prompts

    try:
        stock = load_toy_base_pipeline(model_path, rebuild_if_missing=False)
    except FileNotFoundError as err:
        return {"skipped": f"toy base model not available: {err}"}
    tc = cfg["toy"]
    n_iter = tc["iterations"]
    # Scale the shift interval so a short run visits the window starts a 300-iteration paper run visits.
    scale = n_iter / costs.PAPER_RUN_ITERATIONS
    evals = heldout_prompts()
    step = max(1, len(evals) // tc["eval_prompts"])
    evals = evals[::step][: tc["eval_prompts"]]
    runs = []
    for seed in seeds:
        prompts = toy_train_prompts(64, seed=seed)
        for method in VARIANTS:
            # Non-DanceGRPO variants run more iterations in the same time (up to ~1 / their cost ratio).
            tau = max(1, round(costs.SHIFT_INTERVAL[method] * scale * (1 if method == "dancegrpo" else 2)))
            trainer = make_trainer(
                method,
                stock,
                num_steps=cfg["num_steps"],
                window_size=cfg["window_size"],
                group_size=tc["group_size"],
                num_prompts=tc["num_prompts"],
                resolution=32,
                share_prefix=True,
                prompts=prompts,
                seed=seed,
                learning_rate=tc.get("learning_rate", 1e-3),
                shift_interval=tau,
                max_sequence_length=TOY_MAX_SEQUENCE_LENGTH,
            )
            runs.append({"method": method, "seed": seed, "trainer": trainer, "wall": 0.0, "curve": [], "iters": []})

    def evaluate(run):
        reward = run["trainer"].evaluate(evals, num_images_per_prompt=1, seed=0).reward
        run["curve"].append({"iteration": run["done"], "wall_s": run["wall"], "heldout_reward": reward})

    def step(run):
        logs = run["trainer"].train_step()
        spent = logs["time/rollout"] + logs["time/reward"] + logs["time/update"]
        run["wall"] += spent
        run["done"] += 1
        run["iters"].append(
            {
                "iteration": run["done"],
                "seconds": spent,
                "train_reward": logs.get("reward/mean"),
                "window_start": logs["window/start"],
            }
        )

    for run in runs:
        run["done"] = 0
        evaluate(run)
    # Equal wall-time budgets: DanceGRPO runs `iterations` steps; every other variant of the same seed steps until
    # its own wall time catches up with DanceGRPO's, so the curves share a time axis and the cheap variants get
    # more iterations, as they would in a run with a fixed time budget.
    for it in range(1, n_iter + 1):
        for seed in seeds:
            group = [r for r in runs if r["seed"] == seed]
            dance = next(r for r in group if r["method"] == "dancegrpo")
            step(dance)
            for run in group:
                while run is not dance and run["wall"] < dance["wall"]:
                    step(run)
        if it % tc["eval_every"] == 0 or it == n_iter:
            for run in runs:
                evaluate(run)
        if it % max(1, n_iter // 4) == 0:
            log(f"  toy: DanceGRPO iteration {it}/{n_iter} (load {_loadavg()})")
    out_runs = [{k: v for k, v in run.items() if k != "trainer"} for run in runs]
    return {
        "iterations": n_iter,
        "seeds": list(seeds),
        "eval_prompts": evals,
        "group_size": tc["group_size"],
        "num_prompts": tc["num_prompts"],
        "learning_rate": tc.get("learning_rate", 1e-3),
        "shift_intervals": {r["method"]: r["trainer"].config.window_shift_interval for r in runs},
        "runs": out_runs,
        "summary": summarise_toy(out_runs),
    }


def summarise_toy(runs: list) -> dict:
    """Seed-mean curves per variant, and when each variant first reaches DanceGRPO's final held-out reward."""
    by_method = {}
    for method in VARIANTS:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        points = list(zip(*[r["curve"] for r in mine]))
        curve = [
            {
                "iteration": statistics.mean(p["iteration"] for p in pts),
                "wall_s": statistics.mean(p["wall_s"] for p in pts),
                "heldout_reward": statistics.mean(p["heldout_reward"] for p in pts),
            }
            for pts in points
        ]
        by_method[method] = {"curve": curve, "total_wall_s": curve[-1]["wall_s"], "final": curve[-1]["heldout_reward"]}
    base = by_method.get("dancegrpo")
    # The target only means something when DanceGRPO improved on the base model (else it is reached at time 0).
    if base and base["final"] > base["curve"][0]["heldout_reward"]:
        target = base["final"]
        for info in by_method.values():
            hit = next((p for p in info["curve"] if p["heldout_reward"] >= target), None)
            info["target"] = target
            info["wall_to_target_s"] = hit["wall_s"] if hit else None
            info["iterations_to_target"] = hit["iteration"] if hit else None
            info["wall_to_target_vs_dance_total"] = hit["wall_s"] / base["total_wall_s"] if hit else None
            info["wall_per_iteration_vs_dance"] = info["total_wall_s"] / base["total_wall_s"]
    return by_method


# ------------------------------------------------------------------------------------------------------------ main
def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--suite" in argv and argv[argv.index("--suite") + 1 :][:1] == ["learning"]:
        import learning

        i = argv.index("--suite")
        return learning.main(argv[:i] + argv[i + 2 :])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=[*sorted(SUITES), "learning"], default="quick")
    parser.add_argument("--output-dir", default=None, help="default: benchmarks/results/<suite>")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="toy-task seeds (default: 0..k-1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable on a shared box)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["costs", "memory", "rollouts", "scaling", "toy"])
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="train with gradient checkpointing (the paper's setting)"
    )
    parser.add_argument("--toy-model", default=None, help="toy base pipeline folder (default: the shipped weights)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_child is not None:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return {}

    import torch

    quiet_libraries()
    torch.set_num_threads(args.threads)
    global GRADIENT_CHECKPOINTING
    GRADIENT_CHECKPOINTING = args.gradient_checkpointing
    from diffusers_mixgrpo.toy_world import train_prompts

    cfg = SUITES[args.suite]
    seeds = args.seeds if args.seeds is not None else list(range(cfg["toy"]["seeds"]))
    out_dir = Path(args.output_dir or BENCH_DIR / "results" / args.suite)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    results = {
        "suite": args.suite,
        "command": "python benchmarks/run.py " + " ".join(argv),
        "settings": {k: v for k, v in cfg.items()},
        "machine": machine_info(args.threads),
        "sections_seconds": {},
    }
    prompts = train_prompts(16, seed=0)
    sections = [
        ("costs", lambda: measure_costs(cfg, prompts, log)),
        ("memory", lambda: measure_memory(cfg, args.threads, log) if cfg["memory"] else {"skipped": "suite"}),
        ("rollouts", lambda: measure_rollouts(cfg, prompts, log)),
        ("scaling", lambda: measure_scaling(cfg, prompts, log) if cfg["scaling"] else {"skipped": "suite"}),
        ("toy", lambda: run_toy(cfg, seeds, log, args.toy_model)),
    ]
    for name, fn in sections:
        if name in args.skip:
            results[name] = {"skipped": "--skip"}
            continue
        log(f"{name} ...")
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # tqdm / library chatter
            results[name] = fn()
        results["sections_seconds"][name] = round(time.perf_counter() - t0, 1)
    results["machine"]["loadavg_end"] = _loadavg()
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)

    from report import write_report

    write_report(results, out_dir, make_plots=not args.no_plots)
    log(f"done in {results['total_seconds']} s -> {out_dir}")
    return results


if __name__ == "__main__":
    main()
