"""examples/eval_rewards.py runs the evaluation protocol (issue 22, item 8): per-(prompt, image) seeds, the same scores
for any batch size and under `accelerate launch` with two processes, the protocol written into the JSON, and the MixGRPO
paper's preset, whose prompt file is named for download when it is missing."""

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusers_mixgrpo.training import eval_cli
from diffusers_mixgrpo.training.evaluation import EVAL_PRESETS, eval_seed

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "eval_rewards.py"


@pytest.fixture(scope="module")
def toy_prompts(tmp_path_factory):
    from diffusers_mixgrpo.toy_world import heldout_prompts

    path = tmp_path_factory.mktemp("prompts") / "p.txt"
    path.write_text("\n".join(heldout_prompts(1)[:3]) + "\n")
    return path


def _argv(prompts, out, *extra):
    from diffusers_mixgrpo.toy_world.base_model import ASSETS_DIR

    return [
        "--model", str(ASSETS_DIR), "--prompts", str(prompts), "--rewards", "toy_world", "jpeg_incompressibility",
        "--num-images-per-prompt", "2", "--steps", "4", "--seed", "3", "--device", "cpu", "--dtype", "float32",
        "--output-json", str(out), *extra,
    ]  # fmt: skip


def test_the_json_records_the_protocol_and_each_images_seed(toy_prompts, tmp_path):
    eval_cli.main(_argv(toy_prompts, tmp_path / "a.json", "--batch-size", "4"))
    report = json.loads((tmp_path / "a.json").read_text())
    protocol = report["protocol"]
    assert protocol["num_inference_steps"] == 4 and protocol["guidance_scale"] == 3.5  # flag; the model's default
    assert (protocol["height"], protocol["width"]) == (32, 32)  # the toy model's sampling_defaults.json
    assert protocol["images_per_prompt"] == 2 and protocol["seed"] == 3 and protocol["preset"] is None
    assert protocol["num_processes"] == 1 and protocol["dtype"] == "float32"
    assert protocol["prompts"] == {
        "path": str(toy_prompts),
        "sha256": hashlib.sha256(toy_prompts.read_bytes()).hexdigest(),
        "num_prompts": 3,
    }
    per_image = report["per_image"]
    assert per_image["prompt_index"] == [0, 0, 1, 1, 2, 2] and per_image["image_index"] == [0, 1] * 3
    assert per_image["seeds"] == [eval_seed(3, i, j) for i, j in zip(per_image["prompt_index"], [0, 1] * 3)]
    assert [row["prompt"] for row in report["per_prompt"]] == per_image["prompts"][::2]
    toy = torch.tensor(per_image["toy_world"])
    assert toy[0] != toy[1]  # two images of one prompt: two noises
    # another batch size: the same images, the same scores
    eval_cli.main(_argv(toy_prompts, tmp_path / "b.json", "--batch-size", "1"))
    assert json.loads((tmp_path / "b.json").read_text())["per_image"] == per_image


def test_accelerate_launch_with_two_processes_gives_the_single_process_scores(toy_prompts, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on the CPU (torchrun + gloo; accelerate's `--cpu` launcher
    starts one process): the items are split 3 + 3, gathered, and only the main process writes. Measured difference
    to one process: 0.0 for every image; the tolerance is 1e-6."""
    eval_cli.main(_argv(toy_prompts, tmp_path / "one.json", "--batch-size", "2"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += [
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29611",
    ]
    subprocess.run(
        [*launch, str(SCRIPT), *_argv(toy_prompts, tmp_path / "two.json", "--batch-size", "2")],
        check=True,
        env=env,
        timeout=600,
    )
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["protocol"]["num_processes"] == 2 and one["protocol"]["num_processes"] == 1
    for key in ("prompts", "prompt_index", "image_index", "seeds"):
        assert two["per_image"][key] == one["per_image"][key]
    for name in ("toy_world", "jpeg_incompressibility"):
        torch.testing.assert_close(
            torch.tensor(two["per_image"][name]), torch.tensor(one["per_image"][name]), rtol=0, atol=1e-6
        )


def test_the_paper_preset_sets_the_protocol_and_names_the_prompt_file_to_download(tmp_path, capsys):
    preset = EVAL_PRESETS["mixgrpo-paper"]
    assert (preset.num_inference_steps, preset.height, preset.width, preset.guidance_scale) == (50, 1024, 1024, 3.5)
    assert (preset.images_per_prompt, preset.seed, preset.max_sequence_length) == (1, 617, 512)
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(SystemExit):
        eval_cli.main(["--preset", "mixgrpo-paper", "--model", str(model)])
    err = capsys.readouterr().err
    assert "error: The evaluation preset 'mixgrpo-paper' runs on the 400 HPDv2 test prompts" in err
    assert "download data/prompts_test.txt of https://github.com/Tencent-Hunyuan/MixGRPO" in err
    assert "pass the file as --prompts" in err

    args = eval_cli.parse_args(["--preset", "mixgrpo-paper", "--model", str(model), "--steps", "20"])
    found = eval_cli._resolve_protocol(args)
    assert args.rewards == ["hpsv2.1", "pickscore", "imagereward"]
    assert (args.num_images_per_prompt, args.seed) == (1, 617)
    assert eval_cli._sampling(args, found) == {
        "num_inference_steps": 20, "height": 1024, "width": 1024, "guidance_scale": 3.5, "max_sequence_length": 512
    }  # fmt: skip
    with pytest.raises(SystemExit):
        eval_cli.main(["--preset", "no-such-preset", "--model", str(model)])
    assert "Unknown evaluation preset 'no-such-preset'; known: mixgrpo-paper" in capsys.readouterr().err


def test_a_prompt_file_other_than_the_presets_is_used_with_a_warning(tmp_path, caplog):
    (tmp_path / "p.txt").write_text("a cat\n")
    args = eval_cli.parse_args(["--preset", "mixgrpo-paper", "--model", "m", "--prompts", str(tmp_path / "p.txt")])
    preset = eval_cli._resolve_protocol(args)
    with caplog.at_level(logging.WARNING):
        prompts, source = eval_cli._read_prompts(args, preset)
    assert prompts == ["a cat"] and source["matches_preset"] is False
    assert "is not the prompt file of the preset 'mixgrpo-paper'" in caplog.text
