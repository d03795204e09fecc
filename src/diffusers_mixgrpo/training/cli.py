"""The command line behind `examples/train_*_mixgrpo.py`: parse a `GRPOConfig`, load the model, train."""

import logging
from collections.abc import Sequence
from typing import Optional

import torch

from .config import GRPOConfig, parse_args
from .trainer import GRPOTrainer, TrainOutput, load_training_pipeline

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": None}


def main(argv: Optional[Sequence[str]] = None, expected_family: Optional[str] = None) -> TrainOutput:
    """`--config file.yaml` plus flags (flags win) -> train -> LoRA (or full model) in `output_dir`.

    `expected_family` ("flux", "sd3", "sd15") makes a family-specific script refuse a model of another family.
    Frozen components are loaded in the mixed-precision dtype; trainable weights are kept in float32.
    """
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    config: GRPOConfig = parse_args(argv)
    pipeline = load_training_pipeline(config, torch_dtype=_DTYPES[config.mixed_precision])
    for family in filter(None, (expected_family, config.model_family)):
        if pipeline.model_family != family:
            raise ValueError(
                f"{config.pretrained_model_name_or_path!r} is a {pipeline.model_family!r} model but this run expects "
                f"{family!r}; use the train_{pipeline.model_family}_mixgrpo.py script or fix model_family."
            )
    return GRPOTrainer(config, pipeline).train()
