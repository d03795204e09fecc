"""Faults late in a run and around its output folder (issue 21, item 7): a finished run is not overwritten silently, a
moved base model still resumes (another model at the same path does not), resume errors name the folder, an output
folder that turns read-only ends in one sentence, and `--push_to_hub` problems show before the first step (and a
failed push still leaves the summary). Tiny FLUX models, 1-2 steps, in this process."""

import json
import os
import shutil
from unittest import mock

import pytest

from diffusers_mixgrpo.training import errors
from diffusers_mixgrpo.training.cli import train_from_command_line

CheckpointError, ConfigError, MixGRPOError = errors.CheckpointError, errors.ConfigError, errors.MixGRPOError
# new in issue 21 (getattr: so that the file runs against the code before it, where these tests fail)
OutputNotWritableError = getattr(errors, "OutputNotWritableError", errors.MixGRPOError)
HubPushError = getattr(errors, "HubPushError", errors.MixGRPOError)

TINY = [
    "--num_generations", "2", "--resolution", "32", "--num_inference_steps", "4", "--window_size", "2",
    "--report_to", "none", "--lora_rank", "4", "--lora_alpha", "4", "--validation_steps", "0",
    "--rewards", "jpeg_compressibility=1.0",
]  # fmt: skip
NO_MODEL = "diffusers_mixgrpo.training.trainer.load_training_pipeline"


@pytest.fixture
def model_dir(tiny_flux_dir, tmp_path):
    """A copy of the tiny FLUX folder that a test may move or change."""
    return str(shutil.copytree(tiny_flux_dir, tmp_path / "models" / "flux"))


