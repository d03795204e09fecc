"""MixGRPO for VP diffusion (SD1.5 class): DDIM ODE steps outside the SDE window, DDIM-with-eta steps inside it.

A drop-in for `DDIMScheduler` on a stock `StableDiffusionPipeline`:

    pipe.scheduler = MixDDIMSDEScheduler.from_config(pipe.scheduler.config, sde_window_size=4, eta=1.0)

With an empty window it is DDIM with eta = 0, step for step. Inside the window a step is the stochastic DDIM step
of DDPO (DDIM paper eq. 12 and 16), and its Gaussian log-probability is returned for GRPO.

There is no compressed ODE tail here (MixGRPO-Flash): the DPM-Solver++ tail is defined for flow models, and DDIM is
already the first-order deterministic solver of the VP probability-flow ODE, so the steps after the window keep the
uncompressed grid. Pick fewer inference steps to make them cheaper.
"""

import numbers
from dataclasses import dataclass
from typing import Literal, Optional, Union

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddim import betas_for_alpha_bar, rescale_zero_terminal_snr
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ._sde_math import LOG_PROB_REDUCTIONS, gaussian_log_prob
from ._window_mixin import TRAJECTORY_LATENTS, SDEWindowMixin

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@dataclass
class MixDDIMSDESchedulerOutput(BaseOutput):
    """Output of `MixDDIMSDEScheduler.step`.

    Args:
        prev_sample (`torch.Tensor`):
            `x_{t-1}`, the next latent (in the input's dtype). The given `prev_sample`, unchanged, when one is passed.
        pred_original_sample (`torch.Tensor`):
            The model's estimate of `x_0` (float32, clipped or thresholded as configured).
        prev_sample_mean (`torch.Tensor`):
            The Gaussian mean (float32); equal to `prev_sample` on ODE steps.
        std_dev (`torch.Tensor`):
            The Gaussian standard deviation (float32, broadcastable); 0 on ODE steps.
        log_prob (`torch.Tensor`, *optional*):
            `(B,)` float32 log-density of `prev_sample` under the step's Gaussian (SDE steps); `None` on ODE steps.

    `is_sde` (a property, not a field: the tuple form holds tensors or `None` only, as diffusers' outputs do) tells
    whether the step was inside the SDE window.
    """

    prev_sample: torch.Tensor
    pred_original_sample: Optional[torch.Tensor] = None
    prev_sample_mean: Optional[torch.Tensor] = None
    std_dev: Optional[torch.Tensor] = None
    log_prob: Optional[torch.Tensor] = None

    @property
    def is_sde(self) -> bool:
        """Whether the step was inside the SDE window: only those have a log-prob."""
        return self.log_prob is not None


