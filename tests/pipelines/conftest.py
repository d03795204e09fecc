import pytest
import torch

from diffusers_mixgrpo.utils.tiny_models import (
    build_tiny_flux_pipeline,
    build_tiny_sd3_pipeline,
    build_tiny_sd_pipeline,
)

# family name -> (stock pipeline builder, LoRA target modules, rollout guidance, image size)
FAMILIES = {
    "flux": (build_tiny_flux_pipeline, ["to_q", "to_k", "to_v", "to_out.0"], 3.5, 32),
    "sd3": (build_tiny_sd3_pipeline, ["to_q", "to_k", "to_v", "to_out.0"], 4.0, 32),
    "sd15-eps": (
        lambda: build_tiny_sd_pipeline(prediction_type="epsilon"),
        ["to_q", "to_k", "to_v", "to_out.0"],
        5.0,
        32,
    ),
    "sd15-v": (lambda: build_tiny_sd_pipeline(prediction_type="v_prediction"), ["to_q", "to_k", "to_v"], 5.0, 32),
}


@pytest.fixture(scope="module")
def tiny_stock_pipes():
    torch.manual_seed(0)
    return {name: spec[0]() for name, spec in FAMILIES.items()}


@pytest.fixture(scope="session")
def families():
    return FAMILIES
