"""`examples/accelerate/*.yaml` parse with accelerate's own config classes, turn into the launch environment that
`accelerate launch` would set, and build the plugins the trainer then runs under (FSDP2 wrap classes that exist in the
model, activation checkpointing, CPU offload; DeepSpeed's ZeRO stage, with the entries the trainer fills or refuses).
"""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_multi_gpu_env

from diffusers_mixgrpo.training.distributed import configure_deepspeed
from diffusers_mixgrpo.training.errors import ConfigError

TESTS = Path(__file__).resolve().parents[1]
CONFIGS = TESTS.parent / "examples" / "accelerate"
EXPECTED = {
    "single_gpu.yaml": (DistributedType.NO, 1, 1),
    "multi_gpu_ddp.yaml": (DistributedType.MULTI_GPU, 8, 1),
    "fsdp2.yaml": (DistributedType.FSDP, 8, 1),
    "fsdp2_cpu_offload.yaml": (DistributedType.FSDP, 8, 1),
    "multi_node_2x8.yaml": (DistributedType.FSDP, 16, 2),
    "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 8, 1),
    "deepspeed_zero3.yaml": (DistributedType.DEEPSPEED, 8, 1),
}


def test_every_shipped_config_is_tested():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_with_accelerates_config_class(name):
    config = ClusterConfig.from_yaml_file(str(CONFIGS / name))
    kind, processes, machines = EXPECTED[name]
    assert config.distributed_type == kind
    assert (config.num_processes, config.num_machines) == (processes, machines)
    assert config.mixed_precision == "bf16" and not config.use_cpu


def _launch_env(name):
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "train.py"])
    args, _, _ = _validate_launch_command(args)
    return args, prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name", ["fsdp2.yaml", "fsdp2_cpu_offload.yaml", "multi_node_2x8.yaml"])
def test_fsdp_configs_give_fsdp2_full_shard_over_flux_blocks(name, monkeypatch):
    from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline

    args, env = _launch_env(name)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.activation_checkpointing is True
    from torch.distributed.fsdp import CPUOffloadPolicy

    assert isinstance(plugin.cpu_offload, CPUOffloadPolicy) == (name == "fsdp2_cpu_offload.yaml")
    wrapped = set(plugin.transformer_cls_names_to_wrap)
    model = build_tiny_flux_pipeline().transformer
    assert wrapped == set(model._no_split_modules)  # the classes exist in the model: every block is one unit
    assert wrapped <= {type(m).__name__ for m in model.modules()}
    if name == "multi_node_2x8.yaml":
        assert (args.num_machines, args.num_processes, args.main_process_port) == (2, 16, 29500)
        assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"


def _deepspeed_launch_env(name):
    """The variables `accelerate launch --config_file <name>` sets (computed by the distributed tests' script)."""
    spec = importlib.util.spec_from_file_location("equivalence", TESTS / "training" / "fsdp2_equivalence_script.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.launch_env(str(CONFIGS / name))


@pytest.mark.parametrize("name, stage", [("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)])
def test_deepspeed_configs_give_their_zero_stage_with_the_trainer_driving_accumulation(name, stage, monkeypatch):
    for key, value in _deepspeed_launch_env(name).items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == stage and plugin.get_value("zero_optimization.stage") == stage
    assert plugin.gradient_accumulation_steps == 1  # the trainer marks the accumulation boundary itself
    assert plugin.gradient_clipping == "auto"  # filled with max_grad_norm by configure_deepspeed
    assert (plugin.offload_optimizer_device, plugin.offload_param_device) == ("none", "none")
    assert plugin.zero3_init_flag is False  # diffusers' from_pretrained loads the whole model before partitioning


def _deepspeed_accelerator(num_processes=8, **ds):
    config = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto"}
    config.update(ds)
    config.setdefault("zero_optimization", {"stage": 2})
    plugin = DeepSpeedPlugin(hf_ds_config=config)
    state = SimpleNamespace(deepspeed_plugin=plugin)
    return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, num_processes=num_processes, state=state)


def _configure(accelerator, fsdp2=False, **training):
    from diffusers_mixgrpo.training.config import GRPOConfig

    optimizer = training.pop("optimizer", "adamw")  # set afterwards: GRPOConfig checks that bitsandbytes is installed
    config = GRPOConfig(output_dir="unused", num_generations=4, sample_max_batch_size=4, **training)
    config.optimizer = optimizer
    return configure_deepspeed(accelerator, config, fsdp2=fsdp2)


def test_configure_deepspeed_fills_the_auto_entries_from_the_training_config():
    accelerator = _deepspeed_accelerator(zero_optimization={"stage": 3})
    assert _configure(accelerator, max_grad_norm=0.5) == 3
    assert _configure(_deepspeed_accelerator(**_CPU_OFFLOAD)) == 2  # AdamW with CPU Adam's betas: offload is fine
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    # the rollout chunk: DeepSpeed needs it, the trainer has no loader
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["train_batch_size"] == 4 * 8
    assert ds["gradient_clipping"] == 0.5 and ds["gradient_accumulation_steps"] == 1


def test_configure_deepspeed_leaves_other_engines_alone():
    for kind in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.FSDP, DistributedType.MULTI_CPU):
        assert _configure(SimpleNamespace(distributed_type=kind)) is None


_CPU_OFFLOAD = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}


@pytest.mark.parametrize(
    "ds, kwargs, message",
    [
        (
            {"gradient_accumulation_steps": 4},
            {},
            r"gradient_accumulation_steps=4 is not allowed.*1 or 'auto'.*GRPOConfig",
        ),
        ({"gradient_clipping": 2.0}, {}, r"gradient_clipping=2.0 differs from max_grad_norm=1.0"),
        ({"optimizer": {"type": "AdamW"}}, {}, r"sets 'optimizer' \(AdamW\).*Remove 'optimizer'"),
        ({"scheduler": {"type": "WarmupLR"}}, {}, r"sets 'scheduler' \(WarmupLR\)"),
        ({"zero_optimization": {"stage": 0}}, {}, r"stage=0 is not supported; use 1, 2 or 3.*multi_gpu_ddp.yaml"),
        ({"zero_optimization": {"stage": 3}}, {"use_ema": True}, r"use_ema is not supported with DeepSpeed ZeRO-3"),
        ({}, {"fsdp2": True}, r"fsdp2=True and a DeepSpeed launch config shard the model twice"),
        (_CPU_OFFLOAD, {"optimizer": "adamw8bit"}, r"optimizer='adamw8bit' cannot be used.*offloaded to 'cpu'"),
        (
            _CPU_OFFLOAD,
            {"adam_beta2": 0.99},
            r"\(adam_beta1, adam_beta2, adam_epsilon\)=\(0.9, 0.99, 1e-08\) would be",
        ),
    ],
)
def test_configure_deepspeed_refuses_what_cannot_work_naming_the_value(ds, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        _configure(_deepspeed_accelerator(**ds), **kwargs)