class MixDDIMSDEScheduler(SDEWindowMixin, SchedulerMixin, ConfigMixin):
    """DDIM with a MixGRPO SDE window: deterministic DDIM (eta = 0) outside `[start, start + size)`, DDIM-eta inside.

    Accepts the config of any Karras-family VP scheduler (`DDIMScheduler`, `PNDMScheduler`, ...). The noise
    schedule and timestep arguments mean exactly what they mean for `DDIMScheduler`, so with an empty window this
    scheduler reproduces `DDIMScheduler.step(..., eta=0)`.

    The window step (DDPO's `ddim_step_with_logprob`), with `a_t = alphas_cumprod[t]`, `a_prev = alphas_cumprod[t_prev]`:
    `std = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)`,
    `mean = sqrt(a_prev) * x0_hat + sqrt(1 - a_prev - std^2) * eps_hat`, `x_{t-1} = mean + std * z`.

    The stock pipeline's own `eta` argument is not used (`step` takes no `eta`, so the pipeline does not pass one): the
    noise level inside the window is this scheduler's `eta`.

    Args:
        num_train_timesteps (`int`, defaults to 1000):
            Number of diffusion steps used to train the model.
        beta_start (`float`, defaults to 0.0001):
            The starting `beta` value of inference.
        beta_end (`float`, defaults to 0.02):
            The final `beta` value.
        beta_schedule (`str`, defaults to `"linear"`):
            `"linear"`, `"scaled_linear"` or `"squaredcos_cap_v2"`.
        trained_betas (`np.ndarray` or `list[float]`, *optional*):
            Betas passed directly, bypassing `beta_start`, `beta_end` and `beta_schedule`.
        clip_sample (`bool`, defaults to `True`):
            Clip the predicted `x_0` to `[-clip_sample_range, clip_sample_range]`.
        set_alpha_to_one (`bool`, defaults to `True`):
            Use `alphas_cumprod = 1` after the final step (else the first trained `alphas_cumprod`). With `True` the
            final step has zero variance, so it is a point mass even inside a window (its log-prob is reported as 0).
        steps_offset (`int`, defaults to 0):
            Offset added to the inference steps (`"leading"` spacing), as in `DDIMScheduler`.
        prediction_type (`str`, defaults to `"epsilon"`):
            What the model predicts: `"epsilon"`, `"v_prediction"` or `"sample"`.
        thresholding (`bool`, defaults to `False`):
            Dynamic thresholding of the predicted `x_0` (Imagen); supported, and part of the differentiable step.
        dynamic_thresholding_ratio (`float`, defaults to 0.995):
            Percentile for dynamic thresholding.
        clip_sample_range (`float`, defaults to 1.0):
            Range for `clip_sample`.
        sample_max_value (`float`, defaults to 1.0):
            Threshold ceiling for dynamic thresholding.
        timestep_spacing (`str`, defaults to `"leading"`):
            `"leading"`, `"trailing"` or `"linspace"`, as in `DDIMScheduler` (including its previous-timestep rule
            `t_prev = t - num_train_timesteps // num_inference_steps`).
        rescale_betas_zero_snr (`bool`, defaults to `False`):
            Rescale the betas to zero terminal SNR (use with `v_prediction`).
        sde_window_start (`int`, defaults to 0):
            First step index of the SDE window on the N-step grid (change it per rollout with `set_sde_window`).
        sde_window_size (`int`, defaults to 0):
            Number of SDE steps K (MixGRPO: 4). The default 0 means no SDE step: a plain swap samples exactly like
            DDIM (eta = 0) until a window is set.
        eta (`float`, defaults to 1.0):
            DDIM's eta inside the window (1.0 is DDPO's default; 0 makes the window deterministic). Must lie in
            [0, 1]: above 1 the step's `sqrt(1 - a_prev - std^2)` is undefined on coarse grids.
        log_prob_reduction (`str`, defaults to `"mean"`):
            How the per-element log-density is reduced over non-batch dimensions: `"mean"` (reference
            implementations) or `"sum"` (the true log-density of the sample).
        record_trajectory (`bool`, defaults to `False`):
            Record the latents and log-probs of each sampling run in `self.trajectory`.
        trajectory_latents (`str`, defaults to `"window"`):
            Which latents the trajectory keeps: `"window"` (inputs and outputs of SDE steps), `"all"` or `"none"`.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, list[float]]] = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading",
        rescale_betas_zero_snr: bool = False,
        sde_window_start: int = 0,
        sde_window_size: int = 0,
        eta: float = 1.0,
        log_prob_reduction: str = "mean",
        record_trajectory: bool = False,
        trajectory_latents: str = "window",
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}.")
        if not 0 <= eta <= 1:  # above 1, sqrt(1 - a_prev - std^2) of the step's mean is that of a negative number
            raise ValueError(
                f"eta={eta!r} is not allowed; DDIM's eta must lie in [0, 1] (0: deterministic window, 1: DDPM-like)."
            )
        if log_prob_reduction not in LOG_PROB_REDUCTIONS:
            raise ValueError(f"log_prob_reduction must be one of {LOG_PROB_REDUCTIONS}, got {log_prob_reduction!r}.")
        if trajectory_latents not in TRAJECTORY_LATENTS:
            raise ValueError(f"trajectory_latents must be one of {TRAJECTORY_LATENTS}, got {trajectory_latents!r}.")

        if trained_betas is not None:
            self.betas = torch.tensor(trained_betas, dtype=torch.float32)
        elif beta_schedule == "linear":
            self.betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":
            self.betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
        elif beta_schedule == "squaredcos_cap_v2":
            self.betas = betas_for_alpha_bar(num_train_timesteps)
        else:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}.")
        if rescale_betas_zero_snr:
            self.betas = rescale_zero_terminal_snr(self.betas)

        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        # alpha after the final step: 1 (a clean sample) or the first trained alpha, as in DDIMScheduler.
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0

        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy().astype(np.int64))
        self._alpha_t: Optional[torch.Tensor] = None  # (M,) alphas_cumprod at each step's timestep
        self._alpha_prev: Optional[torch.Tensor] = None  # (M,) alphas_cumprod at each step's target timestep
        self._step_index = None
        self._begin_index = None
        self._init_sde_window(sde_window_start, sde_window_size)

    # -- diffusers scheduler plumbing --------------------------------------------------------------------------------

    @property
    def step_index(self) -> Optional[int]:
        """Index of the next step to run; increases by 1 after each `step`."""
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        """First step index, set by img2img-style pipelines with `set_begin_index`."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep: Optional[int] = None) -> torch.Tensor:
        """DDIM needs no input scaling; kept for interchangeability."""
        return sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # -- grid ------------------------------------------------------------------------------------------------------

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        timesteps: Optional[list[int]] = None,
        **kwargs,
    ) -> None:
        """Build the N-step grid (`timesteps`), the `sde_step_mask` for the current window, and reset the step state.

        Args:
            num_inference_steps (`int`, *optional*):
                N, the number of DDIM steps; spaced by `timestep_spacing` exactly as in `DDIMScheduler`.
            device (`str` or `torch.device`, *optional*):
                Device of `self.timesteps`.
            timesteps (`list[int]`, *optional*):
                Custom strictly decreasing training timesteps instead of `num_inference_steps`; each step then goes to
                the next one in the list (the last to the final alpha).
            **kwargs:
                Ignored (`mu` and other flow-only arguments that generic code may pass). `sigmas` is refused.
        """
        if kwargs.get("sigmas") is not None:
            raise ValueError("sigmas= is for flow-matching schedulers; MixDDIMSDEScheduler takes timesteps= instead.")
        t_train = self.config.num_train_timesteps
        if timesteps is not None:
            if num_inference_steps is not None:
                raise ValueError("Pass either num_inference_steps or timesteps to set_timesteps, not both.")
            grid = np.asarray([int(t) for t in timesteps], dtype=np.int64)
            if grid.ndim != 1 or len(grid) == 0:
                raise ValueError(f"timesteps must be a non-empty list of integers, got {timesteps!r}.")
            if np.any(grid[1:] >= grid[:-1]):
                raise ValueError(f"timesteps must be strictly decreasing, got {grid.tolist()}.")
            if grid[0] >= t_train or grid[-1] < 0:
                raise ValueError(
                    f"timesteps must lie in [0, {t_train - 1}] (num_train_timesteps), got {grid.tolist()}."
                )
            prev = np.append(grid[1:], -1)
        else:
            if num_inference_steps is None:
                raise ValueError("set_timesteps needs num_inference_steps or timesteps.")
            if not 1 <= num_inference_steps <= t_train:
                raise ValueError(
                    f"num_inference_steps={num_inference_steps} is out of range; allowed: 1 <= num_inference_steps "
                    f"<= {t_train} (num_train_timesteps)."
                )
            n = num_inference_steps
            spacing = self.config.timestep_spacing
            if spacing == "linspace":
                grid = np.linspace(0, t_train - 1, n).round()[::-1].copy().astype(np.int64)
            elif spacing == "leading":
                step_ratio = t_train // n
                grid = (np.arange(0, n) * step_ratio).round()[::-1].copy().astype(np.int64)
                grid += self.config.steps_offset
            else:  # trailing
                grid = np.round(np.arange(t_train, 0, -t_train / n)).astype(np.int64) - 1
            # DDIMScheduler's rule for the target timestep (not always the next grid point: see "linspace").
            prev = grid - t_train // n

        self.num_inference_steps = len(grid)
        self.timesteps = torch.from_numpy(grid).to(device)
        alphas_cumprod = self.alphas_cumprod
        self._alpha_t = alphas_cumprod[torch.from_numpy(grid)].float()
        self._alpha_prev = torch.stack(
            [alphas_cumprod[p] if p >= 0 else self.final_alpha_cumprod for p in prev.tolist()]
        ).float()
        self._step_index = None
        self._begin_index = None
        self._resolve_sde_window(self.num_inference_steps)
        self._build_sde_step_mask(self.num_inference_steps)
        self._trajectory = None
        if self.config.record_trajectory:
            self._start_trajectory(self.timesteps)

    def _apply_sde_window(self) -> None:
        # The DDIM grid does not depend on the window: only the mask changes.
        self._resolve_sde_window(self.num_inference_steps)
        mask = self._build_sde_step_mask(self.num_inference_steps)
        if self._trajectory is not None:
            self._trajectory.sde_step_mask = mask.detach().cpu().clone()

    def index_for_timestep(self, timestep: Union[int, torch.Tensor]) -> int:
        """Grid index of `timestep`; ValueError if it is not one of `self.timesteps`."""
        value = self._timestep_value(timestep)
        matches = (self.timesteps.cpu() == value).nonzero()
        if len(matches) == 0:
            raise ValueError(
                f"timestep {value} is not on the grid; allowed values (self.timesteps): {self.timesteps.tolist()}."
            )
        return int(matches[0])

    @staticmethod
    def _timestep_value(timestep: Union[int, float, torch.Tensor, np.ndarray]) -> int:
        # Python and numpy numbers, and tensors / arrays holding one value (a batch of equal values), as diffusers.
        if isinstance(timestep, (torch.Tensor, np.ndarray)):
            values = torch.as_tensor(timestep).flatten().unique()
            if values.numel() != 1 or values.dtype == torch.bool:
                raise ValueError(f"timestep must be a single value, got {values.tolist()}.")
            timestep = values.item()
        elif isinstance(timestep, (bool, np.bool_)) or not isinstance(timestep, numbers.Real):
            raise ValueError(f"timestep must be a number or a tensor from scheduler.timesteps, got {timestep!r}.")
        if int(timestep) != timestep:
            raise ValueError(f"timestep must be an integer training timestep, got {timestep}.")
        return int(timestep)

    # -- the step --------------------------------------------------------------------------------------------------

    def _check_ready(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError("Call set_timesteps(num_inference_steps) before step / step_log_prob.")

    def _alphas(self, step_index: Union[int, torch.Tensor], ndim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """`(a_t, a_prev)` for a step index (int, or a `(B,)` tensor for a batch of different steps), float32."""
        if isinstance(step_index, torch.Tensor) and step_index.ndim > 0:
            idx = step_index.detach().cpu().long()
            bad = idx[(idx < 0) | (idx >= self.num_inference_steps)]
            if len(bad):
                raise ValueError(
                    f"step_index {bad.tolist()} out of range; allowed: 0..{self.num_inference_steps - 1}."
                )
            shape = (-1,) + (1,) * (ndim - 1)
            return self._alpha_t[idx].view(shape).to(device), self._alpha_prev[idx].view(shape).to(device)
        i = int(step_index)
        if not 0 <= i < self.num_inference_steps:
            raise ValueError(
                f"step_index={i} out of range; allowed: 0 <= step_index <= {self.num_inference_steps - 1}."
            )
        return self._alpha_t[i].to(device), self._alpha_prev[i].to(device)

    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        # Dynamic thresholding (Imagen), as in DDPMScheduler: clamp to the per-sample percentile s >= 1, divide by s.
        batch_size = sample.shape[0]
        flat = sample.reshape(batch_size, -1)
        s = torch.quantile(flat.abs(), self.config.dynamic_thresholding_ratio, dim=1)
        s = torch.clamp(s, min=1, max=self.config.sample_max_value).unsqueeze(1)
        return (torch.clamp(flat, -s, s) / s).reshape(sample.shape)

    def _mean_std(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        step_index: Union[int, torch.Tensor],
        eta: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """DDIM eq. (12)/(16) in float32: `(mean, std, x0_hat)` of the step from `sample` at `step_index`."""
        model_output, sample = model_output.float(), sample.float()
        alpha_prod_t, alpha_prod_t_prev = self._alphas(step_index, sample.ndim, sample.device)
        beta_prod_t = 1 - alpha_prod_t

        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":
            pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
            pred_epsilon = model_output
        elif prediction_type == "sample":
            pred_original_sample = model_output
            pred_epsilon = (sample - alpha_prod_t ** (0.5) * pred_original_sample) / beta_prod_t ** (0.5)
        elif prediction_type == "v_prediction":
            pred_original_sample = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
            pred_epsilon = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
        else:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")

        if self.config.thresholding:
            pred_original_sample = self._threshold_sample(pred_original_sample)
        elif self.config.clip_sample:
            pred_original_sample = pred_original_sample.clamp(
                -self.config.clip_sample_range, self.config.clip_sample_range
            )

        # sigma_t(eta) of DDIM eq. (16)
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = eta * variance ** (0.5)

        pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5) * pred_epsilon
        prev_sample_mean = alpha_prod_t_prev ** (0.5) * pred_original_sample + pred_sample_direction
        return prev_sample_mean, std_dev_t, pred_original_sample

    def _log_prob(self, prev_sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """Gaussian log-prob; a zero-variance step (eta = 0, or a final step onto alpha = 1) is a point mass: 0."""
        positive = std > 0
        if bool(positive.all()):
            return gaussian_log_prob(prev_sample, mean, std, self.config.log_prob_reduction)
        safe_std = torch.where(positive, std, torch.ones_like(std))
        log_prob = gaussian_log_prob(prev_sample, mean, safe_std, self.config.log_prob_reduction)
        return torch.where(positive.reshape(-1), log_prob, torch.zeros_like(log_prob))

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[int, torch.Tensor],
        sample: torch.Tensor,
        generator: Optional[Union[torch.Generator, list[torch.Generator]]] = None,
        prev_sample: Optional[torch.Tensor] = None,
        noise: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ) -> Union[MixDDIMSDESchedulerOutput, tuple]:
        """One step at `self.step_index`: DDIM (eta = 0) outside the window, DDIM-eta with its log-prob inside.

        Args:
            model_output (`torch.Tensor`):
                The denoiser's output (epsilon, v or x_0, per `prediction_type`).
            timestep (`int` or `torch.Tensor`):
                The current timestep; must be `self.timesteps[self.step_index]`.
            sample (`torch.Tensor`):
                The current latent `x_t`.
            generator (`torch.Generator` or list, *optional*):
                Source of the window noise when `noise` is not given.
            prev_sample (`torch.Tensor`, *optional*):
                A recorded `x_{t-1}`: returned unchanged, with its log-prob under this model output (SDE steps).
            noise (`torch.Tensor`, *optional*):
                The standard normal noise `z` of an SDE step (takes precedence over `generator`).
            return_dict (`bool`, defaults to `True`):
                Return a `MixDDIMSDESchedulerOutput`, or the tuple in its field order `(prev_sample,
                pred_original_sample, prev_sample_mean, std_dev, log_prob)` (tensors; `log_prob` is `None` on ODE
                steps). The first two are `DDIMScheduler`'s tuple.
        """
        self._check_ready()
        if self._step_index is None:
            self._step_index = (
                self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
            )
        i = self._step_index
        if i >= self.num_inference_steps:
            raise ValueError(
                f"step called {i + 1} times after set_timesteps, but the grid has {self.num_inference_steps} steps."
            )
        expected = int(self.timesteps[i])
        if self._timestep_value(timestep) != expected:
            self.index_for_timestep(timestep)  # raises if the timestep is not on the grid at all
            raise ValueError(
                f"timestep {self._timestep_value(timestep)} does not match step_index {i}; allowed: {expected} "
                "(self.timesteps[self.step_index])."
            )
        if prev_sample is not None and prev_sample.shape != sample.shape:
            raise ValueError(
                f"prev_sample has shape {tuple(prev_sample.shape)}; allowed: the sample's shape {tuple(sample.shape)}."
            )
        if noise is not None and noise.shape != sample.shape:
            raise ValueError(
                f"noise has shape {tuple(noise.shape)}; allowed: the sample's shape {tuple(sample.shape)}."
            )

        is_sde = self.is_sde_step(i)
        eta = self.config.eta if is_sde else 0.0
        mean, std, x0_pred = self._mean_std(model_output, sample, i, eta)

        log_prob = None
        if is_sde:
            if prev_sample is None:
                if noise is None:
                    noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=torch.float32)
                prev_sample = (mean + std * noise.float()).to(sample.dtype)
            # The log-prob of the latent as it is handed on (after the cast), so a recomputation gives ratio 1.
            log_prob = self._log_prob(prev_sample.float(), mean, std)
        elif prev_sample is None:
            prev_sample = mean.to(sample.dtype)

        self._record_step(i, sample, prev_sample, log_prob, keep=self.config.trajectory_latents)
        self._step_index += 1

        std = torch.as_tensor(std, dtype=torch.float32, device=sample.device)
        if not return_dict:
            return prev_sample, x0_pred, mean, std, log_prob
        return MixDDIMSDESchedulerOutput(
            prev_sample=prev_sample,
            log_prob=log_prob,
            prev_sample_mean=mean,
            std_dev=std,
            pred_original_sample=x0_pred,
        )

    def step_log_prob(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        prev_sample: torch.Tensor,
        step_index: Union[int, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-prob of a recorded transition `sample -> prev_sample` at `step_index` under this model output.

        Stateless (the step counter and trajectory are untouched) and differentiable w.r.t. `model_output`: the GRPO
        training pass, with the same arithmetic as `step` (a recomputed on-policy step gives ratio 1 bit for bit).
        `step_index` must be an SDE step of the current window; it may be a `(B,)` tensor to score transitions of
        different window steps in one batch. Returns `(log_prob, prev_sample_mean, std_dev)` in float32; a
        zero-variance step gives log-prob 0.
        """
        self._check_ready()
        indices = step_index.flatten().tolist() if isinstance(step_index, torch.Tensor) else [int(step_index)]
        for i in indices:
            if 0 <= i < self.num_inference_steps and not self.is_sde_step(i):
                start, end = self.sde_window
                raise ValueError(
                    f"step_index={i} is an ODE step and has no log-prob; allowed: SDE steps "
                    f"{f'[{start}, {end})' if self.sde_steps == list(range(start, end)) else self.sde_steps}."
                )
        if prev_sample.shape != sample.shape:
            raise ValueError(
                f"prev_sample has shape {tuple(prev_sample.shape)}; allowed: the sample's shape {tuple(sample.shape)}."
            )
        mean, std, _ = self._mean_std(model_output, sample, step_index, self.config.eta)
        std = torch.as_tensor(std, dtype=torch.float32, device=sample.device)
        return self._log_prob(prev_sample.float(), mean, std), mean, std

    def repeat_interleave_state(self, repeats: int) -> None:
        """Expand per-sample state along the batch when a shared prefix branches into a group.

        DDIM keeps no solver history, so only the recorded trajectory is expanded.
        """
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}.")
        self._repeat_interleave_trajectory(repeats)

    # -- training utilities (as DDIMScheduler) ----------------------------------------------------------------------

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor
    ) -> torch.Tensor:
        """Forward diffusion `sqrt(a_t) * x0 + sqrt(1 - a_t) * noise` (img2img pipelines use it)."""
        alphas_cumprod = self.alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
        timesteps = timesteps.to(original_samples.device)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        sqrt_alpha_prod = (alphas_cumprod[timesteps] ** 0.5).flatten().view(shape)
        sqrt_one_minus_alpha_prod = ((1 - alphas_cumprod[timesteps]) ** 0.5).flatten().view(shape)
        return sqrt_alpha_prod * original_samples + sqrt_one_minus_alpha_prod * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        """The v-prediction target `sqrt(a_t) * noise - sqrt(1 - a_t) * x0`."""
        alphas_cumprod = self.alphas_cumprod.to(device=sample.device, dtype=sample.dtype)
        timesteps = timesteps.to(sample.device)
        shape = (-1,) + (1,) * (sample.ndim - 1)
        sqrt_alpha_prod = (alphas_cumprod[timesteps] ** 0.5).flatten().view(shape)
        sqrt_one_minus_alpha_prod = ((1 - alphas_cumprod[timesteps]) ** 0.5).flatten().view(shape)
        return sqrt_alpha_prod * noise - sqrt_one_minus_alpha_prod * sample
