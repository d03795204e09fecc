"""The training-health warnings (`training/health_warnings.py`, the zero-spread streak in `training/health.py`): what
triggers each, that each names its number and fix, is logged once, and that a healthy toy run logs none."""

import logging
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from diffusers_mixgrpo import GRPOTrainingPipeline
from diffusers_mixgrpo.toy_world.base_model import TOY_GUIDANCE_SCALE, TOY_MAX_SEQUENCE_LENGTH
from diffusers_mixgrpo.toy_world.base_weights import load_toy_base_pipeline
from diffusers_mixgrpo.toy_world.world import train_prompts
from diffusers_mixgrpo.training.config import GRPOConfig
from diffusers_mixgrpo.training.errors import ConfigError
from diffusers_mixgrpo.training.health import (
    ZERO_SPREAD_WARN_STEPS,
    RunHealth,
    zero_spread_share,
)
from diffusers_mixgrpo.training.health_warnings import (
    GradientWarning,
    check_fp16_loss_scaling,
    gradient_rms,
    warn_small_lora_update,
)
from diffusers_mixgrpo.training.trainer import GRPOTrainer
from testing_utils import brightness, tiny_config, tiny_flux_trainer

#: A phrase of each warning, to find it among the run's log records.
WARNINGS = {
    "lora update": "learning_rate * lora_alpha / lora_rank",
    "gradient": "below adam_epsilon",
    "zero spread": "zero reward spread",
    "fp16": "without a gradient scaler",
    "constant rewards": "every advantage is 0",
}


def warnings_logged(caplog) -> set:
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return {name for name, phrase in WARNINGS.items() if any(phrase in m for m in messages)}


# -- the LoRA update size -----------------------------------------------------------------------------------------


def test_a_lora_update_too_small_to_move_a_pixel_warns_with_the_product_and_the_fix(tmp_path, caplog):
    config = GRPOConfig(output_dir=str(tmp_path), learning_rate=2e-7, lora_alpha=4, lora_rank=8)
    with caplog.at_level(logging.WARNING):
        assert warn_small_lora_update(config) == pytest.approx(1e-7)
    (message,) = [r.getMessage() for r in caplog.records]
    assert "2e-07 * 4 / 8 = 1e-07 is below 1e-06" in message
    assert "0.007% of the 8-bit pixel values" in message  # 680 x 1e-7 (the toy model: measured 0.0081% at 1e-7)
    assert "Raise learning_rate or lora_alpha" in message


