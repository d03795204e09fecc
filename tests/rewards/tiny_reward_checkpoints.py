"""Builders of tiny, randomly initialised checkpoints in the original formats of each reward model."""

import json
from pathlib import Path

import torch

from diffusers_mixgrpo.rewards._preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

IMAGE_SIZE = 32  # input resolution of every tiny model
BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "a an the red green blue cat dog on of photo ##s".split()


def _clip_tokenizer(directory):
    """A byte-level CLIP BPE tokenizer with no merges (514 tokens): same class and code path as the real one."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"), pad_token="!")


def make_open_clip_state_dict(v_width=40, v_layers=2, patch=8, t_width=32, t_layers=2, vocab=514, ctx=77, embed=16):
    """A random state dict laid out as open_clip's `CLIP` (ViT image tower, built-in text tower)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    def ln(prefix):
        return {f"{prefix}.weight": 1 + r(v := sizes[prefix.split(".")[0]]), f"{prefix}.bias": r(v)}

    sizes = {"visual": v_width, "transformer": t_width, "ln_final": t_width}
    sd = {
        "visual.class_embedding": r(v_width),
        "visual.positional_embedding": r((IMAGE_SIZE // patch) ** 2 + 1, v_width),
        "visual.conv1.weight": r(v_width, 3, patch, patch),
        "visual.proj": r(v_width, embed),
        "token_embedding.weight": r(vocab, t_width),
        "positional_embedding": r(ctx, t_width),
        "text_projection": r(t_width, embed),
        "logit_scale": torch.tensor(4.6052),
    }
    sd.update(ln("visual.ln_pre"))
    sd.update(ln("visual.ln_post"))
    sd.update(ln("ln_final"))
    for tower, width, layers in (("visual.transformer", v_width, v_layers), ("transformer", t_width, t_layers)):
        for i in range(layers):
            p = f"{tower}.resblocks.{i}"
            sd.update({f"{p}.ln_1.weight": 1 + r(width), f"{p}.ln_1.bias": r(width)})
            sd.update({f"{p}.ln_2.weight": 1 + r(width), f"{p}.ln_2.bias": r(width)})
            sd.update({f"{p}.attn.in_proj_weight": r(3 * width, width), f"{p}.attn.in_proj_bias": r(3 * width)})
            sd.update({f"{p}.attn.out_proj.weight": r(width, width), f"{p}.attn.out_proj.bias": r(width)})
            sd.update({f"{p}.mlp.c_fc.weight": r(4 * width, width), f"{p}.mlp.c_fc.bias": r(4 * width)})
            sd.update({f"{p}.mlp.c_proj.weight": r(width, 4 * width), f"{p}.mlp.c_proj.bias": r(width)})
    return sd


def make_imagereward_state_dict(v_width=32, v_layers=2, patch=8, t_width=32, t_layers=2, vocab=len(BERT_WORDS) + 2):
    """A random state dict laid out as ImageReward.pt (BLIP `visual_encoder` / `text_encoder` + `mlp.layers`)."""
    g = torch.Generator().manual_seed(1)

    def r(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    v, t = "blip.visual_encoder", "blip.text_encoder"
    sd = {
        f"{v}.cls_token": r(1, 1, v_width),
        f"{v}.pos_embed": r(1, (IMAGE_SIZE // patch) ** 2 + 1, v_width),
        f"{v}.patch_embed.proj.weight": r(v_width, 3, patch, patch),
        f"{v}.patch_embed.proj.bias": r(v_width),
        f"{v}.norm.weight": 1 + r(v_width),
        f"{v}.norm.bias": r(v_width),
        f"{t}.embeddings.word_embeddings.weight": r(vocab, t_width),
        f"{t}.embeddings.position_embeddings.weight": r(512, t_width),
        f"{t}.embeddings.LayerNorm.weight": 1 + r(t_width),
        f"{t}.embeddings.LayerNorm.bias": r(t_width),
        f"{t}.embeddings.position_ids": torch.arange(512).unsqueeze(0),  # saved by old BERT code; must be ignored
        "blip.vision_proj.weight": r(16, v_width),  # unused by the score; must be ignored
        "blip.vision_proj.bias": r(16),
        "blip.text_proj.weight": r(16, t_width),
        "blip.text_proj.bias": r(16),
    }
    for i in range(v_layers):
        p = f"{v}.blocks.{i}"
        for n in ("norm1", "norm2"):
            sd.update({f"{p}.{n}.weight": 1 + r(v_width), f"{p}.{n}.bias": r(v_width)})
        sd.update({f"{p}.attn.qkv.weight": r(3 * v_width, v_width), f"{p}.attn.qkv.bias": r(3 * v_width)})
        sd.update({f"{p}.attn.proj.weight": r(v_width, v_width), f"{p}.attn.proj.bias": r(v_width)})
        sd.update({f"{p}.mlp.fc1.weight": r(4 * v_width, v_width), f"{p}.mlp.fc1.bias": r(4 * v_width)})
        sd.update({f"{p}.mlp.fc2.weight": r(v_width, 4 * v_width), f"{p}.mlp.fc2.bias": r(v_width)})
    for i in range(t_layers):
        p = f"{t}.encoder.layer.{i}"
        for att, kv_width in (("attention", t_width), ("crossattention", v_width)):
            sd.update({f"{p}.{att}.self.query.weight": r(t_width, t_width), f"{p}.{att}.self.query.bias": r(t_width)})
            for n in ("key", "value"):
                sd.update({f"{p}.{att}.self.{n}.weight": r(t_width, kv_width), f"{p}.{att}.self.{n}.bias": r(t_width)})
            sd.update({f"{p}.{att}.output.dense.weight": r(t_width, t_width)})
            sd.update({f"{p}.{att}.output.dense.bias": r(t_width)})
            sd.update({f"{p}.{att}.output.LayerNorm.weight": 1 + r(t_width)})
            sd.update({f"{p}.{att}.output.LayerNorm.bias": r(t_width)})
        sd.update({f"{p}.intermediate.dense.weight": r(4 * t_width, t_width)})
        sd.update({f"{p}.intermediate.dense.bias": r(4 * t_width)})
        sd.update({f"{p}.output.dense.weight": r(t_width, 4 * t_width), f"{p}.output.dense.bias": r(t_width)})
        sd.update({f"{p}.output.LayerNorm.weight": 1 + r(t_width), f"{p}.output.LayerNorm.bias": r(t_width)})
    for idx, (n_in, n_out) in zip((0, 2, 4, 6, 7), ((t_width, 1024), (1024, 128), (128, 64), (64, 16), (16, 1))):
        sd.update({f"mlp.layers.{idx}.weight": r(n_out, n_in), f"mlp.layers.{idx}.bias": r(n_out)})
    return sd


def sample_images(n=5, size=(40, 48), seed=0):
    """`n` random uint8 images (B, 3, H, W) with distinct contents."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, *size), generator=g, dtype=torch.uint8)


PROMPTS = ["a red cat", "the blue dog", "a photo of a green cat", "an dog on the cat", "red"]


def write_tiny_clip(directory):
    """A tiny transformers CLIPModel + CLIPProcessor (OpenAI normalisation, bicubic, 32 px) saved with safetensors."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    directory = Path(directory)
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


def write_tiny_hps(directory):
    """`HPS_v2.1_compressed.pt` ({"state_dict": open_clip keys}) for a tiny ViT (head width 20 / 16) + tokenizer."""
    directory = Path(directory)
    torch.save({"state_dict": make_open_clip_state_dict()}, directory / "HPS_v2.1_compressed.pt")
    _clip_tokenizer(directory).save_pretrained(directory / "tokenizer")
    return directory


def write_tiny_imagereward(directory):
    """ImageReward.pt + med_config.json (BLIP's BERT config, tiny) + a bert-style WordPiece tokenizer."""
    from transformers import BertTokenizer

    directory = Path(directory)
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


def tiny_reward_factories(clip_dir, hps_dir, imagereward_dir):
    """`name -> factory(**kwargs)` loading PickScore, HPS-v2.1 and ImageReward from the tiny folders written above
    (through the rewards' real loading code); kwargs such as `dtype=` or `batch_size=` go to `load_reward`."""
    from diffusers_mixgrpo.rewards import load_reward

    clip, hps, ir = str(clip_dir), Path(hps_dir), Path(imagereward_dir)
    return {
        "pickscore": lambda **kw: load_reward("pickscore", checkpoint=clip, processor=clip, **kw),
        "hpsv2.1": lambda **kw: load_reward(
            "hpsv2.1",
            checkpoint=str(hps),
            tokenizer=str(hps / "tokenizer"),
            vision_head_width=20,
            text_head_width=16,
            **kw,
        ),
        "imagereward": lambda **kw: load_reward(
            "imagereward", checkpoint=str(ir), tokenizer=str(ir / "tokenizer"), vision_head_width=16, **kw
        ),
    }
