"""The rank function of `test_consistency.py`'s two-rank test (gloo, file rendezvous: no port), in a module of its own
so that the spawned ranks import only the consistency check."""

from types import SimpleNamespace

import torch

from diffusers_mixgrpo.training.consistency import RatioCheck
from diffusers_mixgrpo.training.errors import TrainingStopped


def check_on_rank(rank: int, init_file: str, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        check = RatioCheck(every=None, tolerance=1e-4)
        check.begin(0)
        check.observe(torch.tensor(1.0), torch.tensor(1.0 + (0.5 if rank == 1 else 0.0)))
        try:
            check.finish(SimpleNamespace(num_processes=2, device=torch.device("cpu")))
            results[rank] = "passed"
        except TrainingStopped as err:
            results[rank] = str(err)
    finally:
        dist.destroy_process_group()
