"""MixGRPO on a CPU in minutes: align the shipped toy FLUX model to the toy-world reward (the README's main command).

    python examples/toy_world_demo.py [--method mixgrpo|flash|flash_star|dancegrpo] [--output_dir DIR] [--steps N]

The `mixgrpo-toy-demo` command as a script. Writes the LoRA, reward_curve.png, before_after.png and summary.json into
--output_dir and prints the held-out reward before and after. The logic lives in `diffusers_mixgrpo.toy_world.demo`.
"""

from diffusers_mixgrpo.toy_world.demo import main

if __name__ == "__main__":
    main()
