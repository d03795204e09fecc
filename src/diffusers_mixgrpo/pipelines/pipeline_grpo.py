"""`GRPOTrainingPipeline`: grouped rollouts with window log-probs and prefix sharing, and the log-prob recomputation."""

import copy
import functools
import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from typing import Optional, Union

import torch
from diffusers import DiffusionPipeline, ModelMixin, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..schedulers.scheduling_mix_ddim_sde import MixDDIMSDEScheduler
from ..schedulers.scheduling_mix_ode_sde import MixODESDEScheduler
from .families import SUPPORTED_PIPELINES, detect_family, family_class
from .families.base import ModelFamily
from .rollout_batch import PromptEmbeds, RolloutBatch

_MIX_SCHEDULERS = {"flow": MixODESDEScheduler, "vp": MixDDIMSDEScheduler}


class GRPOTrainingPipeline(DiffusionPipeline):
    r"""
    Rollouts and log-probs for GRPO on FLUX.1, SD3/SD3.5, SD1.5-class, SDXL, SANA, Wan (text-to-video), Qwen-Image,
    FLUX.2 [dev] / [klein] and Z-Image models, on top of the stock pipelines' components.

    Build it from a stock pipeline with `GRPOTrainingPipeline.from_pipe(pipe)` (no weights are copied). The
    scheduler is swapped for the windowed ODE-SDE sampler of the family (`MixODESDEScheduler` for flow matching,
    `MixDDIMSDEScheduler` for VP diffusion) built from the original scheduler's config.

    - `rollout(prompts, num_generations, ...)` samples `num_generations` images per prompt in batches, all members of a
      group starting from the same noise; the steps before the SDE window are deterministic, so with
      `share_prefix=True` they are computed once per prompt and the trajectory branches at the window.
    - `log_prob(batch, step_index)` recomputes the log-prob of a recorded window step under the current weights,
      differentiably (the GRPO training pass).

    Components are those of the wrapped family (unused ones are `None`): `scheduler`, `vae`, `text_encoder(_2, _3)`,
    `tokenizer(_2, _3)`, and `transformer` (FLUX, SD3, ...) or `unet` (SD1.5, SDXL).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->transformer->unet->vae"
    _optional_components = [
        "text_encoder",
        "tokenizer",
        "text_encoder_2",
        "tokenizer_2",
        "text_encoder_3",
        "tokenizer_3",
        "transformer",
        "unet",
    ]

    def __init__(
        self,
        scheduler: SchedulerMixin,
        vae: ModelMixin,
        text_encoder: Optional[PreTrainedModel] = None,
        tokenizer: Optional[PreTrainedTokenizerBase] = None,
        text_encoder_2: Optional[PreTrainedModel] = None,
        tokenizer_2: Optional[PreTrainedTokenizerBase] = None,
        text_encoder_3: Optional[PreTrainedModel] = None,
        tokenizer_3: Optional[PreTrainedTokenizerBase] = None,
        transformer: Optional[ModelMixin] = None,
        unet: Optional[UNet2DConditionModel] = None,
        is_distilled: bool = False,
    ):
        super().__init__()
        # FLUX.2 [klein]'s stock-pipeline flag (a step-distilled checkpoint runs no CFG); `from_pipe` carries it over.
        self.register_to_config(is_distilled=bool(is_distilled))
        family = detect_family(transformer, unet, text_encoder=text_encoder)
        implementation = family_class(family)
        scheduler_cls = _MIX_SCHEDULERS[implementation.scheduler_kind]
        if not isinstance(scheduler, scheduler_cls):
            overrides = implementation.mix_scheduler_overrides(scheduler)
            scheduler = scheduler_cls.from_config(scheduler.config, **overrides)
        self.register_modules(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3,
            transformer=transformer,
            unet=unet,
        )
        self.model_family = family
        self.family: ModelFamily = implementation(self)
        self.nfe_counter = 0
        # T5 prompt length (FLUX, SD3); None = the stock pipeline's default (512 / 256). Must match the base model's
        # training for small models; it is part of the prompt encoding, so cached embeddings carry it.
        self.max_sequence_length: Optional[int] = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs) -> "GRPOTrainingPipeline":
        """Wrap a stock pipeline of a supported family (`FluxPipeline`, `QwenImagePipeline`, ...; see
        `families.SUPPORTED_PIPELINES`), sharing its modules."""
        if isinstance(pipeline, GRPOTrainingPipeline):
            return super().from_pipe(pipeline, **kwargs)
        supported = [c for c in type(pipeline).__mro__ if c.__name__ in SUPPORTED_PIPELINES]
        if not supported:
            raise ValueError(
                f"Unsupported base pipeline {type(pipeline).__name__}; GRPOTrainingPipeline supports "
                f"{', '.join(sorted(SUPPORTED_PIPELINES))} (and their subclasses)."
            )
        # Pass the modules explicitly: `DiffusionPipeline.from_pipe` drops a model whose class is not in the type
        # hints of `__init__`, and the families' VAEs and transformers are more classes than the hints list (the
        # family check is detect_family's, on the denoiser).
        own = set(cls._get_signature_keys(cls)[0])
        for name, component in pipeline.components.items():
            if name in own and name not in kwargs and component is not None:
                kwargs[name] = component
        # diffusers' `from_pipe` casts every module to `dtype`, float32 when not given: a bf16 load would become a
        # full float32 copy (FLUX.1-dev: 48 GB). Keep the stock pipeline's dtype (its denoiser's) instead.
        denoiser = next(
            (kwargs[n] for n in ("transformer", "unet") if isinstance(kwargs.get(n), torch.nn.Module)), None
        )
        if denoiser is not None and "dtype" not in kwargs and "torch_dtype" not in kwargs:
            kwargs["dtype"] = denoiser.dtype
        pipe = super().from_pipe(pipeline, **kwargs)
        pipe.family.adopt_stock_config(pipeline)
        return pipe

    @property
    def denoiser(self) -> torch.nn.Module:
        """The trained network: `transformer` (FLUX, SD3) or `unet` (SD1.5)."""
        return self.family.denoiser

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the denoiser's activations in the backward pass of `log_prob` (memory for compute)."""
        self.denoiser.enable_gradient_checkpointing()

    def disable_gradient_checkpointing(self) -> None:
        self.denoiser.disable_gradient_checkpointing()

    # LoRA: the family's own loader mixin, on the shared modules, so the files are the stock pipelines' format.
    def load_lora_weights(self, *args, **kwargs):
        """`FluxPipeline.load_lora_weights` / `StableDiffusion3Pipeline...` / `StableDiffusionPipeline...`."""
        return self.family.stock.load_lora_weights(*args, **kwargs)

    def unload_lora_weights(self, *args, **kwargs):
        return self.family.stock.unload_lora_weights(*args, **kwargs)

    def fuse_lora(self, *args, **kwargs):
        return self.family.stock.fuse_lora(*args, **kwargs)

    def set_adapters(self, *args, **kwargs):
        return self.family.stock.set_adapters(*args, **kwargs)

    def save_lora_weights(self, save_directory: str, **kwargs):
        """The family's `save_lora_weights` (e.g. `transformer_lora_layers=` for FLUX/SD3, `unet_lora_layers=`)."""
        return type(self.family.stock).save_lora_weights(save_directory, **kwargs)

    # ------------------------------------------------------------------ memory of the frozen modules
    TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2", "text_encoder_3")

    def enable_model_cpu_offload(
        self,
        gpu_id: Optional[int] = None,
        device: Optional[Union[torch.device, str]] = None,
        modules: Sequence[str] = ("text_encoders", "vae"),
    ) -> None:
        r"""
        Keep the frozen modules in CPU memory; each moves to the execution device only for its own call (the text
        encoders for `encode_prompts`, the VAE for the decode at the end of a rollout) and back right after.

        Unlike `DiffusionPipeline.enable_model_cpu_offload`, the denoiser is never offloaded: it is the trained
        module, and the accelerate hooks diffusers installs would move it (and its gradients) off the device between
        calls. With a `PromptEmbedsCache` the text encoders are then never moved at all during training.

        Args:
            gpu_id (`int`, *optional*): execution device `cuda:<gpu_id>` (when `device` is not given).
            device (`torch.device` or `str`, *optional*): execution device; default: the denoiser's device.
            modules (`Sequence[str]`, defaults to `("text_encoders", "vae")`): what to offload: `"text_encoders"`
                and/or `"vae"`.
        """
        allowed = ("text_encoders", "vae")
        bad = [m for m in modules if m not in allowed]
        if bad or not modules:
            raise ValueError(f"modules={list(modules)!r} is not allowed; choose among {list(allowed)}.")
        if device is None:
            device = torch.device(f"cuda:{gpu_id}") if gpu_id is not None else self.denoiser.device
        names = (list(self.TEXT_ENCODER_NAMES) if "text_encoders" in modules else []) + (
            ["vae"] if "vae" in modules else []
        )
        names = [n for n in names if getattr(self, n, None) is not None]
        for name in names:
            getattr(self, name).to("cpu")
        self._cpu_offload = {"device": torch.device(device), "modules": set(names)}

    def disable_model_cpu_offload(self) -> None:
        """Undo `enable_model_cpu_offload`: the offloaded modules move back to the execution device."""
        plan = getattr(self, "_cpu_offload", None)
        if not plan:
            return
        for name in plan["modules"]:
            if getattr(self, name, None) is not None:
                getattr(self, name).to(plan["device"])
        self._cpu_offload = None

    @property
    def offloaded_modules(self) -> set[str]:
        """Names of the components `enable_model_cpu_offload` keeps in CPU memory."""
        plan = getattr(self, "_cpu_offload", None)
        return set(plan["modules"]) if plan else set()

    def free_text_encoders(self) -> None:
        """Drop the text encoders (and tokenizers stay): once every prompt's conditioning is cached
        (`PromptEmbedsCache`), a run needs them no more; FLUX's T5-XXL alone is 9.5 GB. Encoding afterwards raises."""
        for name in self.TEXT_ENCODER_NAMES:
            if getattr(self, name, None) is not None:
                self.register_modules(**{name: None})
                if getattr(self.family.stock, name, None) is not None:
                    setattr(self.family.stock, name, None)
        if getattr(self, "_cpu_offload", None):
            self._cpu_offload["modules"] -= set(self.TEXT_ENCODER_NAMES)
        self._text_encoders_freed = True

    @property
    def text_encoders_freed(self) -> bool:
        return bool(getattr(self, "_text_encoders_freed", False))

    def enable_vae_slicing(self) -> None:
        """Decode a rollout chunk one image at a time (peak decode memory of one image; the same images up to
        batch-size rounding)."""
        self._vae_method("enable_slicing")

    def disable_vae_slicing(self) -> None:
        self._vae_method("disable_slicing")

    def enable_vae_tiling(self) -> None:
        """Decode in overlapping tiles (large images: 1024 px and up; the tile seams are blended, so the images
        differ slightly from a full decode)."""
        self._vae_method("enable_tiling")

    def disable_vae_tiling(self) -> None:
        self._vae_method("disable_tiling")

    def _vae_method(self, method: str) -> None:
        fn = getattr(self.vae, method, None)
        if fn is None:
            raise ValueError(f"{type(self.vae).__name__} (the {self.model_family} VAE) has no {method}().")
        fn()

    @contextmanager
    def onloaded(self, names: Sequence[str]):
        """Within the block, the offloaded modules among `names` (`"text_encoder"`, ..., `"vae"`) are on the
        execution device; they go back to CPU memory when the outermost such block ends (blocks nest, so a loop of
        encodes inside one block moves the encoders once)."""
        plan = getattr(self, "_cpu_offload", None)
        depth = getattr(self, "_onload_depth", {})
        self._onload_depth = depth
        names = [n for n in names if plan and n in plan["modules"] and getattr(self, n, None) is not None]
        for name in names:
            if depth.get(name, 0) == 0:
                getattr(self, name).to(plan["device"])
            depth[name] = depth.get(name, 0) + 1
        try:
            yield
        finally:
            for name in names:
                depth[name] -= 1
                if depth[name] == 0 and getattr(self, name, None) is not None:
                    getattr(self, name).to("cpu")

    @property
    def stock_pipeline(self) -> DiffusionPipeline:
        """The stock pipeline of the family built on these components (for plain inference)."""
        return self.family.stock

    # ------------------------------------------------------------------ prompts
    def default_guidance_scale(self) -> float:
        return self.family.default_guidance_scale

    def default_image_size(self) -> tuple[int, int]:
        if self.family.default_image_size is not None:
            return self.family.default_image_size
        stock = self.family.stock
        size = getattr(stock, "default_sample_size", None)
        if size is None and self.unet is not None:
            size = self.unet.config.sample_size
        size = int(size) * self.family.vae_scale_factor
        return size, size

    @torch.no_grad()
    def encode_prompts(
        self,
        prompts: Sequence[str],
        guidance_scale: Optional[float] = None,
        negative_prompt: Optional[str] = None,
        batch_size: int = 32,
        device: Optional[torch.device] = None,
    ) -> PromptEmbeds:
        """Encode prompts once (one row each); pass the result to `rollout(prompt_embeds=...)`.

        The CFG rows (`negative_*`) are included when the family runs CFG at this `guidance_scale`, so encode with
        the guidance you will roll out with. `PromptEmbeds.save` / `PromptEmbeds.load` cache them on disk.
        """
        prompts = self._check_prompts(prompts)
        guidance_scale = self._check_guidance(guidance_scale)
        if self.text_encoders_freed:
            raise RuntimeError(
                f"The text encoders were freed (free_text_encoders / offload_text_encoders='free') and "
                f"{len(prompts)} prompt(s) still need encoding, e.g. {prompts[0]!r}: pass cached rows "
                f"(prompt_embeds=, PromptEmbedsCache), or keep the encoders (offload_text_encoders='cpu')."
            )
        device = device or self._execution_device
        with self.onloaded(self.TEXT_ENCODER_NAMES):
            parts = [
                self.family.encode_prompts(list(prompts[i : i + batch_size]), guidance_scale, device, negative_prompt)
                for i in range(0, len(prompts), batch_size)
            ]
        return self.family.concat_prompt_embeds(parts)

    @staticmethod
    def _check_prompts(prompts) -> list[str]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, Sequence) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}.")
        return list(prompts)

    def _check_guidance(self, guidance_scale: Optional[float]) -> float:
        if guidance_scale is None:
            return self.family.default_guidance_scale
        if not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}.")
        return float(guidance_scale)

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def rollout(
        self,
        prompts: Optional[Sequence[str]] = None,
        num_generations: int = 1,
        num_inference_steps: int = 25,
        sde_window: Optional[tuple[int, int]] = None,
        *,
        sde_steps: Optional[Sequence[int]] = None,
        prompt_embeds: Optional[PromptEmbeds] = None,
        guidance_scale: Optional[float] = None,
        negative_prompt: Optional[str] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        generator: Optional[Union[torch.Generator, list[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        share_prefix: bool = True,
        same_initial_noise: bool = True,
        max_batch_size: Optional[int] = None,
        autocast_dtype: Optional[torch.dtype] = None,
        num_frames: Optional[int] = None,
        step_callback: Optional[Callable[[], None]] = None,
        record_means: bool = False,
    ) -> RolloutBatch:
        r"""
        Sample `num_generations` images (videos) for each prompt and record the SDE-window steps for training.

        Args:
            prompts (`list[str]`): P distinct prompts; the batch holds B = P x `num_generations` samples, sample
                `b` being member `b % num_generations` of prompt `b // num_generations`.
            num_generations (`int`): group size G.
            num_inference_steps (`int`): N, the length of the (uncompressed) grid.
            sde_window (`tuple[int, int]`, *optional*): `(start, size)` of the SDE window on the N-step grid;
                `None` keeps the scheduler's window (`set_sde_window` / config). `(0, N)` samples every step with the
                SDE (DanceGRPO); `(w, 0)` is a pure ODE rollout.
            sde_steps (`list[int]`, *optional*): instead of `sde_window`, the grid indices of the SDE steps, sorted
                and unique, gaps allowed (e.g. `[0, 3, 5]`); every other step is ODE. Consecutive indices are the same
                rollout as the window they form. With gaps the latents before and after each SDE step are recorded
                (`batch.latent_index`), and a Flash tail starts after the last SDE step.
            prompt_embeds (`PromptEmbeds`, *optional*): precomputed `encode_prompts(prompts)` rows (one per prompt).
            guidance_scale (`float`, *optional*): FLUX: the embedded guidance (default 3.5); SD3 / SD1.5: the CFG scale
                (CFG runs when > 1); Qwen-Image: the stock `true_cfg_scale`; FLUX.2 [dev]: embedded; FLUX.2 [klein]:
                CFG above 1; Z-Image: its CFG above 0 (docs/pipelines.md). The same value is stored in the batch and
                used by `log_prob`.
            negative_prompt (`str`, *optional*): for CFG families.
            height, width (`int`, *optional*): image size (default: the model's native size).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): draws the initial noise and the
                per-sample seeds of the SDE noise. A list gives one generator per prompt, which makes each group's
                samples independent of the other prompts in the batch (the trainer uses it so that a run gives
                the same rollouts whatever the number of processes).
            latents (`torch.Tensor`, *optional*): initial noise, one row per prompt (or per sample when
                `same_initial_noise=False`), in the denoiser's layout.
            share_prefix (`bool`): compute the pre-window ODE steps once per prompt (needs `same_initial_noise`).
            same_initial_noise (`bool`): all members of a group start from the same noise (the reference default).
            max_batch_size (`int`, *optional*): most samples per denoiser call; groups are chunked to fit.
            autocast_dtype (`torch.dtype`, *optional*): run the denoiser under autocast in this dtype (e.g.
                `torch.bfloat16`); the scheduler's Gaussian math stays float32.
            num_frames (`int`, *optional*): video families (Wan) only: frames per video (the family's default when
                `None`); the batch's `images` are then `(B, F, 3, H, W)` and the latents `(B, C, F', H', W')`.
            step_callback (`Callable[[], None]`, *optional*): called after every denoiser call (the trainer checks
                there whether to stop; it may raise to abandon the rollout). Called as often on every process for
                the same settings, so it may run collectives.
            record_means (`bool`, defaults to `False`): also record each SDE step's mean in `RolloutBatch.means`
                (float32, one latent per sample and window step), for GRPO-Guard's ratio normalisation.

        Returns:
            `RolloutBatch`.
        """
        if prompt_embeds is not None and prompts is None:
            raise ValueError("rollout needs `prompts` (for rewards and logging) also when `prompt_embeds` is given.")
        prompts = self._check_prompts(prompts)
        if not isinstance(num_generations, int) or num_generations < 1:
            raise ValueError(f"num_generations must be an integer >= 1, got {num_generations!r}.")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}.")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}.")
        guidance_scale = self._check_guidance(guidance_scale)
        if prompt_embeds is not None and len(prompt_embeds) != len(prompts):
            raise ValueError(
                f"prompt_embeds has {len(prompt_embeds)} rows but {len(prompts)} prompts were given; pass one row "
                f"per distinct prompt (the {num_generations} generations of a prompt share its row)."
            )
        if sde_window is not None and sde_steps is not None:
            raise ValueError(
                f"rollout got both sde_window={tuple(sde_window)} and sde_steps={list(sde_steps)}; pass one of them."
            )
        if not same_initial_noise:
            share_prefix = False

        num_prompts, group = len(prompts), num_generations
        batch = num_prompts * group
        device = self._execution_device
        dtype = self.denoiser.dtype
        default_h, default_w = self.default_image_size()
        height, width = int(height or default_h), int(width or default_w)
        multiple = self.family.size_multiple
        if height % multiple or width % multiple or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of {multiple}, got {height}x{width}.")

        noise_kwargs = self.family.noise_kwargs(num_frames)  # {} for image families, {"num_frames": F} for video

        if prompt_embeds is None:
            prompt_embeds = self.encode_prompts(prompts, guidance_scale, negative_prompt, device=device)
        prompt_embeds = prompt_embeds.to(device, dtype)

        # Initial noise: one row per prompt (shared by the group) or one per sample.
        noise_rows = num_prompts if same_initial_noise else batch
        per_prompt = isinstance(generator, (list, tuple))
        if per_prompt and len(generator) != num_prompts:
            raise ValueError(
                f"generator is a list of {len(generator)}; pass one generator per prompt ({num_prompts})."
            )
        if latents is None and per_prompt:
            rows = 1 if same_initial_noise else group
            noise = torch.cat(
                [self.family.prepare_noise(rows, height, width, g, device, dtype, **noise_kwargs) for g in generator]
            )
        elif latents is None:
            noise = self.family.prepare_noise(noise_rows, height, width, generator, device, dtype, **noise_kwargs)
        else:
            if latents.shape[0] != noise_rows:
                raise ValueError(
                    f"latents has {latents.shape[0]} rows; expected {noise_rows} "
                    f"({'one per prompt' if same_initial_noise else 'one per sample'})."
                )
            noise = latents.to(device, dtype)

        # SDE noise comes from one generator per sample, seeded from `generator`, so a sample's trajectory does not
        # depend on how the batch is chunked or whether the prefix is shared.
        def draw_seeds(n, gen):
            seed_device = gen.device if isinstance(gen, torch.Generator) else "cpu"
            return torch.randint(0, 2**62, (n,), generator=gen, device=seed_device).tolist()

        if per_prompt:
            seeds = [s for g in generator for s in draw_seeds(group, g)]
        else:
            seeds = draw_seeds(batch, generator)
        sample_generators = [torch.Generator(device).manual_seed(s) for s in seeds]

        scheduler, timestep_kwargs = self._configured_scheduler(
            noise, num_inference_steps, sde_window, device, sde_steps
        )
        start, end = scheduler.sde_window
        num_steps = len(scheduler.timesteps)
        sde_steps = scheduler.sde_steps
        latent_index, num_slots = self._latent_layout(sde_steps)

        group_of_sample = torch.arange(batch, device=device) // group
        chunks = self._chunk_plan(num_prompts, group, max_batch_size or batch)
        recorded = torch.empty((batch, num_slots, *noise.shape[1:]), dtype=noise.dtype, device=device)
        log_probs = torch.zeros((batch, len(sde_steps)), dtype=torch.float32, device=device)
        means = None
        if record_means:  # float32: GRPO-Guard uses mu_theta - mu_old, far below a bf16 latent's resolution
            means = torch.empty((batch, len(sde_steps), *noise.shape[1:]), dtype=torch.float32, device=device)
        images = [None] * len(chunks)
        nfe_before = self.nfe_counter
        prefix_cache: dict[tuple[int, ...], tuple[torch.Tensor, SchedulerMixin]] = {}

        total_calls = sum(
            (len(set(c.div(group, rounding_mode="floor").tolist())) if share_prefix else len(c)) * start
            + len(c) * (num_steps - start)
            for c in chunks
        )
        with self.progress_bar(total=total_calls) as bar:
            denoise = functools.partial(
                self._denoise,
                guidance_scale=guidance_scale,
                height=height,
                width=width,
                autocast_dtype=autocast_dtype,
                bar=bar,
                step_callback=step_callback,
            )

            for ci, sample_ids in enumerate(chunks):
                sample_groups = group_of_sample[sample_ids]
                prompt_ids = torch.unique_consecutive(sample_groups)
                embeds = prompt_embeds.select(sample_groups)
                if share_prefix:
                    key = tuple(prompt_ids.tolist())
                    if key not in prefix_cache:
                        sched = copy.deepcopy(scheduler)
                        x = denoise(
                            sched, noise[prompt_ids.to(noise.device)], prompt_embeds.select(prompt_ids), 0, start
                        )
                        prefix_cache = {key: (x, sched)}  # only the current prompts' prefix is ever reused
                    x, sched = prefix_cache[key]
                    repeats = len(sample_ids) // len(prompt_ids)
                    x, sched = x.repeat_interleave(repeats, dim=0), copy.deepcopy(sched)
                    sched.repeat_interleave_state(repeats)
                else:
                    sched = copy.deepcopy(scheduler)
                    rows = sample_groups if same_initial_noise else sample_ids
                    x = denoise(sched, noise[rows.to(noise.device)], embeds, 0, start)
                generators = [sample_generators[b] for b in sample_ids.tolist()]
                record = (recorded, log_probs, sample_ids, sde_steps, latent_index, means)
                x = denoise(sched, x, embeds, start, num_steps, generators, record)
                with self.onloaded(("vae",)):
                    images[ci] = self.family.decode(x, height, width)

        image_tensor = torch.empty((batch, *images[0].shape[1:]), dtype=torch.float32, device=images[0].device)
        for sample_ids, img in zip(chunks, images):
            image_tensor[sample_ids.to(img.device)] = img.float()
        return RolloutBatch(
            images=image_tensor,
            prompts=[prompts[i] for i in group_of_sample.tolist()],
            group_ids=group_of_sample,
            prompt_embeds=prompt_embeds,
            latents=recorded,
            log_probs=log_probs,
            step_indices=sde_steps,
            timesteps=scheduler.timesteps[sde_steps].clone(),
            latent_index=latent_index,
            chunks=chunks,
            scheduler_kwargs=timestep_kwargs,
            sde_window=(start, end),
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            nfe=self.nfe_counter - nfe_before,
            means=means,
        )

    @staticmethod
    def _latent_layout(sde_steps: Sequence[int]) -> tuple[list[tuple[int, int]], int]:
        """Where each SDE step's input and output go in the recorded latents, and how many slots that takes.

        A run of consecutive SDE steps shares latents (the output of one step is the input of the next): a run of L
        steps takes L + 1 slots, so a contiguous window of K steps takes K + 1 and `[0, 3, 5]` takes 6."""
        index, slot = [], -1
        for k, s in enumerate(sde_steps):
            if k == 0 or s != sde_steps[k - 1] + 1:
                slot += 1  # a new run: its first input gets a slot of its own
            index.append((slot, slot + 1))
            slot += 1
        return index, slot + 1

    @staticmethod
    def _chunk_plan(num_prompts: int, group: int, max_batch_size: int) -> list[torch.Tensor]:
        """Sample-index chunks of at most `max_batch_size`: whole groups, or slices of one group if it is larger."""
        chunks = []
        if group <= max_batch_size:
            per_chunk = max_batch_size // group
            for p0 in range(0, num_prompts, per_chunk):
                p1 = min(p0 + per_chunk, num_prompts)
                chunks.append(torch.arange(p0 * group, p1 * group))
        else:
            for p in range(num_prompts):
                for g0 in range(0, group, max_batch_size):
                    chunks.append(torch.arange(p * group + g0, p * group + min(g0 + max_batch_size, group)))
        return chunks

    def _private_scheduler(self) -> SchedulerMixin:
        """A copy of the scheduler to run steps on, without trajectory recording (the pipeline records itself)."""
        scheduler = copy.deepcopy(self.scheduler)
        if "record_trajectory" in scheduler.config:
            scheduler.register_to_config(record_trajectory=False)
        return scheduler

    def _configured_scheduler(
        self, noise, num_inference_steps, sde_window, device, sde_steps=None
    ) -> tuple[SchedulerMixin, dict]:
        """A private copy of the scheduler with the rollout's grid and window (or SDE steps), and the `set_timesteps`
        kwargs used."""
        scheduler = self._private_scheduler()
        if sde_steps is not None:
            steps = list(sde_steps)
            bad = [s for s in steps if isinstance(s, bool) or int(s) != s or not 0 <= s < num_inference_steps]
            if bad or any(b <= a for a, b in zip(steps, steps[1:])):
                raise ValueError(
                    f"sde_steps={steps} is not allowed; it must be sorted, unique grid indices in "
                    f"[0, {num_inference_steps - 1}] of the {num_inference_steps}-step grid."
                )
            scheduler.set_sde_steps(steps)
        if sde_window is not None:
            if len(sde_window) != 2:
                raise ValueError(f"sde_window must be a (start, size) pair, got {sde_window!r}.")
            start, size = (int(v) for v in sde_window)
            if size < 0 or size > num_inference_steps or (size > 0 and not 0 <= start < num_inference_steps):
                raise ValueError(
                    f"sde_window={tuple(sde_window)} is outside the {num_inference_steps}-step grid; allowed: "
                    f"0 <= start <= {num_inference_steps - 1} and 0 <= size <= {num_inference_steps}."
                )
            scheduler.set_sde_window(start, size)
        kwargs = self.family.timestep_kwargs(noise, num_inference_steps)
        scheduler.set_timesteps(device=device, **kwargs)
        scheduler.set_begin_index(0)
        return scheduler, kwargs

    def _denoise(
        self,
        sched,
        x,
        embeds,
        first,
        last,
        generators=None,
        record=None,
        *,
        guidance_scale,
        height,
        width,
        autocast_dtype,
        bar,
        step_callback=None,
    ) -> torch.Tensor:
        """Steps `[first, last)` of `sched`'s grid on `x` (one generator per row for SDE noise); with `record`,
        store the latents around each SDE step and its log-prob (`_latent_layout`)."""
        for i in range(first, last):
            t = sched.timesteps[i]
            out = self._predict(x, t, embeds, guidance_scale, height, width, autocast_dtype)
            noise = None
            if sched.is_sde_step(i):
                if generators is None:
                    raise RuntimeError(f"step {i} is an SDE step but no noise generators were given.")
                noise = torch.stack([torch.randn(x.shape[1:], generator=g, device=x.device) for g in generators])
            step = sched.step(out, t, x, noise=noise)
            if record is not None and step.log_prob is not None:
                recorded, log_probs, sample_ids, sde_steps, latent_index, means = record
                j = sde_steps.index(i)
                src, dst = latent_index[j]
                rows = sample_ids.to(recorded.device)
                if j == 0 or latent_index[j - 1][1] != src:  # the first step of a run: its input is not stored yet
                    recorded[rows, src] = x
                recorded[rows, dst] = step.prev_sample
                log_probs[rows, j] = step.log_prob.float()
                if means is not None:
                    means[rows, j] = step.prev_sample_mean.float()
            x = step.prev_sample
            bar.update(x.shape[0])
            if step_callback is not None:
                step_callback()
        return x

    def _predict(self, x, t, embeds, guidance_scale, height, width, autocast_dtype) -> torch.Tensor:
        ctx = torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
        with ctx:
            out = self.family.predict(x, t, embeds, guidance_scale, height, width)
        self.nfe_counter += x.shape[0]
        return out.float()

    # ------------------------------------------------------------------ training pass
    def log_prob(
        self,
        batch: RolloutBatch,
        step_index: int,
        sample_index: Optional[torch.Tensor] = None,
        *,
        autocast_dtype: Optional[torch.dtype] = None,
        return_stats: bool = False,
    ):
        r"""
        Log-prob of the recorded transition at grid step `step_index` under the current denoiser weights.

        Differentiable w.r.t. the denoiser's (LoRA) parameters; call it with grad enabled. The guidance, grid and
        window of the rollout are reused from `batch`. Use the rollout's `batch.chunks` as minibatches to see the
        denoiser with the rollout's batch composition, which makes the on-policy ratio exactly 1 in float32.

        Args:
            batch (`RolloutBatch`): from `rollout`.
            step_index (`int`): a grid index among `batch.step_indices`.
            sample_index (`torch.LongTensor`, *optional*): the samples to evaluate (default: all).
            autocast_dtype (`torch.dtype`, *optional*): denoiser under autocast; the Gaussian math stays float32.
            return_stats (`bool`): also return the transition's mean and std (for the reference-model KL).

        Returns:
            `(n,)` float32 log-probs, or `(log_prob, mean, std)` with `return_stats=True`.
        """
        j = batch.step_position(step_index)
        idx = torch.arange(batch.batch_size) if sample_index is None else torch.as_tensor(sample_index).long()
        idx_dev = idx.to(batch.latents.device)
        src, dst = batch.latent_index[j]
        x_t, x_next = batch.latents[idx_dev, src], batch.latents[idx_dev, dst]
        embeds = batch.prompt_embeds.select(batch.group_ids[idx_dev])
        sched = self._log_prob_scheduler(batch)
        t = sched.timesteps[step_index]
        out = self._predict(x_t, t, embeds, batch.guidance_scale, batch.height, batch.width, autocast_dtype)
        log_prob, mean, std = sched.step_log_prob(out, x_t, x_next, step_index)
        return (log_prob, mean, std) if return_stats else log_prob

    def _log_prob_scheduler(self, batch: RolloutBatch) -> SchedulerMixin:
        key = (repr(sorted(batch.scheduler_kwargs.items(), key=lambda kv: kv[0])), tuple(batch.step_indices))
        cached = getattr(self, "_log_prob_sched_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        sched = self._private_scheduler()
        sched.set_sde_steps(batch.step_indices)  # consecutive steps: the window `batch.sde_window`
        sched.set_timesteps(device=batch.latents.device, **batch.scheduler_kwargs)
        self._log_prob_sched_cache = (key, sched)
        return sched
