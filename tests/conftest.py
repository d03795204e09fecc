"""Fixtures shared by the test files. The plain helpers are in `testing_utils.py`, imported as `testing_utils`: pytest
puts this folder on `sys.path` for its conftest (no `__init__.py`, the default "prepend" import mode)."""

import pytest

from testing_utils import load_example


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory):
    """A tiny FLUX.1 pipeline (`build_tiny_flux_pipeline()`) saved to a folder, as a model id for the scripts."""
    from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline

    path = tmp_path_factory.mktemp("tiny_flux") / "model"
    build_tiny_flux_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def eval_rewards_script():
    """`examples/eval_rewards.py` as a module: `main(argv)` is the documented command (`mixgrpo-eval`)."""
    return load_example("eval_rewards.py")
