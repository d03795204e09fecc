"""The MixGRPO paper's learning results in miniature, on the toy task: equal time budgets, 3 seeds, held-out eval.

    python benchmarks/learning.py [--budget 100] [--seeds 0 1 2] [--jobs 2] [--parts tune table steps window]
    python benchmarks/run.py --suite learning            # the same, default settings

Parts (each run is one `GRPOTrainer` on the shipped toy base model, N = 25 steps, its own grid):

* ``tune``: the learning-rate search, the same for DanceGRPO-style and MixGRPO (4 rates, seed 100, selected on
  *training* prompts with fresh noise, never on the held-out set); Flash / Flash* and every ablation use their
  family's selected rate.
* ``table``: DanceGRPO-style, MixGRPO, Flash and Flash* (the paper's Table 1 rows) on the same prompts and seeds;
  final held-out reward and accuracy, seconds per iteration, NFE, and the time-to-reach ratio.
* ``steps``: the paper's figure on optimised steps: DanceGRPO training 4, 8, 14 or 24 of its 24 SDE steps against
  MixGRPO with K = 2, 4 or 8 window steps.
* ``window``: the paper's window-position ablation: a fixed K = 4 window at the start, middle or end of the
  trajectory against the progressive schedule.

Budgets: every run trains for the same time (`--budget` seconds of rollout + reward + update; evaluation is not
counted), so cheaper variants run more iterations. The clock is the worker's CPU time (`time.process_time` around
each training iteration of a 1-thread worker): on an idle core it equals the wall time, and unlike the wall time it
does not change when other processes share the machine, so runs that ran concurrently compare fairly. The held-out reward and
accuracy (`diffusers_mixgrpo.toy_world.evaluation`: held-out prompts, held-out noise, ODE) are measured at 8 equally
spaced points of the budget. Runs execute in `--jobs` single-threaded worker processes; each finished run is stored
in `<output-dir>/runs/<name>.json`, so an interrupted benchmark resumes where it stopped. `report` (run at the end,
or `--report-only`) writes `results_learning.json`, `results_learning.md` and the PNG figures.
"""

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from learning_parts import METRIC, PARTS

BENCH_DIR = Path(__file__).resolve().parent
NUM_STEPS = 25
WINDOW_SIZE = 4
GROUP_SIZE = 8
PROMPTS_PER_STEP = 4
LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3)
TUNE_SEED = 100
EVAL_POINTS = 6  # held-out evaluations per run, at equal fractions of the budget
CURVE_IMAGES_PER_PROMPT = 2  # images per held-out prompt at the intermediate points (the first 2 of the final 4)
FINAL_IMAGES_PER_PROMPT = 4  # at the base model and at the end of the budget (held-out and training prompts)


def dance_fraction(trained: int) -> float:
    """`train_timestep_fraction` that trains exactly `trained` of DanceGRPO's N - 1 = 24 SDE steps."""
    return min(1.0, (trained + 0.5) / (NUM_STEPS - 1))


