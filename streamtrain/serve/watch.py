"""The service's live page (``GET /``) and what it draws (``GET /watch.json``): a sample of the
service every second, for the last hour, and the latest refused inputs.

The page is one HTML file shipped in the package (``watch.html``: plain SVG, no library, nothing
fetched from elsewhere); it asks for the points after the last one it has every second.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from importlib import resources
from typing import Any

__all__ = ["Watch", "page"]

#: Points kept: one a second, an hour of them (about 200 bytes each).
KEEP = 3600
#: Seconds between two readings of the source's lag (its points in between repeat the last).
LAG_EVERY = 5.0
#: Refused inputs kept for the page (the whole record is in ``rejected.jsonl``).
KEEP_REJECTED = 20


def page() -> bytes:
    """The live page's HTML."""
    return resources.files(__package__).joinpath("watch.html").read_bytes()


class Watch:
    """Samples of a service (``sample``, once a second from a thread of its own, ``start``): rows
    trained and their rate, the loss and accuracy of the rows scored since the last sample (each
    scored before its update: prequential), the source's lag, the queue, the model's version and
    the checkpoint's age; with ``serve --val``, the held-out file's latest loss and accuracy (it
    is scored here, when due)."""

    def __init__(self, service, every: float = 1.0, keep: int = KEEP):
        self.service, self.every = service, float(every)
        self.points: deque[dict[str, Any]] = deque(maxlen=keep)
        self.rejected: deque[dict[str, Any]] = deque(maxlen=KEEP_REJECTED)
        self.lock = threading.Lock()
        self._last: tuple | None = None  # (time, rows trained, loss sum, rows scored, rows right)
        self._seq = 0
        self._lag, self._lag_at = None, -math.inf
        self._thread: threading.Thread | None = None

    def start(self, stopping: threading.Event) -> None:
        def run():
            while not stopping.wait(self.every):
                try:
                    self.sample(score=True)
                except Exception:  # pragma: no cover - a sample is never worth stopping the service
                    pass
        self.sample(score=False)  # (at once, while the service is still loading: no scoring of --val here)
        self._thread = threading.Thread(target=run, name="watch", daemon=True)
        self._thread.start()

    def refused(self, when: float, where: str, error: str) -> None:
        """An input the service refused (the newest last)."""
        with self.lock:
            self.rejected.append({"time": when, "where": where, "error": error})

    def join(self, timeout: float) -> None:
        """Wait for the sampling thread to end (once the service's ``stopping`` is set)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def sample(self, score: bool = True) -> dict[str, Any]:
        """Add a point of the service as it is now (``score``: scoring ``--val`` first, if due), and return it."""
        service = self.service
        learner = service.learner
        validation = getattr(service, "validation", None)
        if score and validation is not None and validation.due(time.monotonic()):
            validation.score()
        status = service.status()
        now = time.time()
        if now - self._lag_at >= LAG_EVERY:  # (a broker's answer can cost it: Redis 6 sends entries)
            try:
                self._lag = service.source.lag()
            except Exception:  # (a broker that does not answer now: the point has no lag, the page goes on)
                self._lag = None
            self._lag_at = now
        lag = self._lag
        now = time.time()
        with learner.lock:
            counts = (learner.rows_trained, learner.loss_sum, learner.scored, learner.correct)
        point = {"time": now, "rows_trained": status["rows_trained"], "rows_received": status["rows_received"],
                 "rows_rejected": status["rows_rejected"], "rows_per_s": None, "loss": None, "accuracy": None,
                 "prequential_loss": status["prequential"]["loss"],
                 "prequential_accuracy": status["prequential"]["accuracy"], "lag": lag,
                 "queue_rows": status["queue_rows"], "model_version": status["model_version"],
                 "checkpoint_age_seconds": status["checkpoint_age_seconds"], "training": status["training"],
                 "error": status["error"], "accepting": status["accepting"], "intake_error": status["intake_error"]}
        if validation is not None:  # the latest scoring of the held-out file (repeated until the next)
            last = validation.last or {}
            point.update(val_loss=last.get("loss"), val_accuracy=last.get("accuracy"), val_error=validation.error)
        with self.lock:
            if self._last is not None:
                then, rows, loss_sum, scored, correct = self._last
                if now > then:
                    point["rows_per_s"] = (counts[0] - rows) / (now - then)
                if counts[2] > scored:  # rows scored since the last point: their mean loss, their accuracy
                    point["loss"] = (counts[1] - loss_sum) / (counts[2] - scored)
                    if status["prequential"]["accuracy"] is not None:
                        point["accuracy"] = (counts[3] - correct) / (counts[2] - scored)
            self._last = (now, *counts)
            self._seq += 1
            point["seq"] = self._seq
            self.points.append(point)
        return point

    def since(self, seq: int) -> dict[str, Any]:
        """The points after number ``seq`` (0: all kept), the latest refused inputs, the task."""
        with self.lock:
            if seq > self._seq:  # (a page older than this service, restarted: every point kept)
                seq = 0
            points = [p for p in self.points if p["seq"] > seq]
            rejected = list(self.rejected)
        validation = getattr(self.service, "validation", None)
        return {"points": points, "rejected": rejected, "task": self.service.learner.model.task,
                "source": self.service.source.name, "validation": None if validation is None else str(validation.path)}
