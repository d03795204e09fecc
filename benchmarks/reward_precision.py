"""How far bfloat16 (and float16) reward models score from float32: the tiny HPS-v2.1, PickScore and ImageReward
models of the test suite (random weights in the original checkpoint formats, built offline), loaded through the
rewards' real code in each dtype and run on the same images and prompts.

Prints, per reward and dtype, the largest and the mean absolute score difference to float32, the spread (std) of the
float32 scores over the images, and the largest difference as a fraction of that spread (what decides whether the
ranking inside a GRPO group, hence the advantage, changes). `reward_dtype` in the training config picks the dtype.

    python benchmarks/reward_precision.py                       # CPU, ~1 min
    python benchmarks/reward_precision.py --device cuda --json reward_precision.json

Random tiny models are not the real checkpoints: the figures say how the code behaves in each dtype (which parts are
cast, whether anything overflows), not the exact difference the 1-3 GB models show; measuring that needs their weights.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "rewards"))

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def measure(
    device: str = "cpu", n_images: int = 32, dtypes=("bfloat16", "float16"), seed: int = 0, group_size: int = 8
) -> dict:
    """Scores of each tiny reward in float32 and in each of `dtypes` on `n_images` random images; the differences,
    and those of the GRPO advantages of groups of `group_size` images (group std, unclipped)."""
    from tiny_reward_checkpoints import (
        PROMPTS,
        sample_images,
        tiny_reward_factories,
        write_tiny_clip,
        write_tiny_hps,
        write_tiny_imagereward,
    )

    from diffusers_mixgrpo.training.advantages import group_advantages

    images = sample_images(n_images, size=(40, 48), seed=seed)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n_images)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for sub in ("clip", "hps", "imagereward"):
            (root / sub).mkdir()
        factories = tiny_reward_factories(
            write_tiny_clip(root / "clip"), write_tiny_hps(root / "hps"), write_tiny_imagereward(root / "imagereward")
        )
        for name, factory in factories.items():
            ref = factory(device=device, dtype=torch.float32, batch_size=8)(images, prompts).double().cpu()
            spread = float(ref.std())
            for dtype_name in dtypes:
                row = {"reward": name, "dtype": dtype_name, "n_images": n_images, "float32_std": spread}
                try:
                    scores = factory(device=device, dtype=DTYPES[dtype_name], batch_size=8)(images, prompts)
                except (RuntimeError, TypeError) as err:  # e.g. a float16 kernel missing on this device
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
                    rows.append(row)
                    continue
                scores = scores.double().cpu()
                diff = (scores - ref).abs()
                groups = torch.arange(n_images) // group_size
                adv_diff = (
                    group_advantages(scores, groups, clip=None) - group_advantages(ref, groups, clip=None)
                ).abs()
                row.update(
                    max_abs_diff=float(diff.max()),
                    mean_abs_diff=float(diff.mean()),
                    max_rel_diff=float((diff / ref.abs().clamp_min(1e-12)).max()),
                    max_diff_over_std=float(diff.max()) / spread if spread else None,
                    spearman=_spearman(scores, ref),
                    max_advantage_diff=float(adv_diff.max()),
                    finite=bool(torch.isfinite(scores).all()),
                )
                rows.append(row)
    return {"device": device, "torch": torch.__version__, "rows": rows}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = measure(args.device, args.images, args.dtypes)
    print(f"device: {out['device']}; torch {out['torch']}; {args.images} images, 32 px tiny reward models")
    print(
        "reward | dtype | max |diff| | mean |diff| | max rel diff | fp32 std | max diff / std | Spearman | max |adv diff|"
    )
    for r in out["rows"]:
        if "error" in r:
            print(f"{r['reward']} | {r['dtype']} | {r['error']}")
            continue
        print(
            f"{r['reward']} | {r['dtype']} | {r['max_abs_diff']:.2e} | {r['mean_abs_diff']:.2e} | "
            f"{r['max_rel_diff']:.2e} | {r['float32_std']:.3g} | {r['max_diff_over_std']:.3f} | {r['spearman']:.3f} | "
            f"{r['max_advantage_diff']:.3f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
