"""Fault audit (issue 21, item 7): run each fault as a user would and classify what the user gets.

    python benchmarks/fault_audit.py [--cases NAME,NAME,...] [--output benchmarks/results/fault_audit.json]
                                     [--command script|console] [--list]

Each case is one run of the training command (`examples/train_mixgrpo.py`, or the `mixgrpo-train` console command
with `--command console`) on the toy model shipped with the package, with the smallest settings (1-2 steps, 2 images
per group), or, for faults that only the Python API can cause (a reward callable that hangs or returns garbage), a
short user script. The cases run one after another in a fresh folder each; the outcome is classified as:

- CLEAR-BEFORE-LOAD: a nonzero exit with one sentence naming the value, before the model loads (diffusers' "Loading
  pipeline components" bar never started);
- CLEAR-AFTER-LOAD: the same, after the model loaded;
- UNCLEAR: a traceback, a message that does not name the value, or a process that did not end;
- SILENT: exit 0 with the fault accepted;
- OK-HANDLED: a valid input, or a runtime fault handled as documented (e.g. SIGTERM: exit 143; a failed push:
  the summary still written).

Each case names the class expected once the fault is fixed. Prints a table and the count per class, and writes JSON.
The runs use `HF_HUB_OFFLINE=1` except where a case needs it unset, and any Hub call goes to a closed loopback port
(`HF_ENDPOINT`), so nothing leaves the machine. About 2-4 minutes on 2 CPU cores.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
TOY_MODEL = ROOT / "src" / "diffusers_mixgrpo" / "toy_world" / "assets" / "toy_flux_base"
CLASSES = ("CLEAR-BEFORE-LOAD", "CLEAR-AFTER-LOAD", "UNCLEAR", "SILENT", "OK-HANDLED")
LOAD_MARKER = "Loading pipeline components"  # diffusers' progress bar while `from_pretrained` loads
LIBRARY_ERRORS = (
    "MixGRPOError", "ConfigError", "ModelLoadError", "RewardLoadError", "CheckpointError", "CorruptCheckpointError",
    "DiskFullError", "OutputNotWritableError", "HubPushError", "TrainingStopped",
)  # fmt: skip
CLOSED_PORT = "http://127.0.0.1:9"  # discard port, nothing listens: an attempted Hub call fails at once, locally
PROMPTS = [
    "a red circle on the left",
    "a blue square on the right",
    "a green circle on the top",
    "a yellow square on the bottom",
]


@dataclass
class Work:
    """The folder of one case: its prompt file, output folder and model path (the toy model, or a copy)."""

    root: Path
    model: str = str(TOY_MODEL)
    extra: dict = field(default_factory=dict)

    @property
    def prompts(self) -> str:
        return str(self.root / "prompts.txt")

    @property
    def out(self) -> str:
        return str(self.root / "out")

    def base_args(self, **overrides: str) -> list[str]:
        values = {
            "pretrained_model_name_or_path": self.model,
            "rewards": "toy_world=1",
            "prompt_file": self.prompts,
            "output_dir": self.out,
            "max_train_steps": "1",
            "num_generations": "2",
            "report_to": "none",
            "validation_steps": "0",
            "checkpointing_steps": "0",
            **overrides,
        }
        return [a for k, v in values.items() for a in (f"--{k}", v)]


@dataclass
class Result:
    rc: Optional[int]
    stdout: str
    stderr: str
    seconds: float
    hung: bool = False

    @property
    def text(self) -> str:
        return self.stdout + "\n" + self.stderr


@dataclass
class Case:
    """One fault: how to provoke it and what its fixed outcome is.

    `argv(work)`: the command's arguments (or `script(work)`: Python code run as a user script); `names`: what a clear
    message must contain (format fields: `{out}`, `{model}`, `{root}`); `handled(result, work)`: the documented
    handling, which makes it OK-HANDLED; `setup(work, run)`: what the user did before; `during(proc, work)`: what
    happens while it runs (signals, permissions)."""

    name: str
    expected: str
    argv: Optional[Callable[[Work], list[str]]] = None
    script: Optional[Callable[[Work], str]] = None
    names: tuple[str, ...] = ()
    env: dict = field(default_factory=dict)
    setup: Optional[Callable[[Work, Callable], None]] = None
    during: Optional[Callable[[subprocess.Popen, Work], None]] = None
    handled: Optional[Callable[[Result, Work], bool]] = None
    cleanup: Optional[Callable[[Work], None]] = None
    timeout: float = 240.0
    fault: str = ""


# -- running ------------------------------------------------------------------------------------------------------------


def _env(extra: dict) -> dict:
    env = dict(os.environ)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        env.pop(name, None)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p),
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "HF_ENDPOINT": CLOSED_PORT,
            "PYTHONUNBUFFERED": "1",
            "MPLBACKEND": "Agg",
        }
    )
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def command(kind: str) -> list[str]:
    if kind == "console":
        exe = shutil.which("mixgrpo-train")
        if exe is None:
            raise SystemExit("--command console: mixgrpo-train is not on PATH (pip install -e .)")
        return [exe]
    return [sys.executable, str(ROOT / "examples" / "train_mixgrpo.py")]


def run_process(args: list[str], work: Work, env: dict, timeout: float, during=None) -> Result:
    """Run `args` in `work.root`, stdout and stderr to files (so that `during` can read them while it runs)."""
    out_path, err_path = work.root / "stdout.txt", work.root / "stderr.txt"
    t0 = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(args, cwd=work.root, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        hung = False
        try:
            if during is not None:
                during(proc, work)
            proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            hung = True
            proc.kill()
            proc.wait()
    return Result(
        None if hung else proc.returncode,
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
        time.perf_counter() - t0,
        hung,
    )


def _wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, limit: float = 120.0) -> bool:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


# -- classifying --------------------------------------------------------------------------------------------------------


def _error_message(result: Result, api: bool) -> tuple[Optional[str], Optional[str]]:
    """The message the user is left with and, for a traceback, the exception's class name."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if not api:  # the command's one line (after a progress bar that did not end its line, if any)
        errors = [line[line.index("error: ") + len("error: ") :] for line in lines if "error: " in line]
        return (errors[-1], None) if errors else (None, None)
    for line in reversed(lines):
        head, sep, message = line.partition(": ")
        if sep and head.replace(".", "").replace("_", "").isalnum() and " " not in head:
            return message, head.rsplit(".", 1)[-1]
    return None, None


