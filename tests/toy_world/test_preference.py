"""The toy preference score: prompt following times contrast; clean renders score about 1, hazy about half, and
blank, uniform and noise images score 0."""

import numpy as np
import pytest
import torch

from diffusers_mixgrpo.rewards import load_reward
from diffusers_mixgrpo.toy_world import STYLES, heldout_prompts, parse_prompt
from diffusers_mixgrpo.toy_world.preference import ToyPreferenceReward, toy_contrast
from diffusers_mixgrpo.toy_world.reward import ToyWorldReward
from diffusers_mixgrpo.toy_world.world import HAZE_COLOR, HAZE_STRENGTH, render_objects


@pytest.fixture(scope="module")
def renders():
    prompts = heldout_prompts()
    styled = {
        style: np.stack([render_objects(parse_prompt(p), seed=i, style=style) for i, p in enumerate(prompts)])
        for style in STYLES
    }
    return prompts, styled


def test_hazy_is_the_clean_picture_washed_out_by_the_haze():
    objects = parse_prompt("a red circle on the left and a blue square on the right")
    clean = render_objects(objects, seed=3).astype(np.float64)
    hazy = render_objects(objects, seed=3, style="hazy").astype(np.float64)
    expected = (1 - HAZE_STRENGTH) * clean + HAZE_STRENGTH * np.asarray(HAZE_COLOR)
    # both renders round to uint8 (0.5) and `clean` was rounded before the blend ((1 - 0.4) * 0.5 = 0.3)
    assert np.abs(hazy - expected).max() <= 0.8 + 1e-9


def test_an_unknown_style_is_refused_by_name():
    with pytest.raises(ValueError, match="Unknown style 'foggy'; choose one of clean, hazy"):
        render_objects(parse_prompt("a red circle on the left"), style="foggy")


def test_contrast_is_about_one_on_clean_renders_and_about_half_on_hazy_ones(renders):
    _, styled = renders
    clean, hazy = toy_contrast(styled["clean"]), toy_contrast(styled["hazy"])
    assert clean.min() > 0.99  # measured: 1.000 on every image
    assert 0.45 < hazy.min() and hazy.max() < 0.55  # measured: 0.484 to 0.529


def test_hazy_renders_still_follow_their_prompts(renders):
    """The haze is an aesthetic flaw, not a prompt-following one: the toy-world judge still reads the objects."""
    prompts, styled = renders
    assert ToyWorldReward().evaluate(styled["hazy"], prompts).correct.mean() >= 0.9  # measured: 0.94 (30 of 32)


def test_preference_is_prompt_following_times_contrast(renders):
    prompts, styled = renders
    images = np.concatenate([styled["clean"][:8], styled["hazy"][:8]])
    texts = prompts[:8] * 2
    expected = ToyWorldReward().evaluate(images, texts).score * toy_contrast(images)
    torch.testing.assert_close(ToyPreferenceReward()(images, texts), torch.from_numpy(expected))


def test_preference_prefers_clean_renders_of_the_prompt_to_hazy_ones_and_to_other_prompts(renders):
    prompts, styled = renders
    reward = ToyPreferenceReward()
    clean, hazy = reward(styled["clean"], prompts), reward(styled["hazy"], prompts)
    wrong = reward(styled["clean"], prompts[1:] + prompts[:1])  # each image judged against another prompt
    assert clean.mean() > 0.95  # measured 0.992
    assert 0.4 < hazy.mean() < 0.55  # measured 0.492
    assert wrong.mean() < 0.6  # measured 0.40


@pytest.mark.parametrize("kind", ["blank", "white", "grey", "noise"])
def test_blank_uniform_and_noise_images_score_nothing(kind):
    rng = np.random.default_rng(0)
    images = {
        "blank": np.zeros((4, 32, 32, 3), np.uint8),
        "white": np.full((4, 32, 32, 3), 255, np.uint8),
        "grey": np.full((4, 32, 32, 3), 128, np.uint8),
        "noise": rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8),
    }[kind]
    prompts = heldout_prompts()[:4]
    assert load_reward("toy_preference")(images, prompts).max() == 0.0  # measured: 0 for all four kinds
    if kind != "noise":
        assert toy_contrast(images).max() == 0.0
    else:
        assert toy_contrast(images).max() < 0.3  # measured 0.24 to 0.26: noise has no dark background


def test_the_preference_rewards_are_registered():
    assert isinstance(load_reward("toy_preference"), ToyPreferenceReward)
    images = np.zeros((2, 32, 32, 3), np.uint8)
    assert load_reward("toy_contrast")(images, ["a red circle on the left"] * 2).shape == (2,)
