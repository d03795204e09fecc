"""MixODESDEScheduler: flow-matching sampling (FLUX, SD3) with Euler ODE steps, an SDE window and a Flash tail.

Implements MixGRPO's mixed ODE-SDE rollout (arXiv 2507.21802) on `FlowMatchEulerDiscreteScheduler`'s time grid:
deterministic Euler steps before the window, stochastic steps with a Gaussian log-probability inside it, and after it
Euler again or DPM-Solver++ on a compressed tail (MixGRPO-Flash). See `docs/schedulers.md`.
"""

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Optional, Union

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ._sde_math import LOG_PROB_REDUCTIONS, gaussian_log_prob, squared_error_log_prob
from ._window_mixin import TRAJECTORY_LATENTS, MixTrajectory, SDEWindowMixin

SDE_TYPES = ("flow_grpo", "dance_grpo", "cps")
TAIL_SOLVERS = ("euler", "dpmsolver++")
TAIL_SOLVER_ORDERS = (1, 2, 3)
CPS_LOG_PROBS = ("gaussian", "flow_grpo")
FLOW_SIGMAS_GRIDS = ("dpmsolver", "unipc")
# config keys that only one of the two flow-sigma multistep schedulers has (to tell their configs apart)
_UNIPC_ONLY_KEYS = ("predict_x0", "disable_corrector", "solver_p")

__all__ = ["MixODESDEScheduler", "MixODESDESchedulerOutput", "MixTrajectory"]


@dataclass
class MixODESDESchedulerOutput(BaseOutput):
    """Output of `MixODESDEScheduler.step`.

    Args:
        prev_sample (`torch.Tensor`):
            `x_{i+1}`, in the dtype of the input `sample` (the given `prev_sample`, unchanged, when one was passed).
        pred_original_sample (`torch.Tensor`, *optional*):
            `x0_hat = x - sigma * v` on SDE and DPM-Solver++ steps; `None` on plain Euler steps (kept as cheap as
            `FlowMatchEulerDiscreteScheduler`).
        prev_sample_mean (`torch.Tensor`, *optional*):
            Mean of the SDE transition (float32, float64 for float64 inputs); `None` on ODE steps.
        std_dev (`torch.Tensor`, *optional*):
            Scalar standard deviation of the SDE transition (`tau` in the docs); `None` on ODE steps.
        log_prob (`torch.Tensor`, *optional*):
            `(B,)` float32 log-density of `prev_sample` under the SDE step (reduced by `log_prob_reduction`);
            `None` on ODE steps.

    `is_sde` (a property, not a field: the tuple form holds tensors or `None` only, as diffusers' outputs do) tells
    whether this was an SDE (window) step.
    """

    prev_sample: torch.Tensor
    pred_original_sample: Optional[torch.Tensor] = None
    prev_sample_mean: Optional[torch.Tensor] = None
    std_dev: Optional[torch.Tensor] = None
    log_prob: Optional[torch.Tensor] = None

    @property
    def is_sde(self) -> bool:
        """Whether this was an SDE (window) step: only those have a log-prob."""
        return self.log_prob is not None


def _lambda(sigma: float) -> float:
    # DPM-Solver's half-log-SNR in flow terms: alpha = 1 - sigma, lambda = log(alpha / sigma).
    if sigma >= 1.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log(1.0 - sigma) - math.log(sigma)


