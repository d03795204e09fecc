"""Model-backed rewards through their real loading code, on tiny random checkpoints in the original formats."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_reward_checkpoints import IMAGE_SIZE, PROMPTS, make_open_clip_state_dict, sample_images

from diffusers_mixgrpo.rewards import load_reward
from diffusers_mixgrpo.rewards._preprocess import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    resize_max_size_pad,
    resize_shortest_center_crop,
)
from diffusers_mixgrpo.rewards.aesthetic import AestheticMLP
from diffusers_mixgrpo.rewards.hps import convert_open_clip_state_dict


@pytest.fixture(scope="module")
def aesthetic_head(tmp_path_factory, tiny_clip_dir):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("aesthetic") / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(AestheticMLP(16).state_dict(), path)  # projection_dim of the tiny CLIP
    return path


@pytest.fixture(scope="module")
def reward_factories(tiny_clip_dir, tiny_hps_dir, tiny_imagereward_dir, aesthetic_head):
    clip = str(tiny_clip_dir)
    return {
        "pickscore": lambda **kw: load_reward("pickscore", checkpoint=clip, processor=clip, **kw),
        "clipscore": lambda **kw: load_reward("clipscore", model_name_or_path=clip, **kw),
        "aesthetic": lambda **kw: load_reward("aesthetic", clip_model=clip, head=str(aesthetic_head), **kw),
        "hpsv2.1": lambda **kw: load_reward(
            "hpsv2.1",
            checkpoint=str(tiny_hps_dir),
            tokenizer=str(tiny_hps_dir / "tokenizer"),
            vision_head_width=20,
            text_head_width=16,
            **kw,
        ),
        "imagereward": lambda **kw: load_reward(
            "imagereward",
            checkpoint=str(tiny_imagereward_dir),
            tokenizer=str(tiny_imagereward_dir / "tokenizer"),
            vision_head_width=16,
            **kw,
        ),
    }


@pytest.fixture(scope="module")
def rewards(reward_factories):
    """Each reward loaded once (float32, CPU) for the module; tests change `batch_size` where they need to."""
    return {name: factory() for name, factory in reward_factories.items()}


NAMES = ["pickscore", "clipscore", "aesthetic", "hpsv2.1", "imagereward"]


@pytest.mark.parametrize("name", NAMES)
def test_one_float32_score_per_image_in_input_order(rewards, name):
    reward = rewards[name]
    reward.batch_size = 2
    images = sample_images()
    scores = reward(images, PROMPTS)
    assert scores.shape == (5,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert len(set(scores.tolist())) > 1  # distinct images get distinct scores
    perm = [3, 0, 4, 1, 2]
    torch.testing.assert_close(reward(images[perm], [PROMPTS[i] for i in perm]), scores[perm])


@pytest.mark.parametrize("name", NAMES)
def test_batch_size_does_not_change_scores_and_runs_are_deterministic(reward_factories, rewards, name):
    images = sample_images()
    reward = rewards[name]
    reward.batch_size = 16
    full = reward(images, PROMPTS)
    assert torch.equal(reward(images, PROMPTS), full)
    reward.batch_size = 2
    torch.testing.assert_close(reward(images, PROMPTS), full, rtol=1e-5, atol=1e-5)
    # A fresh load (through the same loading code) gives the same scores.
    torch.testing.assert_close(reward_factories[name](batch_size=3)(images, PROMPTS), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_pil_uint8_and_float_images_give_the_same_scores(rewards, name):
    reward = rewards[name]
    images = sample_images(3)
    ref = reward(images, PROMPTS[:3])
    torch.testing.assert_close(reward(images.float() / 255.0, PROMPTS[:3]), ref)
    pil = [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in images]
    torch.testing.assert_close(reward(pil, PROMPTS[:3]), ref)


@pytest.mark.parametrize("name", NAMES)
def test_model_is_frozen_in_eval_mode_with_the_requested_dtype(reward_factories, name):
    reward = reward_factories[name](dtype=torch.bfloat16)
    reward.train()  # stays in eval mode
    params = list(reward.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert not any(m.training for m in reward.modules())
    assert torch.bfloat16 in {p.dtype for p in params}
    scores = reward(sample_images(2), PROMPTS[:2])
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()


def test_missing_weights_name_the_hub_id_and_the_download_command(tmp_path, monkeypatch, tiny_clip_dir):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"huggingface-cli download xswu/HPSv2 HPS_v2.1_compressed.pt"):
        load_reward("hpsv2.1")
    with pytest.raises(OSError, match=r"huggingface-cli download laion/CLIP-ViT-H-14-laion2B-s32B-b79K"):
        load_reward("pickscore")
    with pytest.raises(OSError, match=r"huggingface-cli download yuvalkirstain/PickScore_v1"):
        load_reward("pickscore", processor=str(tiny_clip_dir))
    with pytest.raises(OSError, match=r"local path .*missing"):
        load_reward("clipscore", model_name_or_path=str(tmp_path / "missing"))


# --- preprocessing ---------------------------------------------------------------------------------------------


def test_center_crop_transform_matches_torchvision_semantics():
    image = Image.fromarray(np.arange(60 * 40 * 3, dtype=np.uint8).reshape(60, 40, 3))  # W=40, H=60
    out = resize_shortest_center_crop(image, 20)
    assert out.size == (20, 20)
    resized = image.resize((20, 30), Image.BICUBIC)  # short side 20, long int(20 * 60 / 40) = 30
    np.testing.assert_array_equal(np.asarray(out), np.asarray(resized)[5:25])


def test_hps_transform_pads_the_long_image_to_a_square_with_black():
    image = Image.new("RGB", (64, 32), (255, 255, 255))
    out = resize_max_size_pad(image, 32)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert (out[:, :8] == 0).all() and (out[:, 24:] == 0).all()
    torch.testing.assert_close(out[:, 8:24], torch.ones(3, 16, 32))  # interior of a flat image: 1 (tolerance 1e-6)


def test_hps_and_imagereward_normalise_with_openai_clip_constants(rewards):
    gray = [Image.new("RGB", (50, 40), (128, 128, 128))]
    expected = (128 / 255 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    for name in ("imagereward", "hpsv2.1"):
        pixels = rewards[name].preprocess(gray)
        assert pixels.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
        torch.testing.assert_close(pixels[0, :, IMAGE_SIZE // 2, IMAGE_SIZE // 2], expected)
    assert OPENAI_CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert OPENAI_CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_clip_processors_resize_to_the_model_size_with_openai_constants(rewards):
    for name in ("pickscore", "aesthetic"):
        proc = rewards[name].image_processor
        assert tuple(proc.image_mean) == pytest.approx(OPENAI_CLIP_MEAN)
        assert tuple(proc.image_std) == pytest.approx(OPENAI_CLIP_STD)
        pixels = proc(images=[Image.new("RGB", (50, 40))], return_tensors="pt")["pixel_values"]
        assert pixels.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)


# --- scores computed independently ------------------------------------------------------------------------------


def test_pickscore_is_logit_scale_times_cosine(rewards, tiny_clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(tiny_clip_dir), CLIPProcessor.from_pretrained(tiny_clip_dir)
    images = [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in sample_images(3)]
    inputs = proc(text=PROMPTS[:3], images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image  # logit_scale.exp() * cos, per pair
    torch.testing.assert_close(rewards["pickscore"](images, PROMPTS[:3]), logits.diagonal(), rtol=1e-5, atol=1e-5)


def test_clipscore_mean_matches_the_torchmetrics_metric(rewards):
    reward = rewards["clipscore"]
    images = sample_images(4)
    scores = reward(images, PROMPTS[:4])
    assert (scores >= 0).all() and (scores <= 100).all()
    reward.metric.reset()
    reward.metric.update(list(images), PROMPTS[:4])
    raw_mean = reward.metric.compute()  # torchmetrics clamps the mean, we clamp each image: equal when all >= 0
    if (scores > 0).all():
        torch.testing.assert_close(scores.mean(), raw_mean, rtol=1e-5, atol=1e-4)


def test_torchmetrics_still_needs_the_projected_features_workaround(tiny_clip_dir):
    """If this fails, torchmetrics/transformers fixed `get_image_features`: `_ProjectedCLIP` can go."""
    from torchmetrics.multimodal import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    metric = CLIPScore(
        model_name_or_path=lambda: (
            CLIPModel.from_pretrained(tiny_clip_dir),
            CLIPProcessor.from_pretrained(tiny_clip_dir),
        )
    )
    with pytest.raises(AttributeError, match="norm"):
        metric.update(list(sample_images(2)), PROMPTS[:2])
    with pytest.raises(ValueError):
        CLIPScore(model_name_or_path=str(tiny_clip_dir))  # a local directory is refused


def test_aesthetic_is_the_mlp_of_the_normalised_image_embedding(rewards, tiny_clip_dir, aesthetic_head):
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(tiny_clip_dir), CLIPProcessor.from_pretrained(tiny_clip_dir)
    head = AestheticMLP(16)
    head.load_state_dict(torch.load(aesthetic_head, weights_only=True))
    images = [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in sample_images(3)]
    with torch.no_grad():
        emb = model(**proc(text=["x"] * 3, images=images, return_tensors="pt", padding=True)).image_embeds
        expected = head.eval()(emb / emb.norm(dim=-1, keepdim=True)).squeeze(-1)
    torch.testing.assert_close(rewards["aesthetic"](images, None), expected, rtol=1e-5, atol=1e-5)


def _open_clip_block(x, sd, p, heads, mask):
    width = x.shape[-1]
    h = F.layer_norm(x, (width,), sd[f"{p}.ln_1.weight"], sd[f"{p}.ln_1.bias"])
    attn, _ = F.multi_head_attention_forward(
        h.transpose(0, 1), h.transpose(0, 1), h.transpose(0, 1), width, heads,
        sd[f"{p}.attn.in_proj_weight"], sd[f"{p}.attn.in_proj_bias"], None, None, False, 0.0,
        sd[f"{p}.attn.out_proj.weight"], sd[f"{p}.attn.out_proj.bias"], training=False, need_weights=False,
        attn_mask=mask,
    )  # fmt: skip
    x = x + attn.transpose(0, 1)
    h = F.layer_norm(x, (width,), sd[f"{p}.ln_2.weight"], sd[f"{p}.ln_2.bias"])
    h = F.linear(
        F.gelu(F.linear(h, sd[f"{p}.mlp.c_fc.weight"], sd[f"{p}.mlp.c_fc.bias"])), sd[f"{p}.mlp.c_proj.weight"]
    )
    return x + h + sd[f"{p}.mlp.c_proj.bias"]


def _open_clip_reference(sd, pixels, ids, v_heads=2, t_heads=2, layers=2):
    """open_clip's CLIP.encode_image / encode_text written from its definition, on the raw open_clip state dict."""
    w = sd["visual.conv1.weight"]
    x = F.conv2d(pixels, w, stride=w.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.class_embedding"].expand(x.shape[0], 1, -1), x], 1) + sd["visual.positional_embedding"]
    x = F.layer_norm(x, (x.shape[-1],), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    for i in range(layers):
        x = _open_clip_block(x, sd, f"visual.transformer.resblocks.{i}", v_heads, None)
    x = F.layer_norm(x[:, 0], (x.shape[-1],), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"])
    image = x @ sd["visual.proj"]
    t = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    mask = torch.full((ids.shape[1],) * 2, float("-inf")).triu(1)
    for i in range(layers):
        t = _open_clip_block(t, sd, f"transformer.resblocks.{i}", t_heads, mask)
    t = F.layer_norm(t, (t.shape[-1],), sd["ln_final.weight"], sd["ln_final.bias"])
    text = t[torch.arange(ids.shape[0]), ids.argmax(-1)] @ sd["text_projection"]
    return image, text


def test_open_clip_conversion_reproduces_open_clip_features():
    from transformers import CLIPModel

    sd = make_open_clip_state_dict()
    config, converted = convert_open_clip_state_dict(sd, vision_head_width=20, text_head_width=16)
    model = CLIPModel(config).eval()
    model.load_state_dict(converted, strict=True)
    pixels = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    ids = torch.tensor([[512, 5, 9, 513, 0, 0], [512, 7, 513, 0, 0, 0], [512, 1, 2, 3, 4, 513]])
    with torch.no_grad():
        ref_image, ref_text = _open_clip_reference(sd, pixels, ids)
        torch.testing.assert_close(model.get_image_features(pixel_values=pixels).pooler_output, ref_image)
        torch.testing.assert_close(model.get_text_features(input_ids=ids).pooler_output, ref_text)


def test_hps_score_is_the_cosine_of_open_clip_features(rewards, tiny_hps_dir):
    reward = rewards["hpsv2.1"]
    sd = torch.load(tiny_hps_dir / "HPS_v2.1_compressed.pt", weights_only=True)["state_dict"]
    images = sample_images(2)
    pixels = reward.preprocess([Image.fromarray(a.permute(1, 2, 0).numpy()) for a in images])
    ids = reward.tokenizer(PROMPTS[:2], padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        image, text = _open_clip_reference(sd, pixels, ids)
    expected = F.cosine_similarity(image, text, dim=-1)
    torch.testing.assert_close(reward(images, PROMPTS[:2]), expected, rtol=1e-4, atol=1e-5)


def test_imagereward_vision_tower_matches_blip_vit(rewards, tiny_imagereward_dir):
    """BLIP's ViT (timm-style blocks, fused qkv, LayerNorm eps 1e-6) written from its definition."""
    sd = torch.load(tiny_imagereward_dir / "ImageReward.pt", weights_only=True)
    v = {k.removeprefix("blip.visual_encoder."): t for k, t in sd.items() if k.startswith("blip.visual_encoder.")}
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    x = F.conv2d(pixels, v["patch_embed.proj.weight"], v["patch_embed.proj.bias"], stride=8).flatten(2).transpose(1, 2)
    x = torch.cat([v["cls_token"].expand(2, -1, -1), x], 1) + v["pos_embed"]
    width, heads = x.shape[-1], 2
    for i in range(2):
        p = f"blocks.{i}"
        h = F.layer_norm(x, (width,), v[f"{p}.norm1.weight"], v[f"{p}.norm1.bias"], eps=1e-6)
        q, k, vv = F.linear(h, v[f"{p}.attn.qkv.weight"], v[f"{p}.attn.qkv.bias"]).chunk(3, -1)
        q, k, vv = (t.reshape(2, -1, heads, width // heads).transpose(1, 2) for t in (q, k, vv))
        a = F.scaled_dot_product_attention(q, k, vv).transpose(1, 2).reshape(2, -1, width)
        x = x + F.linear(a, v[f"{p}.attn.proj.weight"], v[f"{p}.attn.proj.bias"])
        h = F.layer_norm(x, (width,), v[f"{p}.norm2.weight"], v[f"{p}.norm2.bias"], eps=1e-6)
        x = x + F.linear(
            F.gelu(F.linear(h, v[f"{p}.mlp.fc1.weight"], v[f"{p}.mlp.fc1.bias"])), v[f"{p}.mlp.fc2.weight"]
        )
        x = x + v[f"{p}.mlp.fc2.bias"]
    x = F.layer_norm(x, (width,), v["norm.weight"], v["norm.bias"], eps=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(rewards["imagereward"].vision(pixel_values=pixels).last_hidden_state, x)


def test_imagereward_standardises_the_head_output(reward_factories):
    from diffusers_mixgrpo.rewards.imagereward import IMAGEREWARD_MEAN, IMAGEREWARD_STD

    reward = reward_factories["imagereward"]()  # its head is modified below
    assert (IMAGEREWARD_MEAN, IMAGEREWARD_STD) == (0.16717362830052426, 1.0333394966054072)
    with torch.no_grad():
        reward.mlp.layers[7].bias.fill_(5.0)  # shifting the head output by d shifts the score by d / std
        shifted = reward(sample_images(2), PROMPTS[:2])
        reward.mlp.layers[7].bias.fill_(5.0 + IMAGEREWARD_STD)
        torch.testing.assert_close(reward(sample_images(2), PROMPTS[:2]), shifted + 1.0)


def test_imagereward_checkpoint_with_unknown_keys_is_refused():
    from diffusers_mixgrpo.rewards.imagereward import convert_imagereward_state_dict

    with pytest.raises(KeyError, match="blip.text_decoder"):
        convert_imagereward_state_dict({"blip.text_decoder.x": torch.zeros(1)})


class _Pickled:
    pass


def test_pickled_objects_are_refused_without_an_explicit_opt_out(tmp_path, tiny_hps_dir):
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": _Pickled()}, path)  # not a tensor-only file
    with pytest.raises(RuntimeError, match="weights_only=False"):
        load_reward("hpsv2.1", checkpoint=str(path), tokenizer=str(tiny_hps_dir / "tokenizer"))


# --- fidelity to the official scorers (issue 12): each test fails if the deviation comes back ---------------------

MOJIBAKE = "caf\u00c3\u00a9 au lait"  # "café" encoded as UTF-8 and decoded as Latin-1


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Tom &amp; Jerry", "Tom & Jerry"),
        ("Tom &amp;amp; Jerry", "Tom & Jerry"),  # unescaped twice, as open_clip
        (MOJIBAKE, "caf\u00e9 au lait"),  # ftfy.fix_text
        ("  a\tred \n\n cat  ", "a red cat"),
    ],
)
def test_hps_tokenizes_as_open_clip(rewards, raw, clean):
    # open_clip: whitespace_clean(basic_clean(text)) with basic_clean = ftfy.fix_text + html.unescape x2 + strip.
    reward = rewards["hpsv2.1"]
    ids = reward.tokenize([raw])
    assert torch.equal(ids, reward.tokenize([clean]))
    hf_only = reward.tokenizer([raw], padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    if raw.strip().split() != clean.split():
        assert not torch.equal(ids, hf_only)  # the Hugging Face tokenizer alone tokenizes these differently


def test_hps_scores_an_escaped_prompt_as_the_plain_one(rewards):
    reward = rewards["hpsv2.1"]
    images = sample_images(2)
    assert torch.equal(
        reward(images, ["Tom &amp; Jerry", MOJIBAKE]), reward(images, ["Tom & Jerry", "caf\u00e9 au lait"])
    )


def _hps_reference_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """HPSv2's preprocess_val written from its definition (torchvision's ops spelled out): ToTensor, ResizeMaxSize on
    the tensor (bicubic, antialias, align_corners=False, no clamp), zero padding, Normalize."""
    x = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255
    h, w = x.shape[1:]
    scale = size / max(h, w)
    new = (round(h * scale), round(w * scale))
    x = F.interpolate(x[None], size=new, mode="bicubic", align_corners=False, antialias=True)[0]
    ph, pw = size - new[0], size - new[1]
    x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], value=0.0)
    return (x - torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)


@pytest.mark.parametrize("size", [(48, 40), (40, 72), (97, 61)])
def test_hps_resizes_the_tensor_as_hpsv2(rewards, size):
    # Exact. The old order (resize the uint8 PIL image, then ToTensor) is 1/255-quantised and clamped: it differs.
    reward = rewards["hpsv2.1"]
    image = Image.fromarray(sample_images(1, size=size)[0].permute(1, 2, 0).numpy())
    pixels = reward.preprocess([image])[0]
    assert torch.equal(pixels, _hps_reference_pixels(image, IMAGE_SIZE))
    w, h = image.size
    scale = IMAGE_SIZE / max(w, h)
    old = np.asarray(image.resize((round(w * scale), round(h * scale)), Image.BICUBIC), dtype=np.float32) / 255
    old_interior = (
        torch.from_numpy(old).permute(2, 0, 1) - torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    ) / torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    top, left = (IMAGE_SIZE - old.shape[0]) // 2, (IMAGE_SIZE - old.shape[1]) // 2
    interior = pixels[:, top : top + old.shape[0], left : left + old.shape[1]]
    assert (interior - old_interior).abs().max() > 1e-3


@pytest.mark.parametrize(("w", "h", "offset"), [(1216, 832, (52, 0)), (832, 1216, (0, 52)), (1024, 1024, (0, 0))])
def test_center_crop_offset_rounds_as_torchvision(w, h, offset):
    # OpenAI CLIP's CenterCrop (torchvision): int(round((side - crop) / 2)). At 224 px the SD3/SDXL sizes resize to
    # 327x224 / 224x327: (327 - 224) / 2 = 51.5 -> 52, where transformers' processors floor to 51.
    rows, cols = np.mgrid[0:h, 0:w]
    x = np.stack([cols % 251, rows % 251, (rows + cols) % 251], axis=-1).astype(np.uint8)  # no two rows/cols alike
    image = Image.fromarray(x)
    out = resize_shortest_center_crop(image, 224)
    short = min(w, h)
    resized = np.asarray(image.resize((int(224 * w / short), int(224 * h / short)), Image.BICUBIC))
    left, top = offset
    np.testing.assert_array_equal(np.asarray(out), resized[top : top + 224, left : left + 224])
    floored = resized[(resized.shape[0] - 224) // 2 :][:224, (resized.shape[1] - 224) // 2 :][:, :224]
    assert np.array_equal(np.asarray(out), floored) == (offset == (0, 0))


def test_aesthetic_crops_as_openai_clip_not_as_the_transformers_processor(rewards):
    # The tiny CLIP is 32 px: a 35x32 image crops at round(1.5) = 2 (torchvision), the processor floors to 1.
    reward = rewards["aesthetic"]
    x = np.zeros((32, 35, 3), dtype=np.uint8)
    x[:, :, :] = (np.arange(35, dtype=np.uint8) * 7)[None, :, None]
    image = Image.fromarray(x)
    expected = (
        torch.from_numpy(x[:, 2:34]).permute(2, 0, 1).float() / 255 - torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    ) / (torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1))
    pixels = reward.preprocess([image])[0]
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-6)
    processor = reward.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
    assert not torch.allclose(processor, pixels, atol=1e-3)  # the floored offset: one column off


@pytest.mark.parametrize("name", ["pickscore", "clipscore", "aesthetic"])
def test_clip_family_processors_are_pinned_to_the_pil_backend(reward_factories, monkeypatch, name):
    # transformers picks the torchvision processor whenever torchvision imports; ours must ask for the PIL one
    # explicitly, so the choice does not depend on what is installed.
    from transformers import AutoImageProcessor

    calls = []
    original = AutoImageProcessor.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        calls.append(kwargs.get("backend"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoImageProcessor, "from_pretrained", classmethod(spy))
    reward = reward_factories[name]()
    assert calls and all(backend == "pil" for backend in calls)
    processor = reward.metric.processor.image_processor if name == "clipscore" else reward.image_processor
    assert type(processor).__name__.endswith("Pil")
