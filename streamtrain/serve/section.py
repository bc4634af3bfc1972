"""The service's section of a checkpoint: ``meta["stream"]`` (the source's position and state, the
learner's counters, the shuffle buffer's random state) and the ``stream.*`` arrays (the rows
waiting for a batch, the shuffle buffer's rows and their targets).

``StreamLearner.checkpoint_contents`` writes it and ``StreamLearner.restore`` reads it. It is
declared to the trainer's checkpoint schema (``train.schema.register_section``) when this module
is imported (by the learner, and by the CLI, whose ``inspect``, ``predict`` and ``plot`` read a
service's checkpoints too), so one schema checks every checkpoint, and a service's is refused
where nothing imported this module. Checkpoints are untrusted input: every field's type and
range, and the arrays' dtypes and shapes, are checked before any of it is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..train.schema import INT64, Section, field, integer, number, register_section, short

__all__ = ["STREAM", "StreamSection", "MAX_STREAM_ROWS"]

# Rows a service's checkpoint may hold that are not yet trained on (the shuffle buffer, a partial batch).
MAX_STREAM_ROWS = 1 << 26


class StreamSection(Section):
    """``meta["stream"]``: what the service's checkpoint holds besides the trainer's parts."""

    KEYS = {"position", "source", "scaled", "scale_rows", "shuffle_rows", "pending_rows", "buffer_rows", "rng",
            "rows_received", "rows_trained", "prequential", "reloads"}

    def validate(self, s: Any, meta: dict) -> None:
        if not isinstance(s, dict):
            raise ValueError("metadata field stream must be a mapping")
        unknown = sorted(set(s) - self.KEYS, key=str)
        if unknown:
            raise ValueError(f"unexpected metadata field stream.{short(unknown[0])}")
        for key in ("scale_rows", "shuffle_rows", "pending_rows", "buffer_rows", "rows_received", "rows_trained"):
            integer(field(s, key, "stream"), f"stream.{key}", 0, MAX_STREAM_ROWS if key.endswith("_rows") else INT64)
        if "reloads" in s:
            integer(s["reloads"], "stream.reloads", 0, INT64)
        if s["buffer_rows"] > s["shuffle_rows"]:
            raise ValueError("metadata field stream.buffer_rows exceeds stream.shuffle_rows")
        if not isinstance(field(s, "scaled", "stream"), bool):
            raise ValueError("metadata field stream.scaled must be true or false")
        if not isinstance(field(s, "source", "stream"), dict):
            raise ValueError("metadata field stream.source must be a mapping")
        rng = field(s, "rng", "stream")
        if rng is not None and (not isinstance(rng, dict) or rng.get("bit_generator") != "PCG64"):
            raise ValueError("metadata field stream.rng must be a PCG64 state")
        p = field(s, "prequential", "stream")
        if not isinstance(p, dict):
            raise ValueError("metadata field stream.prequential must be a mapping")
        number(field(p, "loss_sum", "stream.prequential"), "stream.prequential.loss_sum", 0)
        integer(field(p, "correct", "stream.prequential"), "stream.prequential.correct")
        integer(field(p, "rows", "stream.prequential"), "stream.prequential.rows")

    def arrays(self, s: dict, meta: dict) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """The rows not yet trained on: features ``(rows, n_in)`` in the model's dtype; targets
        ``(rows,)`` class indices (int64) or ``(rows, n_out)`` values (float64) for a regression."""
        m = meta["model"]
        dt, n_in, n_out = np.dtype(m["dtype"]), m["n_in"], m["n_out"]
        t_dtype, t_shape = (np.dtype(np.float64), (n_out,)) if m["task"] == "regression" else (np.dtype(np.int64), ())
        required = {}
        for part, rows in (("pending", s["pending_rows"]), ("buffer", s["buffer_rows"])):
            required[f"stream.{part}_X"] = (dt, (rows, n_in))
            required[f"stream.{part}_t"] = (t_dtype, (rows,) + t_shape)
        return required

    def check(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        k = len(meta["model"]["classes"])
        for name in ("stream.pending_t", "stream.buffer_t"):
            if name in arrays and arrays[name].dtype.kind == "i" and ((arrays[name] < 0) | (arrays[name] >= k)).any():
                raise ValueError(f"array {name} holds class indices out of range")


STREAM = register_section("stream", StreamSection())
