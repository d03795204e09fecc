"""The model-family registry: one row per supported family, the only place that lists the families.

Every consumer reads this table: `detect_family` and `SUPPORTED_PIPELINES` (which stock pipelines
`GRPOTrainingPipeline.from_pipe` accepts), the training config (`MODEL_FAMILIES`, the default LoRA targets, the family
of a pipeline class name), the preflight checks, the Hub model card (display name, guidance argument, image or video)
and the memory plan. The module imports neither torch nor diffusers, so the command line and the config can use it
before the model libraries load; the implementation classes (`families/<family>.py`) are imported on first use
(`family_class`).

Adding a family = one implementation module (a `ModelFamily` subclass) + one row here; see
`docs/adding_a_model_family.md`.
"""

import dataclasses
import importlib
from typing import Any, Optional

# The attention projections of both streams of a dual-stream (MM-DiT) block, as diffusers names them.
_DUAL_STREAM_ATTENTION = (
    "attn.to_k",
    "attn.to_q",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)
# The attention of a UNet (SD1.5, SDXL) or of a single-stream transformer block (Wan, SANA).
_ATTENTION = ("to_k", "to_q", "to_v", "to_out.0")


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """What the library knows about one model family without loading it.

    Args:
        name: the family name (`GRPOConfig.model_family`, `GRPOTrainingPipeline.model_family`).
        display_name: the name shown to people (model card, messages), e.g. `"FLUX.2 [klein]"`.
        pipeline_class: the stock diffusers pipeline class the family comes from (its subclasses are accepted too).
        denoiser_class: the class of the denoiser (`transformer` or `unet` component) that identifies the family.
        implementation: `"module:Class"` of the `ModelFamily` subclass, the module relative to this package.
        lora_target_modules: default LoRA targets (module-name suffixes, as peft matches them).
        default_guidance_scale: the guidance used when the caller gives none (the stock pipeline's default).
        guidance_argument: the stock pipeline's `__call__` argument for that guidance (Qwen-Image: `true_cfg_scale`).
        default_negative_prompt: the negative prompt used for CFG when none is given, where the stock pipeline needs
            one to run CFG at all (Qwen-Image: `" "`, as its documentation recommends); `None`: the empty prompt.
        is_video: a text-to-video family (decoded batches are `(B, F, 3, H, W)`).
        text_encoder_classes: detection, for families that share a denoiser class: the text encoder classes that
            select this family (FLUX.2 [klein]: Qwen3; FLUX.2 [dev], the row without any, has Mistral-3).
        addition_embed_type: detection, for UNet families: the UNet config's `addition_embed_type` that selects this
            family (SDXL: `"text_time"`; SD1.5, the row without any, has none).
    """

    name: str
    display_name: str
    pipeline_class: str
    denoiser_class: str
    implementation: str
    lora_target_modules: tuple[str, ...]
    default_guidance_scale: float
    guidance_argument: str = "guidance_scale"
    default_negative_prompt: Optional[str] = None
    is_video: bool = False
    text_encoder_classes: tuple[str, ...] = ()
    addition_embed_type: Optional[str] = None

    @property
    def config_file(self) -> str:
        """The shipped training config of the family, under `examples/configs/`."""
        return f"{self.name}_mixgrpo.yaml"

    @property
    def pipeline_prefix(self) -> str:
        """The class-name prefix of the family's pipelines (`"Flux2Klein"` for `Flux2KleinImg2ImgPipeline`, ...)."""
        return self.pipeline_class.removesuffix("Pipeline")

    @property
    def _detection_constraints(self) -> bool:
        return bool(self.text_encoder_classes) or self.addition_embed_type is not None


