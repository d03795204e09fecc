"""diffusers' `SchedulerCommonTest` behaviours (tests/schedulers/test_schedulers.py), run on both our schedulers.

Written from the behaviours that diffusers' common suite checks for every scheduler: save / load round trips give the
same step, configs survive the `_compatibles` round trip, `step(..., return_dict=False)` holds tensors or `None` only
and matches the output dataclass field by field, the public API (`init_noise_sigma`, `scale_model_input`,
`add_noise` / `scale_noise`), no undeclared `**kwargs`, `trained_betas` round trip, and config attribute access.

Adapted where our contract is stricter than diffusers' stateless schedulers: a step must get the timestep of its
step index (diffusers' suite steps at arbitrary timesteps 0 and 1), so the steps here walk the grid in order.
"""

import dataclasses
import inspect
import warnings

import numpy as np
import pytest
import torch
from diffusers import logging as diffusers_logging

from diffusers_mixgrpo.schedulers.scheduling_mix_ddim_sde import MixDDIMSDEScheduler
from diffusers_mixgrpo.schedulers.scheduling_mix_ode_sde import MixODESDEScheduler

NUM_STEPS = 10

# (class, config) pairs: each scheduler with an empty window, an SDE window at the start and one in the middle, and
# the variants of the flow scheduler's tail and SDE types.
CASES = [
    (MixODESDEScheduler, {"shift": 3.0}),
    (MixODESDEScheduler, {"shift": 3.0, "sde_window_size": 3}),
    (MixODESDEScheduler, {"shift": 3.0, "sde_window_start": 2, "sde_window_size": 2, "sde_type": "dance_grpo"}),
    (MixODESDEScheduler, {"sde_window_size": 2, "sde_type": "cps", "cps_log_prob": "flow_grpo"}),
    (MixODESDEScheduler, {"sde_window_size": 2, "tail_solver": "dpmsolver++", "tail_ratio": 0.4}),
    (MixODESDEScheduler, {"use_dynamic_shifting": True, "sde_window_size": 2}),
    (MixDDIMSDEScheduler, {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}),
    (MixDDIMSDEScheduler, {"sde_window_size": 3, "prediction_type": "v_prediction", "clip_sample": False}),
    (MixDDIMSDEScheduler, {"sde_window_start": 4, "sde_window_size": 2, "timestep_spacing": "trailing"}),
]
IDS = [f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in cfg.items()) or 'default'}" for cls, cfg in CASES]


def dummy_sample() -> torch.Tensor:
    return torch.rand((4, 3, 8, 8), generator=torch.Generator().manual_seed(0))


def set_timesteps(scheduler) -> None:
    mu = 1.0 if getattr(scheduler.config, "use_dynamic_shifting", False) else None
    if mu is None:
        scheduler.set_timesteps(NUM_STEPS)
    else:
        scheduler.set_timesteps(NUM_STEPS, mu=mu)


def walk(scheduler, sample, **kwargs):
    """Every step of the grid in order with the common suite's residual `0.1 * sample`; yields the outputs."""
    set_timesteps(scheduler)
    for t in scheduler.timesteps:
        out = scheduler.step(0.1 * sample, t, sample, generator=torch.manual_seed(0), **kwargs)
        yield out
        sample = out[0] if isinstance(out, tuple) else out.prev_sample


@pytest.mark.parametrize(("cls", "config"), CASES, ids=IDS)
def test_save_pretrained_round_trip_gives_the_same_steps(cls, config, tmp_path):
    # check_over_configs / check_over_forward / test_from_save_pretrained: a reloaded scheduler steps identically
    # (exact: same ops on the same values, same seeded noise).
    scheduler = cls(**config)
    scheduler.save_config(tmp_path)
    reloaded = cls.from_pretrained(tmp_path)
    sample = dummy_sample()
    for a, b in zip(walk(scheduler, sample), walk(reloaded, sample)):
        assert torch.equal(a.prev_sample, b.prev_sample)
        assert (a.log_prob is None) == (b.log_prob is None)
        if a.log_prob is not None:
            assert torch.equal(a.log_prob, b.log_prob)


@pytest.mark.parametrize(("cls", "config"), CASES, ids=IDS)
def test_from_pretrained_keeps_the_config(cls, config, tmp_path):
    scheduler = cls(**config)
    scheduler.save_pretrained(tmp_path)
    reloaded = cls.from_pretrained(tmp_path)
    saved = dict(scheduler.config)
    del saved["_use_default_values"]
    assert saved == reloaded.config


@pytest.mark.parametrize(("cls", "config"), CASES, ids=IDS)
def test_compatibles_round_trip_keeps_the_config(cls, config):
    # test_compatibles: every compatible class loads our config, and our class loads theirs back unchanged; the keys
    # that differ are not arguments of our __init__.
    scheduler = cls(**config)
    assert scheduler.compatibles and all(c is not None for c in scheduler.compatibles)
    init_keys = set(inspect.signature(cls.__init__).parameters)
    for comp_cls in scheduler.compatibles:
        if ".dummy_" in comp_cls.__module__:
            continue  # a placeholder for a scheduler whose optional backend (torchsde) is not installed
        comp = comp_cls.from_config(scheduler.config)
        back = cls.from_config(comp.config)
        assert {k: v for k, v in back.config.items() if k in scheduler.config} == dict(scheduler.config), comp_cls
        assert not {k for k in back.config if k not in scheduler.config} & init_keys


