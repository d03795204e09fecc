"""examples/eval_rewards.py end to end on a tiny FLUX pipeline (+ a LoRA), with the weight-free JPEG rewards."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from diffusers_mixgrpo.rewards.evaluation import format_table, summarize

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "eval_rewards.py"


@pytest.fixture(scope="module")
def eval_script():
    spec = importlib.util.spec_from_file_location("eval_rewards", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline

    root = tmp_path_factory.mktemp("tiny_flux")
    pipe = build_tiny_flux_pipeline()
    pipe.save_pretrained(root / "model")
    torch.manual_seed(0)
    pipe.transformer.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_v"], init_lora_weights=False))
    pipe.save_lora_weights(root / "lora", transformer_lora_layers=get_peft_model_state_dict(pipe.transformer))
    (root / "prompts.txt").write_text("a red circle\n\na blue square on the left\n")
    return root


@pytest.fixture(scope="module")
def base_run(eval_script, tiny_flux, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("eval")
    return _run(eval_script, tiny_flux, tmp_path, "--save-images", str(tmp_path / "images")), tmp_path


def _run(eval_script, tiny_flux, tmp_path, *extra):
    out = tmp_path / "eval.json"
    argv = [
        "--model", str(tiny_flux / "model"), "--prompts", str(tiny_flux / "prompts.txt"),
        "--rewards", "jpeg_compressibility", "jpeg_incompressibility", "--num-images-per-prompt", "2",
        "--steps", "2", "--height", "32", "--width", "32", "--guidance-scale", "3.5", "--batch-size", "1",
        "--device", "cpu", "--dtype", "float32", "--output-json", str(out), *extra,
    ]  # fmt: skip
    summary = eval_script.main(argv)
    return summary, json.loads(out.read_text())


def test_reports_mean_and_standard_error_of_every_reward(base_run):
    (summary, report), tmp_path = base_run
    assert report["num_prompts"] == 2 and report["num_images"] == 4
    assert report["per_image"]["prompts"] == ["a red circle"] * 2 + ["a blue square on the left"] * 2
    inc = torch.tensor(report["per_image"]["jpeg_incompressibility"])
    assert inc.shape == (4,) and (inc > 0).all()
    torch.testing.assert_close(torch.tensor(report["per_image"]["jpeg_compressibility"]), -inc)
    s = report["rewards"]["jpeg_incompressibility"]
    assert s["n"] == 4 and math.isclose(s["mean"], inc.double().mean().item(), rel_tol=1e-6)
    assert math.isclose(s["sem"], inc.double().std().item() / 2.0, rel_tol=1e-6)
    assert len(list((tmp_path / "images").glob("*.png"))) == 4


def test_prints_a_table_of_every_reward(eval_script, tiny_flux, tmp_path, capsys):
    _run(eval_script, tiny_flux, tmp_path, "--rewards", "jpeg_incompressibility", "--steps", "1")
    table = capsys.readouterr().out
    assert table.splitlines()[0] == "| reward | mean | s.e.m. | n |"
    assert "| jpeg_incompressibility |" in table


def test_lora_changes_the_images_and_is_reproducible(eval_script, tiny_flux, tmp_path, base_run):
    (_, base), _ = base_run
    _, base_again = _run(eval_script, tiny_flux, tmp_path)
    _, lora = _run(eval_script, tiny_flux, tmp_path, "--lora", str(tiny_flux / "lora"))
    assert base["per_image"] == base_again["per_image"]
    assert lora["per_image"]["jpeg_incompressibility"] != base["per_image"]["jpeg_incompressibility"]


def test_summary_and_table_helpers():
    summary = summarize({"r": torch.tensor([1.0, 2.0, 3.0])})
    assert summary["r"]["mean"] == 2.0 and math.isclose(summary["r"]["sem"], 1 / math.sqrt(3))
    assert "| r | 2.0000 | 0.5774 | 3 |" in format_table(summary)
    assert math.isnan(summarize({"r": torch.tensor([1.0])})["r"]["sem"])
