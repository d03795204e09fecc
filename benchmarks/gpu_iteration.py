"""One GRPO iteration per variant at real size: a random-weight FLUX.1-dev-sized transformer (11.9 B parameters, built
from its config, no download), 720 px, G = 12, N = 25, LoRA r = 32, bf16, gradient checkpointing.

Prints seconds per iteration (rollout / reward / update), peak GPU memory, and the ratios to DanceGRPO-style for
DanceGRPO-style, MixGRPO, MixGRPO-Flash and Flash* (window at w = 0 for all). The training micro-batch and the
gradient accumulation are the shipped config's (`--config`, default `examples/configs/flux_mixgrpo.yaml`:
`train_batch_size: 1`, `gradient_accumulation_steps: 3`).

Each variant runs alone: the previous one's trainer, pipeline and optimiser are freed (`gc` +
`torch.cuda.empty_cache()`) before the next is built, and its peak is measured from there (CUDA: `max_memory_allocated`
after a reset; CPU: the resident high-water mark above the process's resident memory before the first variant). Each
row is written to `--json` as soon as its variant finishes, so a variant that runs out of memory keeps the rows before
it (it gets a row with its error, and the next variant still runs). The card, torch and diffusers versions are printed
and saved with the rows. The transformer and the VAE have the
real FLUX.1-dev shapes; the text encoders are small ones with the real output widths (T5: 4096, CLIP: 768), since
prompts are encoded once per rollout and are not what this measures; the reward is the image brightness (no reward
model: its cost is the reward's own, see `time/reward`).

    python benchmarks/gpu_iteration.py                       # needs one GPU with ~70 GB (bf16 weights 24 GB)
    python benchmarks/gpu_iteration.py --variants mixgrpo flash --json gpu.json
    python benchmarks/gpu_iteration.py --smoke               # CPU, tiny FLUX: checks the script (CI)
"""

import argparse
import ctypes
import gc
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

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = ROOT / "examples" / "configs" / "flux_mixgrpo.yaml"
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


def build_tiny(device: str, dtype: torch.dtype, heads: int = 2):
    """Tiny FLUX; `heads` > 2 widens its transformer (16 channels per head), e.g. to make the model's memory stand
    out of the CPU's resident-memory noise."""
    from diffusers import FluxTransformer2DModel

    from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline

    pipe = build_tiny_flux_pipeline(seed=0, vocab=WORDS)
    if heads != 2:
        torch.manual_seed(0)
        pipe.transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=heads,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=[4, 6, 6],
        ).eval()
    return pipe.to(device, dtype)


def shipped_micro_batch(path: Path = SHIPPED_CONFIG) -> dict:
    """`train_batch_size` and `gradient_accumulation_steps` of a shipped training config."""
    import yaml

    values = yaml.safe_load(Path(path).read_text())
    return {k: values[k] for k in ("train_batch_size", "gradient_accumulation_steps")}


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _fixed_mmap_threshold(nbytes: int = 1 << 17) -> None:
    """CPU: glibc serves allocations of `nbytes` or more with mmap and unmaps them when freed (a fixed threshold turns
    off glibc's growing one), so freed model weights leave the resident memory and a leak shows in the next peak."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, nbytes)  # M_MMAP_THRESHOLD


def free_memory(device: str) -> None:
    """Collect what the last variant left (trainer, pipeline, optimiser form reference cycles) and hand it back."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    else:
        libc = _libc()
        if libc is not None:
            libc.malloc_trim(0)


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    elif os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current VmRSS


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    return _proc_status_bytes("VmHWM")


def build_trainer(method: str, args, build):
    """The trainer of one variant: its own pipeline (built here), LoRA, optimiser."""
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
        train_batch_size=args.train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        checkpointing_steps=0,
        validation_steps=0,
        report_to="none",
        max_train_steps=10_000,
        max_sequence_length=args.max_sequence_length,
    )
    if method != "dancegrpo":
        values["window_size"] = args.window_size
    prompts = [" ".join(WORDS[i : i + 5]) for i in range(8)]
    return GRPOTrainer(GRPOConfig(**values), pipe, rewards={brightness: 1.0}, train_prompts=prompts)


def measure(trainer, args, base: int) -> dict:
    """Warm-up iterations, then timed ones (window at w = 0); peak memory above `base` bytes."""
    for _ in range(args.warmup):
        trainer.train_step()
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
    return {
        "seconds_per_iteration": min(t["total"] for t in times),
        "rollout": min(t["rollout"] for t in times),
        "reward": min(t["reward"] for t in times),
        "update": min(t["update"] for t in times),
        "nfe_rollout_per_image": logs["nfe/rollout_per_image"],
        "nfe_train_per_image": logs["nfe/train_per_image"],
        "optimizer_steps": logs["train/optimizer_steps"],
        "peak_memory_gib": (_peak_bytes(args.device) - base) / 2**30,
    }


