"""What a grouped rollout returns: the window trajectory, its log-probs, the prompt conditioning and the group layout."""

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

import torch


@dataclass
class PromptEmbeds:
    """Prompt conditioning of one model family, one row per prompt.

    `tensors` holds the family's named tensors (e.g. FLUX: `prompt_embeds`, `pooled_prompt_embeds`, `text_ids`;
    SD3/SD1.5 with CFG: also the `negative_*` ones). Tensors whose first dimension is not the prompt dimension
    (FLUX's `text_ids`) are listed in `shared` and never indexed. Encode a prompt dataset once with
    `GRPOTrainingPipeline.encode_prompts` and pass the result to `rollout(prompt_embeds=...)` to keep the text
    encoders off the training loop.
    """

    tensors: dict[str, torch.Tensor]
    shared: tuple[str, ...] = ()

    def __len__(self) -> int:
        for name, value in self.tensors.items():
            if name not in self.shared:
                return value.shape[0]
        return 0

    def select(self, index: torch.Tensor) -> "PromptEmbeds":
        """Rows `index` (a 1-D long tensor; repeats allowed), e.g. to expand per-prompt rows to per-sample rows."""
        out = {}
        for name, value in self.tensors.items():
            out[name] = value if name in self.shared else value[index.to(value.device)]
        return PromptEmbeds(out, self.shared)

    def to(self, device=None, dtype=None) -> "PromptEmbeds":
        out = {}
        for name, value in self.tensors.items():
            is_float = value.is_floating_point()
            out[name] = value.to(device=device, dtype=dtype if is_float else None)
        return PromptEmbeds(out, self.shared)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.tensors.get(name, default)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the rows to `path` (a folder): `embeds.safetensors` + `meta.json`."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.tensors.items()}, str(path / "embeds.safetensors")
        )
        (path / "meta.json").write_text(json.dumps({"shared": list(self.shared)}))

    @classmethod
    def load(cls, path: Union[str, os.PathLike], device=None) -> "PromptEmbeds":
        """Read rows written by `save`."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "embeds.safetensors").is_file():
            raise FileNotFoundError(f"No cached prompt embeddings at {path} (expected embeds.safetensors).")
        meta = json.loads((path / "meta.json").read_text())
        return cls(load_file(str(path / "embeds.safetensors"), device=str(device or "cpu")), tuple(meta["shared"]))

    @staticmethod
    def concat(parts: list["PromptEmbeds"]) -> "PromptEmbeds":
        """Concatenate along the prompt dimension (shared tensors are taken from the first part)."""
        first = parts[0]
        out = {}
        for name in first.tensors:
            if name in first.shared:
                out[name] = first.tensors[name]
            else:
                out[name] = torch.cat([p.tensors[name] for p in parts], dim=0)
        return PromptEmbeds(out, first.shared)


@dataclass
class RolloutBatch:
    """A batch of grouped rollouts: `num_prompts` prompts x `num_generations` samples each (B samples in all).

    Sample `b` belongs to group `group_ids[b]` (= its prompt's row in `prompt_embeds`). Only the steps that are
    trained are kept: for a contiguous window `latents[:, j]` is the input of grid step `step_indices[j]` and
    `latents[:, j + 1]` its output; in general `latent_index[j]` gives the two positions (SDE steps with gaps: each run
    of consecutive steps stores its L + 1 latents, so `[0, 3, 5]` takes 6 slots).

    Attributes:
        images (`torch.Tensor`): `(B, 3, H, W)` float32 in [0, 1]; video families `(B, F, 3, H, W)`.
        prompts (`list[str]`): one per sample.
        group_ids (`torch.LongTensor`): `(B,)`, the prompt index of each sample.
        prompt_embeds (`PromptEmbeds`): one row per prompt.
        latents (`torch.Tensor`): `(B, S, ...)` latents around the recorded steps, in the denoiser's layout.
        log_probs (`torch.Tensor`): `(B, K)` float32 log-probs of the recorded SDE steps (rollout policy).
        step_indices (`list[int]`): grid index of each recorded SDE step (K of them).
        timesteps (`torch.Tensor`): `(K,)` the denoiser timestep of each recorded step.
        latent_index (`list[tuple[int, int]]`): for each recorded step, the positions of its input and output in
            `latents`' second dimension.
        chunks (`list[torch.LongTensor]`): the sample indices of each rollout chunk. A training pass over exactly these
            chunks sees the denoiser with the same batch composition as the rollout, so on-policy ratios are exactly 1.
        scheduler_kwargs (`dict`): `set_timesteps` arguments of the rollout (`num_inference_steps`, `sigmas`, `mu`),
            so the log-prob recomputation rebuilds the same grid.
        sde_window (`tuple[int, int]`): the window `(start, end)` the rollout used (with gaps between the SDE steps:
            their span, `(step_indices[0], step_indices[-1] + 1)`).
        guidance_scale (`float`): the guidance used (embedded for FLUX, CFG for SD3 / SD1.5); `log_prob` reuses it.
        height, width (`int`): image size.
        nfe (`int`): denoiser evaluations (per sample-step; a CFG step counts once) spent on this batch.
        extras (`dict`): room for rewards, advantages, per-model scores added by the trainer.
        means (`torch.Tensor`, *optional*): `(B, K, ...)` float32 mean of each recorded SDE step under the rollout
            policy (`rollout(record_means=True)`; GRPO-Guard's ratio normalisation needs it), else `None`.
    """

    images: torch.Tensor
    prompts: list[str]
    group_ids: torch.Tensor
    prompt_embeds: PromptEmbeds
    latents: torch.Tensor
    log_probs: torch.Tensor
    step_indices: list[int]
    timesteps: torch.Tensor
    latent_index: list[tuple[int, int]]
    chunks: list[torch.Tensor]
    scheduler_kwargs: dict
    sde_window: tuple[int, int]
    guidance_scale: float
    height: int
    width: int
    nfe: int = 0
    extras: dict = field(default_factory=dict)
    means: Optional[torch.Tensor] = None

    @property
    def batch_size(self) -> int:
        return self.group_ids.shape[0]

    @property
    def num_generations(self) -> int:
        return int(torch.bincount(self.group_ids).max()) if self.batch_size else 0

    def step_position(self, step_index: int) -> int:
        """Position `j` of grid step `step_index` among the recorded steps; a clear error if it was not recorded."""
        try:
            return self.step_indices.index(int(step_index))
        except ValueError:
            raise ValueError(
                f"step_index={step_index} was not recorded in this rollout; recorded SDE steps: {self.step_indices}."
            ) from None

    def pil_images(self) -> list:
        """The images as a list of PIL images; a video `(B, F, 3, H, W)` gives one filmstrip per sample (its frames
        side by side, left to right)."""
        from PIL import Image

        images = self.images
        if images.ndim == 5:
            images = torch.cat(images.unbind(1), dim=-1)  # (B, 3, H, F * W)
        arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]

    def to(self, device) -> "RolloutBatch":
        """A copy with every tensor moved to `device`."""
        kwargs = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (torch.Tensor, PromptEmbeds)):
                value = value.to(device)
            elif f.name == "chunks":
                value = [c.to(device) for c in value]
            kwargs[f.name] = value
        return RolloutBatch(**kwargs)

    def select(self, index: torch.Tensor) -> "RolloutBatch":
        """The samples `index` (group ids and embeddings kept consistent: embeddings stay per prompt)."""
        index = torch.as_tensor(index, dtype=torch.long)
        kwargs = {f.name: getattr(self, f.name) for f in fields(self)}
        kwargs.update(
            images=self.images[index],
            prompts=[self.prompts[i] for i in index.tolist()],
            group_ids=self.group_ids[index],
            latents=self.latents[index],
            log_probs=self.log_probs[index],
            means=self.means[index] if self.means is not None else None,
            chunks=[torch.arange(len(index))],
            extras={
                k: (v[index] if isinstance(v, torch.Tensor) and v.shape[:1] == (self.batch_size,) else v)
                for k, v in self.extras.items()
            },
        )
        return RolloutBatch(**kwargs)
