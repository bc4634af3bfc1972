"""The ``streamtrain`` command: parses options, calls the library, prints. No logic lives only here.

One module per command group, each adding its commands to the group in ``group``: ``data``
(make-data, inspect), ``train``, ``model`` (evaluate, predict, plot), ``serve``; ``options``
builds the options they share; ``main`` runs the command (one line and an exit code on errors).
"""

from __future__ import annotations

from ..serve import section  # noqa: F401  (a service's checkpoints: inspect, predict, plot, --init-from read them too)
from . import data, model, serve, train  # noqa: F401  (each adds its commands to the group)
from .group import cli
from .main import exit_now, main

__all__ = ["cli", "main", "exit_now"]
