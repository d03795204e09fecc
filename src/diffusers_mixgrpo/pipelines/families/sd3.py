"""Stable Diffusion 3 / 3.5 family: three text encoders, true classifier-free guidance."""

import torch

from ..rollout_batch import PromptEmbeds
from ._grid import shift_mu
from .base import ModelFamily


class SD3Family(ModelFamily):
    name = "sd3"
    component_names = (
        "scheduler",
        "vae",
        "text_encoder",
        "tokenizer",
        "text_encoder_2",
        "tokenizer_2",
        "text_encoder_3",
        "tokenizer_3",
        "transformer",
    )
    denoiser_name = "transformer"
    scheduler_kind = "flow"

    def uses_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def encode_prompts(self, prompts, guidance_scale, device, negative_prompt=None) -> PromptEmbeds:
        cfg = self.uses_cfg(guidance_scale)
        max_len = self.pipeline.max_sequence_length or 256
        pe, npe, pooled, npooled = self.stock.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=device,
            do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt,
            max_sequence_length=max_len,
        )
        tensors = {"prompt_embeds": pe, "pooled_prompt_embeds": pooled}
        if cfg:
            tensors.update(negative_prompt_embeds=npe, negative_pooled_prompt_embeds=npooled)
        return PromptEmbeds(tensors)

    def prepare_noise(self, num, height, width, generator, device, dtype) -> torch.Tensor:
        channels = self.denoiser.config.in_channels
        return self.stock.prepare_latents(num, channels, height, width, dtype, device, generator)

    def timestep_kwargs(self, latents, num_inference_steps) -> dict:
        kwargs = {"num_inference_steps": num_inference_steps}
        cfg = self.pipeline.scheduler.config
        if cfg.get("use_dynamic_shifting", False):
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

            p = self.denoiser.config.patch_size
            seq_len = (latents.shape[2] // p) * (latents.shape[3] // p)
            kwargs["mu"] = shift_mu(cfg, seq_len, calculate_shift, max_shift=1.16)
        return kwargs

    def predict(self, latents, timestep, embeds, guidance_scale, height, width) -> torch.Tensor:
        def call(x, enc, pooled):
            t = timestep.expand(x.shape[0]) if timestep.ndim == 0 else timestep.repeat(x.shape[0] // timestep.shape[0])
            return self.call_denoiser(
                hidden_states=x, timestep=t, encoder_hidden_states=enc, pooled_projections=pooled, return_dict=False
            )[0]

        return self._cfg_predict(latents, embeds, ("prompt_embeds", "pooled_prompt_embeds"), guidance_scale, call)

    def decode(self, latents, height, width) -> torch.Tensor:
        vae = self.stock.vae
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return self._postprocess(image)