def run_specs() -> dict[str, dict]:
    """Every configuration: name -> method and `GRPOConfig` overrides (plus a fixed window start where one is set)."""
    specs = {
        "dancegrpo": {"method": "dancegrpo", "family": "dancegrpo"},
        "mixgrpo": {"method": "mixgrpo", "family": "mixgrpo"},
        "flash": {"method": "flash", "family": "mixgrpo"},
        "flash_star": {"method": "flash_star", "family": "mixgrpo"},
    }
    for t in (4, 8, 24):
        specs[f"dance_T{t}"] = {
            "method": "dancegrpo",
            "family": "dancegrpo",
            "train_timestep_fraction": dance_fraction(t),
        }
    for k in (2, 8):
        specs[f"mix_K{k}"] = {"method": "mixgrpo", "family": "mixgrpo", "window_size": k}
    for name, start in (
        ("start", 0),
        ("middle", (NUM_STEPS - WINDOW_SIZE) // 2),
        ("end", NUM_STEPS - 1 - WINDOW_SIZE),
    ):
        specs[f"window_{name}"] = {"method": "mixgrpo", "family": "mixgrpo", "window_stride": 0, "fixed_start": start}
    return specs


def shift_interval(budget: float) -> int:
    """Progressive window: tau such that, at MixGRPO's measured ~1.1 s per iteration on this machine, a run moves
    the window over the first ~10 starts (the paper: tau = 25 over 300 iterations, starts 0..12)."""
    return max(2, round(budget / 1.1 / 10))


# ------------------------------------------------------------------------------------------------------ one run
def train_one(job: dict) -> dict:
    """One training run (in a worker process): trains for `budget` seconds, evaluating at fixed fractions of it."""
    import torch

    torch.set_num_threads(1)
    os.environ["TQDM_DISABLE"] = "1"
    _quiet()
    from diffusers_mixgrpo.toy_world.demo import build_toy_trainer

    spec, seed, lr, budget = job["spec"], job["seed"], job["learning_rate"], job["budget"]
    overrides = {k: v for k, v in spec.items() if k not in ("method", "family", "fixed_start")}
    overrides.update(
        num_inference_steps=NUM_STEPS,
        num_generations=GROUP_SIZE,
        sample_prompts_per_device=PROMPTS_PER_STEP,
        learning_rate=lr,
        validation_steps=0,
        report_to="none",
        window_shift_interval=job["shift_interval"],
        window_max_start=None,
    )
    if spec["method"] != "dancegrpo":
        overrides.setdefault("window_size", WINDOW_SIZE)
    out = tempfile.mkdtemp(prefix="mixgrpo-learning-")
    # The demo's trainer on 1,024 training prompts; its held-out hook never runs (validation_steps=0).
    trainer = build_toy_trainer(
        spec["method"], out, 1_000_000, seed, pipeline=_toy_pipeline(job.get("model")), **overrides
    )
    if "fixed_start" in spec:
        trainer.window.start = spec["fixed_start"]
        trainer.window.iter_in_interval = 0

    def evaluate(images_per_prompt, with_train):
        return score_sets(trainer.pipeline, job["eval_prompts"], images_per_prompt, with_train)

    # The base model's scores are the same for every run (same model, prompts and noise): computed once by the
    # parent process and passed in.
    curve = [{"iteration": 0, "train_s": 0.0, **job["base_eval"]}]
    spent, wall, iters, nfe_roll, nfe_train, window_starts = 0.0, 0.0, 0, [], [], []
    marks = [budget * (k + 1) / job["eval_points"] for k in range(job["eval_points"])]
    started = time.perf_counter()
    while marks:
        cpu = time.process_time()
        logs = trainer.train_step()
        spent += time.process_time() - cpu
        wall += logs["time/rollout"] + logs["time/reward"] + logs["time/update"]
        iters += 1
        nfe_roll.append(logs["nfe/rollout_per_image"])
        nfe_train.append(logs["nfe/train_per_image"])
        window_starts.append(int(logs["window/start"]))
        if spent >= marks[0]:
            marks.pop(0)
            last = not marks
            n = job["final_images_per_prompt"] if last else job["curve_images_per_prompt"]
            curve.append({"iteration": iters, "train_s": spent, **evaluate(n, with_train=last)})
    return {
        "name": job["name"],
        "spec": spec,
        "seed": seed,
        "learning_rate": lr,
        "budget_s": budget,
        "iterations": iters,
        "train_s": spent,  # CPU seconds of training (the budget's clock)
        "train_wall_s": wall,  # the trainer's own rollout + reward + update wall time, for reference
        "process_wall_s": time.perf_counter() - started,
        "seconds_per_iteration": spent / iters,
        "nfe_rollout_per_image": statistics.mean(nfe_roll),
        "nfe_train_per_image": statistics.mean(nfe_train),
        "window_starts": sorted(set(window_starts)),
        "shift_interval": job["shift_interval"],
        "curve": curve,
    }


def _quiet() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("diffusers", "transformers", "accelerate", "diffusers_mixgrpo"):
        logging.getLogger(name).setLevel(logging.ERROR)


# ------------------------------------------------------------------------------------------------------ scheduling
def run_jobs(jobs: list[dict], out_dir: Path, n_workers: int, log) -> list[dict]:
    """Run the jobs not stored yet, `n_workers` at a time; returns every job's result (stored ones included)."""
    runs_dir = out_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    todo = [j for j in jobs if not (runs_dir / f"{j['name']}.json").is_file()]
    log(f"{len(jobs) - len(todo)} of {len(jobs)} runs stored; running {len(todo)} on {n_workers} workers")
    if todo:
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(train_one, j): j for j in todo}
            for k, fut in enumerate(as_completed(futures), 1):
                job = futures[fut]
                result = fut.result()
                (runs_dir / f"{job['name']}.json").write_text(json.dumps(result, indent=1))
                h = result["curve"][-1]["heldout"]
                log(
                    f"[{k}/{len(todo)}] {job['name']}: {result['iterations']} it, "
                    f"{result['seconds_per_iteration']:.2f} s/it, held-out reward {h['reward']:.3f} "
                    f"accuracy {h['accuracy']:.3f}"
                )
    return [json.loads((runs_dir / f"{j['name']}.json").read_text()) for j in jobs]


