"""The periodic evaluation (issue 22, item 8): held-out prompts from `validation_prompts` / `validation_prompt_file`,
several images per prompt from fixed per-(prompt, image) seeds, split across the processes and gathered (one process and
two give the same per-image scores), logged as per-reward means, a per-prompt table and an image grid."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from diffusers_mixgrpo.training import trainer as trainer_module
from diffusers_mixgrpo.training.config import GRPOConfig
from diffusers_mixgrpo.training.errors import ConfigError
from diffusers_mixgrpo.training.evaluation import eval_items, eval_seed, shard_items
from diffusers_mixgrpo.training.logging_utils import log_table
from diffusers_mixgrpo.training.preflight import check_run_inputs
from diffusers_mixgrpo.training.trainer import GRPOTrainer
from testing_utils import brightness, run_ranks, tiny_config, tiny_flux_trainer

SCRIPT = Path(__file__).with_name("eval_equivalence_script.py")
TRAIN = ["a red circle on the left", "a blue square on the right", "a green cross on the top", "a cat", "a dog"]
HELD_OUT = ["a yellow circle", "a purple square on the left", "a cat on the right"]


def make_config(tmp_path, **overrides) -> GRPOConfig:
    return tiny_config(tmp_path / "run", **{"max_train_steps": 1, "validation_steps": 1, **overrides})


def make_trainer(config, **kwargs) -> GRPOTrainer:
    return tiny_flux_trainer(config, TRAIN, **kwargs)


def test_each_item_has_its_own_seed_and_every_process_gets_an_equal_share():
    assert eval_seed(0, 1, 2) == eval_seed(0, 1, 2) != eval_seed(0, 2, 1)
    seeds = {eval_seed(7, i, j) for i, j in eval_items(50, 4)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)
    assert eval_items(2, 3) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    for num_items in range(12):
        for world in (1, 2, 3, 4):
            shards = [shard_items(num_items, rank, world) for rank in range(world)]
            assert len({len(s) for s in shards}) == 1  # the same number of denoiser calls on every process
            real = sorted(k for s in shards for k in s if k is not None)
            assert real == list(range(num_items))


def test_the_evaluation_scores_held_out_prompts_the_same_way_every_time(tmp_path):
    config = make_config(tmp_path, validation_prompts=HELD_OUT, validation_images_per_prompt=3, validation_seed=4)
    trainer = make_trainer(config)
    assert trainer.eval_prompts == HELD_OUT and trainer.eval_prompts_source == "validation_prompts"
    first, again = trainer.evaluate(), trainer.evaluate()
    assert first.scores == again.scores and len(first.scores["brightness"]) == 9
    assert first.seeds == [eval_seed(4, i, j) for i in range(3) for j in range(3)]
    per_prompt = torch.tensor(first.scores["brightness"]).reshape(3, 3)
    assert (per_prompt.std(dim=1) > 0).all()  # the images of one prompt come from different noise
    assert first.table_columns() == ["prompt", "brightness"]
    rows = first.table_rows()
    assert [r[0] for r in rows] == HELD_OUT
    torch.testing.assert_close(torch.tensor([r[1] for r in rows]), per_prompt.mean(dim=1), rtol=1e-6, atol=0)
    assert first.reward == pytest.approx(per_prompt.mean().item(), rel=1e-6)
    assert len(first.images) == 9
    other_seed = trainer.evaluate(seed=5)
    assert other_seed.scores != first.scores
    # a batch cap changes how the items are batched, not the scores (measured: equal to the last bit)
    trainer.config.sample_max_batch_size = 2
    assert trainer.evaluate().scores == first.scores


@pytest.mark.parametrize("mode, port", [("ddp", 29597), ("fsdp2", 29599)])
def test_one_and_two_processes_give_the_same_per_image_scores(tmp_path, mode, port):
    """torchrun --nproc_per_node 2 (gloo, CPU) vs one process: 5 prompts x 3 images (8 + 7 items: the padding slot
    keeps FSDP2's collective forwards in step), two rewards. Measured difference: 0.0 for every image, with DDP and
    with FSDP2; the tolerance is 1e-6."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "a"), str(one)], check=True, env=env, timeout=600)
    run_ranks(SCRIPT, tmp_path / "b", two, mode, port=port, env=env)
    single, double = json.loads(one.read_text()), json.loads(two.read_text())
    assert (single["num_processes"], double["num_processes"]) == (1, 2)
    assert single["seeds"] == double["seeds"] and double["num_images"] == 15
    for name in ("brightness", "redness"):
        assert len(double["scores"][name]) == 15
        torch.testing.assert_close(
            torch.tensor(double["scores"][name]), torch.tensor(single["scores"][name]), rtol=0, atol=1e-6
        )
    assert double["reward"] == pytest.approx(single["reward"], abs=1e-6)


def test_a_validation_prompt_file_is_read_before_the_model_loads(tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the validation prompts were read")

    monkeypatch.setattr(trainer_module, "load_training_pipeline", no_model)
    missing = tmp_path / "held_out.txt"
    with pytest.raises(ConfigError, match=r"validation_prompt_file='.*held_out.txt' does not exist"):
        GRPOTrainer(make_config(tmp_path, validation_prompt_file=str(missing)), rewards={brightness: 1.0})
    missing.write_text("\n  \n")
    with pytest.raises(ConfigError, match=r"validation_prompt_file='.*held_out.txt' holds no prompt"):
        GRPOTrainer(make_config(tmp_path, validation_prompt_file=str(missing)), rewards={brightness: 1.0})
    # the command line's checks (before torch and the model) read it too
    (tmp_path / "train.txt").write_text("a cat\n")
    config = make_config(tmp_path, prompt_file=str(tmp_path / "train.txt"), rewards={"jpeg_compressibility": 1.0})
    config.validation_prompt_file = str(tmp_path / "nowhere.txt")
    with pytest.raises(ConfigError, match=r"validation_prompt_file='.*nowhere.txt' does not exist"):
        check_run_inputs(config)


def test_validation_prompt_file_gives_the_prompts_and_is_recorded(tmp_path):
    path = tmp_path / "held_out.txt"
    path.write_text("\n".join(HELD_OUT) + "\n\n")
    trainer = make_trainer(make_config(tmp_path, validation_prompt_file=str(path), validation_images_per_prompt=1))
    assert trainer.eval_prompts == HELD_OUT
    assert trainer.eval_prompts_source == f"validation_prompt_file={path}"
    assert trainer.config.validation_prompt_file == str(path)
    assert len(trainer.evaluate().scores["brightness"]) == 3


def test_evaluation_settings_are_checked_in_the_config(tmp_path):
    with pytest.raises(ConfigError, match="validation_prompts and validation_prompt_file=.* are both set"):
        GRPOConfig(validation_prompts=["a cat"], validation_prompt_file="p.txt")
    with pytest.raises(ConfigError, match="validation_images_per_prompt=0 is not allowed"):
        GRPOConfig(validation_images_per_prompt=0)
    with pytest.raises(ConfigError, match="validation_seed=-1 is not allowed"):
        GRPOConfig(validation_seed=-1)
    assert GRPOConfig().validation_images_per_prompt == 2 and GRPOConfig().validation_seed == 0


def test_without_held_out_prompts_the_training_prompts_are_used_with_one_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="diffusers_mixgrpo.training.trainer"):
        trainer = make_trainer(make_config(tmp_path))
        trainer._log_eval()
        trainer._log_eval()
    warnings = [r for r in caplog.records if "Neither validation_prompts nor validation_prompt_file" in r.message]
    assert len(warnings) == 1 and "first 4 training prompts" in warnings[0].message
    assert trainer.eval_prompts == TRAIN[:4]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diffusers_mixgrpo.training.trainer"):
        make_trainer(make_config(tmp_path, validation_steps=0))  # no evaluation: nothing to warn about
        make_trainer(make_config(tmp_path), eval_prompts=HELD_OUT)
    assert not [r for r in caplog.records if "Neither validation_prompts" in r.message]


def test_the_evaluation_logs_means_a_per_prompt_table_and_a_grid_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from diffusers_mixgrpo.training.logging_utils import init_trackers

    config = make_config(tmp_path, report_to="tensorboard", validation_prompts=HELD_OUT)
    trainer = make_trainer(config)
    init_trackers(trainer.accelerator, trainer.config)
    total = trainer._log_eval()
    trainer.accelerator.end_training()
    folders = {p.parent for p in (tmp_path / "run" / "logs").rglob("events.out.tfevents.*")}  # + the hparams run
    loaded = [
        EventAccumulator(str(f), size_guidance={"tensors": 0, "images": 0, "scalars": 0}).Reload() for f in folders
    ]
    (events,) = [e for e in loaded if "validation" in e.Tags()["images"]]
    tags = events.Tags()
    assert events.Scalars("eval/reward")[0].value == pytest.approx(total)
    assert "eval/brightness" in tags["scalars"]
    image = events.Images("validation")[0]
    assert image.width > 2 * 32 and image.height > 3 * 32  # 2 images per prompt in a row, 3 prompts
    text = events.Tensors("eval/per_prompt/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("| prompt | brightness |") and all(f"| {p} |" in text for p in HELD_OUT)


def test_a_table_for_wandb_is_a_wandb_table(monkeypatch):
    logged = []

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data

    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(Table=Table))
    tracker = SimpleNamespace(name="wandb", log=lambda values, step: logged.append((values, step)))
    accelerator = SimpleNamespace(is_main_process=True, trackers=[tracker])
    text = log_table(accelerator, "eval/per_prompt", ["prompt", "hps"], [["a | cat", 0.25]], step=3)
    ((values, step),) = logged
    assert step == 3 and values["eval/per_prompt"].columns == ["prompt", "hps"]
    assert values["eval/per_prompt"].data == [["a | cat", 0.25]]
    assert text.splitlines()[-1] == "| a \\| cat | 0.2500 |"