def run_variant(method: str, args, build, base: int = 0) -> dict:
    """One variant from a clean slate: the peak is reset before its model is built (so it counts the model), and
    everything it built is freed before returning, also when it fails (e.g. out of memory)."""
    _reset_peak(args.device)
    row = {"variant": method}
    trainer = None
    try:
        trainer = build_trainer(method, args, build)
        row.update(measure(trainer, args, base))
    except (RuntimeError, torch.cuda.OutOfMemoryError) as err:  # an OOM keeps the rows before it
        row["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    finally:
        del trainer
        free_memory(args.device)
    row["peak_memory_kind"] = (
        "torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else "VmHWM above the start's VmRSS"
    )
    return row


def environment(device: str) -> dict:
    import diffusers

    card = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    return {"device": card, "torch": torch.__version__, "diffusers": diffusers.__version__}


def _with_ratios(results: list) -> list:
    ok = [r for r in results if "error" not in r]
    ref = next((r for r in ok if r["variant"] == "dancegrpo"), ok[0] if ok else None)
    for r in ok:
        r["time_ratio"] = r["seconds_per_iteration"] / ref["seconds_per_iteration"]
        r["memory_ratio"] = r["peak_memory_gib"] / ref["peak_memory_gib"] if ref["peak_memory_gib"] > 0 else None
    return results


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
    parser.add_argument(
        "--config", default=str(SHIPPED_CONFIG), help="shipped config whose train_batch_size and accumulation to use"
    )
    parser.add_argument("--smoke_heads", type=int, default=2, help="--smoke: attention heads of the tiny transformer")
    parser.add_argument("--json", default="gpu_iteration.json", help="rows are written here as each variant ends")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    args.__dict__.update(shipped_micro_batch(Path(args.config)))
    if args.smoke:
        args.device, args.mixed_precision = "cpu", "no"
        args.resolution, args.group_size, args.steps, args.window_size = 32, 2, 6, 2
        args.max_batch_size, args.max_sequence_length, args.lora_rank = 2, 16, 4
        args.warmup, args.iterations = 0, 1
        torch.set_num_threads(1)

        def build(device, dtype):
            return build_tiny(device, dtype, args.smoke_heads)

    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: this benchmark needs a GPU (use --smoke to check the script on the CPU)")
        args.device, args.mixed_precision, build = "cuda", "bf16", build_flux_dev_sized
    env = environment(args.device)
    settings = {k: getattr(args, k) for k in ("resolution", "group_size", "prompts", "steps", "window_size")}
    settings.update({k: getattr(args, k) for k in ("max_batch_size", "lora_rank", "gradient_checkpointing")})
    settings.update(
        train_batch_size=args.train_batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps
    )
    model = "tiny FLUX (smoke)" if args.smoke else "FLUX.1-dev-sized transformer"
    print(
        f"device: {env['device']}; torch {env['torch']}; diffusers {env['diffusers']}; {model}; {settings}", flush=True
    )

    import diffusers_mixgrpo.training.trainer  # noqa: F401  (imports before the baseline: not counted as a variant's)

    base = 0
    if not args.device.startswith("cuda"):
        _fixed_mmap_threshold()
        free_memory(args.device)
        base = _proc_status_bytes("VmRSS")
    out = {**env, "smoke": args.smoke, "settings": settings, "complete": False, "results": []}
    for method in args.variants:
        out["results"].append(run_variant(method, args, build, base))
        _with_ratios(out["results"])
        if args.json:  # as soon as the variant ends: a later out-of-memory keeps this row
            Path(args.json).write_text(json.dumps(out, indent=1))
        r = out["results"][-1]
        print(
            f"{LABELS[method]}: "
            + (
                r["error"]
                if "error" in r
                else f"{r['seconds_per_iteration']:.2f} s/iter, peak {r['peak_memory_gib']:.3f} GiB"
            ),
            flush=True,
        )
    out["complete"] = True
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    ok = [r for r in out["results"] if "error" not in r]
    if ok:
        ref = next((r for r in ok if r["variant"] == "dancegrpo"), ok[0])
        print(f"ratios to {LABELS[ref['variant']]}")
    print("variant | s/iter | rollout | reward | update | NFE rollout/img | NFE train/img | peak GiB | time x | mem x")
    for r in out["results"]:
        if "error" in r:
            print(f"{LABELS[r['variant']]} | failed: {r['error']}")
            continue
        mem = f"{r['memory_ratio']:.2f}" if r["memory_ratio"] is not None else "-"
        print(
            f"{LABELS[r['variant']]} | {r['seconds_per_iteration']:.2f} | {r['rollout']:.2f} | {r['reward']:.2f} | "
            f"{r['update']:.2f} | {r['nfe_rollout_per_image']:.1f} | {r['nfe_train_per_image']} | "
            f"{r['peak_memory_gib']:.2f} | {r['time_ratio']:.2f} | {mem}"
        )
    if args.json:
        print(f"rows written to {args.json}")
    return out


if __name__ == "__main__":
    out = main()
    sys.exit(1 if any("error" in r for r in out["results"]) else 0)
