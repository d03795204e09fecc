"""The GRPO policy loss (clipped ratio, algorithm notes section 5), its two optional KL regularisers, and GRPO-Guard's
ratio normalisation (`ratio_norm_log_ratio`, `guard_step_weights`).

All functions work on one window step of a micro-batch: `log_prob` is `log pi_theta(x_{t+1} | x_t)` recomputed with
gradients (the scheduler's `step_log_prob`), `old_log_prob` the value recorded at rollout time. The loss is averaged
over the batch; the trainer sums it over the trained window steps and divides by their number K (gradient
accumulation is handled by `accelerator.accumulate`/`backward`, which divides by `gradient_accumulation_steps`), so
an optimiser step sees the section-5 loss divided by (accumulation x K).

Math in float32 whatever the model's dtype.
"""

from dataclasses import dataclass
from typing import Optional, Union

import torch

__all__ = [
    "GRPOLossOutput",
    "PolicyLossOutput",
    "grpo_loss",
    "guard_loss_kwargs",
    "guard_step_weights",
    "policy_loss",
    "ratio_norm_log_ratio",
    "reference_kl",
    "rollout_kl",
]


@dataclass
class PolicyLossOutput:
    """What `policy_loss` returns. `loss` carries the gradient; the statistics are detached 0-d float32 tensors.

    Attributes:
        loss: ``mean_b max(-A_b * ratio_b, -A_b * clip(ratio_b, 1 - eps, 1 + eps))``.
        clip_fraction: fraction of samples whose ratio lies outside ``[1 - eps, 1 + eps]`` (where the clip binds or
            could bind).
        ratio_mean, ratio_min, ratio_max: statistics of ``ratio = exp(log_prob - old_log_prob)`` (with `ratio_norm`:
            of the normalised ratio that is clipped).
        approx_kl: ``0.5 * mean((log_prob - old_log_prob)^2)``, the usual estimate of KL(old || new) (as in DDPO and
            Flow-GRPO); 0 on-policy.
    """

    loss: torch.Tensor
    clip_fraction: torch.Tensor
    ratio_mean: torch.Tensor
    ratio_min: torch.Tensor
    ratio_max: torch.Tensor
    approx_kl: torch.Tensor

    def stats(self) -> dict[str, torch.Tensor]:
        """The detached statistics by name (no `loss`), ready for gathering and logging."""
        return {
            "clip_fraction": self.clip_fraction,
            "ratio_mean": self.ratio_mean,
            "ratio_min": self.ratio_min,
            "ratio_max": self.ratio_max,
            "approx_kl": self.approx_kl,
        }


