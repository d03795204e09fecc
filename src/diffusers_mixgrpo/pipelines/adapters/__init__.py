"""Model-family adapters and their detection from a pipeline's components."""

from typing import Any

from .base import ModelFamilyAdapter
from .flux import FluxAdapter
from .sana import SanaAdapter
from .sd3 import SD3Adapter
from .sdxl import StableDiffusionXLAdapter
from .stable_diffusion import StableDiffusionAdapter
from .wan import WanAdapter

ADAPTERS: dict[str, type[ModelFamilyAdapter]] = {a.name: a for a in (FluxAdapter, SD3Adapter, StableDiffusionAdapter)}
ADAPTERS["sdxl"] = StableDiffusionXLAdapter
ADAPTERS["wan"] = WanAdapter
ADAPTERS["sana"] = SanaAdapter

# denoiser class name -> family; the stock pipeline classes GRPOTrainingPipeline.from_pipe accepts.
_DENOISER_FAMILY = {
    "FluxTransformer2DModel": "flux",
    "SD3Transformer2DModel": "sd3",
    "UNet2DConditionModel": "sd15",
    "WanTransformer3DModel": "wan",
    "SanaTransformer2DModel": "sana",
}

SUPPORTED_PIPELINES = {a.stock_pipeline_class: a.name for a in ADAPTERS.values()}


def _unwrapped_class_name(module: Any) -> str:
    base = getattr(module, "base_model", None)  # peft-wrapped
    model = getattr(base, "model", None) if base is not None else None
    return type(model if model is not None else module).__name__


def detect_family(transformer: Any = None, unet: Any = None) -> str:
    """The family of a set of components, from the denoiser's class."""
    denoiser = transformer if transformer is not None else unet
    if denoiser is None:
        raise ValueError("GRPOTrainingPipeline needs a `transformer` (FLUX, SD3) or a `unet` (SD1.5) component.")
    name = _unwrapped_class_name(denoiser)
    if name not in _DENOISER_FAMILY:
        raise ValueError(
            f"Unsupported denoiser {name}; supported: {sorted(_DENOISER_FAMILY)} "
            f"(pipelines {sorted(SUPPORTED_PIPELINES)})."
        )
    family = _DENOISER_FAMILY[name]
    if family == "sd15" and getattr(denoiser.config, "addition_embed_type", None) == "text_time":
        family = "sdxl"  # the SDXL UNet: same class, pooled text + time-id conditioning
    return family


__all__ = ["ADAPTERS", "SUPPORTED_PIPELINES", "ModelFamilyAdapter", "detect_family"]
