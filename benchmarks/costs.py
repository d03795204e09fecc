"""Expected per-iteration costs of the four GRPO variants, from the NFE counts of the algorithm notes (section 7).

Pure Python (no torch): the benchmark prints these next to what it measures, and `BENCHMARKS.md`'s scaling note is
derived from them. A *rollout* is one image; an *iteration* is P prompts x G rollouts plus the training pass.
"""

import math
from dataclasses import dataclass

VARIANTS = ("dancegrpo", "mixgrpo", "flash", "flash_star")
LABELS = {
    "dancegrpo": "DanceGRPO-style",
    "mixgrpo": "MixGRPO",
    "flash": "MixGRPO-Flash",
    "flash_star": "MixGRPO-Flash*",
}
# What the presets of `GRPOConfig` set (training/presets.py, METHOD_PRESETS), repeated here so that the expected
# values are computed independently of the code under test.
TAIL_RATIO = {"dancegrpo": None, "mixgrpo": None, "flash": 0.4, "flash_star": 0.2}
SHIFT_INTERVAL = {"dancegrpo": 25, "mixgrpo": 25, "flash": 20, "flash_star": 20}
STRIDE = {"dancegrpo": 0, "mixgrpo": 1, "flash": 1, "flash_star": 0}
DANCE_TRAIN_FRACTION = 0.6
PAPER_RUN_ITERATIONS = 300  # GRPOConfig.max_train_steps default, the length of a paper-like run


@dataclass(frozen=True)
class ExpectedNFE:
    """Expected model evaluations. `sampling_*`: forward only; `training_*`: forward + backward."""

    window: tuple[int, int]  # (start, size)
    steps_per_rollout: int  # M, the steps a rollout runs (M < N when the Flash tail compresses)
    sampling_per_rollout: float  # per image, prefix sharing amortised over the group
    training_per_rollout: int
    sampling_per_iteration: float
    training_per_iteration: int


def window_of(method: str, num_steps: int, window_size: int, start: int) -> tuple[int, int]:
    """The `(start, size)` of the SDE window: DanceGRPO covers every trainable step; others are cut at N - 2."""
    if method == "dancegrpo":
        return 0, num_steps - 1
    start = min(start, num_steps - 2)
    return start, min(window_size, num_steps - 1 - start)


def steps_per_rollout(method: str, num_steps: int, window: tuple[int, int]) -> int:
    """M: uncompressed steps up to the window's end, then the Flash tail of `max(n - 1, 1)` steps (notes section 4)."""
    ratio = TAIL_RATIO[method]
    if ratio is None:
        return num_steps
    start, size = window
    last_sde = start + size - 1  # e
    n = math.floor(max((num_steps - last_sde) * ratio, 1))
    return last_sde + 1 + max(n - 1, 1)


def expected_nfe(
    method: str,
    num_steps: int = 25,
    window_size: int = 4,
    start: int = 0,
    group_size: int = 12,
    num_prompts: int = 1,
    share_prefix: bool = False,
) -> ExpectedNFE:
    """Expected NFE of one rollout and one iteration with the window at `start`."""
    window = window_of(method, num_steps, window_size, start)
    m = steps_per_rollout(method, num_steps, window)
    prefix = window[0]
    if share_prefix:
        sampling_group = prefix + group_size * (m - prefix)  # the pre-window ODE once per prompt
    else:
        sampling_group = group_size * m
    if method == "dancegrpo":
        trained = max(1, int(window[1] * DANCE_TRAIN_FRACTION))
    else:
        trained = window[1]
    return ExpectedNFE(
        window=window,
        steps_per_rollout=m,
        sampling_per_rollout=sampling_group / group_size,
        training_per_rollout=trained,
        sampling_per_iteration=float(num_prompts * sampling_group),
        training_per_iteration=num_prompts * group_size * trained,
    )


def progressive_starts(method: str, num_steps: int = 25, iterations: int = PAPER_RUN_ITERATIONS) -> list[int]:
    """Window start at each iteration of a progressive run (stride S every tau iterations, roll back past N - 2)."""
    stride, tau, max_start = STRIDE[method], SHIFT_INTERVAL[method], num_steps - 2
    starts, w = [], 0
    for k in range(iterations):
        starts.append(w)
        if (k + 1) % tau == 0:
            w += stride
            if w > max_start:
                w = 0
    return starts


def mid_run_start(method: str, num_steps: int = 25, iterations: int = PAPER_RUN_ITERATIONS) -> int:
    """The window start halfway through a progressive run: MixGRPO 6, Flash 7, Flash* and DanceGRPO 0 at N = 25."""
    return progressive_starts(method, num_steps, iterations)[iterations // 2]


def cost_units(nfe: ExpectedNFE, backward_factor: float = 3.0) -> float:
    """Per-iteration cost in forward-pass units: sampling + `backward_factor` x training (forward + backward)."""
    return nfe.sampling_per_iteration + backward_factor * nfe.training_per_iteration


def schedule_average_cost(
    method: str,
    num_steps: int = 25,
    window_size: int = 4,
    group_size: int = 12,
    share_prefix: bool = False,
    backward_factor: float = 3.0,
    iterations: int = PAPER_RUN_ITERATIONS,
) -> float:
    """Mean per-iteration cost (forward units) over the window starts a `iterations`-long progressive run visits."""
    starts = progressive_starts(method, num_steps, iterations)
    total = 0.0
    for w in starts:
        nfe = expected_nfe(method, num_steps, window_size, w, group_size, 1, share_prefix)
        total += cost_units(nfe, backward_factor)
    return total / len(starts)
