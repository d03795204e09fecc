"""FLUX.2 families: FLUX.2 [dev] (Mistral-3 prompts, embedded guidance) and FLUX.2 [klein] (Qwen3 prompts, true CFG)."""

import inspect

import torch

from ..rollout_batch import PromptEmbeds
from ._grid import linear_sigmas
from .base import ModelFamily


class Flux2Family(ModelFamily):
    """`Flux2Pipeline` (FLUX.2 [dev]) as a GRPO family.

    - Prompts: the stock `encode_prompt` (the Mistral-3 chat template with FLUX.2's system message, hidden states of
      layers 10, 20 and 30 stacked, padded to `max_sequence_length`) and its 4-D text position ids.
    - Latents: 2x2-patchified VAE latents packed to a sequence, with the stock 4-D (T, H, W, L) latent ids.
    - Guidance: embedded (`guidance_scale`, default 4.0 as the stock pipeline), no CFG.
    - Grid: `sigmas = linspace(1, 1/N, N)` and FLUX.2's empirical `mu` (`compute_empirical_mu(seq_len, N)`, which
      depends on the number of steps as well as on the resolution).
    - Decoding: the VAE's batch-norm statistics are undone, then the patches are unpatchified.
    """

    name = "flux2"
    component_names = ("scheduler", "vae", "text_encoder", "tokenizer", "transformer")
    denoiser_name = "transformer"
    scheduler_kind = "flow"
    latent_patch = 2
    lora_legacy_keys = False
    max_sequence_length = 512

    def _latent_hw(self, height: int, width: int) -> tuple[int, int]:
        f = self.vae_scale_factor
        return int(height) // (f * 2), int(width) // (f * 2)

    def _encode(self, prompts, device) -> PromptEmbeds:
        max_len = self.pipeline.max_sequence_length or self.max_sequence_length
        embeds, text_ids = self.stock.encode_prompt(prompt=prompts, device=device, max_sequence_length=max_len)
        return embeds, text_ids

    def encode_prompts(self, prompts, guidance_scale, device, negative_prompt=None) -> PromptEmbeds:
        embeds, text_ids = self._encode(prompts, device)
        # text ids are the same for every row (padding to max_sequence_length): keep one, shared
        return PromptEmbeds({"prompt_embeds": embeds, "text_ids": text_ids[:1]}, shared=("text_ids",))

    def prepare_noise(self, num, height, width, generator, device, dtype) -> torch.Tensor:
        channels = self.denoiser.config.in_channels // 4
        latents, _ = self.stock.prepare_latents(num, channels, height, width, dtype, device, generator)
        return latents

    def _latent_ids(self, b, height, width, device) -> torch.Tensor:
        h, w = self._latent_hw(height, width)
        return self.stock._prepare_latent_ids(torch.empty(b, 1, h, w)).to(device)

    def timestep_kwargs(self, latents, num_inference_steps) -> dict:
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

        mu = compute_empirical_mu(image_seq_len=latents.shape[1], num_steps=num_inference_steps)
        return {"num_inference_steps": num_inference_steps, "sigmas": linear_sigmas(num_inference_steps), "mu": mu}

    def _call(self, latents, t, enc, text_ids, img_ids, guidance):
        b = latents.shape[0]
        return self.call_denoiser(
            hidden_states=latents,
            timestep=t / 1000,
            guidance=guidance,
            encoder_hidden_states=enc,
            txt_ids=text_ids.expand(b, -1, -1),
            img_ids=img_ids,
            return_dict=False,
        )[0][:, : latents.shape[1]]

    def _timestep(self, latents, timestep):
        b = latents.shape[0]
        return timestep.expand(b).to(latents.dtype) if timestep.ndim == 0 else timestep.to(latents.dtype)

    def predict(self, latents, timestep, embeds, guidance_scale, height, width) -> torch.Tensor:
        b = latents.shape[0]
        guidance = None
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full((b,), float(guidance_scale), device=latents.device, dtype=torch.float32)
        img_ids = self._latent_ids(b, height, width, latents.device)
        t = self._timestep(latents, timestep)
        return self._call(latents, t, embeds["prompt_embeds"], embeds["text_ids"], img_ids, guidance)

    def decode(self, latents, height, width) -> torch.Tensor:
        vae = self.stock.vae
        h, w = self._latent_hw(height, width)
        ids = self._latent_ids(latents.shape[0], height, width, latents.device)
        if "height" in inspect.signature(self.stock._unpack_latents_with_ids).parameters:
            latents = self.stock._unpack_latents_with_ids(latents, ids, h, w)  # FLUX.2 [klein]
        else:
            latents = self.stock._unpack_latents_with_ids(latents, ids)  # FLUX.2 [dev]
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(
            latents.device, latents.dtype
        )
        latents = self.stock._unpatchify_latents(latents * std + mean)
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return self._postprocess(image)


class Flux2KleinFamily(Flux2Family):
    """`Flux2KleinPipeline` (FLUX.2 [klein]) as a GRPO family.

    As FLUX.2 [dev] (same transformer class, latents, ids, grid and decoding), except:

    - Prompts: the Qwen3 chat template (`add_generation_prompt=True`, thinking off), hidden states of layers 9, 18
      and 27 stacked.
    - Guidance: true CFG when `guidance_scale > 1` (default 4.0 as the stock pipeline), two denoiser calls, the
      unconditional one on the empty prompt (`negative_prompt` replaces it here; the stock pipeline always uses
      `""`), `neg + s * (cond - neg)`, no rescale. A step-distilled checkpoint (`is_distilled=True` in the stock
      pipeline's config, e.g. FLUX.2 [klein] 4B) never runs CFG, as in the stock pipeline.
    """

    name = "flux2_klein"

    def extra_stock_kwargs(self) -> dict:
        return {"is_distilled": self.is_distilled}

    @property
    def is_distilled(self) -> bool:
        """The stock pipeline's `is_distilled` (GRPOTrainingPipeline's config carries it: `from_pipe` copies it)."""
        return bool(self.pipeline.config.get("is_distilled", False))

    def uses_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0 and not self.is_distilled

    def encode_prompts(self, prompts, guidance_scale, device, negative_prompt=None) -> PromptEmbeds:
        embeds, text_ids = self._encode(prompts, device)
        tensors = {"prompt_embeds": embeds, "text_ids": text_ids[:1]}
        if self.uses_cfg(guidance_scale):
            neg, _ = self._encode([negative_prompt or ""] * len(prompts), device)
            tensors["negative_prompt_embeds"] = neg
        return PromptEmbeds(tensors, shared=("text_ids",))

    def predict(self, latents, timestep, embeds, guidance_scale, height, width) -> torch.Tensor:
        img_ids = self._latent_ids(latents.shape[0], height, width, latents.device)
        t = self._timestep(latents, timestep)
        pred = self._call(latents, t, embeds["prompt_embeds"], embeds["text_ids"], img_ids, None)
        if not self.uses_cfg(guidance_scale):
            return pred
        neg = self._call(latents, t, embeds["negative_prompt_embeds"], embeds["text_ids"], img_ids, None)
        return neg + guidance_scale * (pred - neg)
