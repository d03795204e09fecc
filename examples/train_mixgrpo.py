"""Align any supported diffusers text-to-image model with MixGRPO: the `mixgrpo-train` command as a script.

    accelerate launch examples/train_mixgrpo.py --config examples/configs/qwenimage_mixgrpo.yaml \
        --pretrained_model_name_or_path Qwen/Qwen-Image --prompt_file prompts.txt --output_dir out
    accelerate launch examples/train_mixgrpo.py --output_dir out --resume_from_checkpoint latest

Supported families (the stock pipeline class in the folder's `model_index.json` decides): FLUX.1 (`FluxPipeline`),
SD3 / SD3.5, SD1.5, SDXL, SANA, Wan text-to-video, Qwen-Image, FLUX.2 [dev], FLUX.2 [klein] and Z-Image; see
docs/pipelines.md. The shipped configs (`examples/configs/`) set `model_family`, so a model of another family is
refused before it is loaded. Every `GRPOConfig` field is a flag (`--help` lists them); flags override the YAML file.
The LoRA loads into the stock pipeline with `pipe.load_lora_weights("out")`. The logic is
`diffusers_mixgrpo.training.cli`.
"""

from diffusers_mixgrpo.training.cli import main

if __name__ == "__main__":
    main()
