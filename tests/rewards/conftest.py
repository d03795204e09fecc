"""Fixtures: tiny reward checkpoints in their original formats, written to temp directories."""

import pytest
from tiny_reward_checkpoints import write_tiny_clip, write_tiny_hps, write_tiny_imagereward


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny transformers CLIPModel + CLIPProcessor (OpenAI normalisation, bicubic, 32 px) saved with safetensors."""
    return write_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_hps_dir(tmp_path_factory):
    """`HPS_v2.1_compressed.pt` ({"state_dict": open_clip keys}) for a tiny ViT (head width 20 / 16) + tokenizer."""
    return write_tiny_hps(tmp_path_factory.mktemp("tiny_hps"))


@pytest.fixture(scope="session")
def tiny_imagereward_dir(tmp_path_factory):
    """ImageReward.pt + med_config.json (BLIP's BERT config, tiny) + a bert-style WordPiece tokenizer."""
    return write_tiny_imagereward(tmp_path_factory.mktemp("tiny_imagereward"))
