"""The generic `examples/train_mixgrpo.py` detects the family from the model folder and trains the 2026 families."""

from pathlib import Path

import pytest
import torch
import yaml

from diffusers_mixgrpo.utils.tiny_family_models import (
    build_tiny_flux2_klein_pipeline,
    build_tiny_flux2_pipeline,
    build_tiny_qwenimage_pipeline,
    build_tiny_zimage_pipeline,
)
from testing_utils import run_example

ROOT = Path(__file__).resolve().parents[2]
BUILDERS = {
    "qwenimage": build_tiny_qwenimage_pipeline,
    "flux2": build_tiny_flux2_pipeline,
    "flux2_klein": build_tiny_flux2_klein_pipeline,
    "zimage": build_tiny_zimage_pipeline,
}
# the tiny models' prompts are short: 64 tokens keep the FLUX.2 / Z-Image encoders (padded to it) fast
TINY_FLAGS = (
    "--max_train_steps 1 --resolution 32 --num_inference_steps 4 --num_generations 2 --window_size 2 "
    "--rewards jpeg_compressibility=1.0 --mixed_precision no --gradient_checkpointing false --report_to none "
    "--lora_rank 4 --lora_alpha 4 --validation_steps 0 --checkpointing_steps 0 --max_sequence_length 64"
).split()


def run_generic(argv):
    run_example("train_mixgrpo.py", argv)


def prepare(family, tmp_path):
    model = tmp_path / "model"
    BUILDERS[family]().save_pretrained(model)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on the left\na blue square on the right\n")
    return model, prompts


@pytest.mark.parametrize("family", list(BUILDERS))
def test_generic_script_trains_each_family_with_its_config_and_the_stock_pipeline_loads_the_lora(family, tmp_path):
    model, prompts = prepare(family, tmp_path)
    out = tmp_path / "out"
    config = ROOT / "examples" / "configs" / f"{family}_mixgrpo.yaml"
    run_generic(
        ["--config", str(config), "--pretrained_model_name_or_path", str(model), "--prompt_file", str(prompts)]
        + ["--output_dir", str(out), *TINY_FLAGS]
    )
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    saved = yaml.safe_load((out / "training_config.yaml").read_text())
    assert saved["model_family"] == family and saved["shift"] is None

    stock_cls = type(BUILDERS[family]())
    fresh = stock_cls.from_pretrained(model)
    fresh.set_progress_bar_config(disable=True)
    kw = dict(prompt="a red circle", height=32, width=32, num_inference_steps=3, output_type="pt")
    before = fresh(generator=torch.Generator().manual_seed(0), **kw).images
    fresh.load_lora_weights(str(out))
    after = fresh(generator=torch.Generator().manual_seed(0), **kw).images
    assert torch.isfinite(after).all() and after.shape == before.shape
    lora = [n for n, _ in fresh.transformer.named_parameters() if "lora_" in n]
    assert lora, "the stock pipeline loaded no LoRA weights"


def test_generic_script_detects_the_family_without_a_config(tmp_path):
    model, prompts = prepare("zimage", tmp_path)
    out = tmp_path / "out"
    run_generic(
        ["--pretrained_model_name_or_path", str(model), "--prompt_file", str(prompts), "--output_dir", str(out)]
        + TINY_FLAGS
    )
    saved = yaml.safe_load((out / "training_config.yaml").read_text())
    assert saved["model_family"] == "zimage"
    assert saved["lora_target_modules"] == ["attention.to_k", "attention.to_q", "attention.to_v", "attention.to_out.0"]


def test_generic_script_refuses_a_model_of_another_family_than_the_config_names(tmp_path, capsys):
    model, prompts = prepare("zimage", tmp_path)
    argv = ["--config", str(ROOT / "examples" / "configs" / "qwenimage_mixgrpo.yaml")]
    argv += ["--pretrained_model_name_or_path", str(model), "--prompt_file", str(prompts)]
    with pytest.raises(SystemExit) as err:
        run_generic(argv + ["--output_dir", str(tmp_path / "out"), *TINY_FLAGS])
    assert err.value.code == 1
    assert "is a 'zimage' model but this run expects 'qwenimage'" in capsys.readouterr().err
