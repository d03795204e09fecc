"""Fixtures: tiny reward checkpoints in their original formats, written to temp directories."""

import json

import pytest
import torch
from tiny_reward_checkpoints import (
    BERT_WORDS,
    IMAGE_SIZE,
    _clip_tokenizer,
    make_imagereward_state_dict,
    make_open_clip_state_dict,
)

from diffusers_mixgrpo.rewards._preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny transformers CLIPModel + CLIPProcessor (OpenAI normalisation, bicubic, 32 px) saved with safetensors."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    directory = tmp_path_factory.mktemp("tiny_clip")
    tokenizer = _clip_tokenizer(directory)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(config)
    with torch.no_grad():
        # Give image and text embeddings a shared component so that cosines are positive (a random CLIP gives
        # negative ones half the time, which CLIP score clamps to 0): a large final LayerNorm bias on each tower,
        # chosen so both project to the same direction.
        bias = torch.randn(32) * 10
        model.vision_model.post_layernorm.bias.copy_(bias)
        target = model.visual_projection.weight @ bias
        text_bias = torch.linalg.lstsq(model.text_projection.weight, target.unsqueeze(-1)).solution.squeeze(-1)
        model.text_model.final_layer_norm.bias.copy_(text_bias)
    model.save_pretrained(directory / "model")
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE},
            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            image_mean=list(OPENAI_CLIP_MEAN),
            image_std=list(OPENAI_CLIP_STD),
        ),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(directory / "model")
    return directory / "model"


@pytest.fixture(scope="session")
def tiny_hps_dir(tmp_path_factory):
    """`HPS_v2.1_compressed.pt` ({"state_dict": open_clip keys}) for a tiny ViT (head width 20 / 16) + tokenizer."""
    directory = tmp_path_factory.mktemp("tiny_hps")
    torch.save({"state_dict": make_open_clip_state_dict()}, directory / "HPS_v2.1_compressed.pt")
    _clip_tokenizer(directory).save_pretrained(directory / "tokenizer")
    return directory


@pytest.fixture(scope="session")
def tiny_imagereward_dir(tmp_path_factory):
    """ImageReward.pt + med_config.json (BLIP's BERT config, tiny) + a bert-style WordPiece tokenizer."""
    from transformers import BertTokenizer

    directory = tmp_path_factory.mktemp("tiny_imagereward")
    torch.save(make_imagereward_state_dict(), directory / "ImageReward.pt")
    med = {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": len(BERT_WORDS) + 2,
        "encoder_width": 32,
        "add_cross_attention": True,
    }
    (directory / "med_config.json").write_text(json.dumps(med))
    BertTokenizer(vocab={w: i for i, w in enumerate(BERT_WORDS)}).save_pretrained(directory / "tokenizer")
    return directory
