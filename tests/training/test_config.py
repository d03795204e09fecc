"""GRPOConfig: presets, explicit values winning, YAML/CLI parsing, validation messages, no secrets in to_dict."""

import dataclasses
import glob
import os
import typing

import pytest
import yaml

from diffusers_mixgrpo.pipelines.families import default_lora_target_modules, infer_model_family
from diffusers_mixgrpo.schedulers.sliding_window import SlidingWindowSchedule
from diffusers_mixgrpo.training.config import GRPOConfig, parse_args
from diffusers_mixgrpo.training.presets import METHOD_PRESETS
from diffusers_mixgrpo.training.reward_spec import parse_reward_weights
from diffusers_mixgrpo.training.step_selection import sliding_window_kwargs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO, "examples", "configs")


def test_every_field_has_type_default_and_help():
    for f in dataclasses.fields(GRPOConfig):
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, f.name
        assert f.metadata.get("help"), f"{f.name} has no help"
    hints = typing.get_type_hints(GRPOConfig)
    assert set(hints) >= {f.name for f in dataclasses.fields(GRPOConfig)}


def test_every_field_is_documented_in_a_section_of_the_command_line_help():
    from diffusers_mixgrpo.training.arguments import build_parser

    parser = build_parser((GRPOConfig,))
    help_text = parser.format_help()
    missing = [f.name for f in dataclasses.fields(GRPOConfig) if f"--{f.name} " not in help_text]
    assert not missing
    sections = {g.title: [a.dest for a in g._group_actions] for g in parser._action_groups}
    assert not sections.get("GRPOConfig")  # the first field opens a titled section: none is left outside one
    assert len([t for t, dests in sections.items() if dests and t not in ("options", "optional arguments")]) == 11


def _trained_steps_per_rollout(config):
    """K, as the trainer draws it: the window steps each rollout trains."""
    from diffusers_mixgrpo.training.iteration_plan import num_train_steps

    return num_train_steps(config.window_size, config.train_timestep_fraction)


def test_defaults_are_the_mixgrpo_paper_values():
    c = GRPOConfig()
    assert c.method == "mixgrpo"
    assert (c.num_inference_steps, c.shift, c.eta, c.sde_type) == (25, 3.0, 0.7, "flow_grpo")
    assert (c.window_size, c.window_shift_interval, c.window_stride) == (4, 25, 1)
    assert (c.tail_solver, c.tail_ratio) == ("euler", None)
    assert (c.num_generations, c.clip_range, c.adv_clip_max) == (12, 1e-4, 5.0)
    assert (c.learning_rate, c.weight_decay, c.max_grad_norm, c.gradient_accumulation_steps) == (1e-5, 1e-4, 1.0, 3)
    assert c.use_lora and c.kl_type == "none" and c.kl_coeff == 0.0
    assert c.reward_mix == "advantage_aggr"
    assert c.train_timestep_fraction == 1.0 and _trained_steps_per_rollout(c) == 4


@pytest.mark.parametrize(
    "method, expected",
    [
        ("flash", {"window_shift_interval": 20, "window_stride": 1, "tail_solver": "dpmsolver++", "tail_ratio": 0.4}),
        ("flash_star", {"window_shift_interval": 20, "window_stride": 0, "tail_ratio": 0.2}),
        ("dancegrpo", {"sde_type": "dance_grpo", "eta": 0.3, "window_size": 24, "train_timestep_fraction": 0.6}),
    ],
)
def test_method_presets_fill_unset_fields(method, expected):
    c = GRPOConfig(method=method)
    for name, value in expected.items():
        assert getattr(c, name) == value, name


@pytest.mark.parametrize("method", ["mixgrpo", "flash", "flash_star", "dancegrpo"])
def test_presets_use_the_gaussian_cps_log_prob(method):
    # Documented in docs/schedulers.md ("Log-prob scale"): the true density unless a config asks for Flow-GRPO's.
    assert GRPOConfig(method=method).cps_log_prob == "gaussian"


