"""MixDDIMSDEScheduler: DDIM outside the SDE window, DDIM-eta with log-probs inside; a drop-in for DDIMScheduler."""

import copy
import inspect

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler

from diffusers_mixgrpo.schedulers.scheduling_mix_ddim_sde import MixDDIMSDEScheduler
from diffusers_mixgrpo.utils.tiny_models import build_tiny_sd_pipeline

SD_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
PROMPTS = ["a red circle", "a blue square"]


def ddim_and_mix(**overrides):
    mix_keys = {
        "sde_window_start",
        "sde_window_size",
        "eta",
        "log_prob_reduction",
        "record_trajectory",
        "trajectory_latents",
    }
    ddim = DDIMScheduler(**{**SD_CONFIG, **{k: v for k, v in overrides.items() if k not in mix_keys}})
    mix = MixDDIMSDEScheduler.from_config(ddim.config, **{k: v for k, v in overrides.items() if k in mix_keys})
    return ddim, mix


@pytest.fixture(scope="module")
def sd_pipes():
    return {pt: build_tiny_sd_pipeline(prediction_type=pt) for pt in ("epsilon", "v_prediction")}


def run_pipe(pipe, seed=0, steps=10, **kwargs):
    out = pipe(
        PROMPTS,
        num_inference_steps=steps,
        height=32,
        width=32,
        guidance_scale=kwargs.pop("guidance_scale", 1.0),
        output_type="pt",
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )
    return out.images


# -- drop-in equality with DDIMScheduler ----------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_empty_window_reproduces_ddim_pipeline_images(sd_pipes, prediction_type):
    pipe = copy.copy(sd_pipes[prediction_type])
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    reference = run_pipe(pipe, guidance_scale=3.0)
    pipe.scheduler = MixDDIMSDEScheduler.from_config(pipe.scheduler.config, sde_window_size=0)
    images = run_pipe(pipe, guidance_scale=3.0)
    assert (images - reference).abs().max() <= 1e-6


