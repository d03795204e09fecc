"""Qwen-Image family: Qwen2.5-VL prompts in the pipeline's chat template, packed latents, true CFG with norm rescale."""

import torch

from ..rollout_batch import PromptEmbeds
from ._grid import linear_sigmas, shift_mu
from ._text import concat_padded
from .base import ModelFamily


class QwenImageFamily(ModelFamily):
    """`QwenImagePipeline` as a GRPO family.

    - Prompts: the stock `encode_prompt` (its system prompt in the ChatML template, the Qwen2.5-VL last hidden state,
      the 34 template tokens dropped, a padding mask). The mask is always kept (the stock pipeline drops an all-ones
      mask, which is the same computation), so prompt batches of different lengths can be joined.
    - Guidance: `guidance_scale` is the stock pipeline's `true_cfg_scale`. CFG runs when it is > 1: the conditional
      and unconditional branches as two denoiser calls (their text lengths differ), combined as
      `neg + s * (cond - neg)` and rescaled to the conditional prediction's norm over the channel dimension, as the
      stock pipeline does. The stock pipeline needs a negative prompt to enable CFG; when none is given we use
      `" "`, the value its documentation recommends. A guidance-distilled transformer (`guidance_embeds=True`)
      gets `guidance_scale` embedded instead, without CFG.
    - Grid: `sigmas = linspace(1, 1/N, N)` and the resolution-dependent `mu` of `calculate_shift` on the packed
      sequence length; the scheduler config's `shift_terminal` and exponential time shift are kept.
    """

    name = "qwenimage"
    component_names = ("scheduler", "vae", "text_encoder", "tokenizer", "transformer")
    denoiser_name = "transformer"
    scheduler_kind = "flow"
    latent_patch = 2
    lora_legacy_keys = False
    max_sequence_length = 512

    def _embedded_guidance(self) -> bool:
        return bool(self.denoiser.config.guidance_embeds)

    def uses_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0 and not self._embedded_guidance()

    def _encode(self, prompts, device, max_len):
        embeds, mask = self.stock.encode_prompt(prompt=prompts, device=device, max_sequence_length=max_len)
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return embeds, mask

    def encode_prompts(self, prompts, guidance_scale, device, negative_prompt=None) -> PromptEmbeds:
        max_len = self.pipeline.max_sequence_length or self.max_sequence_length
        embeds, mask = self._encode(prompts, device, max_len)
        tensors = {"prompt_embeds": embeds, "prompt_embeds_mask": mask}
        if self.uses_cfg(guidance_scale):
            negative = self.spec.default_negative_prompt if negative_prompt is None else negative_prompt
            neg, neg_mask = self._encode([negative] * len(prompts), device, max_len)
            tensors.update(negative_prompt_embeds=neg, negative_prompt_embeds_mask=neg_mask)
        return PromptEmbeds(tensors)

    def concat_prompt_embeds(self, parts):
        return concat_padded(parts, tuple(parts[0].tensors))

    def prepare_noise(self, num, height, width, generator, device, dtype) -> torch.Tensor:
        channels = self.denoiser.config.in_channels // 4
        return self.stock.prepare_latents(num, channels, height, width, dtype, device, generator)

    def timestep_kwargs(self, latents, num_inference_steps) -> dict:
        from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

        mu = shift_mu(self.pipeline.scheduler.config, latents.shape[1], calculate_shift)
        return {"num_inference_steps": num_inference_steps, "sigmas": linear_sigmas(num_inference_steps), "mu": mu}

    def predict(self, latents, timestep, embeds, guidance_scale, height, width) -> torch.Tensor:
        b = latents.shape[0]
        f = self.vae_scale_factor
        img_shapes = [[(1, height // f // 2, width // f // 2)]] * b
        t = timestep.expand(b).to(latents.dtype) if timestep.ndim == 0 else timestep.to(latents.dtype)
        guidance = None
        if self._embedded_guidance():
            guidance = torch.full((b,), float(guidance_scale), device=latents.device, dtype=torch.float32)

        def call(enc, mask):
            return self.call_denoiser(
                hidden_states=latents,
                timestep=t / 1000,
                guidance=guidance,
                encoder_hidden_states_mask=mask,
                encoder_hidden_states=enc,
                img_shapes=img_shapes,
                return_dict=False,
            )[0]

        pred = call(embeds["prompt_embeds"], embeds["prompt_embeds_mask"])
        if not self.uses_cfg(guidance_scale):
            return pred
        neg = call(embeds["negative_prompt_embeds"], embeds["negative_prompt_embeds_mask"])
        comb = neg + guidance_scale * (pred - neg)
        # the stock pipeline's rescale: keep the conditional prediction's norm (per token, over channels)
        return comb * (torch.norm(pred, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))

    def decode(self, latents, height, width) -> torch.Tensor:
        vae = self.stock.vae
        latents = self.stock._unpack_latents(latents, height, width, self.vae_scale_factor).to(vae.dtype)
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        image = vae.decode(latents / inv_std + mean, return_dict=False)[0][:, :, 0]
        return self._postprocess(image)
