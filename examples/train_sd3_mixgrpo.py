"""Align Stable Diffusion 3 / 3.5 with MixGRPO (LoRA by default).

    accelerate launch examples/train_sd3_mixgrpo.py --config examples/configs/sd3_mixgrpo.yaml \
        --pretrained_model_name_or_path stabilityai/stable-diffusion-3.5-medium --prompt_file prompts.txt \
        --output_dir out
    accelerate launch examples/train_sd3_mixgrpo.py --output_dir out --resume_from_checkpoint latest

Every `GRPOConfig` field is a flag (`--help` lists them); flags override the YAML file. See docs/training.md.
examples/train_mixgrpo.py is the same command for every family (detected from the model); this script only adds
the check that the model is a SD3 one.
"""

from diffusers_mixgrpo.training.cli import main

DESCRIPTION = (
    "Align a Stable Diffusion 3 / 3.5 model with MixGRPO: sample groups of images per prompt (classifier-free "
    "guidance), score them with the rewards, and train a LoRA on the sliding window of SDE steps. The LoRA loads "
    "into a stock StableDiffusion3Pipeline with load_lora_weights. Every GRPOConfig field is a flag; --config takes "
    "a YAML file (flags win). See docs/training.md."
)

if __name__ == "__main__":
    main(expected_family="sd3", description=DESCRIPTION)