@pytest.mark.parametrize("timestep_spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("set_alpha_to_one", [False, True])
def test_empty_window_steps_equal_ddim_eta0(timestep_spacing, prediction_type, set_alpha_to_one):
    ddim, mix = ddim_and_mix(
        timestep_spacing=timestep_spacing,
        prediction_type=prediction_type,
        set_alpha_to_one=set_alpha_to_one,
        sde_window_size=0,
    )
    ddim.set_timesteps(12)
    mix.set_timesteps(12)
    assert torch.equal(ddim.timesteps, mix.timesteps)
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    for t in mix.timesteps:
        model_output = torch.randn_like(x)
        expected = ddim.step(model_output, t, x, eta=0.0).prev_sample
        out = mix.step(model_output, t, x)
        assert out.log_prob is None and not out.is_sde
        assert torch.equal(out.prev_sample, expected)
        x = expected


@pytest.mark.parametrize("config", [{"clip_sample": True}, {"thresholding": True, "sample_max_value": 1.5}])
def test_clipping_and_thresholding_match_ddim(config):
    ddim, mix = ddim_and_mix(prediction_type="sample", sde_window_size=0, **config)
    ddim.set_timesteps(5)
    mix.set_timesteps(5)
    torch.manual_seed(1)
    x = torch.randn(2, 4, 8, 8)
    for t in mix.timesteps:
        model_output = 3 * torch.randn_like(x)
        expected = ddim.step(model_output, t, x, eta=0.0)
        out = mix.step(model_output, t, x)
        torch.testing.assert_close(out.pred_original_sample, expected.pred_original_sample, rtol=0, atol=1e-6)
        torch.testing.assert_close(out.prev_sample, expected.prev_sample, rtol=0, atol=1e-6)
        x = expected.prev_sample


def test_rescale_betas_zero_snr_matches_ddim():
    ddim, mix = ddim_and_mix(
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing", sde_window_size=0
    )
    assert torch.equal(ddim.alphas_cumprod, mix.alphas_cumprod)
    ddim.set_timesteps(6)
    mix.set_timesteps(6)
    x = torch.randn(1, 4, 8, 8)
    for t in mix.timesteps:
        model_output = torch.randn_like(x)
        expected = ddim.step(model_output, t, x, eta=0.0).prev_sample
        assert torch.equal(mix.step(model_output, t, x).prev_sample, expected)
        x = expected


# -- the SDE step ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [0.3, 1.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_window_step_matches_ddim_with_eta(eta, prediction_type):
    ddim, mix = ddim_and_mix(prediction_type=prediction_type, sde_window_start=0, sde_window_size=10, eta=eta)
    ddim.set_timesteps(10)
    mix.set_timesteps(10)
    torch.manual_seed(2)
    x = torch.randn(2, 4, 8, 8)
    for t in mix.timesteps:
        model_output, noise = torch.randn_like(x), torch.randn_like(x)
        mean = ddim.step(model_output, t, x, eta=eta, variance_noise=torch.zeros_like(x)).prev_sample
        sampled = ddim.step(model_output, t, x, eta=eta, variance_noise=noise).prev_sample
        prev_t = t - ddim.config.num_train_timesteps // ddim.num_inference_steps
        variance = ddim._get_variance(t, prev_t)

        out = mix.step(model_output, t, x, noise=noise)
        assert out.is_sde
        torch.testing.assert_close(out.prev_sample_mean, mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(out.std_dev, eta * variance**0.5, rtol=1e-6, atol=0)
        torch.testing.assert_close(out.prev_sample, sampled, rtol=0, atol=1e-6)
        assert out.log_prob.shape == (2,) and out.log_prob.dtype == torch.float32
        x = sampled


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_log_prob_is_the_gaussian_density(reduction):
    _, mix = ddim_and_mix(sde_window_start=2, sde_window_size=3, eta=0.8, log_prob_reduction=reduction)
    mix.set_timesteps(8)
    torch.manual_seed(3)
    x = torch.randn(3, 4, 8, 8)
    for t in mix.timesteps:
        out = mix.step(torch.randn_like(x), t, x, generator=torch.Generator().manual_seed(5))
        if out.is_sde:
            per_element = torch.distributions.Normal(out.prev_sample_mean, out.std_dev).log_prob(out.prev_sample)
            expected = per_element.mean(dim=(1, 2, 3)) if reduction == "mean" else per_element.sum(dim=(1, 2, 3))
            # measured: relative 1.1e-7 (absolute 1.5e-5 on the sums of 256 terms)
            torch.testing.assert_close(out.log_prob, expected, rtol=1e-6, atol=1e-6)
        x = out.prev_sample
    assert mix.sde_step_mask.tolist() == [False, False, True, True, True, False, False, False]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_recomputed_log_prob_gives_ratio_exactly_one(dtype):
    _, mix = ddim_and_mix(sde_window_start=1, sde_window_size=4, eta=1.0)
    mix.set_timesteps(6)
    torch.manual_seed(4)
    x = torch.randn(2, 4, 8, 8).to(dtype)
    generator = torch.Generator().manual_seed(0)
    for i, t in enumerate(mix.timesteps):
        model_output = torch.randn_like(x)
        out = mix.step(model_output, t, x, generator=generator)
        assert out.prev_sample.dtype == dtype
        if out.is_sde:
            log_prob, mean, std = mix.step_log_prob(model_output, x, out.prev_sample, i)
            ratio = torch.exp(log_prob - out.log_prob)
            assert torch.equal(ratio, torch.ones_like(ratio))
            assert torch.equal(mean, out.prev_sample_mean)
        x = out.prev_sample


def test_step_with_prev_sample_returns_it_unchanged_and_scores_it():
    _, mix = ddim_and_mix(sde_window_start=0, sde_window_size=2, eta=1.0)
    mix.set_timesteps(4)
    x = torch.randn(2, 4, 8, 8)
    model_output = torch.randn_like(x)
    recorded = torch.randn_like(x)
    out = mix.step(model_output, mix.timesteps[0], x, prev_sample=recorded)
    assert out.prev_sample is recorded
    expected = torch.distributions.Normal(out.prev_sample_mean, out.std_dev).log_prob(recorded).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.log_prob, expected, rtol=1e-6, atol=1e-6)  # measured difference: 0.0


def test_step_log_prob_is_stateless_and_differentiable():
    _, mix = ddim_and_mix(sde_window_start=0, sde_window_size=3, eta=1.0)
    mix.set_timesteps(5)
    x = torch.randn(2, 4, 8, 8)
    step = mix.step(torch.randn_like(x), mix.timesteps[0], x)
    assert mix.step_index == 1
    model_output = torch.randn_like(x, requires_grad=True)
    log_prob, _, _ = mix.step_log_prob(model_output, x, step.prev_sample, 0)
    log_prob.sum().backward()
    assert mix.step_index == 1
    assert model_output.grad is not None and model_output.grad.abs().sum() > 0
    assert torch.isfinite(model_output.grad).all()


def test_step_log_prob_accepts_a_batch_of_step_indices():
    _, mix = ddim_and_mix(sde_window_start=0, sde_window_size=4, eta=1.0)
    mix.set_timesteps(6)
    x, prev, model_output = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    steps = torch.tensor([0, 2, 3])
    batched, _, std = mix.step_log_prob(model_output, x, prev, steps)
    assert std.shape == (3, 1, 1, 1)
    for row, i in enumerate(steps.tolist()):
        single, _, _ = mix.step_log_prob(model_output[row : row + 1], x[row : row + 1], prev[row : row + 1], i)
        torch.testing.assert_close(batched[row : row + 1], single, rtol=1e-6, atol=1e-6)


def test_eta_zero_window_equals_ode():
    _, ode = ddim_and_mix(sde_window_size=0)
    _, sde = ddim_and_mix(sde_window_start=1, sde_window_size=3, eta=0.0)
    ode.set_timesteps(6)
    sde.set_timesteps(6)
    x = torch.randn(2, 4, 8, 8)
    for t in sde.timesteps:
        model_output = torch.randn_like(x)
        a = ode.step(model_output, t, x)
        b = sde.step(model_output, t, x, generator=torch.Generator().manual_seed(0))
        assert torch.equal(a.prev_sample, b.prev_sample)
        if b.is_sde:
            # A zero-variance step is a point mass: its log-prob is reported as 0 (no policy gradient).
            assert torch.equal(b.log_prob, torch.zeros(2))
        x = a.prev_sample


def test_final_step_onto_alpha_one_is_a_point_mass():
    _, mix = ddim_and_mix(set_alpha_to_one=True, sde_window_start=2, sde_window_size=2, eta=1.0)
    mix.set_timesteps(4)
    x = torch.randn(2, 4, 8, 8)
    for t in mix.timesteps:
        out = mix.step(torch.randn_like(x), t, x)
        x = out.prev_sample
    assert torch.equal(out.std_dev, torch.tensor(0.0)) and torch.equal(out.log_prob, torch.zeros(2))
    assert torch.equal(out.prev_sample, out.prev_sample_mean)


def test_sde_steps_are_reproducible_with_a_generator():
    def sample(seed):
        _, mix = ddim_and_mix(sde_window_start=0, sde_window_size=3, eta=1.0)
        mix.set_timesteps(5)
        x = torch.ones(2, 4, 8, 8)
        generator = torch.Generator().manual_seed(seed)
        for t in mix.timesteps:
            x = mix.step(0.1 * x, t, x, generator=generator).prev_sample
        return x

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))


