"""Specification tests for MixODESDEScheduler (flow matching: Euler ODE, SDE window, Flash tail).

Tolerances are stated where they are used; "exact" means `torch.equal`.
"""

import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from diffusers_mixgrpo.schedulers._window_mixin import MixTrajectory
from diffusers_mixgrpo.schedulers.scheduling_mix_ode_sde import MixODESDEScheduler, MixODESDESchedulerOutput

DATA_MEAN, DATA_STD = 1.5, 0.5  # the 1-D Gaussian data of the marginal tests


def gaussian_velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Exact velocity E[eps - x0 | x_sigma = x] for x0 ~ N(m, s^2), x_sigma = (1 - sigma)*x0 + sigma*eps."""
    a = 1.0 - sigma
    var = a * a * DATA_STD**2 + sigma * sigma
    return (sigma - a * DATA_STD**2) * (x - a * DATA_MEAN) / var - DATA_MEAN


def linear_grid(num_steps: int) -> np.ndarray:
    """The paper's grid before shifting, u_i = 1 - i/N (what FluxPipeline passes as `sigmas=`)."""
    return np.linspace(1.0, 1.0 / num_steps, num_steps)


def make(**kwargs) -> MixODESDEScheduler:
    return MixODESDEScheduler(**{"shift": 3.0, **kwargs})


def sample_loop(scheduler, x, velocity=gaussian_velocity, generator=None):
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(velocity(x, scheduler.sigmas[i].item()), t, x, generator=generator).prev_sample
    return x


# -- stock pipelines ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flux_pipe():
    from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline

    pipe = build_tiny_flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd3_pipe():
    from diffusers_mixgrpo.utils.tiny_models import build_tiny_sd3_pipeline

    pipe = build_tiny_sd3_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_pipe(pipe, scheduler, guidance_scale, output_type="pt", num_inference_steps=4):
    pipe.scheduler = scheduler
    return pipe(
        "a red circle",
        height=32,
        width=32,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        max_sequence_length=16,
        generator=torch.Generator().manual_seed(0),
        output_type=output_type,
    ).images


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pipe_name", ["flux_pipe", "sd3_pipe"])
def test_swapped_in_with_empty_window_gives_the_euler_latents_bit_for_bit(pipe_name, dtype):
    # FLUX passes sigmas= and mu= (dynamic shifting); SD3 passes neither (static shift 3). Exact in float32 and in
    # bf16 (how FLUX and SD3 run): the Euler step rounds as diffusers' does (dt * v in the model's dtype). Before
    # that, 42% (FLUX) / 59% (SD3) of the bf16 latents differed by one ulp after 6 steps.
    from diffusers_mixgrpo.utils import tiny_models

    pipe = getattr(tiny_models, f"build_tiny_{pipe_name.removesuffix('_pipe')}_pipeline")().to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    euler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    reference = run_pipe(pipe, euler, guidance_scale=3.5, output_type="latent", num_inference_steps=6)
    ours = run_pipe(pipe, MixODESDEScheduler.from_config(euler.config), 3.5, "latent", num_inference_steps=6)
    assert ours.dtype == reference.dtype == dtype
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("pipe_name", ["flux_pipe", "sd3_pipe"])
def test_swapped_in_with_empty_window_gives_the_euler_images(pipe_name, request):
    pipe = request.getfixturevalue(pipe_name)
    euler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    reference = run_pipe(pipe, euler, guidance_scale=3.5)
    ours = run_pipe(pipe, MixODESDEScheduler.from_config(euler.config), guidance_scale=3.5)
    pipe.scheduler = euler
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_euler_step_equals_flow_match_euler_step_in_every_dtype(dtype):
    # Mixed dtypes too: a float32 sample with a low-precision model output (the result is cast as diffusers casts
    # it, then to the sample's dtype, as stock pipelines do). Exact.
    g = torch.Generator().manual_seed(0)
    euler, ours = FlowMatchEulerDiscreteScheduler(shift=3.0), make()
    euler.set_timesteps(8)
    ours.set_timesteps(8)
    x_ref = x = torch.randn(2, 4, 8, 8, generator=g).to(dtype)
    for t in ours.timesteps:
        v = torch.randn(2, 4, 8, 8, generator=g).to(dtype)
        x_ref = euler.step(v, t, x_ref).prev_sample
        x = ours.step(v, t, x).prev_sample
        assert x.dtype == dtype and torch.equal(x, x_ref)
    x32 = torch.randn(2, 4, generator=g)
    v16 = torch.randn(2, 4, generator=g).to(dtype)
    euler.set_timesteps(8)
    ours.set_timesteps(8)
    expected = euler.step(v16, euler.timesteps[0], x32).prev_sample.to(torch.float32)
    assert torch.equal(ours.step(v16, ours.timesteps[0], x32).prev_sample, expected)


