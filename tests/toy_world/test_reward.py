"""The toy-world reward: about 1 on the renderer's images for the right prompt, low for the wrong one."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_mixgrpo.toy_world.reward import ToyWorldReward, toy_world_accuracy
from diffusers_mixgrpo.toy_world.world import all_prompts, parse_prompt, render_batch


@pytest.fixture(scope="module")
def renders():
    rng = np.random.default_rng(0)
    prompts = list(all_prompts(1)) + [str(p) for p in rng.choice(all_prompts(2), 96, replace=False)]
    return prompts, render_batch(prompts, list(range(len(prompts))))


def _mismatched(prompts, seed=0):
    """For each prompt, a random prompt with as many objects describing a different scene."""
    rng = np.random.default_rng(seed)
    out = []
    for p in prompts:
        pool = all_prompts(len(parse_prompt(p)))
        while True:
            q = pool[rng.integers(len(pool))]
            if set(parse_prompt(q)) != set(parse_prompt(p)):
                out.append(q)
                break
    return out


def test_reward_is_about_one_on_correct_renders(renders):
    prompts, images = renders
    result = ToyWorldReward().evaluate(images, prompts)
    # measured: mean 0.992, min 0.87, 191/192 judged correct
    assert result.score.mean() > 0.95
    assert result.correct.mean() >= 0.97


def test_reward_is_low_on_mismatched_prompts(renders):
    prompts, images = renders
    result = ToyWorldReward().evaluate(images, _mismatched(prompts))
    # measured: mean 0.37 (partial credit), none judged correct
    assert result.score.mean() < 0.45
    assert result.correct.mean() == 0.0


def test_partial_credit_orders_the_errors():
    image = render_batch(["a red circle on the left"], [0])
    reward = ToyWorldReward()
    right, wrong_shape, wrong_side, wrong_colour, all_wrong = reward(
        np.repeat(image, 5, axis=0),
        [
            "a red circle on the left",
            "a red square on the left",
            "a red circle on the right",
            "a blue circle on the left",
            "a blue square on the right",
        ],
    ).tolist()
    assert right > 0.95
    assert 0.6 < wrong_shape < right and 0.6 < wrong_side < right
    assert all_wrong < 0.1 < wrong_colour < wrong_shape


def test_noise_and_clutter_earn_nothing():
    gen = torch.Generator().manual_seed(0)
    prompts = ["a red circle on the left", "a blue square on the top and a white cross on the bottom"] * 8
    noise = torch.rand(16, 3, 32, 32, generator=gen)
    blobs = torch.nn.functional.interpolate(torch.rand(16, 3, 8, 8, generator=gen), size=32, mode="bilinear")
    reward = ToyWorldReward()
    # measured: 0.0 for both (without the clutter penalty uniform noise scored 0.87)
    assert reward(noise, prompts).max() < 0.05 and reward(blobs, prompts).max() < 0.05
    # an extra object costs part of the reward and the "correct" judgement
    clean = render_batch(["a red circle on the left"], [0])
    extra = render_batch(["a red circle on the left and a green cross on the right"], [0])
    result = reward.evaluate(np.concatenate([clean, extra]), ["a red circle on the left"] * 2)
    assert result.correct.tolist() == [True, False] and result.score[1] < 0.6 * result.score[0]


def test_two_object_prompt_needs_both_objects():
    prompt = "a green triangle on the top and a white cross on the bottom"
    both = render_batch([prompt], [1])
    only_top = render_batch(["a green triangle on the top"], [1])
    scores = ToyWorldReward()(np.concatenate([both, only_top]), [prompt, prompt])
    assert scores[0] > 0.95 and 0.4 < scores[1] < 0.6


def test_reward_output_contract_and_input_formats(renders):
    prompts, images = renders[0][:4], renders[1][:4]
    reward = ToyWorldReward()
    as_uint8 = reward(images, prompts)
    assert as_uint8.dtype == torch.float32 and as_uint8.shape == (4,)
    assert ((as_uint8 >= 0) & (as_uint8 <= 1)).all()
    chw = torch.from_numpy(images).permute(0, 3, 1, 2)
    torch.testing.assert_close(reward(chw, prompts), as_uint8)
    torch.testing.assert_close(reward(chw.float() / 255, prompts), as_uint8)
    torch.testing.assert_close(reward([Image.fromarray(a) for a in images], prompts), as_uint8)
    assert reward(np.zeros((2, 32, 32, 3), np.uint8), prompts[:2]).tolist() == [0.0, 0.0]
    assert toy_world_accuracy(images, prompts) == 1.0


def test_reward_is_registered_as_toy_world(renders):
    from diffusers_mixgrpo.rewards import available_rewards, load_reward

    assert "toy_world" in available_rewards()
    reward = load_reward("toy_world", device="cpu")
    prompts, images = renders[0][:3], renders[1][:3]
    torch.testing.assert_close(reward(images, prompts), ToyWorldReward()(images, prompts))
