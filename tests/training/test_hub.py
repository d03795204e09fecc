"""Model card and Hub upload, offline: HfApi is mocked; the uploaded folder and the call arguments are checked."""

import fnmatch
import os
from unittest import mock

import pytest
import yaml

from diffusers_mixgrpo.training import hub
from diffusers_mixgrpo.training.config import GRPOConfig
from diffusers_mixgrpo.training.hub import push_folder_to_hub, write_model_card

TOKEN = "hf_FakeToken1234567890abcdef"


def make_folder(tmp_path):
    folder = tmp_path / "final"
    folder.mkdir()
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"weights placeholder")
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "optimizer.bin").write_bytes(b"big")
    return folder


def read_card(folder):
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


def test_model_card_metadata_sections_and_files(tmp_path):
    folder = make_folder(tmp_path)
    config = GRPOConfig(
        pretrained_model_name_or_path="black-forest-labs/FLUX.1-dev",
        model_family="flux",
        method="flash",
        rewards={"hpsv2.1": 1.0, "pickscore": 1.0},
        hub_model_id="me/flux-mixgrpo-flash",
        hub_token=TOKEN,
    )
    history = {"step": [0, 1, 2, 3], "hpsv2.1": [0.30, 0.31, 0.33, 0.34], "pickscore": [21.0, 21.2, 21.3, 21.5]}
    path = write_model_card(folder, config, reward_history=history)
    assert path == str(folder / "README.md")

    meta, body = read_card(folder)
    assert meta["base_model"] == "black-forest-labs/FLUX.1-dev"
    assert meta["library_name"] == "diffusers"
    assert meta["license"] == "other" and meta["license_name"] == "flux-1-dev-non-commercial-license"
    assert {"lora", "mixgrpo", "text-to-image", "flash", "flux"} <= set(meta["tags"])
    assert "## Method" in body and "MixGRPO-Flash" in body
    assert "| tail compression r | 0.4 |" in body and "| group size G | 12 |" in body
    assert "![reward curve](reward_curve.png)" in body
    assert 'pipe.load_lora_weights("me/flux-mixgrpo-flash")' in body
    assert (folder / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = yaml.safe_load((folder / "training_config.yaml").read_text())
    assert saved["method"] == "flash" and "hub_token" not in saved
    for name in ("README.md", "training_config.yaml"):
        assert TOKEN not in (folder / name).read_text()


def test_model_card_of_qwen_image_calls_its_cfg_true_cfg_scale(tmp_path):
    folder = tmp_path / "out"
    config = GRPOConfig(pretrained_model_name_or_path="Qwen/Qwen-Image", model_family="qwenimage", guidance_scale=4.0)
    write_model_card(folder, config, repo_id="me/qwen-mixgrpo")
    meta, body = read_card(folder)
    assert "qwenimage" in meta["tags"] and "Qwen-Image" in body
    assert 'true_cfg_scale=4.0, negative_prompt=" "' in body and "guidance_scale=" not in body


def test_model_card_for_a_local_base_and_full_fine_tune(tmp_path):
    folder = tmp_path / "out"
    base = tmp_path / "tiny-flux"
    base.mkdir()
    config = GRPOConfig(pretrained_model_name_or_path=str(base), use_lora=False, method="dancegrpo")
    write_model_card(folder, config, repo_id="me/tiny", license="apache-2.0")
    meta, body = read_card(folder)
    assert "base_model" not in meta  # a local path is not a Hub id
    assert meta["license"] == "apache-2.0" and "lora" not in meta["tags"]
    assert 'DiffusionPipeline.from_pretrained("me/tiny"' in body and "load_lora_weights" not in body
    assert "DanceGRPO" in body
    assert not (folder / "reward_curve.png").exists()


def test_push_folder_to_hub_calls_and_uploaded_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    folder = make_folder(tmp_path)
    config = GRPOConfig(pretrained_model_name_or_path="black-forest-labs/FLUX.1-dev", hub_token=TOKEN)
    write_model_card(folder, config, reward_history=[0.1, 0.2, 0.3], repo_id="me/run")
    seen = {}

    def fake_upload_folder(**kwargs):
        root = kwargs["folder_path"]
        files = []
        for dirpath, _, names in os.walk(root):
            for n in names:
                rel = os.path.relpath(os.path.join(dirpath, n), root).replace(os.sep, "/")
                if not any(fnmatch.fnmatch(rel, p) for p in kwargs["ignore_patterns"]):
                    files.append(rel)
        seen["files"] = sorted(files)
        seen["config"] = yaml.safe_load(open(os.path.join(root, "training_config.yaml")))
        return mock.Mock(commit_url="https://huggingface.co/me/run/commit/abc")

    with mock.patch.object(hub, "HfApi") as api_cls, mock.patch.object(hub, "get_token", return_value=None):
        api = api_cls.return_value
        api.create_repo.return_value = mock.Mock(repo_id="me/run")
        api.upload_folder.side_effect = fake_upload_folder
        url = push_folder_to_hub(folder, "me/run", private=True, token=TOKEN)

    api_cls.assert_called_once_with(token=TOKEN)
    api.create_repo.assert_called_once_with("me/run", private=True, exist_ok=True, repo_type="model")
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "me/run" and kwargs["folder_path"] == str(folder) and kwargs["repo_type"] == "model"
    assert url == "https://huggingface.co/me/run"
    assert seen["files"] == sorted(
        ["README.md", "pytorch_lora_weights.safetensors", "reward_curve.png", "training_config.yaml"]
    )
    assert "hub_token" not in seen["config"]


def test_push_refuses_a_folder_that_contains_the_token(tmp_path):
    folder = make_folder(tmp_path)
    (folder / "notes.txt").write_text(f"token={TOKEN}\n")
    with mock.patch.object(hub, "HfApi") as api_cls, mock.patch.object(hub, "get_token", return_value=TOKEN):
        with pytest.raises(ValueError, match="contains your Hub token"):
            push_folder_to_hub(folder, "me/run")  # token from huggingface_hub's own mechanisms
    api_cls.return_value.create_repo.assert_not_called()
    api_cls.return_value.upload_folder.assert_not_called()


def test_push_without_explicit_token_lets_huggingface_hub_find_it(tmp_path):
    folder = make_folder(tmp_path)
    with mock.patch.object(hub, "HfApi") as api_cls, mock.patch.object(hub, "get_token", return_value=None):
        api_cls.return_value.create_repo.return_value = mock.Mock(repo_id="user/run")
        url = push_folder_to_hub(folder, "run")
    api_cls.assert_called_once_with(token=None)
    assert api_cls.return_value.upload_folder.call_args.kwargs["repo_id"] == "user/run"
    assert api_cls.return_value.create_repo.call_args.kwargs["private"] is None
    assert url == "https://huggingface.co/user/run"


# -- nothing pushed names a local path (issue 13, item 15) ----------------------------------------------------------


def _all_text(folder):
    return "\n".join(p.read_text() for p in folder.iterdir() if p.suffix in {".md", ".yaml"})


def test_a_local_base_model_is_never_written_as_a_path(tmp_path):
    base = tmp_path / "models" / "tiny-flux"
    base.mkdir(parents=True)
    prompts = tmp_path / "data" / "prompts.txt"
    config = GRPOConfig(
        pretrained_model_name_or_path=str(base),
        model_family="flux",
        output_dir=str(tmp_path / "runs" / "mine"),
        prompt_file=str(prompts),
        rewards={"hpsv2.1": 1.0},
        reward_kwargs={"hpsv2.1": {"checkpoint": str(tmp_path / "weights" / "HPS_v2.1_compressed.pt")}},
        resume_from_checkpoint=str(tmp_path / "runs" / "mine" / "checkpoint-5"),
    )
    folder = tmp_path / "upload"
    write_model_card(folder, config, repo_id="me/mine")
    assert str(tmp_path) not in _all_text(folder)
    meta, body = read_card(folder)
    assert "base_model" not in meta and "LoRA weights for a FLUX.1 base model, trained" in body
    saved = yaml.safe_load((folder / "training_config.yaml").read_text())
    assert saved["pretrained_model_name_or_path"] is None and saved["prompt_file"] == "prompts.txt"
    assert saved["output_dir"] == "mine" and saved["resume_from_checkpoint"] is None
    assert saved["reward_kwargs"] == {"hpsv2.1": {"checkpoint": "HPS_v2.1_compressed.pt"}}


def test_the_hub_id_of_a_cached_or_named_base_model_is_used(tmp_path):
    snapshot = tmp_path / "hub" / "models--black-forest-labs--FLUX.1-dev" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    folder = tmp_path / "upload"
    write_model_card(folder, GRPOConfig(pretrained_model_name_or_path=str(snapshot)), repo_id="me/a")
    meta, body = read_card(folder)
    assert meta["base_model"] == "black-forest-labs/FLUX.1-dev" and str(tmp_path) not in _all_text(folder)
    assert "[black-forest-labs/FLUX.1-dev](https://huggingface.co/black-forest-labs/FLUX.1-dev)" in body
    local = tmp_path / "my-copy"
    local.mkdir()
    config = GRPOConfig(pretrained_model_name_or_path=str(local), hub_base_model="black-forest-labs/FLUX.1-schnell")
    write_model_card(folder, config, repo_id="me/b")
    meta, body = read_card(folder)
    assert meta["base_model"] == "black-forest-labs/FLUX.1-schnell" and meta["license"] == "apache-2.0"
    assert 'from_pretrained("black-forest-labs/FLUX.1-schnell"' in body and str(tmp_path) not in _all_text(folder)


def test_trackers_get_the_public_config(tmp_path):
    from diffusers_mixgrpo.training.logging_utils import tracker_config

    values = tracker_config(GRPOConfig(output_dir=str(tmp_path / "x" / "run"), prompt_file=str(tmp_path / "p.txt")))
    assert values["output_dir"] == "run" and values["prompt_file"] == "p.txt"
    assert not any(str(tmp_path) in str(v) for v in values.values())