def test_stock_flux_pipeline_runs_with_a_window_and_records_log_probs(flux_pipe):
    euler = flux_pipe.scheduler
    ours = MixODESDEScheduler.from_config(euler.config, sde_window_size=2, record_trajectory=True)
    images = run_pipe(flux_pipe, ours, guidance_scale=3.5)
    flux_pipe.scheduler = euler
    traj = ours.trajectory
    assert torch.isfinite(images).all()
    assert isinstance(traj, MixTrajectory)
    assert sorted(traj.log_probs) == [0, 1]
    assert all(
        lp.shape == (1,) and lp.dtype == torch.float32 and torch.isfinite(lp).all() for lp in traj.log_probs.values()
    )
    assert sorted(traj.latents) == [0, 1, 2]  # "window": inputs and outputs of the two SDE steps only
    assert traj.sde_step_mask.tolist() == [True, True, False, False]


# -- the grid ------------------------------------------------------------------------------------------------------

GRID_CASES = [
    ({"shift": 1.0}, {"num_inference_steps": 10}),
    ({"shift": 3.0}, {"num_inference_steps": 25}),
    ({"shift": 3.0}, {"sigmas": linear_grid(25).tolist()}),
    ({"use_dynamic_shifting": True}, {"sigmas": linear_grid(28).tolist(), "mu": 1.15}),
    ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, {"num_inference_steps": 12, "mu": 2.0}),
    ({"shift": 3.0, "shift_terminal": 0.1}, {"num_inference_steps": 20}),
    ({"shift": 3.0}, {"timesteps": [1000.0, 750.0, 500.0, 250.0]}),
]


@pytest.mark.parametrize(("config", "kwargs"), GRID_CASES)
def test_grid_equals_flow_match_euler(config, kwargs):
    euler, ours = FlowMatchEulerDiscreteScheduler(**config), MixODESDEScheduler(**config)
    euler.set_timesteps(**kwargs)
    ours.set_timesteps(**kwargs)
    assert torch.equal(ours.sigmas, euler.sigmas)
    assert torch.equal(ours.timesteps, euler.timesteps)


def test_from_config_of_flow_match_euler_keeps_its_whole_config():
    euler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=128)
    ours = MixODESDEScheduler.from_config(euler.config)
    for key, value in euler.config.items():
        if not key.startswith("_"):
            assert ours.config[key] == value, key
    assert FlowMatchEulerDiscreteScheduler in MixODESDEScheduler().compatibles


# -- Flash tail ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window_start", "tail_ratio", "tail_steps"),
    [(0, 0.4, 7), (0, 0.2, 3), (8, 0.4, 4)],  # MixGRPO-Flash 4 + 7 = 11 NFE, Flash* 4 + 3 = 7, w = 8: 8 + 4 + 4 = 16
)
def test_flash_tail_has_the_reference_step_count(window_start, tail_ratio, tail_steps):
    scheduler = make(sde_window_start=window_start, sde_window_size=4, tail_ratio=tail_ratio)
    scheduler.set_timesteps(sigmas=linear_grid(25))
    assert len(scheduler.timesteps) == window_start + 4 + tail_steps
    assert len(scheduler.sigmas) == len(scheduler.timesteps) + 1
    assert scheduler.sigmas[-1].item() == 0.0


