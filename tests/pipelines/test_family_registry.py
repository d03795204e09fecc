"""The model-family registry: every row has its implementation, its shipped config, a tiny model and runs the family
contract; the registry is the one list the consumers read, and it imports no model library."""

import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from family_contract import FamilyContract, grpo

from diffusers_mixgrpo.pipelines.families import (
    FAMILIES,
    MODEL_FAMILIES,
    SUPPORTED_PIPELINES,
    default_lora_target_modules,
    family_class,
    infer_model_family,
)
from diffusers_mixgrpo.pipelines.families.base import ModelFamily
from diffusers_mixgrpo.training.config import GRPOConfig

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parent


def _contracts() -> dict[str, list[type]]:
    """Family -> the `FamilyContract` subclasses pytest collects (`Test*` classes of `tests/pipelines/test_*.py`)."""
    for path in sorted(TESTS.glob("test_*.py")):
        importlib.import_module(path.stem)  # the modules pytest collects, by the same names (rootdir sys.path)
    found: dict[str, list[type]] = {}
    stack = list(FamilyContract.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__name__.startswith("Test") and cls.__module__.startswith("test_"):
            found.setdefault(cls.family, []).append(cls)
    return found


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_every_family_has_an_implementation_a_config_a_tiny_model_and_runs_the_contract(family):
    spec = FAMILIES[family]
    cls = family_class(family)
    assert issubclass(cls, ModelFamily) and cls.name == family and cls.spec is spec
    assert cls.stock_pipeline_class == spec.pipeline_class

    config = ROOT / "examples" / "configs" / spec.config_file
    assert config.is_file(), f"{family}: no shipped config {config.relative_to(ROOT)}"
    assert yaml.safe_load(config.read_text())["model_family"] == family

    contracts = _contracts().get(family)
    assert contracts, f"{family}: no Test*(FamilyContract) class in tests/pipelines/test_*.py"
    stock = contracts[0]().build_stock()  # the tiny model
    assert type(stock).__name__ == spec.pipeline_class and infer_model_family(stock) == family
    assert grpo(stock).model_family == family  # detection by the denoiser (and the row's rule)


def test_the_families_are_the_config_choices_and_the_supported_pipelines():
    model_family = next(f for f in dataclasses.fields(GRPOConfig) if f.name == "model_family")
    assert model_family.metadata["choices"] == MODEL_FAMILIES, "GRPOConfig.model_family's choices are the registry"
    assert sorted(SUPPORTED_PIPELINES.values()) == sorted(MODEL_FAMILIES)
    assert GRPOConfig(model_family="zimage").lora_target_modules == default_lora_target_modules("zimage")
    with pytest.raises(ValueError, match="model_family must be one of"):
        default_lora_target_modules("kandinsky")


def test_infer_model_family_takes_the_longest_pipeline_prefix():
    assert infer_model_family("Flux2KleinPipeline") == "flux2_klein"
    assert infer_model_family("Flux2Pipeline") == "flux2"
    assert infer_model_family("FluxImg2ImgPipeline") == "flux"
    assert infer_model_family("StableDiffusionXLImg2ImgPipeline") == "sdxl"
    assert infer_model_family("StableDiffusion3Img2ImgPipeline") == "sd3"
    assert infer_model_family("StableDiffusionImg2ImgPipeline") == "sd15"
    assert infer_model_family("QwenImageEditPipeline") == "qwenimage"


def test_the_registry_and_the_config_import_no_model_library():
    code = (
        "import sys\n"
        "import diffusers_mixgrpo.pipelines.families, diffusers_mixgrpo.training.config\n"
        "import diffusers_mixgrpo.training.preflight\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
