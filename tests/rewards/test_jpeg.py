import io

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_mixgrpo.rewards import load_reward


def _jpeg_kb(array: np.ndarray) -> float:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return len(buffer.getvalue()) / 1000.0


@pytest.fixture
def flat_and_noisy():
    flat = np.full((64, 64, 3), 128, dtype=np.uint8)
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return np.stack([noisy, flat])


def test_incompressibility_is_the_jpeg_size_in_kb(flat_and_noisy):
    scores = load_reward("jpeg_incompressibility")(flat_and_noisy, ["x", "y"])
    expected = torch.tensor([_jpeg_kb(a) for a in flat_and_noisy])
    assert scores.dtype == torch.float32 and scores.shape == (2,)
    torch.testing.assert_close(scores, expected)
    assert scores[0] > 5 * scores[1]  # noise is far larger than a flat image


def test_compressibility_is_minus_incompressibility(flat_and_noisy):
    inc = load_reward("jpeg_incompressibility")(flat_and_noisy, ["x", "y"])
    com = load_reward("jpeg_compressibility")(flat_and_noisy, ["x", "y"])
    torch.testing.assert_close(com, -inc)
    assert com[1] > com[0]


def test_pil_uint8_and_float_inputs_agree(flat_and_noisy):
    reward = load_reward("jpeg_incompressibility")
    nchw = torch.from_numpy(flat_and_noisy).permute(0, 3, 1, 2)
    pil = [Image.fromarray(a) for a in flat_and_noisy]
    ref = reward(nchw, None)
    torch.testing.assert_close(reward(pil, None), ref)
    torch.testing.assert_close(reward(nchw.float() / 255.0, None), ref)
    torch.testing.assert_close(reward(flat_and_noisy, None), ref)  # (B, H, W, 3) numpy


def test_prompt_count_must_match(flat_and_noisy):
    with pytest.raises(ValueError, match="prompts"):
        load_reward("jpeg_compressibility")(flat_and_noisy, ["only one", "two", "three"])


def _ddpo_reference_kb(images: torch.Tensor) -> list[float]:
    """DDPO's jpeg_incompressibility, written from its definition: scale by 255 in the input's dtype, round, clamp,
    uint8, NCHW -> NHWC, PIL JPEG at quality 95, bytes / 1000."""
    pixels = (images * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy().transpose(0, 2, 3, 1)
    return [_jpeg_kb(np.ascontiguousarray(a)) for a in pixels]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_float_images_give_the_reference_bytes_in_their_own_precision(dtype):
    # A decoded image in bf16 / fp16 (how pipelines run): the product x * 255 rounds in that precision first, as in
    # DDPO. Exact: the same byte counts (the reward is float32 kB). Out-of-range values are clamped as there.
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(3, 3, 48, 48, generator=g) * 1.1 - 0.05).to(dtype)
    scores = load_reward("jpeg_incompressibility")(images, None)
    assert torch.equal(scores, torch.tensor(_ddpo_reference_kb(images), dtype=torch.float32))
    if dtype != torch.float32:
        # The test can fail: a float32 conversion first gives other pixels (and other sizes) for these images.
        upcast = _ddpo_reference_kb(images.float())
        assert upcast != _ddpo_reference_kb(images)


def test_share_of_pixels_a_float32_conversion_would_change():
    # docs/rewards.md: on uniform noise (4 x 3 x 64 x 64, seed 0) converting bf16 / fp16 images in float32 first
    # changes 8% / 4% of the pixels (rounded to 1%).
    from diffusers_mixgrpo.rewards.base import to_uint8_hwc
    from diffusers_mixgrpo.rewards.jpeg import ddpo_uint8

    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for dtype, share in ((torch.bfloat16, 0.08), (torch.float16, 0.04)):
        reference = ddpo_uint8(x.to(dtype)).permute(0, 2, 3, 1).numpy()
        assert round(float((reference != to_uint8_hwc(x.to(dtype))).mean()), 2) == share