def test_flash_tail_points_are_the_shifted_linspace_from_the_window_end():
    scheduler = make(sde_window_size=4, tail_ratio=0.4)
    scheduler.set_timesteps(sigmas=linear_grid(25))
    uncompressed = make()
    uncompressed.set_timesteps(sigmas=linear_grid(25))
    u = np.linspace(1 - 4 / 25, 0.0, 8)  # e = 3: u = 1 - (e + 1)/N, n = floor(22 * 0.4) = 8 points
    expected = torch.tensor(3 * u / (1 + 2 * u), dtype=torch.float32)
    assert torch.equal(
        scheduler.sigmas[:5], uncompressed.sigmas[:5]
    )  # pre-tail grid untouched, tail starts at sigma_4
    torch.testing.assert_close(scheduler.sigmas[4:], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(scheduler.timesteps, scheduler.sigmas[:-1] * 1000, rtol=0, atol=0)


def test_tail_with_a_single_point_still_reaches_sigma_zero():
    # (N - e) * r = 22 * 0.01 < 1: the reference's n = 1 takes no tail step; ours takes exactly one, to 0.
    scheduler = make(sde_window_size=4, tail_ratio=0.01)
    scheduler.set_timesteps(sigmas=linear_grid(25))
    assert len(scheduler.timesteps) == 5
    assert scheduler.sigmas[-1].item() == 0.0 and scheduler.sigmas[-2].item() > 0.0


def test_set_sde_window_rebuilds_the_compressed_grid():
    scheduler = make(sde_window_size=4, tail_ratio=0.4)
    scheduler.set_timesteps(sigmas=linear_grid(25))
    scheduler.set_sde_window(8)
    assert scheduler.sde_window == (8, 12)
    assert len(scheduler.timesteps) == 16
    assert scheduler.sde_step_mask.nonzero().flatten().tolist() == [8, 9, 10, 11]


def test_window_past_the_last_step_is_cut_short():
    scheduler = make(sde_window_start=23, sde_window_size=4)
    scheduler.set_timesteps(25)
    assert scheduler.sde_window == (23, 25)


@pytest.mark.parametrize("order", [2, 3])
def test_dpmsolver_tail_equals_diffusers_dpmsolver_multistep(order):
    # Window [0, 1) at eta = 0 is an Euler step, which is first-order DPM-Solver++ in flow terms: then every step
    # matches diffusers' multistep solver on the same sigmas. The grid starts below sigma = 1 so that the first
    # history point has a finite lambda. Tolerance 1e-5 (float32; coefficients in float64 here, float32 there).
    sigmas = np.linspace(0.9, 0.05, 12)
    ours = make(sde_window_size=1, eta=0.0, tail_solver="dpmsolver++", tail_solver_order=order)
    ours.set_timesteps(sigmas=sigmas)
    dpm = DPMSolverMultistepScheduler(
        use_flow_sigmas=True,
        flow_shift=3.0,
        prediction_type="flow_prediction",
        algorithm_type="dpmsolver++",
        solver_order=order,
        solver_type="midpoint",
        final_sigmas_type="zero",
    )
    dpm.set_timesteps(len(ours.timesteps))
    dpm.sigmas, dpm.timesteps = ours.sigmas.clone(), ours.timesteps.clone()
    x = x_ref = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for i, t in enumerate(ours.timesteps):
        sigma = ours.sigmas[i].item()
        x = ours.step(gaussian_velocity(x, sigma), t, x).prev_sample
        x_ref = dpm.step(gaussian_velocity(x_ref, sigma), t, x_ref).prev_sample
        assert (x - x_ref).abs().max().item() <= 1e-5, f"step {i}"
    assert ours.sigmas[-1].item() == 0.0


def test_first_tail_step_is_second_order_with_the_window_history():
    scheduler = make(sde_window_size=4, tail_ratio=0.4, tail_solver="dpmsolver++")
    scheduler.set_timesteps(sigmas=linear_grid(25))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, generator=g)
    x0_hats = []
    for i in range(4):
        out = scheduler.step(gaussian_velocity(x, scheduler.sigmas[i].item()), scheduler.timesteps[i], x, generator=g)
        x0_hats.append(out.pred_original_sample)
        x = out.prev_sample
    s1, s0, t = (scheduler.sigmas[k].double().item() for k in (3, 4, 5))
    v = gaussian_velocity(x, s0)
    out = scheduler.step(v, scheduler.timesteps[4], x)
    lam = lambda s: math.log((1 - s) / s)  # noqa: E731
    h, h0 = lam(t) - lam(s0), lam(s0) - lam(s1)
    m0, m1 = x - s0 * v, x0_hats[-1]
    expected = t / s0 * x - (1 - t) * math.expm1(-h) * m0 - 0.5 * (1 - t) * math.expm1(-h) * (m0 - m1) / (h0 / h)
    torch.testing.assert_close(out.prev_sample, expected, rtol=0, atol=1e-6)
    euler = x + (t - s0) * v
    assert (out.prev_sample - euler).abs().max() > 1e-4  # really not the first-order step


