"""SDE steps other than the sliding window: `set_sde_steps` on the schedulers (gaps between SDE steps, the Flash tail
after the last one) and `SDEStepSchedule` (a fixed list, or a count drawn per iteration from (seed, step) only)."""

import random

import numpy as np
import pytest
import torch

from diffusers_mixgrpo import MixDDIMSDEScheduler, MixODESDEScheduler
from diffusers_mixgrpo.schedulers.sde_steps import SDEStepSchedule
from diffusers_mixgrpo.schedulers.sliding_window import SlidingWindowSchedule


def flow(**kwargs) -> MixODESDEScheduler:
    return MixODESDEScheduler(shift=3.0, **kwargs)


# -- the schedulers ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [flow, MixDDIMSDEScheduler])
def test_only_the_listed_steps_are_sde_steps(make):
    sched = make()
    sched.set_sde_steps([0, 3, 5])
    sched.set_timesteps(10)
    assert sched.sde_steps == [0, 3, 5]
    assert sched.sde_window == (0, 6)  # the span
    assert [i for i in range(10) if sched.is_sde_step(i)] == [0, 3, 5]
    assert sched.sde_step_mask.nonzero().flatten().tolist() == [0, 3, 5]


@pytest.mark.parametrize("make", [flow, MixDDIMSDEScheduler])
def test_consecutive_steps_are_the_window_they_form(make):
    a, b = make(), make()
    a.set_sde_steps([2, 3, 4])
    b.set_sde_window(2, 3)
    a.set_timesteps(10)
    b.set_timesteps(10)
    assert a.sde_window == b.sde_window == (2, 5)
    assert torch.equal(a.sde_step_mask, b.sde_step_mask)
    assert a._sde_step_set is None  # stored as a plain window


def test_set_sde_window_after_set_sde_steps_forgets_the_list():
    sched = flow()
    sched.set_timesteps(10)
    sched.set_sde_steps([1, 4])
    sched.set_sde_window(2, 2)
    assert sched.sde_steps == [2, 3]


def test_flash_tail_starts_after_the_last_sde_step():
    """The tail after [1, 3] (r = 0.4, N = 10) is the tail after the window [2, 4), whose last step is also 3; the
    gap step 2 is an ODE step of the uncompressed grid."""
    gaps, window = flow(tail_ratio=0.4, tail_solver="dpmsolver++"), flow(tail_ratio=0.4, tail_solver="dpmsolver++")
    gaps.set_sde_steps([1, 3])
    window.set_sde_window(2, 2)
    gaps.set_timesteps(10)
    window.set_timesteps(10)
    assert torch.equal(gaps.sigmas, window.sigmas)  # same grid: uncompressed up to sigma_4, then the same tail
    # steps 0..3 of the grid, then floor((10 - 3) * 0.4) = 2 tail points: one tail step, to sigma 0
    assert len(gaps.timesteps) == 4 + 1
    assert [i for i in range(len(gaps.timesteps)) if gaps.is_sde_step(i)] == [1, 3]


def test_a_rollout_with_gaps_runs_the_ode_between_the_sde_steps():
    """Stepping by hand: the gap steps are Euler (deterministic), the SDE steps draw noise and return a log-prob, and
    recomputing an SDE step's log-prob from the recorded latents gives the same value bit for bit."""
    sched = flow(record_trajectory=True)
    sched.set_sde_steps([0, 3])
    sched.set_timesteps(6)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, generator=g)
    velocity = torch.randn(2, 4, 8, generator=g)
    for i, t in enumerate(sched.timesteps):
        before = x
        out = sched.step(velocity, t, x, generator=g)
        x = out.prev_sample
        assert out.is_sde == (i in (0, 3))
        if not out.is_sde:
            euler = before + (sched.sigmas[i + 1] - sched.sigmas[i]) * velocity
            torch.testing.assert_close(x, euler, rtol=0, atol=0)
    traj = sched.trajectory
    assert sorted(traj.log_probs) == [0, 3]
    for i, x_t, x_next, log_prob in traj.sde_transitions():
        again, _, _ = sched.step_log_prob(velocity, x_t, x_next, i)
        assert torch.equal(again, log_prob)


@pytest.mark.parametrize(
    "steps, message",
    [([3, 1], "sorted and unique"), ([1, 1], "sorted and unique"), ([-1], "integers >= 0"), ([0, 10], "outside")],
)
def test_bad_sde_steps_are_refused(steps, message):
    sched = flow()
    sched.set_timesteps(10)
    with pytest.raises(ValueError, match=message):
        sched.set_sde_steps(steps)


def test_a_listed_step_past_a_later_grid_is_refused_not_cut_short():
    sched = flow()
    sched.set_sde_steps([1, 8])
    with pytest.raises(ValueError, match="outside the 6-step grid"):
        sched.set_timesteps(6)


