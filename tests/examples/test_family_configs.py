"""The shipped SDXL / SANA / Wan configs train from the command line on tiny model folders (1 step, 32 px, 4 steps),
and the LoRA they write loads into the family's stock pipeline."""

from pathlib import Path

import pytest
from diffusers import DiffusionPipeline

from diffusers_mixgrpo.training.cli import train_from_command_line
from diffusers_mixgrpo.utils import tiny_family_models

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "--num_generations", "2", "--resolution", "32", "--num_inference_steps", "4", "--window_size", "2",
    "--mixed_precision", "no", "--gradient_checkpointing", "false", "--report_to", "none", "--lora_rank", "4",
    "--lora_alpha", "4", "--validation_steps", "0", "--checkpointing_steps", "0", "--max_train_steps", "1",
    "--sample_max_batch_size", "2",
]  # fmt: skip
# family -> the flags that replace the config's weight-backed reward by a weight-free one
REWARDS = {
    "sdxl": ["--rewards", "jpeg_compressibility=1.0"],
    "sana": ["--rewards", "jpeg_compressibility=1.0", "--max_sequence_length", "16"],
    # keeps the config's frame_mean reward: the per-frame average of a weight-free image reward
    "wan": ["--reward_kwargs", "frame_mean.image_reward=jpeg_compressibility", "--max_sequence_length", "16"],
}


@pytest.mark.parametrize("family", ["sdxl", "sana", "wan"])
def test_family_config_trains_a_lora_the_stock_pipeline_loads(family, tmp_path):
    model = tmp_path / "model"
    getattr(tiny_family_models, f"build_tiny_{family}_pipeline")().save_pretrained(model)
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    out = tmp_path / "out"
    config = ROOT / "examples" / "configs" / f"{family}_mixgrpo.yaml"
    argv = ["--config", str(config), "--pretrained_model_name_or_path", str(model)]
    argv += ["--output_dir", str(out), "--prompt_file", str(tmp_path / "prompts.txt"), *SMALL, *REWARDS[family]]
    train_from_command_line(argv)
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    stock = DiffusionPipeline.from_pretrained(model)
    stock.load_lora_weights(str(out))
    denoiser = stock.unet if family == "sdxl" else stock.transformer
    assert any("lora" in name for name, _ in denoiser.named_parameters())