# -- the SDE step ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sde_type", ["flow_grpo", "dance_grpo", "cps"])
def test_eta_zero_reduces_every_sde_form_to_the_euler_step(sde_type):
    scheduler = make(sde_type=sde_type, eta=0.0, sde_window_size=25)
    scheduler.set_timesteps(sigmas=linear_grid(25))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, generator=g)
    for i in (0, 5, 24):
        scheduler._step_index = i
        v = torch.randn(2, 3, 8, generator=g)
        out = scheduler.step(v, scheduler.timesteps[i], x, generator=g)
        euler = x + (scheduler.sigmas[i + 1] - scheduler.sigmas[i]) * v
        assert out.is_sde and out.std_dev.item() == 0.0
        torch.testing.assert_close(out.prev_sample, euler, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sde_type", ["flow_grpo", "dance_grpo", "cps"])
def test_sde_mean_and_std_follow_the_spec_formulas(sde_type):
    # The spec's formulas, written out directly (float64), at a step inside the grid and at sigma = 1.
    scheduler = make(sde_type=sde_type, eta=0.5, sde_window_size=25)
    scheduler.set_timesteps(sigmas=linear_grid(25))
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(2, 16, generator=g, dtype=torch.float64), torch.randn(2, 16, generator=g, dtype=torch.float64)
    for i in (0, 7):
        sigma, sigma_next = scheduler.sigmas[i].double().item(), scheduler.sigmas[i + 1].double().item()
        dt, eta = sigma_next - sigma, 0.5
        if sde_type == "flow_grpo":
            sigma_den = scheduler.sigmas[1].double().item() if i == 0 else sigma
            std_t = eta * math.sqrt(sigma / (1 - sigma_den))
            mean = x * (1 + std_t**2 / (2 * sigma) * dt) + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
            std = std_t * math.sqrt(-dt)
        elif sde_type == "dance_grpo":
            x0 = x - sigma * v
            score = -(x - (1 - sigma) * x0) / sigma**2
            mean, std = x + dt * v - 0.5 * eta**2 * score * dt, eta * math.sqrt(-dt)
        else:
            std = sigma_next * math.sin(eta * math.pi / 2)
            mean = (x - sigma * v) * (1 - sigma_next) + (x + (1 - sigma) * v) * math.sqrt(sigma_next**2 - std**2)
        _, got_mean, got_std = scheduler.step_log_prob(v, x, x, step_index=i)
        torch.testing.assert_close(got_mean, mean, rtol=0, atol=1e-6)  # float64 inputs: float64 math
        assert got_std.item() == pytest.approx(std, rel=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_log_prob_equals_the_torch_normal_log_density(reduction):
    scheduler = make(sde_window_size=4, log_prob_reduction=reduction)
    scheduler.set_timesteps(sigmas=linear_grid(25))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=g)
    scheduler.step(torch.randn_like(x), scheduler.timesteps[0], x, generator=g)
    out = scheduler.step(torch.randn(3, 4, 8, 8, generator=g), scheduler.timesteps[1], x, generator=g)
    per_element = torch.distributions.Normal(out.prev_sample_mean, out.std_dev).log_prob(out.prev_sample)
    expected = per_element.mean((1, 2, 3)) if reduction == "mean" else per_element.sum((1, 2, 3))
    assert out.log_prob.shape == (3,) and out.log_prob.dtype == torch.float32
    torch.testing.assert_close(out.log_prob, expected, rtol=1e-6, atol=1e-6)  # float32 sum of 256 terms; measured 0.0


def test_noise_argument_gives_mean_plus_std_times_noise():
    scheduler = make(sde_window_size=2)
    scheduler.set_timesteps(sigmas=linear_grid(10))
    g = torch.Generator().manual_seed(0)
    x, v, z = (torch.randn(2, 16, generator=g) for _ in range(3))
    out = scheduler.step(v, scheduler.timesteps[0], x, noise=z)
    torch.testing.assert_close(out.prev_sample, out.prev_sample_mean + out.std_dev * z, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sde_type", ["flow_grpo", "dance_grpo", "cps"])
def test_recomputed_log_prob_of_a_recorded_step_gives_ratio_exactly_one(dtype, sde_type):
    scheduler = make(sde_type=sde_type, sde_window_start=1, sde_window_size=3, record_trajectory=True)
    scheduler.set_timesteps(sigmas=linear_grid(10))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g).to(dtype)
    velocities = {}
    for i, t in enumerate(scheduler.timesteps):
        velocities[i] = torch.randn(2, 4, 8, 8, generator=g).to(dtype)
        x = scheduler.step(velocities[i], t, x, generator=g).prev_sample
        assert x.dtype == dtype
    transitions = scheduler.trajectory.sde_transitions()
    assert [step for step, *_ in transitions] == [1, 2, 3]
    for step, sample, prev_sample, old_log_prob in transitions:
        new_log_prob, _, _ = scheduler.step_log_prob(velocities[step], sample, prev_sample, step)
        ratio = torch.exp(new_log_prob - old_log_prob)
        assert torch.equal(ratio, torch.ones_like(ratio))


def test_step_log_prob_is_differentiable_and_stateless():
    scheduler = make(sde_window_size=2)
    scheduler.set_timesteps(sigmas=linear_grid(10))
    g = torch.Generator().manual_seed(0)
    x, prev = torch.randn(2, 16, generator=g), torch.randn(2, 16, generator=g)
    v = torch.randn(2, 16, generator=g, dtype=torch.bfloat16).requires_grad_()
    log_prob, _, _ = scheduler.step_log_prob(v, x, prev, step_index=1)
    log_prob.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert scheduler.step_index is None


def test_prev_sample_is_returned_unchanged_with_its_log_prob():
    scheduler = make(sde_window_size=2)
    scheduler.set_timesteps(sigmas=linear_grid(10))
    g = torch.Generator().manual_seed(0)
    x, v, prev = (torch.randn(2, 16, generator=g) for _ in range(3))
    out = scheduler.step(v, scheduler.timesteps[0], x, prev_sample=prev)
    assert out.prev_sample is prev
    expected, _, _ = scheduler.step_log_prob(v, x, prev, 0)
    assert torch.equal(out.log_prob, expected)


def test_bf16_inputs_use_float32_math_and_return_bf16():
    scheduler = make(sde_window_size=1)
    scheduler.set_timesteps(sigmas=linear_grid(10))
    g = torch.Generator().manual_seed(0)
    x, v, z = (torch.randn(2, 64, generator=g) for _ in range(3))
    out = scheduler.step(v.bfloat16(), scheduler.timesteps[0], x.bfloat16(), noise=z)
    mean32, std32 = scheduler._sde_transition(v.bfloat16().float(), x.bfloat16().float(), 0)
    assert out.prev_sample.dtype == torch.bfloat16 and out.prev_sample_mean.dtype == torch.float32
    assert torch.equal(out.prev_sample, (mean32 + std32 * z).bfloat16())
    ode = scheduler.step(v.bfloat16(), scheduler.timesteps[1], out.prev_sample)
    # The Euler step rounds as diffusers': dt * v in bf16 (the model's dtype), the sum in float32.
    expected = out.prev_sample.float() + (scheduler.sigmas[2] - scheduler.sigmas[1]) * v.bfloat16()
    assert ode.prev_sample.dtype == torch.bfloat16 and torch.equal(ode.prev_sample, expected.bfloat16())


def test_step_tuple_form_has_prev_sample_first():
    scheduler = make()
    scheduler.set_timesteps(4)
    x = torch.randn(1, 8)
    out = scheduler.step(torch.ones_like(x), scheduler.timesteps[0], x, return_dict=False)
    assert isinstance(out, tuple) and torch.equal(out[0], x + (scheduler.sigmas[1] - scheduler.sigmas[0]))
    assert out[1:] == (None, None, None, None)  # tensors or None only (no trailing is_sde flag); Euler fills none


# -- marginals -----------------------------------------------------------------------------------------------------


def final_marginal(num_steps, sde_type=None, eta=0.0, num_samples=100_000, seed=0):
    """Mean and std of x_0 sampled from N(0, 1) with every step an SDE step (or all Euler if `sde_type` is None)."""
    scheduler = make(sde_type=sde_type or "flow_grpo", eta=eta, sde_window_size=num_steps if sde_type else 0)
    scheduler.set_timesteps(sigmas=linear_grid(num_steps))
    g = torch.Generator().manual_seed(seed)
    x = sample_loop(scheduler, torch.randn(num_samples, 1, generator=g, dtype=torch.float64), generator=g)
    return x.mean().item(), x.std().item()


def test_flow_grpo_sde_has_the_data_marginal_at_large_step_count():
    # 300 SDE steps, 50k samples, float64, fixed seed. Tolerances: sampling error of the std is s/sqrt(2n) = 0.0016
    # and of the mean sqrt(s^2 + bias)/sqrt(n) ~ 0.0023; the discretisation bias of the std was measured at ~0.8/N
    # (0.033 at N = 25, 0.017 at 50, 0.007 at 100) -> 0.0027 at N = 300. Allowed: bias + 4 sampling errors.
    n, num_steps = 50_000, 300
    mean, std = final_marginal(num_steps, "flow_grpo", 0.7, num_samples=n)
    assert abs(mean - DATA_MEAN) <= 4 * 0.5 / math.sqrt(n)
    assert abs(std - DATA_STD) <= 0.8 / num_steps + 4 * DATA_STD / math.sqrt(2 * n)


@pytest.mark.parametrize(
    ("sde_type", "eta", "reference_std"),
    [(None, 0.0, 0.445), ("flow_grpo", 0.7, 0.467), ("dance_grpo", 0.3, 0.450)],  # environment-notes.md, N = 25
)
def test_25_step_marginal_matches_the_reference_figures(sde_type, eta, reference_std):
    # 200k samples: sampling error of the std 0.5/sqrt(4e5) = 0.0008; figures are rounded to 0.0005.
    # Allowed: 0.0005 + 3 sampling errors = 0.003 (the three samplers differ by 0.005 to 0.022).
    n = 200_000
    mean, std = final_marginal(25, sde_type, eta, num_samples=n)
    assert abs(std - reference_std) <= 0.0005 + 3 * DATA_STD / math.sqrt(2 * n)
    assert abs(mean - DATA_MEAN) <= 4 * 0.5 / math.sqrt(n)


# -- trajectory and state ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("keep", "latent_keys"), [("window", [2, 3, 4]), ("all", list(range(9))), ("none", [])])
def test_trajectory_keeps_the_chosen_latents(keep, latent_keys):
    scheduler = make(sde_window_start=2, sde_window_size=2, record_trajectory=True, trajectory_latents=keep)
    scheduler.set_timesteps(8)
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    x_final = sample_loop(scheduler, x, generator=torch.Generator().manual_seed(1))
    traj = scheduler.trajectory
    assert sorted(traj.latents) == latent_keys
    assert sorted(traj.log_probs) == [2, 3]
    if keep == "all":
        assert torch.equal(traj.latents[0], x) and torch.equal(traj.latents[8], x_final)


def test_no_trajectory_unless_recording():
    scheduler = make(sde_window_size=2)
    scheduler.set_timesteps(4)
    sample_loop(scheduler, torch.randn(1, 4))
    assert scheduler.trajectory is None


def test_repeat_interleave_state_branches_a_shared_prefix():
    # Prefix (steps 0-1, Euler) for one sample, branch into 3, then window + DPM-Solver++ tail: equal to running the
    # 3 copies from the start (exact; the same ops on the same values).
    def run(branch_at, batch):
        scheduler = make(sde_window_start=2, sde_window_size=2, tail_ratio=0.5, tail_solver="dpmsolver++")
        scheduler.set_timesteps(sigmas=linear_grid(12))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 16, generator=torch.Generator().manual_seed(3)).repeat(batch, 1)
        for i, t in enumerate(scheduler.timesteps):
            if i == branch_at:
                x = x.repeat_interleave(3, dim=0)
                scheduler.repeat_interleave_state(3)
            noise = torch.randn(3, 16, generator=g) if scheduler.is_sde_step(i) else None
            x = scheduler.step(gaussian_velocity(x, scheduler.sigmas[i].item()), t, x, noise=noise).prev_sample
        return x

    torch.testing.assert_close(run(branch_at=2, batch=1), run(branch_at=None, batch=3), rtol=0, atol=0)


