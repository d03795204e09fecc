"""Wan 2.1 / Wan 2.2 TI2V-5B text-to-video family: UMT5 prompts, `AutoencoderKLWan` video latents, true CFG."""

from typing import Optional

import torch

from ..rollout_batch import PromptEmbeds
from .base import ModelFamily


class WanFamily(ModelFamily):
    """`WanPipeline` (text-to-video) on `MixODESDEScheduler`.

    Latents are the stock `(B, 16, F', H/8, W/8)` video latents with `F' = (F - 1) / 4 + 1`; a rollout's SDE step and
    its log-prob cover the whole video latent (every frame, reduced by the scheduler's `log_prob_reduction`). The
    decoded batch is `(B, F, 3, H, W)` in [0, 1] (the stock `video_processor.postprocess_video`).

    Wan's stock scheduler is `UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=...)`; the swap keeps its
    sigma grid and integer timesteps exactly (`MixODESDEScheduler(use_flow_sigmas=True)`), and the ODE steps are
    Euler on that grid (first-order UniPC / DPM-Solver on it: the same update).

    CFG runs the conditional and the unconditional branch as two denoiser calls, in the stock order, so each call
    has the batch size of the rollout (the video latents are the memory peak). Wan 2.2's two-expert checkpoints
    (`transformer_2` with a `boundary_ratio`, A14B) are refused; Wan 2.2 TI2V-5B (`expand_timesteps=True`, one
    transformer) is supported with the stock per-token timesteps.
    """

    name = "wan"
    component_names = ("scheduler", "vae", "text_encoder", "tokenizer", "transformer")
    denoiser_name = "transformer"
    scheduler_kind = "flow"
    max_sequence_length = 512  # WanPipeline.__call__'s default
    default_image_size = (480, 832)  # WanPipeline.__call__'s defaults
    default_num_frames = 81

    def extra_stock_kwargs(self) -> dict:
        return {"transformer_2": None, "boundary_ratio": None, "expand_timesteps": False}

    def adopt_stock_config(self, pipeline) -> None:
        config = getattr(pipeline, "config", {})
        boundary = config.get("boundary_ratio")
        if getattr(pipeline, "transformer_2", None) is not None or boundary is not None:
            raise ValueError(
                f"Wan 2.2's two-expert denoising (transformer_2 with boundary_ratio={boundary!r}) is not supported: "
                "GRPOTrainingPipeline trains one denoiser. Wrap a pipeline with a single `transformer` (Wan 2.1, "
                "Wan 2.2 TI2V-5B), e.g. WanPipeline(..., transformer_2=None, boundary_ratio=None) for one expert."
            )
        self.stock.register_to_config(expand_timesteps=bool(config.get("expand_timesteps", False)))

    @property
    def vae_scale_factor(self) -> int:
        return self.stock.vae_scale_factor_spatial

    @property
    def size_multiple(self) -> int:
        return self.stock.vae_scale_factor_spatial * self.denoiser.config.patch_size[1]

    def uses_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def noise_kwargs(self, num_frames: Optional[int]) -> dict:
        num_frames = self.default_num_frames if num_frames is None else num_frames
        temporal = self.stock.vae_scale_factor_temporal
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}.")
        if (num_frames - 1) % temporal:
            below = (num_frames - 1) // temporal * temporal + 1
            raise ValueError(
                f"num_frames={num_frames} is not allowed: Wan needs num_frames - 1 divisible by {temporal} "
                f"(e.g. {below} or {below + temporal})."
            )
        return {"num_frames": num_frames}

    def encode_prompts(self, prompts, guidance_scale, device, negative_prompt=None) -> PromptEmbeds:
        cfg = self.uses_cfg(guidance_scale)
        max_len = self.pipeline.max_sequence_length or self.max_sequence_length
        pe, npe = self.stock.encode_prompt(
            prompt=prompts,
            negative_prompt=[negative_prompt or ""] * len(prompts) if cfg else None,
            do_classifier_free_guidance=cfg,
            max_sequence_length=max_len,
            device=device,
        )
        tensors = {"prompt_embeds": pe}
        if cfg:
            tensors["negative_prompt_embeds"] = npe
        return PromptEmbeds(tensors)

    def prepare_noise(self, num, height, width, generator, device, dtype, num_frames=None) -> torch.Tensor:
        num_frames = self.noise_kwargs(num_frames)["num_frames"]
        channels = self.denoiser.config.in_channels
        # float32 latents whatever the model dtype, cast to it per call: the stock loop's precision
        return self.stock.prepare_latents(num, channels, height, width, num_frames, torch.float32, device, generator)

    def _timestep(self, timestep: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        b = latents.shape[0]
        t = timestep.reshape(-1)[:1].expand(b) if timestep.ndim else timestep.expand(b)
        if not self.stock.config.expand_timesteps:
            return t
        # Wan 2.2 TI2V: one timestep per latent token (2 x 2 patches); text-to-video conditions no frame.
        p = self.denoiser.config.patch_size
        tokens = (latents.shape[2] // p[0]) * (latents.shape[3] // p[1]) * (latents.shape[4] // p[2])
        return t[:, None].expand(b, tokens)

    def predict(self, latents, timestep, embeds, guidance_scale, height, width) -> torch.Tensor:
        t = self._timestep(timestep, latents)
        x = latents.to(self.denoiser.dtype)

        def call(enc):
            return self.call_denoiser(hidden_states=x, timestep=t, encoder_hidden_states=enc, return_dict=False)[0]

        cond = call(embeds["prompt_embeds"])
        if not self.uses_cfg(guidance_scale):
            return cond
        uncond = call(embeds["negative_prompt_embeds"])
        return uncond + guidance_scale * (cond - uncond)

    def decode(self, latents, height, width) -> torch.Tensor:
        vae = self.stock.vae
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, vae.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, vae.dtype)
        video = vae.decode(latents.to(vae.dtype) / inv_std + mean, return_dict=False)[0]  # the stock op order
        frames = self.stock.video_processor.postprocess_video(video, output_type="pt")  # (B, F, 3, H, W) in [0, 1]
        return frames.float()
