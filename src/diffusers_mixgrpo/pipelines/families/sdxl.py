"""Stable Diffusion XL family: two CLIP text encoders, pooled embeddings, added time ids, true CFG."""

import logging

import torch

from ..rollout_batch import PromptEmbeds
from .base import ModelFamily

logger = logging.getLogger(__name__)

# Stock SDXL schedulers whose last step lands on sigma 0 (a clean sample); DDIM reaches it with set_alpha_to_one.
_ZERO_FINAL_SIGMA_SCHEDULERS = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler")


class StableDiffusionXLFamily(ModelFamily):
    """`StableDiffusionXLPipeline` on `MixDDIMSDEScheduler`.

    The conditioning is the stock pipeline's: `encode_prompt` (both encoders, the pooled projection of the second,
    zeroed negative rows when `force_zeros_for_empty_prompt` and no negative prompt), and `_get_add_time_ids` with
    `original_size = target_size = (height, width)` and `crops_coords_top_left = (0, 0)`, the stock defaults.

    SDXL ships `EulerDiscreteScheduler` (leading spacing, offset 1). Deterministic Euler in sigma space is DDIM
    (eta = 0) in `x / sqrt(alpha_bar)`, and Euler's last step goes to sigma 0, so the swap keeps the config's grid
    and sets `set_alpha_to_one=True` and `clip_sample=False`: with an empty window the rollout reproduces the stock
    Euler sampler (`tests/pipelines/test_sdxl.py`).
    """

    name = "sdxl"
    component_names = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "unet")
    denoiser_name = "unet"
    scheduler_kind = "vp"

    def extra_stock_kwargs(self) -> dict:
        return {"add_watermarker": False, "force_zeros_for_empty_prompt": True}

    @classmethod
    def mix_scheduler_overrides(cls, scheduler) -> dict:
        name, config = type(scheduler).__name__, scheduler.config
        if any(config.get(flag, False) for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")):
            raise ValueError(
                f"The SDXL scheduler config ({name}) uses Karras / exponential / beta sigmas; MixDDIMSDEScheduler "
                "samples on the DDIM grid of the same betas. Set use_karras_sigmas, use_exponential_sigmas and "
                "use_beta_sigmas to False in the stock scheduler before wrapping the pipeline."
            )
        if name in _ZERO_FINAL_SIGMA_SCHEDULERS and config.get("final_sigmas_type", "zero") == "zero":
            if config.get("timestep_spacing", "leading") == "linspace":
                logger.warning(
                    "%s with timestep_spacing='linspace' uses fractional timesteps; MixDDIMSDEScheduler rounds them "
                    "to integers (DDIMScheduler's linspace grid).",
                    name,
                )
            # Euler never clips its x0 prediction (DDIM's clip_sample defaults to True; SDXL configs drop the key).
            return {"set_alpha_to_one": True, "clip_sample": False, "thresholding": False}
        return {}

    def adopt_stock_config(self, pipeline) -> None:
        value = getattr(pipeline, "config", {}).get("force_zeros_for_empty_prompt")
        if value is not None:
            self.stock.register_to_config(force_zeros_for_empty_prompt=bool(value))

    def uses_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def encode_prompts(self, prompts, guidance_scale, device, negative_prompt=None) -> PromptEmbeds:
        cfg = self.uses_cfg(guidance_scale)
        pe, npe, pooled, npooled = self.stock.encode_prompt(
            prompt=prompts,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=cfg,
            negative_prompt=[negative_prompt] * len(prompts) if cfg and negative_prompt is not None else None,
        )
        tensors = {"prompt_embeds": pe, "pooled_prompt_embeds": pooled}
        if cfg:
            tensors.update(negative_prompt_embeds=npe, negative_pooled_prompt_embeds=npooled)
        return PromptEmbeds(tensors)

    def prepare_noise(self, num, height, width, generator, device, dtype) -> torch.Tensor:
        channels = self.denoiser.config.in_channels
        return self.stock.prepare_latents(num, channels, height, width, dtype, device, generator)

    def _time_ids(self, height: int, width: int, projection_dim: int, dtype, device) -> torch.Tensor:
        size = (int(height), int(width))
        ids = self.stock._get_add_time_ids(size, (0, 0), size, dtype=dtype, text_encoder_projection_dim=projection_dim)
        return ids.to(device)

    def predict(self, latents, timestep, embeds, guidance_scale, height, width) -> torch.Tensor:
        encoder_2 = self.stock.text_encoder_2
        projection_dim = (
            encoder_2.config.projection_dim if encoder_2 is not None else int(embeds["pooled_prompt_embeds"].shape[-1])
        )
        time_ids = self._time_ids(height, width, projection_dim, embeds["prompt_embeds"].dtype, latents.device)

        def call(x, enc, pooled):
            added = {"text_embeds": pooled, "time_ids": time_ids.repeat(x.shape[0], 1)}
            return self.call_denoiser(
                x, timestep, encoder_hidden_states=enc, added_cond_kwargs=added, return_dict=False
            )[0]

        return self._cfg_predict(latents, embeds, ("prompt_embeds", "pooled_prompt_embeds"), guidance_scale, call)

    def decode(self, latents, height, width) -> torch.Tensor:
        vae = self.stock.vae
        cfg = vae.config
        if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
            mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / cfg.scaling_factor + mean
        else:
            latents = latents / cfg.scaling_factor
        upcast = vae.dtype == torch.float16 and getattr(cfg, "force_upcast", False)
        decoder_dtype = torch.float32 if upcast else vae.dtype
        if upcast:
            vae.to(torch.float32)
        try:
            image = vae.decode(latents.to(decoder_dtype), return_dict=False)[0]
        finally:
            if upcast:
                vae.to(torch.float16)
        return self._postprocess(image)