_ROWS = (
    FamilySpec(
        name="flux",
        display_name="FLUX.1",
        pipeline_class="FluxPipeline",
        denoiser_class="FluxTransformer2DModel",
        implementation="flux:FluxFamily",
        # diffusers' train_dreambooth_lora_flux.py defaults
        lora_target_modules=(
            *_DUAL_STREAM_ATTENTION,
            "ff.net.0.proj",
            "ff.net.2",
            "ff_context.net.0.proj",
            "ff_context.net.2",
        ),
        default_guidance_scale=3.5,
    ),
    FamilySpec(
        name="sd3",
        display_name="Stable Diffusion 3",
        pipeline_class="StableDiffusion3Pipeline",
        denoiser_class="SD3Transformer2DModel",
        implementation="sd3:SD3Family",
        # Flow-GRPO's SD3 LoRA
        lora_target_modules=(
            "attn.add_k_proj",
            "attn.add_q_proj",
            "attn.add_v_proj",
            "attn.to_add_out",
            "attn.to_k",
            "attn.to_out.0",
            "attn.to_q",
            "attn.to_v",
        ),
        default_guidance_scale=4.5,
    ),
    FamilySpec(
        name="sd15",
        display_name="Stable Diffusion 1.5",
        pipeline_class="StableDiffusionPipeline",
        denoiser_class="UNet2DConditionModel",
        implementation="stable_diffusion:StableDiffusionFamily",
        lora_target_modules=_ATTENTION,  # the UNet attention
        default_guidance_scale=7.5,
    ),
    FamilySpec(
        name="sdxl",
        display_name="Stable Diffusion XL",
        pipeline_class="StableDiffusionXLPipeline",
        denoiser_class="UNet2DConditionModel",
        implementation="sdxl:StableDiffusionXLFamily",
        lora_target_modules=_ATTENTION,  # the UNet attention, as diffusers' train_dreambooth_lora_sdxl.py
        default_guidance_scale=5.0,
        addition_embed_type="text_time",  # pooled text + time-id conditioning
    ),
    FamilySpec(
        name="sana",
        display_name="SANA",
        pipeline_class="SanaPipeline",
        denoiser_class="SanaTransformer2DModel",
        implementation="sana:SanaFamily",
        lora_target_modules=_ATTENTION,  # the linear self-attention and the cross-attention of its blocks
        default_guidance_scale=4.5,
    ),
    FamilySpec(
        name="wan",
        display_name="Wan",
        pipeline_class="WanPipeline",
        denoiser_class="WanTransformer3DModel",
        implementation="wan:WanFamily",
        # self- and cross-attention of the transformer blocks (Flow-Factory's / Flow-GRPO's Wan LoRA)
        lora_target_modules=_ATTENTION,
        default_guidance_scale=5.0,
        is_video=True,
    ),
    FamilySpec(
        name="qwenimage",
        display_name="Qwen-Image",
        pipeline_class="QwenImagePipeline",
        denoiser_class="QwenImageTransformer2DModel",
        implementation="qwenimage:QwenImageFamily",
        lora_target_modules=_DUAL_STREAM_ATTENTION,  # the attention of both streams of its dual-stream blocks
        default_guidance_scale=4.0,
        guidance_argument="true_cfg_scale",
        default_negative_prompt=" ",
    ),
    FamilySpec(
        name="flux2",
        display_name="FLUX.2 [dev]",
        pipeline_class="Flux2Pipeline",
        denoiser_class="Flux2Transformer2DModel",
        implementation="flux2:Flux2Family",
        # the dual-stream attention and the fused single-stream projections
        lora_target_modules=(*_DUAL_STREAM_ATTENTION, "attn.to_qkv_mlp_proj"),
        default_guidance_scale=4.0,
    ),
    FamilySpec(
        name="flux2_klein",
        display_name="FLUX.2 [klein]",
        pipeline_class="Flux2KleinPipeline",
        denoiser_class="Flux2Transformer2DModel",
        implementation="flux2:Flux2KleinFamily",
        lora_target_modules=(*_DUAL_STREAM_ATTENTION, "attn.to_qkv_mlp_proj"),  # as FLUX.2 [dev]
        default_guidance_scale=4.0,
        text_encoder_classes=("Qwen3ForCausalLM", "Qwen3Model"),
    ),
    FamilySpec(
        name="zimage",
        display_name="Z-Image",
        pipeline_class="ZImagePipeline",
        denoiser_class="ZImageTransformer2DModel",
        implementation="zimage:ZImageFamily",
        # the attention of its single-stream blocks and refiners
        lora_target_modules=("attention.to_k", "attention.to_q", "attention.to_v", "attention.to_out.0"),
        default_guidance_scale=5.0,
    ),
)

