"""FLUX.1 family: packed latents, embedded guidance, dynamic shifting (`mu`)."""

import torch

from ..rollout_batch import PromptEmbeds
from ._grid import linear_sigmas, shift_mu
from .base import ModelFamily


class FluxFamily(ModelFamily):
    name = "flux"
    component_names = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")
    denoiser_name = "transformer"
    scheduler_kind = "flow"
    latent_patch = 2
    max_sequence_length = 512

    def encode_prompts(self, prompts, guidance_scale, device, negative_prompt=None) -> PromptEmbeds:
        max_len = self.pipeline.max_sequence_length or self.max_sequence_length
        prompt_embeds, pooled, text_ids = self.stock.encode_prompt(
            prompt=prompts, prompt_2=None, device=device, max_sequence_length=max_len
        )
        return PromptEmbeds(
            {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled, "text_ids": text_ids},
            shared=("text_ids",),
        )

    def prepare_noise(self, num, height, width, generator, device, dtype) -> torch.Tensor:
        channels = self.denoiser.config.in_channels // 4
        latents, _ = self.stock.prepare_latents(num, channels, height, width, dtype, device, generator)
        return latents

    def _latent_hw(self, height: int, width: int) -> tuple[int, int]:
        f = self.vae_scale_factor
        return 2 * (int(height) // (f * 2)), 2 * (int(width) // (f * 2))

    def timestep_kwargs(self, latents, num_inference_steps) -> dict:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        mu = shift_mu(self.pipeline.scheduler.config, latents.shape[1], calculate_shift)
        return {"num_inference_steps": num_inference_steps, "sigmas": linear_sigmas(num_inference_steps), "mu": mu}

    def predict(self, latents, timestep, embeds, guidance_scale, height, width) -> torch.Tensor:
        b = latents.shape[0]
        h, w = self._latent_hw(height, width)
        img_ids = self.stock._prepare_latent_image_ids(1, h // 2, w // 2, latents.device, latents.dtype)
        guidance = None
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full((b,), float(guidance_scale), device=latents.device, dtype=torch.float32)
        t = timestep.expand(b).to(latents.dtype) if timestep.ndim == 0 else timestep.to(latents.dtype)
        return self.call_denoiser(
            hidden_states=latents,
            timestep=t / 1000,
            guidance=guidance,
            pooled_projections=embeds["pooled_prompt_embeds"],
            encoder_hidden_states=embeds["prompt_embeds"],
            txt_ids=embeds["text_ids"],
            img_ids=img_ids,
            return_dict=False,
        )[0]

    def decode(self, latents, height, width) -> torch.Tensor:
        vae = self.stock.vae
        latents = self.stock._unpack_latents(latents, height, width, self.vae_scale_factor)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return self._postprocess(image)
