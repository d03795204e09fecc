"""SANA family: Gemma-2 prompts with the stock complex human instruction, DC-AE latents, true CFG, flow matching."""

import inspect
from typing import Optional

import torch

from ..rollout_batch import PromptEmbeds
from .base import ModelFamily


def stock_complex_human_instruction() -> list[str]:
    """The chat-style instruction `SanaPipeline.__call__` prepends to every prompt by default (read from its
    signature, so it follows the installed diffusers)."""
    from diffusers import SanaPipeline

    return list(inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default)


class SanaFamily(ModelFamily):
    """`SanaPipeline` on `MixODESDEScheduler`.

    Prompts go through the stock `encode_prompt` with the stock default `complex_human_instruction` (the instruction
    text is prepended, the sequence is tokenized to `instruction tokens + max_sequence_length - 2` and the first token
    plus the last `max_sequence_length - 1` states are kept); the negative prompt (default `""`) is encoded without
    it, as the stock pipeline does. Set `pipe.family.complex_human_instruction` to a list of lines to change it, or to
    `[]` for none (the embeddings carry it: re-encode cached prompts after a change). Each row carries its attention
    mask (`prompt_attention_mask`).

    SANA ships `DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0)`; the swap keeps its sigma grid and
    integer timesteps exactly and samples the ODE with Euler (= first-order DPM-Solver++ on that grid). No resolution
    binning: a rollout runs at the `height` x `width` it is given (the stock `use_resolution_binning=True` maps sizes
    to its aspect-ratio bins and resizes back).
    """

    name = "sana"
    component_names = ("scheduler", "vae", "text_encoder", "tokenizer", "transformer")
    denoiser_name = "transformer"
    scheduler_kind = "flow"
    max_sequence_length = 300  # SanaPipeline.__call__'s default

    def __init__(self, pipeline):
        super().__init__(pipeline)
        self.complex_human_instruction: Optional[list[str]] = None  # None: the stock default

    @property
    def default_image_size(self) -> tuple[int, int]:
        size = int(self.denoiser.config.sample_size) * self.vae_scale_factor
        return size, size

    @property
    def size_multiple(self) -> int:
        return self.vae_scale_factor * self.denoiser.config.patch_size

    def uses_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def encode_prompts(self, prompts, guidance_scale, device, negative_prompt=None) -> PromptEmbeds:
        cfg = self.uses_cfg(guidance_scale)
        instruction = self.complex_human_instruction
        if instruction is None:
            instruction = stock_complex_human_instruction()
        pe, mask, npe, nmask = self.stock.encode_prompt(
            prompts,
            do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt or "",
            device=device,
            max_sequence_length=self.pipeline.max_sequence_length or self.max_sequence_length,
            complex_human_instruction=list(instruction),
        )
        tensors = {"prompt_embeds": pe, "prompt_attention_mask": mask}
        if cfg:
            tensors.update(negative_prompt_embeds=npe, negative_prompt_attention_mask=nmask)
        return PromptEmbeds(tensors)

    def prepare_noise(self, num, height, width, generator, device, dtype) -> torch.Tensor:
        channels = self.denoiser.config.in_channels
        # float32 latents whatever the model dtype, cast to it per call: the stock loop's precision
        return self.stock.prepare_latents(num, channels, height, width, torch.float32, device, generator)

    def predict(self, latents, timestep, embeds, guidance_scale, height, width) -> torch.Tensor:
        config, model_dtype = self.denoiser.config, self.denoiser.dtype

        def call(x, enc, mask):
            t = timestep.expand(x.shape[0]) if timestep.ndim == 0 else timestep.repeat(x.shape[0] // timestep.shape[0])
            return self.call_denoiser(
                x.to(model_dtype),
                encoder_hidden_states=enc,
                encoder_attention_mask=mask,
                timestep=t * config.timestep_scale,
                return_dict=False,
            )[0]

        out = self._cfg_predict(latents, embeds, ("prompt_embeds", "prompt_attention_mask"), guidance_scale, call)
        if config.out_channels // 2 == latents.shape[1]:  # learned sigma: keep the velocity half, as the stock loop
            out = out.chunk(2, dim=1)[0]
        return out

    def decode(self, latents, height, width) -> torch.Tensor:
        vae = self.stock.vae
        image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return self._postprocess(image)