@pytest.fixture
def run_args(model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on the left\na blue square on the right\n")
    out = str(tmp_path / "out")
    return ["--pretrained_model_name_or_path", model_dir, "--prompt_file", str(prompts), "--output_dir", out, *TINY]


def _refuse_model_load(monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(NO_MODEL, load)


# -- 1. a finished run without checkpoint is not overwritten -----------------------------------------------------------


def test_a_finished_run_without_checkpoint_is_not_overwritten(run_args, tmp_path, monkeypatch):
    train_from_command_line([*run_args, "--max_train_steps", "1", "--checkpointing_steps", "0"])
    lora = tmp_path / "out" / "pytorch_lora_weights.safetensors"
    before = lora.read_bytes()
    _refuse_model_load(monkeypatch)
    with pytest.raises(
        ConfigError, match=r"out' already holds a finished run \(the final LoRA .*--overwrite_output_dir"
    ):
        train_from_command_line([*run_args, "--max_train_steps", "1"])
    assert lora.read_bytes() == before


def test_overwrite_output_dir_replaces_a_finished_run_and_is_not_inherited(run_args, tmp_path, monkeypatch):
    train_from_command_line([*run_args, "--max_train_steps", "1", "--checkpointing_steps", "0"])
    out = train_from_command_line([*run_args, "--max_train_steps", "1", "--overwrite_output_dir", "--seed", "3"])
    assert out.global_step == 1
    # the saved config holds overwrite_output_dir: true, yet a resume request without a checkpoint is refused
    _refuse_model_load(monkeypatch)
    with pytest.raises(ConfigError, match=r"holds a finished run .* but no checkpoint to resume from"):
        train_from_command_line(["--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", "latest"])


# -- 2 and 3. the base model is recognised by its files, resume errors name the folder ---------------------------------


def test_a_moved_base_model_resumes_from_its_new_folder(run_args, model_dir, tmp_path, caplog):
    train_from_command_line([*run_args, "--max_train_steps", "1", "--checkpointing_steps", "1"])
    moved = str(tmp_path / "elsewhere" / "flux")
    shutil.move(model_dir, moved)
    resume = ["--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", "latest", "--max_train_steps", "2"]
    with pytest.raises(
        CheckpointError, match=r"its base model folder .*flux' no longer exists; pass the folder's new"
    ):
        train_from_command_line(resume)
    with caplog.at_level("WARNING", logger="diffusers_mixgrpo"):
        out = train_from_command_line([*resume, "--pretrained_model_name_or_path", moved])
    assert out.global_step == 2
    assert out.summary.config_changes[0]["changes"]["pretrained_model_name_or_path"] == [model_dir, moved]


def test_another_model_at_the_same_path_is_refused_before_it_loads(run_args, model_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    train_from_command_line([*run_args, "--max_train_steps", "1", "--checkpointing_steps", "1"])
    weights = os.path.join(model_dir, "transformer", "diffusion_pytorch_model.safetensors")
    save_file({k: v + 1 for k, v in load_file(weights).items()}, weights)  # same names, sizes and config
    _refuse_model_load(monkeypatch)
    with pytest.raises(CheckpointError, match=r"checkpoint-1: the base model .*flux' is not the model it was trained"):
        train_from_command_line(["--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", "latest"])


def test_the_fingerprint_ignores_the_folder_and_files_beside_the_components(model_dir, tmp_path):
    from diffusers_mixgrpo.training import base_model

    first = base_model.base_model_fingerprint(model_dir)
    with open(os.path.join(model_dir, "sampling_defaults.json"), "w") as f:
        f.write("{}")
    copy = shutil.copytree(model_dir, tmp_path / "copy")
    assert first.startswith("sha256:") and base_model.base_model_fingerprint(str(copy)) == first
    with open(os.path.join(model_dir, "vae", "config.json"), "a") as f:
        f.write(" ")
    assert base_model.base_model_fingerprint(model_dir) != first
    assert base_model.base_model_fingerprint("org/model", "v1") == "hub:org/model@v1"


def test_a_mistyped_run_folder_is_named_not_a_missing_reward(run_args, tmp_path, monkeypatch):
    _refuse_model_load(monkeypatch)
    typo = str(tmp_path / "ouy")
    with pytest.raises(ConfigError, match=r"output_dir='.*ouy' does not exist \(no training_config.yaml, no check"):
        train_from_command_line(["--output_dir", typo, "--resume_from_checkpoint", "latest"])
    with pytest.raises(ConfigError, match=r"resume_from_checkpoint='.*ouy/checkpoint-5' does not exist"):
        train_from_command_line(["--resume_from_checkpoint", os.path.join(typo, "checkpoint-5")])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "training_config.yaml").write_text("seed: 0\n")
    with pytest.raises(ConfigError, match=r"is a run folder, not a checkpoint; resume it with --output_dir"):
        train_from_command_line(["--resume_from_checkpoint", str(tmp_path / "run")])


# -- 4. an output folder that turns read-only -------------------------------------------------------------------------


def _make_unwritable_at_step_2(monkeypatch, chmod_folder=None):
    """Checkpoint 1 saves; from then on the folder refuses writes (chmod, or a save that raises like it)."""
    from diffusers_mixgrpo.training import checkpointing

    real_save = checkpointing.CheckpointManager.save

    class RefusingWrites:  # the accelerator, whose save_state meets a folder that refuses writes
        def __init__(self, accelerator):
            self._accelerator = accelerator

        def __getattr__(self, name):
            return getattr(self._accelerator, name)

        def save_state(self, folder, **kwargs):
            raise PermissionError(13, "Permission denied", os.path.join(folder, "model.safetensors"))

    def save(self, step, accelerator, *args, **kwargs):
        if step >= 2:
            if chmod_folder is None:
                accelerator = RefusingWrites(accelerator)
            else:
                os.chmod(chmod_folder, 0o555)
        return real_save(self, step, accelerator, *args, **kwargs)

    monkeypatch.setattr(checkpointing.CheckpointManager, "save", save)


def test_an_output_folder_that_refuses_writes_mid_run_is_one_sentence(run_args, tmp_path, monkeypatch):
    _make_unwritable_at_step_2(monkeypatch)
    with pytest.raises(OutputNotWritableError) as info:
        train_from_command_line([*run_args, "--max_train_steps", "3", "--checkpointing_steps", "1"])
    message = str(info.value)
    assert "Cannot write checkpoint-2 to" in message and "(Permission denied)" in message
    assert f"the newest intact checkpoint is {tmp_path / 'out' / 'checkpoint-1'}" in message
    assert isinstance(info.value, MixGRPOError) and "\n" not in message


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_folder_made_read_only_mid_run_is_one_sentence(run_args, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _make_unwritable_at_step_2(monkeypatch, chmod_folder=str(out))
    try:
        with pytest.raises(OutputNotWritableError, match=r"checkpoint-2 .*the newest intact checkpoint is .*checkp"):
            train_from_command_line([*run_args, "--max_train_steps", "3", "--checkpointing_steps", "1"])
    finally:
        os.chmod(out, 0o755)


def test_the_final_weights_in_a_folder_that_refuses_writes(run_args, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out" / "pytorch_lora_weights.safetensors"))

    monkeypatch.setattr("diffusers_mixgrpo.training.export.save_weights", refuse)
    with pytest.raises(OutputNotWritableError, match=r"the final weights .*no checkpoint was saved before"):
        train_from_command_line([*run_args, "--max_train_steps", "1", "--checkpointing_steps", "0"])


# -- 5. push_to_hub ---------------------------------------------------------------------------------------------------


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--hub_model_id", "me/bad repo!"], r"hub_model_id 'me/bad repo!' is not a valid Hub repository id"),
        (["--hub_model_id", "me/ok"], r"no Hub token was found \(no hub_token, HF_TOKEN or `hf auth login`\)"),
        (["--hub_model_id", "me/ok", "--hub_token", "hf_x", "offline"], r"HF_HUB_OFFLINE is set"),
    ],
)
def test_push_to_hub_problems_show_before_the_model_loads(run_args, no_token, monkeypatch, extra, expected):
    from huggingface_hub import constants

    if "offline" in extra:
        extra = extra[:-1]
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _refuse_model_load(monkeypatch)
    with pytest.raises(ConfigError, match=expected):
        train_from_command_line([*run_args, "--max_train_steps", "1", "--push_to_hub", *extra])


def test_a_failed_push_still_writes_the_summary_and_names_the_folder(run_args, tmp_path, no_token):
    args = [*run_args, "--max_train_steps", "1", "--push_to_hub", "--hub_model_id", "me/ok", "--hub_token", "hf_x"]
    from diffusers_mixgrpo.training import hub

    api = mock.Mock(**{"create_repo.side_effect": OSError("connection refused")})
    with mock.patch.object(hub, "HfApi", return_value=api):
        with pytest.raises(HubPushError) as info:
            train_from_command_line(args)
    out = str(tmp_path / "out")
    message = str(info.value)
    assert f"push of {out!r} to the Hub repository 'me/ok' failed (OSError: connection refused)" in message
    assert f"`hf upload me/ok {out} --exclude 'checkpoint-*/*'`" in message
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    assert summary["steps"] == 1 and summary["weights"].endswith("pytorch_lora_weights.safetensors")
