"""One GRPO iteration per variant at real size: a random-weight FLUX.1-dev-sized transformer (11.9 B parameters, built
from its config, no download), 720 px, G = 12, N = 25, LoRA r = 32, bf16, gradient checkpointing.

Prints seconds per iteration (rollout / reward / update), peak GPU memory, and the ratios to DanceGRPO-style for
DanceGRPO-style, MixGRPO, MixGRPO-Flash and Flash* (window at w = 0 for all). The transformer and the VAE have the
real FLUX.1-dev shapes; the text encoders are small ones with the real output widths (T5: 4096, CLIP: 768), since
prompts are encoded once per rollout and are not what this measures; the reward is the image brightness (no reward
model: its cost is the reward's own, see `time/reward`).

    python benchmarks/gpu_iteration.py                       # needs one GPU with ~70 GB (bf16 weights 24 GB)
    python benchmarks/gpu_iteration.py --variants mixgrpo flash --json gpu.json
    python benchmarks/gpu_iteration.py --smoke               # CPU, tiny FLUX: checks the script (CI)
"""

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("dancegrpo", "mixgrpo", "flash", "flash_star")
LABELS = {"dancegrpo": "DanceGRPO-style", "mixgrpo": "MixGRPO", "flash": "MixGRPO-Flash", "flash_star": "Flash*"}
FLUX_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=16,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
WORDS = "a photo of red blue green cat dog tree house sky car city at night in the snow".split()


def brightness(images, prompts):
    return images.float().mean(dim=(1, 2, 3))


def build_flux_dev_sized(device: str, dtype: torch.dtype):
    """FluxPipeline: FLUX.1-dev transformer and VAE shapes (random weights), small text encoders of the real widths."""
    import memory_plan
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline

    from diffusers_mixgrpo.utils.tiny_models import _tiny_clip, _tiny_t5, build_word_level_tokenizer

    torch.manual_seed(0)
    transformer = memory_plan.build_transformer(memory_plan.MODELS["flux1-dev"], device=device, dtype=dtype).eval()
    with torch.device(device):
        vae = AutoencoderKL(**FLUX_VAE).to(dtype).eval()
    tokenizer = build_word_level_tokenizer(WORDS, model_max_length=32)
    tokenizer_2 = build_word_level_tokenizer(WORDS, model_max_length=512)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=_tiny_clip(len(tokenizer), 768).to(device, dtype),
        tokenizer=tokenizer,
        text_encoder_2=_tiny_t5(len(tokenizer_2), 4096).to(device, dtype),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def build_tiny(device: str, dtype: torch.dtype):
    from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline

    return build_tiny_flux_pipeline(seed=0, vocab=WORDS).to(device, dtype)


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    elif os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def _peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run_variant(method: str, args, build) -> dict:
    from diffusers_mixgrpo import GRPOTrainingPipeline
    from diffusers_mixgrpo.training.config import GRPOConfig
    from diffusers_mixgrpo.training.trainer import GRPOTrainer

    dtype = torch.bfloat16 if args.mixed_precision == "bf16" else torch.float32
    pipe = GRPOTrainingPipeline.from_pipe(build(args.device, dtype))
    pipe.max_sequence_length = args.max_sequence_length
    values = dict(
        output_dir=tempfile.mkdtemp(prefix="gpu-iteration-"),
        method=method,
        num_inference_steps=args.steps,
        num_generations=args.group_size,
        sample_prompts_per_device=args.prompts,
        sample_max_batch_size=args.max_batch_size,
        resolution=args.resolution,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_rank,
        gradient_accumulation_steps=1,
        checkpointing_steps=0,
        validation_steps=0,
        report_to="none",
        max_train_steps=10_000,
        max_sequence_length=args.max_sequence_length,
    )
    if method != "dancegrpo":
        values["window_size"] = args.window_size
    prompts = [" ".join(WORDS[i : i + 5]) for i in range(8)]
    trainer = GRPOTrainer(GRPOConfig(**values), pipe, rewards={brightness: 1.0}, train_prompts=prompts)
    for _ in range(args.warmup):
        trainer.train_step()
    _reset_peak(args.device)
    base = 0 if args.device.startswith("cuda") else _peak_bytes(args.device)
    times = []
    for _ in range(args.iterations):
        trainer.window.start = 0  # every variant measured with the window at w = 0
        trainer.window.iter_in_interval = 0
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        logs = trainer.train_step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(
            {"total": time.perf_counter() - t0, **{k[5:]: v for k, v in logs.items() if k.startswith("time/")}}
        )
    peak = _peak_bytes(args.device) - base
    result = {
        "variant": method,
        "seconds_per_iteration": min(t["total"] for t in times),
        "rollout": min(t["rollout"] for t in times),
        "reward": min(t["reward"] for t in times),
        "update": min(t["update"] for t in times),
        "nfe_rollout_per_image": logs["nfe/rollout_per_image"],
        "nfe_train_per_image": logs["nfe/train_per_image"],
        "peak_memory_gib": peak / 2**30,
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else "VmHWM delta",
    }
    del trainer, pipe
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny FLUX, tiny sizes: checks the script")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--resolution", type=int, default=720)
    parser.add_argument("--group_size", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=1, help="prompts per iteration (x group_size images)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--window_size", type=int, default=4)
    parser.add_argument("--max_batch_size", type=int, default=4, help="images per denoiser forward")
    parser.add_argument("--lora_rank", type=int, default=32)
    parser.add_argument("--max_sequence_length", type=int, default=512)
    parser.add_argument("--no_gradient_checkpointing", dest="gradient_checkpointing", action="store_false")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    if args.smoke:
        args.device, args.mixed_precision, build = "cpu", "no", build_tiny
        args.resolution, args.group_size, args.steps, args.window_size = 32, 2, 6, 2
        args.max_batch_size, args.max_sequence_length, args.lora_rank = 2, 16, 4
        args.warmup, args.iterations = 0, 1
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: this benchmark needs a GPU (use --smoke to check the script on the CPU)")
        args.device, args.mixed_precision, build = "cuda", "bf16", build_flux_dev_sized
    results = [run_variant(m, args, build) for m in args.variants]
    ref = next((r for r in results if r["variant"] == "dancegrpo"), results[0])
    for r in results:
        r["time_ratio"] = r["seconds_per_iteration"] / ref["seconds_per_iteration"]
        r["memory_ratio"] = r["peak_memory_gib"] / ref["peak_memory_gib"] if ref["peak_memory_gib"] else None
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu"
    settings = {k: getattr(args, k) for k in ("resolution", "group_size", "prompts", "steps", "window_size")}
    settings.update({k: getattr(args, k) for k in ("max_batch_size", "lora_rank", "gradient_checkpointing")})
    print(f"device: {device}; {'tiny FLUX (smoke)' if args.smoke else 'FLUX.1-dev-sized transformer'}; {settings}")
    print(f"ratios to {LABELS[ref['variant']]}")
    print("variant | s/iter | rollout | reward | update | NFE rollout/img | NFE train/img | peak GiB | time x | mem x")
    for r in results:
        mem = f"{r['memory_ratio']:.2f}" if r["memory_ratio"] is not None else "-"
        print(
            f"{LABELS[r['variant']]} | {r['seconds_per_iteration']:.2f} | {r['rollout']:.2f} | {r['reward']:.2f} | "
            f"{r['update']:.2f} | {r['nfe_rollout_per_image']:.1f} | {r['nfe_train_per_image']} | "
            f"{r['peak_memory_gib']:.2f} | {r['time_ratio']:.2f} | {mem}"
        )
    out = {"device": device, "smoke": args.smoke, "settings": settings, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
