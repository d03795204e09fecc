"""Faults late in a run (issue 21, item 7): a reward that never returns, a second SIGTERM, a reward that returns
something other than scores. The process tests run `mixgrpo-train` (tests/training/faults_script.py, which registers
misbehaving rewards) on a tiny FLUX model in a process of its own."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers_mixgrpo.rewards import MultiReward
from diffusers_mixgrpo.training.errors import TrainingStopped
from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline
from testing_utils import subprocess_env, tiny_config, tiny_flux_trainer

SCRIPT = Path(__file__).with_name("faults_script.py")
PROMPTS = ["a red circle on the left", "a blue square on the right"]
#: Seconds a stopped run may take to end its process beyond the timeout: the error, the unwinding and the
#: interpreter's exit (torch's teardown). Measured on a 2-core CPU machine shared with other jobs: from a hung reward
#: call's start to the exit with reward_timeout=2, 3.1-3.2 s at load 2 and 4.9 s at load 5.5; from a second SIGTERM to
#: the exit, 1.1 s at load 2 and 3.7 s at load 5. Before the fixes: never (the hung call kept the process alive; the test kills it after 60 s).
EXIT_MARGIN_S = 8.0


@pytest.fixture(scope="module")
def tiny_run_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    build_tiny_flux_pipeline().save_pretrained(root / "model")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root


def start_run(inputs: Path, out: Path, marker: Path, *flags: str) -> subprocess.Popen:
    args = [
        "--pretrained_model_name_or_path", str(inputs / "model"), "--prompt_file", str(inputs / "prompts.txt"),
        "--output_dir", str(out), "--resolution", "32", "--num_inference_steps", "4", "--num_generations", "2",
        "--window_size", "2", "--mixed_precision", "no", "--gradient_checkpointing", "false", "--report_to", "none",
        "--validation_steps", "0", *flags,
    ]  # fmt: skip
    env = subprocess_env(OMP_NUM_THREADS="1", FAULTS_MARKER=str(marker))
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def wait_for_calls(proc: subprocess.Popen, marker: Path, calls: int = 1, seconds: float = 120) -> float:
    """`time.monotonic()` when the reward call number `calls` started (the script writes one line per call)."""
    deadline = time.monotonic() + seconds
    while not (marker.exists() and len(marker.read_text().splitlines()) >= calls):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run did not reach reward call {calls}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.02)
    return time.monotonic()


def finish(proc: subprocess.Popen, seconds: float) -> tuple[int, str, float]:
    """The exit status, stderr, and `time.monotonic()` at exit; a process still running after `seconds` is killed
    and the test fails."""
    try:
        _, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the process was still running {seconds:.0f} s later; its stderr ends: {err[-1500:]}")
    return proc.returncode, err, time.monotonic()


def test_a_reward_that_never_returns_ends_the_process_at_reward_timeout(tiny_run_inputs, tmp_path):
    """The hung call is left in a daemon thread: the process exits at the timeout, not when (if ever) the call
    returns (before: the error came on time but the interpreter waited for the reward thread, forever)."""
    marker = tmp_path / "calls"
    proc = start_run(tiny_run_inputs, tmp_path / "out", marker, "--rewards", "sleeps_forever=1.0",
                     "--reward_timeout", "2", "--max_train_steps", "2", "--checkpointing_steps", "0")  # fmt: skip
    started = wait_for_calls(proc, marker)
    rc, err, ended = finish(proc, 2 + 60)
    last = err.strip().splitlines()[-1]
    assert rc == 1, err[-2000:]
    assert last.startswith("error: Reward 'sleeps_forever' did not answer within reward_timeout=2 s at step 0"), last
    assert last.endswith("No checkpoint has been written yet.")
    print(f"reward call to exit: {ended - started:.2f} s (reward_timeout 2 s)")
    assert ended - started < 2 + EXIT_MARGIN_S


def test_a_second_sigterm_exits_143_at_once_in_one_line(tiny_run_inputs, tmp_path):
    """The first SIGTERM waits for a boundary that never comes (a reward call without a timeout that hangs); the
    second stops at once with one line and status 143, as documented, not a traceback and 130."""
    marker = tmp_path / "calls"
    out = tmp_path / "out"
    proc = start_run(tiny_run_inputs, out, marker, "--rewards", "sleeps_after_first=1.0", "--max_train_steps", "5",
                     "--checkpointing_steps", "1")  # fmt: skip
    wait_for_calls(proc, marker, calls=2)  # step 1's reward call: checkpoint-0... the state after step 0 is saved
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert proc.poll() is None  # the first signal waits for the next boundary
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    rc, err, ended = finish(proc, 60)
    print(f"second SIGTERM to exit: {ended - sent:.2f} s")
    assert rc == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("Stopped at once by a second SIGTERM: the unfinished step is lost (last complete "
                           f"checkpoint: {out / 'checkpoint-1'}; resume with: "), last  # fmt: skip
    assert ended - sent < EXIT_MARGIN_S


# -- what a reward returns (item 8) ------------------------------------------------------------------------------------

BAD_OUTPUTS = {
    "none": (lambda n: None, "returned None at step 0; a reward must return one number per image (a float tensor, "
             "array or list of length 4)."),
    "strings": (lambda n: ["good"] * n, "returned a list of 4 str at step 0; a reward must return"),
    "numpy_strings": (lambda n: np.array(["1.0"] * n), "returned a ndarray of shape (4,) and dtype <U3 at step 0;"),
    "too_few": (lambda n: torch.zeros(n - 1), "returned 3 scores (a Tensor of shape (3,) and dtype float32) for 4 "
                "images at step 0; a reward must return one number per image"),
    "dict": (lambda n: {"score": 1.0}, "returned a dict ({'score': 1.0}) at step 0;"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_OUTPUTS))
def test_a_reward_returning_something_else_than_scores_stops_the_run_naming_it(case, tmp_path):
    make, expected = BAD_OUTPUTS[case]

    def bad(images, prompts):
        return make(len(prompts))

    config = tiny_config(tmp_path, max_train_steps=1, sample_prompts_per_device=2)
    trainer = tiny_flux_trainer(config, PROMPTS, rewards={bad: 1.0})
    with pytest.raises(TrainingStopped) as info:
        trainer.train_step()
    assert str(info.value).startswith("Reward 'bad' " + expected.split(" at step")[0]), str(info.value)
    assert expected in str(info.value)


@pytest.mark.parametrize("case", sorted(BAD_OUTPUTS))
def test_multi_reward_names_what_a_reward_returned(case):
    make, expected = BAD_OUTPUTS[case]

    def bad(images, prompts):
        return make(len(prompts))

    with pytest.raises(ValueError) as info:
        MultiReward({bad: 1.0}).score(torch.zeros(4, 3, 8, 8), ["p"] * 4)
    assert str(info.value) == "Reward 'bad' " + expected.replace(" at step 0", "").split(";")[0] + "; " + (
        "a reward must return one number per image (a float tensor, array or list of length 4)."
    )


def test_scores_of_any_numeric_kind_are_accepted_as_float32():
    for value in ([1, 2, 3, 4], np.arange(4, dtype=np.float64), torch.ones(4, 1, dtype=torch.bfloat16), [True] * 4):
        scores = MultiReward({(lambda images, prompts, v=value: v): 1.0}).score(None, ["p"] * 4)
        (s,) = scores.values()
        assert s.dtype == torch.float32 and s.shape == (4,)


# -- report_to none, and a tracker that is not installed (items 2 and 7) -----------------------------------------------


def test_report_to_none_on_the_command_line_is_no_tracker_as_in_yaml(tmp_path, monkeypatch):
    from diffusers_mixgrpo.training import logging_utils
    from diffusers_mixgrpo.training.arguments import parse_command_line
    from diffusers_mixgrpo.training.config import GRPOConfig

    monkeypatch.setattr(logging_utils, "_installed", lambda name: True)  # tensorboard would be the default
    (tmp_path / "run.yaml").write_text("report_to: none\n")
    for argv in (["--report_to", "none"], ["--report_to", "None"], ["--config", str(tmp_path / "run.yaml")]):
        values = parse_command_line(argv, (GRPOConfig,)).values
        config = GRPOConfig(**values)
        assert config.report_to == "none", argv
        assert logging_utils.resolve_report_to(config.report_to) is None, argv
    unset = GRPOConfig(**parse_command_line(["--report_to", "null"], (GRPOConfig,)).values)
    assert unset.report_to is None and logging_utils.resolve_report_to(unset.report_to) == ["tensorboard"]
    # other optional fields still take `none` to unset them
    assert parse_command_line(["--tracker_run_name", "none"], (GRPOConfig,)).values["tracker_run_name"] is None


@pytest.mark.parametrize(
    "tracker, modules, install",
    [
        ("wandb", ["wandb"], "pip install wandb"),
        ("tensorboard", ["tensorboard", "tensorboardX"], "pip install tensorboard"),
    ],
)
def test_a_tracker_that_is_not_installed_fails_before_the_model_loads(
    tracker, modules, install, tiny_flux_dir, tmp_path, monkeypatch, capsys
):
    from diffusers_mixgrpo.training import cli

    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # find_spec then answers None: not installed

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the trackers were checked")

    monkeypatch.setattr("diffusers_mixgrpo.training.trainer.load_training_pipeline", no_model)
    (tmp_path / "p.txt").write_text("a cat\n")
    argv = ["--pretrained_model_name_or_path", str(tiny_flux_dir), "--prompt_file", str(tmp_path / "p.txt"),
            "--output_dir", str(tmp_path / "out"), "--rewards", "jpeg_compressibility=1", "--report_to", tracker]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 1 and len(err.splitlines()) == 1, err
    assert err == (
        f"error: report_to={tracker!r} needs the {modules[0]} package, which is not installed (or does not import); "
        f"install it with `{install}`, or set report_to to another tracker or 'none'."
    )


def test_a_tracker_package_that_is_found_but_does_not_import_fails_before_the_model_loads(tmp_path, monkeypatch):
    from diffusers_mixgrpo.training.errors import ConfigError
    from diffusers_mixgrpo.training.logging_utils import resolve_report_to

    broken = tmp_path / "site" / "wandb"  # found by find_spec, broken on import (a half-removed install)
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'wandb'\", name='wandb')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    with pytest.raises(ConfigError, match=r"report_to='wandb' needs the wandb package, which is not installed \(or"):
        resolve_report_to("wandb")


# -- a byte-order mark in a prompt file (item 5) -----------------------------------------------------------------------


def test_a_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path):
    from diffusers_mixgrpo.training.preflight import read_prompt_file

    path = tmp_path / "prompts.txt"
    path.write_bytes("a red circle\r\nthe second\r\n".encode("utf-8-sig"))  # as Windows Notepad saves UTF-8
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_prompt_file(str(path)) == ["a red circle", "the second"]


# -- reward weights that train nothing, or train downhill (item 3) -----------------------------------------------------


@pytest.mark.parametrize(
    "rewards, message",
    [
        ({"jpeg_compressibility": 0}, "rewards={'jpeg_compressibility': 0} gives every reward weight 0, so nothing is "
         "trained (the LoRA stays exactly at its start); give the reward to raise a positive weight."),
        ({"jpeg_compressibility": -1.0}, "rewards={'jpeg_compressibility': -1} gives the only reward a negative "
         "weight, which trains the model to lower its scores; give the reward to raise a positive weight (a negative "
         "weight is for a penalty beside it)."),
        ({"jpeg_compressibility": 0, "jpeg_incompressibility": 0}, "gives every reward weight 0"),
        ({"jpeg_compressibility": -1, "jpeg_incompressibility": 0}, "gives no reward a positive weight"),
    ],
)  # fmt: skip
def test_weights_that_train_nothing_or_only_downhill_are_refused(rewards, message, tmp_path):
    from diffusers_mixgrpo.training.config import GRPOConfig
    from diffusers_mixgrpo.training.errors import ConfigError
    from diffusers_mixgrpo.training.reward_runner import build_rewards

    with pytest.raises(ConfigError) as info:
        GRPOConfig(rewards=rewards)
    assert message in str(info.value)
    callables = {(lambda images, prompts: None): w for w in rewards.values()}  # noqa: B023
    if len(callables) == 1:  # rewards handed to the trainer as objects: refused before any reward model loads
        with pytest.raises(ConfigError, match="rewards=\\{'<lambda>': "):
            build_rewards(callables, tiny_config(tmp_path), torch.device("cpu"))


def test_a_zero_weight_beside_others_warns_by_name_once(tmp_path, caplog):
    from diffusers_mixgrpo.training.config import GRPOConfig
    from diffusers_mixgrpo.training.reward_runner import build_rewards

    config = GRPOConfig(rewards={"jpeg_compressibility": 1.0, "jpeg_incompressibility": 0.0})
    assert not caplog.records  # the config does not warn; the trainer's rewards do, once
    build_rewards(None, config, torch.device("cpu"))
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [
        "rewards['jpeg_incompressibility']=0: this reward is computed and logged but not trained on; remove it to "
        "save its time."
    ]


def test_a_zero_weight_is_refused_on_the_command_line_before_the_model_loads(
    tiny_flux_dir, tmp_path, monkeypatch, capsys
):
    from diffusers_mixgrpo.training import cli

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the weights were checked")

    monkeypatch.setattr("diffusers_mixgrpo.training.trainer.load_training_pipeline", no_model)
    (tmp_path / "p.txt").write_text("a cat\n")
    argv = ["--pretrained_model_name_or_path", str(tiny_flux_dir), "--prompt_file", str(tmp_path / "p.txt"),
            "--output_dir", str(tmp_path / "out"), "--rewards", "toy_world=0", "--report_to", "none"]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 1
    assert capsys.readouterr().err.startswith("error: rewards={'toy_world': 0} gives every reward weight 0")


# -- settings far from where the method works (item 4) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        ({"learning_rate": 1000}, "learning_rate=1000.0 is not allowed; it must lie in (0.0, 1.0]."),
        ({"eta": 1e6}, "eta=1e+06 is not allowed with sde_type='flow_grpo'; above sqrt(2) = 1.414 the first SDE "
         "step's mean keeps a negative share (1 - eta^2 / 2) of the sample, so eta must lie in (0, 1.414] (usual: "
         "0.7)."),
        ({"sde_type": "cps", "eta": 1.5}, "eta=1.5 is not allowed with sde_type='cps'; CPS adds noise sigma_next * "
         "sin(eta * pi / 2), which is largest at eta=1 and shrinks again above it, so eta must lie in (0, 1] "
         "(usual: 0.8)."),
    ],
)  # fmt: skip
def test_settings_for_which_the_step_is_undefined_are_refused_in_one_sentence(values, message):
    from diffusers_mixgrpo.training.config import GRPOConfig
    from diffusers_mixgrpo.training.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        GRPOConfig(**values)
    assert str(info.value) == message


def test_flow_grpo_eta_above_sqrt2_makes_the_first_steps_mean_coefficient_negative():
    """The bound behind the refusal: the scheduler's own first SDE step (sigma = 1) has `c_x = 1 - eta^2 / 2`."""
    from diffusers_mixgrpo.schedulers.scheduling_mix_ode_sde import MixODESDEScheduler

    for eta, expected in ((0.7, 1 - 0.49 / 2), (2**0.5, 0.0), (1.5, 1 - 2.25 / 2)):
        scheduler = MixODESDEScheduler(eta=eta, sde_window_size=1, shift=3.0)
        scheduler.set_timesteps(25)
        x, v = torch.ones(1, 4), torch.zeros(1, 4)
        mean, _ = scheduler._sde_transition(v, x, 0)
        assert abs(float(mean[0, 0]) - expected) < 1e-6  # float32 of a float64 coefficient: measured < 1e-7


