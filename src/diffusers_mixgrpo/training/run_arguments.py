"""`RunArguments`: the fields every training run has whatever its algorithm, and how a config is read and written.

The part of a run's configuration that is not GRPO: the optimiser, memory and scale-out, prompts / logging /
validation, checkpointing and the Hub, with the names of the diffusers training examples (`learning_rate`,
`gradient_accumulation_steps`, `checkpointing_steps`, ...), plus the YAML / dict I/O. `GRPOConfig`
(`training.config`) extends it with the model, sampling, window, objective, reward and LoRA fields, as TRL's
`GRPOConfig` extends transformers' `TrainingArguments`. Each field documents itself in `metadata` (`help`, `choices`,
`range`), and `training.arguments` builds the command line from it.
"""

import dataclasses
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .choices import MIXED_PRECISIONS, OPTIMIZERS, REPORT_TO, TEXT_ENCODER_OFFLOADS, lr_scheduler_names
from .errors import ConfigError
from .fields import check_known_keys, load_yaml_values
from .reward_spec import is_secret_option

#: Validation prompts taken from the training prompts when `validation_prompts` is unset.
DEFAULT_NUM_VALIDATION_PROMPTS = 4


@dataclass
class RunArguments:
    """The optimiser, memory and scale-out, logging and validation, checkpointing and Hub fields of a run, and the
    config's YAML / dict I/O. Use it through `GRPOConfig`, which checks every field in its `__post_init__`."""

    output_dir: str = field(
        default="mixgrpo-output",
        metadata={
            "group": "Output and optimisation",
            "help": "Where checkpoints, logs, the final LoRA weights and the model card are written.",
            "if_empty": "is not allowed; give the folder the run writes to",
        },
    )
    optimizer: str = field(
        default="adamw",
        metadata={
            "help": "`'adamw'` (torch) or `'adamw8bit'` (bitsandbytes).",
            "choices": OPTIMIZERS,
        },
    )
    learning_rate: float = field(
        default=1e-5,
        metadata={
            "help": "Peak learning rate (usual: 1e-5 for a full fine-tune as in the paper, 1e-4 to 3e-4 for a LoRA; "
            "above 1e-2 warns).",
            "range": "(0, 1]",
        },
    )
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1.", "range": "[0, 1)"})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2.", "range": "[0, 1)"})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon.", "range": "(0, inf)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW decoupled weight decay.", "range": "[0, inf)"})
    lr_scheduler: str = field(
        default="constant",
        metadata={
            "help": "A `diffusers.optimization.get_scheduler` name (`'constant'`, `'constant_with_warmup'`, "
            "`'linear'`, `'cosine'`, ...).",
            "choices": lr_scheduler_names,
        },
    )
    lr_warmup_steps: int = field(default=0, metadata={"help": "Warm-up optimiser steps.", "range": "[0, inf)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient-norm clip.", "range": "(0, inf)"})
    gradient_accumulation_steps: int = field(
        default=3, metadata={"help": "Micro-batches accumulated per optimiser step.", "range": "[1, inf)"}
    )
    max_train_steps: int = field(
        default=300, metadata={"help": "Training steps (GRPO iterations) to run.", "range": "[1, inf)"}
    )
    mixed_precision: str = field(
        default="no", metadata={"help": "`'no'`, `'fp16'` or `'bf16'` (the paper: bf16).", "choices": MIXED_PRECISIONS}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass of the denoiser (the paper: on)."}
    )
    allow_tf32: bool = field(
        default=True,
        metadata={
            "help": "TF32 matmuls and cuDNN convolutions on Ampere+ GPUs: sets `torch.backends.cuda.matmul.allow_tf32` "
            "and `torch.backends.cudnn.allow_tf32` when the trainer starts on CUDA (`False` turns both off)."
        },
    )
    seed: int = field(
        default=42,
        metadata={"help": "Seed of the run (initial noise, window schedule, data order).", "range": "[0, inf)"},
    )
    cache_prompt_embeds: bool = field(
        default=False,
        metadata={
            "group": "Memory and scale-out",
            "help": "Encode every training and evaluation prompt once at start-up (`PromptEmbedsCache`, a progress "
            "bar) and roll out from the cached rows; the text encoders then never run during training.",
        },
    )
    prompt_embeds_cache_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": "Keep the cached rows on disk there (read lazily, for datasets whose conditioning does not fit in "
            "memory) and reuse them in later runs with the same prompts and text encoders. `None`: CPU memory. "
            "Needs `cache_prompt_embeds=True`."
        },
    )
    offload_text_encoders: str = field(
        default="none",
        metadata={
            "help": "`'none'` (on the device), `'cpu'` (in CPU memory, moved to the device for each encode) or "
            "`'free'` (deleted once the prompts are cached; needs `cache_prompt_embeds=True`).",
            "choices": TEXT_ENCODER_OFFLOADS,
        },
    )
    offload_vae: bool = field(
        default=False, metadata={"help": "Keep the VAE in CPU memory and move it to the device for each decode."}
    )
    vae_slicing: bool = field(
        default=False,
        metadata={"help": "Decode a rollout chunk one image at a time (the same images; peak memory of one decode)."},
    )
    vae_tiling: bool = field(
        default=False,
        metadata={"help": "Decode in blended tiles (1024 px and up; images differ slightly from a full decode)."},
    )
    fsdp2: bool = field(
        default=False,
        metadata={
            "help": "Shard the denoiser with torch's FSDP2 (`fully_shard` per transformer block) under the trainer; "
            'runs on GPUs and on the CPU (gloo). See docs/training.md, "Scaling out".'
        },
    )
    fsdp2_reshard_after_forward: bool = field(
        default=True,
        metadata={
            "help": "FSDP2: free a block's gathered weights after its forward (full shard, like ZeRO-3); `False`: keep "
            "them until the backward (like ZeRO-2: faster, more memory)."
        },
    )
    fsdp2_cpu_offload: bool = field(
        default=False, metadata={"help": "FSDP2: keep the shards, gradients and optimiser state in CPU memory."}
    )
    overlap_rewards: bool = field(
        default=False,
        metadata={
            "help": "Score each rollout chunk in a thread while the next chunk is denoised (the same samples and "
            "scores)."
        },
    )
    prompt_file: Optional[str] = field(
        default=None,
        metadata={
            "group": "Prompts, logging and validation",
            "help": "Text file with one training prompt per line (or hand prompts to the trainer).",
        },
    )
    report_to: Optional[str] = field(
        default=None,
        metadata={
            "help": "Trackers: `'tensorboard'`, `'wandb'`, `'all'`, `'none'` (no tracker) or a comma-separated list. "
            "`None` (`null`): tensorboard if installed, else none. A named tracker that is not installed fails before "
            "the model loads.",
            "none_is_a_value": True,
        },
    )
    tracker_project_name: str = field(default="mixgrpo", metadata={"help": "Project name given to the trackers."})
    tracker_run_name: Optional[str] = field(
        default=None,
        metadata={
            "help": "Name of the wandb run. `None`: the name of `output_dir`. The run's wandb id is kept in "
            "`output_dir/wandb_run_id.txt`, so a resumed run logs into the same wandb run."
        },
    )
    logging_dir: str = field(default="logs", metadata={"help": "Tracker directory, relative to `output_dir`."})
    logging_steps: int = field(
        default=1, metadata={"help": "Log scalars every this many training steps.", "range": "[1, inf)"}
    )
    validation_steps: int = field(
        default=50,
        metadata={
            "help": "Log a grid of sample images every this many training steps (0: never).",
            "range": "[0, inf)",
        },
    )
    validation_prompts: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Held-out prompts of the periodic evaluation (ODE samples, `eval/reward`, a per-prompt table, an "
            'image grid; see docs/training.md, "Evaluation"). A single string is one prompt. Give this or '
            "`validation_prompt_file`, not both. Neither: the first `DEFAULT_NUM_VALIDATION_PROMPTS` (4) "
            "training prompts, with a warning (scores on training prompts measure fit, not generalisation).",
            "whole_string": True,
        },
    )
    validation_prompt_file: Optional[str] = field(
        default=None,
        metadata={
            "help": "Text file with one held-out evaluation prompt per line (blank lines ignored), read before the "
            "model loads: a missing or empty file stops the run with its path."
        },
    )
    validation_images_per_prompt: int = field(
        default=2,
        metadata={
            "help": "Images per evaluation prompt. Image `j` of prompt `i` starts from the noise of seed "
            "`evaluation.eval_seed(validation_seed, i, j)`, so an evaluation is the same in every run, at "
            "every step and for any number of processes (the prompt x image work is split across the processes "
            "and gathered).",
            "range": "[1, inf)",
        },
    )
    validation_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of the evaluation noise; independent of `seed`, so runs with other training seeds are scored "
            "on the same noise.",
            "range": "[0, inf)",
        },
    )
    checkpointing_steps: int = field(
        default=50,
        metadata={
            "group": "Checkpointing",
            "help": "Save a resumable checkpoint every this many training steps (0: only at the end).",
            "range": "[0, inf)",
        },
    )
    checkpoints_total_limit: Optional[int] = field(
        default=None,
        metadata={
            "help": "Keep at most this many checkpoints (oldest deleted first). `None`: keep all.",
            "range": "[1, inf)",
        },
    )
    resume_from_checkpoint: Optional[str] = field(
        default=None,
        metadata={
            "help": "`'latest'` (the newest complete checkpoint of `output_dir`; a fresh start when there is none) or "
            "a checkpoint folder. `None`: a fresh run (the trainer never resumes on its own). The run's saved "
            "`training_config.yaml` supplies every value not given."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start a fresh run in an `output_dir` that already holds a run (its checkpoints, or the final "
            "weights / `training_summary.json` of a finished run), replacing what it wrote. `False`: such a folder "
            "is refused before the model loads (resume it with `resume_from_checkpoint`, or choose another "
            "folder). Never inherited by a resume."
        },
    )
    preemption_snapshot: bool = field(
        default=True,
        metadata={
            "help": "Keep a CPU copy of the trained weights and optimiser state at the start of each iteration's "
            "update, so that SIGTERM / SIGINT stop at the next micro-batch and save the state of the "
            'iteration\'s start (bounded time: see `docs/training.md`, "Pre-emption"). Costs that copy in CPU '
            "memory (a LoRA: small; a full fine-tune: 3x the model in float32, per rank its shard). `False`: a "
            "signal stops at once only before the iteration's first optimiser step, else at the end of the "
            "iteration."
        },
    )
    push_to_hub: bool = field(
        default=False,
        metadata={"group": "Hub", "help": "Upload the final weights, the config and a model card to the Hub."},
    )
    hub_model_id: Optional[str] = field(
        default=None,
        metadata={
            "help": "Repository id. `None`: the name of `output_dir`.",
            "if_empty": "is not allowed; give a repository id such as 'user/flux-mixgrpo' or leave it unset",
        },
    )
    hub_private: Optional[bool] = field(
        default=None,
        metadata={"help": "Create the repository private. `None`: the Hub's default for your account/organisation."},
    )
    hub_token: Optional[str] = field(
        default=None,
        repr=False,
        metadata={
            "help": "Token for the Hub. Prefer `hf auth login` or the `HF_TOKEN` environment variable. Never saved, "
            "logged or shown.",
            "secret": True,
        },
    )
    hub_base_model: Optional[str] = field(
        default=None,
        metadata={
            "help": "Hub id of the base model, for the model card, when `pretrained_model_name_or_path` is a local "
            "folder. `None`: the Hub id when the model was loaded by id (or from the Hugging Face cache), else "
            "none."
        },
    )

    def _check_run_combinations(self) -> None:
        """The rules that tie several of these fields together; each failure names the values and how to fix them."""
        if self.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(
                "optimizer='adamw8bit' needs the bitsandbytes package; install it or use optimizer='adamw'."
            )
        if self.prompt_embeds_cache_dir is not None and not self.cache_prompt_embeds:
            raise ConfigError(
                f"prompt_embeds_cache_dir={self.prompt_embeds_cache_dir!r} needs cache_prompt_embeds=True; set it, "
                f"or leave prompt_embeds_cache_dir unset."
            )
        if self.offload_text_encoders == "free" and not self.cache_prompt_embeds:
            raise ConfigError(
                "offload_text_encoders='free' needs cache_prompt_embeds=True (the prompts must be encoded before "
                "the text encoders are deleted); set it, or use offload_text_encoders='cpu'."
            )
        if not self.fsdp2 and self.fsdp2_cpu_offload:
            raise ConfigError(
                "fsdp2_cpu_offload=True has no effect without fsdp2=True; set fsdp2=True or fsdp2_cpu_offload=False."
            )
        if not self.fsdp2 and not self.fsdp2_reshard_after_forward:
            raise ConfigError(
                "fsdp2_reshard_after_forward=False has no effect without fsdp2=True; set fsdp2=True or leave it True."
            )
        for tracker in self.report_to_list():
            if tracker not in REPORT_TO:
                raise ConfigError(f"report_to={self.report_to!r} names {tracker!r}; allowed: {', '.join(REPORT_TO)}.")
        if self.validation_prompts is not None and self.validation_prompt_file is not None:
            raise ConfigError(
                f"validation_prompts and validation_prompt_file={self.validation_prompt_file!r} are both set; give "
                f"the evaluation prompts one way (a list, or a file with one prompt per line)."
            )

    def report_to_list(self) -> list[str]:
        """The trackers as a list (`report_to` split on commas). `None` stays unresolved: see `logging_utils`."""
        if self.report_to is None:
            return []
        return [t.strip() for t in self.report_to.split(",") if t.strip()]

    def resolved_hub_model_id(self) -> str:
        """`hub_model_id`, or the name of `output_dir` when unset."""
        return self.hub_model_id or os.path.basename(os.path.normpath(self.output_dir))

    # -- (de)serialisation -----------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({items})"

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain Python values, preset values resolved; secrets (`hub_token`, credential options in
        `reward_kwargs` such as `unifiedreward.api_key`) are left out."""
        out = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("secret"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = {k: dict(v) if isinstance(v, dict) else v for k, v in value.items()}
                if f.name == "reward_kwargs":  # an API key is used by the reward, never written
                    value = {k: {o: x for o, x in v.items() if not is_secret_option(o)} for k, v in value.items()}
            elif isinstance(value, list):
                value = list(value)
            out[f.name] = value
        return out

    def to_yaml(self, path: Optional[Union[str, os.PathLike]] = None) -> str:
        """The config as YAML (no secrets); written to `path` when given. `from_yaml` reads it back."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return text

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], **overrides: Any):
        """Build from a mapping (e.g. a loaded YAML); `overrides` win. Unknown keys fail with a suggestion."""
        merged = {**dict(values), **overrides}
        check_known_keys(merged, (cls,))
        return cls(**merged)

    @classmethod
    def from_yaml(cls, path: Union[str, os.PathLike], **overrides: Any):
        """Build from a YAML file of `field: value` pairs; `overrides` (keyword arguments) win over the file."""
        return cls.from_dict(load_yaml_values(path, (cls,)), **overrides)
