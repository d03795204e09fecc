"""Video rewards: temporal consistency (weight-free, exact) and the per-frame average of an image reward."""

import pytest
import torch

from diffusers_mixgrpo.rewards import available_rewards, load_reward
from diffusers_mixgrpo.rewards.jpeg import jpeg_sizes_kb
from diffusers_mixgrpo.rewards.video import FrameMeanReward, TemporalConsistencyReward


def videos(b=2, f=3, size=16, seed=0):
    return torch.rand((b, f, 3, size, size), generator=torch.Generator().manual_seed(seed))


def test_video_rewards_are_registered():
    assert {"temporal_consistency", "frame_mean"} <= set(available_rewards())
    assert isinstance(load_reward("temporal_consistency"), TemporalConsistencyReward)


def test_temporal_consistency_is_one_minus_the_mean_frame_difference():
    v = videos()
    v[1] = v[1, :1].expand(3, -1, -1, -1)  # a still video
    scores = TemporalConsistencyReward()(v, ["a", "b"])
    expected = 1 - (v[0, 1:] - v[0, :-1]).abs().mean()
    assert scores.dtype == torch.float32 and scores.shape == (2,)
    torch.testing.assert_close(scores[0], expected, rtol=0, atol=1e-6)
    assert scores[1] == 1.0 and scores[0] < scores[1]


def test_temporal_consistency_reads_uint8_and_single_frames():
    v = videos()
    as_uint8 = (v * 255).round().to(torch.uint8)
    torch.testing.assert_close(
        TemporalConsistencyReward()(as_uint8, None), TemporalConsistencyReward()(as_uint8.float() / 255, None)
    )
    assert torch.equal(TemporalConsistencyReward()(v[:, :1], None), torch.ones(2))


def test_frame_mean_averages_an_image_reward_over_the_frames():
    v = videos(f=5)
    reward = load_reward("frame_mean", image_reward="jpeg_incompressibility")
    expected = torch.stack([jpeg_sizes_kb(v[b]).mean() for b in range(2)])
    torch.testing.assert_close(reward(v, ["a", "b"]), expected, rtol=0, atol=1e-6)
    strided = FrameMeanReward(lambda images, prompts: images.mean(dim=(1, 2, 3)), frame_stride=2, batch_frames=2)
    assert strided.frame_indices(5) == [0, 2, 4] and strided.frame_indices(4) == [0, 2, 3]
    torch.testing.assert_close(strided(v, None), v[:, [0, 2, 4]].mean(dim=(2, 3, 4)).mean(dim=1), rtol=0, atol=1e-6)


def test_frame_mean_passes_each_frame_its_video_prompt():
    seen = []

    def record(images, prompts):
        seen.extend(prompts)
        return torch.zeros(len(prompts))

    FrameMeanReward(record)(videos(f=2), ["cat", "dog"])
    assert seen == ["cat", "cat", "dog", "dog"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FrameMeanReward(), "frame_mean needs the image reward"),
        (lambda: FrameMeanReward("temporal_consistency"), "needs an image reward"),
        (lambda: FrameMeanReward(lambda i, p: i, frame_stride=0), "frame_stride must be an integer >= 1"),
    ],
)
def test_bad_frame_mean_options_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_an_image_reward_given_a_video_says_what_to_use():
    with pytest.raises(ValueError, match="frame_mean"):
        load_reward("jpeg_compressibility")(videos(), ["a", "b"])
    with pytest.raises(ValueError, match=r"Expected a batch of videos \(B, F, 3, H, W\)"):
        TemporalConsistencyReward()(torch.rand(2, 3, 8, 8), None)
