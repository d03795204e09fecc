"""`ModelFamily`: the four things the GRPO logic needs from a text-to-image (or text-to-video) model family."""

from abc import ABC, abstractmethod
from typing import Any, Optional

import torch

from ..rollout_batch import PromptEmbeds
from .registry import FamilySpec, family_spec


class ModelFamily(ABC):
    """Encode prompts, make initial noise, evaluate the denoiser once (guidance included), decode latents.

    A family wraps the *stock* diffusers pipeline of its family, built on the training pipeline's own components
    (module references, no copies), and calls that pipeline's helpers (`encode_prompt`, `prepare_latents`, ...)
    instead of re-implementing them (`GRPOTrainingPipeline.family` is the instance). Adding a family (SDXL,
    Qwen-Image, ...) means writing one subclass and adding its row to the registry (`families/registry.py`); the
    rollout, log-prob and training code does not change.

    Class attributes set by the subclass:
        name: the family name, the key of its registry row (`"flux"`, `"sd3"`, `"sd15"`).
        component_names: the components of the stock pipeline this family passes on.
        denoiser_name: `"transformer"` or `"unet"`.
        scheduler_kind: `"flow"` (MixODESDEScheduler) or `"vp"` (MixDDIMSDEScheduler).

    Class attributes taken from the registry row (`spec`) when the subclass is defined:
        stock_pipeline_class: name of the diffusers pipeline class this family comes from.
        default_guidance_scale: guidance used when the caller passes none.
        is_video: a video family (Wan): latents `(B, C, F, H, W)`, decoded to `(B, F, 3, H, W)`,
            `rollout(num_frames=...)`.
    """

    name: str
    component_names: tuple[str, ...]
    denoiser_name: str
    scheduler_kind: str
    spec: FamilySpec
    stock_pipeline_class: str
    default_guidance_scale: float
    is_video: bool

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # a concrete family: its registry row supplies the rest
            cls.spec = family_spec(cls.name)
            cls.stock_pipeline_class = cls.spec.pipeline_class
            cls.default_guidance_scale = cls.spec.default_guidance_scale
            cls.is_video = cls.spec.is_video

    def __init__(self, pipeline: Any):
        import diffusers

        self.pipeline = pipeline
        cls = getattr(diffusers, self.stock_pipeline_class)
        components = {name: getattr(pipeline, name, None) for name in self.component_names}
        self.stock = cls(**components, **self.extra_stock_kwargs())

    def extra_stock_kwargs(self) -> dict:
        return {}

    @classmethod
    def mix_scheduler_overrides(cls, scheduler) -> dict:
        """Keyword overrides for building the family's Mix scheduler from the stock `scheduler`'s config, where the
        config alone does not say how the stock scheduler samples (e.g. SDXL's Euler ends at sigma 0)."""
        return {}

    def adopt_stock_config(self, pipeline) -> None:
        """Take over settings of the wrapped stock `pipeline`'s own config (called by `from_pipe`); may refuse a
        pipeline whose settings the family does not support, with a ValueError."""
        return None

    def noise_kwargs(self, num_frames: Optional[int]) -> dict:
        """Extra `prepare_noise` arguments of a rollout: `{}` for image families (which refuse `num_frames`)."""
        if num_frames is not None:
            raise ValueError(
                f"num_frames={num_frames!r} is for video families (wan); this pipeline's family is {self.name!r}."
            )
        return {}

    # A distributed wrapper (DDP / FSDP from `accelerator.prepare`) to call instead of the bare denoiser, so that
    # gradient synchronisation hooks run; the bare module is still used for its config.
    forward_module: Optional[torch.nn.Module] = None

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipeline, self.denoiser_name)

    def call_denoiser(self, *args, **kwargs):
        return (self.forward_module or self.denoiser)(*args, **kwargs)

    @property
    def vae_scale_factor(self) -> int:
        return self.stock.vae_scale_factor

    # LoRA files: FLUX.1 / SD3 / SD1.5 are saved in diffusers' legacy key format (`convert_state_dict_to_diffusers`),
    # which their loaders read; the newer loaders (Qwen-Image, FLUX.2, Z-Image) only read peft's own keys.
    lora_legacy_keys: bool = True

    # Image size `(height, width)` in pixels when the caller gives none; `None`: the stock pipeline's
    # `default_sample_size` x the VAE factor (a family whose stock pipeline has no such attribute sets it, e.g.
    # Z-Image: 1024 x 1024, Wan: its `__call__` defaults 480 x 832; SANA computes it from the transformer config).
    default_image_size: Optional[tuple[int, int]] = None

    # The side of the latent patches packed into one token before the denoiser (FLUX-style 2x2 packing: 2).
    latent_patch: int = 1

    @property
    def size_multiple(self) -> int:
        """What height and width must be multiples of (the VAE factor, times the patch packing: `latent_patch`, or
        the transformer's `patch_size` for SANA / Wan)."""
        return self.latent_patch * self.vae_scale_factor

    def concat_prompt_embeds(self, parts: list[PromptEmbeds]) -> PromptEmbeds:
        """Join the `encode_prompts` batches (a family with variable-length text pads them here)."""
        return PromptEmbeds.concat(parts)

    def uses_cfg(self, guidance_scale: float) -> bool:
        """Whether a rollout with this guidance runs classifier-free guidance (two denoiser branches)."""
        return False

    @abstractmethod
    def encode_prompts(
        self, prompts: list[str], guidance_scale: float, device: torch.device, negative_prompt: Optional[str] = None
    ) -> PromptEmbeds:
        """One row of conditioning per prompt (and the unconditional rows when CFG is on)."""

    @abstractmethod
    def prepare_noise(
        self, num: int, height: int, width: int, generator: Optional[torch.Generator], device, dtype
    ) -> torch.Tensor:
        """Initial latents in the denoiser's layout (FLUX: packed), drawn from `generator`."""

    def timestep_kwargs(self, latents: torch.Tensor, num_inference_steps: int) -> dict:
        """The `set_timesteps` arguments the stock pipeline would pass (e.g. FLUX: `sigmas` and `mu`)."""
        return {"num_inference_steps": num_inference_steps}

    @abstractmethod
    def predict(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        embeds: PromptEmbeds,
        guidance_scale: float,
        height: int,
        width: int,
    ) -> torch.Tensor:
        """One guided denoiser evaluation on a batch; `embeds` rows align with `latents` rows."""

    @abstractmethod
    def decode(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Final latents to `(B, 3, H, W)` float32 images in [0, 1]."""

    def _postprocess(self, image: torch.Tensor) -> torch.Tensor:
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def _cfg_predict(self, latents, embeds: PromptEmbeds, names: tuple[str, ...], guidance_scale: float, call):
        """Classifier-free guidance as the stock pipelines do it: one denoiser call on `[uncond, cond]` (the
        `negative_<name>` rows first), then `uncond + scale * (cond - uncond)`; a plain call when CFG is off.
        `call(x, *conditioning)` runs the denoiser on a batch."""
        if not self.uses_cfg(guidance_scale):
            return call(latents, *(embeds[n] for n in names))
        b = latents.shape[0]
        conditioning = [torch.cat([embeds[f"negative_{n}"], embeds[n]]) for n in names]
        out = call(torch.cat([latents, latents]), *conditioning)
        uncond, cond = out[:b], out[b:]
        return uncond + guidance_scale * (cond - uncond)
