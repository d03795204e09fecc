"""The first-update consistency check (`training/consistency.py`): the on-policy ratio of the first accumulation group,
max over ranks, stops the run before any parameter change when the recompute is not the rollout's function."""

import math
from types import SimpleNamespace

import pytest
import torch

from diffusers_mixgrpo import GRPOTrainingPipeline
from diffusers_mixgrpo.toy_world.base_model import TOY_GUIDANCE_SCALE, TOY_MAX_SEQUENCE_LENGTH
from diffusers_mixgrpo.toy_world.base_weights import load_toy_base_pipeline
from diffusers_mixgrpo.toy_world.world import train_prompts
from diffusers_mixgrpo.training.consistency import RATIO_CHECK_TOLERANCES, RatioCheck, default_ratio_tolerance
from diffusers_mixgrpo.training.errors import TrainingStopped
from diffusers_mixgrpo.training.trainer import GRPOTrainer
from testing_utils import lora_weights, tiny_config

PROMPTS = train_prompts(8, seed=0)
ONE_PROCESS = SimpleNamespace(num_processes=1, device=torch.device("cpu"))


def toy_trainer(tmp_path, **overrides) -> GRPOTrainer:
    """The toy model (its 10 steps, 32 px) with 2 prompts x 4 images and a window of 2 at 0."""
    values = dict(
        method="mixgrpo",
        num_inference_steps=10,
        num_generations=4,
        sample_prompts_per_device=2,
        guidance_scale=TOY_GUIDANCE_SCALE,
        shift=None,
        learning_rate=1e-3,
        max_train_steps=1,
        seed=3,
    )
    pipe = GRPOTrainingPipeline.from_pipe(load_toy_base_pipeline())
    pipe.max_sequence_length = TOY_MAX_SEQUENCE_LENGTH
    config = tiny_config(tmp_path / "run", **{**values, **overrides})
    return GRPOTrainer(config, pipe, rewards={"toy_preference": 1.0}, train_prompts=PROMPTS)


def perturb_eta_after_rollout(trainer, eta: float) -> None:
    """The recompute runs with another SDE noise level than the rollout (a scheduler configured differently)."""
    rollout = trainer._rollout

    def perturbed(*args, **kwargs):
        batch = rollout(*args, **kwargs)
        trainer.pipeline.scheduler.register_to_config(eta=eta)
        trainer.pipeline._log_prob_sched_cache = None
        return batch

    trainer._rollout = perturbed


def recompute_in(trainer, dtype: torch.dtype) -> None:
    """The recompute runs under autocast `dtype` while the rollout ran in float32 (mixed precision differs)."""
    log_prob = trainer.pipeline.log_prob
    trainer.pipeline.log_prob = lambda *a, autocast_dtype=None, **k: log_prob(*a, autocast_dtype=dtype, **k)


@pytest.mark.parametrize("train_batch_size, accumulation", [(None, 1), (1, 8)])
def test_the_toy_run_passes_the_check_at_its_first_update(tmp_path, train_batch_size, accumulation):
    # with train_batch_size=1 the first accumulation group holds all 8 samples, one forward each
    trainer = toy_trainer(tmp_path, train_batch_size=train_batch_size, gradient_accumulation_steps=accumulation)
    logs = trainer.train_step()
    # measured: 0 with the rollout's chunks as micro-batches, 1.2e-7 (one float32 ulp) with train_batch_size=1
    assert logs["train/ratio_check_deviation"] <= 2.4e-7
    assert logs["train/ratio_check_deviation"] < RATIO_CHECK_TOLERANCES["no"]
    assert "train/ratio_check_deviation" not in trainer.train_step()  # default: the first update only


def test_a_recompute_with_another_eta_stops_the_run_before_any_parameter_change(tmp_path):
    trainer = toy_trainer(tmp_path)
    perturb_eta_after_rollout(trainer, eta=0.8)  # the rollout's is 0.7: measured max |log ratio| 3.1e-2
    before = lora_weights(trainer)
    with pytest.raises(TrainingStopped) as err:
        trainer.train_step()
    message = str(err.value)
    for text in (
        "max |log ratio| = ",
        "ratio_check_tolerance=0.0001",
        "precision",
        "attention backend",
        "torch.compile",
        "dropout or train mode",
        "scheduler",
        "ratio_check_steps=0",
    ):
        assert text in message, text
    after = lora_weights(trainer)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_a_bf16_recompute_of_a_float32_rollout_stops_the_run(tmp_path):
    trainer = toy_trainer(tmp_path)
    recompute_in(trainer, torch.bfloat16)  # measured max |log ratio| 4.3e-4 on the toy model, tolerance 1e-4
    with pytest.raises(TrainingStopped, match=r"mixed_precision='no'"):
        trainer.train_step()


