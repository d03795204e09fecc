"""Logging helpers: tracker selection, tracker config without secrets, image grids, reward curves."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_mixgrpo.training import logging_utils
from diffusers_mixgrpo.training.config import GRPOConfig
from diffusers_mixgrpo.training.logging_utils import (
    init_trackers,
    log_image_grid,
    normalize_reward_history,
    plot_reward_curve,
    resolve_report_to,
    tile_images,
    tracker_config,
)


def test_report_to_defaults_to_tensorboard_when_installed(monkeypatch):
    monkeypatch.setattr(logging_utils, "_installed", lambda name: name == "tensorboard")
    assert resolve_report_to(None) == ["tensorboard"]
    assert resolve_report_to("all") == ["tensorboard"]
    assert resolve_report_to("none") is None
    with pytest.raises(ValueError, match="pip install wandb"):
        resolve_report_to("wandb")
    monkeypatch.setattr(logging_utils, "_installed", lambda name: False)
    assert resolve_report_to(None) is None
    monkeypatch.setattr(logging_utils, "_installed", lambda name: True)
    monkeypatch.setattr(logging_utils, "_tracker_importable", lambda name: True)  # a named tracker must also import
    assert resolve_report_to("tensorboard,wandb") == ["tensorboard", "wandb"]


def test_tracker_config_is_flat_and_has_no_token():
    values = tracker_config(GRPOConfig(hub_token="hf_secret", rewards={"a": 1.0}, lora_target_modules=["to_q"]))
    assert all(isinstance(v, (int, float, str, bool)) for v in values.values())
    assert "hub_token" not in values and "hf_secret" not in str(values)
    assert values["rewards"] == "{'a': 1.0}" and values["tail_ratio"] == "None"


def test_image_grid_layout_and_inputs():
    red = Image.new("RGB", (8, 6), (255, 0, 0))
    blue = torch.zeros(3, 6, 8)
    blue[2] = 1.0
    green = np.zeros((6, 8, 3), dtype=np.uint8)
    green[..., 1] = 255
    grid = tile_images([red, blue, green], padding=1)
    assert grid.size == (2 * 8 + 3, 2 * 6 + 3)  # ceil(sqrt(3)) = 2 columns, 2 rows
    assert grid.getpixel((1, 1)) == (255, 0, 0)
    assert grid.getpixel((1 + 8 + 1, 1)) == (0, 0, 255)
    assert grid.getpixel((1, 1 + 6 + 1)) == (0, 255, 0)
    assert grid.getpixel((1 + 8 + 1, 1 + 6 + 1)) == (255, 255, 255)  # empty cell: background
    assert tile_images([red] * 4, cols=4, padding=0).size == (32, 6)
    captioned = tile_images([red, red], captions=["a", "b"], padding=0)
    assert captioned.size == (16, 6 + 12)
    with pytest.raises(ValueError, match="captions"):
        tile_images([red], captions=["a", "b"])


class _FakeWriter:
    def __init__(self):
        self.calls = []

    def add_image(self, tag, array, step, dataformats):
        self.calls.append((tag, array.shape, step, dataformats))


class _FakeTracker:
    name = "tensorboard"

    def __init__(self):
        self.writer = _FakeWriter()


class _FakeAccelerator:
    is_main_process = True

    def __init__(self):
        self.trackers = [_FakeTracker()]


def test_log_image_grid_sends_the_grid_to_tensorboard():
    accelerator = _FakeAccelerator()
    grid = log_image_grid(accelerator, [Image.new("RGB", (4, 4))] * 2, step=7, tag="samples", cols=2)
    assert accelerator.trackers[0].writer.calls == [("samples", (grid.height, grid.width, 3), 7, "HWC")]


def test_init_trackers_with_a_real_tensorboard_tracker(tmp_path):
    pytest.importorskip("tensorboard")
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    config = GRPOConfig(output_dir=str(tmp_path), hub_token="hf_secret", rewards={"a": 1.0})
    accelerator = Accelerator(
        cpu=True,
        log_with=resolve_report_to("tensorboard"),
        project_config=ProjectConfiguration(project_dir=str(tmp_path), logging_dir=str(tmp_path / "logs")),
    )
    init_trackers(accelerator, config)
    accelerator.log({"reward/mean": 0.5}, step=1)
    log_image_grid(accelerator, [Image.new("RGB", (4, 4))] * 2, step=1)
    accelerator.end_training()
    events = list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert events
    assert all(b"hf_secret" not in e.read_bytes() for e in events)


def test_reward_history_forms():
    assert normalize_reward_history([0.1, 0.2]) == {"reward": ([0, 1], [0.1, 0.2])}
    assert normalize_reward_history([(5, 0.1), (10, 0.2)]) == {"reward": ([5, 10], [0.1, 0.2])}
    assert normalize_reward_history({"a": [(1, 1.0)], "b": [2.0]}) == {"a": ([1], [1.0]), "b": ([0], [2.0])}
    assert normalize_reward_history({"step": [3, 4], "a": [1, 2]}) == {"a": ([3, 4], [1.0, 2.0])}


def test_plot_reward_curve_writes_a_png(tmp_path):
    path = plot_reward_curve({"hps": [0.2, 0.25, 0.3], "pick": [0.1, 0.2, 0.1]}, tmp_path / "curve.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100


def test_wandb_runs_get_a_name_and_a_resumed_run_reuses_their_id(tmp_path):
    """No wandb needed: the kwargs handed to accelerate's `init_trackers` are checked."""
    from types import SimpleNamespace

    from diffusers_mixgrpo.training.logging_utils import WANDB_RUN_ID_FILE, tracker_init_kwargs

    config = SimpleNamespace(output_dir=str(tmp_path / "flux-hps"), tracker_run_name=None)
    assert tracker_init_kwargs(config, ["tensorboard"]) == {}
    first = tracker_init_kwargs(config, ["wandb"])["wandb"]
    assert first["name"] == "flux-hps" and first["resume"] == "allow" and first["id"]
    assert (tmp_path / "flux-hps" / WANDB_RUN_ID_FILE).read_text().strip() == first["id"]
    assert tracker_init_kwargs(config, ["wandb"], resuming=True)["wandb"]["id"] == first["id"]
    fresh = tracker_init_kwargs(SimpleNamespace(output_dir=config.output_dir, tracker_run_name="try 2"), ["all"])
    assert fresh["wandb"]["name"] == "try 2" and fresh["wandb"]["id"] != first["id"]


def test_init_trackers_passes_the_wandb_kwargs_to_accelerate(tmp_path):
    from unittest import mock

    from diffusers_mixgrpo.training.config import GRPOConfig

    accelerator = mock.Mock(log_with=["wandb"], is_main_process=True)
    config = GRPOConfig(output_dir=str(tmp_path / "run"), report_to="none", tracker_run_name="named")
    init_trackers(accelerator, config, resuming=False)
    kwargs = accelerator.init_trackers.call_args.kwargs["init_kwargs"]
    assert kwargs["wandb"]["name"] == "named" and kwargs["wandb"]["resume"] == "allow"
    init_trackers(accelerator, config, resuming=True)
    assert accelerator.init_trackers.call_args.kwargs["init_kwargs"]["wandb"]["id"] == kwargs["wandb"]["id"]
