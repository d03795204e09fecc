"""Model families: the registry (`registry.py`, torch-free) and one implementation module per family.

Importing this package imports the registry only; `family_class(name)` imports an implementation (`flux.py`,
`sd3.py`, ...: torch and diffusers) when a pipeline of that family is built.
"""

from .registry import (
    FAMILIES,
    MODEL_FAMILIES,
    SUPPORTED_PIPELINES,
    FamilySpec,
    default_lora_target_modules,
    detect_family,
    family_class,
    family_spec,
    infer_model_family,
)

__all__ = [
    "FAMILIES",
    "MODEL_FAMILIES",
    "SUPPORTED_PIPELINES",
    "FamilySpec",
    "default_lora_target_modules",
    "detect_family",
    "family_class",
    "family_spec",
    "infer_model_family",
]
