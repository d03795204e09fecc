"""ParameterEMA: the average's values, the update interval, the swap-in context manager and its state_dict."""

import pytest
import torch

from diffusers_mixgrpo.training.ema import ParameterEMA


def make_params():
    return [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.ones(2, 2))]


def test_average_follows_the_formula():
    params = make_params()
    ema = ParameterEMA(params, decay=0.9)
    with torch.no_grad():
        params[0].fill_(1.0)
    ema.step(params)
    torch.testing.assert_close(ema.shadow[0], torch.full((3,), 0.1))  # 0.9 * 0 + 0.1 * 1
    ema.step(params)
    torch.testing.assert_close(ema.shadow[0], torch.full((3,), 0.19))  # 0.9 * 0.1 + 0.1 * 1
    torch.testing.assert_close(ema.shadow[1], torch.ones(2, 2))
    assert ema.num_updates == 2


def test_update_interval():
    params = make_params()
    ema = ParameterEMA(params, decay=0.5, update_interval=3)
    with torch.no_grad():
        params[0].fill_(2.0)
    assert [ema.step(params) for _ in range(6)] == [False, False, True, False, False, True]
    torch.testing.assert_close(ema.shadow[0], torch.full((3,), 1.5))  # 0 -> 1 -> 1.5


def test_average_parameters_swaps_in_and_restores_even_on_error():
    params = make_params()
    ema = ParameterEMA(params, decay=0.5)
    with torch.no_grad():
        params[0].fill_(4.0)
    ema.step(params)  # shadow[0] = 2
    with ema.average_parameters(params):
        torch.testing.assert_close(params[0].detach(), torch.full((3,), 2.0))
    torch.testing.assert_close(params[0].detach(), torch.full((3,), 4.0))
    with pytest.raises(KeyError), ema.average_parameters(params):
        raise KeyError("boom")
    torch.testing.assert_close(params[0].detach(), torch.full((3,), 4.0))


def test_copy_to_keeps_parameter_dtype_and_shadow_is_float32():
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    ema = ParameterEMA([p], decay=0.0)
    assert ema.shadow[0].dtype == torch.float32
    ema.copy_to([p])
    assert p.dtype == torch.bfloat16


def test_state_dict_round_trip():
    params = make_params()
    ema = ParameterEMA(params, decay=0.8, update_interval=2)
    with torch.no_grad():
        params[1].mul_(3.0)
    for _ in range(3):
        ema.step(params)
    other = ParameterEMA(make_params(), decay=0.1)
    other.load_state_dict(ema.state_dict())
    assert (other.decay, other.update_interval, other.num_calls, other.num_updates) == (0.8, 2, 3, 1)
    for a, b in zip(other.shadow, ema.shadow):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="averages"):
        ParameterEMA(make_params()[:1]).load_state_dict(ema.state_dict())


def test_invalid_arguments():
    with pytest.raises(ValueError, match="decay=1.0"):
        ParameterEMA(make_params(), decay=1.0)
    with pytest.raises(ValueError, match="update_interval=0"):
        ParameterEMA(make_params(), update_interval=0)
    with pytest.raises(ValueError, match="Expected 2 parameters"):
        ParameterEMA(make_params()).step(make_params()[:1])