def classify(case: Case, result: Result, work: Work) -> tuple[str, str]:
    """(class, the message or what happened)."""
    if result.hung:
        return "UNCLEAR", f"did not end within {case.timeout:.0f} s (killed)"
    if case.handled is not None and case.handled(result, work):
        return "OK-HANDLED", _tail(result)
    if result.rc == 0:
        return "SILENT", "exit 0: " + _tail(result)
    api = case.script is not None
    message, exc = _error_message(result, api)
    traceback = "Traceback (most recent call last)" in result.stderr
    if message is None or (traceback and not api) or (api and exc not in LIBRARY_ERRORS):
        return "UNCLEAR", f"exit {result.rc}: " + (f"{exc}: {message}" if exc else message or _tail(result))
    wanted = [n.format(out=work.out, model=work.model, root=work.root) for n in case.names]
    if not all(w.lower() in message.lower() for w in wanted):
        return "UNCLEAR", f"exit {result.rc}, does not name {wanted}: {message}"
    before_error = result.stderr[: result.stderr.rfind(message)] if message in result.stderr else result.stderr
    stage = "CLEAR-AFTER-LOAD" if LOAD_MARKER in before_error else "CLEAR-BEFORE-LOAD"
    return stage, message


def _tail(result: Result, n: int = 160) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip() and "it/s" not in line]
    return (lines[-1] if lines else "")[-n:]


# -- the cases ----------------------------------------------------------------------------------------------------------