def test_dancegrpo_trains_14_of_24_steps_at_n25():
    c = GRPOConfig(method="dancegrpo")
    assert c.window_size == 24 and _trained_steps_per_rollout(c) == 14  # algorithm notes section 7


def test_explicit_values_win_over_the_preset():
    c = GRPOConfig(method="flash", tail_ratio=0.3, window_shift_interval=7, eta=0.5)
    assert (c.tail_ratio, c.window_shift_interval, c.eta) == (0.3, 7, 0.5)
    assert c.tail_solver == "dpmsolver++"  # not given: from the preset


def test_every_preset_only_names_real_fields():
    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    for preset in METHOD_PRESETS.values():
        assert set(preset) <= names


def test_resolution_fills_height_and_width_unless_given():
    c = GRPOConfig(resolution=720)
    assert (c.height, c.width) == (720, 720)
    c = GRPOConfig(resolution=720, width=512)
    assert (c.height, c.width) == (720, 512)


def test_model_family_selects_default_lora_targets():
    c = GRPOConfig(model_family="flux")
    assert c.lora_target_modules == default_lora_target_modules("flux")
    c.lora_target_modules.append("x")  # a copy, not the registry's default
    assert "x" not in default_lora_target_modules("flux")
    assert GRPOConfig(model_family="sd15", lora_target_modules=["to_q"]).lora_target_modules == ["to_q"]


