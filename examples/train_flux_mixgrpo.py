"""Align FLUX.1 to human preference with MixGRPO (LoRA by default).

    accelerate launch examples/train_flux_mixgrpo.py --config examples/configs/flux_mixgrpo.yaml \
        --pretrained_model_name_or_path black-forest-labs/FLUX.1-dev --prompt_file prompts.txt --output_dir out \
        [--push_to_hub --hub_model_id me/flux-mixgrpo-lora]
    accelerate launch examples/train_flux_mixgrpo.py --output_dir out --resume_from_checkpoint latest

Every `GRPOConfig` field is a flag (`--help` lists them); flags override the YAML file. The result loads into a stock
pipeline with `pipe.load_lora_weights("out")` (or the Hub id). The library holds the logic; see docs/training.md.
examples/train_mixgrpo.py is the same command for every family (detected from the model); this script only adds
the check that the model is a FLUX.1 one.
"""

from diffusers_mixgrpo.training.cli import main

DESCRIPTION = (
    "Align a FLUX.1 model (or the toy-world base model shipped with the package) with MixGRPO: sample groups of "
    "images per prompt, score them with the rewards, and train a LoRA on the sliding window of SDE steps. The LoRA "
    "loads into a stock FluxPipeline with load_lora_weights. Every GRPOConfig field is a flag; --config takes a "
    "YAML file (flags win). See docs/training.md."
)

if __name__ == "__main__":
    main(expected_family="flux", description=DESCRIPTION)