def test_set_timesteps_resets_the_step_state():
    scheduler = make(sde_window_size=2, tail_solver="dpmsolver++")
    scheduler.set_timesteps(6)
    sample_loop(scheduler, torch.randn(1, 4))
    assert scheduler.step_index == 6
    scheduler.set_timesteps(6)
    assert scheduler.step_index is None and scheduler._history == []


# -- diffusers surface -------------------------------------------------------------------------------------------


def test_diffusers_scheduler_surface():
    scheduler = make()
    scheduler.set_timesteps(5)
    x = torch.randn(2, 4)
    assert MixODESDEScheduler.order == 1 and scheduler.init_noise_sigma == 1.0 and len(scheduler) == 1000
    assert scheduler.scale_model_input(x, scheduler.timesteps[0]) is x
    scheduler.set_begin_index(2)
    assert scheduler.begin_index == 2
    scheduler.step(torch.zeros_like(x), scheduler.timesteps[2], x)
    assert scheduler.step_index == 3


def test_timestep_sets_the_step_index_on_the_first_call():
    scheduler = make()
    scheduler.set_timesteps(5)
    scheduler.step(torch.zeros(1, 2), scheduler.timesteps[3], torch.zeros(1, 2))
    assert scheduler.step_index == 4


def test_scale_noise_equals_flow_match_euler():
    euler, ours = FlowMatchEulerDiscreteScheduler(shift=3.0), make()
    euler.set_timesteps(10)
    ours.set_timesteps(10)
    x, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for begin in (None, 3):
        if begin is not None:
            euler.set_begin_index(begin)
            ours.set_begin_index(begin)
        t = ours.timesteps[3:4].repeat(2)
        assert torch.equal(ours.scale_noise(x, t, noise), euler.scale_noise(x, t, noise))


