"""`examples/accelerate/*.yaml` parse with accelerate's own config classes, turn into the launch environment that
`accelerate launch` would set, and build the plugins the trainer then runs under (FSDP2 wrap classes that exist in the
model, activation checkpointing, CPU offload). DeepSpeed is refused by the trainer, with the reason."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_multi_gpu_env

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "accelerate"
EXPECTED = {
    "single_gpu.yaml": (DistributedType.NO, 1, 1),
    "multi_gpu_ddp.yaml": (DistributedType.MULTI_GPU, 8, 1),
    "fsdp2.yaml": (DistributedType.FSDP, 8, 1),
    "fsdp2_cpu_offload.yaml": (DistributedType.FSDP, 8, 1),
    "multi_node_2x8.yaml": (DistributedType.FSDP, 16, 2),
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


def test_the_trainer_refuses_deepspeed_with_the_reason_and_the_alternative():
    from types import SimpleNamespace

    from diffusers_mixgrpo.training.distributed import check_supported_engine
    from diffusers_mixgrpo.training.errors import ConfigError

    with pytest.raises(ConfigError, match="DeepSpeed is not supported.*K backward passes.*fsdp2.yaml"):
        check_supported_engine(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED))
    for kind in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.FSDP, DistributedType.MULTI_CPU):
        check_supported_engine(SimpleNamespace(distributed_type=kind))
