"""Evaluate a diffusers pipeline (optionally + LoRA) with the rewards: the `mixgrpo-eval` command as a script.

    python examples/eval_rewards.py --model black-forest-labs/FLUX.1-dev --lora ./my_lora \
        --prompts prompts.txt --rewards hpsv2.1 pickscore imagereward --num-images-per-prompt 4 \
        --steps 25 --height 720 --width 720 --guidance-scale 3.5 --device cuda --dtype bfloat16 --output-json eval.json

    accelerate launch --num_processes 8 examples/eval_rewards.py --preset mixgrpo-paper \
        --model black-forest-labs/FLUX.1-dev --lora ./my_lora --prompts prompts_test.txt --output-json eval.json

`--help` lists the flags; the logic (and the protocol it runs) is `diffusers_mixgrpo.training.eval_cli`.
"""

from diffusers_mixgrpo.training.eval_cli import main

if __name__ == "__main__":
    main()