def test_the_default_and_a_full_fine_tune_do_not_warn_about_the_lora_update(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert warn_small_lora_update(GRPOConfig(output_dir=str(tmp_path))) == pytest.approx(2e-5)  # 1e-5 * 64 / 32
        assert warn_small_lora_update(GRPOConfig(output_dir=str(tmp_path), use_lora=False, learning_rate=1e-9)) is None
    assert not caplog.records


# -- gradients below adam_epsilon ----------------------------------------------------------------------------------


def _params(*grads):
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g
        params.append(p)
    return params


def test_gradient_rms_leaves_out_the_tensors_without_gradient():
    # a LoRA's A matrices have a zero gradient at the first step (B starts at 0): they do not dilute the RMS
    params = _params(torch.full((4,), 3e-9), torch.zeros(100)) + [torch.nn.Parameter(torch.zeros(3))]
    assert gradient_rms(params) == pytest.approx(3e-9)
    assert gradient_rms(_params(torch.zeros(3))) is None


def test_gradients_below_adam_epsilon_warn_once_naming_both_numbers(caplog):
    warning = GradientWarning(adam_epsilon=1e-8)
    with caplog.at_level(logging.WARNING):
        assert warning.check(_params(torch.full((10,), 2e-9))) == pytest.approx(2e-9)
        assert warning.check(_params(torch.full((10,), 2e-9))) is None  # measured once per run
    (message,) = [r.getMessage() for r in caplog.records]
    assert "gradient RMS is 2e-09, below adam_epsilon=1e-08" in message
    assert "(17% at the RMS)" in message  # 2e-9 / (2e-9 + 1e-8)
    assert "Lower adam_epsilon (e.g. to 2e-11)" in message


def test_gradients_above_adam_epsilon_do_not_warn(caplog):
    with caplog.at_level(logging.WARNING):
        GradientWarning(adam_epsilon=1e-8).check(_params(torch.full((10,), 2e-8)))
    assert not caplog.records


def test_the_trainer_warns_at_its_first_step_when_adam_epsilon_swallows_the_gradients(tmp_path, caplog):
    # the tiny FLUX's gradient RMS at the first step: measured 1.8e-5; adam_epsilon=1 is far above it
    config = tiny_config(tmp_path / "run", adam_epsilon=1.0, learning_rate=1e-3, max_train_steps=1)
    trainer = tiny_flux_trainer(config, ["a red circle", "a blue square"])
    with caplog.at_level(logging.WARNING):
        trainer.train_step()
    assert warnings_logged(caplog) == {"gradient"}
    assert 0 < trainer.gradient_warning.rms < 1.0


# -- zero reward spread ---------------------------------------------------------------------------------------------


def test_zero_spread_share_counts_the_groups_whose_advantages_are_all_zero():
    advantages = torch.tensor([0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.5])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert zero_spread_share(advantages, groups) == 0.5
    assert zero_spread_share(torch.zeros(0), torch.zeros(0, dtype=torch.long)) == 0.0


def test_most_groups_without_spread_for_several_steps_warn_once_naming_the_share(caplog):
    health = RunHealth(max_consecutive_bad_groups=5, latest_checkpoint=lambda: None)
    with caplog.at_level(logging.WARNING):
        for step in range(ZERO_SPREAD_WARN_STEPS - 1):
            health.check_zero_spread(step, 0.75)
        health.check_zero_spread(10, 0.5)  # not above the threshold: the streak starts again
        health.check_zero_spread(11, None)  # no group kept: the streak is left as it is
        assert not caplog.records
        for step in range(ZERO_SPREAD_WARN_STEPS):
            health.check_zero_spread(20 + step, 0.625 if step else 0.875)
        for step in range(2 * ZERO_SPREAD_WARN_STEPS):
            health.check_zero_spread(40 + step, 1.0)  # once per run
    (message,) = [r.getMessage() for r in caplog.records]
    assert f"for {ZERO_SPREAD_WARN_STEPS} training steps in a row at least 62% of the groups (62% at this step)" in (
        message
    )
    assert "Raise num_generations" in message and "reward/zero_spread_groups" in message


def test_the_share_of_zero_spread_groups_is_logged_every_step(tmp_path):
    def first_prompt_constant(images, prompts):
        return torch.where(torch.tensor([p == "a red circle" for p in prompts]), 0.5, brightness(images, prompts))

    config = tiny_config(tmp_path / "run", sample_prompts_per_device=2, max_train_steps=1, learning_rate=1e-3)
    trainer = tiny_flux_trainer(config, ["a red circle", "a blue square"], rewards={first_prompt_constant: 1.0})
    assert trainer.train_step()["reward/zero_spread_groups"] == 0.5


# -- fp16 without a gradient scaler ---------------------------------------------------------------------------------


def _accelerator(scaler=None, distributed_type=DistributedType.NO):
    return SimpleNamespace(scaler=scaler, device=torch.device("cpu"), distributed_type=distributed_type)


def test_fp16_without_a_gradient_scaler_warns_with_the_fix(tmp_path, caplog):
    config = GRPOConfig(output_dir=str(tmp_path), mixed_precision="fp16")
    with caplog.at_level(logging.WARNING):
        check_fp16_loss_scaling(config, _accelerator(scaler=None))  # accelerate adds no scaler on the CPU
    (message,) = [r.getMessage() for r in caplog.records]
    assert "mixed_precision='fp16' without a gradient scaler" in message and "accelerate adds none on cpu" in message
    assert "Use mixed_precision='bf16'" in message


def test_fp16_with_fsdp2_is_refused_and_deepspeed_or_a_scaler_pass(tmp_path, caplog):
    config = GRPOConfig(output_dir=str(tmp_path), mixed_precision="fp16")
    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(ConfigError, match="mixed_precision='fp16' with FSDP2 is not supported"):
        check_fp16_loss_scaling(config, _accelerator(scaler), fsdp2=True)
    with pytest.raises(ConfigError, match="use mixed_precision='bf16'"):
        check_fp16_loss_scaling(
            GRPOConfig(output_dir=str(tmp_path), mixed_precision="fp16", fsdp2=True), _accelerator(scaler)
        )
    with caplog.at_level(logging.WARNING):
        check_fp16_loss_scaling(config, _accelerator(scaler))  # DDP on a GPU: accelerate's optimiser unscales
        check_fp16_loss_scaling(config, _accelerator(None, DistributedType.DEEPSPEED))  # the engine scales itself
        check_fp16_loss_scaling(GRPOConfig(output_dir=str(tmp_path), mixed_precision="bf16"), _accelerator(None))
    assert not caplog.records


# -- a healthy run --------------------------------------------------------------------------------------------------


def test_a_healthy_toy_run_logs_none_of_the_warnings(tmp_path, caplog):
    """The toy model (10 steps, 32 px) on its preference reward, 5 steps: the consistency check passes, and none of
    the warnings fires (measured: gradient RMS 5.5e-5 at the first step, zero-spread share 0 at every step)."""
    pipe = GRPOTrainingPipeline.from_pipe(load_toy_base_pipeline())
    pipe.max_sequence_length = TOY_MAX_SEQUENCE_LENGTH
    config = tiny_config(
        tmp_path / "run",
        num_inference_steps=10,
        guidance_scale=TOY_GUIDANCE_SCALE,
        shift=None,
        num_generations=4,
        sample_prompts_per_device=2,
        learning_rate=1e-3,
        max_train_steps=ZERO_SPREAD_WARN_STEPS,
    )
    with caplog.at_level(logging.WARNING):
        trainer = GRPOTrainer(config, pipe, rewards={"toy_preference": 1.0}, train_prompts=train_prompts(16, seed=0))
        shares = [trainer.train_step()["reward/zero_spread_groups"] for _ in range(ZERO_SPREAD_WARN_STEPS)]
    assert warnings_logged(caplog) == set()
    assert trainer.ratio_check.checked_once and trainer.gradient_warning.rms > 1e-8
    assert max(shares) <= 0.5, shares