def _train(work: Work, run: Callable, *args: str) -> None:
    """A run the user made before the faulty one (must succeed)."""
    result = run(work.base_args() + list(args))
    if result.rc != 0:
        raise RuntimeError(f"the setup run of {work.root.name} failed: {_tail(result, 400)}")


def _copy_model(work: Work, name: str = "a") -> str:
    path = work.root / "models" / name
    shutil.copytree(TOY_MODEL, path)
    work.model = str(path)
    return str(path)


def _setup_moved_model(work: Work, run: Callable) -> None:
    _copy_model(work)
    _train(work, run, "--checkpointing_steps", "1")
    moved = work.root / "moved" / "a"
    moved.parent.mkdir()
    shutil.move(work.model, moved)
    work.extra["moved"] = str(moved)


def _setup_other_model(work: Work, run: Callable) -> None:
    _copy_model(work)
    _train(work, run, "--checkpointing_steps", "1")
    shutil.rmtree(work.model)
    code = (
        "import sys; from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline; "
        "build_tiny_flux_pipeline(seed=1).save_pretrained(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, work.model], check=True, env=_env({}), capture_output=True)


def _signal_twice(proc: subprocess.Popen, work: Work) -> None:
    stderr = work.root / "stderr.txt"
    if _wait_for(lambda: "MixGRPO" in stderr.read_text(errors="replace"), proc):
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)


