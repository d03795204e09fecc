"""Turn the `results` dict of `benchmarks/run.py` into `results.json`, `results.md` (tables) and PNG plots."""

import json
from pathlib import Path

from costs import LABELS, VARIANTS

# Goals of the "Benchmarks" issue: per-iteration cost relative to DanceGRPO-style, at the mid-run window.
COST_GOALS = {"mixgrpo": 0.5, "flash": 0.35, "flash_star": 0.3}


def _f(x, digits=2, suffix=""):
    return "n/a" if x is None else f"{x:.{digits}f}{suffix}"


def _short(method):
    return {"dancegrpo": "Dance", "mixgrpo": "Mix", "flash": "Flash", "flash_star": "Flash*"}[method]


def _share(s):
    return "on" if s else "off"


def cost_goal_checks(costs_result: dict) -> list[dict]:
    """One line per goal: measured figure, threshold, met or not.

    Judged at the mid-run window (the middle of a 300-iteration progressive run: about a run's average, since the
    cost grows linearly with the window start); the w = 0 figure is reported next to it.
    """
    rows = costs_result["rows"]
    mids = costs_result["mid_run_starts"]

    def row(method, start, share):
        return next(r for r in rows if r["method"] == method and r["start"] == start and r["share_prefix"] == share)

    checks = []
    for method, goal in COST_GOALS.items():
        w = mids[method]
        off, on, first = row(method, w, False), row(method, w, True), row(method, 0, False)
        checks.append(
            {
                "goal": f"{LABELS[method]} cost/iteration <= {goal} x DanceGRPO (w = {w}, sharing off)",
                "measured": off["ratio_total_paired"],
                "at_w0": first["ratio_total_paired"],
                "met": off["ratio_total_paired"] <= goal,
            }
        )
        reason = None
        if w == 0:
            reason = "the window never leaves w = 0, so there is no pre-window prefix to share"
        checks.append(
            {
                "goal": f"{LABELS[method]} with prefix sharing lower still (w = {w})",
                "measured": on["ratio_total_paired"],
                "met": on["ratio_total_paired"] < off["ratio_total_paired"] * 0.98,  # beyond timing noise
                "compared_to": off["ratio_total_paired"],
                "reason": reason,
            }
        )
    return checks


def toy_goal_check(toy: dict):
    summary = toy.get("summary", {})
    mix = summary.get("mixgrpo")
    if not mix:
        return None
    if "target" not in mix:
        return {
            "goal": "MixGRPO reaches DanceGRPO's final held-out reward in <= 0.5 x DanceGRPO's wall time",
            "measured": None,
            "met": False,
            "target_reward": None,
            "reason": "DanceGRPO did not improve on the base model in this run, so there is no target to reach",
        }
    frac = mix.get("wall_to_target_vs_dance_total")
    return {
        "goal": "MixGRPO reaches DanceGRPO's final held-out reward in <= 0.5 x DanceGRPO's wall time",
        "measured": frac,
        "met": frac is not None and frac <= 0.5,
        "target_reward": mix["target"],
    }


