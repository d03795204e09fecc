"""Where the toy world's base model comes from: the weights shipped with the package, a local cache, or one training
run (`toy_world.train_base`) when neither has them."""

import os
from pathlib import Path
from typing import Optional, Union

import torch

from .base_model import ASSETS_DIR
from .train_base import build_toy_base_pipeline


def default_cache_dir() -> Path:
    """Where a locally rebuilt base model is cached (``$DIFFUSERS_MIXGRPO_CACHE`` or ``~/.cache/diffusers_mixgrpo``)."""
    root = os.environ.get("DIFFUSERS_MIXGRPO_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "diffusers_mixgrpo"
    )
    return Path(root) / "toy_flux_base"


def _is_pipeline_dir(path: Path) -> bool:
    return (path / "model_index.json").is_file() and (path / "transformer").is_dir()


def load_toy_base_pipeline(
    path: Optional[Union[str, os.PathLike]] = None,
    dtype: torch.dtype = torch.float32,
    rebuild_if_missing: bool = True,
):
    """Load the trained toy-world FLUX base model as a `FluxPipeline`, fully offline.

    Looks in `path` if given, else in the weights shipped with the package
    (``diffusers_mixgrpo/toy_world/assets/toy_flux_base``), else in the cache (`default_cache_dir()`). If none has
    it and `rebuild_if_missing`, trains it with the default recipe (about 4 minutes on 2 idle CPU cores) and caches it.

    Sample with ``pipe(prompts, **TOY_PIPELINE_CALL_KWARGS)`` (32x32, guidance 3.5, 10 steps, 16 text tokens).
    """
    from diffusers import FluxPipeline

    candidates = [Path(path)] if path is not None else [ASSETS_DIR, default_cache_dir()]
    for candidate in candidates:
        if _is_pipeline_dir(candidate):
            pipe = FluxPipeline.from_pretrained(candidate, dtype=dtype, local_files_only=True)
            pipe.set_progress_bar_config(disable=True)
            return pipe
    if path is not None or not rebuild_if_missing:
        raise FileNotFoundError(
            f"No toy base pipeline in {', '.join(str(c) for c in candidates)}. Build it with "
            "`python -m diffusers_mixgrpo.toy_world.train_base --output_dir <dir>`."
        )
    target = default_cache_dir()
    print(
        f"The toy-world base model is not shipped with this install; training it now (about 4 minutes on 2 idle CPU "
        f"cores, longer on a busy machine) and caching it in {target}."
    )
    build_toy_base_pipeline(output_dir=target, progress=True)
    return load_toy_base_pipeline(target, dtype=dtype, rebuild_if_missing=False)
