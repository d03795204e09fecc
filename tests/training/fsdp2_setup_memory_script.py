"""Helper of test_distributed.py (run by torchrun, 2 ranks, gloo): each rank's peak resident memory while the trainer
sets up a full fine-tune of a bf16 FLUX-shaped denoiser of tens of MB under FSDP2, measured as
`benchmarks/memory_plan.py`'s validation measures (`MEASURE_ENV`, then the resident high-water mark above a baseline
taken after a warm-up). Writes `rank{r}.json` into the output folder."""

import argparse
import gc
import json
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from diffusers_mixgrpo import GRPOTrainingPipeline
from diffusers_mixgrpo.training.config import GRPOConfig
from diffusers_mixgrpo.training.trainer import GRPOTrainer
from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from memory_plan import peak_rss_since, reset_peak_rss  # noqa: E402

PROMPTS = ["a red circle", "a blue square"]


def brightness(images, prompts):
    return images.float().mean(dim=(1, 2, 3))


def large_transformer(dtype: torch.dtype) -> torch.nn.Module:
    """A FLUX transformer of 26.6 M parameters (53 MB in bf16) that fits the tiny pipeline's VAE and text encoders,
    built in `dtype` directly (no float32 copy, as `from_pretrained(dtype=...)` loads)."""
    from diffusers import FluxTransformer2DModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=64,
            num_attention_heads=8,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=[16, 24, 24],
        ).eval()
    finally:
        torch.set_default_dtype(previous)


def trainer(output_dir: str, pipe, accelerator: Accelerator) -> GRPOTrainer:
    config = GRPOConfig(
        output_dir=output_dir,
        method="mixgrpo",
        num_inference_steps=4,
        num_generations=2,
        resolution=32,
        window_size=1,
        use_lora=False,
        report_to="none",
        validation_steps=0,
        mixed_precision="no",
        fsdp2=True,
    )
    return GRPOTrainer(config, pipe, rewards={brightness: 1.0}, train_prompts=PROMPTS, accelerator=accelerator)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    args = parser.parse_args()
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    rank = accelerator.process_index
    # Warm-up: the same setup on the tiny pipeline (imports, gloo, fully_shard's code paths), then freed.
    warm = trainer(
        os.path.join(args.output_dir, "warm-up"),
        GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline()),
        accelerator,
    )
    del warm
    gc.collect()
    stock = build_tiny_flux_pipeline()
    gc.collect()
    accelerator.wait_for_everyone()

    base = reset_peak_rss()
    stock.transformer = large_transformer(torch.bfloat16)
    params = list(stock.transformer.parameters())
    load_bytes = sum(p.numel() * p.element_size() for p in params)
    num_params = sum(p.numel() for p in params)
    del params
    loaded = peak_rss_since(base)
    run = trainer(args.output_dir, GRPOTrainingPipeline.from_pipe(stock), accelerator)
    peak = peak_rss_since(base)

    from torch.distributed.tensor import DTensor

    denoiser = run.pipeline.denoiser
    trainable = [p for p in denoiser.parameters() if p.requires_grad]
    result = {
        "rank": rank,
        "num_params": num_params,
        "load_bytes": load_bytes,  # the whole denoiser in its load dtype (bf16)
        "loaded_bytes": loaded,  # measured peak after building it, before the trainer
        "shard_fp32_bytes": sum(p.to_local().numel() * 4 for p in trainable if isinstance(p, DTensor)),
        "peak_bytes": peak,  # measured peak from before the denoiser was built to the end of the setup
        "trainable_dtypes": sorted({str(p.dtype) for p in trainable}),
        "all_sharded": all(isinstance(p, DTensor) for p in trainable) and len(trainable) == len(run.trainable),
    }
    with open(os.path.join(args.output_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
