"""The training command line (issue 13): help, model-folder sampling defaults, checks before the model loads, resume
from the output folder alone, one-line errors, the summary. Tiny FLUX models, 1-2 steps, in this process."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from diffusers_mixgrpo.training import cli
from diffusers_mixgrpo.training.cli import resolve_run_values, train_from_command_line
from diffusers_mixgrpo.training.errors import CheckpointError, ConfigError, ModelLoadError
from diffusers_mixgrpo.training.model_defaults import (
    SAMPLING_DEFAULTS_FILE,
    read_sampling_defaults,
    write_sampling_defaults,
)
from testing_utils import subprocess_env

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--num_generations", "2", "--resolution", "32", "--num_inference_steps", "4", "--window_size", "2",
    "--report_to", "none", "--lora_rank", "4", "--lora_alpha", "4", "--validation_steps", "0",
    "--rewards", "jpeg_compressibility=1.0",
]  # fmt: skip


@pytest.fixture
def run_args(tiny_flux_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on the left\na blue square on the right\n")
    return [
        "--pretrained_model_name_or_path", str(tiny_flux_dir), "--prompt_file", str(prompts),
        "--output_dir", str(tmp_path / "out"), *TINY,
    ]  # fmt: skip


def test_help_answers_without_importing_torch_and_names_the_rewards():
    script = str(ROOT / "examples" / "train_mixgrpo.py")
    code = (
        f"import runpy, sys; sys.argv = [{script!r}, '--help']\n"
        f"try:\n    runpy.run_path({script!r}, run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH')\n"
    )
    env = subprocess_env()
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    print(f"--help took {time.perf_counter() - start:.2f} s (interpreter start included)")
    assert out.strip().endswith("NO_TORCH")
    assert (
        "Align a diffusers text-to-image model" in out and "--max_sequence_length" in out and "--reward_kwargs" in out
    )
    for name in ("hpsv2.1", "pickscore", "toy_world", "unifiedreward", "jpeg_compressibility"):
        assert name in out.split("rewards (--rewards", 1)[1]


# -- sampling defaults of a model folder (item 5) ------------------------------------------------------------------


def test_the_toy_model_carries_its_sampling_defaults():
    from diffusers_mixgrpo.toy_world.base_model import ASSETS_DIR, TOY_PIPELINE_CALL_KWARGS

    defaults = read_sampling_defaults(ASSETS_DIR)
    assert defaults["max_sequence_length"] == TOY_PIPELINE_CALL_KWARGS["max_sequence_length"] == 16
    assert defaults["num_inference_steps"] == TOY_PIPELINE_CALL_KWARGS["num_inference_steps"]
    assert defaults["guidance_scale"] == TOY_PIPELINE_CALL_KWARGS["guidance_scale"]
    assert defaults["resolution"] == TOY_PIPELINE_CALL_KWARGS["height"] == TOY_PIPELINE_CALL_KWARGS["width"]
    assert defaults["shift"] is None  # the model's own grid, as it was trained


def test_sampling_defaults_fill_only_what_was_not_given(tmp_path):
    write_sampling_defaults(tmp_path, max_sequence_length=16, num_inference_steps=10, resolution=32, shift=None)
    values, applied = resolve_run_values({"pretrained_model_name_or_path": str(tmp_path), "num_inference_steps": 4})
    assert values["num_inference_steps"] == 4 and values["max_sequence_length"] == 16 and values["shift"] is None
    assert applied == {"max_sequence_length": 16, "resolution": 32, "shift": None}
    values, _ = resolve_run_values({"pretrained_model_name_or_path": str(tmp_path), "height": 64})
    assert "resolution" not in values  # a size given in any form wins over the folder's size


def test_a_bad_sampling_defaults_file_is_named(tmp_path):
    (tmp_path / SAMPLING_DEFAULTS_FILE).write_text('{"steps": 10}')
    with pytest.raises(ConfigError, match=r"sampling_defaults.json: 'steps' is not a sampling default"):
        read_sampling_defaults(tmp_path)


# -- errors before the work (item 10) ------------------------------------------------------------------------------


def _bad_inputs(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("une pomme rôtie\n".encode("latin-1"))
    (tmp_path / "blank.txt").write_text("\n   \n")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "not_a_pipeline").mkdir(exist_ok=True)
    (tmp_path / "broken.yaml").write_text("learning_rate: 1e-4\n: : :\n")
    return [
        (["--rewards", "hpsv3=1.0"], "rewards names 'hpsv3', which is not a registered reward; available:"),
        (["--reward_kwargs", "jpeg_compressibility.checkpoint=/m"], "has the unknown option 'checkpoint'"),
        (["--prompt_file", str(tmp_path / "missing.txt")], "missing.txt' does not exist"),
        (["--prompt_file", str(tmp_path / "latin1.txt")], "latin1.txt' is not UTF-8 text (byte 11"),
        (["--prompt_file", str(tmp_path / "blank.txt")], "holds no prompt"),
        (["--output_dir", str(tmp_path / "a_file")], "is a file, not a folder"),
        (["--output_dir", str(tmp_path / "a_file" / "out")], "is not writable"),
        (["--use_lora", "false", "--kl_type", "reference", "--kl_coeff", "0.1"], "needs use_lora=True"),
        (["--window_size", "2.0"], "invalid int value"),  # argparse's own message for a flag
        (
            ["--resume_from_checkpoint", "checkpoint-7"],
            "checkpoint-7' does not exist (nor a folder inside output_dir=",
        ),
        # a factory taking **kwargs is checked against the class it returns (toy_world: ToyWorldReward)
        (
            ["--rewards", "toy_world=1", "--reward_kwargs", "toy_world.colour_weight=1"],
            "unknown option 'colour_weight'",
        ),
        (["--pretrained_model_name_or_path", str(tmp_path / "nowhere")], "nowhere' does not exist (no such folder"),
        (["--pretrained_model_name_or_path", str(tmp_path / "not_a_pipeline")], "folder without model_index.json"),
        (["--pretrained_model_name_or_path", str(tmp_path / "a_file")], "a_file' is a file; pass a diffusers"),
        (["--config", str(tmp_path / "broken.yaml")], "is not a readable YAML file (line 2, column 1: expected"),
    ]


def test_bad_inputs_fail_in_one_sentence_before_the_model_loads(run_args, tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr("diffusers_mixgrpo.training.trainer.load_training_pipeline", no_model)
    for extra, fragment in _bad_inputs(tmp_path):
        with pytest.raises(SystemExit) as info:
            cli.main([*run_args, "--model_family", "flux", *extra])
        err = capsys.readouterr().err
        assert info.value.code in (1, 2), extra
        assert fragment in err, (extra, err)
        assert "Traceback" not in err
        if info.value.code == 1:
            assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err


def test_lora_targets_that_match_no_layer_are_one_line(run_args, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([*run_args, "--model_family", "flux", "--lora_target_modules", "to_qq", "--max_train_steps", "1"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 1 and last.startswith("error: lora_target_modules=['to_qq'] match no layer"), last
    assert "the flux default is ['attn.to_k'" in last


def test_a_fresh_run_never_resumes_silently(run_args, tmp_path, caplog):
    first = train_from_command_line([*run_args, "--max_train_steps", "1", "--checkpointing_steps", "1"])
    assert first.global_step == 1 and not any("Resuming" in r.message for r in caplog.records)
    with pytest.raises(ConfigError, match="already holds checkpoints of a run .*--resume_from_checkpoint latest"):
        train_from_command_line([*run_args, "--max_train_steps", "2"])


def test_resume_needs_nothing_but_the_output_folder(run_args, tmp_path, caplog, monkeypatch):
    train_from_command_line([*run_args, "--max_train_steps", "1", "--checkpointing_steps", "1"])
    saved = yaml.safe_load((tmp_path / "out" / "training_config.yaml").read_text())
    assert saved["pretrained_model_name_or_path"] and saved["rewards"] == {"jpeg_compressibility": 1.0}
    monkeypatch.chdir(tmp_path.parent)  # another working directory: the saved paths are absolute
    with caplog.at_level("INFO", logger="diffusers_mixgrpo"):
        out = train_from_command_line(
            ["--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", "latest", "--max_train_steps", "2"]
        )
    assert out.global_step == 2 and (tmp_path / "out" / "checkpoint-2").is_dir()
    messages = [r.getMessage() for r in caplog.records]
    assert any("Resuming from" in m and "checkpoint-1 at step 1 of 2" in m for m in messages)
    assert out.summary.config_changes == [{"step": 1, "changes": {"max_train_steps": [1, 2]}}]


def test_resuming_with_another_lora_rank_is_refused_before_the_model_loads(run_args, tmp_path, monkeypatch):
    train_from_command_line([*run_args, "--max_train_steps", "1", "--checkpointing_steps", "1"])
    monkeypatch.setattr("diffusers_mixgrpo.training.trainer.load_training_pipeline", None)
    with pytest.raises(CheckpointError, match=r"with lora_rank=8: it was trained with lora_rank=4"):
        train_from_command_line(
            ["--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", "latest", "--lora_rank", "8"]
        )


def test_a_missing_model_is_one_line(run_args, tmp_path):
    args = [*run_args, "--pretrained_model_name_or_path", str(tmp_path / "nowhere")]
    with pytest.raises(ModelLoadError, match=r"nowhere' does not exist \(no such folder, and it is not a Hub id"):
        train_from_command_line(args)


def test_an_uncached_hub_id_offline_fails_before_the_model_loads(run_args, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("diffusers_mixgrpo.training.trainer.load_training_pipeline", None)
    args = [*run_args, "--pretrained_model_name_or_path", "black-forest-labs/FLUX.1-dev"]
    with pytest.raises(ModelLoadError, match=r"not in the Hugging Face cache, and HF_HUB_OFFLINE is set.*hf download"):
        train_from_command_line(args)


def test_the_model_load_hint_names_a_command_that_exists(tmp_path):
    import shutil

    from diffusers_mixgrpo.training.config import GRPOConfig
    from diffusers_mixgrpo.training.trainer import load_training_pipeline

    config = GRPOConfig(pretrained_model_name_or_path=str(tmp_path / "nowhere"), report_to="none")
    with pytest.raises(ModelLoadError, match=r"`hf download .*nowhere`") as info:
        load_training_pipeline(config)  # huggingface_hub 1.x has no `huggingface-cli` any more
    command = str(info.value).split("`")[1].split()[0]
    assert shutil.which(command, path=os.path.dirname(sys.executable)) or shutil.which(command), command


def test_the_run_ends_with_a_summary(run_args, tmp_path, caplog):
    with caplog.at_level("INFO", logger="diffusers_mixgrpo"):
        out = train_from_command_line([*run_args, "--max_train_steps", "2", "--checkpointing_steps", "0"])
    lines = [r.getMessage() for r in caplog.records]
    weights = str(tmp_path / "out" / "pytorch_lora_weights.safetensors")
    assert any(line.startswith("Training finished: 2 of 2 steps in") for line in lines)
    assert any(weights in line for line in lines) and any("train reward:" in line for line in lines)
    saved = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    assert saved["weights"] == weights == out.summary.weights and saved["steps"] == 2
    assert saved["final_reward"] == pytest.approx(out.reward_history["train_reward"][-1][1])


def test_the_summary_evaluates_the_final_weights(run_args, tmp_path):
    """validation_steps does not divide max_train_steps: the run still ends with an evaluation of what it saves (the
    summary's evaluation reward was the base model's, at step 0)."""
    out = train_from_command_line([*run_args, "--max_train_steps", "2", "--validation_steps", "5"])
    assert [step for step, _ in out.reward_history["eval_reward"]] == [0, 2]
    assert out.summary.eval_reward_step == 2
    assert out.summary.eval_reward == pytest.approx(out.reward_history["eval_reward"][-1][1])


def test_resuming_a_folder_without_checkpoints_says_so_once(run_args, tmp_path, caplog):
    """A run killed before its first checkpoint left only its config: `latest` starts it fresh, with one warning (a
    finished run is refused instead: tests/training/test_run_folder_faults.py); with --overwrite_output_dir the
    warning says that the finished run's weights are replaced."""
    train_from_command_line([*run_args, "--max_train_steps", "1", "--checkpointing_steps", "0"])
    for name in ("pytorch_lora_weights.safetensors", "training_summary.json"):
        (tmp_path / "out" / name).unlink()
    with caplog.at_level("INFO", logger="diffusers_mixgrpo"):
        train_from_command_line(["--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", "latest"])
    said = [r for r in caplog.records if "holds no checkpoint; starting fresh" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"
    assert "the weights of the finished run" not in said[0].getMessage()
    caplog.clear()
    with caplog.at_level("INFO", logger="diffusers_mixgrpo"):
        train_from_command_line(
            ["--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", "latest", "--overwrite_output_dir"]
        )
    said = [r.getMessage() for r in caplog.records if "holds no checkpoint; starting fresh" in r.getMessage()]
    assert len(said) == 1 and "the weights of the finished run" in said[0] and "will be replaced" in said[0]
