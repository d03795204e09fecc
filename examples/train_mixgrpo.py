"""Align any supported diffusers text-to-image model with MixGRPO; the model family is detected from the model.

    accelerate launch examples/train_mixgrpo.py --config examples/configs/qwenimage_mixgrpo.yaml \
        --pretrained_model_name_or_path Qwen/Qwen-Image --prompt_file prompts.txt --output_dir out
    accelerate launch examples/train_mixgrpo.py --output_dir out --resume_from_checkpoint latest

Supported families (the stock pipeline class in the folder's `model_index.json` decides): FLUX.1 (`FluxPipeline`),
SD3 / SD3.5, SD1.5, SDXL, SANA, Wan text-to-video, Qwen-Image, FLUX.2 [dev], FLUX.2 [klein] and Z-Image; see
docs/pipelines.md. With `model_family`
set (the shipped configs set it), a model of another family is refused before it is loaded. Every `GRPOConfig` field
is a flag (`--help` lists them); flags override the YAML file. The LoRA loads into the stock pipeline with
`pipe.load_lora_weights("out")`. `train_flux_mixgrpo.py`, `train_sd3_mixgrpo.py` and `train_sd15_mixgrpo.py` are the
same command pinned to one family.
"""

from diffusers_mixgrpo.training.cli import main

DESCRIPTION = (
    "Align a diffusers text-to-image model (FLUX.1, SD3, SD1.5, SDXL, SANA, Qwen-Image, FLUX.2 [dev] / [klein], "
    "Z-Image; or Wan text-to-video; the "
    "family is detected from the model folder) with MixGRPO: sample groups of images per prompt, score them with the "
    "rewards, and train a LoRA on the sliding window of SDE steps. The LoRA loads into the stock pipeline with "
    "load_lora_weights. Every GRPOConfig field is a flag; --config takes a YAML file (flags win). See "
    "docs/training.md."
)

if __name__ == "__main__":
    main(description=DESCRIPTION)