class MixODESDEScheduler(SchedulerMixin, ConfigMixin, SDEWindowMixin):
    """
    Flow-matching scheduler for MixGRPO: Euler ODE steps, an SDE window with log-probabilities, and an optional
    compressed DPM-Solver++ tail (MixGRPO-Flash).

    The time grid is exactly `FlowMatchEulerDiscreteScheduler`'s for the same config and `set_timesteps` arguments
    (`sigmas=`, `mu=`, `shift`, `shift_terminal`, `timesteps=`), so it can be swapped into FLUX / SD3 pipelines with
    `MixODESDEScheduler.from_config(pipe.scheduler.config)`. With the default `sde_window_size=0` it samples exactly
    like the Euler scheduler until a window is set (`set_sde_window` or the config).

    Steps `i < w` (before the window) are Euler, steps in `[w, w + K)` are SDE steps (sampled, log-prob returned),
    steps after the window are Euler or DPM-Solver++ (`tail_solver`), on the remaining grid or on a compressed tail
    (`tail_ratio`). The math runs in float32 (float64 inputs stay float64); `prev_sample` is cast back to the input
    dtype.

    Args:
        num_train_timesteps (`int`, defaults to 1000):
            Number of training timesteps; the model's timestep input is `num_train_timesteps * sigma`.
        shift (`float`, defaults to 1.0):
            Static time shift `sigma = s*u / (1 + (s - 1)*u)` (MixGRPO uses 3 for FLUX).
        use_dynamic_shifting (`bool`, defaults to False):
            Resolution-dependent shifting with `mu` passed to `set_timesteps` (FLUX).
        base_shift (`float`, defaults to 0.5):
            Kept for pipelines that compute `mu` from the config (FLUX's `calculate_shift`).
        max_shift (`float`, defaults to 1.15):
            Kept for pipelines that compute `mu` from the config.
        base_image_seq_len (`int`, defaults to 256):
            Kept for pipelines that compute `mu` from the config.
        max_image_seq_len (`int`, defaults to 4096):
            Kept for pipelines that compute `mu` from the config.
        invert_sigmas (`bool`, defaults to False):
            Not supported (Mochi only); `True` raises a ValueError.
        shift_terminal (`float`, *optional*, defaults to None):
            Stretch the shifted schedule so that it ends at this value (before the appended 0).
        use_karras_sigmas (`bool`, defaults to False):
            Not supported; `True` raises a ValueError.
        use_exponential_sigmas (`bool`, defaults to False):
            Not supported; `True` raises a ValueError.
        use_beta_sigmas (`bool`, defaults to False):
            Not supported; `True` raises a ValueError.
        time_shift_type (`str`, defaults to "exponential"):
            Dynamic shifting form, `"exponential"` or `"linear"`.
        stochastic_sampling (`bool`, defaults to False):
            Not supported (the SDE window replaces it); `True` raises a ValueError.
        sde_type (`str`, defaults to "flow_grpo"):
            SDE form inside the window: `"flow_grpo"` (Flow-GRPO / MixGRPO, eta 0.7), `"dance_grpo"` (DanceGRPO,
            eta 0.3) or `"cps"` (Flow-GRPO's coefficient-preserving sampling).
        eta (`float`, defaults to 0.7):
            Noise level of the SDE, `>= 0`. `eta=0` makes every SDE form the Euler step (its log-prob is then
            degenerate: the transition has zero variance).
        sde_window_start (`int`, defaults to 0):
            First SDE step `w` on the uncompressed N-step grid.
        sde_window_size (`int`, defaults to 0):
            Number of SDE steps `K` (MixGRPO: 4). The default 0 means no SDE step: a plain swap samples like Euler
            until a window is set.
        log_prob_reduction (`str`, defaults to "mean"):
            How the per-element Gaussian log-density is reduced over the non-batch dimensions: `"mean"` (the
            reference implementations) or `"sum"` (the true log-density of the whole sample).
        cps_log_prob (`str`, defaults to "gaussian"):
            Log-prob convention of the `"cps"` SDE: `"gaussian"` (the true Gaussian log-density, as for the other SDE
            types) or `"flow_grpo"` (Flow-GRPO's and the official MixGRPO code's `-(x - mu)^2`, without `1/(2 tau^2)`
            and the normalising terms: the log-ratio of two policies is then `2 tau^2` times the Gaussian one).
            Ignored by the other SDE types.
        tail_solver (`str`, defaults to "euler"):
            Solver for the steps after the window: `"euler"` or `"dpmsolver++"` (multistep, data prediction,
            midpoint). Without a window every step is Euler.
        tail_solver_order (`int`, defaults to 2):
            Order of the DPM-Solver++ tail: 1, 2 or 3. The last step (to sigma 0) is always first order.
        tail_ratio (`float`, *optional*, defaults to None):
            Compression of the steps after the window, in `(0, 1]` (MixGRPO-Flash: 0.4, Flash*: 0.2); `None` keeps
            the full grid. The tail gets `floor(max((N - e) * r, 1))` points (`e` = last window step), at least one
            step, and always ends at sigma 0.
        use_flow_sigmas (`bool`, defaults to False):
            Use the flow-sigma grid of `DPMSolverMultistepScheduler` / `UniPCMultistepScheduler` (SANA, Wan) instead
            of `FlowMatchEulerDiscreteScheduler`'s: the same N sigmas (shifted by `flow_shift`, not `shift`) and the
            same integer model timesteps `int(sigma * num_train_timesteps)`. `from_config` of such a scheduler's
            config sets it (and `flow_sigmas_grid`); only the integrator differs (Euler / the SDE window here).
        flow_shift (`float`, defaults to 1.0):
            The shift of the flow-sigma grid (`use_flow_sigmas=True`), as in the DPM-Solver / UniPC configs.
        flow_sigmas_grid (`str`, defaults to `"dpmsolver"`):
            Whose flow-sigma grid: `"dpmsolver"` (`sigmas = shift(1 - linspace(1, 1/T, N + 1))`, reversed, last
            dropped) or `"unipc"` (`shift(linspace(1, 1/T, N + 1)[:-1])`, first sigma lowered by 1e-6 when it is 1).
        final_sigmas_type (`str`, defaults to `"zero"`):
            Only `"zero"` (the grid ends at sigma 0) is supported; kept so DPM-Solver / UniPC configs load.
        record_trajectory (`bool`, defaults to False):
            Record each sampling run in `self.trajectory` (a `MixTrajectory`).
        trajectory_latents (`str`, defaults to "window"):
            Which latents the trajectory keeps: `"window"` (inputs and outputs of SDE steps only: low memory at
            1024px), `"all"`, or `"none"` (log-probs only).
    """

    _compatibles = ["FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "FlowMatchLCMScheduler"]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: Optional[float] = 0.5,
        max_shift: Optional[float] = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: Optional[float] = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: Literal["exponential", "linear"] = "exponential",
        stochastic_sampling: bool = False,
        sde_type: Literal["flow_grpo", "dance_grpo", "cps"] = "flow_grpo",
        eta: float = 0.7,
        sde_window_start: int = 0,
        sde_window_size: int = 0,
        log_prob_reduction: Literal["mean", "sum"] = "mean",
        cps_log_prob: Literal["gaussian", "flow_grpo"] = "gaussian",
        tail_solver: Literal["euler", "dpmsolver++"] = "euler",
        tail_solver_order: int = 2,
        tail_ratio: Optional[float] = None,
        record_trajectory: bool = False,
        trajectory_latents: Literal["window", "all", "none"] = "window",
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        flow_sigmas_grid: Literal["dpmsolver", "unipc"] = "dpmsolver",
        final_sigmas_type: Literal["zero"] = "zero",
    ):
        for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas"):
            if getattr(self.config, flag):
                raise ValueError(
                    f"{flag}=True is not supported by MixODESDEScheduler (the MixGRPO grid is the shifted linear "
                    f"flow-matching grid); set {flag}=False."
                )
        if stochastic_sampling:
            raise ValueError(
                "stochastic_sampling=True is not supported by MixODESDEScheduler; use an SDE window "
                "(sde_window_size > 0) for stochastic steps, or set stochastic_sampling=False."
            )
        if time_shift_type not in ("exponential", "linear"):
            raise ValueError(f"time_shift_type must be one of ('exponential', 'linear'), got {time_shift_type!r}.")
        if sde_type not in SDE_TYPES:
            raise ValueError(f"sde_type must be one of {SDE_TYPES}, got {sde_type!r}.")
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta!r}.")
        if log_prob_reduction not in LOG_PROB_REDUCTIONS:
            raise ValueError(f"log_prob_reduction must be one of {LOG_PROB_REDUCTIONS}, got {log_prob_reduction!r}.")
        if cps_log_prob not in CPS_LOG_PROBS:
            raise ValueError(f"cps_log_prob must be one of {CPS_LOG_PROBS}, got {cps_log_prob!r}.")
        if tail_solver not in TAIL_SOLVERS:
            raise ValueError(f"tail_solver must be one of {TAIL_SOLVERS}, got {tail_solver!r}.")
        if tail_solver_order not in TAIL_SOLVER_ORDERS:
            raise ValueError(f"tail_solver_order must be one of {TAIL_SOLVER_ORDERS}, got {tail_solver_order!r}.")
        if tail_ratio is not None and not 0 < tail_ratio <= 1:
            raise ValueError(f"tail_ratio must be None or in (0, 1], got {tail_ratio!r}.")
        if trajectory_latents not in TRAJECTORY_LATENTS:
            raise ValueError(f"trajectory_latents must be one of {TRAJECTORY_LATENTS}, got {trajectory_latents!r}.")
        if flow_sigmas_grid not in FLOW_SIGMAS_GRIDS:
            raise ValueError(f"flow_sigmas_grid must be one of {FLOW_SIGMAS_GRIDS}, got {flow_sigmas_grid!r}.")
        if final_sigmas_type != "zero":
            raise ValueError(
                f"final_sigmas_type={final_sigmas_type!r} is not supported by MixODESDEScheduler; only 'zero' (the "
                "grid ends at sigma 0)."
            )
        if use_flow_sigmas:
            if use_dynamic_shifting:
                raise ValueError(
                    "use_flow_sigmas=True with use_dynamic_shifting=True is not supported; set one of them to False."
                )
            if shift != 1.0:
                raise ValueError(
                    f"shift={shift} applies to the FlowMatchEuler grid; with use_flow_sigmas=True the grid's shift is "
                    "flow_shift: set flow_shift instead and leave shift at 1.0."
                )
            if not flow_shift > 0:
                raise ValueError(f"flow_shift must be > 0, got {flow_shift!r}.")

        # The training grid, built as FlowMatchEulerDiscreteScheduler builds it (its sigma_min/sigma_max feed the
        # default inference grid).
        timesteps = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy()
        sigmas = torch.from_numpy(timesteps).to(dtype=torch.float32) / num_train_timesteps
        if not use_dynamic_shifting:
            sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        self.timesteps = sigmas * num_train_timesteps
        self.sigmas = sigmas
        self.sigma_min = sigmas[-1].item()
        self.sigma_max = sigmas[0].item()
        self._shift = flow_shift if use_flow_sigmas else shift

        self.num_inference_steps: Optional[int] = None
        self._step_index: Optional[int] = None
        self._begin_index: Optional[int] = None
        self._init_sde_window(sde_window_start, sde_window_size)
        self._reset_grid_state()

    def _reset_grid_state(self) -> None:
        self._sigmas_list: list[float] = []  # python floats of self.sigmas: no .item() per step
        self._timesteps_list: list[float] = []  # python floats of self.timesteps: the per-step grid check
        self._dts: Optional[torch.Tensor] = None  # sigma_{i+1} - sigma_i as diffusers computes it (float32 tensor)
        self._tail_start: Optional[int] = None  # first step after the window (None: no window)
        self._history: list[tuple[float, torch.Tensor]] = []  # (sigma, x0_hat) for the DPM-Solver++ tail
        self._history_from: Optional[int] = None  # first step whose x0_hat the tail needs
        self._grid_args: Optional[dict] = None

    # -- diffusers scheduler surface ------------------------------------------------------------------------------

    @property
    def shift(self) -> float:
        """The static shift used for the grid."""
        return self._shift

    def set_shift(self, shift: float) -> None:
        """Set the static shift (applied at the next `set_timesteps`)."""
        self._shift = shift

    @property
    def step_index(self) -> Optional[int]:
        """Index of the next step; increases by one after each `step`."""
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        """Index of the first step, set by pipelines (img2img) through `set_begin_index`."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Set the index of the first step (called by pipelines before the loop)."""
        self._begin_index = begin_index

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Identity: flow-matching models take the latent unscaled."""
        return sample

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial noise: 1 for flow matching."""
        return 1.0

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def _sigma_to_t(self, sigma):
        return sigma * self.config.num_train_timesteps

    def time_shift(self, mu: float, sigma: float, t):
        """Resolution-dependent shift of `t` (`time_shift_type` exponential or linear), as in diffusers."""
        if self.config.time_shift_type == "exponential":
            return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)
        return mu / (mu + (1 / t - 1) ** sigma)

    def stretch_shift_to_terminal(self, t):
        """Stretch the shifted schedule so that its last value is `shift_terminal`."""
        one_minus_z = 1 - t
        scale_factor = one_minus_z[-1] / (1 - self.config.shift_terminal)
        return 1 - (one_minus_z / scale_factor)

    def scale_noise(
        self,
        sample: torch.Tensor,
        timestep: Union[float, torch.Tensor],
        noise: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Forward process `x_sigma = sigma * noise + (1 - sigma) * sample` (SD3 img2img uses it)."""
        sigmas = self.sigmas.to(device=sample.device, dtype=sample.dtype)
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        if self.begin_index is None:
            schedule_timesteps = self.timesteps.to(sample.device)
            step_indices = [self.index_for_timestep(t, schedule_timesteps) for t in timestep]
        elif self.step_index is not None:
            step_indices = [self.step_index] * timestep.shape[0]  # inpainting: after the first step
        else:
            step_indices = [self.begin_index] * timestep.shape[0]  # img2img: before the first step
        sigma = sigmas[step_indices].flatten()
        while sigma.ndim < sample.ndim:
            sigma = sigma.unsqueeze(-1)
        return sigma * noise + (1.0 - sigma) * sample

    def index_for_timestep(
        self, timestep: Union[float, torch.Tensor], schedule_timesteps: Optional[torch.Tensor] = None
    ) -> int:
        """Index of `timestep` on the current grid (ValueError if it is not on it)."""
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps
        indices = (schedule_timesteps == timestep).nonzero()
        if len(indices) == 0:
            raise ValueError(
                f"timestep {float(timestep)!r} is not on the current grid; allowed: one of scheduler.timesteps "
                f"({schedule_timesteps.tolist()})."
            )
        # As diffusers: with duplicates take the second one, so that starting mid-schedule skips no sigma.
        return indices[1 if len(indices) > 1 else 0].item()

    @staticmethod
    def _timestep_value(timestep: Union[float, torch.Tensor, np.ndarray]) -> float:
        """The timestep as a python float: a number (numpy scalars included) or a tensor / array of one value."""
        if isinstance(timestep, (torch.Tensor, np.ndarray)):
            values = torch.as_tensor(timestep).detach().reshape(-1)
            if values.numel() == 0 or bool((values != values[0]).any()):
                raise ValueError(f"timestep must be a single value, got {values.tolist()}.")
            if values.dtype == torch.bool:
                raise ValueError(f"timestep must be a number from scheduler.timesteps, got {timestep!r}.")
            return float(values[0])
        if isinstance(timestep, (bool, np.bool_)) or not isinstance(timestep, numbers.Real):
            raise ValueError(f"timestep must be a number or a tensor from scheduler.timesteps, got {timestep!r}.")
        return float(timestep)

    def _init_step_index(self, timestep: Union[float, torch.Tensor]) -> None:
        if self.begin_index is not None:
            self._step_index = self._begin_index
            return
        self._step_index = self.index_for_timestep(self._timestep_value(timestep))

    def _check_timestep(self, timestep: Union[float, torch.Tensor], i: int) -> None:
        """ValueError unless `timestep` is `self.timesteps[i]` (checked on every step, not only the first)."""
        expected = self.timesteps[i]
        if (
            isinstance(timestep, torch.Tensor)
            and timestep.numel() == 1
            and timestep.dtype == expected.dtype
            and timestep.device == expected.device
            and timestep.data_ptr() == expected.data_ptr()
        ):
            return  # an element of self.timesteps itself (the stock loop): known to be on the grid, no device sync
        value = self._timestep_value(timestep)
        if np.float32(value) == np.float32(self._timesteps_list[i]):
            return
        on_grid = np.float32(value) in np.asarray(self._timesteps_list, dtype=np.float32)
        if not on_grid:
            raise ValueError(
                f"timestep {value!r} is not on the current grid; allowed: one of scheduler.timesteps "
                f"({self._timesteps_list})."
            )
        raise ValueError(
            f"timestep {value!r} does not match step_index {i}; allowed: {self._timesteps_list[i]!r} "
            "(scheduler.timesteps[scheduler.step_index]). Call set_timesteps to start a new run."
        )

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As `ConfigMixin.from_config`; a `UniPCMultistepScheduler` / `DPMSolverMultistepScheduler` config with
        `use_flow_sigmas=True` (SANA, Wan) also sets `flow_sigmas_grid` to that scheduler's grid."""
        values = getattr(config, "config", config)
        if isinstance(values, Mapping) and values.get("use_flow_sigmas") and "flow_sigmas_grid" not in values:
            if "flow_sigmas_grid" not in kwargs:
                unipc = values.get("_class_name") == "UniPCMultistepScheduler" or any(
                    k in values for k in _UNIPC_ONLY_KEYS
                )
                kwargs["flow_sigmas_grid"] = "unipc" if unipc else "dpmsolver"
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # -- the grid ----------------------------------------------------------------------------------------------------

    def _flow_sigmas(self, num_inference_steps: int, sigmas) -> tuple[np.ndarray, np.ndarray]:
        """`(unshifted, shifted)` float64 sigmas of the DPM-Solver / UniPC flow grid (`use_flow_sigmas=True`)."""
        n, big_t = num_inference_steps, self.config.num_train_timesteps
        if sigmas is not None:  # UniPC's rule: given sigmas are shifted like its own
            unshifted = np.asarray(sigmas, dtype=np.float64)
        elif self.config.flow_sigmas_grid == "unipc":
            unshifted = np.linspace(1, 1 / big_t, n + 1)[:-1]
        else:
            unshifted = (1.0 - np.linspace(1, 1 / big_t, n + 1))[::-1][:-1].copy()
        shifted = self._shift_sigmas(unshifted, None)
        if self.config.flow_sigmas_grid == "unipc" and abs(shifted[0] - 1) < 1e-6:
            shifted = shifted.copy()
            shifted[0] -= 1e-6  # UniPC avoids log(0) in its first update
        return unshifted, shifted

    def _model_timesteps(self, sigmas: torch.Tensor) -> torch.Tensor:
        """The denoiser's timestep input at `sigmas`: `sigma * T`, truncated to integers on the flow-sigma grid (the
        DPM-Solver / UniPC schedulers store int64 timesteps)."""
        timesteps = sigmas * self.config.num_train_timesteps
        if self.config.use_flow_sigmas:
            timesteps = timesteps.to(torch.float64).to(torch.int64).to(torch.float32)
        return timesteps

    def _shift_sigmas(self, sigmas, mu: Optional[float]):
        if self.config.use_flow_sigmas:
            return self.shift * sigmas / (1 + (self.shift - 1) * sigmas)
        if self.config.use_dynamic_shifting:
            return self.time_shift(mu, 1.0, sigmas)
        return self.shift * sigmas / (1 + (self.shift - 1) * sigmas)

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        sigmas: Optional[list[float]] = None,
        mu: Optional[float] = None,
        timesteps: Optional[list[float]] = None,
    ) -> None:
        """Build the grid: `timesteps` (the M steps the loop runs), `sigmas` (M + 1, last 0) and `sde_step_mask`.

        Arguments are those of `FlowMatchEulerDiscreteScheduler.set_timesteps` and give the same N-step grid. The
        window is checked against N (ValueError if it does not fit); with `tail_ratio` the steps after the window are
        replaced by the compressed tail (so M < N). Resets the step state and, when recording, the trajectory.
        """
        if self.config.use_dynamic_shifting and mu is None:
            raise ValueError("mu must be passed to set_timesteps when use_dynamic_shifting=True.")
        if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
            raise ValueError(
                f"sigmas ({len(sigmas)} values) and timesteps ({len(timesteps)} values) must have the same length."
            )
        if num_inference_steps is not None:
            if (sigmas is not None and len(sigmas) != num_inference_steps) or (
                timesteps is not None and len(timesteps) != num_inference_steps
            ):
                raise ValueError(
                    f"sigmas / timesteps must have num_inference_steps={num_inference_steps} values when both are given."
                )
        elif sigmas is None and timesteps is None:
            raise ValueError("set_timesteps needs num_inference_steps, sigmas or timesteps.")
        else:
            num_inference_steps = len(sigmas) if sigmas is not None else len(timesteps)
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
        self._reset_grid_state()
        self._grid_args = {"num_inference_steps": num_inference_steps, "device": device, "sigmas": sigmas}
        self._grid_args.update(mu=mu, timesteps=timesteps)

        # 1-3: the grid exactly as FlowMatchEulerDiscreteScheduler builds it (same numpy ops, same dtypes), or as
        # DPMSolverMultistepScheduler / UniPCMultistepScheduler build their flow-sigma grid.
        timesteps_given = timesteps is not None
        if self.config.use_flow_sigmas and timesteps_given:
            raise ValueError("timesteps= is not supported with use_flow_sigmas=True; pass num_inference_steps.")
        terminal_scale = None
        if self.config.use_flow_sigmas:
            unshifted, shifted = self._flow_sigmas(num_inference_steps, sigmas)
            sigmas = torch.from_numpy(shifted.astype(np.float32)).to(device=device)
            # int64 timesteps from the float64 sigmas, as DPMSolverMultistepScheduler / UniPCMultistepScheduler
            timesteps = torch.from_numpy((shifted * self.config.num_train_timesteps).astype(np.int64))
            timesteps = timesteps.to(device=device, dtype=torch.float32)
        else:
            if timesteps_given:
                timesteps = np.array(timesteps).astype(np.float32)
            if sigmas is None:
                if timesteps is None:
                    timesteps = np.linspace(
                        self._sigma_to_t(self.sigma_max), self._sigma_to_t(self.sigma_min), num_inference_steps
                    )
                sigmas = timesteps / self.config.num_train_timesteps
            else:
                sigmas = np.array(sigmas).astype(np.float32)
            unshifted = sigmas
            sigmas = self._shift_sigmas(unshifted, mu)
            if self.config.shift_terminal:
                terminal_scale = (1 - sigmas[-1]) / (1 - self.config.shift_terminal)
                sigmas = self.stretch_shift_to_terminal(sigmas)
            sigmas = torch.from_numpy(np.asarray(sigmas)).to(dtype=torch.float32, device=device)
            if timesteps_given:
                timesteps = torch.from_numpy(timesteps).to(dtype=torch.float32, device=device)
            else:
                timesteps = sigmas * self.config.num_train_timesteps

        # 4. The window on the N-step grid, then the compressed tail after it (MixGRPO-Flash).
        _, end = self._resolve_sde_window(num_inference_steps)
        if end > 0 and self.config.tail_ratio is not None and end < num_inference_steps:
            tail = self._tail_sigmas(unshifted, end, mu, terminal_scale, device)
            sigmas = torch.cat([sigmas[: end + 1], tail])
            timesteps = torch.cat([timesteps[: end + 1], self._model_timesteps(tail[:-1])])
        else:
            sigmas = torch.cat([sigmas, torch.zeros(1, device=sigmas.device)])

        self.num_inference_steps = num_inference_steps
        self.timesteps = timesteps
        self.sigmas = sigmas
        self._sigmas_list = sigmas.tolist()
        self._timesteps_list = timesteps.tolist()
        # The Euler step's dt exactly as FlowMatchEulerDiscreteScheduler forms it: a float32 0-dim tensor on the
        # grid's device (`self._dts[i]`), so that `dt * model_output` rounds as there in every dtype.
        self._dts = sigmas[1:] - sigmas[:-1]
        self._step_index = None
        self._begin_index = None
        num_steps_run = len(timesteps)
        self._build_sde_step_mask(num_steps_run, device=sigmas.device)
        if end > 0:
            self._tail_start = end
            if self.config.tail_solver == "dpmsolver++" and self.config.tail_solver_order > 1:
                self._history_from = max(end - (self.config.tail_solver_order - 1), 0)
        self._trajectory = None
        if self.config.record_trajectory:
            self._start_trajectory(timesteps, sigmas)

    def _tail_sigmas(self, unshifted, end: int, mu, terminal_scale, device) -> torch.Tensor:
        """Flash tail after the window: the sigmas that follow sigma_{e+1}, ending with 0.

        The reference puts `n = floor(max((N - e) * r, 1))` points `linspace(u_{e+1}, 0, n)` (unshifted time, then
        the grid's own shift), the first being sigma_{e+1}; `e = end - 1` is the last SDE step. It stops short of
        sigma 0 when n == 1: we take at least one step, to 0.
        """
        n = max(math.floor(max((len(unshifted) - (end - 1)) * self.config.tail_ratio, 1)), 2)
        u = np.linspace(float(unshifted[end]), 0.0, n)[1:-1].astype(np.asarray(unshifted).dtype)
        middle = self._shift_sigmas(u, mu) if len(u) else u  # both ends are exact: sigma_{e+1} and 0
        if terminal_scale is not None and len(u):
            middle = 1 - (1 - middle) / terminal_scale
        tail = np.concatenate([np.asarray(middle, dtype=np.float64), [0.0]])
        return torch.from_numpy(tail).to(dtype=torch.float32, device=device)

    def _apply_sde_window(self) -> None:
        # The Flash tail depends on where the window ends: rebuild the grid with the last set_timesteps arguments.
        self.set_timesteps(**self._grid_args)

    # -- one step ----------------------------------------------------------------------------------------------------

    def _sde_transition(self, v: torch.Tensor, x: torch.Tensor, i: int) -> tuple[torch.Tensor, float]:
        """Mean and scalar std of the SDE step `i` (`x`, `v` already in the compute dtype)."""
        sigma, sigma_next = self._sigmas_list[i], self._sigmas_list[i + 1]
        dt = sigma_next - sigma
        eta = self.config.eta
        sde_type = self.config.sde_type
        if sde_type == "flow_grpo":
            # Flow-GRPO: std_t = eta*sqrt(sigma/(1 - sigma)), sigma_1 in the denominator at sigma = 1;
            # mu = x*(1 + std_t^2/(2 sigma)*dt) + v*(1 + std_t^2*(1 - sigma)/(2 sigma))*dt, tau = std_t*sqrt(-dt).
            sigma_den = self._sigmas_list[1] if sigma == 1.0 else sigma
            var_t = eta**2 * sigma / (1 - sigma_den)
            c_x = 1 + var_t / (2 * sigma) * dt
            c_v = (1 + var_t * (1 - sigma) / (2 * sigma)) * dt
            std = math.sqrt(var_t) * math.sqrt(-dt)
        elif sde_type == "dance_grpo":
            # DanceGRPO: mu = x + dt*v - eta^2/2 * score * dt with score = -(x - (1 - sigma)*x0)/sigma^2 and
            # x0 = x - sigma*v, i.e. score = -(x + (1 - sigma)*v)/sigma; tau = eta*sqrt(-dt).
            c_x = 1 + eta**2 / (2 * sigma) * dt
            c_v = (1 + eta**2 * (1 - sigma) / (2 * sigma)) * dt
            std = eta * math.sqrt(-dt)
        else:
            # CPS (Flow-GRPO): tau = sigma_next*sin(eta*pi/2); mu = x0*(1 - sigma_next) + x1*sqrt(sigma_next^2 - tau^2)
            # with x0 = x - sigma*v and x1 = x + (1 - sigma)*v.
            std = sigma_next * math.sin(eta * math.pi / 2)
            c_x1 = math.sqrt(max(sigma_next**2 - std**2, 0.0))
            c_x = (1 - sigma_next) + c_x1
            c_v = -sigma * (1 - sigma_next) + (1 - sigma) * c_x1
        mean = (x * c_x).add_(v, alpha=c_v)
        return mean, std

    def _compute_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return torch.float64 if dtype == torch.float64 else torch.float32

    def _check_grid(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError("MixODESDEScheduler.step called before set_timesteps; call set_timesteps first.")

    def _check_like(self, name: str, tensor: Optional[torch.Tensor], sample: torch.Tensor) -> None:
        if tensor is not None and tensor.shape != sample.shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}; it must have the shape of sample, {tuple(sample.shape)}."
            )

    def _check_sde_step_index(self, step_index: int) -> None:
        if not 0 <= step_index < len(self.timesteps):
            raise ValueError(
                f"step_index={step_index} is outside the grid; allowed: 0 <= step_index < {len(self.timesteps)}."
            )
        if not self.is_sde_step(step_index):
            start, end = self.sde_window
            raise ValueError(
                f"step_index={step_index} is an ODE step and has no log-prob; allowed: SDE steps "
                f"{f'[{start}, {end})' if self.sde_steps == list(range(start, end)) else self.sde_steps}."
            )

    def _log_prob(self, prev_sample: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
        if self.config.sde_type == "cps" and self.config.cps_log_prob == "flow_grpo":
            return squared_error_log_prob(prev_sample, mean, self.config.log_prob_reduction)
        return gaussian_log_prob(prev_sample, mean, std, self.config.log_prob_reduction)

    def step_log_prob(
        self, model_output: torch.Tensor, sample: torch.Tensor, prev_sample: torch.Tensor, step_index: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-prob of a recorded `prev_sample` under SDE step `step_index` and the given `model_output`.

        Stateless (the step counter and the solver history are untouched) and differentiable w.r.t. `model_output`:
        this is the GRPO training pass. Uses the very same arithmetic as `step`, so recomputing a recorded step with
        the same model output gives the same log-prob bit for bit. Returns `(log_prob (B,) float32,
        prev_sample_mean, std_dev)`.
        """
        self._check_grid()
        self._check_sde_step_index(step_index)
        self._check_like("prev_sample", prev_sample, sample)
        cdtype = self._compute_dtype(sample.dtype)
        mean, std = self._sde_transition(model_output.to(cdtype), sample.to(cdtype), step_index)
        log_prob = self._log_prob(prev_sample, mean, std)
        return log_prob, mean, torch.tensor(std, dtype=torch.float32)

    def _dpm_update(self, x: torch.Tensor, i: int, order: int) -> torch.Tensor:
        """Multistep DPM-Solver++ (data prediction) from sigma_i to sigma_{i+1} with the last `order` x0_hats."""
        sigma_t = self._sigmas_list[i + 1]
        alpha_t = 1.0 - sigma_t
        (sigma_s0, m0), (sigma_s1, m1) = self._history[-1], self._history[-2]
        lambda_t, lambda_s0, lambda_s1 = _lambda(sigma_t), _lambda(sigma_s0), _lambda(sigma_s1)
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        phi = math.expm1(-h)  # e^{-h} - 1
        if order == 2:
            # Midpoint: x_t = sigma_t/sigma_s0*x - alpha_t*(e^-h - 1)*D0 - alpha_t/2*(e^-h - 1)*D1, D1 = (m0 - m1)/r0.
            c1 = -0.5 * alpha_t * phi / r0
            return (x * (sigma_t / sigma_s0)).add_(m0, alpha=-alpha_t * phi + c1).add_(m1, alpha=-c1)
        # Third order (DPM-Solver++(3M)), D1/D2 from the divided differences, folded into weights on m0, m1, m2.
        sigma_s2, m2 = self._history[-3]
        r1 = (lambda_s1 - _lambda(sigma_s2)) / h
        a = -alpha_t * phi
        b = alpha_t * (phi / h + 1.0)
        c = -alpha_t * ((phi + h) / h**2 - 0.5)
        p = b * (1 + r0 / (r0 + r1)) + c / (r0 + r1)  # weight of D1_0 = (m0 - m1)/r0
        q = -b * r0 / (r0 + r1) - c / (r0 + r1)  # weight of D1_1 = (m1 - m2)/r1
        out = (x * (sigma_t / sigma_s0)).add_(m0, alpha=a + p / r0)
        return out.add_(m1, alpha=-p / r0 + q / r1).add_(m2, alpha=-q / r1)

    def _tail_order(self, i: int) -> int:
        num_steps_run = len(self._sigmas_list) - 1
        if i == num_steps_run - 1:
            return 1  # final step to sigma = 0: first order, as diffusers with final_sigmas_type="zero"
        order = min(self.config.tail_solver_order, len(self._history))
        if i == num_steps_run - 2 and num_steps_run < 15:
            order = min(order, 2)  # diffusers' lower_order_final for short grids
        return order

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[float, torch.Tensor],
        sample: torch.Tensor,
        generator: Optional[Union[torch.Generator, list[torch.Generator]]] = None,
        prev_sample: Optional[torch.Tensor] = None,
        noise: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ) -> Union[MixODESDESchedulerOutput, tuple]:
        """Advance one step at `self.step_index` (Euler, SDE or DPM-Solver++ as the grid says).

        Args:
            model_output (`torch.Tensor`): the predicted velocity `v` at `sample`.
            timestep (`float` or `torch.Tensor`): the current timestep, `self.timesteps[self.step_index]` (it sets
                the step index on the first call unless `set_begin_index` was used; every call checks it). Python and
                numpy numbers and one-value tensors are accepted.
            sample (`torch.Tensor`): the current latent `x_i`.
            generator (`torch.Generator` or list, *optional*): randomness for the SDE noise.
            prev_sample (`torch.Tensor`, *optional*): a recorded `x_{i+1}`: returned unchanged (any step), its
                log-prob computed on SDE steps.
            noise (`torch.Tensor`, *optional*): the standard normal `z` of an SDE step, shape of `sample`.
            return_dict (`bool`): return a `MixODESDESchedulerOutput` (default) or the tuple in its field order,
                `(prev_sample, pred_original_sample, prev_sample_mean, std_dev, log_prob)`: tensors, `None` for the
                fields a step does not fill (always the trailing ones; `[0]` and `[1]` as in diffusers' DDIM).
        """
        self._check_grid()
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        if i >= len(self.timesteps):
            raise ValueError(f"step called {i + 1} times but the grid has {len(self.timesteps)} steps.")
        self._check_timestep(timestep, i)
        self._check_like("prev_sample", prev_sample, sample)
        self._check_like("noise", noise, sample)

        cdtype = self._compute_dtype(sample.dtype)
        sigma = self._sigmas_list[i]
        log_prob = mean = std_dev = x0 = None
        in_history = self._history_from is not None and i >= self._history_from
        if self.is_sde_step(i):
            x, v = sample.to(cdtype), model_output.to(cdtype)
            mean, std = self._sde_transition(v, x, i)
            if prev_sample is None:
                if noise is None:
                    noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=cdtype)
                prev_sample = torch.add(mean, noise.to(cdtype), alpha=std).to(sample.dtype)
            log_prob = self._log_prob(prev_sample, mean, std)
            std_dev = torch.tensor(std, dtype=torch.float32)
            x0 = torch.add(x, v, alpha=-sigma)
        elif in_history:
            x0 = torch.add(sample.to(cdtype), model_output.to(cdtype), alpha=-sigma)  # for the DPM-Solver++ tail
        if in_history:
            self._history = [*self._history[-(self.config.tail_solver_order - 1) :], (sigma, x0)]

        if prev_sample is None:
            tail_order = self._tail_order(i) if self._history_from is not None and i >= self._tail_start else 1
            if tail_order > 1:
                prev_sample = self._dpm_update(sample.to(cdtype), i, tail_order).to(sample.dtype)
            else:
                prev_sample = self._euler_step(model_output, sample, i)

        if self._trajectory is not None:
            self._record_step(i, sample, prev_sample, log_prob, keep=self.config.trajectory_latents)
        self._step_index = i + 1

        if not return_dict:
            return (prev_sample, x0, mean, std_dev, log_prob)
        return MixODESDESchedulerOutput(
            prev_sample=prev_sample, log_prob=log_prob, prev_sample_mean=mean, std_dev=std_dev, pred_original_sample=x0
        )

    def _euler_step(self, model_output: torch.Tensor, sample: torch.Tensor, i: int) -> torch.Tensor:
        """`x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v` with FlowMatchEulerDiscreteScheduler's arithmetic, op for op.

        As there: the sample is upcast to float32, `dt * v` is formed in the model output's dtype (rounded to bf16
        for a bf16 model), the sum is float32 and is cast to the model output's dtype; then to the sample's dtype
        (what stock pipelines do with the result). Bit-identical to the Euler scheduler in every dtype but float64,
        which stays float64 here (diffusers' step downcasts it to float32).
        """
        if sample.dtype == torch.float64:
            return sample + (self._sigmas_list[i + 1] - self._sigmas_list[i]) * model_output.to(torch.float64)
        dt = self._dts[i]
        prev_sample = sample.to(torch.float32) + dt * model_output
        return prev_sample.to(model_output.dtype).to(sample.dtype)

    def repeat_interleave_state(self, repeats: int) -> None:
        """Expand per-sample state (DPM-Solver++ history, recorded trajectory) when a shared prefix branches."""
        if not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}.")
        self._history = [(s, x0.repeat_interleave(repeats, dim=0)) for s, x0 in self._history]
        self._repeat_interleave_trajectory(repeats)