def test_save_pretrained_and_from_pretrained_round_trip(tmp_path):
    scheduler = make(sde_type="cps", eta=0.4, sde_window_start=3, sde_window_size=4, tail_ratio=0.4)
    scheduler.register_to_config(tail_solver="dpmsolver++")
    scheduler.save_pretrained(tmp_path)
    loaded = MixODESDEScheduler.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(scheduler.config)
    scheduler.set_timesteps(25)
    loaded.set_timesteps(25)
    assert torch.equal(loaded.sigmas, scheduler.sigmas) and loaded.sde_window == (3, 7)


def test_step_returns_the_output_dataclass():
    scheduler = make(sde_window_size=1)
    scheduler.set_timesteps(3)
    out = scheduler.step(torch.zeros(1, 2), scheduler.timesteps[0], torch.zeros(1, 2))
    assert isinstance(out, MixODESDESchedulerOutput) and out.is_sde and out.log_prob.shape == (1,)


# -- bad input -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eta": -0.1}, "eta must be >= 0, got -0.1"),
        ({"sde_type": "ddpm"}, "sde_type must be one of"),
        ({"tail_solver": "heun"}, "tail_solver must be one of"),
        ({"tail_solver_order": 4}, "tail_solver_order must be one of"),
        ({"log_prob_reduction": "max"}, "log_prob_reduction must be one of"),
        ({"tail_ratio": 0.0}, r"tail_ratio must be None or in \(0, 1\], got 0.0"),
        ({"tail_ratio": 1.5}, r"tail_ratio must be None or in \(0, 1\], got 1.5"),
        ({"trajectory_latents": "some"}, "trajectory_latents must be one of"),
        ({"sde_window_size": -1}, "sde_window_size must be an integer >= 0"),
        ({"use_karras_sigmas": True}, "use_karras_sigmas=True is not supported"),
        ({"use_exponential_sigmas": True}, "use_exponential_sigmas=True is not supported"),
        ({"use_beta_sigmas": True}, "use_beta_sigmas=True is not supported"),
        ({"invert_sigmas": True}, "invert_sigmas=True is not supported"),
        ({"stochastic_sampling": True}, "stochastic_sampling=True is not supported"),
    ],
)
def test_bad_config_raises_a_value_error_naming_it(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixODESDEScheduler(**kwargs)


def test_window_larger_than_the_step_count_raises():
    scheduler = make(sde_window_size=6)
    with pytest.raises(ValueError, match="sde_window_size=6 is larger than the number of inference steps"):
        scheduler.set_timesteps(4)
    scheduler = make(sde_window_size=2)
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="sde_window_size=5"):
        scheduler.set_sde_window(0, 5)
    assert scheduler.sde_window == (0, 2)  # unchanged after the refusal