#: The registry: family name -> `FamilySpec`, in the order the families were added.
FAMILIES: dict[str, FamilySpec] = {row.name: row for row in _ROWS}
#: The family names (`GRPOConfig.model_family`'s choices).
MODEL_FAMILIES: tuple[str, ...] = tuple(FAMILIES)
#: Stock pipeline class name -> family: the pipelines `GRPOTrainingPipeline.from_pipe` accepts (and their subclasses).
SUPPORTED_PIPELINES: dict[str, str] = {row.pipeline_class: row.name for row in _ROWS}


def family_spec(name: str) -> FamilySpec:
    """The registry row of family `name`, or a ValueError listing the families."""
    if name not in FAMILIES:
        raise ValueError(f"model_family must be one of {MODEL_FAMILIES}, got {name!r}.")
    return FAMILIES[name]


def family_class(name: str) -> type:
    """The `ModelFamily` subclass implementing family `name` (its module is imported on first use: torch, diffusers)."""
    module, _, cls = family_spec(name).implementation.partition(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


def default_lora_target_modules(model_family: str) -> list[str]:
    """The default LoRA target modules of a model family (one of `MODEL_FAMILIES`); a fresh list."""
    return list(family_spec(model_family).lora_target_modules)


def infer_model_family(pipeline_or_class: Any) -> str:
    """The model family (a name in `MODEL_FAMILIES`) of a diffusers pipeline, pipeline class or class name.

    Matched by class-name prefix without importing the pipelines (the command line checks this before loading
    torch): the longest registered prefix wins, so `Flux2KleinPipeline` is FLUX.2 [klein], not FLUX.2 or FLUX.1, and
    variants of a family's pipeline (`FluxImg2ImgPipeline`, `QwenImageEditPipeline`) belong to it."""
    if isinstance(pipeline_or_class, str):
        name = pipeline_or_class
    else:
        cls = pipeline_or_class if isinstance(pipeline_or_class, type) else type(pipeline_or_class)
        name = cls.__name__
    matches = [row for row in _ROWS if name.startswith(row.pipeline_prefix)]
    if not matches:
        raise ValueError(f"Cannot infer the model family of {name!r}; set model_family to one of {MODEL_FAMILIES}.")
    return max(matches, key=lambda row: len(row.pipeline_prefix)).name


def _unwrapped_class_name(module: Any) -> str:
    base = getattr(module, "base_model", None)  # peft-wrapped
    model = getattr(base, "model", None) if base is not None else None
    return type(model if model is not None else module).__name__


def detect_family(transformer: Any = None, unet: Any = None, text_encoder: Any = None) -> str:
    """The family of a set of components, from the denoiser's class; where two families share a denoiser class, the
    row's extra rule decides (FLUX.2 [dev] has a Mistral-3 text encoder, [klein] a Qwen3 one; the SDXL UNet has
    `addition_embed_type="text_time"`, SD1.5's none)."""
    denoiser = transformer if transformer is not None else unet
    if denoiser is None:
        raise ValueError(
            "GRPOTrainingPipeline needs a `transformer` (FLUX, SD3, ...) or a `unet` (SD1.5, SDXL) component."
        )
    name = _unwrapped_class_name(denoiser)
    rows = [row for row in _ROWS if row.denoiser_class == name]
    if not rows:
        denoisers = sorted({row.denoiser_class for row in _ROWS})
        raise ValueError(
            f"Unsupported denoiser {name}; supported: {denoisers} (pipelines {sorted(SUPPORTED_PIPELINES)})."
        )
    embed_type = getattr(getattr(denoiser, "config", None), "addition_embed_type", None)
    encoder = type(text_encoder).__name__ if text_encoder is not None else None
    for row in rows:
        if row.addition_embed_type is not None and row.addition_embed_type == embed_type:
            return row.name
        if row.text_encoder_classes and encoder in row.text_encoder_classes:
            return row.name
    return next(row.name for row in rows if not row._detection_constraints)
