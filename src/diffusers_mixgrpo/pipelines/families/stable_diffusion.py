"""Stable Diffusion 1.x / 2.x family: UNet, epsilon or v-prediction, true classifier-free guidance."""

import torch

from ..rollout_batch import PromptEmbeds
from .base import ModelFamily


class StableDiffusionFamily(ModelFamily):
    name = "sd15"
    component_names = ("scheduler", "vae", "text_encoder", "tokenizer", "unet")
    denoiser_name = "unet"
    scheduler_kind = "vp"

    def extra_stock_kwargs(self) -> dict:
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def uses_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def encode_prompts(self, prompts, guidance_scale, device, negative_prompt=None) -> PromptEmbeds:
        cfg = self.uses_cfg(guidance_scale)
        pe, npe = self.stock.encode_prompt(
            prompts, device, 1, cfg, negative_prompt=[negative_prompt or ""] * len(prompts) if cfg else None
        )
        tensors = {"prompt_embeds": pe}
        if cfg:
            tensors["negative_prompt_embeds"] = npe
        return PromptEmbeds(tensors)

    def prepare_noise(self, num, height, width, generator, device, dtype) -> torch.Tensor:
        channels = self.denoiser.config.in_channels
        # prepare_latents already multiplies by the scheduler's init_noise_sigma (1.0 for DDIM).
        return self.stock.prepare_latents(num, channels, height, width, dtype, device, generator)

    def predict(self, latents, timestep, embeds, guidance_scale, height, width) -> torch.Tensor:
        def call(x, enc):
            return self.call_denoiser(x, timestep, encoder_hidden_states=enc, return_dict=False)[0]

        return self._cfg_predict(latents, embeds, ("prompt_embeds",), guidance_scale, call)

    def decode(self, latents, height, width) -> torch.Tensor:
        vae = self.stock.vae
        image = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0]
        return self._postprocess(image)