def test_step_before_set_timesteps_raises():
    with pytest.raises(ValueError, match="before set_timesteps"):
        make().step(torch.zeros(1, 2), 1000.0, torch.zeros(1, 2))


def test_timestep_not_on_the_grid_raises():
    scheduler = make()
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="timestep 123.0 is not on the current grid"):
        scheduler.step(torch.zeros(1, 2), 123.0, torch.zeros(1, 2))


@pytest.mark.parametrize("begin_index", [None, 0])
def test_timestep_off_the_grid_raises_on_every_step(begin_index):
    # Not only the first call (which sets the step index): a later off-grid or out-of-turn timestep raises too.
    scheduler = make()
    scheduler.set_timesteps(4)
    if begin_index is not None:
        scheduler.set_begin_index(begin_index)
    x = torch.zeros(1, 2)
    scheduler.step(x, scheduler.timesteps[0], x)
    with pytest.raises(ValueError, match="timestep 123.0 is not on the current grid"):
        scheduler.step(x, 123.0, x)
    with pytest.raises(ValueError, match="timestep 123.0 is not on the current grid"):
        scheduler.step(x, torch.tensor(123.0), x)
    expected = float(scheduler.timesteps[1])
    with pytest.raises(ValueError, match=rf"does not match step_index 1; allowed: {expected}"):
        scheduler.step(x, scheduler.timesteps[3], x)
    assert scheduler.step_index == 1  # the refused calls changed nothing
    scheduler.step(x, scheduler.timesteps[1], x)
    assert scheduler.step_index == 2


@pytest.mark.parametrize(
    "as_type",
    [
        float,
        np.float32,
        np.float64,
        lambda t: np.array(t, dtype=np.float32),
        lambda t: torch.tensor(t),
        lambda t: torch.full((3,), t),
    ],
    ids=["float", "np.float32", "np.float64", "np.ndarray", "tensor", "batch-tensor"],
)
def test_timesteps_of_any_number_type_are_accepted(as_type):
    scheduler = make()
    scheduler.set_timesteps(4)
    x = torch.zeros(1, 2)
    for t in scheduler.timesteps.tolist():
        scheduler.step(x, as_type(t), x)
    assert scheduler.step_index == 4


@pytest.mark.parametrize("bad", [True, "1000", None, torch.tensor([1000.0, 750.0])])
def test_timestep_of_a_wrong_type_raises(bad):
    scheduler = make()
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="timestep must be"):
        scheduler.step(torch.zeros(1, 2), bad, torch.zeros(1, 2))


@pytest.mark.parametrize("name", ["prev_sample", "noise"])
def test_prev_sample_or_noise_of_the_wrong_shape_raises(name):
    scheduler = make(sde_window_size=1)
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match=rf"{name} has shape \(1, 3\); it must have the shape of sample, \(1, 2\)"):
        scheduler.step(torch.zeros(1, 2), scheduler.timesteps[0], torch.zeros(1, 2), **{name: torch.zeros(1, 3)})


def test_log_prob_of_an_ode_step_raises():
    scheduler = make(sde_window_size=1)
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match=r"step_index=2 is an ODE step"):
        scheduler.step_log_prob(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), 2)


def test_dynamic_shifting_without_mu_raises():
    with pytest.raises(ValueError, match="mu must be passed"):
        MixODESDEScheduler(use_dynamic_shifting=True).set_timesteps(4)


# -- log-prob conventions -------------------------------------------------------------------------------------------


def _cps_step(cps_log_prob, reduction="mean", eta=0.8):
    scheduler = make(
        sde_type="cps", eta=eta, sde_window_size=3, cps_log_prob=cps_log_prob, log_prob_reduction=reduction
    )
    scheduler.set_timesteps(sigmas=linear_grid(25))
    g = torch.Generator().manual_seed(0)
    x, v, z = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    out = scheduler.step(v, scheduler.timesteps[0], x, noise=z)
    return scheduler, x, v, out


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cps_flow_grpo_log_prob_is_minus_the_squared_error(reduction):
    # Flow-GRPO / official MixGRPO: -(x - mu)^2, no 1/(2 tau^2), no constants, reduced like the Gaussian one.
    _, _, _, out = _cps_step("flow_grpo", reduction)
    sq = (out.prev_sample - out.prev_sample_mean) ** 2
    expected = -(sq.mean(dim=(1, 2, 3)) if reduction == "mean" else sq.sum(dim=(1, 2, 3)))
    torch.testing.assert_close(out.log_prob, expected, rtol=1e-6, atol=0)