def test_ddim_eta_above_1_is_refused():
    from diffusers_mixgrpo.schedulers.scheduling_mix_ddim_sde import MixDDIMSDEScheduler

    with pytest.raises(ValueError, match=r"eta=1.5 is not allowed; DDIM's eta must lie in \[0, 1\]"):
        MixDDIMSDEScheduler(eta=1.5)


def test_unusual_settings_warn_once_and_the_stop_names_them(tmp_path, caplog):
    """A DanceGRPO eta of 1e6 is a defined SDE, but every sample is noise: the run warns at the start, and the stop
    for non-finite rewards names eta instead of only blaming the reward."""
    import dataclasses

    config = tiny_config(tmp_path, method="dancegrpo", eta=1e6, max_train_steps=3, max_consecutive_bad_groups=1)
    dataclasses.replace(config, seed=5)  # rebuilt configs (presets, recorded inputs) do not warn again
    warned = [r.getMessage() for r in caplog.records if "far above" in r.getMessage()]
    assert warned == [
        "eta=1e+06 (usual 0.3 for sde_type='dance_grpo') is far above the usual range; a run that goes non-finite "
        "or learns nothing names it again."
    ]
    trainer = tiny_flux_trainer(config, PROMPTS)
    with pytest.raises(TrainingStopped) as info:
        trainer.train()
    assert str(info.value) == (
        "1 training steps in a row had non-finite rewards (max_consecutive_bad_groups=1); eta=1e+06 (usual 0.3 for "
        "sde_type='dance_grpo') is far above the usual range; stopping. No checkpoint has been written yet."
    )


