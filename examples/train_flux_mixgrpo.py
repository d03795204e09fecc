"""Align FLUX.1 to human preference with MixGRPO (LoRA by default).

    accelerate launch examples/train_flux_mixgrpo.py --config examples/configs/flux_mixgrpo.yaml \
        --pretrained_model_name_or_path black-forest-labs/FLUX.1-dev --prompt_file prompts.txt --output_dir out \
        [--push_to_hub --hub_model_id me/flux-mixgrpo-lora]
    accelerate launch examples/train_flux_mixgrpo.py --config examples/configs/flux_mixgrpo.yaml --resume_from_checkpoint latest

Every `GRPOConfig` field is a flag (`--help` lists them); flags override the YAML file. The result loads into a stock
pipeline with `pipe.load_lora_weights("out")` (or the Hub id). The library holds the logic; see docs/training.md.
"""

from diffusers_mixgrpo.training.cli import main

if __name__ == "__main__":
    main(expected_family="flux")
