"""The toy world's grammar, renderer and train / held-out split."""

import numpy as np
import pytest

from diffusers_mixgrpo.toy_world.world import (
    COLOR_NAMES,
    POSITIONS,
    SHAPES,
    VOCABULARY,
    ToyObject,
    all_prompts,
    heldout_prompts,
    is_heldout_object,
    is_heldout_prompt,
    make_prompt,
    parse_prompt,
    render,
    render_batch,
    render_objects,
    train_prompt_pool,
    train_prompts,
)


def test_prompt_counts():
    assert len(all_prompts(1)) == len(COLOR_NAMES) * len(SHAPES) * len(POSITIONS) == 96
    assert len(all_prompts(2)) == 4 * 24 * 23


def test_parse_round_trips_every_prompt():
    for prompt in all_prompts(1) + all_prompts(2):
        assert make_prompt(parse_prompt(prompt)) == prompt


def test_parse_two_object_prompt():
    objs = parse_prompt("a red circle on the left and a blue square on the right")
    assert objs == (ToyObject("red", "circle", "left"), ToyObject("blue", "square", "right"))


@pytest.mark.parametrize(
    "bad",
    [
        "a red circle",
        "a pink circle on the left",
        "a red circle on the left or a blue square on the right",
        "a red circle on the left and a blue square on the top",  # not opposite sides
        "a red circle on the left and a red circle on the right",  # same object twice
    ],
)
def test_parse_rejects_text_outside_the_grammar(bad):
    with pytest.raises(ValueError):
        parse_prompt(bad)


def test_vocabulary_covers_every_prompt_word():
    words = {w for p in all_prompts(1) + all_prompts(2) for w in p.split()}
    assert words == set(VOCABULARY)


def test_renderer_is_deterministic_given_seed():
    prompt = "a yellow triangle on the top and a purple cross on the bottom"
    a, b = np.asarray(render(prompt, seed=7)), np.asarray(render(prompt, seed=7))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, np.asarray(render(prompt, seed=8)))  # the jitter depends on the seed


def test_renderer_puts_objects_in_their_region_with_their_colour():
    img = render_objects([ToyObject("red", "square", "left")], seed=0).astype(int)
    lit = img.max(-1) > 100
    ys, xs = np.nonzero(lit)
    assert xs.mean() < 16 and abs(ys.mean() - 16) < 3
    r, g, b = img[lit].mean(0)
    assert r > 150 and g < 80 and b < 80
    batch = render_batch(["a red square on the left"], [0])
    np.testing.assert_array_equal(batch[0], img.astype(np.uint8))


def test_heldout_triples_are_a_sixth_spread_over_shapes_and_positions():
    held = [ToyObject(c, s, p) for c in COLOR_NAMES for s in SHAPES for p in POSITIONS]
    held = [o for o in held if is_heldout_object(o)]
    assert len(held) == 16
    for shape in SHAPES:
        assert sum(o.shape == shape for o in held) == 4
    for position in POSITIONS:
        assert sum(o.position == position for o in held) == 4
    pairs = [(o.color, o.shape) for o in held]
    assert len(pairs) == len(set(pairs))  # each colour-shape pair is held out at one position at most


def test_heldout_combinations_never_appear_in_training():
    train_objects = {o for p in train_prompt_pool() for o in parse_prompt(p)}
    assert not any(is_heldout_object(o) for o in train_objects)
    for prompt in heldout_prompts():
        assert is_heldout_prompt(prompt)
        assert any(o not in train_objects for o in parse_prompt(prompt))
    assert not set(heldout_prompts()) & set(train_prompt_pool())
    assert not set(train_prompts(2000, seed=3)) & set(heldout_prompts())


def test_heldout_prompts_are_a_fixed_list():
    prompts = heldout_prompts()
    assert len(prompts) == 32 and len(set(prompts)) == 32
    assert prompts == heldout_prompts()
    assert len(heldout_prompts(1)) == 16 and len(heldout_prompts(2)) == 16
    assert prompts[0] == "a red circle on the left"


def test_train_prompts_are_deterministic_and_mixed():
    a = train_prompts(200, seed=1)
    assert a == train_prompts(200, seed=1) and a != train_prompts(200, seed=2)
    n_two = sum(len(parse_prompt(p)) == 2 for p in a)
    assert 60 < n_two < 140
    assert all(len(parse_prompt(p)) == 1 for p in train_prompts(50, seed=0, two_object_fraction=0.0))
