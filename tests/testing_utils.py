"""Helpers shared by the test files (plain functions; `conftest.py` puts this folder on `sys.path` and holds the
fixtures): the tiny trainer runs, launching example scripts, and torchrun with two gloo ranks on the CPU."""

import importlib.util
import os
import runpy
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# -- the tiny FLUX trainer runs ------------------------------------------------------------------------------------

#: What every tiny trainer test sets: 32 px, 4 steps with a window of 2, 2 images per prompt, LoRA rank 4 at scale 1,
#: no tracker, no checkpoints, no evaluation. A test file passes what it needs on top.
TINY_RUN = dict(
    num_inference_steps=4,
    num_generations=2,
    resolution=32,
    window_size=2,
    report_to="none",
    lora_rank=4,
    lora_alpha=4,
    gradient_accumulation_steps=1,
    checkpointing_steps=0,
    validation_steps=0,
)


def brightness(images, prompts):
    """A weight-free reward: each image's mean pixel value."""
    return images.float().mean(dim=(1, 2, 3))


def tiny_config(output_dir, **values):
    """A `GRPOConfig` of `TINY_RUN` with `values` on top, writing to `output_dir`."""
    from diffusers_mixgrpo.training.config import GRPOConfig

    return GRPOConfig(**{"output_dir": str(output_dir), **TINY_RUN, **values})


def tiny_flux_trainer(config, prompts, rewards=None, seed: int = 0, **kwargs):
    """`GRPOTrainer` on a tiny FLUX pipeline (weights from `seed`), rewarded by `brightness` unless `rewards` say."""
    from diffusers_mixgrpo import GRPOTrainer, GRPOTrainingPipeline
    from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline

    pipe = GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=seed))
    return GRPOTrainer(config, pipe, rewards=rewards or {brightness: 1.0}, train_prompts=prompts, **kwargs)


def lora_weights(trainer) -> dict:
    """A copy of the trainer's LoRA parameters, by name."""
    return {n: p.detach().clone() for n, p in trainer.pipeline.denoiser.named_parameters() if "lora" in n}


# -- example scripts -----------------------------------------------------------------------------------------------


def subprocess_env(**extra: str) -> dict:
    """This process's environment with `src/` first on PYTHONPATH (the checkout, not an installed copy) and `extra`."""
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_example(name: str, argv) -> None:
    """Run `examples/<name>` in this process as `__main__` with `argv`, as `python examples/<name> argv` would."""
    script = EXAMPLES / name
    old = sys.argv
    sys.argv = [script.name, *map(str, argv)]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = old


def load_example(name: str) -> ModuleType:
    """`examples/<name>` imported as a module (its `if __name__ == "__main__"` block does not run)."""
    path = EXAMPLES / name
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- torchrun, two gloo ranks ----------------------------------------------------------------------------------------


def torchrun_command(script, *args, port: int, nproc: int = 2, launcher_args=()) -> list:
    """`python -m torch.distributed.run --nproc_per_node nproc --master_port port [launcher_args] script args`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port)]
    return [*cmd, *map(str, launcher_args), str(script), *map(str, args)]


def start_ranks(script, *args, port: int, env: dict, log: Optional[Path] = None, **kwargs) -> subprocess.Popen:
    """Start torchrun (`torchrun_command`) in its own process group, its output to `log` when given."""
    cmd = torchrun_command(script, *args, port=port, **kwargs)
    if log is None:
        return subprocess.Popen(cmd, env=env, start_new_session=True)
    with open(log, "w") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ranks(proc: subprocess.Popen, timeout: float, log: Optional[Path] = None) -> int:
    """torchrun's exit code; past `timeout` s, torchrun and its ranks (one process group) are killed and the test
    fails (with the end of `log`), so that a rank waiting for the other cannot block the suite."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        tail = f"; its log ends:\n{log.read_text()[-3000:]}" if log is not None else ""
        pytest.fail(f"torchrun did not finish within {timeout:.0f} s{tail}")


def run_ranks(script, *args, port: int, env: dict, timeout: float = 600, **kwargs) -> None:
    """Run `script args` on `nproc` (2) ranks under torchrun: it must exit with status 0 within `timeout` s."""
    rc = wait_ranks(start_ranks(script, *args, port=port, env=env, **kwargs), timeout)
    assert rc == 0, f"torchrun {Path(script).name} {' '.join(map(str, args))} exited with status {rc}"


# -- HTTP servers on 127.0.0.1 (the HTTP rewards' tests) -----------------------------------------------------------


class _LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that timed out closed its socket before the slow answer: expected here


@contextmanager
def loopback_http_server(handler):
    """Serve `handler` (a `BaseHTTPRequestHandler` class) on a free port of 127.0.0.1 in a thread; yields the
    server's `/v1` base URL and shuts the server down on exit."""
    server = _LoopbackServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