# -- SDEStepSchedule --------------------------------------------------------------------------------------------------


def test_fixed_steps_are_the_same_at_every_iteration():
    schedule = SDEStepSchedule(25, steps=[0, 3, 5, 9])
    seen = []
    for _ in range(5):
        seen.append(schedule.indices())
        schedule.step()
    assert seen == [[0, 3, 5, 9]] * 5
    assert schedule.current() == (0, 4)


def test_window_layout_draws_consecutive_steps_inside_the_range():
    """Flow-GRPO-Fast: K from the candidates, a start uniform in [low, high - K]; every start is reached."""
    schedule = SDEStepSchedule(10, num_steps=[2, 3], step_range=[0, 5], layout="window", seed=7)
    counts, starts = set(), set()
    for k in range(400):
        steps = schedule.draw(k)
        assert steps == list(range(steps[0], steps[0] + len(steps)))
        assert 0 <= steps[0] and steps[-1] < 5
        counts.add(len(steps))
        starts.add((len(steps), steps[0]))
    assert counts == {2, 3}
    assert starts == {(2, s) for s in range(4)} | {(3, s) for s in range(3)}


def test_scattered_layout_draws_distinct_steps_with_gaps():
    schedule = SDEStepSchedule(25, num_steps=[4], step_range=[2, 20], layout="scattered", seed=1)
    draws = [schedule.draw(k) for k in range(200)]
    assert all(len(d) == 4 and d == sorted(set(d)) and 2 <= d[0] and d[-1] < 20 for d in draws)
    assert any(d != list(range(d[0], d[0] + 4)) for d in draws)  # gaps occur
    assert {i for d in draws for i in d} == set(range(2, 20))  # the whole pool is reached


def test_draws_depend_on_seed_and_step_only_not_on_the_global_random_state():
    """Two ranks build the schedule from the same config; whatever their global RNGs hold (they differ between
    ranks: per-rank data order, dropout, ...), they draw the same steps at every iteration."""
    kwargs = dict(num_inference_steps=16, num_steps=[1, 2, 3], step_range=[0, 8], seed=5)
    rank0, rank1 = SDEStepSchedule(**kwargs), SDEStepSchedule(**kwargs)
    draws0, draws1 = [], []
    for k in range(20):
        torch.manual_seed(k), np.random.seed(k), random.seed(k)
        draws0.append(rank0.indices())
        torch.manual_seed(1000 + k), np.random.seed(1000 + k), random.seed(1000 + k)
        torch.rand(3), np.random.rand(3)  # consume some global randomness on "rank 1"
        draws1.append(rank1.indices())
        rank0.step(), rank1.step()
    assert draws0 == draws1
    assert len({tuple(d) for d in draws0}) > 3  # and they do vary
    other_seed = SDEStepSchedule(**{**kwargs, "seed": 6})
    assert [other_seed.draw(k) for k in range(20)] != draws0


def test_state_dict_resumes_the_same_draw_sequence():
    straight = SDEStepSchedule(12, num_steps=[1, 2], seed=3)
    sequence = []
    for _ in range(8):
        sequence.append(straight.indices())
        straight.step()
    first = SDEStepSchedule(12, num_steps=[1, 2], seed=3)
    for _ in range(3):
        first.step()
    resumed = SDEStepSchedule(12, num_steps=[1, 2], seed=3)
    resumed.load_state_dict(first.state_dict())
    tail = []
    for _ in range(5):
        tail.append(resumed.indices())
        resumed.step()
    assert tail == sequence[3:]
    assert resumed.state_dict() == straight.state_dict()


def test_a_sliding_window_state_is_refused_by_the_step_schedule():
    schedule = SDEStepSchedule(12, steps=[0, 2])
    with pytest.raises(ValueError, match="not saved by an SDEStepSchedule"):
        schedule.load_state_dict(SlidingWindowSchedule(12).state_dict())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=[0, 11]), r"steps=\[0, 11\] is not allowed"),  # 11 = N - 1 is never trained
        (dict(steps=[2, 1]), "sorted"),
        (dict(steps=[]), "non-empty"),
        (dict(num_steps=[0]), r"\[1, 11\]"),
        (dict(num_steps=[4], step_range=[0, 3]), r"\[1, 3\]"),
        (dict(num_steps=[1], step_range=[3, 3]), "step_range"),
        (dict(num_steps=[1], layout="spread"), "layout"),
        (dict(steps=[1], num_steps=[1]), "exactly one"),
        (dict(), "exactly one"),
    ],
)
def test_bad_schedule_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SDEStepSchedule(12, **kwargs)