def _lock(folder: str) -> None:
    """Make `folder` refuse new entries: chmod for a normal user; root ignores permissions, so `chattr +i`."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", folder], check=True, capture_output=True)
    else:
        os.chmod(folder, 0o555)


def _unlock(folder: str) -> None:
    if not os.path.isdir(folder):
        return
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", folder], capture_output=True)
    else:
        os.chmod(folder, 0o755)


def _lock_after_first_checkpoint(proc: subprocess.Popen, work: Work) -> None:
    first = Path(work.out) / "checkpoint-1"
    if _wait_for(first.is_dir, proc):
        try:
            _lock(work.out)
            work.extra["locked"] = True
        except (OSError, subprocess.CalledProcessError) as err:
            work.extra["lock_error"] = str(err)


def _write_bom_prompts(work: Work, run: Callable) -> None:
    Path(work.prompts).write_bytes(b"\xef\xbb\xbf" + "\n".join(PROMPTS).encode() + b"\n")


def _bom_handled(result: Result, work: Work) -> bool:
    """Exit 0 and either the BOM named in the log, or the prompts the run trained on are those without it."""
    if result.rc != 0:
        return False
    if "BOM" in result.text or "byte order mark" in result.text.lower():
        return True
    import hashlib

    import torch

    state = Path(work.out) / "checkpoint-1" / "trainer_state.pt"
    if not state.is_file():
        return False
    saved = torch.load(state, map_location="cpu", weights_only=True).get("prompts_sha256")
    return saved == hashlib.sha256("\n".join(PROMPTS).encode()).hexdigest()


def _reward_script(body: str, timeout: Optional[float] = None) -> Callable[[Work], str]:
    """A user script: the Python API with a reward callable (`body` defines `reward(images, prompts)`)."""

    def script(work: Work) -> str:
        extra = f", reward_timeout={timeout}" if timeout else ""
        return (
            "import time\n"
            "from diffusers_mixgrpo.training import GRPOConfig, GRPOTrainer\n"
            f"{body}\n"
            f"config = GRPOConfig(pretrained_model_name_or_path={work.model!r}, prompt_file={work.prompts!r}, "
            f"output_dir={work.out!r}, max_train_steps=1, num_generations=2, report_to='none', validation_steps=0, "
            f"checkpointing_steps=0{extra})\n"
            "GRPOTrainer(config, rewards={reward: 1.0}).train()\n"
        )

    return script


def _exit(code: int) -> Callable[[Result, Work], bool]:
    return lambda r, w: r.rc == code


def _ok(marker: str = "") -> Callable[[Result, Work], bool]:
    return lambda r, w: r.rc == 0 and marker in r.text and "Traceback" not in r.stderr


def _summary_written(result: Result, work: Work) -> bool:
    message, _ = _error_message(result, api=False)
    return (
        result.rc == 1
        and message is not None
        and work.out in message
        and (Path(work.out) / "training_summary.json").is_file()
    )


def _unwritable_handled(result: Result, work: Work) -> bool:
    message, _ = _error_message(result, api=False)
    return result.rc == 1 and message is not None and work.out in message and "checkpoint-1" in message


PUSH = ["--push_to_hub", "--hub_model_id", "me/toy-run"]
CASES = [
    Case(
        "reward_timeout_hung_reward",
        "OK-HANDLED",
        script=_reward_script("def reward(images, prompts):\n    time.sleep(3600)", timeout=5),
        handled=lambda r, w: r.rc not in (0, None) and ("reward_timeout" in r.stderr or "timed out" in r.stderr),
        timeout=60,
        fault="a reward callable that never returns, reward_timeout=5: the process ends soon after 5 s",
    ),
    Case(
        "report_to_none_cli",
        "OK-HANDLED",
        argv=lambda w: w.base_args(report_to="none"),
        handled=_ok("Training finished"),
        fault="--report_to none on the command line trains without a tracker",
    ),
    Case(
        "overwrite_finished_run",
        "CLEAR-BEFORE-LOAD",
        argv=lambda w: w.base_args(),
        names=("{out}", "finished run"),
        setup=lambda w, run: _train(w, run),
        fault="the same command again into a finished run's folder (no checkpoint: shorter than checkpointing_steps)",
    ),
    Case(
        "moved_base_model_resume",
        "OK-HANDLED",
        argv=lambda w: [
            "--output_dir",
            w.out,
            "--resume_from_checkpoint",
            "latest",
            "--max_train_steps",
            "2",
            "--pretrained_model_name_or_path",
            w.extra["moved"],
        ],  # fmt: skip
        setup=_setup_moved_model,
        handled=_ok("Resuming from"),
        fault="the base model folder moved; resume with --pretrained_model_name_or_path NEW",
    ),
    Case(
        "moved_base_model_old_path",
        "CLEAR-BEFORE-LOAD",
        argv=lambda w: ["--output_dir", w.out, "--resume_from_checkpoint", "latest", "--max_train_steps", "2"],
        names=("{model}",),
        setup=_setup_moved_model,
        fault="the base model folder moved; resume without saying where",
    ),
    Case(
        "mistyped_resume_folder",
        "CLEAR-BEFORE-LOAD",
        argv=lambda w: ["--output_dir", str(w.root / "ouy"), "--resume_from_checkpoint", "latest"],
        names=("ouy",),
        fault="--output_dir names a folder that does not exist, with --resume_from_checkpoint latest",
    ),
    Case(
        "different_base_model_same_path",
        "CLEAR-BEFORE-LOAD",
        argv=lambda w: ["--output_dir", w.out, "--resume_from_checkpoint", "latest", "--max_train_steps", "2"],
        names=("{model}", "checkpoint-1"),
        setup=_setup_other_model,
        fault="another model now sits at the base model's path",
    ),
    Case(
        "unwritable_output_mid_run",
        "OK-HANDLED",
        argv=lambda w: w.base_args(max_train_steps="30", checkpointing_steps="1"),
        during=_lock_after_first_checkpoint,
        handled=_unwritable_handled,
        cleanup=lambda w: _unlock(w.out),
        fault="the output folder refuses writes after checkpoint-1 (chmod; chattr +i as root)",
    ),
    Case(
        "push_to_hub_offline",
        "CLEAR-BEFORE-LOAD",
        argv=lambda w: w.base_args() + PUSH + ["--hub_token", "hf_fake"],
        names=("HF_HUB_OFFLINE",),
        env={"HF_HUB_OFFLINE": "1"},
        fault="--push_to_hub with HF_HUB_OFFLINE=1",
    ),
    Case(
        "push_to_hub_no_token",
        "CLEAR-BEFORE-LOAD",
        argv=lambda w: w.base_args() + PUSH,
        names=("token",),
        env={"HF_HUB_OFFLINE": None, "HF_HOME": "{root}/hf-home"},
        fault="--push_to_hub without a token (empty HF_HOME, no HF_TOKEN)",
    ),
    Case(
        "push_to_hub_bad_repo_id",
        "CLEAR-BEFORE-LOAD",
        argv=lambda w: w.base_args() + ["--push_to_hub", "--hub_model_id", "me/bad repo!", "--hub_token", "hf_fake"],
        names=("me/bad repo!",),
        env={"HF_HUB_OFFLINE": None},
        fault="--push_to_hub --hub_model_id 'me/bad repo!'",
    ),
    Case(
        "push_to_hub_fails_at_end",
        "OK-HANDLED",
        argv=lambda w: w.base_args() + PUSH + ["--hub_token", "hf_fake"],
        env={"HF_HUB_OFFLINE": None},
        handled=_summary_written,
        fault="the upload fails after training (no connection): the summary is written, the folder named",
    ),
    Case(
        "reward_weight_zero",
        "CLEAR-BEFORE-LOAD",
        argv=lambda w: w.base_args(rewards="toy_world=0"),
        names=("toy_world",),
        fault="--rewards toy_world=0 (nothing to learn from)",
    ),
    Case(
        "reward_negative_only_weight",
        "CLEAR-BEFORE-LOAD",
        argv=lambda w: w.base_args(rewards="toy_world=-1"),
        names=("toy_world",),
        fault="--rewards toy_world=-1 (the only reward, minimised)",
    ),
    Case(
        "learning_rate_1000",
        "CLEAR-BEFORE-LOAD",
        argv=lambda w: w.base_args(learning_rate="1000"),
        names=("learning_rate",),
        fault="--learning_rate 1000",
    ),
    Case(
        "eta_1e6",
        "CLEAR-BEFORE-LOAD",
        argv=lambda w: w.base_args(eta="1e6"),
        names=("eta",),
        fault="--eta 1e6",
    ),
    Case(
        "utf8_bom_prompt_file",
        "OK-HANDLED",
        argv=lambda w: w.base_args(checkpointing_steps="1"),
        setup=_write_bom_prompts,
        handled=_bom_handled,
        fault="a prompt file saved with a UTF-8 BOM (Windows editors): the BOM is not part of the first prompt",
    ),
    Case(
        "second_sigterm_exit_143",
        "OK-HANDLED",
        argv=lambda w: w.base_args(max_train_steps="500"),
        during=_signal_twice,
        handled=_exit(143),
        fault="two SIGTERMs in a row (a scheduler that insists): exit status 143",
    ),
    Case(
        "report_to_wandb_missing",
        "CLEAR-BEFORE-LOAD",
        argv=lambda w: w.base_args(report_to="wandb"),
        names=("wandb",),
        env={"PYTHONPATH_PREPEND": "{root}/no-wandb"},
        fault="--report_to wandb where wandb is not installed",
    ),
    Case(
        "reward_returns_none",
        "CLEAR-AFTER-LOAD",
        script=_reward_script("def reward(images, prompts):\n    return None"),
        names=("returned", "None"),
        fault="a reward callable that returns None",
    ),
    Case(
        "reward_returns_strings",
        "CLEAR-AFTER-LOAD",
        script=_reward_script("def reward(images, prompts):\n    return ['good'] * len(images)"),
        names=("returned", "str"),
        fault="a reward callable that returns strings",
    ),
]


def _no_wandb(folder: Path) -> None:
    """A `wandb` that cannot be imported, ahead of an installed one (the audit simulates a machine without it)."""
    (folder / "wandb").mkdir(parents=True, exist_ok=True)
    (folder / "wandb" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'wandb'\", name='wandb')\n"
    )


def run_case(case: Case, root: Path, cmd: list[str]) -> dict:
    work = Work(root / case.name)
    work.root.mkdir(parents=True)
    Path(work.prompts).write_text("\n".join(PROMPTS) + "\n")
    extra = {k: (v.format(root=work.root) if isinstance(v, str) else v) for k, v in case.env.items()}
    prepend = extra.pop("PYTHONPATH_PREPEND", None)
    if prepend:
        _no_wandb(Path(prepend))
    env = _env(extra)
    if prepend:
        env["PYTHONPATH"] = prepend + os.pathsep + env["PYTHONPATH"]

    def run(args):
        return run_process(cmd + list(args), work, _env({}), case.timeout)

    t0 = time.perf_counter()
    try:
        if case.setup is not None:
            case.setup(work, run)
        if case.script is not None:
            script = work.root / "user_script.py"
            script.write_text(case.script(work))
            args = [sys.executable, str(script)]
        else:
            args = cmd + case.argv(work)
        result = run_process(args, work, env, case.timeout, case.during)
        outcome, detail = classify(case, result, work)
        if case.name == "unwritable_output_mid_run" and not work.extra.get("locked"):
            outcome, detail = "SKIPPED", work.extra.get("lock_error", "the folder could not be locked in time")
        rc, seconds = result.rc, result.seconds
    except Exception as err:  # a setup that failed: report it, go on with the next case
        outcome, detail, rc, seconds = "SKIPPED", f"setup failed: {err}", None, time.perf_counter() - t0
    finally:
        if case.cleanup is not None:
            case.cleanup(work)
    return {
        "case": case.name,
        "fault": case.fault,
        "expected": case.expected,
        "outcome": outcome,
        "as_expected": outcome == case.expected,
        "exit_code": rc,
        "seconds": round(seconds, 1),
        "detail": detail,
    }


def print_table(rows: list[dict]) -> None:
    width = max(len(r["case"]) for r in rows)
    print(f"{'case':<{width}}  {'outcome':<17}  {'expected':<17}  exit  {'s':>5}  detail")
    for r in rows:
        mark = "" if r["as_expected"] else "  <-"
        detail = r["detail"].replace("\n", " ")[:110]
        print(
            f"{r['case']:<{width}}  {r['outcome']:<17}  {r['expected']:<17}  {str(r['exit_code']):>4}  "
            f"{r['seconds']:>5.1f}  {detail}{mark}"
        )
    counts = {c: sum(r["outcome"] == c for r in rows) for c in (*CLASSES, "SKIPPED")}
    print("counts: " + ", ".join(f"{c} {n}" for c, n in counts.items() if n or c in CLASSES))
    print(f"as expected: {sum(r['as_expected'] for r in rows)} of {len(rows)}")


def main(argv: Optional[list[str]] = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=None, help="Comma-separated case names (default: all; see --list).")
    parser.add_argument("--output", default=None, help="JSON file to write (default: print only).")
    parser.add_argument("--command", choices=("script", "console"), default="script")
    parser.add_argument("--workdir", default=None, help="Keep the runs' folders here (default: a temporary folder).")
    parser.add_argument("--list", action="store_true", help="List the cases and exit.")
    args = parser.parse_args(argv)
    if args.list:
        for case in CASES:
            print(f"{case.name:<32} {case.expected:<17} {case.fault}")
        return []
    cases = CASES
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
        unknown = sorted(set(wanted) - {c.name for c in CASES})
        if unknown:
            parser.error(f"unknown case(s) {', '.join(unknown)}; see --list")
        cases = [c for c in CASES if c.name in wanted]
    cmd = command(args.command)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="fault-audit-"))
    rows = []
    t0 = time.perf_counter()
    try:
        for case in cases:
            rows.append(run_case(case, root, cmd))
            print(f"[{time.perf_counter() - t0:6.1f} s] {case.name}: {rows[-1]['outcome']}", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    print_table(rows)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        result = {
            "command": args.command,
            "seconds": round(time.perf_counter() - t0, 1),
            "counts": {c: sum(r["outcome"] == c for r in rows) for c in (*CLASSES, "SKIPPED")},
            "cases": rows,
        }
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return rows


if __name__ == "__main__":
    main()
