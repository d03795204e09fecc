"""Prompt conditioning encoded once, so the text encoders can leave the device (or memory) for the whole run.

A GRPO run rolls out the same prompt dataset over and over; encoding it every iteration keeps the text encoders
(FLUX's T5-XXL: 9.5 GB in bf16) on the GPU for no reason. `PromptEmbedsCache` encodes every distinct prompt once and
hands out the rows a rollout needs:

- in CPU memory (the default), or
- on disk (`cache_dir`): one safetensors shard per encoding batch plus `cache.json`, read lazily row by row, so a
  dataset whose conditioning does not fit in memory (FLUX: 4 MiB per prompt at 512 T5 tokens) still works, and a
  later run with the same prompts and text encoders reuses the files instead of encoding again.

A row equals what `GRPOTrainingPipeline.encode_prompts` returns for that prompt up to the batch-size rounding of the
text encoder's matmuls (the cache encodes `batch_size` prompts per call, a rollout the prompts of one chunk); families
with variable-length text (Qwen-Image, Z-Image) are re-padded to the longest prompt of the requested rows, as
`encode_prompts` pads a batch. `tests/pipelines/test_prompt_cache.py` states the tolerances.
"""

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import torch

from .rollout_batch import PromptEmbeds

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
_INDEX_FILE = "cache.json"


def text_encoder_fingerprint(pipeline) -> dict:
    """What identifies the conditioning a pipeline produces: the family, the text encoders' classes, sizes and a
    checksum of their first and last parameter tensors, the tokenizers' vocabulary sizes and the T5 length."""
    encoders = {}
    for name in pipeline.TEXT_ENCODER_NAMES:
        module = getattr(pipeline, name, None)
        if module is None:
            continue
        params = list(module.parameters())
        checksum = hashlib.sha256()
        for p in (params[0], params[-1]) if params else ():
            checksum.update(p.detach().float().cpu().numpy().tobytes())
        encoders[name] = {
            "class": type(module).__name__,
            "parameters": sum(p.numel() for p in params),
            "dtype": str(params[0].dtype) if params else None,
            "checksum": checksum.hexdigest()[:16],
        }
    tokenizers = {}
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        tok = getattr(pipeline, name, None)
        if tok is not None:
            tokenizers[name] = {"class": type(tok).__name__, "vocab": len(tok)}
    return {
        "family": pipeline.model_family,
        "text_encoders": encoders,
        "tokenizers": tokenizers,
        "max_sequence_length": getattr(pipeline, "max_sequence_length", None),
    }


