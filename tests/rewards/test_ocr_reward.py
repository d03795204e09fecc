"""The OCR reward: Flow-GRPO's edit-distance rule, prompt parsing, and the real RapidOCR models on rendered text.

The model tests read 7 PIL-rendered 256x256 images with sockets blocked (about 2 s each on one CPU thread of a
shared 2-core machine, 15 s for the file; the models upscale the short side to 736 px): exact text scored 1.0 on every
image here, so they assert >= 0.9 (one misread character in the 10+ of each text); wrong text scored 0.1 and 0.8, a
blank image 0.
"""

import socket
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from diffusers_mixgrpo.rewards import load_reward
from diffusers_mixgrpo.rewards.ocr import OCRReward, edit_distance, quoted_text, text_reward


# ------------------------------------------------------------------------------------------------ the rule, no model
@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("", "", 0),
        ("", "abc", 3),  # three insertions
        ("abc", "", 3),  # three deletions
        ("abc", "abc", 0),
        ("abc", "abd", 1),  # one substitution
        ("ab", "ba", 2),  # a transposition is two edits in Levenshtein's distance
        ("kitten", "sitting", 3),  # k->s, e->i, +g
        ("flaw", "lawn", 2),  # -f, +n
        ("intention", "execution", 5),  # -i, n->e, t->x, +c, n->u
        ("helloworld", "hellowrold", 2),  # o->r, r->o
    ],
)
def test_edit_distance_matches_hand_computed_values(a, b, expected):
    assert edit_distance(a, b) == expected
    assert edit_distance(b, a) == expected


@pytest.mark.parametrize(
    "read, target, expected",
    [
        ("Hello World", "Hello World", 1.0),
        ("HELLO   world", "hello world", 1.0),  # spaces removed and lower-cased on both sides
        ("Welcome! Hello World, friends", "Hello World", 1.0),  # the target inside the read text costs nothing
        ("Hello Wrold", "Hello World", 0.8),  # distance 2 over 10 characters
        ("abd", "abc", 1 - 1 / 3),
        ("Goodbye", "Hello World", 0.1),  # distance 9 over 10
        ("", "Hello World", 0.0),  # nothing read
        ("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", "abc", 0.0),  # distance 34 capped at len(target) = 3
    ],
)
def test_text_reward_follows_flow_grpo(read, target, expected):
    assert text_reward(read, target) == pytest.approx(expected, abs=1e-12)


def test_text_reward_only_strips_plain_spaces():
    assert text_reward("a\tb", "ab") == pytest.approx(1 - 1 / 2)  # a tab is a character to delete, as in Flow-GRPO


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ('a shop sign that says "OPEN" at night', "OPEN"),
        ('"Hello World" written with fireworks', "Hello World"),
        ('a banner "first" next to a sign "second"', "first"),  # the first quoted text
        ('a poster saying "no closing quote', "no closing quote"),  # split('"')[1] runs to the end
    ],
)
def test_quoted_text(prompt, expected):
    assert quoted_text(prompt) == expected


@pytest.mark.parametrize("prompt", ["a photo of a cat", 'an empty sign ""', 'a blank sign "   "', ""])
def test_a_prompt_without_quoted_text_is_an_error(prompt):
    with pytest.raises(ValueError, match="quote|empty"):
        quoted_text(prompt)


def test_the_reward_with_another_reader_joins_lines_and_checks_prompts_first():
    seen = []

    def reader(array):
        seen.append(array.copy())
        return ["Hello", "World"] if array.mean() > 0 else []

    reward = OCRReward(reader=reader, dtype=torch.bfloat16)
    images = torch.stack([torch.ones(3, 8, 8), torch.zeros(3, 8, 8)])  # (B, 3, H, W) floats in [0, 1]
    scores = reward(images, ['a "Hello World" sign', 'a "Hello World" sign'])
    assert scores.dtype == torch.float32 and scores.tolist() == [1.0, 0.0]
    assert seen[0].shape == (8, 8, 3) and seen[0].dtype == np.uint8 and int(seen[0].max()) == 255  # RGB uint8 HWC
    assert reward.read(images) == ["HelloWorld", ""]

    seen.clear()
    with pytest.raises(ValueError, match="'a photo of a cat' has none"):
        reward(images, ['a "Hello World" sign', "a photo of a cat"])
    assert not seen  # no OCR ran for a batch with a bad prompt
    with pytest.raises(ValueError, match="prompts"):
        reward(images, ['a "x" sign'])


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rapidocr", None)  # `import rapidocr` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'diffusers-mixgrpo\[ocr\]'"):
        load_reward("ocr")


def test_options_are_checked():
    with pytest.raises(ValueError, match="text_score"):
        OCRReward(text_score=1.5, reader=lambda a: [])
    with pytest.raises(ValueError, match="num_threads"):
        OCRReward(num_threads=0, reader=lambda a: [])


# -------------------------------------------------------------------------------------------- the real OCR model
def render(text: str, size: int = 256) -> Image.Image:
    """Black text centred on white in Pillow's bundled font (no system font needed)."""
    image = Image.new("RGB", (size, size), "white")
    font = ImageFont.load_default(size=24)
    ImageDraw.Draw(image).text((size // 2, size // 2), text, fill="black", font=font, anchor="mm")
    return image


@pytest.fixture(scope="module")
def ocr_reward():
    pytest.importorskip("rapidocr", reason="the OCR reward's models: pip install 'diffusers-mixgrpo[ocr]'")
    pytest.importorskip("onnxruntime", reason="the OCR reward's models: pip install 'diffusers-mixgrpo[ocr]'")
    return load_reward("ocr", num_threads=1)


@pytest.fixture(scope="module")
def rendered_scores(ocr_reward):
    cases = [
        ("Hello World", 'a sign that says "Hello World"'),
        ("Spring Collection 2024", 'a runway backdrop showing "Spring Collection 2024"'),
        ("Forever Yours", 'a silver ring engraved "Forever Yours"'),
        ("Hello Wrold", 'a sign that says "Hello World"'),
        ("Goodbye", 'a sign that says "Hello World"'),
        ("", 'a sign that says "Hello World"'),
    ]
    images = [render(text) for text, _ in cases]

    def no_network(*args, **kwargs):
        raise AssertionError("the OCR reward opened a network connection; its models must come from the wheel")

    with pytest.MonkeyPatch.context() as patch:  # the models load at the first call: prove they need no download
        patch.setattr(socket.socket, "connect", no_network)
        patch.setattr(socket, "create_connection", no_network)
        scores = ocr_reward(images, [prompt for _, prompt in cases])
    return scores, images


def test_real_ocr_scores_exact_text_near_one_wrong_text_lower_blank_zero(rendered_scores):
    scores, _ = rendered_scores
    assert scores.shape == (6,) and scores.dtype == torch.float32
    assert (scores[:3] >= 0.9).all(), scores  # measured: 1.0, 1.0, 1.0
    assert scores[3] < scores[0] and scores[4] < scores[3], scores  # misspelt (measured 0.8) above wrong (0.1)
    assert scores[5] == 0.0  # blank: nothing read


def test_real_ocr_reads_float_tensors_as_pil_images(ocr_reward, rendered_scores):
    scores, images = rendered_scores
    batch = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images[:1]]).float() / 255
    torch.testing.assert_close(ocr_reward(batch, ['a sign that says "Hello World"']), scores[:1])
