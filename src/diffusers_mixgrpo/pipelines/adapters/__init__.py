"""Model-family adapters and their detection from a pipeline's components."""

from typing import Any

from .base import ModelFamilyAdapter
from .flux import FluxAdapter
from .flux2 import Flux2Adapter, Flux2KleinAdapter
from .qwenimage import QwenImageAdapter
from .sana import SanaAdapter
from .sd3 import SD3Adapter
from .sdxl import StableDiffusionXLAdapter
from .stable_diffusion import StableDiffusionAdapter
from .wan import WanAdapter
from .zimage import ZImageAdapter

ADAPTERS: dict[str, type[ModelFamilyAdapter]] = {a.name: a for a in (FluxAdapter, SD3Adapter, StableDiffusionAdapter)}
ADAPTERS.update({a.name: a for a in (StableDiffusionXLAdapter, WanAdapter, SanaAdapter)})
ADAPTERS.update({a.name: a for a in (QwenImageAdapter, Flux2Adapter, Flux2KleinAdapter, ZImageAdapter)})

# denoiser class name -> family; the stock pipeline classes GRPOTrainingPipeline.from_pipe accepts.
_DENOISER_FAMILY = {
    "FluxTransformer2DModel": "flux",
    "SD3Transformer2DModel": "sd3",
    "UNet2DConditionModel": "sd15",
    "WanTransformer3DModel": "wan",
    "SanaTransformer2DModel": "sana",
    "QwenImageTransformer2DModel": "qwenimage",
    "Flux2Transformer2DModel": "flux2",  # or flux2_klein: told apart by the text encoder (_TEXT_ENCODER_FAMILY)
    "ZImageTransformer2DModel": "zimage",
}
# families sharing a denoiser class: (denoiser family, text encoder class name) -> family
_TEXT_ENCODER_FAMILY = {
    ("flux2", "Qwen3ForCausalLM"): "flux2_klein",
    ("flux2", "Qwen3Model"): "flux2_klein",
}

SUPPORTED_PIPELINES = {a.stock_pipeline_class: a.name for a in ADAPTERS.values()}


def _unwrapped_class_name(module: Any) -> str:
    base = getattr(module, "base_model", None)  # peft-wrapped
    model = getattr(base, "model", None) if base is not None else None
    return type(model if model is not None else module).__name__


def detect_family(transformer: Any = None, unet: Any = None, text_encoder: Any = None) -> str:
    """The family of a set of components, from the denoiser's class (and the text encoder's, where two families
    share a denoiser: FLUX.2 [dev] has a Mistral-3 encoder, FLUX.2 [klein] a Qwen3 one)."""
    denoiser = transformer if transformer is not None else unet
    if denoiser is None:
        raise ValueError(
            "GRPOTrainingPipeline needs a `transformer` (FLUX, SD3, ...) or a `unet` (SD1.5, SDXL) component."
        )
    name = _unwrapped_class_name(denoiser)
    if name not in _DENOISER_FAMILY:
        raise ValueError(
            f"Unsupported denoiser {name}; supported: {sorted(_DENOISER_FAMILY)} "
            f"(pipelines {sorted(SUPPORTED_PIPELINES)})."
        )
    family = _DENOISER_FAMILY[name]
    if family == "sd15" and getattr(denoiser.config, "addition_embed_type", None) == "text_time":
        family = "sdxl"  # the SDXL UNet: same class, pooled text + time-id conditioning
    if text_encoder is not None:
        family = _TEXT_ENCODER_FAMILY.get((family, type(text_encoder).__name__), family)
    return family


__all__ = ["ADAPTERS", "SUPPORTED_PIPELINES", "ModelFamilyAdapter", "detect_family"]
