"""Z-Image family: Qwen3 prompts (chat template, thinking on), variable-length captions, its own CFG and time sign."""

import torch

from ..rollout_batch import PromptEmbeds
from ._grid import shift_mu
from ._text import concat_padded
from .base import ModelFamily


class ZImageFamily(ModelFamily):
    """`ZImagePipeline` as a GRPO family.

    - Prompts: the stock `encode_prompt` (Qwen3 chat template with `enable_thinking=True`, second-to-last hidden
      state, only the unpadded tokens kept). The variable-length captions are stored right-padded with a mask and
      unpadded again before each denoiser call, so the transformer sees exactly the stock pipeline's inputs.
    - Time: the transformer takes `(1000 - t) / 1000` and predicts the negated velocity; `predict` returns `-out`.
    - Guidance: Z-Image's CFG `cond + s * (cond - uncond)` runs when `guidance_scale > 0` (stock default 5.0;
      Z-Image-Turbo samples with 0), the unconditional branch on `""` (or `negative_prompt`). `cfg_normalization`
      and `cfg_truncation` are the stock pipeline's options (defaults off: `False`, `1.0`); set them on `pipe.family`.
    - Grid: `sigmas = get_default_z_image_sigmas(N)` (a float32 linspace) and `mu` from `calculate_shift`, which
      the scheduler uses only when its config has `use_dynamic_shifting=True` (Z-Image's released config: static
      shift 3.0).
    - Size: 1024 x 1024 by default, multiples of 2 x the VAE factor.
    """

    name = "zimage"
    component_names = ("scheduler", "vae", "text_encoder", "tokenizer", "transformer")
    denoiser_name = "transformer"
    scheduler_kind = "flow"
    latent_patch = 2
    lora_legacy_keys = False
    default_image_size = (1024, 1024)
    max_sequence_length = 512
    cfg_normalization: float = 0.0
    cfg_truncation: float = 1.0

    def uses_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 0.0

    @staticmethod
    def _pad(captions: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(c.shape[0] for c in captions)
        out = captions[0].new_zeros((len(captions), length, captions[0].shape[-1]))
        mask = torch.zeros((len(captions), length), dtype=torch.bool, device=captions[0].device)
        for i, c in enumerate(captions):
            out[i, : c.shape[0]] = c
            mask[i, : c.shape[0]] = True
        return out, mask

    def encode_prompts(self, prompts, guidance_scale, device, negative_prompt=None) -> PromptEmbeds:
        max_len = self.pipeline.max_sequence_length or self.max_sequence_length
        cfg = self.uses_cfg(guidance_scale)
        negative = None if negative_prompt is None else [negative_prompt] * len(prompts)
        pos, neg = self.stock.encode_prompt(
            prompt=list(prompts),
            device=device,
            do_classifier_free_guidance=cfg,
            negative_prompt=negative,
            max_sequence_length=max_len,
        )
        embeds, mask = self._pad(pos)
        tensors = {"prompt_embeds": embeds, "prompt_embeds_mask": mask}
        if cfg:
            tensors["negative_prompt_embeds"], tensors["negative_prompt_embeds_mask"] = self._pad(neg)
        return PromptEmbeds(tensors)

    def concat_prompt_embeds(self, parts):
        return concat_padded(parts, tuple(parts[0].tensors))

    def prepare_noise(self, num, height, width, generator, device, dtype) -> torch.Tensor:
        channels = self.denoiser.in_channels
        return self.stock.prepare_latents(num, channels, height, width, torch.float32, device, generator).to(dtype)

    def timestep_kwargs(self, latents, num_inference_steps) -> dict:
        from diffusers.pipelines.z_image.pipeline_z_image import calculate_shift, get_default_z_image_sigmas

        seq_len = (latents.shape[2] // 2) * (latents.shape[3] // 2)
        mu = shift_mu(self.pipeline.scheduler.config, seq_len, calculate_shift)
        sigmas = get_default_z_image_sigmas(num_inference_steps)
        return {"num_inference_steps": num_inference_steps, "sigmas": sigmas, "mu": mu}

    @staticmethod
    def _unpad(embeds: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        return [e[m.to(e.device)] for e, m in zip(embeds, mask)]

    def _scale_at(self, guidance_scale: float, timestep: torch.Tensor) -> float:
        # the stock cfg_truncation: no CFG once the normalised time (1000 - t) / 1000 passes the threshold
        t_norm = float((1000 - timestep.reshape(-1)[0].float()) / 1000)
        if self.cfg_truncation is not None and float(self.cfg_truncation) <= 1 and t_norm > self.cfg_truncation:
            return 0.0
        return guidance_scale

    def predict(self, latents, timestep, embeds, guidance_scale, height, width) -> torch.Tensor:
        b = latents.shape[0]
        t = timestep.expand(b) if timestep.ndim == 0 else timestep
        t = (1000 - t) / 1000
        captions = self._unpad(embeds["prompt_embeds"], embeds["prompt_embeds_mask"])
        scale = self._scale_at(guidance_scale, timestep) if self.uses_cfg(guidance_scale) else 0.0
        x = latents.to(self.denoiser.dtype)
        if scale > 0:
            captions = captions + self._unpad(embeds["negative_prompt_embeds"], embeds["negative_prompt_embeds_mask"])
            x, t = x.repeat(2, 1, 1, 1), t.repeat(2)
        out = self.call_denoiser(list(x.unsqueeze(2).unbind(dim=0)), t, captions, return_dict=False)[0]
        out = torch.stack([o.float() for o in out], dim=0)
        if scale > 0:
            pos, neg = out[:b], out[b:]
            pred = pos + scale * (pos - neg)
            if self.cfg_normalization and float(self.cfg_normalization) > 0.0:
                pred = torch.stack([self._renorm(p, q) for p, q in zip(pos, pred)])
            out = pred
        return -out.squeeze(2)

    def _renorm(self, pos: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        max_norm = torch.linalg.vector_norm(pos) * float(self.cfg_normalization)
        new_norm = torch.linalg.vector_norm(pred)
        return pred * (max_norm / new_norm) if new_norm > max_norm else pred

    def decode(self, latents, height, width) -> torch.Tensor:
        vae = self.stock.vae
        latents = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents, return_dict=False)[0]
        return self._postprocess(image)
