"""Timestep grids of the flow-matching families: the stock pipelines' `sigmas` and resolution-dependent `mu`."""

from collections.abc import Callable

import numpy as np


def linear_sigmas(num_inference_steps: int) -> np.ndarray:
    """`linspace(1, 1/N, N)`: the sigmas FLUX.1, FLUX.2 and Qwen-Image pass to `set_timesteps`."""
    return np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)


def shift_mu(scheduler_config, image_seq_len: int, calculate_shift: Callable, max_shift: float = 1.15) -> float:
    """The stock `mu` for dynamic shifting: the pipeline module's `calculate_shift` on the image sequence length, with
    the scheduler config's base / max sequence lengths and shifts (`max_shift`: the pipeline's fallback)."""
    return calculate_shift(
        image_seq_len,
        scheduler_config.get("base_image_seq_len", 256),
        scheduler_config.get("max_image_seq_len", 4096),
        scheduler_config.get("base_shift", 0.5),
        scheduler_config.get("max_shift", max_shift),
    )
