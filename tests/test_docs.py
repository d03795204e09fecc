"""Every code block of README.md and docs/*.md runs, on tiny offline models, so that none can drift from the code.

How a block runs:

- ```python blocks: the blocks of one page run in order in one namespace (a page reads like a notebook), in a
  temporary working directory holding `prompts.txt`, with `sys.argv` = [script name] (for `parse_args()`).
- ```bash blocks: each command (lines joined at a trailing backslash, `#` comments dropped) runs:
  `python examples/<script>.py ...` and `accelerate launch [options] examples/<script>.py ...` in this process (runpy,
  as `__main__`), `python -c "..." [> file]` in a subprocess. Any other command makes the test fail unless the block
  is marked (below).
- A block right after `<!-- no-test: reason -->` is skipped. The reason is required; `MAX_SKIPPED` bounds how many
  blocks may be skipped, and the count is printed.
- Fenced blocks without a language, or in another language (yaml, text), are not code to run.

The only differences from the text as written (documented substitutions):

1. Hub ids -> tiny random local models built offline (`HUB_IDS`): the weights cannot be downloaded here.
2. `"cuda"` -> `"cpu"`: no GPU.
3. In Python blocks, `height=N` / `width=N` -> 32 px (CPU time); in commands, the `TRAIN_FLAGS` appended to every
   training command (1 step, or 2 when resuming; 2 images per prompt, 32 px, 4 steps, LoRA rank 4, no tracker, no
   validation) and, for a command with a shipped `--config` (whose rewards need weights), the weight-free
   `--rewards jpeg_compressibility=1.0`.
4. Relative paths `examples/...` and `src/...` point into the repository; `huggingface_hub.HfApi` records uploads
   instead of making them (and the test checks that no uploaded file holds a local path).
"""

import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAX_SKIPPED = 8
RUN_LANGS = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash", "console": "bash"}
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
NO_TEST = re.compile(r"<!--\s*no-test:\s*(.*?)\s*-->\s*$", re.S)

TRAIN_FLAGS = [
    "--num_generations", "2", "--resolution", "32", "--num_inference_steps", "4", "--window_size", "2",
    "--mixed_precision", "no", "--gradient_checkpointing", "false", "--report_to", "none", "--lora_rank", "4",
    "--lora_alpha", "4", "--validation_steps", "0", "--checkpointing_steps", "1",
]  # fmt: skip
PROMPTS = "a red circle on the left\na blue square on the right\na green cross on the top\na cat\n"


def extract_blocks(page: Path) -> list[dict]:
    """`[{"lang", "code", "line", "skip": reason or None}]` for the fenced blocks of a page."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NO_TEST.search(before)
        blocks.append(
            {
                "lang": RUN_LANGS.get(match.group(1).lower(), "text"),
                "code": match.group(2),
                "line": text[: match.start()].count("\n") + 1,
                "skip": marker.group(1) if marker else None,
            }
        )
    return blocks


ALL_BLOCKS = {page.name: extract_blocks(page) for page in PAGES}


def test_few_blocks_are_skipped_and_each_says_why(capsys):
    runnable = [b for blocks in ALL_BLOCKS.values() for b in blocks if b["lang"] != "text"]
    skipped = [b for b in runnable if b["skip"] is not None]
    assert all(b["skip"].strip() for b in skipped), "a no-test marker needs a reason"
    assert len(skipped) <= MAX_SKIPPED, [(b["line"], b["skip"]) for b in skipped]
    with capsys.disabled():
        print(f"\n[docs] {len(runnable) - len(skipped)} of {len(runnable)} code blocks run, {len(skipped)} marked")
    assert len(runnable) - len(skipped) >= 15


# ----------------------------------------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """The tiny models the Hub ids of the docs stand for (FLUX.1, SD3, SD1.5 and the 2026 families), and a LoRA
    for the FLUX one."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from diffusers_mixgrpo.utils.tiny_models import (
        build_tiny_flux_pipeline,
        build_tiny_sd3_pipeline,
        build_tiny_sd_pipeline,
    )

    root = tmp_path_factory.mktemp("doc_models")
    paths = {}
    for name, build in (("flux", build_tiny_flux_pipeline), ("sd3", build_tiny_sd3_pipeline)):
        build().save_pretrained(root / name)
        paths[name] = root / name
    build_tiny_sd_pipeline().save_pretrained(root / "sd15")
    paths["sd15"] = root / "sd15"
    from diffusers_mixgrpo.utils import tiny_family_models

    for name in ("qwenimage", "flux2", "flux2_klein", "zimage"):
        getattr(tiny_family_models, f"build_tiny_{name}_pipeline")().save_pretrained(root / name)
        paths[name] = root / name
    pipe = build_tiny_flux_pipeline()
    torch.manual_seed(0)
    pipe.transformer.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_v"], init_lora_weights=False))
    pipe.save_lora_weights(root / "lora", transformer_lora_layers=get_peft_model_state_dict(pipe.transformer))
    paths["lora"] = root / "lora"
    return paths


def hub_ids(models) -> dict[str, str]:
    """Substitution 1: the Hub ids named in the docs -> tiny local folders."""
    return {
        "black-forest-labs/FLUX.1-dev": str(models["flux"]),
        "stabilityai/stable-diffusion-3.5-medium": str(models["sd3"]),
        "stable-diffusion-v1-5/stable-diffusion-v1-5": str(models["sd15"]),
        "your-name/flux-mixgrpo": str(models["lora"]),
        "Qwen/Qwen-Image": str(models["qwenimage"]),
        "black-forest-labs/FLUX.2-dev": str(models["flux2"]),
        "black-forest-labs/FLUX.2-klein-base-4B": str(models["flux2_klein"]),
        "Tongyi-MAI/Z-Image": str(models["zimage"]),
    }