def _key(fingerprint: dict, prompts: Sequence[str], guidance_scale: float, negative_prompt: Optional[str]) -> str:
    payload = {
        "version": CACHE_FORMAT_VERSION,
        "fingerprint": fingerprint,
        "prompts": list(prompts),
        "guidance_scale": float(guidance_scale),
        "negative_prompt": negative_prompt,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class PromptEmbedsCache:
    r"""
    The conditioning of a fixed list of prompts, encoded once by `pipeline.encode_prompts`.

    Args:
        pipeline (`GRPOTrainingPipeline`): encodes the prompts (its text encoders must be present while building).
        prompts (`Sequence[str]`): the prompts to cache; repeats are encoded once.
        guidance_scale (`float`, *optional*): the guidance the rollouts use (decides whether CFG rows are kept).
        negative_prompt (`str`, *optional*): for CFG families.
        batch_size (`int`, defaults to 32): prompts per text-encoder call (also the disk shard size).
        cache_dir (`str` or `os.PathLike`, *optional*): keep the rows on disk there (see the module docstring) and
            reuse a cache written there for the same prompts, guidance and text encoders; `None`: CPU memory.
        device (`torch.device`, *optional*): where to run the text encoders (default: the pipeline's).
        read_only (`bool`, defaults to `False`): only load an existing, matching `cache_dir` (raises if absent);
            the non-main processes of a multi-process run use it after the main process has written it.
        progress (`bool`, defaults to `True`): a progress bar while encoding.
    """

    def __init__(
        self,
        pipeline,
        prompts: Sequence[str],
        guidance_scale: Optional[float] = None,
        negative_prompt: Optional[str] = None,
        batch_size: int = 32,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        device: Optional[torch.device] = None,
        read_only: bool = False,
        progress: bool = True,
    ):
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}.")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        self.prompts = list(dict.fromkeys(prompts))
        self.index = {p: i for i, p in enumerate(self.prompts)}
        self.batch_size = batch_size
        self.guidance_scale = pipeline._check_guidance(guidance_scale)
        self.negative_prompt = negative_prompt
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.concat = pipeline.family.concat_prompt_embeds
        self._memory: Optional[list[PromptEmbeds]] = None
        self._shards: Optional[list[Path]] = None
        self._shared: tuple[str, ...] = ()
        self.loaded_from_disk = False

        fingerprint = None
        if self.cache_dir is not None:
            fingerprint = text_encoder_fingerprint(pipeline) if not read_only else None
            if self._load_index(fingerprint):
                self.loaded_from_disk = True
                return
            if read_only:
                raise FileNotFoundError(
                    f"No prompt-embedding cache for these {len(self.prompts)} prompts at {self.cache_dir} "
                    f"({_INDEX_FILE} missing or for other prompts)."
                )
        self._encode(pipeline, device, progress, fingerprint)

    # ------------------------------------------------------------------ building
    def _batches(self):
        for i in range(0, len(self.prompts), self.batch_size):
            yield self.prompts[i : i + self.batch_size]

    def _encode(self, pipeline, device, progress: bool, fingerprint: Optional[dict]) -> None:
        """Encode every batch; keep it in memory, or write it as a shard and the index last (a half cache is none).
        `fingerprint`: the text encoders' (computed by `__init__` for a disk cache), stored in the index key."""
        from safetensors.torch import save_file
        from tqdm.auto import tqdm

        batches = list(self._batches())
        bar = tqdm(batches, desc="Encoding prompts", unit="batch", disable=not progress or len(batches) < 2)
        if self.cache_dir is None:
            self._memory = []
        else:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            (self.cache_dir / _INDEX_FILE).unlink(missing_ok=True)
        shards = []
        for k, chunk in enumerate(bar):
            rows = pipeline.encode_prompts(chunk, self.guidance_scale, self.negative_prompt, device=device)
            self._shared = rows.shared
            if self.cache_dir is None:
                self._memory.append(rows.to("cpu"))
                continue
            path = self.cache_dir / f"embeds-{k:05d}.safetensors"
            save_file({n: t.detach().contiguous().cpu() for n, t in rows.tensors.items()}, str(path))
            shards.append(path.name)
        if self.cache_dir is None:
            return
        index = {
            "version": CACHE_FORMAT_VERSION,
            "key": _key(fingerprint, self.prompts, self.guidance_scale, self.negative_prompt),
            "num_prompts": len(self.prompts),
            "batch_size": self.batch_size,
            "shared": list(self._shared),
            "shards": shards,
            "prompts": self.prompts,
        }
        tmp = self.cache_dir / f"{_INDEX_FILE}.tmp"
        tmp.write_text(json.dumps(index))
        os.replace(tmp, self.cache_dir / _INDEX_FILE)
        self._shards = [self.cache_dir / s for s in shards]

    def _load_index(self, fingerprint: Optional[dict]) -> bool:
        path = self.cache_dir / _INDEX_FILE
        if not path.is_file():
            return False
        index = json.loads(path.read_text())
        same_prompts = index.get("prompts") == self.prompts and index.get("batch_size") == self.batch_size
        if fingerprint is not None:
            expected = _key(fingerprint, self.prompts, self.guidance_scale, self.negative_prompt)
            if index.get("key") != expected or not same_prompts:
                logger.warning(
                    "The prompt-embedding cache at %s was written for other prompts or text encoders; re-encoding.",
                    self.cache_dir,
                )
                return False
        elif not same_prompts:
            return False
        shards = [self.cache_dir / s for s in index["shards"]]
        missing = [s for s in shards if not s.is_file()]
        if missing:
            logger.warning("The prompt-embedding cache at %s lacks %s; re-encoding.", self.cache_dir, missing[0].name)
            return False
        self._shards, self._shared = shards, tuple(index["shared"])
        return True

    # ------------------------------------------------------------------ lookup
    def __len__(self) -> int:
        return len(self.prompts)

    def __contains__(self, prompt: str) -> bool:
        return prompt in self.index

    def missing(self, prompts: Sequence[str]) -> list[str]:
        """The prompts of `prompts` that are not cached."""
        return [p for p in prompts if p not in self.index]

    def rows(self, prompts: Sequence[str]) -> PromptEmbeds:
        """The cached rows of `prompts`, in that order (repeats allowed), on the CPU."""
        missing = self.missing(prompts)
        if missing:
            raise KeyError(f"{len(missing)} prompt(s) are not in the prompt-embedding cache, e.g. {missing[0]!r}.")
        parts = [self._row(*divmod(self.index[p], self.batch_size)) for p in prompts]
        return self.concat(parts)  # the family's join: variable-length text is padded there, the rest concatenated

    def _row(self, shard: int, row: int) -> PromptEmbeds:
        if self._memory is not None:
            return self._memory[shard].select(torch.tensor([row]))
        from safetensors import safe_open

        out = {}
        with safe_open(str(self._shards[shard]), framework="pt", device="cpu") as f:
            for name in f.keys():
                out[name] = f.get_tensor(name) if name in self._shared else f.get_slice(name)[row : row + 1]
        return PromptEmbeds(out, self._shared)


def cached_rows(cache: Optional[PromptEmbedsCache], prompts: Sequence[str]) -> Optional[PromptEmbeds]:
    """The cached rows of `prompts`, or `None` (no cache, or a prompt it does not hold: encoded as usual)."""
    if cache is None or cache.missing(prompts):
        return None
    return cache.rows(prompts)