def test_the_check_can_be_skipped_or_loosened(tmp_path):
    skipped = toy_trainer(tmp_path / "a", ratio_check_steps=0)
    perturb_eta_after_rollout(skipped, eta=0.8)
    assert "train/ratio_check_deviation" not in skipped.train_step()
    loosened = toy_trainer(tmp_path / "b", ratio_check_tolerance=0.1)
    perturb_eta_after_rollout(loosened, eta=0.8)
    deviation = loosened.train_step()["train/ratio_check_deviation"]
    assert 1e-2 < deviation < 0.1  # measured 3.1e-2


def test_ratio_check_steps_checks_the_first_update_and_every_nth_step():
    check = RatioCheck(every=3, tolerance=1e-4)
    assert [check.due(s) for s in (5, 6, 7)] == [True, True, True]  # until the run's first update is checked
    check.begin(5)
    assert check.finish(ONE_PROCESS) == 0.0
    assert [check.due(s) for s in (6, 7, 8, 9)] == [True, False, False, True]
    first_only, never = RatioCheck(every=None, tolerance=1e-4), RatioCheck(every=0, tolerance=1e-4)
    first_only.begin(0)
    first_only.finish(ONE_PROCESS)
    assert not first_only.due(1) and not first_only.due(100)
    assert not never.due(0)
    never.begin(0)
    assert never.finish(ONE_PROCESS) is None


def test_observe_takes_the_largest_log_ratio_and_ignores_nan():
    check = RatioCheck(every=None, tolerance=1e-3)
    check.begin(0)
    check.observe(torch.tensor(1 - 2e-4), torch.tensor(1 + 1e-4))
    check.observe(torch.tensor(float("nan")), torch.tensor(float("nan")))  # left to the non-finite handling
    assert check.finish(ONE_PROCESS) == pytest.approx(-math.log(1 - 2e-4), rel=1e-3)  # float32 ratios
    check.every = 1
    check.begin(1)
    check.observe(torch.tensor(0.0), torch.tensor(1.0))  # a ratio of 0: infinitely far
    with pytest.raises(TrainingStopped, match="inf"):
        check.finish(ONE_PROCESS)


def test_a_sum_reduction_compares_the_log_ratio_per_latent_element():
    check = RatioCheck(every=1, tolerance=1e-4)
    check.begin(0, elements=1024)
    check.observe(torch.tensor(1.0), torch.tensor(math.exp(0.05)))  # 0.05 / 1024 = 4.9e-5 per element
    assert check.finish(ONE_PROCESS) == pytest.approx(0.05 / 1024)
    check.begin(1, elements=1)
    check.observe(torch.tensor(1.0), torch.tensor(math.exp(0.05)))
    with pytest.raises(TrainingStopped):
        check.finish(ONE_PROCESS)


def test_default_tolerances_follow_the_training_precision():
    assert default_ratio_tolerance("no", "cpu") == 1e-4
    assert default_ratio_tolerance("fp16", "cpu") == 1e-3
    assert default_ratio_tolerance("bf16", "cuda") == 1e-2
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        assert default_ratio_tolerance("no", "cuda") == 1e-3  # TF32 matmuls: fp16's mantissa
        torch.backends.cuda.matmul.allow_tf32 = False
        assert default_ratio_tolerance("no", "cuda") == 1e-4
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def test_every_rank_stops_when_one_rank_sees_a_large_ratio(tmp_path):
    """The max over ranks: a deviation on rank 1 alone stops rank 0 as well (no rank steps while another stops)."""
    import torch.multiprocessing as mp
    from ratio_check_ranks_script import check_on_rank  # a light module: the spawned ranks import it, not this file

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(check_on_rank, args=(str(tmp_path / "pg"), results), nprocs=2, join=True)
        outcome = dict(results)
    assert outcome.keys() == {0, 1}
    assert all("max |log ratio| = 0.405" in message for message in outcome.values()), outcome  # log(1.5)
