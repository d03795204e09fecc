"""Rewards beside the rollout: the same samples, scores and update as scoring after the rollout, with the reward
time hidden behind the next chunk's denoising."""

import time

import torch

from diffusers_mixgrpo import GRPOTrainingPipeline
from diffusers_mixgrpo.training.overlap import concat_rollouts
from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline
from testing_utils import tiny_config, tiny_flux_trainer

PROMPTS = ["a red circle", "a blue square", "a green cross", "a cat"]


def slow_brightness(images, prompts):
    time.sleep(0.1 * len(images))  # a reward model elsewhere: 0.1 s per image, without this process's CPU
    return images.float().mean(dim=(1, 2, 3))


def _trainer(tmp_path, overlap):
    config = tiny_config(
        tmp_path / ("overlap" if overlap else "sequential"),
        num_inference_steps=6,
        sample_prompts_per_device=4,
        sample_max_batch_size=2,  # one prompt per chunk: 4 pieces
        learning_rate=1e-3,
        gradient_accumulation_steps=3,  # GRPOConfig's default
        max_train_steps=4,
        seed=3,
    )
    return tiny_flux_trainer(config, PROMPTS, rewards={slow_brightness: 1.0}, overlap_rewards=overlap)


def test_overlapped_rewards_give_the_same_step_and_hide_reward_time(tmp_path):
    seq, ovl = _trainer(tmp_path, False), _trainer(tmp_path, True)
    a, b = seq.train_step(), ovl.train_step()
    assert abs(a["reward/mean"] - b["reward/mean"]) < 1e-6 and abs(a["reward/std"] - b["reward/std"]) < 1e-6
    assert abs(a["train/loss"] - b["train/loss"]) < 1e-6
    assert a["nfe/rollout_per_image"] == b["nfe/rollout_per_image"]
    wa = {n: p for n, p in seq.pipeline.denoiser.named_parameters() if "lora" in n}
    wb = {n: p for n, p in ovl.pipeline.denoiser.named_parameters() if "lora" in n}
    for n in wa:  # float32; the prompts are encoded one chunk at a time instead of all at once
        torch.testing.assert_close(wa[n], wb[n], rtol=0, atol=1e-6)
    # 8 images at 0.1 s: sequentially all of it after the rollout; alongside, the scoring of pieces 1-3 runs while
    # pieces 2-4 are denoised and only what is left after the last piece is waited for.
    assert a["time/reward"] >= 0.8
    assert b["time/reward"] < a["time/reward"] - 0.1


def test_concat_rollouts_offsets_groups_and_chunks(tmp_path):
    pipe = GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=0))
    kwargs = dict(num_generations=2, num_inference_steps=4, sde_window=(0, 2), height=32, width=32, max_batch_size=2)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    whole = pipe.rollout(PROMPTS[:3], generator=gens, **kwargs)
    parts = [
        pipe.rollout([p], generator=[torch.Generator().manual_seed(i)], **kwargs) for i, p in enumerate(PROMPTS[:3])
    ]
    joined = concat_rollouts(parts)
    assert joined.group_ids.tolist() == whole.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert [c.tolist() for c in joined.chunks] == [c.tolist() for c in whole.chunks]
    assert joined.prompts == whole.prompts and joined.nfe == whole.nfe
    # measured difference: 0.0 for both (images and log-probs)
    torch.testing.assert_close(joined.images, whole.images, rtol=0, atol=1e-6)
    torch.testing.assert_close(joined.log_probs, whole.log_probs, rtol=0, atol=1e-6)