def test_infer_model_family_from_class_names():
    assert infer_model_family("FluxPipeline") == "flux"
    assert infer_model_family("StableDiffusion3Pipeline") == "sd3"
    assert infer_model_family("StableDiffusionPipeline") == "sd15"
    assert infer_model_family("QwenImagePipeline") == "qwenimage"
    assert infer_model_family("Flux2Pipeline") == "flux2"
    assert infer_model_family("Flux2KleinPipeline") == "flux2_klein"
    assert infer_model_family("ZImagePipeline") == "zimage"
    with pytest.raises(ValueError, match="model_family"):
        infer_model_family("KandinskyPipeline")


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"hpsv2.1": 1, "pickscore": "0.5"}, {"hpsv2.1": 1.0, "pickscore": 0.5}),
        ('{"hpsv2.1": 1.0}', {"hpsv2.1": 1.0}),
        ("hpsv2.1=1.0, pickscore=0.5", {"hpsv2.1": 1.0, "pickscore": 0.5}),
        ("toy", {"toy": 1.0}),
        (["a", "b=2"], {"a": 1.0, "b": 2.0}),
        (None, None),
    ],
)
def test_reward_weights_forms(value, expected):
    assert parse_reward_weights(value) == expected
    assert GRPOConfig(rewards=value).rewards == expected


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"method": "grpo"}, "method='grpo'"),
        ({"window_size": 25}, "window_size=25"),
        ({"window_size": 0}, "window_size=0"),
        ({"window_max_start": 24}, "window_max_start=24"),
        ({"num_generations": 1}, "num_generations=1"),
        ({"eta": 0.0}, "eta=0.0"),
        ({"tail_ratio": 1.5}, "tail_ratio=1.5"),
        ({"tail_solver_order": 3}, "tail_solver_order=3"),
        ({"kl_coeff": 0.1}, "kl_coeff=0.1 has no effect with kl_type='none'"),
        ({"sample_same_noise": False}, "sample_share_prefix=True needs sample_same_noise=True"),
        ({"adv_trim": 0.4, "num_generations": 3}, "adv_trim=0.4"),
        ({"lr_scheduler": "warmup"}, "lr_scheduler='warmup'"),
        ({"mixed_precision": "fp8"}, "mixed_precision='fp8'"),
        ({"height": 100}, "height=100"),
        ({"report_to": "comet"}, "'comet'"),
        ({"rewards": {"hps": float("nan")}}, "not finite"),
        ({"checkpoints_total_limit": 0}, "checkpoints_total_limit=0"),
        ({"clip_range": 0.0}, "clip_range=0.0"),
    ],
)
def test_invalid_values_fail_with_one_sentence_naming_the_value(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        GRPOConfig(**kwargs)
    message = str(info.value)
    assert fragment in message
    assert message.count(". ") <= 1 and message.endswith((".", "?"))


def test_to_dict_never_contains_the_hub_token():
    c = GRPOConfig(hub_token="hf_SECRET123", push_to_hub=True)
    assert c.hub_token == "hf_SECRET123"
    assert "hub_token" not in c.to_dict()
    assert "hf_SECRET123" not in repr(c)
    assert "hf_SECRET123" not in c.to_yaml()


def test_yaml_round_trip(tmp_path):
    c = GRPOConfig(method="flash", rewards={"hpsv2.1": 1.0}, resolution=64, lora_target_modules=["to_q"])
    path = tmp_path / "c.yaml"
    c.to_yaml(path)
    again = GRPOConfig.from_yaml(path)
    assert again == c


def test_from_yaml_overrides_win_and_unknown_keys_are_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: flash\nlearning_rate: 2.0e-5\n")
    c = GRPOConfig.from_yaml(path, learning_rate=3e-5)
    assert c.learning_rate == 3e-5 and c.tail_ratio == 0.4
    path.write_text("learning_rat: 1.0e-5\n")
    with pytest.raises(ValueError, match="Did you mean 'learning_rate'"):
        GRPOConfig.from_yaml(path)


def test_parse_args_cli_overrides_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: flash_star\nlearning_rate: 2.0e-5\nnum_generations: 6\nrewards: {toy: 1.0}\n")
    c = parse_args(["--config", str(path), "--learning_rate", "5e-5", "--window_stride", "2", "--no_use_lora"])
    assert isinstance(c, GRPOConfig)
    assert c.method == "flash_star" and c.num_generations == 6 and c.rewards == {"toy": 1.0}
    assert c.learning_rate == 5e-5 and c.window_stride == 2  # CLI wins over YAML and over the preset
    assert c.tail_ratio == 0.2 and not c.use_lora


def test_parse_args_without_yaml_and_list_and_json_flags():
    c = parse_args(
        ["--method", "dancegrpo", "--rewards", '{"hpsv2.1": 1.0, "pickscore": 2}', "--lora_target_modules", "a", "b"]
    )
    assert c.eta == 0.3 and c.rewards == {"hpsv2.1": 1.0, "pickscore": 2.0} and c.lora_target_modules == ["a", "b"]


def test_parse_args_rejects_unknown_flags_and_yaml_keys(tmp_path):
    with pytest.raises((ValueError, SystemExit)):
        parse_args(["--not_a_field", "1"])
    path = tmp_path / "c.yaml"
    path.write_text("windw_size: 3\n")
    with pytest.raises(ValueError, match="window_size"):
        parse_args(["--config", str(path)])


def test_sliding_window_kwargs_build_the_schedule():
    c = GRPOConfig(method="flash_star")
    schedule = SlidingWindowSchedule(**sliding_window_kwargs(c))
    assert schedule.current() == (0, 4) and schedule.stride == 0 and schedule.shift_interval == 20
    for _ in range(100):
        schedule.step()
    assert schedule.current() == (0, 4)  # Flash*: frozen window


def test_hub_model_id_defaults_to_output_dir_name():
    assert GRPOConfig(output_dir="runs/flux-mix/").resolved_hub_model_id() == "flux-mix"
    assert GRPOConfig(hub_model_id="me/x").resolved_hub_model_id() == "me/x"


SHIPPED = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))


def test_example_configs_are_shipped():
    names = {os.path.basename(p) for p in SHIPPED}
    assert {
        "flux_mixgrpo.yaml",
        "flux_mixgrpo_flash.yaml",
        "flux_mixgrpo_flash_star.yaml",
        "flux_dancegrpo.yaml",
        "flux_mixgrpo_cps.yaml",
        "sd3_mixgrpo.yaml",
        "sd15_mixgrpo.yaml",
    } <= names


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_example_configs_load(path):
    c = GRPOConfig.from_yaml(path)
    with open(path) as f:
        assert "hub_token" not in yaml.safe_load(f)
    assert c.num_inference_steps >= 2


