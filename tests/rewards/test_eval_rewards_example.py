"""examples/eval_rewards.py end to end on a tiny FLUX pipeline (+ a LoRA), with the weight-free JPEG rewards."""

import json
import math

import pytest
import torch

from diffusers_mixgrpo.rewards.evaluation import format_table, summarize


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
def base_run(eval_rewards_script, tiny_flux, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("eval")
    return _run(eval_rewards_script, tiny_flux, tmp_path, "--save-images", str(tmp_path / "images")), tmp_path


def _run(eval_rewards_script, tiny_flux, tmp_path, *extra):
    out = tmp_path / "eval.json"
    argv = [
        "--model", str(tiny_flux / "model"), "--prompts", str(tiny_flux / "prompts.txt"),
        "--rewards", "jpeg_compressibility", "jpeg_incompressibility", "--num-images-per-prompt", "2",
        "--steps", "2", "--height", "32", "--width", "32", "--guidance-scale", "3.5", "--batch-size", "1",
        "--device", "cpu", "--dtype", "float32", "--output-json", str(out), *extra,
    ]  # fmt: skip
    summary = eval_rewards_script.main(argv)
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


def test_prints_a_table_of_every_reward(eval_rewards_script, tiny_flux, tmp_path, capsys):
    _run(eval_rewards_script, tiny_flux, tmp_path, "--rewards", "jpeg_incompressibility", "--steps", "1")
    table = capsys.readouterr().out
    assert table.splitlines()[0] == "| reward | mean | s.e.m. | n |"
    assert "| jpeg_incompressibility |" in table


def test_lora_changes_the_images_and_is_reproducible(eval_rewards_script, tiny_flux, tmp_path, base_run):
    (_, base), _ = base_run
    _, base_again = _run(eval_rewards_script, tiny_flux, tmp_path)
    _, lora = _run(eval_rewards_script, tiny_flux, tmp_path, "--lora", str(tiny_flux / "lora"))
    assert base["per_image"] == base_again["per_image"]
    assert lora["per_image"]["jpeg_incompressibility"] != base["per_image"]["jpeg_incompressibility"]


def test_summary_and_table_helpers():
    summary = summarize({"r": torch.tensor([1.0, 2.0, 3.0])})
    assert summary["r"]["mean"] == 2.0 and math.isclose(summary["r"]["sem"], 1 / math.sqrt(3))
    assert "| r | 2.0000 | 0.5774 | 3 |" in format_table(summary)
    assert math.isnan(summarize({"r": torch.tensor([1.0])})["r"]["sem"])


def test_the_toy_model_is_sampled_with_its_own_defaults(eval_rewards_script, tmp_path):
    """Without flags, the toy model's sampling_defaults.json sets 16 prompt tokens, 10 steps, 32 px: real images (at
    FLUX's 512 tokens they were black and every score 0)."""
    from diffusers_mixgrpo.toy_world import heldout_prompts
    from diffusers_mixgrpo.toy_world.base_model import ASSETS_DIR

    (tmp_path / "p.txt").write_text("\n".join(heldout_prompts(1)[:2]) + "\n")
    out = tmp_path / "eval.json"
    eval_rewards_script.main(
        ["--model", str(ASSETS_DIR), "--prompts", str(tmp_path / "p.txt"), "--rewards", "toy_world",
         "--device", "cpu", "--output-json", str(out)]
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["sampling"] == {
        "num_inference_steps": 10, "height": 32, "width": 32, "guidance_scale": 3.5, "max_sequence_length": 16
    }  # fmt: skip
    assert report["rewards"]["toy_world"]["mean"] > 0.3


def test_bad_inputs_are_one_line_before_the_model_loads(eval_rewards_script, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a cat\n")
    cases = [
        (["--rewards", "hpsv3"], "rewards names 'hpsv3', which is not a registered reward"),
        (["--rewards", "jpeg_compressibility", "--reward-option", "jpeg_compressibility.size=3"], "unknown option"),
        (["--rewards", "jpeg_compressibility", "--prompts", str(tmp_path / "none.txt")], "does not exist"),
    ]
    for extra, fragment in cases:
        argv = ["--model", str(tmp_path / "no-model"), "--prompts", str(tmp_path / "p.txt"), *extra]
        with pytest.raises(SystemExit) as info:
            eval_rewards_script.main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 1 and fragment in err and "Traceback" not in err, err
