"""Align Stable Diffusion 1.5 with MixGRPO (DDIM sampling, DDIM-eta SDE window; LoRA by default).

    accelerate launch examples/train_sd15_mixgrpo.py --config examples/configs/sd15_mixgrpo.yaml \
        --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 --prompt_file prompts.txt \
        --output_dir out
    accelerate launch examples/train_sd15_mixgrpo.py --output_dir out --resume_from_checkpoint latest

Every `GRPOConfig` field is a flag (`--help` lists them); flags override the YAML file. See docs/training.md.
examples/train_mixgrpo.py is the same command for every family (detected from the model); this script only adds
the check that the model is a SD1.5 one.
"""

from diffusers_mixgrpo.training.cli import main

DESCRIPTION = (
    "Align a Stable Diffusion 1.5-class model with MixGRPO: sample groups of images per prompt with DDIM, train a "
    "LoRA on the sliding window of DDIM-eta (SDE) steps against the rewards. The LoRA loads into a stock "
    "StableDiffusionPipeline with load_lora_weights. Every GRPOConfig field is a flag; --config takes a YAML file "
    "(flags win). See docs/training.md."
)

if __name__ == "__main__":
    main(expected_family="sd15", description=DESCRIPTION)