def test_flux_example_configs_hold_the_paper_hyper_parameters():
    common = {
        "learning_rate": 1e-4,  # a LoRA's rate (the peers' LoRA recipes); the paper's 1e-5 is a full fine-tune's
        "use_lora": True,
        "weight_decay": 1e-4,
        "max_grad_norm": 1.0,
        "train_batch_size": 1,  # the official script: micro-batches of 1, accumulation 3, 4 steps per iteration
        "gradient_accumulation_steps": 3,
        "mixed_precision": "bf16",
        "gradient_checkpointing": True,
        "height": 720,
        "width": 720,
        "guidance_scale": 3.5,
        "num_generations": 12,
        "num_inference_steps": 25,
        "shift": 3.0,
    }
    expected = {
        "flux_mixgrpo.yaml": {"eta": 0.7, "window_size": 4, "window_shift_interval": 25, "tail_ratio": None},
        "flux_mixgrpo_flash.yaml": {"window_size": 4, "window_shift_interval": 20, "tail_ratio": 0.4},
        "flux_mixgrpo_flash_star.yaml": {"window_size": 4, "window_stride": 0, "tail_ratio": 0.2},
        "flux_dancegrpo.yaml": {"eta": 0.3, "sde_type": "dance_grpo", "train_timestep_fraction": 0.6},
        # The paper's current version: CPS in the window, as the official code runs it (noise level 0.8, -(x - mu)^2)
        "flux_mixgrpo_cps.yaml": {
            "sde_type": "cps",
            "eta": 0.8,
            "cps_log_prob": "flow_grpo",
            "window_size": 4,
            "window_shift_interval": 25,
            "window_stride": 1,
            "tail_ratio": None,
            "clip_range": 1e-4,
        },
    }
    for name, values in expected.items():
        c = GRPOConfig.from_yaml(os.path.join(CONFIG_DIR, name))
        for field_name, value in {**common, **values}.items():
            assert getattr(c, field_name) == value, (name, field_name)


# -- types (issue 13, item 10): a value of the wrong type never slips through ----------------------------------------


@pytest.mark.parametrize(
    "kwargs, field_name, expected",
    [
        ({"use_lora": "no"}, "use_lora", False),
        ({"use_lora": "TRUE"}, "use_lora", True),
        ({"lora_target_modules": "to_q"}, "lora_target_modules", ["to_q"]),
        ({"lora_target_modules": "to_q, to_k"}, "lora_target_modules", ["to_q", "to_k"]),
        ({"validation_prompts": "a cat, on the left"}, "validation_prompts", ["a cat, on the left"]),
        ({"learning_rate": "1e-4"}, "learning_rate", 1e-4),  # YAML reads 1e-4 (no dot) as a string
        ({"learning_rate": 1}, "learning_rate", 1.0),
    ],
)
def test_strings_and_numbers_are_read_as_the_field_type(kwargs, field_name, expected):
    value = getattr(GRPOConfig(**kwargs), field_name)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"cps_log_prob": "none"}, "cps_log_prob='none' is not allowed; choose one of 'gaussian', 'flow_grpo'"),
        ({"use_lora": "maybe"}, "use_lora='maybe' is not allowed; it must be true or false"),
        ({"use_lora": 1}, "use_lora=1 is not allowed"),
        ({"window_size": 2.0}, "window_size=2.0 is not allowed; it must be an integer"),
        ({"num_generations": "12"}, "num_generations='12' is not allowed; it must be an integer"),
        ({"rewards": 5}, "rewards=5 is not allowed; give reward names with weights"),
        ({"rewards": {"hpsv2.1": True}}, "is not a number"),
        ({"lora_target_modules": ["to_q", 3]}, "must be a list of strings"),
        ({"output_dir": None}, "output_dir=None is not allowed"),
        ({"prompt_file": 3}, "prompt_file=3 is not allowed; it must be a string"),
        ({"report_to": 5}, "report_to=5 is not allowed; it must be a string"),
        ({"kl_type": "reference", "kl_coeff": 0.1, "use_lora": False}, "kl_type='reference' needs use_lora=True"),
        ({"max_sequence_length": 0}, "max_sequence_length=0 is not allowed"),
        ({"reward_timeout": -1.0}, "reward_timeout=-1.0 is not allowed"),
        (
            {"rewards": {"hpsv2.1": 1.0}, "reward_kwargs": {"pickscore": {"checkpoint": "/m"}}},
            "reward_kwargs names 'pickscore', which is not among rewards",
        ),
    ],
)
def test_wrong_types_fail_in_one_sentence(kwargs, fragment):
    from diffusers_mixgrpo.training.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        GRPOConfig(**kwargs)
    assert fragment in str(info.value) and str(info.value).count(". ") <= 1


