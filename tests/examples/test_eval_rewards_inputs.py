"""examples/eval_rewards.py refuses bad inputs in one line before any model loads or image is generated (issue 13,
item 10): the model, the LoRA, the output paths and the reward options."""

import json

import pytest


def _fails(eval_rewards_script, argv, capsys):
    with pytest.raises(SystemExit) as info:
        eval_rewards_script.main(argv)
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the libraries' loading bars, if any
    assert info.value.code == 1 and last.startswith("error: "), last
    return last


def test_bad_model_lora_and_output_paths_fail_before_the_model_loads(
    eval_rewards_script, tmp_path, monkeypatch, capsys
):
    import diffusers

    def no_model(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the inputs were checked")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", no_model)
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    (tmp_path / "p.txt").write_text("a cat\n")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty").mkdir()
    checkpoint = tmp_path / "run" / "checkpoint-5"
    checkpoint.mkdir(parents=True)
    (checkpoint / "checkpoint_complete.json").write_text("{}")
    (checkpoint / "lora_adapter.safetensors").write_text("")
    cases = [
        (["--model", str(tmp_path / "nowhere")], "--model='" + str(tmp_path / "nowhere") + "' does not exist"),
        (["--model", str(tmp_path / "empty")], "is a folder without model_index.json"),
        (["--lora", str(tmp_path / "no-lora")], "no-lora' does not exist (no such file or folder"),
        (["--lora", str(tmp_path / "empty")], "holds no LoRA weights"),
        (["--lora", str(checkpoint)], "is a resumable training checkpoint"),
        (["--output-json", str(tmp_path / "a_file" / "eval.json")], "a_file' is a file, not a folder"),
        (["--output-json", str(tmp_path / "empty")], "is a folder; give a file name"),
        (["--save-images", str(tmp_path / "a_file")], "--save-images='" + str(tmp_path / "a_file") + "' is a file"),
        # the toy_world factory takes **kwargs: its options are those of ToyWorldReward
        (["--rewards", "toy_world", "--reward-option", "toy_world.colour_weight=1"], "unknown option 'colour_weight'"),
    ]
    for extra, fragment in cases:
        argv = ["--model", str(model), "--prompts", str(tmp_path / "p.txt"), "--rewards", "jpeg_compressibility"]
        err = _fails(eval_rewards_script, [*argv, *extra], capsys)
        assert fragment in err, (extra, err)


def test_a_lora_that_does_not_load_is_one_line(eval_rewards_script, tmp_path, capsys):
    from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline

    build_tiny_flux_pipeline().save_pretrained(tmp_path / "model")
    (tmp_path / "p.txt").write_text("a cat\n")
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"not a safetensors file")
    argv = [
        "--model", str(tmp_path / "model"), "--prompts", str(tmp_path / "p.txt"), "--rewards", "jpeg_compressibility",
        "--lora", str(tmp_path / "lora"), "--device", "cpu", "--steps", "1", "--height", "16", "--width", "16",
    ]  # fmt: skip
    err = _fails(eval_rewards_script, argv, capsys)
    assert "Could not load the LoRA" in err and "into FluxPipeline" in err, err
