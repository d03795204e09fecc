"""Model cards of the SDXL / SANA / Wan families: the family's name, and for Wan video sampling code."""

import pytest
import yaml

from diffusers_mixgrpo.training.config import GRPOConfig
from diffusers_mixgrpo.training.hub import write_model_card


def card(tmp_path, **config):
    folder = tmp_path / "final"
    folder.mkdir()
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"weights placeholder")
    write_model_card(folder, GRPOConfig(hub_model_id="me/run", **config))
    _, meta, body = (folder / "README.md").read_text().split("---\n", 2)
    return yaml.safe_load(meta), body


def test_a_wan_card_samples_a_video_with_the_trained_frames(tmp_path):
    meta, body = card(tmp_path, model_family="wan", num_frames=5, guidance_scale=5.0, num_inference_steps=10)
    assert "wan" in meta["tags"] and "a Wan base model" in body
    assert meta["pipeline_tag"] == "text-to-video" and "text-to-video" in meta["tags"]
    assert "num_frames=5, num_inference_steps=10, guidance_scale=5.0).frames[0]" in body
    assert 'export_to_video(video, "sample.mp4", fps=16)' in body and ".images[0]" not in body


@pytest.mark.parametrize(("family", "name"), [("sdxl", "Stable Diffusion XL"), ("sana", "SANA")])
def test_image_family_cards_name_the_family(tmp_path, family, name):
    meta, body = card(tmp_path, model_family=family)
    assert family in meta["tags"] and f"a {name} base model" in body and ".images[0]" in body
    assert meta["pipeline_tag"] == "text-to-image"