def markdown(results: dict) -> str:
    out = []
    m = results["machine"]
    out.append(f"# Benchmark results: suite `{results['suite']}`\n")
    out.append(f"Command: `{results['command']}`  ")
    out.append(
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), torch {m['torch']}, diffusers {m['diffusers']}, "
        f"{m['torch_threads']} torch thread(s); load average at start {m['loadavg_start']}, at end "
        f"{m.get('loadavg_end')}. Total {results.get('total_seconds')} s; per section "
        f"{results['sections_seconds']}.\n"
    )
    s = results["settings"]
    c = results.get("costs", {})
    if "rows" in c:
        out.append(
            f"## Cost per iteration (tiny FLUX, N = {s['num_steps']}, K = {s['window_size']}, "
            f"G = {s['group_size']}, {s['num_prompts']} prompt(s), {s['resolution']}px)\n"
        )
        out.append(
            f"Medians of {s['repeats']} interleaved repeats; ratios to DanceGRPO-style (sharing off, w = 0) measured "
            f"in the same rounds. w = mid-run start of a 300-iteration progressive run: "
            f"{c['mid_run_starts']}. Measured forward+backward / forward cost: "
            f"{c['backward_factor_measured']:.2f}x.\n"
        )
        out.append("### NFE: measured (expected from the notes, section 7)\n")
        out.append(
            "| variant | w | sharing | steps/rollout | sampling NFE / rollout | training NFE / rollout | "
            "sampling NFE / iter | training NFE / iter |"
        )
        out.append("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        for r in c["rows"]:
            e = r["expected"]
            out.append(
                f"| {LABELS[r['method']]} | {r['start']} | {_share(r['share_prefix'])} | {e['steps_per_rollout']} | "
                f"{r['nfe_sampling_per_rollout']:.2f} ({e['nfe_sampling_per_rollout']:.2f}) | "
                f"{r['nfe_training_per_iteration'] / (s['group_size'] * s['num_prompts']):.0f} "
                f"({e['nfe_training_per_rollout']}) | "
                f"{r['nfe_sampling_per_iteration']:.0f} ({e['nfe_sampling_per_iteration']:.0f}) | "
                f"{r['nfe_training_per_iteration']:.0f} ({e['nfe_training_per_iteration']}) |"
            )
        out.append("")
        out.append("### Wall time per iteration relative to DanceGRPO-style, and peak memory\n")
        mem = results.get("memory", {})
        out.append(
            "| variant | w | sharing | rollout | reward | update | **total** | total (paired) | expected from NFE | "
            "peak RSS delta (MiB, w = 0, sharing on) |"
        )
        out.append("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in c["rows"]:
            mm = mem.get(r["method"]) if isinstance(mem, dict) else None
            show_mem = mm and r["start"] == 0 and r["share_prefix"]
            out.append(
                f"| {LABELS[r['method']]} | {r['start']} | {_share(r['share_prefix'])} | {r['ratio_rollout']:.3f} | "
                f"{r['ratio_reward']:.3f} | {r['ratio_update']:.3f} | **{r['ratio_total']:.3f}** | "
                f"{r['ratio_total_paired']:.3f} | {r['expected_ratio']:.3f} | "
                f"{_f(mm['iteration_rss_delta_bytes'] / 2**20, 1) if show_mem else ''} |"
            )
        out.append("")
        base = next(r for r in c["rows"] if r["method"] == "dancegrpo" and not r["share_prefix"])
        out.append(
            f"DanceGRPO-style absolute (for scale only): {base['time_total']:.2f} s/iteration "
            f"(rollout {base['time_rollout']:.2f}, reward {base['time_reward']:.3f}, update {base['time_update']:.2f})."
        )
        if isinstance(mem, dict) and mem and "skipped" not in mem:
            peaks = ", ".join(f"{LABELS[k]} {v['peak_rss_bytes'] / 2**20:.0f}" for k, v in mem.items())
            out.append(f"Peak RSS of each memory subprocess (MiB): {peaks}.")
        out.append("")
        out.append(
            "Expected schedule-average cost ratio over a whole 300-iteration progressive run (NFE model, "
            "fwd+bwd = 3 fwd):\n"
        )
        out.append("| variant | sharing off | sharing on |")
        out.append("| --- | ---: | ---: |")
        sched = c["expected_schedule_average_ratio_3x"]
        for method in VARIANTS:
            out.append(f"| {LABELS[method]} | {sched[method + '/noshare']:.3f} | {sched[method + '/share']:.3f} |")
        out.append("")
        out.append("### Prefix sharing, per variant (total cost ratio, sharing off -> on)\n")
        out.append("| variant | w | off | on | saving |")
        out.append("| --- | ---: | ---: | ---: | ---: |")
        for method in VARIANTS:
            for w in sorted({r["start"] for r in c["rows"] if r["method"] == method}):
                off = next(r for r in c["rows"] if r["method"] == method and r["start"] == w and not r["share_prefix"])
                on = next(r for r in c["rows"] if r["method"] == method and r["start"] == w and r["share_prefix"])
                saving = 1 - on["ratio_total_paired"] / off["ratio_total_paired"]
                out.append(
                    f"| {LABELS[method]} | {w} | {off['ratio_total_paired']:.3f} | {on['ratio_total_paired']:.3f} | "
                    f"{saving * 100:.1f}% |"
                )
        out.append("")
        out.append("### Goals\n")
        for g in cost_goal_checks(c):
            extra = f" (sharing off: {g['compared_to']:.3f})" if "compared_to" in g else ""
            if "at_w0" in g:
                extra = f" (at w = 0: {g['at_w0']:.3f})"
            if g.get("reason") and not g["met"]:
                extra += f"; {g['reason']}"
            out.append(f"- {'MET' if g['met'] else 'MISSED'}: {g['goal']}: measured {g['measured']:.3f}{extra}")
        out.append("")

    ro = results.get("rollouts", {})
    if "rows" in ro:
        out.append(
            f"## Rollout throughput (`GRPOTrainingPipeline.rollout` alone, tiny FLUX, {s['num_prompts']} prompt x "
            f"G = {s['group_size']}, {s['resolution']}px)\n"
        )
        out.append("| variant | w | sharing | NFE / rollout (expected) | images/s | vs DanceGRPO |")
        out.append("| --- | ---: | --- | ---: | ---: | ---: |")
        for r in ro["rows"]:
            out.append(
                f"| {LABELS[r['method']]} | {r['start']} | {_share(r['share_prefix'])} | {r['nfe_per_rollout']:.2f} "
                f"({r['expected_nfe_per_rollout']:.2f}) | {r['images_per_s']:.1f} | "
                f"{r['throughput_vs_dancegrpo']:.2f}x |"
            )
        out.append("")

    sc = results.get("scaling", {})
    if "rows" in sc:
        out.append("## Scaling check (w = 0, sharing on, 1 prompt)\n")
        out.append(
            "| variant | resolution | tokens | G | time vs smallest size | NFE-cost vs smallest | ratio vs DanceGRPO |"
        )
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in sc["rows"]:
            out.append(
                f"| {LABELS[r['method']]} | {r['resolution']} | {r['tokens']} | {r['group_size']} | "
                f"{r['time_vs_smallest']:.2f}x | {r['nfe_vs_smallest']:.2f}x | {r['ratio_vs_dancegrpo']:.3f} |"
            )
        out.append("")

    toy = results.get("toy", {})
    if "summary" in toy:
        out.append(
            f"## Toy task: held-out reward ({len(toy['eval_prompts'])} held-out prompts, ODE samples), "
            f"{toy['iterations']} iterations, seeds {toy['seeds']}\n"
        )
        out.append(
            f"G = {toy['group_size']}, {toy['num_prompts']} prompt(s)/iteration, LoRA lr {toy['learning_rate']}, "
            f"window shift intervals scaled to the run length: {toy['shift_intervals']}. Wall time = rollout + reward "
            f"+ update (evaluation excluded). Equal wall-time budgets: DanceGRPO runs the iterations, each other variant "
            f"steps until its wall time catches up, evaluations at the same wall times. Seed means.\n"
        )
        out.append(
            "| variant | iterations run | reward at 0 | final reward | reaches DanceGRPO's final at "
            "(iteration, wall fraction of DanceGRPO's run) |"
        )
        out.append("| --- | ---: | ---: | ---: | --- |")
        for method, info in toy["summary"].items():
            reach = (
                f"{info['iterations_to_target']:.0f}, {info['wall_to_target_vs_dance_total']:.2f}"
                if info.get("iterations_to_target") is not None
                else "not reached"
            )
            out.append(
                f"| {LABELS[method]} | {info['curve'][-1]['iteration']:.1f} | {info['curve'][0]['heldout_reward']:.4f} | "
                f"{info['final']:.4f} | {reach} |"
            )
        out.append("")
        g = toy_goal_check(toy)
        if g:
            if g["target_reward"] is None:
                out.append(f"- NOT MEASURABLE: {g['goal']}: {g['reason']}\n")
            else:
                out.append(
                    f"- {'MET' if g['met'] else 'MISSED'}: {g['goal']}: measured "
                    f"{_f(g['measured'], 2) if g['measured'] is not None else 'not reached'} "
                    f"(target reward {g['target_reward']:.4f})\n"
                )
    elif "skipped" in toy:
        out.append(f"## Toy task\n\nSkipped: {toy['skipped']}\n")
    return "\n".join(out) + "\n"


def plots(results: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    c = results.get("costs", {})
    if "rows" in c:
        rows = c["rows"]
        fig, ax = plt.subplots(figsize=(9, 4))
        labels, bottoms = [], None
        parts = {"rollout": [], "reward": [], "update": []}
        for r in rows:
            labels.append(f"{_short(r['method'])}\nw={r['start']} {_share(r['share_prefix'])}")
            for p in parts:
                parts[p].append(r[f"ratio_{p}"])
        x = range(len(rows))
        bottoms = [0.0] * len(rows)
        for p, color in zip(parts, ("tab:blue", "tab:orange", "tab:green")):
            ax.bar(x, parts[p], bottom=bottoms, label=p, color=color)
            bottoms = [b + v for b, v in zip(bottoms, parts[p])]
        ax.scatter(
            x, [r["expected_ratio"] for r in rows], color="black", marker="_", s=200, label="expected (NFE)", zorder=3
        )
        for method, goal in COST_GOALS.items():
            idx = [i for i, r in enumerate(rows) if r["method"] == method]
            ax.hlines(goal, min(idx) - 0.4, max(idx) + 0.4, colors="red", linestyles="dotted")
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, fontsize=6)
        ax.set_ylabel("time / DanceGRPO iteration")
        ax.set_title("Cost per iteration (red: goal)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "cost_per_iteration.png", dpi=90)
        plt.close(fig)
        written.append("cost_per_iteration.png")

    toy = results.get("toy", {})
    if "summary" in toy:
        for xkey, name, xlabel in (
            ("wall_s", "toy_reward_vs_wall.png", "wall time (s, rollout+reward+update)"),
            ("iteration", "toy_reward_vs_iteration.png", "iteration"),
        ):
            fig, ax = plt.subplots(figsize=(5, 3.5))
            for method, info in toy["summary"].items():
                ax.plot(
                    [p[xkey] for p in info["curve"]],
                    [p["heldout_reward"] for p in info["curve"]],
                    marker="o",
                    markersize=3,
                    label=LABELS[method],
                )
            ax.set_xlabel(xlabel)
            ax.set_ylabel("held-out reward (seed mean)")
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out_dir / name, dpi=90)
            plt.close(fig)
            written.append(name)

    ro = results.get("rollouts", {})
    if "rows" in ro:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        rows = ro["rows"]
        ax.bar(
            range(len(rows)),
            [r["images_per_s"] for r in rows],
            color=["tab:gray" if not r["share_prefix"] else "tab:blue" for r in rows],
        )
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(
            [f"{_short(r['method'])}\nw={r['start']} {_share(r['share_prefix'])}" for r in rows],
            fontsize=6,
        )
        ax.set_ylabel("images / s")
        ax.set_title("Rollout throughput (blue: prefix sharing on)")
        fig.tight_layout()
        fig.savefig(out_dir / "rollout_throughput.png", dpi=90)
        plt.close(fig)
        written.append("rollout_throughput.png")
    return written


def write_report(results: dict, out_dir: Path, make_plots: bool = True) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if make_plots:
        results["plots"] = plots(results, out_dir)
    results["goals"] = {
        "cost": cost_goal_checks(results["costs"]) if "rows" in results.get("costs", {}) else [],
        "toy": toy_goal_check(results.get("toy", {})),
    }
    (out_dir / f"results_{results['suite']}.json").write_text(json.dumps(results, indent=1, default=str))
    (out_dir / f"results_{results['suite']}.md").write_text(markdown(results))
