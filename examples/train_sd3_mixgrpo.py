"""Align Stable Diffusion 3 / 3.5 to human preference with MixGRPO (LoRA by default).

    accelerate launch examples/train_sd3_mixgrpo.py --config examples/configs/sd3_mixgrpo.yaml \
        --pretrained_model_name_or_path stabilityai/stable-diffusion-3.5-medium --prompt_file prompts.txt --output_dir out \
        [--push_to_hub --hub_model_id me/sd3-mixgrpo-lora]
    accelerate launch examples/train_sd3_mixgrpo.py --config examples/configs/sd3_mixgrpo.yaml --resume_from_checkpoint latest

Every `GRPOConfig` field is a flag (`--help` lists them); flags override the YAML file. The result loads into a stock
pipeline with `pipe.load_lora_weights("out")` (or the Hub id). The library holds the logic; see docs/training.md.
"""

from diffusers_mixgrpo.training.cli import main

if __name__ == "__main__":
    main(expected_family="sd3")
