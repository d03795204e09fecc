"""`examples/train_mixgrpo.py` (the `mixgrpo-train` command) runs end to end on tiny local FLUX.1 / SD3 / SD1.5 models
with the shipped YAML configs, whose `model_family` pins the family."""

import sys
from pathlib import Path

import pytest
import torch

from diffusers_mixgrpo.utils.tiny_models import (
    build_tiny_flux_pipeline,
    build_tiny_sd3_pipeline,
    build_tiny_sd_pipeline,
)
from testing_utils import run_example, subprocess_env

ROOT = Path(__file__).resolve().parents[2]
BUILDERS = {"flux": build_tiny_flux_pipeline, "sd3": build_tiny_sd3_pipeline, "sd15": build_tiny_sd_pipeline}
CONFIGS = {"flux": "flux_mixgrpo.yaml", "sd3": "sd3_mixgrpo.yaml", "sd15": "sd15_mixgrpo.yaml"}
TINY_FLAGS = [
    "--max_train_steps",
    "1",
    "--resolution",
    "32",
    "--num_inference_steps",
    "4",
    "--num_generations",
    "2",
    "--window_size",
    "2",
    "--rewards",
    "jpeg_compressibility=1.0",
    "--mixed_precision",
    "no",
    "--gradient_checkpointing",
    "false",
    "--report_to",
    "none",
    "--lora_rank",
    "4",
    "--lora_alpha",
    "8",  # not the rank: a LoRA file without its lora_alpha would load at half strength
    "--validation_steps",
    "0",
    "--checkpointing_steps",
    "1",
]


SCRIPT = ROOT / "examples" / "train_mixgrpo.py"


def run_script(argv):
    run_example(SCRIPT.name, argv)


@pytest.mark.parametrize("family", ["flux", "sd3", "sd15"])
def test_training_script_trains_and_writes_a_lora_a_stock_pipeline_loads(family, tmp_path):
    model = tmp_path / "model"
    stock = BUILDERS[family]()
    stock.save_pretrained(model)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on the left\na blue square on the right\n")
    out = tmp_path / "out"
    argv = [
        "--config",
        str(ROOT / "examples" / "configs" / CONFIGS[family]),
        "--pretrained_model_name_or_path",
        str(model),
        "--prompt_file",
        str(prompts),
        "--output_dir",
        str(out),
        *TINY_FLAGS,
    ]
    run_script(argv)
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "checkpoint-1").is_dir()
    fresh = type(stock).from_pretrained(model)
    fresh.load_lora_weights(str(out))
    denoiser = fresh.transformer if family != "sd15" else fresh.unet
    assert any("lora" in n for n, _ in denoiser.named_parameters())
    (loaded,) = denoiser.peft_config.values()
    assert (loaded.r, loaded.lora_alpha) == (4, 8)  # the trained scale alpha / r = 2, not 1

    # --resume_from_checkpoint latest picks the checkpoint up and trains one more step
    run_script([*argv, "--max_train_steps", "2", "--resume_from_checkpoint", "latest"])  # last flag wins
    assert (out / "checkpoint-2").is_dir()


def test_the_flux_config_refuses_an_sd3_model_in_one_line_before_loading_it(tmp_path, capsys):
    model = tmp_path / "model"
    build_tiny_sd3_pipeline().save_pretrained(model)
    (tmp_path / "p.txt").write_text("a cat\n")
    with pytest.raises(SystemExit) as exit_info:
        run_script(
            [
                "--config",
                str(ROOT / "examples" / "configs" / CONFIGS["flux"]),
                "--pretrained_model_name_or_path",
                str(model),
                "--prompt_file",
                str(tmp_path / "p.txt"),
                "--output_dir",
                str(tmp_path / "o"),
                "--rewards",
                "jpeg_compressibility=1.0",
                "--report_to",
                "none",
            ],
        )
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "is a 'sd3' model but this run expects 'flux'" in err
    assert "Traceback" not in err and "Loading pipeline components" not in err  # refused before the model loads


def test_missing_weights_fail_with_a_clear_message(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a cat\n")
    with pytest.raises(SystemExit) as exit_info:
        run_script(
            [
                "--pretrained_model_name_or_path",
                str(tmp_path / "nowhere"),
                "--prompt_file",
                str(tmp_path / "p.txt"),
                "--output_dir",
                str(tmp_path / "o"),
                "--rewards",
                "jpeg_compressibility=1.0",
                "--report_to",
                "none",
            ],
        )
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: pretrained_model_name_or_path=") and "nowhere' does not exist" in err[-1]
    assert torch.__version__  # the process is still usable


def test_sigterm_to_a_training_process_saves_a_complete_checkpoint_that_resumes(tmp_path):
    """A real `train_mixgrpo.py` process gets a real SIGTERM mid-run: it finishes its step, writes a complete
    checkpoint, prints one line and exits with 143; the checkpoint verifies against its manifest and resumes."""
    import signal
    import subprocess
    import time

    from diffusers_mixgrpo.training.checkpointing import CheckpointManager
    from diffusers_mixgrpo.training.cli import train_from_command_line

    model = tmp_path / "model"
    build_tiny_flux_pipeline().save_pretrained(model)
    (tmp_path / "p.txt").write_text("a red circle on the left\na blue square on the right\n")
    out = tmp_path / "out"
    args = [
        "--pretrained_model_name_or_path", str(model), "--prompt_file", str(tmp_path / "p.txt"),
        "--output_dir", str(out), "--max_train_steps", "1000", "--checkpointing_steps", "0",
        *TINY_FLAGS[2:-2],  # without its --max_train_steps and --checkpointing_steps
    ]  # fmt: skip
    env = subprocess_env(OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "training_config.yaml").exists():  # written when the training loop starts
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("Stopped by SIGTERM at step ") and "--resume_from_checkpoint latest" in last, last
    step = int(last.split("at step ")[1].split(";")[0])
    manager = CheckpointManager(out)
    assert manager.latest() == str(out / f"checkpoint-{step}")
    manager.verify(manager.latest())  # every file complete, as the manifest says
    resumed = train_from_command_line(
        ["--output_dir", str(out), "--resume_from_checkpoint", "latest", "--max_train_steps", str(step + 1)]
    )
    assert resumed.global_step == step + 1 and (out / "pytorch_lora_weights.safetensors").is_file()
