"""Pre-emption and Ctrl-C: turn SIGTERM / SIGINT into "finish this step, save a checkpoint, stop".

Cluster schedulers send SIGTERM before they kill a job (Slurm's `--signal`, Kubernetes' grace period); a user presses
Ctrl-C (SIGINT). `GracefulInterrupt` records the first such signal instead of dying mid-step; the trainer checks
`requested` after every training step, writes a complete checkpoint and returns. A second signal while the first is
being handled stops at once (`KeyboardInterrupt`); a checkpoint being written is then abandoned atomically, so the
previous one stays the newest complete checkpoint.

Handlers can only be installed from the main thread; elsewhere (a notebook worker thread) the context manager does
nothing and signals keep their usual effect.
"""

import logging
import signal
import threading
from types import FrameType
from typing import Any, Optional

logger = logging.getLogger(__name__)

__all__ = ["GracefulInterrupt", "signal_name"]


def signal_name(signum: int) -> str:
    """`"SIGTERM"` for 15, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class GracefulInterrupt:
    """Context manager: while active, the first SIGTERM/SIGINT sets `requested` (the signal number) and logs one
    line; a second one raises `KeyboardInterrupt`. Previous handlers are restored on exit."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self.requested: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.requested is not None:
            self._restore()
            raise KeyboardInterrupt(f"{signal_name(signum)} received twice; stopping at once.")
        self.requested = signum
        logger.warning(
            "%s received: finishing the current training step, then saving a checkpoint and stopping (send it "
            "again to stop at once).",
            signal_name(signum),
        )

    def __enter__(self) -> "GracefulInterrupt":
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def __exit__(self, *exc_info: Any) -> None:
        self._restore()
