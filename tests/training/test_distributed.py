"""Sharded and multi-node training on the CPU: torch's FSDP2 under the trainer and DeepSpeed ZeRO-2 / ZeRO-3 under
accelerate with the shipped launch configs (torchrun, gloo) equal a single process with the same global batch, resume
exactly, and write the same files (diffusers-format LoRA, model folder).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from testing_utils import run_ranks

SCRIPT = Path(__file__).with_name("fsdp2_equivalence_script.py")
CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "accelerate"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# gloo reduces the two ranks' gradients in another order than one process sums its micro-batches: float32 rounding.
ATOL = 1e-5


def _torchrun(*args, port=29561):
    run_ranks(SCRIPT, *args, port=port, env=ENV)


def _deepspeed(*args, stage, port, config=None):
    config = config or CONFIGS / f"deepspeed_zero{stage}.yaml"
    _torchrun(*args, "--launch_config", config, port=port)


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
@pytest.mark.parametrize(
    "launch, port",
    [(["--fsdp2"], 29561), (["--launch_config", CONFIGS / "fsdp2.yaml"], 29565)],
    ids=["fsdp2-flag", "fsdp2-yaml"],
)
def test_fsdp2_two_ranks_match_one_process_and_resume_exactly(tmp_path, reference_lora, launch, port):
    """`--fsdp2 true`, or the shipped examples/accelerate/fsdp2.yaml as `accelerate launch` sets it (the trainer then
    shards with the config's wrap classes, reshard_after_forward and activation checkpointing)."""
    run = tmp_path / "fsdp2"
    _torchrun(run, *launch, "--checkpointing_steps", 1, port=port)
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
    _torchrun(resumed, *launch, "--checkpointing_steps", 1, "--resume", port=port + 1)
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


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_fsdp2_setup_never_holds_a_full_float32_copy_per_rank(tmp_path):
    """Full fine-tune of a bf16 denoiser of 28.4 M parameters (56.8 MB) on 2 FSDP2 ranks: each rank's peak resident
    memory from before the denoiser is built to the end of the trainer's setup (benchmarks/memory_plan.py's method:
    MALLOC_MMAP_THRESHOLD_, warm-up, VmHWM above a baseline) stays below the whole model in bf16 + that rank's own
    float32 shard (56.8 MB) + 8 MiB. Measured: 66.8 MB on both ranks; before sharding came first (the whole model cast
    to float32, then sharded): 171.2 / 171.5 MB."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from memory_plan import MEASURE_ENV

    script = Path(__file__).with_name("fsdp2_setup_memory_script.py")
    run_ranks(script, tmp_path, port=29641, env={**ENV, **MEASURE_ENV})
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["all_sharded"] and r["trainable_dtypes"] == ["torch.float32"]
        assert r["shard_fp32_bytes"] == pytest.approx(r["num_params"] * 4 / 2, rel=0.01)  # its half, in float32
        assert r["loaded_bytes"] > 0.9 * r["load_bytes"]  # the measurement sees the model
        bound = r["load_bytes"] + r["shard_fp32_bytes"] + 8 * 2**20
        assert r["peak_bytes"] < bound, r


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_two_ranks_match_one_process_and_resume_exactly(tmp_path, reference_lora, stage):
    """examples/accelerate/deepspeed_zero{2,3}.yaml as `accelerate launch` sets them (gloo, float32): the trainer drives
    the engine's accumulation boundary (K backward calls per micro-batch, one optimiser step per group)."""
    pytest.importorskip("deepspeed")
    run = tmp_path / "ds"
    _deepspeed(run, "--checkpointing_steps", 1, stage=stage, port=29591 + stage)
    weights = load_file(run / "pytorch_lora_weights.safetensors")  # ZeRO-3: gathered from the partitions
    assert all(k.startswith("transformer.") and "lora" in k for k in weights)
    _assert_same(weights, reference_lora)

    # LoRA-only checkpoint: DeepSpeed's own (the optimiser partitions of both ranks), without the frozen base weights.
    folder = run / "checkpoint-1" / "pytorch_model"
    model_files = sorted(folder.glob("*model_states.pt"))
    assert len(sorted(folder.glob("*optim_states.pt"))) == 2
    module = torch.load(model_files[0], map_location="cpu", weights_only=False)["module"]
    assert module and all(".lora_" in k for k in module)

    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoint-2")
    (resumed / "pytorch_lora_weights.safetensors").unlink()
    _deepspeed(resumed, "--checkpointing_steps", 1, "--resume", stage=stage, port=29601 + stage)
    _assert_same(load_file(resumed / "pytorch_lora_weights.safetensors"), weights, atol=0)


@pytest.mark.slow
def test_deepspeed_zero3_full_fine_tune_saves_a_diffusers_model_folder_equal_to_one_process(tmp_path):
    pytest.importorskip("deepspeed")
    from diffusers import FluxTransformer2DModel

    _deepspeed(tmp_path / "ds", "--full", "--steps", 1, stage=3, port=29611)
    _single(tmp_path / "single", "--full", "--steps", 1, "--prompts_per_device", 2, "--accumulation", 2)
    _assert_same(
        FluxTransformer2DModel.from_pretrained(tmp_path / "ds" / "transformer").state_dict(),
        FluxTransformer2DModel.from_pretrained(tmp_path / "single" / "transformer").state_dict(),
    )


@pytest.mark.slow
def test_deepspeed_skips_the_optimiser_step_of_a_non_finite_loss(tmp_path):
    """Every loss of the second iteration is NaN: the engine skips that step (and clears its gradients), so the run
    ends with the weights of one update, those of a 1-step single-process run."""
    pytest.importorskip("deepspeed")
    _deepspeed(tmp_path / "ds", "--nan_loss_at_step", 1, stage=2, port=29612)
    _single(tmp_path / "single", "--steps", 1, "--prompts_per_device", 2, "--accumulation", 2)
    _assert_same(
        load_file(tmp_path / "ds" / "pytorch_lora_weights.safetensors"),
        load_file(tmp_path / "single" / "pytorch_lora_weights.safetensors"),
    )


@pytest.mark.slow
def test_deepspeed_zero2_with_the_optimiser_state_in_cpu_memory_matches_one_process(tmp_path, reference_lora):
    """deepspeed_zero2.yaml with offload_optimizer_device: cpu (accelerate swaps AdamW for DeepSpeed's CPU Adam, a C++
    op built on first use)."""
    pytest.importorskip("deepspeed")
    config = tmp_path / "zero2_offload.yaml"
    text = (CONFIGS / "deepspeed_zero2.yaml").read_text()
    config.write_text(text.replace("offload_optimizer_device: none", "offload_optimizer_device: cpu"))
    _deepspeed(tmp_path / "ds", stage=2, port=29613, config=config)
    _assert_same(load_file(tmp_path / "ds" / "pytorch_lora_weights.safetensors"), reference_lora)


# ---------------------------------------------------------------- skip decisions taken identically on every rank
# One run per launch: rank 1's rewards are NaN for its first group at step 0 and for all its groups at step 1, and
# every loss of rank 1 is NaN at step 2; the reference run gives those samples one constant reward instead (advantage
# 0, what a dropped group amounts to). 2 prompts x 4 images per rank, micro-batches of 1, accumulation 2: 4 optimiser
# steps per iteration. Before the skips were agreed across ranks such a run did not finish (rank 0 waited for rank 1's
# gradients); here each launch must end within SKIP_TIMEOUT seconds (measured: 7-9 s per launch on 2 cores).
SKIP_TIMEOUT = 120
SKIP_ARGS = ("--prompts_per_device", 2, "--train_batch_size", 1, "--accumulation", 2, "--dump_weights")
SKIP_LAUNCHES = {
    "ddp": [],
    "fsdp2": ["--fsdp2"],
    "zero2": ["--launch_config", CONFIGS / "deepspeed_zero2.yaml"],
}


def _bounded_torchrun(*args, port: int, timeout: float = SKIP_TIMEOUT) -> None:
    """torchrun with 2 ranks that must finish within `timeout` s: a hang fails the test (the whole process group,
    torchrun and its ranks, is killed) instead of blocking the suite."""
    run_ranks(SCRIPT, *args, port=port, env=ENV, timeout=timeout)


@pytest.fixture(scope="module", params=list(SKIP_LAUNCHES))
def skip_runs(request, tmp_path_factory):
    """`(load, launch)`: `load(run, step, rank)` -> `{"weights", "logs"}` after `step` iterations, for run "nan" (the
    faults above) and "constant" (the reference)."""
    launch = request.param
    if launch == "zero2":
        pytest.importorskip("deepspeed")
    root = tmp_path_factory.mktemp(f"skips-{launch}")
    port = 29621 + 2 * list(SKIP_LAUNCHES).index(launch)
    extra = SKIP_LAUNCHES[launch]
    _bounded_torchrun(
        root / "nan", *SKIP_ARGS, *extra, "--bad_rewards", "nan", "--steps", 3, "--nan_loss_at_step", 2,
        "--nan_loss_rank", 1, port=port,
    )  # fmt: skip
    _bounded_torchrun(root / "constant", *SKIP_ARGS, *extra, "--bad_rewards", "constant", "--steps", 2, port=port + 1)

    def load(run: str, step: int, rank: int) -> dict:
        return torch.load(root / run / f"step{step}-rank{rank}.pt")

    return load, launch


def _assert_ranks_identical(load, run, step):
    a, b = load(run, step, 0), load(run, step, 1)
    _assert_same(a["weights"], b["weights"], atol=0)  # bit-identical replicas (DDP / ZeRO-2; FSDP2: gathered)
    assert a["logs"] == b["logs"]


@pytest.mark.slow
def test_nan_rewards_on_one_rank_drop_its_group_on_every_rank_alike(skip_runs):
    load, _ = skip_runs
    _assert_ranks_identical(load, "nan", 1)
    assert load("nan", 1, 0)["logs"] == {"train/optimizer_steps": 4, "data/dropped_samples": 4}
    # A dropped sample is a sample with advantage 0; measured: equal bit for bit (micro-batches of 1).
    _assert_same(load("nan", 1, 0)["weights"], load("constant", 1, 0)["weights"], atol=0)


@pytest.mark.slow
def test_all_groups_dropped_on_one_rank_still_train_the_others(skip_runs):
    load, _ = skip_runs
    _assert_ranks_identical(load, "nan", 2)
    assert load("nan", 2, 1)["logs"] == {"train/optimizer_steps": 4, "data/dropped_samples": 8}
    _assert_same(load("nan", 2, 0)["weights"], load("constant", 2, 0)["weights"], atol=0)  # measured: bit for bit
    moved = max(
        float((load("nan", 2, 0)["weights"][k] - w).abs().max()) for k, w in load("nan", 1, 0)["weights"].items()
    )
    assert moved > 1e-4  # rank 0's samples were trained (an update moves the LoRA weights by ~1e-3)


@pytest.mark.slow
def test_a_nan_loss_on_one_rank_skips_the_optimiser_steps_of_every_rank(skip_runs):
    load, _ = skip_runs
    _assert_ranks_identical(load, "nan", 3)
    assert load("nan", 3, 0)["logs"] == {
        "train/optimizer_steps": 0,
        "train/skipped_updates": 4,
        "data/dropped_samples": 0,
    }
    _assert_same(load("nan", 3, 0)["weights"], load("nan", 2, 0)["weights"], atol=0)  # no step was taken
