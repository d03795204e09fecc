"""MixODESDEScheduler on the DPM-Solver / UniPC flow-sigma grid (`use_flow_sigmas=True`: SANA, Wan)."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from diffusers_mixgrpo import MixODESDEScheduler


def dpm(shift=3.0, **kw):
    return DPMSolverMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, algorithm_type="dpmsolver++", **kw
    )


def unipc(shift=3.0, **kw):
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, **kw)


@pytest.mark.parametrize("make", [dpm, unipc], ids=["dpmsolver", "unipc"])
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_from_config_keeps_the_stock_sigmas_and_integer_timesteps(make, shift):
    stock = make(shift)
    mix = MixODESDEScheduler.from_config(stock.config)
    assert mix.config.use_flow_sigmas and mix.config.flow_shift == shift
    assert mix.config.flow_sigmas_grid == ("unipc" if make is unipc else "dpmsolver")
    for n in (1, 4, 20, 50):
        stock.set_timesteps(n)
        mix.set_timesteps(n)
        assert torch.equal(mix.sigmas, stock.sigmas), n
        assert torch.equal(mix.timesteps, stock.timesteps.float()), n


def test_the_config_round_trip_keeps_the_grid(tmp_path):
    mix = MixODESDEScheduler.from_config(unipc().config)
    mix.save_pretrained(tmp_path)
    loaded = MixODESDEScheduler.from_pretrained(tmp_path)
    assert loaded.config.flow_sigmas_grid == "unipc"
    mix.set_timesteps(10)
    loaded.set_timesteps(10)
    assert torch.equal(mix.sigmas, loaded.sigmas)


def velocity(x, sigma):
    # closed-form velocity of data N(1.5, 0.5^2): v = E[noise - x0 | x_sigma]
    m, s = 1.5, 0.5
    var = (1 - sigma) ** 2 * s**2 + sigma**2
    x0_hat = m + (1 - sigma) * s**2 * (x - (1 - sigma) * m) / var
    return (x - x0_hat) / sigma


@pytest.mark.parametrize("make", [dpm, unipc], ids=["dpmsolver", "unipc"])
def test_the_empty_window_ode_is_the_first_order_stock_solver(make):
    """Euler on the grid == first-order DPM-Solver++ / UniPC (no corrector) on it: same update, float32 rounding."""
    stock = make(solver_order=1, **({"disable_corrector": list(range(100))} if make is unipc else {}))
    mix = MixODESDEScheduler.from_config(stock.config)
    stock.set_timesteps(8)
    mix.set_timesteps(8)
    x0 = torch.randn(64, generator=torch.Generator().manual_seed(0))
    a, b = x0.clone(), x0.clone()
    for i, t in enumerate(stock.timesteps):
        sigma = float(stock.sigmas[i])
        a = stock.step(velocity(a, sigma), t, a).prev_sample
        b = mix.step(velocity(b, sigma), mix.timesteps[i], b).prev_sample
    torch.testing.assert_close(b, a, rtol=0, atol=2e-6)  # measured difference: 2.4e-7


def test_the_flash_tail_on_the_flow_grid_ends_at_zero_with_integer_timesteps():
    mix = MixODESDEScheduler.from_config(
        unipc().config, sde_window_start=2, sde_window_size=4, tail_solver="dpmsolver++", tail_ratio=0.4
    )
    mix.set_timesteps(20)
    full = MixODESDEScheduler.from_config(unipc().config)
    full.set_timesteps(20)
    assert torch.equal(mix.sigmas[:7], full.sigmas[:7])  # the grid up to the window's end is the stock one
    assert mix.sigmas[-1] == 0 and len(mix.timesteps) == 6 + 5
    assert torch.equal(mix.timesteps, mix.timesteps.round())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"use_flow_sigmas": True, "shift": 3.0}, "set flow_shift instead"),
        ({"use_flow_sigmas": True, "use_dynamic_shifting": True}, "use_dynamic_shifting=True is not supported"),
        ({"use_flow_sigmas": True, "flow_shift": 0.0}, "flow_shift must be > 0"),
        ({"flow_sigmas_grid": "euler"}, "flow_sigmas_grid must be one of"),
        ({"final_sigmas_type": "sigma_min"}, "final_sigmas_type='sigma_min' is not supported"),
    ],
)
def test_unsupported_flow_sigma_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixODESDEScheduler(**kwargs)


def test_timesteps_are_refused_on_the_flow_grid():
    mix = MixODESDEScheduler(use_flow_sigmas=True, flow_shift=3.0)
    with pytest.raises(ValueError, match="timesteps= is not supported with use_flow_sigmas=True"):
        mix.set_timesteps(timesteps=[900.0, 500.0])