def _toy_pipeline(model):
    """A `GRPOTrainingPipeline` over the toy base model (`model`: a folder, or None for the shipped weights)."""
    from diffusers_mixgrpo import GRPOTrainingPipeline
    from diffusers_mixgrpo.toy_world import TOY_MAX_SEQUENCE_LENGTH, load_toy_base_pipeline

    pipe = GRPOTrainingPipeline.from_pipe(load_toy_base_pipeline(model))
    pipe.max_sequence_length = TOY_MAX_SEQUENCE_LENGTH
    return pipe


def score_sets(pipe, n_prompts, images_per_prompt, with_train=True) -> dict:
    """Held-out (and training-prompt) scores of `pipe` at N = 25: `{"heldout": {...}, "train": {...}}`."""
    from diffusers_mixgrpo.toy_world.evaluation import (
        HELDOUT_NOISE_SEED,
        TRAIN_EVAL_NOISE_SEED,
        evaluate_alignment,
        heldout_eval_prompts,
        train_eval_prompts,
    )

    kw = dict(num_inference_steps=NUM_STEPS, images_per_prompt=images_per_prompt)
    point = {
        "heldout": evaluate_alignment(pipe, heldout_eval_prompts()[:n_prompts], noise_seed=HELDOUT_NOISE_SEED, **kw)[0]
    }
    if with_train:
        point["train"] = evaluate_alignment(
            pipe, train_eval_prompts()[:n_prompts], noise_seed=TRAIN_EVAL_NOISE_SEED, **kw
        )[0]
    out = {k: v.to_dict() for k, v in point.items()}
    # per image, prompt-major: the report pairs the final evaluation with the base model's (same prompts and noise)
    out["heldout"]["per_image"] = point["heldout"].per_image[METRIC].tolist()
    return out


def base_evaluation(model, n_prompts, images_per_prompt) -> dict:
    """The base model's held-out and training-prompt scores (the curves' first point, shared by every run)."""
    import torch

    torch.set_num_threads(1)
    _quiet()
    return score_sets(_toy_pipeline(model), n_prompts, images_per_prompt)


def job_name(config: str, seed: int, lr: float) -> str:
    return f"{config}__seed{seed}__lr{lr:g}"


