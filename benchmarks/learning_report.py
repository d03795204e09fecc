"""Tables and figures of `benchmarks/learning.py`: results_learning.json / .md and the PNGs, from the stored runs."""

import json
import random
import statistics
from pathlib import Path

from learning_parts import LABELS, METRIC, PAPER_TABLE, PARTS, STEPS_DANCE, STEPS_MIX

#: `METRIC` is the trained reward's field in the evaluation (`ToyAlignmentScores.preference`: the toy preference score
#: the demo and every run train on); "accuracy" is the prompt-following monitor, "reward" the toy-world score.
METRICS = (METRIC, "accuracy", "reward")
BOOTSTRAP_SAMPLES = 10_000


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(mean, std, digits=3):
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


#: A per-seed time-to-reach entry where that seed's DanceGRPO run gained less than 5 SEs (nothing to reach).
TARGET_TOO_WEAK = "DanceGRPO gain < 5 SE"


def bootstrap_interval(values, level: float = 0.9, seed: int = 0):
    """Percentile bootstrap interval of the mean of `values` (resampling the seeds); None unless all are numbers."""
    if not values or any(not isinstance(v, (int, float)) for v in values):
        return None
    rng = random.Random(seed)
    means = sorted(statistics.mean(rng.choices(values, k=len(values))) for _ in range(BOOTSTRAP_SAMPLES))
    lo, hi = (1 - level) / 2, (1 + level) / 2
    return means[int(lo * (BOOTSTRAP_SAMPLES - 1))], means[int(hi * (BOOTSTRAP_SAMPLES - 1))]