# -- on a stock StableDiffusionPipeline -----------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_stock_pipeline_runs_with_a_window_and_records_log_probs(sd_pipes, prediction_type):
    pipe = copy.copy(sd_pipes[prediction_type])
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    ddim_images = run_pipe(pipe)
    pipe.scheduler = MixDDIMSDEScheduler.from_config(
        pipe.scheduler.config, sde_window_start=2, sde_window_size=4, eta=1.0, record_trajectory=True
    )
    images = run_pipe(pipe)
    traj = pipe.scheduler.trajectory
    assert images.shape == ddim_images.shape and torch.isfinite(images).all()
    assert not torch.allclose(images, ddim_images)  # the window injected noise
    assert torch.equal(run_pipe(pipe), images)  # the pipeline's generator drives the window noise
    assert sorted(traj.log_probs) == [2, 3, 4, 5]
    assert all(lp.shape == (2,) and torch.isfinite(lp).all() for lp in traj.log_probs.values())
    assert sorted(traj.latents) == [2, 3, 4, 5, 6]
    assert traj.sde_step_mask.tolist() == [False, False, True, True, True, True, False, False, False, False]
    assert torch.equal(traj.timesteps, pipe.scheduler.timesteps)
    assert traj.sigmas is None

    # The training pass: recompute each window step's log-prob with the UNet; on-policy the ratio is exactly 1.
    prompt_embeds, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
    with torch.no_grad():
        for i, x_t, x_next, old_log_prob in traj.sde_transitions():
            t = traj.timesteps[i]
            model_output = pipe.unet(x_t, t, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
            log_prob, _, _ = pipe.scheduler.step_log_prob(model_output, x_t, x_next, i)
            assert torch.equal(torch.exp(log_prob - old_log_prob), torch.ones(2))


def test_stock_pipeline_accepts_custom_timesteps(sd_pipes):
    pipe = copy.copy(sd_pipes["epsilon"])
    pipe.scheduler = MixDDIMSDEScheduler.from_config(pipe.scheduler.config, sde_window_size=2, record_trajectory=True)
    images = run_pipe(pipe, steps=None, timesteps=[901, 701, 501, 301, 101])
    assert torch.isfinite(images).all()
    assert pipe.scheduler.timesteps.tolist() == [901, 701, 501, 301, 101]
    assert sorted(pipe.scheduler.trajectory.log_probs) == [0, 1]


# -- window API -------------------------------------------------------------------------------------------------------


def test_set_sde_window_before_and_after_set_timesteps():
    _, mix = ddim_and_mix(sde_window_start=0, sde_window_size=4)
    assert mix.sde_window == (0, 4)
    mix.set_sde_window(3)
    assert mix.sde_window == (3, 7)
    mix.set_timesteps(10)
    assert mix.sde_step_mask.tolist() == [i in range(3, 7) for i in range(10)]
    mix.set_sde_window(8, 4)  # cut short at the end of the grid
    assert mix.sde_window == (8, 10)
    assert mix.sde_step_mask.tolist() == [i >= 8 for i in range(10)]
    mix.set_sde_window(0, 0)
    assert mix.sde_window == (0, 0) and not mix.sde_step_mask.any()


def test_repeat_interleave_state_expands_the_trajectory():
    _, mix = ddim_and_mix(sde_window_start=0, sde_window_size=2, record_trajectory=True, trajectory_latents="all")
    mix.set_timesteps(4)
    x = torch.randn(2, 4, 8, 8)
    out = mix.step(torch.randn_like(x), mix.timesteps[0], x)
    mix.repeat_interleave_state(3)
    traj = mix.trajectory
    assert traj.latents[0].shape[0] == 6 and traj.log_probs[0].shape == (6,)
    assert torch.equal(traj.latents[1][:3], out.prev_sample[:1].expand(3, -1, -1, -1))
    with pytest.raises(ValueError, match="repeats"):
        mix.repeat_interleave_state(0)


def test_step_index_and_begin_index():
    _, mix = ddim_and_mix(sde_window_size=0)
    mix.set_timesteps(5)
    assert mix.step_index is None
    x = torch.randn(1, 4, 8, 8)
    mix.step(torch.randn_like(x), mix.timesteps[2], x)  # img2img-style start: index found from the timestep
    assert mix.step_index == 3
    mix.set_timesteps(5)
    mix.set_begin_index(1)
    mix.step(torch.randn_like(x), mix.timesteps[1], x)
    assert mix.step_index == 2
    assert mix.order == 1 and mix.init_noise_sigma == 1.0
    assert torch.equal(mix.scale_model_input(x, mix.timesteps[0]), x)


# -- configs ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [DDIMScheduler, PNDMScheduler, EulerDiscreteScheduler])
def test_from_config_of_compatible_schedulers(source):
    accepted = inspect.signature(source.__init__).parameters
    config = source(**{k: v for k, v in SD_CONFIG.items() if k in accepted}).config
    mix = MixDDIMSDEScheduler.from_config(config, sde_window_size=4, eta=1.0)
    assert mix.config.beta_schedule == "scaled_linear" and mix.config.sde_window_size == 4
    assert "DDIMScheduler" in MixDDIMSDEScheduler._compatibles
    assert "PNDMScheduler" in MixDDIMSDEScheduler._compatibles
    DDIMScheduler.from_config(mix.config)  # and back
    assert MixDDIMSDEScheduler.from_config(config).sde_window == (0, 0)  # a plain swap has no window


def public_config(scheduler) -> dict:
    return {k: v for k, v in scheduler.config.items() if not k.startswith("_")}


def test_save_and_load_round_trip(tmp_path):
    _, mix = ddim_and_mix(sde_window_start=3, sde_window_size=2, eta=0.5, log_prob_reduction="sum")
    mix.save_pretrained(tmp_path)
    loaded = MixDDIMSDEScheduler.from_pretrained(tmp_path)
    assert public_config(loaded) == public_config(mix)
    assert loaded.sde_window == (3, 5)
    assert (loaded.config.eta, loaded.config.log_prob_reduction) == (0.5, "sum")


# -- bad inputs -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eta": -0.1}, "eta"),
        ({"prediction_type": "flow_prediction"}, "prediction_type"),
        ({"timestep_spacing": "karras"}, "timestep_spacing"),
        ({"beta_schedule": "cosine"}, "beta_schedule"),
        ({"log_prob_reduction": "max"}, "log_prob_reduction"),
        ({"trajectory_latents": "some"}, "trajectory_latents"),
        ({"sde_window_size": -1}, "sde_window_size"),
        ({"sde_window_start": -2}, "sde_window_start"),
    ],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixDDIMSDEScheduler(**kwargs)


