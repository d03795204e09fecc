"""Sharded and multi-node training on the CPU: torch's FSDP2 under the trainer (torchrun, gloo) equals a single
process with the same global batch, resumes exactly, and writes the same files (diffusers-format LoRA, model folder).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("fsdp2_equivalence_script.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# gloo reduces the two ranks' gradients in another order than one process sums its micro-batches: float32 rounding.
ATOL = 1e-5


def _torchrun(*args, nproc=2, port=29561, extra=()):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port)]
    subprocess.run([*cmd, *extra, str(SCRIPT), *map(str, args)], check=True, env=ENV, timeout=600)


def _single(*args):
    subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], check=True, env=ENV, timeout=600)


def _assert_same(a: dict, b: dict, atol=ATOL):
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


@pytest.fixture(scope="module")
def reference_lora(tmp_path_factory):
    """One process, 2 prompts in 2 accumulation micro-batches: the global batch of 2 ranks x 1 prompt."""
    out = tmp_path_factory.mktemp("single")
    _single(out, "--prompts_per_device", 2, "--accumulation", 2)
    return load_file(out / "pytorch_lora_weights.safetensors")


@pytest.mark.slow
def test_fsdp2_two_ranks_match_one_process_and_resume_exactly(tmp_path, reference_lora):
    run = tmp_path / "fsdp2"
    _torchrun(run, "--fsdp2", "--checkpointing_steps", 1)
    sharded = load_file(run / "pytorch_lora_weights.safetensors")  # gathered from the shards, diffusers format
    assert all(k.startswith("transformer.") and "lora" in k for k in sharded)
    _assert_same(sharded, reference_lora)

    # LoRA-only checkpoint: the sharded adapters and the optimiser state (torch.distributed.checkpoint), no base weights.
    import torch.distributed.checkpoint as dcp

    meta = dcp.FileSystemReader(str(run / "checkpoint-1" / "sharded_state")).read_metadata().state_dict_metadata
    model_keys = [k for k in meta if k.startswith("model.")]
    assert len(model_keys) == len(sharded) and all(".lora_" in k for k in model_keys)
    assert any(k.startswith("optimizer.state.") and k.endswith("exp_avg_sq") for k in meta)

    # Resume from checkpoint-1 in a copy of the run folder: the second step gives the same weights, exactly.
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoint-2")
    (resumed / "pytorch_lora_weights.safetensors").unlink()
    _torchrun(resumed, "--fsdp2", "--checkpointing_steps", 1, "--resume")
    _assert_same(load_file(resumed / "pytorch_lora_weights.safetensors"), sharded, atol=0)


@pytest.mark.slow
def test_two_simulated_nodes_on_loopback_match_one_process(tmp_path, reference_lora):
    """torchrun --nnodes 2 (node ranks 0 and 1, one process each, rendezvous on 127.0.0.1), FSDP2 across the nodes."""
    run = tmp_path / "nodes"
    common = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
    common += ["--master_addr", "127.0.0.1", "--master_port", "29571"]
    script = [str(SCRIPT), str(run), "--fsdp2"]
    nodes = [subprocess.Popen([*common, "--node_rank", str(r), *script], env=ENV) for r in (0, 1)]
    try:
        assert [p.wait(timeout=600) for p in nodes] == [0, 0]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    _assert_same(load_file(run / "pytorch_lora_weights.safetensors"), reference_lora)


@pytest.mark.slow
def test_fsdp2_full_fine_tune_saves_a_diffusers_model_folder_equal_to_one_process(tmp_path):
    from diffusers import FluxTransformer2DModel

    _torchrun(tmp_path / "fsdp2", "--fsdp2", "--full", "--steps", 1, port=29581)
    _single(tmp_path / "single", "--full", "--steps", 1, "--prompts_per_device", 2, "--accumulation", 2)
    sharded = FluxTransformer2DModel.from_pretrained(tmp_path / "fsdp2" / "transformer")
    single = FluxTransformer2DModel.from_pretrained(tmp_path / "single" / "transformer")
    assert (tmp_path / "fsdp2" / "model_index.json").exists()
    a, b = sharded.state_dict(), single.state_dict()
    _assert_same(a, b)
    from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline

    initial = build_tiny_flux_pipeline(seed=0).transformer.state_dict()
    assert any(not torch.equal(v, a[k]) for k, v in initial.items())  # the update moved the weights