def test_a_learning_rate_far_above_the_usual_range_warns_naming_it(caplog):
    from diffusers_mixgrpo.training.config import GRPOConfig

    GRPOConfig(learning_rate=0.0517)
    assert [r.getMessage() for r in caplog.records] == [
        "learning_rate=0.0517 (usual 1e-5 to 1e-3) is far above the usual range; a run that goes non-finite or "
        "learns nothing names it again."
    ]


def test_a_hung_reward_beside_the_rollout_stops_at_the_timeout_without_waiting_for_the_queued_scores(tmp_path):
    """overlap_rewards: the first piece's reward call hangs; the error comes at reward_timeout, not after the second
    piece's call (queued behind it, hanging too) has also timed out."""

    def hangs(images, prompts):
        time.sleep(30)

    config = tiny_config(tmp_path, reward_timeout=1.0, sample_prompts_per_device=2, sample_max_batch_size=2)
    trainer = tiny_flux_trainer(config, PROMPTS, rewards={hangs: 1.0}, overlap_rewards=True)
    start = time.perf_counter()
    with pytest.raises(TrainingStopped, match=r"Reward 'hangs' did not answer within reward_timeout=1 s"):
        trainer.train_step()
    elapsed = time.perf_counter() - start
    print(f"overlap: hung reward to error {elapsed:.2f} s")
    assert elapsed < 1.0 * 2  # measured 1.16 s; before (a pool that waited for the queued call): 2.16 s


def test_an_eta_above_1_for_a_ddim_model_is_one_sentence(tmp_path):
    from diffusers_mixgrpo import GRPOTrainingPipeline
    from diffusers_mixgrpo.training.errors import ConfigError
    from diffusers_mixgrpo.training.model_setup import configure_rollout_scheduler
    from diffusers_mixgrpo.utils.tiny_models import build_tiny_sd_pipeline

    pipe = GRPOTrainingPipeline.from_pipe(build_tiny_sd_pipeline())
    with pytest.raises(ConfigError) as info:
        configure_rollout_scheduler(tiny_config(tmp_path, eta=1.2), pipe)
    assert str(info.value) == (
        "eta=1.2 is not allowed for a 'sd15' model, whose window is a DDIM step: DDIM's eta must lie in (0, 1] "
        "(usual: 1.0, DDPM-like), as above 1 its sqrt(1 - a_prev - std^2) is undefined."
    )
    configure_rollout_scheduler(tiny_config(tmp_path, eta=1.0), pipe)  # the shipped SD1.5 / SDXL value
    assert pipe.scheduler.config.eta == 1.0
