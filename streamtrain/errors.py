"""The exceptions streamtrain raises; the CLI maps each to an exit code."""

from __future__ import annotations

__all__ = ["StreamtrainError", "DataError", "CheckpointError", "ConfigError", "TrainingError", "Interrupted",
           "RankError", "os_reason", "nearest"]


class StreamtrainError(Exception):
    """Base class: a problem the user can fix, reported in one line. ``everywhere``: every process
    of a job meets it alike (a setting), so the first process is the one to report it."""

    exit_code = 2
    everywhere = False


class DataError(StreamtrainError, ValueError):
    """A data source is missing, malformed or does not fit the request."""


class CheckpointError(StreamtrainError, ValueError):
    """A checkpoint is missing, corrupt or does not match the run."""


class ConfigError(StreamtrainError, ValueError):
    """A setting of the wrong type or out of range."""

    everywhere = True


class RankError(StreamtrainError):
    """What rank 0 refused, as another process of the job raises it: the same message and exit code."""

    everywhere = True

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class TrainingError(StreamtrainError, RuntimeError):
    """Training failed after it started (divergence, I/O error mid-run)."""

    exit_code = 1


class Interrupted(BaseException):
    """Stopped on SIGINT or SIGTERM: during training after finishing its batch (and writing a
    checkpoint), before it at once. A ``BaseException``, as ``KeyboardInterrupt`` is, so that no
    ``except Exception`` on the way (a reader wrapping its library's errors) mistakes it for a
    failure."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.signal_name = signal_name
        # The shell's convention: 128 + signal number (130 for SIGINT, 143 for SIGTERM).
        self.exit_code = 130 if signal_name == "SIGINT" else 143


def os_reason(e: OSError) -> str:
    """An OS error's reason in a few words ("Read-only file system"), also where a library (h5py)
    wraps the errno in a long message of its own."""
    if isinstance(e.errno, int) and e.errno > 0:
        import os

        return os.strerror(e.errno)
    return e.strerror or str(e)


def nearest(word, choices) -> str | None:
    """The choice a mistyped ``word`` most likely meant, for an error's "did you mean": the closest
    by spelling, else one that differs only in case; None where none is near."""
    import difflib

    choices = [str(c) for c in choices]
    near = difflib.get_close_matches(str(word), choices, n=1)
    return near[0] if near else next((c for c in choices if c.casefold() == str(word).casefold()), None)