def test_cps_gaussian_log_prob_is_the_density():
    _, _, _, out = _cps_step("gaussian")
    tau = out.std_dev.item()
    density = torch.distributions.Normal(out.prev_sample_mean.double(), tau).log_prob(out.prev_sample.double())
    torch.testing.assert_close(out.log_prob.double(), density.mean(dim=(1, 2, 3)), rtol=1e-6, atol=1e-6)


def test_cps_conventions_differ_by_two_tau_squared_in_the_log_ratio():
    # Same transitions, a second policy (perturbed velocity): at every window step the flow_grpo log-ratio is
    # 2 tau^2 times the Gaussian one (float32 arithmetic: rtol 1e-4).
    ratios, taus = {}, []
    for convention in ("gaussian", "flow_grpo"):
        scheduler = make(sde_type="cps", eta=0.8, sde_window_size=3, cps_log_prob=convention)
        scheduler.set_timesteps(sigmas=linear_grid(25))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3, 4, 8, 8, generator=g)
        for i in range(3):
            v = torch.randn(3, 4, 8, 8, generator=g)
            out = scheduler.step(v, scheduler.timesteps[i], x, generator=g)
            new = scheduler.step_log_prob(v + 0.05 * torch.ones_like(v), x, out.prev_sample, i)[0]
            ratios[convention, i] = new - out.log_prob
            taus.append(out.std_dev.item())
            x = out.prev_sample
    for i, tau in enumerate(taus[:3]):
        torch.testing.assert_close(ratios["flow_grpo", i], 2 * tau**2 * ratios["gaussian", i], rtol=1e-4, atol=1e-7)


def test_cps_log_prob_convention_leaves_the_samples_and_other_sde_types_alone():
    a, b = _cps_step("gaussian")[3], _cps_step("flow_grpo")[3]
    assert torch.equal(a.prev_sample, b.prev_sample) and torch.equal(a.prev_sample_mean, b.prev_sample_mean)
    for sde_type in ("flow_grpo", "dance_grpo"):
        outs = []
        for convention in ("gaussian", "flow_grpo"):
            scheduler = make(sde_type=sde_type, sde_window_size=1, cps_log_prob=convention)
            scheduler.set_timesteps(5)
            x = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
            outs.append(scheduler.step(x, scheduler.timesteps[0], x, generator=torch.Generator().manual_seed(2)))
        assert torch.equal(outs[0].log_prob, outs[1].log_prob)


def test_cps_log_prob_scale_ratio_over_the_25_step_grid():
    # The factor 1/(2 tau^2) between the Gaussian and the flow_grpo CPS log-ratios on the paper's grid (N = 25,
    # shift 3), as docs/schedulers.md states it: 0.65 .. 51 at eta 0.7, 0.57 .. 45 at eta 0.8 (2 significant digits).
    for eta, low, high in ((0.7, 0.65, 51), (0.8, 0.57, 45)):
        scheduler = make(sde_type="cps", eta=eta, sde_window_size=24)
        scheduler.set_timesteps(sigmas=linear_grid(25))
        taus = [scheduler.sigmas[i + 1].item() * math.sin(eta * math.pi / 2) for i in range(24)]
        factors = [1 / (2 * tau**2) for tau in taus]
        assert float(f"{min(factors):.2g}") == low and float(f"{max(factors):.2g}") == high


def test_unknown_cps_log_prob_raises():
    with pytest.raises(ValueError, match=r"cps_log_prob must be one of \('gaussian', 'flow_grpo'\), got 'none'"):
        make(cps_log_prob="none")


@pytest.mark.parametrize(
    ("sde_type", "eta", "largest", "smallest_before_last", "last"),
    [
        ("flow_grpo", 0.7, 0.71, 0.11, 0.082),
        ("dance_grpo", 0.3, 0.10, 0.035, 0.10),
        ("cps", 0.7, 0.88, 0.099, 0.0),
        ("cps", 0.8, 0.94, 0.11, 0.0),
    ],
)
def test_std_dev_ranges_over_the_paper_grid_are_the_documented_ones(
    sde_type, eta, largest, smallest_before_last, last
):
    # docs/schedulers.md, "Log-prob scale of each SDE type": tau of each step on N = 25, shift 3 (2 significant digits).
    scheduler = make(sde_type=sde_type, eta=eta, sde_window_size=25)
    scheduler.set_timesteps(sigmas=linear_grid(25))
    x = torch.zeros(1, 4)
    taus = []
    for t in scheduler.timesteps:
        out = scheduler.step(x, t, x, generator=torch.Generator().manual_seed(0))
        taus.append(out.std_dev.item())
    two_digits = lambda value: float(f"{value:.2g}")  # noqa: E731
    assert two_digits(max(taus)) == largest
    assert two_digits(min(taus[:-1])) == smallest_before_last and two_digits(taus[-1]) == last
