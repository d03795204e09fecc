"""`mixgrpo-train` in a process of its own, with rewards that misbehave on purpose (tests/training/test_faults.py).

`python faults_script.py <mixgrpo-train flags>`; the rewards registered here: `sleeps_forever` (never returns) and
`sleeps_after_first` (scores the first rollout, then never returns). Each touches the file `$FAULTS_MARKER` when a
call starts, so the test knows the run is inside a reward call.
"""

import os
import threading

from diffusers_mixgrpo.rewards.registry import register_reward
from diffusers_mixgrpo.training.cli import main


def _mark() -> None:
    marker = os.environ.get("FAULTS_MARKER")
    if marker:
        with open(marker, "a", encoding="utf-8") as f:
            f.write("call\n")


@register_reward("sleeps_forever")
def make_sleeps_forever(device=None, dtype=None):
    def sleeps_forever(images, prompts):
        _mark()
        threading.Event().wait()  # a reward server that never answers

    return sleeps_forever


@register_reward("sleeps_after_first")
def make_sleeps_after_first(device=None, dtype=None):
    calls = []

    def sleeps_after_first(images, prompts):
        calls.append(1)
        _mark()
        if len(calls) > 1:
            threading.Event().wait()
        return images.float().mean(dim=(1, 2, 3))

    return sleeps_after_first


if __name__ == "__main__":
    main()
