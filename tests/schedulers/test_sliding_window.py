"""SlidingWindowSchedule: where MixGRPO's SDE window is at each training iteration."""

import copy
import json
import math

import pytest

from diffusers_mixgrpo.schedulers.sliding_window import SlidingWindowSchedule


def run(schedule: SlidingWindowSchedule, iterations: int) -> list[tuple[int, int]]:
    windows = []
    for _ in range(iterations):
        windows.append(schedule.current())
        schedule.step()
    return windows


def test_progressive_reproduces_reference_sequence():
    # MixGRPO's released script: N = 25, K = 4, tau = 25, stride 1, roll back; 300 training iterations.
    schedule = SlidingWindowSchedule(num_inference_steps=25, window_size=4, shift_interval=25, stride=1)
    expected = [(i // 25, 4) for i in range(300)]
    assert run(schedule, 300) == expected
    assert schedule.current() == (12, 4)


def test_progressive_rolls_back_after_max_start():
    schedule = SlidingWindowSchedule(num_inference_steps=25, window_size=4, shift_interval=25)
    starts = [start for start, _ in run(schedule, 2 * 24 * 25)]
    # Starts 0..23 (max_start = N - 2), 25 iterations each, then the same again from 0.
    assert starts == [i // 25 for i in range(24 * 25)] * 2


def test_window_is_cut_short_before_the_last_step():
    schedule = SlidingWindowSchedule(num_inference_steps=25, window_size=4, shift_interval=1)
    windows = run(schedule, 24)
    assert windows[20] == (20, 4)  # covers 20..23 = N - 2
    assert windows[21] == (21, 3)
    assert windows[22] == (22, 2)
    assert windows[23] == (23, 1)  # the highest start keeps one step, never an empty window
    assert schedule.current() == (0, 4)
    assert schedule.last_index == 23


def test_stride_zero_freezes_the_window():
    schedule = SlidingWindowSchedule(num_inference_steps=25, window_size=4, shift_interval=20, stride=0)
    assert set(run(schedule, 500)) == {(0, 4)}


def test_stride_two_moves_two_steps_per_interval():
    schedule = SlidingWindowSchedule(num_inference_steps=10, window_size=2, shift_interval=3, stride=2)
    starts = [start for start, _ in run(schedule, 15)]
    # max_start = 8; 8 + 2 > 8 rolls back.
    assert starts == [0] * 3 + [2] * 3 + [4] * 3 + [6] * 3 + [8] * 3
    assert schedule.current() == (0, 2)


def test_without_roll_back_the_window_stays_at_max_start():
    schedule = SlidingWindowSchedule(num_inference_steps=6, window_size=2, shift_interval=2, roll_back=False)
    starts = [start for start, _ in run(schedule, 20)]
    assert starts == [0, 0, 1, 1, 2, 2, 3, 3] + [4] * 12
    assert schedule.current() == (4, 1)


def test_custom_max_start_bounds_the_slide_not_the_window():
    schedule = SlidingWindowSchedule(num_inference_steps=25, window_size=4, shift_interval=1, max_start=10)
    windows = run(schedule, 12)
    assert windows[10] == (10, 4)
    assert windows[11] == (0, 4)


def test_random_is_seeded_and_windows_fit_whole():
    a = run(SlidingWindowSchedule(25, 4, strategy="random", seed=3), 200)
    b = run(SlidingWindowSchedule(25, 4, strategy="random", seed=3), 200)
    c = run(SlidingWindowSchedule(25, 4, strategy="random", seed=4), 200)
    assert a == b
    assert a != c
    starts = {start for start, _ in a}
    assert all(size == 4 for _, size in a)
    assert min(starts) == 0 and max(starts) == 20  # last start whose window ends at N - 2 = 23
    assert len(starts) == 21


def test_random_resumes_exactly_from_state_dict():
    schedule = SlidingWindowSchedule(25, 4, strategy="random", seed=11)
    run(schedule, 37)
    state = json.loads(json.dumps(schedule.state_dict()))  # checkpoints go through JSON/pickle
    continuation = run(schedule, 50)

    resumed = SlidingWindowSchedule(25, 4, strategy="random", seed=999)
    resumed.load_state_dict(state)
    assert resumed.iteration == 37
    assert run(resumed, 50) == continuation


@pytest.mark.parametrize("strategy", ["progressive", "decay", "exp_decay"])
def test_deterministic_strategies_resume_mid_interval(strategy):
    kwargs = {"num_inference_steps": 25, "window_size": 4, "shift_interval": 7, "strategy": strategy}
    schedule = SlidingWindowSchedule(**kwargs)
    run(schedule, 52)
    state = copy.deepcopy(schedule.state_dict())
    assert state["iter_in_interval"] != 0
    continuation = run(schedule, 400)
    resumed = SlidingWindowSchedule(**kwargs)
    resumed.load_state_dict(state)
    assert run(resumed, 400) == continuation


def test_decay_interval_shrinks_linearly():
    schedule = SlidingWindowSchedule(
        25, 4, shift_interval=25, strategy="decay", max_shift_interval=10, min_shift_interval=1
    )
    intervals = []
    for w in range(24):
        schedule.start = w
        intervals.append(schedule.interval)
    assert intervals == [max(1, int(10 * (1 - w / 23) + 1 * w / 23)) for w in range(24)]
    assert intervals[0] == 10 and intervals[-1] == 1


def test_decay_defaults_and_sequence():
    schedule = SlidingWindowSchedule(25, 4, shift_interval=20, strategy="decay")
    assert (schedule.max_shift_interval, schedule.min_shift_interval) == (20, 5)
    starts = [start for start, _ in run(schedule, 200)]
    # Each start w is held for the interval computed at w.
    expected = []
    for w in range(24):
        expected += [w] * max(5, int(20 * (1 - w / 23) + 5 * w / 23))
    assert starts == expected[:200]


def test_exp_decay_interval_values():
    schedule = SlidingWindowSchedule(25, 4, shift_interval=25, strategy="exp_decay")
    values = {}
    for w in (0, 13, 14, 18, 23):
        schedule.start = w
        values[w] = schedule.interval
    assert values[0] == values[13] == 25
    assert values[14] == math.ceil(25 * math.exp(-0.1))  # 23
    assert values[18] == math.ceil(25 * math.exp(-0.5))  # 16
    assert values[23] == math.ceil(25 * math.exp(-1.0))  # 10
    schedule.exp_decay_k = 100.0
    assert schedule.interval == 1


def test_exp_decay_sequence():
    schedule = SlidingWindowSchedule(25, 4, shift_interval=3, strategy="exp_decay", exp_decay_k=0.5)
    starts = [start for start, _ in run(schedule, 60)]
    expected = []
    for w in range(24):
        expected += [w] * math.ceil(3 * math.exp(-0.5 * max(0, w - 13)))
    assert len(expected) == 54  # 14 starts x 3, then 3, 2, 2, 1, 1, ... after w_thr = 13
    assert starts == (expected + expected)[:60]


def test_repr_names_strategy_and_window():
    text = repr(SlidingWindowSchedule(25, 4))
    assert "progressive" in text and "window=[0, 4)" in text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_inference_steps": 1}, "num_inference_steps"),
        ({"num_inference_steps": 25, "window_size": 0}, "window_size"),
        ({"num_inference_steps": 25, "window_size": 25}, "window_size"),
        ({"num_inference_steps": 25, "shift_interval": 0}, "shift_interval"),
        ({"num_inference_steps": 25, "stride": -1}, "stride"),
        ({"num_inference_steps": 25, "strategy": "linear"}, "strategy"),
        ({"num_inference_steps": 25, "max_start": 24}, "max_start"),
        ({"num_inference_steps": 25, "max_start": -1}, "max_start"),
        ({"num_inference_steps": 25, "min_shift_interval": 0}, "min_shift_interval"),
        ({"num_inference_steps": 25, "min_shift_interval": 30}, "min_shift_interval"),
        ({"num_inference_steps": 25, "exp_decay_k": -0.1}, "exp_decay_k"),
        ({"num_inference_steps": 25, "exp_decay_threshold": -1}, "exp_decay_threshold"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SlidingWindowSchedule(**kwargs)


def test_load_state_dict_rejects_bad_state():
    schedule = SlidingWindowSchedule(25, 4)
    state = schedule.state_dict()
    with pytest.raises(ValueError, match="start"):
        schedule.load_state_dict({**state, "start": 24})
    with pytest.raises(ValueError, match="strategy"):
        schedule.load_state_dict({**state, "strategy": "random"})
    with pytest.raises(ValueError, match="missing"):
        schedule.load_state_dict({"start": 0})