def test_reward_kwargs_forms():
    from diffusers_mixgrpo.training.reward_spec import parse_reward_kwargs

    expected = {"unifiedreward": {"base_url": "http://h:8000/v1", "timeout": 30}, "hpsv2.1": {"checkpoint": "/m.pt"}}
    items = ["unifiedreward.base_url=http://h:8000/v1", "unifiedreward.timeout=30", "hpsv2.1.checkpoint=/m.pt"]
    assert parse_reward_kwargs(items) == expected  # the reward name may hold dots: the option is after the last one
    assert parse_reward_kwargs(" ".join(items)) == expected
    assert parse_reward_kwargs('{"hpsv2.1": {"checkpoint": "/m.pt"}}') == {"hpsv2.1": {"checkpoint": "/m.pt"}}
    with pytest.raises(ValueError, match="name.option=value"):
        parse_reward_kwargs(["timeout=30"])


def test_command_line_booleans_none_and_several_values():
    c = parse_args(
        ["--use_lora", "false", "--tail_ratio", "none", "--gradient_checkpointing", "--rewards", "a=1", "b=2"]
        + ["--reward_kwargs", "a.scale=2", "a.name=x"]
    )
    assert c.use_lora is False and c.tail_ratio is None and c.gradient_checkpointing is True
    assert c.rewards == {"a": 1.0, "b": 2.0} and c.reward_kwargs == {"a": {"scale": 2, "name": "x"}}


