"""The exceptions streamtrain raises; the CLI maps each to an exit code."""

from __future__ import annotations

__all__ = ["StreamtrainError", "DataError", "CheckpointError", "TrainingError"]


class StreamtrainError(Exception):
    """Base class: a problem the user can fix, reported in one line."""

    exit_code = 2


class DataError(StreamtrainError, ValueError):
    """A data source is missing, malformed or does not fit the request."""


class CheckpointError(StreamtrainError, ValueError):
    """A checkpoint is missing, corrupt or does not match the run."""


class TrainingError(StreamtrainError, RuntimeError):
    """Training failed after it started (divergence, I/O error mid-run)."""

    exit_code = 1