def substitute_python(code: str, models) -> str:
    for hub_id, path in hub_ids(models).items():
        code = code.replace(f'"{hub_id}"', repr(path))
    code = code.replace('"cuda"', '"cpu"')
    code = re.sub(r"\b(height|width)=\d+", r"\1=32", code)
    return code.replace('"examples/', f'"{ROOT}/examples/')


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    monkeypatch.setattr(sys, "argv", ["script.py"])
    from diffusers_mixgrpo.rewards import registry

    registry.available_rewards()  # load the plugins' registrations first
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # rewards a page registers stay there
    return tmp_path


PYTHON_PAGES = [name for name, blocks in ALL_BLOCKS.items() if any(b["lang"] == "python" for b in blocks)]
BASH_PAGES = [name for name, blocks in ALL_BLOCKS.items() if any(b["lang"] == "bash" for b in blocks)]


@pytest.mark.parametrize("page", PYTHON_PAGES)
def test_python_blocks_run(page, tiny_models, workdir):
    namespace = {"__name__": "__docs__"}
    for block in ALL_BLOCKS[page]:
        if block["lang"] != "python" or block["skip"] is not None:
            continue
        code = substitute_python(block["code"], tiny_models)
        try:
            exec(compile(code, f"{page}:{block['line']}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{page}, block at line {block['line']} failed: {type(err).__name__}: {err}") from err


# ----------------------------------------------------------------------------------------------------------- commands
def commands_of(code: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        out.append(line)
    return out


class _RecordingHfApi:
    uploads: list[dict] = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, **kwargs):
        return mock.Mock(repo_id=repo_id if "/" in repo_id else f"user/{repo_id}")

    def upload_folder(self, folder_path, **kwargs):
        files = {}
        for path in Path(folder_path).rglob("*"):
            if path.is_file():
                files[str(path.relative_to(folder_path))] = path.read_bytes()
        type(self).uploads.append({"files": files, **kwargs})


def run_script(argv: list[str], models, workdir) -> None:
    """Run `examples/<script>.py args` in this process, with the documented substitutions."""
    script, args = argv[0], argv[1:]
    args = [hub_ids(models).get(a, a) for a in args]
    args = [str(ROOT / a) if a.startswith(("examples/", "src/")) else a for a in args]
    if Path(script).name.startswith("train_"):
        if "--config" in args:
            args += ["--rewards", "jpeg_compressibility=1.0"]
        steps = "2" if "--resume_from_checkpoint" in args else "1"
        args += [*TRAIN_FLAGS, "--max_train_steps", steps]
    with mock.patch("huggingface_hub.HfApi", _RecordingHfApi), mock.patch.object(sys, "argv", [script, *args]):
        from huggingface_hub import constants

        from diffusers_mixgrpo.training import hub, preflight

        # a documented push (or the resume of a run that pushes) is made by a user who is logged in and online: the
        # push checks run before the model loads; the pages' Hub ids are local folders here (`hub_ids`)
        online = mock.patch.object(constants, "HF_HUB_OFFLINE", False)
        with (
            mock.patch.object(hub, "HfApi", _RecordingHfApi),
            mock.patch.object(hub, "get_token", lambda: None),
            mock.patch.object(preflight, "_cached_hub_token", lambda: "hf_logged_in_user"),
            online,
        ):
            try:
                runpy.run_path(str(ROOT / script), run_name="__main__")
            except SystemExit as exit_:
                assert exit_.code in (0, None), f"{script} exited with {exit_.code}"


def run_command(command: str, models, workdir) -> None:
    words = shlex.split(command.replace('"cuda"', '"cpu"'))
    redirect = None
    if ">" in words:
        i = words.index(">")
        words, redirect = words[:i], words[i + 1]
    if words[:2] == ["accelerate", "launch"]:
        words = words[2:]
        while words and words[0].startswith("--"):  # launcher options: one process here
            words = words[2:] if len(words) > 1 and not words[1].startswith("--") else words[1:]
        words = ["python", *words]
    assert words[0] == "python", f"cannot run {command!r}; mark its block <!-- no-test: reason -->"
    if words[1] == "-c":
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        out = subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True, env=env, check=True)
        if redirect:
            Path(redirect).write_text(out.stdout)
        return
    assert words[1].startswith("examples/"), f"cannot run {command!r}; mark its block <!-- no-test: reason -->"
    run_script(words[1:], models, workdir)


@pytest.mark.parametrize("page", BASH_PAGES)
def test_commands_run(page, tiny_models, workdir):
    _RecordingHfApi.uploads = []
    for block in ALL_BLOCKS[page]:
        if block["lang"] != "bash" or block["skip"] is not None:
            continue
        for command in commands_of(block["code"]):
            try:
                run_command(command, tiny_models, workdir)
            except (AssertionError, Exception) as err:
                raise AssertionError(f"{page}, block at line {block['line']}: {command!r} failed: {err}") from err
    pushes = sum("--push_to_hub" in c for b in ALL_BLOCKS[page] if b["skip"] is None for c in commands_of(b["code"]))
    assert len(_RecordingHfApi.uploads) >= pushes  # a resumed run that pushes pushes again
    for upload in _RecordingHfApi.uploads:  # item 15: nothing pushed names a local folder
        for name, data in upload["files"].items():
            assert str(workdir).encode() not in data and str(ROOT).encode() not in data, name