def select_learning_rates(tune_runs: list[dict]) -> dict[str, float]:
    """Per family, the rate with the best final trained reward on *training* prompts (fresh noise), never held-out."""
    best = {}
    for run in tune_runs:
        fam = run["spec"]["family"]
        score = run["curve"][-1]["train"][METRIC]
        if fam not in best or score > best[fam][1]:
            best[fam] = (run["learning_rate"], score)
    return {fam: lr for fam, (lr, _) in best.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=100.0, help="training seconds per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (1 torch thread each)")
    parser.add_argument("--parts", nargs="+", default=["table", "steps", "window"], choices=list(PARTS))
    parser.add_argument("--no-tune", action="store_true", help="skip the learning-rate search (use --lr)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate when --no-tune")
    parser.add_argument("--toy-model", default=None, help="toy base pipeline folder (default: the shipped weights)")
    parser.add_argument("--output-dir", default=str(BENCH_DIR / "results" / "learning"))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--smoke", action="store_true", help="CI check: 1 seed, 2 s budget, 4 prompts, no search, table only"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.budget, args.seeds, args.parts, args.no_tune = 2.0, [0], ["table"], True

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    specs = run_specs()
    tau = shift_interval(args.budget)
    n_eval = 4 if args.smoke else None
    common = {
        "budget": args.budget,
        "shift_interval": tau,
        "model": args.toy_model,
        "eval_prompts": n_eval,
        "eval_points": 2 if args.smoke else EVAL_POINTS,
        "curve_images_per_prompt": 1 if args.smoke else CURVE_IMAGES_PER_PROMPT,
        "final_images_per_prompt": 1 if args.smoke else FINAL_IMAGES_PER_PROMPT,
    }
    if not args.report_only:
        common["base_eval"] = base_evaluation(args.toy_model, n_eval, common["final_images_per_prompt"])
        log(f"base model: {common['base_eval']['heldout']}")

    def stored(jobs):  # --report-only: the runs stored so far (an interrupted benchmark reports what it has)
        files = [out_dir / "runs" / f"{j['name']}.json" for j in jobs]
        return [json.loads(f.read_text()) for f in files if f.is_file()]

    run = stored if args.report_only else (lambda jobs: run_jobs(jobs, out_dir, args.jobs, log))

    if args.no_tune:
        rates, tune_runs = {"dancegrpo": args.lr, "mixgrpo": args.lr}, []
    else:
        tune_jobs = [
            {"name": job_name(c, TUNE_SEED, lr), "spec": specs[c], "seed": TUNE_SEED, "learning_rate": lr, **common}
            for c in ("dancegrpo", "mixgrpo")
            for lr in LEARNING_RATES
        ]
        tune_runs = run(tune_jobs)
        rates = select_learning_rates(tune_runs)
    log(f"learning rates: {rates}")

    configs = list(dict.fromkeys(c for p in args.parts for c in PARTS[p]))
    jobs = [
        {
            "name": job_name(c, s, rates[specs[c]["family"]]),
            "spec": specs[c],
            "seed": s,
            "learning_rate": rates[specs[c]["family"]],
            **common,
        }
        for s in args.seeds
        for c in configs
    ]
    runs = run(jobs)
    results = {
        "command": "python benchmarks/learning.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": _machine(),
        "settings": {
            "num_inference_steps": NUM_STEPS,
            "window_size": WINDOW_SIZE,
            "group_size": GROUP_SIZE,
            "prompts_per_step": PROMPTS_PER_STEP,
            "budget_s": args.budget,
            "shift_interval": tau,
            "seeds": args.seeds,
            "learning_rates_searched": list(LEARNING_RATES),
            "learning_rates": rates,
            "eval_points": EVAL_POINTS,
            "final_images_per_prompt": common["final_images_per_prompt"],
        },
        "tune": tune_runs,
        "runs": runs,
        "parts": args.parts,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    from learning_report import write_learning_report

    write_learning_report(results, out_dir)
    log(f"done -> {out_dir}")
    return results


def _machine() -> dict:
    import torch

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "torch": torch.__version__, "threads_per_run": 1}


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH_DIR))
    main()
