"""Small numerical helpers shared by the windowed ODE-SDE schedulers: the Gaussian log-density and window checks."""

import math
from typing import Optional

import torch

LOG_PROB_REDUCTIONS = ("mean", "sum")


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Log-density of `x` under `N(mean, std^2)`, per element, reduced over every non-batch dimension.

    Computed in float32 whatever the input dtype. The normalising terms `-log(std) - log(2*pi)/2` are included
    (the DanceGRPO helper loses them). `reduction="mean"` matches the reference implementations; `"sum"` is the true
    log-density of the whole sample. Returns a `(batch,)` float32 tensor.
    """
    if reduction not in LOG_PROB_REDUCTIONS:
        raise ValueError(f"log_prob_reduction must be one of {LOG_PROB_REDUCTIONS}, got {reduction!r}.")
    x, mean = x.float(), mean.float()
    std = torch.as_tensor(std, device=x.device).float()
    diff = x - mean
    dims = tuple(range(1, diff.ndim))
    if std.numel() == 1:
        # One scale for every element (all our SDE forms): reduce the squared error first, add the constant once —
        # one full-size temporary instead of five (the step is memory-bound at 1024 px).
        sq = (diff * diff).mean(dim=dims) if reduction == "mean" else (diff * diff).sum(dim=dims)
        const = -torch.log(std.reshape(())) - 0.5 * math.log(2 * math.pi)
        count = 1 if reduction == "mean" else math.prod(diff.shape[1:])
        return -sq / (2 * std.reshape(()) ** 2) + const * count
    log_prob = -(diff**2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_prob.mean(dim=dims) if reduction == "mean" else log_prob.sum(dim=dims)


def squared_error_log_prob(x: torch.Tensor, mean: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Flow-GRPO's CPS "log-prob" `-(x - mean)^2`, reduced over every non-batch dimension; float32, `(batch,)`.

    Not a log-density: it drops the `1/(2 std^2)` factor and the normalising terms. Differences of it between two
    policies at the same step are the Gaussian log-ratio times `2 std^2`.
    """
    if reduction not in LOG_PROB_REDUCTIONS:
        raise ValueError(f"log_prob_reduction must be one of {LOG_PROB_REDUCTIONS}, got {reduction!r}.")
    diff = x.float() - mean.float()
    dims = tuple(range(1, diff.ndim))
    sq = diff * diff
    return -(sq.mean(dim=dims) if reduction == "mean" else sq.sum(dim=dims))


def resolve_window(start: int, size: int, num_steps: int, max_start: Optional[int] = None) -> tuple[int, int]:
    """Validate an SDE window `[start, start + size)` on a grid of `num_steps` steps; returns `(start, end)`.

    A window that runs past the last step is cut short (as in the reference). `size == 0` means no SDE step.
    """
    if size < 0:
        raise ValueError(f"sde_window_size must be >= 0, got {size}.")
    if size > num_steps:
        raise ValueError(
            f"sde_window_size={size} is larger than the number of inference steps ({num_steps}); "
            f"allowed: 0 <= sde_window_size <= {num_steps}."
        )
    if size == 0:
        return 0, 0
    if not 0 <= start < num_steps:
        raise ValueError(f"sde_window_start={start} is outside the grid; allowed: 0 <= start <= {num_steps - 1}.")
    if max_start is not None and start > max_start:
        raise ValueError(f"sde_window_start={start} is past max_start={max_start}.")
    return start, min(start + size, num_steps)