@pytest.mark.parametrize(("cls", "config"), CASES, ids=IDS)
def test_step_shape(cls, config):
    scheduler = cls(**config)
    sample = dummy_sample()
    outputs = [out.prev_sample for _, out in zip(range(2), walk(scheduler, sample))]
    assert outputs[0].shape == sample.shape == outputs[1].shape


@pytest.mark.parametrize(("cls", "config"), CASES, ids=IDS)
def test_scheduler_outputs_equivalence(cls, config):
    # test_scheduler_outputs_equivalence: the tuple form holds tensors or None only (diffusers' check calls
    # torch.allclose on every non-None item, so a bool raised a TypeError) and equals the dataclass field by field,
    # in field order (stricter than diffusers' zip with the dict values, which skips None fields). Exact.
    scheduler = cls(**config)
    sample = dummy_sample()
    for out_dict, out_tuple in zip(walk(scheduler, sample), walk(cls(**config), sample, return_dict=False)):
        assert isinstance(out_tuple, tuple)
        fields = [getattr(out_dict, f.name) for f in dataclasses.fields(out_dict)]
        assert len(out_tuple) == len(fields)
        for item, expected in zip(out_tuple, fields):
            assert item is None or isinstance(item, torch.Tensor), type(item)
            assert (item is None) == (expected is None)
            if item is not None:
                assert torch.allclose(item, expected, atol=0, rtol=0)
        # diffusers' own recursive check: zip the tuple with the dict's values
        for item, value in zip(out_tuple, out_dict.values()):
            if item is not None:
                assert torch.allclose(torch.nan_to_num(item), torch.nan_to_num(value), atol=1e-5)
        assert out_tuple[0] is not None and torch.equal(out_tuple[0], out_dict[0])


@pytest.mark.parametrize(("cls", "config"), CASES, ids=IDS)
def test_is_sde_is_a_property_of_the_output_not_a_tuple_item(cls, config):
    scheduler = cls(**config)
    for i, out in enumerate(walk(scheduler, dummy_sample())):
        assert out.is_sde == scheduler.is_sde_step(i) == (out.log_prob is not None)
        assert "is_sde" not in out.keys()


@pytest.mark.parametrize(("cls", "config"), CASES, ids=IDS)
def test_scheduler_public_api(cls, config):
    scheduler = cls(**config)
    sample = dummy_sample()
    assert scheduler.init_noise_sigma == 1.0
    assert scheduler.scale_model_input(sample, 0.0).shape == sample.shape
    assert hasattr(scheduler, "step") and cls.order == 1


@pytest.mark.parametrize(("cls", "config"), CASES, ids=IDS)
def test_add_noise_shape(cls, config):
    # test_add_noise_device: the forward process at a grid timestep keeps the shape (flow schedulers: scale_noise).
    scheduler = cls(**config)
    set_timesteps(scheduler)
    sample = dummy_sample()
    noise = torch.randn_like(sample)
    t = scheduler.timesteps[len(scheduler.timesteps) // 2][None]  # [5] in diffusers; a Flash tail has fewer steps
    noised = (
        scheduler.add_noise(sample, noise, t)
        if cls is MixDDIMSDEScheduler
        else scheduler.scale_noise(sample, t, noise)
    )
    assert noised.shape == sample.shape and not torch.equal(noised, sample)


@pytest.mark.parametrize("cls", [MixODESDEScheduler, MixDDIMSDEScheduler])
def test_deprecated_kwargs(cls):
    # No **kwargs in __init__ and no _deprecated_kwargs declared (diffusers requires both or neither).
    has_kwargs = "kwargs" in inspect.signature(cls.__init__).parameters
    assert has_kwargs == (len(cls._deprecated_kwargs) > 0)


def test_trained_betas_round_trip(tmp_path):
    scheduler = MixDDIMSDEScheduler(trained_betas=np.array([0.1, 0.3]))
    scheduler.save_pretrained(tmp_path)
    assert MixDDIMSDEScheduler.from_pretrained(tmp_path).betas.tolist() == scheduler.betas.tolist()


@pytest.mark.parametrize("cls", [MixODESDEScheduler, MixDDIMSDEScheduler])
def test_getattr_is_correct(cls):
    # test_getattr_is_correct: instance attributes read silently, config attributes with a FutureWarning, unknown
    # names raise AttributeError with the standard message.
    scheduler = cls()
    scheduler.dummy_attribute = 5
    scheduler.register_to_config(test_attribute=5)
    diffusers_logging.set_verbosity_warning()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scheduler.dummy_attribute == 5
        assert scheduler.save_pretrained == getattr(scheduler, "save_pretrained")  # noqa: B009
    with pytest.warns(FutureWarning):
        assert scheduler.test_attribute == 5
    with pytest.raises(AttributeError) as error:
        scheduler.does_not_exist  # noqa: B018
    assert str(error.value) == f"'{cls.__name__}' object has no attribute 'does_not_exist'"
