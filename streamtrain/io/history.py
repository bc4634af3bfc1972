"""A run's history: ``metrics.jsonl``, one JSON line per finished epoch."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["METRICS", "parse_history"]

METRICS = "metrics.jsonl"


def parse_history(text: str) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (lines a crash cut short are skipped)."""
    history = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            history.append(record)
    return history
