"""A held-out file scored by the service's published model (``serve --val``): the validation
curve of the live page, beside the prequential one.

The file is opened once, at start (a file without the stream's features or its label is refused
there, in one line), and read whole at each scoring: keep it small. It is scored from the live
page's sampling thread, at most every ``every`` seconds and only when the model has changed.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import DataError

__all__ = ["Validation"]


class Validation:
    """``path`` scored by the published model of ``learner`` (a ``StreamLearner``) every ``every`` s."""

    def __init__(self, path, learner, every: float = 10.0):
        self.learner, self.every = learner, float(every)
        model = learner.model
        try:
            self.dataset = model.open_like_training(path, need_label=True)
        except DataError as e:  # (its advice is evaluate's: here the stream decides the columns)
            why = str(e).removeprefix(f"{path}: ").split("; ")[0]
            raise DataError(f"{path}: cannot be the held-out file (--val): it needs the stream's features "
                            f"{', '.join(model.feature_names)} and its label {model.label_name!r} as columns "
                            f"({why})") from None
        self.path = self.dataset.path
        self.last: dict[str, Any] | None = None  # the latest scoring: time, model_version, loss, accuracy or r2
        self.error: str | None = None  # why the latest scoring failed (the file gone, changed), or None
        self._at = -float("inf")

    def due(self, now: float) -> bool:
        """Whether a scoring is due: ``every`` seconds since the last, and the model changed since."""
        version = self.learner.published.version
        return now - self._at >= self.every and (self.last is None or self.last["model_version"] != version)

    def score(self) -> dict[str, Any] | None:
        """Score the published model on the file now; the result (also ``last``), or None if it failed
        (``error`` says why; the service goes on)."""
        published = self.learner.published
        self._at = time.monotonic()
        try:
            found = published.model.evaluate(self.dataset)
        except Exception as e:  # the file deleted or rewritten meanwhile: said on the page, not fatal
            self.error = f"{self.path}: {' '.join(str(e).split())[:300]}"
            return None
        self.error = None
        self.last = {"time": time.time(), "model_version": published.version, "rows": found["n"],
                     "loss": found["loss"], "accuracy": found.get("accuracy"), "r2": found.get("r2")}
        return self.last

    def close(self) -> None:
        self.dataset.close()
