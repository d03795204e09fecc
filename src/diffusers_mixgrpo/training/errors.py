"""The errors a user can fix. The example scripts print their message (one sentence) instead of a traceback.

Each one also derives from the built-in type it used to be (`ValueError`, `OSError`, `RuntimeError`), so code that
catches those keeps working.
"""

__all__ = [
    "CheckpointError",
    "ConfigError",
    "CorruptCheckpointError",
    "DiskFullError",
    "HubPushError",
    "MixGRPOError",
    "ModelLoadError",
    "OutputNotWritableError",
    "RewardLoadError",
    "StopNow",
    "TrainingStopped",
]


class MixGRPOError(Exception):
    """Base class: a problem with the run's inputs or environment, explained in the message."""


class ConfigError(MixGRPOError, ValueError):
    """A `GRPOConfig` value, or a combination of values, is not allowed; or an input the run needs is unusable
    (prompt file, output folder, reward name or option)."""


class ModelLoadError(MixGRPOError, OSError):
    """The pretrained pipeline could not be loaded (missing, offline, not a diffusers folder)."""


class RewardLoadError(MixGRPOError, OSError):
    """A reward model could not be built (missing weights, bad option)."""


class CheckpointError(MixGRPOError, ValueError):
    """A checkpoint cannot be resumed from: corrupt or truncated file, non-finite weights, or a run configuration
    that does not match the one it was trained with."""


class CorruptCheckpointError(CheckpointError):
    """A file of a checkpoint is missing, truncated, corrupt or unreadable (resuming from `latest` then falls back
    to the previous complete checkpoint)."""


class DiskFullError(MixGRPOError, OSError):
    """Writing a checkpoint or the final weights ran out of disk space."""


class OutputNotWritableError(MixGRPOError, PermissionError):
    """The output folder stopped accepting writes during the run (permissions changed, a read-only mount); the message
    names the folder and the newest checkpoint that is still intact."""


class HubPushError(MixGRPOError, RuntimeError):
    """The upload to the Hub failed after training; the weights and the run summary are saved locally (the message
    names the folder and how to push it later)."""


class TrainingStopped(MixGRPOError, RuntimeError):
    """The run cannot go on safely (non-finite rewards or updates step after step, a failing or hanging reward)."""


class StopNow(KeyboardInterrupt):
    """A second SIGTERM / SIGINT during training (`interrupts.GracefulInterrupt`): stop at once, without a checkpoint
    of the unfinished step. A `KeyboardInterrupt`, so it unwinds through every `except Exception`; the command line
    prints one line and exits with 128 + `signum`. `output_dir` is filled in on the way out when known (for the
    resume hint)."""

    def __init__(self, signum: int):
        import signal

        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        super().__init__(f"{name} received twice; stopping at once.")
        self.signum = signum
        self.signal_name = name
        self.output_dir = None
