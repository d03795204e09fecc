"""`GRPOConfig.sde_steps` / `num_sde_steps` / `sde_step_range` / `sde_step_layout`: reading them from the command
line and YAML, and the one-sentence errors of the combinations that make no sense."""

import pytest

from diffusers_mixgrpo.training.config import GRPOConfig, parse_args
from diffusers_mixgrpo.training.errors import ConfigError
from diffusers_mixgrpo.training.step_selection import sde_step_schedule_kwargs


def config(**values) -> GRPOConfig:
    return GRPOConfig(**{"output_dir": "out", "num_inference_steps": 10, **values})


@pytest.mark.parametrize("argv", [["--sde_steps", "0", "3", "5"], ["--sde_steps", "0,3,5"], ["--sde_steps", "0, 3,5"]])
def test_sde_steps_from_the_command_line(argv):
    c = parse_args(argv)
    assert c.sde_steps == [0, 3, 5]
    assert sde_step_schedule_kwargs(c)["steps"] == [0, 3, 5]


def test_num_sde_steps_and_range_from_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "num_inference_steps: 10\nnum_sde_steps: [2]\nsde_step_range: [0, 5]\nsde_step_layout: scattered\n"
    )
    c = GRPOConfig.from_yaml(path, output_dir=str(tmp_path))
    assert sde_step_schedule_kwargs(c) == {
        "num_inference_steps": 10,
        "steps": None,
        "num_steps": [2],
        "step_range": [0, 5],
        "layout": "scattered",
        "seed": c.seed,
    }


def test_without_the_new_fields_the_sliding_window_schedules_the_steps():
    assert sde_step_schedule_kwargs(config()) is None


def test_a_saved_config_with_resolved_window_fields_loads_again():
    """A run's saved config holds the preset's window values written out; reading it back (resume from the output
    folder) is not a window field "set explicitly"."""
    saved = config(method="flash", num_sde_steps=[1, 2]).to_dict()
    assert saved["window_size"] == 4 and saved["window_shift_interval"] == 20
    assert GRPOConfig(**saved).num_sde_steps == [1, 2]


def test_a_short_grid_needs_no_window_size_that_fits():
    """N = 4 with the preset's window_size 4 (> N - 1): no window is built, so it does not stand in the way."""
    c = config(num_inference_steps=4, sde_steps=[0, 2])
    assert c.sde_steps == [0, 2] and c.window_size == 4
    with pytest.raises(ConfigError, match="window_size=4 is not allowed"):
        config(num_inference_steps=4)  # the window, by contrast, must fit


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(sde_steps="0,a"), r"sde_steps='0,a' is not allowed; it must be a list of integers"),
        (dict(sde_steps=[0, 3], num_sde_steps=[2]), "are both set; give the SDE steps one way"),
        (dict(sde_steps=[0, 9]), r"sde_steps=\[0, 9\] is not allowed.*\[0, 8\]"),
        (dict(sde_steps=[3, 1]), r"sde_steps=\[3, 1\] is not allowed; it must be a non-empty, sorted list of unique"),
        (dict(sde_steps=[1, 1]), "sorted list of unique"),
        (dict(sde_step_range=[0, 5]), "sde_step_range=.* has no effect without num_sde_steps"),
        (dict(sde_step_layout="scattered"), "sde_step_layout='scattered' has no effect without num_sde_steps"),
        (dict(num_sde_steps=[2], sde_step_range=[4, 2]), r"sde_step_range=\[4, 2\] is not allowed.*- 1 = 9"),
        (dict(num_sde_steps=[2], sde_step_range=[0, 10]), r"sde_step_range=\[0, 10\] is not allowed"),
        (dict(num_sde_steps=[4], sde_step_range=[0, 3]), r"num_sde_steps=\[4\] is not allowed.*\[1, 3\]"),
        (dict(num_sde_steps=[0]), r"num_sde_steps=\[0\] is not allowed.*\[1, 9\]"),
        (dict(num_sde_steps=[2], sde_step_layout="spread"), "sde_step_layout='spread' is not allowed"),
        (dict(sde_steps=[0, 3], method="dancegrpo"), "method='dancegrpo' samples every step with the SDE"),
        (dict(sde_steps=[0, 3], window_size=2), "window_size=2 has no effect with sde_steps set"),
        (dict(num_sde_steps=[2], window_strategy="random"), "window_strategy='random' has no effect with num_sde"),
        (dict(sde_steps=[0, 3], window_shift_interval=5), "window_shift_interval=5 has no effect"),
        (dict(sde_steps=[0, 3], window_max_start=3), "window_max_start=3 has no effect"),
    ],
)
def test_bad_combinations_fail_with_one_sentence(values, message):
    with pytest.raises(ConfigError, match=message):
        config(**values)


def test_the_model_card_names_the_sde_steps_only_when_they_replace_the_window(tmp_path):
    from diffusers_mixgrpo.training.hub import write_model_card

    card = {}
    for name, extra in (("window", {}), ("listed", {"sde_steps": [0, 3, 5]})):
        folder = tmp_path / name
        folder.mkdir()
        write_model_card(folder, config(pretrained_model_name_or_path="black-forest-labs/FLUX.1-dev", **extra))
        card[name] = (folder / "README.md").read_text()
    assert "| SDE steps (instead of the window) | [0, 3, 5] |" in card["listed"]
    assert "instead of the window" not in card["window"]
