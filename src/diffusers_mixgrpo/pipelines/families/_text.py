"""Variable-length text conditioning: right-pad per-batch prompt embeddings (and their masks) to a common length."""

import torch

from ..rollout_batch import PromptEmbeds


def pad_to_length(x: torch.Tensor, length: int) -> torch.Tensor:
    """Right-pad dimension 1 of `x` with zeros to `length` (a mask pads with `False`/0: masked out)."""
    if x.shape[1] >= length:
        return x
    pad = x.new_zeros((x.shape[0], length - x.shape[1], *x.shape[2:]))
    return torch.cat([x, pad], dim=1)


def concat_padded(parts: list[PromptEmbeds], padded: tuple[str, ...]) -> PromptEmbeds:
    """`PromptEmbeds.concat` after padding the tensors named in `padded` to the longest part. Only tensors that come
    with an attention mask may be listed: the padded positions carry mask 0, so the denoiser ignores them."""
    for name in padded:
        present = [p.tensors[name] for p in parts if name in p.tensors]
        if not present:
            continue
        length = max(t.shape[1] for t in present)
        for p in parts:
            if name in p.tensors:
                p.tensors[name] = pad_to_length(p.tensors[name], length)
    return PromptEmbeds.concat(parts)