def _batch(x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a (B,) tensor, got shape {tuple(x.shape)}.")
    return x.float()


def _per_sample(x: torch.Tensor, reduction: str) -> torch.Tensor:
    """`(B, ...)` -> `(B,)`: the mean or the sum over the non-batch dimensions (as the log-prob is reduced)."""
    if x.ndim == 1:
        return x
    dims = tuple(range(1, x.ndim))
    return x.mean(dim=dims) if reduction == "mean" else x.sum(dim=dims)


def ratio_norm_log_ratio(
    log_ratio: torch.Tensor,
    prev_sample_mean: torch.Tensor,
    old_prev_sample_mean: torch.Tensor,
    std_dev: Union[torch.Tensor, float],
    reduction: str = "mean",
) -> torch.Tensor:
    """GRPO-Guard's RatioNorm (arXiv 2510.22319, "regulated clipping"): the log importance ratio of a Gaussian SDE step
    de-biased and brought to the same spread at every step, ``(log_ratio + b) * tau`` with
    ``b = reduce(||mu_theta - mu_old||^2) / (2 tau^2)``.

    Why: with ``x_{t+1} = mu_old + tau z`` the per-element log-ratio is ``z d / tau - d^2 / (2 tau^2)`` (``d = mu_theta
    - mu_old``): its mean is ``-d^2 / (2 tau^2) < 0`` (the ratio sits below 1, so a positive advantage rarely reaches
    the upper clip) and its spread ``|d| / tau`` depends on the step's noise scale. Adding ``b`` removes the bias and
    multiplying by ``tau`` leaves ``reduce(z d)``, centred on 0 at every step. ``b`` keeps its gradient: the
    normalised log-ratio is linear in ``mu_theta``. On-policy (``mu_theta = mu_old``, ``log_ratio = 0``) it is 0.

    Args:
        log_ratio (`torch.Tensor`): `(B,)` ``log_prob - old_log_prob`` (with gradients).
        prev_sample_mean (`torch.Tensor`): `(B, ...)` the step's mean under the current policy (with gradients).
        old_prev_sample_mean (`torch.Tensor`): `(B, ...)` its mean under the rollout policy (a constant).
        std_dev (`torch.Tensor` or `float`): tau, the step's standard deviation (scalar or `(B,)`).
        reduction (`str`, defaults to `"mean"`): the log-prob's reduction over the non-batch dimensions
            (`log_prob_reduction`), applied to ``||d||^2`` alike.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r} is not allowed; choose 'mean' or 'sum'.")
    mean = prev_sample_mean.float()
    old = old_prev_sample_mean.detach().float().to(mean.device)
    if mean.shape != old.shape or mean.shape[0] != log_ratio.shape[0]:
        raise ValueError(
            f"The means must both be (B, ...) with B = {log_ratio.shape[0]}, got {tuple(mean.shape)} and "
            f"{tuple(old.shape)}."
        )
    tau = torch.as_tensor(std_dev, device=mean.device).float().reshape(-1)
    bias = _per_sample((mean - old) ** 2, reduction) / (2 * tau**2)
    return (log_ratio.float() + bias) * tau


def guard_step_weights(sigmas, step_indices) -> dict[int, float]:
    """GRPO-Guard's per-step gradient reweighting: step `t` of the window weighs ``1 / |sigma_{t+1} - sigma_t|``
    (the mean's gradient scales with ``|dt|``, so small steps would otherwise train less), normalised here to mean 1
    over `step_indices` so the learning rate and the gradient clipping keep their meaning.

    Args:
        sigmas: the flow-matching grid (`scheduler.sigmas`, `N + 1` values).
        step_indices: the window's grid indices (`RolloutBatch.step_indices`).

    Returns:
        `{step index: weight}`.
    """
    sig = [float(v) for v in sigmas]
    inverse = {}
    for t in step_indices:
        dt = abs(sig[t + 1] - sig[t])
        if not dt > 0:
            raise ValueError(f"Step {t} has sigma {sig[t]} -> {sig[t + 1]}: no step to weight by 1/|dt|.")
        inverse[int(t)] = 1.0 / dt
    mean = sum(inverse.values()) / len(inverse)
    return {t: w / mean for t, w in inverse.items()}


def guard_loss_kwargs(pipe, batch, t: int, idx: torch.Tensor, device, log_prob_reduction: str) -> dict:
    """The `grpo_loss` keyword arguments of GRPO-Guard (`ratio_norm`) for the samples `idx` at window step `t` of the
    rollout `batch`: the rollout's recorded SDE means and the step's 1/|dt| weight on `pipe`'s recompute grid."""
    sigmas = pipe._log_prob_scheduler(batch).sigmas
    return dict(
        ratio_norm=True,
        old_prev_sample_mean=batch.means[idx.to(batch.means.device), batch.step_position(t)].to(device),
        step_weight=guard_step_weights(sigmas, batch.step_indices)[t],
        log_prob_reduction=log_prob_reduction,
    )


def policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float = 1e-4,
    ratio_norm: bool = False,
    prev_sample_mean: Optional[torch.Tensor] = None,
    old_prev_sample_mean: Optional[torch.Tensor] = None,
    std_dev: Optional[Union[torch.Tensor, float]] = None,
    log_prob_reduction: str = "mean",
) -> PolicyLossOutput:
    """The clipped GRPO/PPO policy loss of one window step (algorithm notes section 5).

    Args:
        log_prob (`torch.Tensor`): `(B,)` log-probabilities under the current policy (with gradients).
        old_log_prob (`torch.Tensor`): `(B,)` log-probabilities recorded at rollout time (treated as constants).
        advantages (`torch.Tensor`): `(B,)` advantages (already clipped to `[-adv_clip_max, adv_clip_max]`).
        clip_range (`float`, defaults to 1e-4): epsilon; the paper's value is very tight, so effectively one
            on-policy step per rollout.
        ratio_norm (`bool`, defaults to `False`): clip GRPO-Guard's normalised ratio,
            ``exp(ratio_norm_log_ratio(...))``, instead of ``exp(log_prob - old_log_prob)``; needs
            `prev_sample_mean`, `old_prev_sample_mean` and `std_dev` (and `log_prob_reduction`, the log-prob's).

    Returns:
        `PolicyLossOutput`. On-policy (`log_prob == old_log_prob`) the ratio is exactly 1, the loss is
        ``-mean(A)`` and the clip fraction 0; the gradient is then ``-A_b / B * d log_prob_b``, i.e. gradient descent
        raises the log-probability of samples with positive advantage.
    """
    if not clip_range > 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}.")
    log_prob = _batch(log_prob, "log_prob")
    old_log_prob = _batch(old_log_prob, "old_log_prob").detach()
    advantages = _batch(advantages, "advantages").detach().to(log_prob.device)
    if not log_prob.shape == old_log_prob.shape == advantages.shape:
        raise ValueError(
            f"log_prob, old_log_prob and advantages must have the same (B,) shape, got {tuple(log_prob.shape)}, "
            f"{tuple(old_log_prob.shape)} and {tuple(advantages.shape)}."
        )
    log_ratio = log_prob - old_log_prob.to(log_prob.device)
    clipped_log_ratio = log_ratio
    if ratio_norm:
        if prev_sample_mean is None or old_prev_sample_mean is None or std_dev is None:
            raise ValueError("ratio_norm=True needs prev_sample_mean, old_prev_sample_mean and std_dev.")
        clipped_log_ratio = ratio_norm_log_ratio(
            log_ratio, prev_sample_mean, old_prev_sample_mean, std_dev, log_prob_reduction
        )
    ratio = torch.exp(clipped_log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        r = ratio.detach()
        return PolicyLossOutput(
            loss=loss,
            clip_fraction=((r - 1.0).abs() > clip_range).float().mean(),
            ratio_mean=r.mean(),
            ratio_min=r.min(),
            ratio_max=r.max(),
            approx_kl=0.5 * (log_ratio.detach() ** 2).mean(),
        )


def rollout_kl(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """The reference MixGRPO/DanceGRPO KL penalty between the rollout and the current policy,
    ``0.5 * mean_b (log_prob_b - old_log_prob_b)^2``; a 0-d tensor with gradients through `log_prob`.

    Multiply by `kl_coeff` (config `kl_type="rollout"`).
    """
    log_prob = _batch(log_prob, "log_prob")
    old_log_prob = _batch(old_log_prob, "old_log_prob").detach().to(log_prob.device)
    return 0.5 * ((log_prob - old_log_prob) ** 2).mean()


def reference_kl(
    prev_sample_mean: torch.Tensor,
    ref_prev_sample_mean: torch.Tensor,
    std_dev: Union[torch.Tensor, float],
    reduce: bool = True,
) -> torch.Tensor:
    """Flow-GRPO's closed-form KL between the current and the reference policy's Gaussian step,
    ``KL(N(mu_theta, tau^2) || N(mu_ref, tau^2)) = ||mu_theta - mu_ref||^2 / (2 tau^2)``.

    Both policies share the step's scale tau (it depends on sigma and eta only), so the KL reduces to the squared
    distance of the means. As in Flow-GRPO the squared distance is **averaged** over the non-batch dimensions (the
    per-element KL; multiply by the number of elements for the KL of the whole latent, like the `"sum"` log-prob
    reduction), then averaged over the batch when `reduce`.

    Args:
        prev_sample_mean (`torch.Tensor`): `(B, ...)` mean mu_theta of the step under the current policy (gradients).
        ref_prev_sample_mean (`torch.Tensor`): `(B, ...)` mean under the reference policy (e.g. LoRA disabled);
            treated as a constant.
        std_dev (`torch.Tensor` or `float`): tau, the step's standard deviation: a scalar, a `(B,)` tensor or any
            shape broadcastable to the means (the scheduler's `std_dev`).
        reduce (`bool`, defaults to `True`): return the batch mean (0-d) instead of the `(B,)` values.

    Multiply by `kl_coeff` (config `kl_type="reference"`).
    """
    mean = prev_sample_mean.float()
    ref = ref_prev_sample_mean.detach().float().to(mean.device)
    if mean.shape != ref.shape:
        raise ValueError(f"The two means must have the same shape, got {tuple(mean.shape)} and {tuple(ref.shape)}.")
    std = torch.as_tensor(std_dev, device=mean.device).float()
    if std.ndim == 1 and mean.ndim > 1 and std.numel() == mean.shape[0]:
        std = std.reshape(-1, *([1] * (mean.ndim - 1)))
    per_element = (mean - ref) ** 2 / (2 * std**2)
    per_sample = per_element.mean(dim=tuple(range(1, mean.ndim))) if mean.ndim > 1 else per_element
    return per_sample.mean() if reduce else per_sample


@dataclass
class GRPOLossOutput:
    """What `grpo_loss` returns: the total `loss` (policy + kl_coeff * kl), its parts and the policy statistics."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    kl: torch.Tensor
    policy: PolicyLossOutput

    def stats(self) -> dict[str, torch.Tensor]:
        """Detached statistics by name: `policy_loss`, `kl` and the policy ratio statistics."""
        return {"policy_loss": self.policy_loss.detach(), "kl": self.kl.detach(), **self.policy.stats()}


def grpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float = 1e-4,
    kl_type: str = "none",
    kl_coeff: float = 0.0,
    prev_sample_mean: Optional[torch.Tensor] = None,
    ref_prev_sample_mean: Optional[torch.Tensor] = None,
    std_dev: Optional[Union[torch.Tensor, float]] = None,
    ratio_norm: bool = False,
    old_prev_sample_mean: Optional[torch.Tensor] = None,
    step_weight: float = 1.0,
    log_prob_reduction: str = "mean",
) -> GRPOLossOutput:
    """Policy loss plus the configured KL term for one window step: ``step_weight * policy_loss + kl_coeff * kl``.

    `kl_type="rollout"` uses `rollout_kl(log_prob, old_log_prob)`; `"reference"` needs `prev_sample_mean`,
    `ref_prev_sample_mean` and `std_dev` and uses `reference_kl`; `"none"` adds nothing (the `kl` reported is 0).
    `ratio_norm` (GRPO-Guard) clips the normalised ratio (`policy_loss`, needs `old_prev_sample_mean`,
    `prev_sample_mean` and `std_dev`); `step_weight` is its per-step weight (`guard_step_weights`, 1 without it).
    """
    if kl_type not in ("none", "rollout", "reference"):
        raise ValueError(f"kl_type={kl_type!r} is not allowed; choose 'none', 'rollout' or 'reference'.")
    policy = policy_loss(
        log_prob,
        old_log_prob,
        advantages,
        clip_range,
        ratio_norm=ratio_norm,
        prev_sample_mean=prev_sample_mean,
        old_prev_sample_mean=old_prev_sample_mean,
        std_dev=std_dev,
        log_prob_reduction=log_prob_reduction,
    )
    if kl_type == "rollout":
        kl = rollout_kl(log_prob, old_log_prob)
    elif kl_type == "reference":
        if prev_sample_mean is None or ref_prev_sample_mean is None or std_dev is None:
            raise ValueError("kl_type='reference' needs prev_sample_mean, ref_prev_sample_mean and std_dev.")
        kl = reference_kl(prev_sample_mean, ref_prev_sample_mean, std_dev)
    else:
        kl = policy.loss.new_zeros(())
    weighted = policy.loss * step_weight if step_weight != 1.0 else policy.loss
    loss = weighted + kl_coeff * kl if kl_type != "none" else weighted
    return GRPOLossOutput(loss=loss, policy_loss=weighted, kl=kl, policy=policy)