def test_window_larger_than_the_grid_raises():
    _, mix = ddim_and_mix(sde_window_size=8)
    with pytest.raises(ValueError, match="sde_window_size=8"):
        mix.set_timesteps(5)
    _, mix = ddim_and_mix(sde_window_start=5, sde_window_size=1)
    with pytest.raises(ValueError, match="sde_window_start=5"):
        mix.set_timesteps(5)


def test_bad_set_timesteps_arguments_raise():
    _, mix = ddim_and_mix()
    with pytest.raises(ValueError, match="num_inference_steps"):
        mix.set_timesteps(1001)
    with pytest.raises(ValueError, match="num_inference_steps or timesteps"):
        mix.set_timesteps()
    with pytest.raises(ValueError, match="strictly decreasing"):
        mix.set_timesteps(timesteps=[100, 500])
    with pytest.raises(ValueError, match="sigmas"):
        mix.set_timesteps(sigmas=[1.0, 0.5])


def test_step_before_set_timesteps_raises():
    _, mix = ddim_and_mix()
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="set_timesteps"):
        mix.step(x, 981, x)
    with pytest.raises(ValueError, match="set_timesteps"):
        mix.step_log_prob(x, x, x, 0)


def test_timestep_not_on_grid_raises():
    _, mix = ddim_and_mix()
    mix.set_timesteps(5)
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="not on the grid"):
        mix.step(x, 500, x)
    mix.step(x, mix.timesteps[0], x)
    with pytest.raises(ValueError, match="does not match step_index"):
        mix.step(x, mix.timesteps[3], x)