def paired_gain_se(base: dict, final: dict, images_per_prompt: int):
    """Standard error of the held-out gain from `base` to `final` (same prompts and noise; prompts as the units)."""
    from diffusers_mixgrpo.toy_world.evaluation import clustered_mean_and_se

    a, b = base.get("per_image"), final.get("per_image")
    if not a or not b or len(a) != len(b) or len(a) % images_per_prompt or len(a) == images_per_prompt:
        return None
    diff = [y - x for x, y in zip(a, b)]
    return clustered_mean_and_se(diff, [i // images_per_prompt for i in range(len(diff))])[1]


def exceeds_two_std(a: tuple, b: tuple) -> bool:
    """Whether two (mean, std) figures differ by more than 2 standard deviations of their difference."""
    return abs(a[0] - b[0]) > 2 * (a[1] ** 2 + b[1] ** 2) ** 0.5


def first_crossing(curve: list[dict], target: float, key=("heldout", METRIC)):
    """Wall time at which `curve` first reaches `target` (linear between evaluations); None if it never does."""
    prev = None
    for point in curve:
        value = point[key[0]][key[1]]
        if value >= target:
            if prev is None:
                return 0.0
            (t0, v0), t1 = prev, point["train_s"]
            return t0 + (t1 - t0) * (target - v0) / (value - v0) if value > v0 else t1
        prev = (point["train_s"], value)
    return None


def mean_curve(runs: list[dict]) -> list[dict]:
    """Seed-mean curve (evaluation k of every run averaged; the runs share the budget's evaluation points)."""
    n = min(len(r["curve"]) for r in runs)
    out = []
    for k in range(n):
        pts = [r["curve"][k] for r in runs]
        out.append(
            {
                "train_s": statistics.mean(p["train_s"] for p in pts),
                "iteration": statistics.mean(p["iteration"] for p in pts),
                "heldout": {m: statistics.mean(p["heldout"][m] for p in pts) for m in METRICS},
                "heldout_std": {
                    m: (statistics.stdev(p["heldout"][m] for p in pts) if len(pts) > 1 else 0.0) for m in METRICS
                },
            }
        )
    return out


def summarise(results: dict) -> dict:
    runs = results["runs"]
    by_config: dict[str, list[dict]] = {}
    for r in runs:
        by_config.setdefault(r["name"].split("__")[0], []).append(r)
    summary = {}
    for name, rs in by_config.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        final = [r["curve"][-1] for r in rs]
        ipp = results["settings"].get("final_images_per_prompt", 4)
        gain_se = [paired_gain_se(r["curve"][0]["heldout"], f["heldout"], ipp) for r, f in zip(rs, final)]
        summary[name] = {
            "seeds": [r["seed"] for r in rs],
            "base_heldout_reward": _mean_std([r["curve"][0]["heldout"][METRIC] for r in rs])[0],
            "base_heldout_accuracy": _mean_std([r["curve"][0]["heldout"]["accuracy"] for r in rs])[0],
            "heldout_reward": _mean_std([f["heldout"][METRIC] for f in final]),
            "heldout_accuracy": _mean_std([f["heldout"]["accuracy"] for f in final]),
            "heldout_gain_se": _mean_std(gain_se)[0],
            "train_reward": _mean_std([f["train"][METRIC] for f in final]),
            "train_accuracy": _mean_std([f["train"]["accuracy"] for f in final]),
            "per_seed_heldout_reward": [f["heldout"][METRIC] for f in final],
            "per_seed_heldout_gain_se": gain_se,
            "per_seed_heldout_accuracy": [f["heldout"]["accuracy"] for f in final],
            "seconds_per_iteration": _mean_std([r["seconds_per_iteration"] for r in rs]),
            "iterations": _mean_std([r["iterations"] for r in rs]),
            "nfe_rollout_per_image": statistics.mean(r["nfe_rollout_per_image"] for r in rs),
            "nfe_train_per_image": statistics.mean(r["nfe_train_per_image"] for r in rs),
            "learning_rate": rs[0]["learning_rate"],
            "curve": mean_curve(rs),
        }
    dance = summary.get("dancegrpo")
    if dance:
        dance_runs = {r["seed"]: r for r in by_config["dancegrpo"]}
        target = dance["heldout_reward"][0]
        improved = target > dance["base_heldout_reward"]
        # The rule: DanceGRPO's own held-out gain must be at least 5 evaluation SEs, or its final reward is
        # no target (the budget is too short, or the run failed); checked per seed.
        dance_seed_valid = {
            seed: se is not None and (reward - dance["base_heldout_reward"]) >= 5 * se
            for seed, reward, se in zip(
                dance["seeds"], dance["per_seed_heldout_reward"], dance["per_seed_heldout_gain_se"]
            )
        }
        dance["dance_seed_gain_at_least_5_se"] = {str(k): v for k, v in dance_seed_valid.items()}
        # The mean curve's target counts only when every seed's DanceGRPO run passes the rule.
        mean_target_valid = improved and all(dance_seed_valid.values())
        for name, info in summary.items():
            info["target_reward"] = target
            info["dance_improved"] = improved
            t = first_crossing(info["curve"], target) if mean_target_valid else None
            info["time_to_reach_vs_dance"] = (
                t / dance["curve"][-1]["train_s"]
                if t is not None
                else (None if mean_target_valid else TARGET_TOO_WEAK)
            )
            per_seed = []
            for r in by_config[name]:
                d = dance_runs.get(r["seed"])
                if d is None:
                    continue
                if not dance_seed_valid.get(r["seed"], False):
                    per_seed.append(TARGET_TOO_WEAK)  # that seed's DanceGRPO gain is under 5 SE: no target to reach
                    continue
                ts = first_crossing(r["curve"], d["curve"][-1]["heldout"][METRIC])
                per_seed.append(ts / d["train_s"] if ts is not None else None)
            info["time_to_reach_vs_dance_per_seed"] = per_seed
            info["time_to_reach_vs_dance_interval"] = bootstrap_interval(per_seed)
            info["seconds_per_iteration_vs_dance"] = (
                info["seconds_per_iteration"][0] / dance["seconds_per_iteration"][0]
            )
    return summary


def write_learning_report(results: dict, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    summary = summarise(results)
    results = {**results, "summary": summary}
    (out_dir / "results_learning.json").write_text(json.dumps(results, indent=1))
    (out_dir / "results_learning.md").write_text(markdown(results))
    try:
        plots(results, out_dir)
    except ImportError:
        pass


def markdown(results: dict) -> str:
    s, st = results["summary"], results["settings"]
    m = results["machine"]
    lines = [
        "# Learning results on the toy task (`benchmarks/learning.py`)",
        "",
        f"Command: `{results['command']}`; {m['cpu_model']}, {m['nproc']} cores, {m['threads_per_run']} torch thread "
        f"per run, {results['seconds'] / 60:.0f} min in all. N = {st['num_inference_steps']}, K = {st['window_size']}, "
        f"G = {st['group_size']}, {st['prompts_per_step']} prompts per step, budget {st['budget_s']:.0f} s of training "
        f"per run, window shift interval {st['shift_interval']}, seeds {st['seeds']}, learning rates "
        f"{st['learning_rates']} (searched {st['learning_rates_searched']} on training prompts).",
        "Every run trains on `toy_preference` (prompt following x contrast); 'reward' below is that trained reward, "
        "'accuracy' the GenEval-style prompt-following monitor (never trained on). "
        "Held-out: prompts whose object combinations neither the base model's data nor the GRPO prompts contain, "
        "noise seeds never used in training, ODE sampling; mean ± std over seeds. 'SE' is the standard error of one "
        "run's held-out gain (paired with the base model on the same prompts and noise, prompts as the units).",
        "",
    ]
    if results.get("tune"):
        lines += ["## Learning-rate search (seed 100; selected on training prompts, fresh noise)", ""]
        lines += ["| family | lr | training-prompt reward | held-out reward (not used) |", "| --- | --- | --- | --- |"]
        for r in sorted(results["tune"], key=lambda r: (r["spec"]["family"], r["learning_rate"])):
            f = r["curve"][-1]
            lines.append(
                f"| {r['spec']['family']} | {r['learning_rate']:g} | {f['train'][METRIC]:.3f} | "
                f"{f['heldout'][METRIC]:.3f} |"
            )
        lines.append("")
    if all(c in s for c in PARTS["table"]):
        base_r, base_a = s["dancegrpo"]["base_heldout_reward"], s["dancegrpo"]["base_heldout_accuracy"]
        lines += [
            "## The paper's table in miniature",
            "",
            f"Base model (before training): held-out reward {base_r:.3f}, accuracy {base_a:.3f}.",
            "",
            "| variant | held-out reward | held-out accuracy | per-seed reward (gain / SE) | s / iteration | "
            "vs DanceGRPO | iterations | NFE sampling / image | NFE training / image | time to reach DanceGRPO's "
            "final reward | per seed | 90% bootstrap | paper: time / iteration | paper: training NFE |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for c in PARTS["table"]:
            i = s[c]
            ttr = i.get("time_to_reach_vs_dance")
            per = ", ".join(
                "not reached" if v is None else (v if isinstance(v, str) else f"{v:.2f}")
                for v in i.get("time_to_reach_vs_dance_per_seed", [])
            )
            ci = i.get("time_to_reach_vs_dance_interval")
            seeds = ", ".join(
                f"{v:.3f} ({(v - base_r) / se:.0f})" if se else f"{v:.3f}"
                for v, se in zip(i["per_seed_heldout_reward"], i["per_seed_heldout_gain_se"])
            )
            lines.append(
                f"| {LABELS[c]} | {_fmt(*i['heldout_reward'])} | {_fmt(*i['heldout_accuracy'])} | {seeds} | "
                f"{i['seconds_per_iteration'][0]:.2f} | {i.get('seconds_per_iteration_vs_dance', float('nan')):.2f} | "
                f"{i['iterations'][0]:.0f} | {i['nfe_rollout_per_image']:.1f} | {i['nfe_train_per_image']:.1f} | "
                f"{'not reached' if ttr is None else (ttr if isinstance(ttr, str) else f'{ttr:.2f}')} | {per} | "
                f"{'n/a' if ci is None else f'{ci[0]:.2f} to {ci[1]:.2f}'} | {PAPER_TABLE[c]['time_ratio']} | "
                f"{PAPER_TABLE[c]['nfe_train']} |"
            )
        valid = s["dancegrpo"].get("dance_seed_gain_at_least_5_se", {})
        weak = [k for k, ok in valid.items() if not ok]
        lines += [
            "",
            f"DanceGRPO's held-out gain is at least 5 SE on seeds "
            f"{', '.join(k for k, ok in valid.items() if ok) or 'none'}"
            + (f"; below on seeds {', '.join(weak)}: their time-to-reach has no target." if weak else "."),
        ]
        lines.append("")
    if "steps" in results["parts"]:
        lines += [
            "## Optimised steps (equal training time)",
            "",
            "| variant | trained steps | held-out reward | accuracy | seeds |",
        ]
        lines += ["| --- | --- | --- | --- | --- |"]
        for group, steps in (("DanceGRPO", STEPS_DANCE), ("MixGRPO", STEPS_MIX)):
            for c, k in steps.items():
                if c in s:
                    i = s[c]
                    lines.append(
                        f"| {group} | {k} | {_fmt(*i['heldout_reward'])} | {_fmt(*i['heldout_accuracy'])} | "
                        f"{len(i['seeds'])} |"
                    )
        lines += ["", *_two_std_lines(s, [c for steps in (STEPS_DANCE, STEPS_MIX) for c in steps if c in s]), ""]
    win = [c for c in PARTS["window"] if c in s]
    if "window" in results["parts"]:
        lines += [
            "## Window position (K = 4, equal training time)",
            "",
            "| window | held-out reward | accuracy | seeds |",
        ]
        lines += ["| --- | --- | --- | --- |"]
        for c in win:
            i = s[c]
            label = "progressive" if c == "mixgrpo" else c.replace("window_", "fixed at the ")
            lines.append(
                f"| {label} | {_fmt(*i['heldout_reward'])} | {_fmt(*i['heldout_accuracy'])} | {len(i['seeds'])} |"
            )
        lines += ["", *_two_std_lines(s, win), ""]
    return "\n".join(lines)


def _two_std_lines(s: dict, configs: list[str]) -> list[str]:
    """Which pairs of `configs` differ in final held-out reward by more than 2 std of the difference."""
    pairs = [(a, b) for k, a in enumerate(configs) for b in configs[k + 1 :]]
    big = [f"{a} vs {b}" for a, b in pairs if exceeds_two_std(s[a]["heldout_reward"], s[b]["heldout_reward"])]
    return [f"Differences beyond 2 std (of the difference, over seeds): {', '.join(big) if big else 'none'}."]


def plots(results: dict, out_dir: Path) -> None:
    from matplotlib.figure import Figure

    s = results["summary"]
    if all(c in s for c in PARTS["table"]):
        fig = Figure(figsize=(11, 4), dpi=100)
        for j, metric in enumerate(("reward", "accuracy")):
            ax = fig.add_subplot(1, 2, j + 1)
            for c in PARTS["table"]:
                curve = s[c]["curve"]
                t = [p["train_s"] for p in curve]
                m = [p["heldout"][metric] for p in curve]
                sd = [p["heldout_std"][metric] for p in curve]
                ax.plot(t, m, "o-", label=LABELS[c], markersize=3)
                ax.fill_between(t, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], alpha=0.15)
            if metric == "reward" and s["dancegrpo"].get("dance_improved"):
                ax.axhline(s["dancegrpo"]["target_reward"], color="grey", linestyle=":", linewidth=1)
            ax.set_xlabel("training time (CPU s, 1 thread)")
            ax.set_ylabel(f"held-out {metric}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("Held-out reward and accuracy vs training time (mean ± std over seeds)")
        fig.tight_layout()
        fig.savefig(out_dir / "learning_reward_vs_time.png")
    if "steps" in results["parts"]:
        fig = Figure(figsize=(6, 4), dpi=100)
        ax = fig.add_subplot(1, 1, 1)
        for group, steps, marker in (("DanceGRPO-style", STEPS_DANCE, "o-"), ("MixGRPO", STEPS_MIX, "s-")):
            ks = [k for c, k in steps.items() if c in s]
            ms = [s[c]["heldout_reward"][0] for c in steps if c in s]
            sds = [s[c]["heldout_reward"][1] for c in steps if c in s]
            ax.errorbar(ks, ms, yerr=sds, fmt=marker, capsize=4, label=group)
        ax.set_xlabel("optimised (trained) denoising steps per rollout")
        ax.set_ylabel("held-out reward after equal training time")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "learning_optimized_steps.png")
    if "window" in results["parts"]:
        win = [c for c in PARTS["window"] if c in s]
        fig = Figure(figsize=(6, 4), dpi=100)
        ax = fig.add_subplot(1, 1, 1)
        labels = ["progressive" if c == "mixgrpo" else c.replace("window_", "fixed: ") for c in win]
        ax.bar(
            labels,
            [s[c]["heldout_reward"][0] for c in win],
            yerr=[s[c]["heldout_reward"][1] for c in win],
            capsize=5,
            color=["tab:blue", "tab:green", "tab:red", "tab:orange"][: len(win)],
        )
        base = s[win[0]]["base_heldout_reward"]
        ax.axhline(base, color="grey", linestyle=":", label=f"base model {base:.3f}")
        lo = min(base, min(s[c]["heldout_reward"][0] - s[c]["heldout_reward"][1] for c in win))
        ax.set_ylim(lo - 0.03, None)
        ax.set_ylabel("held-out reward after equal training time")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "learning_window_position.png")