def test_the_command_line_and_the_config_do_not_import_each_other():
    import subprocess
    import sys

    code = (
        "import sys, diffusers_mixgrpo.training.{} as m; "
        "assert 'diffusers_mixgrpo.training.{}' not in sys.modules, 'import cycle'"
    )
    for module, other in (("arguments", "config"), ("config", "arguments")):
        result = subprocess.run([sys.executable, "-c", code.format(module, other)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_an_unknown_key_in_a_yaml_file_names_the_file_and_the_closest_field(tmp_path):
    from diffusers_mixgrpo.training.errors import ConfigError

    path = tmp_path / "old.yaml"
    path.write_text("num_train_timesteps: 4\n")  # a name GRPOConfig never had as a field
    with pytest.raises(ConfigError, match="'num_train_timesteps' is not a GRPOConfig field"):
        GRPOConfig.from_yaml(path)


def test_the_command_line_remembers_what_was_given(tmp_path):
    from diffusers_mixgrpo.training.arguments import parse_command_line

    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 2.0e-5\nnum_generations: 6\n")
    given = parse_command_line(["--config", str(path), "--num_generations", "8"], (GRPOConfig,))
    assert given.values == {"learning_rate": 2e-5, "num_generations": 8} and given.flags == {"num_generations"}


def test_shipped_configs_never_resume_on_their_own():
    for path in SHIPPED:
        assert GRPOConfig.from_yaml(path).resume_from_checkpoint is None, path


def test_a_reward_api_key_is_used_but_never_written_or_shown():
    from diffusers_mixgrpo.training.public_config import public_config_dict

    config = GRPOConfig(
        reward_kwargs=[
            "unifiedreward.api_key=sk-not-for-disk", "unifiedreward.timeout=30", "unifiedreward.max_tokens=64",
            "foo.auth_token=t0k3n",
        ]
    )  # fmt: skip
    assert config.reward_kwargs["unifiedreward"]["api_key"] == "sk-not-for-disk"  # the reward gets it
    for text in (config.to_yaml(), repr(config), str(public_config_dict(config)), str(config.to_dict())):
        assert "sk-not-for-disk" not in text and "t0k3n" not in text
    # max_tokens is a setting, not a credential: it is kept (a resume must see it)
    assert config.to_dict()["reward_kwargs"] == {"unifiedreward": {"timeout": 30, "max_tokens": 64}, "foo": {}}


def test_optimizer_steps_per_iteration_from_the_training_micro_batch():
    # the official MixGRPO recipe: 12 rollouts per device, micro-batches of 1, accumulation 3
    assert GRPOConfig(output_dir="o", train_batch_size=1).optimizer_steps_per_iteration == 12 // (1 * 3) == 4
    # unset: one micro-batch per rollout chunk (all 12 here, or 3 chunks of 4), the behaviour before train_batch_size
    assert GRPOConfig(output_dir="o").optimizer_steps_per_iteration == 1
    assert GRPOConfig(output_dir="o", sample_max_batch_size=4).train_micro_batches_per_iteration == 3
    # a last, shorter micro-batch and accumulation group still train: ceil(12 / 5) = 3 micro-batches, ceil(3 / 2) = 2
    assert (
        GRPOConfig(output_dir="o", train_batch_size=5, gradient_accumulation_steps=2).optimizer_steps_per_iteration
        == 2
    )
    assert GRPOConfig(output_dir="o", train_batch_size=1, num_inner_epochs=2).optimizer_steps_per_iteration == 8
    with pytest.raises(ValueError, match="train_batch_size"):
        GRPOConfig(output_dir="o", train_batch_size=0)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (
            {"reward_dtype": "fp16"},
            "reward_dtype='fp16' is not allowed; choose one of 'float32', 'bfloat16', 'float16'",
        ),
        ({"reward_dtype": "float64"}, "reward_dtype='float64' is not allowed"),
        ({"reward_device": "gpu0"}, "reward_device='gpu0' is not a device; allowed: 'cpu', 'cuda'"),
        ({"reward_device": "meta"}, "reward_device='meta' is not allowed; allowed: 'cpu'"),
        (
            {"rewards": {"hpsv2.1": 1.0}, "reward_kwargs": "hpsv2.1.dtype=bfloat16"},
            "reward_kwargs['hpsv2.1'] sets dtype='bfloat16'; the dtype of the reward models is set for all of them "
            "by reward_dtype (allowed: 'float32', 'bfloat16', 'float16')",
        ),
        (
            {"rewards": {"pickscore": 1.0}, "reward_kwargs": {"pickscore": {"device": "cuda:1"}}},
            "the device of the reward models is set for all of them by reward_device",
        ),
    ],
)
def test_reward_dtype_and_device_are_checked_when_the_config_is_made(kwargs, fragment):
    from diffusers_mixgrpo.training.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        GRPOConfig(**kwargs)
    assert fragment in str(info.value)


def test_reward_dtype_and_device_defaults_and_spellings():
    cfg = GRPOConfig()
    assert cfg.reward_dtype == "float32" and cfg.reward_device is None
    assert GRPOConfig(reward_dtype="bfloat16", reward_device=" CUDA:1 ").reward_device == "cuda:1"
    assert GRPOConfig(reward_device="cpu").reward_device == "cpu"


def test_a_missing_reward_device_fails_in_preflight_before_the_model_loads(tmp_path, monkeypatch):
    import torch

    from diffusers_mixgrpo.training.errors import ConfigError
    from diffusers_mixgrpo.training.preflight import check_reward_device_available

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"reward_device='cuda:1' is not available on this machine \(no cuda"):
        check_reward_device_available("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"this machine has 1 cuda device\(s\) \(indices 0 to 0\)"):
        check_reward_device_available("cuda:1")
    check_reward_device_available("cuda:0")
    check_reward_device_available("cpu")
    check_reward_device_available(None)
