"""The allowed values of `GRPOConfig`'s choice fields, one tuple per field (read by its `metadata["choices"]`; the
`method` names are the keys of `training.presets.METHOD_PRESETS`).

Plain data, no imports of torch or diffusers: the command line lists them in `--help` at once.
"""

__all__ = [
    "ADV_STDS",
    "CPS_LOG_PROBS",
    "KL_TYPES",
    "LOG_PROB_REDUCTIONS",
    "MIXED_PRECISIONS",
    "OPTIMIZERS",
    "REPORT_TO",
    "REWARD_DTYPES",
    "REWARD_MIXES",
    "SDE_STEP_LAYOUTS",
    "SDE_TYPES",
    "TAIL_SOLVERS",
    "TEXT_ENCODER_OFFLOADS",
    "WINDOW_STRATEGIES",
    "lr_scheduler_names",
]

SDE_TYPES = ("flow_grpo", "dance_grpo", "cps")
WINDOW_STRATEGIES = ("progressive", "random", "decay", "exp_decay")
SDE_STEP_LAYOUTS = ("window", "scattered")
TAIL_SOLVERS = ("euler", "dpmsolver++")
LOG_PROB_REDUCTIONS = ("mean", "sum")
CPS_LOG_PROBS = ("gaussian", "flow_grpo")
ADV_STDS = ("group", "global", "none")
KL_TYPES = ("none", "rollout", "reference")
REWARD_MIXES = ("advantage_aggr", "reward_aggr")
REWARD_DTYPES = ("float32", "bfloat16", "float16")
OPTIMIZERS = ("adamw", "adamw8bit")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
TEXT_ENCODER_OFFLOADS = ("none", "cpu", "free")
#: `report_to`: each name of its comma-separated list.
REPORT_TO = ("tensorboard", "wandb", "all", "none")


def lr_scheduler_names() -> tuple[str, ...]:
    """`lr_scheduler`: the names `diffusers.optimization.get_scheduler` knows (diffusers is imported on first use)."""
    from diffusers.optimization import SchedulerType

    return tuple(s.value for s in SchedulerType)