def test_wrong_shapes_and_indices_raise():
    _, mix = ddim_and_mix(sde_window_start=0, sde_window_size=2)
    mix.set_timesteps(5)
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match="prev_sample has shape"):
        mix.step(x, mix.timesteps[0], x, prev_sample=x[:1])
    with pytest.raises(ValueError, match="noise has shape"):
        mix.step(x, mix.timesteps[0], x, noise=x[:, :2])
    with pytest.raises(ValueError, match="prev_sample has shape"):
        mix.step_log_prob(x, x, x[:1], 0)
    with pytest.raises(ValueError, match="step_index"):
        mix.step_log_prob(x, x, x, 5)
    with pytest.raises(ValueError, match="step_index"):
        mix.step_log_prob(x, x, x, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="ODE step"):
        mix.step_log_prob(x, x, x, 3)


@pytest.mark.parametrize(
    "as_type",
    [int, np.int64, np.float32, lambda t: np.array(t), lambda t: torch.tensor(t), lambda t: torch.full((2,), t)],
    ids=["int", "np.int64", "np.float32", "np.ndarray", "tensor", "batch-tensor"],
)
def test_timesteps_of_any_number_type_are_accepted(as_type):
    scheduler = MixDDIMSDEScheduler(sde_window_size=2)
    scheduler.set_timesteps(5)
    x = torch.zeros(1, 4)
    for t in scheduler.timesteps.tolist():
        scheduler.step(x, as_type(t), x, generator=torch.Generator().manual_seed(0))
    assert scheduler.step_index == 5


def test_timestep_off_the_grid_raises_on_every_step():
    scheduler = MixDDIMSDEScheduler()
    scheduler.set_timesteps(5)
    x = torch.zeros(1, 4)
    scheduler.step(x, scheduler.timesteps[0], x)
    with pytest.raises(ValueError, match="timestep 123 is not on the grid"):
        scheduler.step(x, 123, x)
    with pytest.raises(ValueError, match="does not match step_index 1"):
        scheduler.step(x, scheduler.timesteps[2], x)
    with pytest.raises(ValueError, match="timestep must be a number"):
        scheduler.step(x, True, x)
