"""Plug-ins: modules that add entries to streamtrain's tables when they are imported.

Each kind of plug-in has one table, and adding to it is all a plug-in does: a stream source to
``serve.sources.SOURCES``, a file format to ``readers.formats.FORMATS``, an activation to
``nn.functions.ACTIVATIONS``. The ``streamtrain`` command loads, before it reads its arguments,

- every entry point of the group ``streamtrain.plugins`` of the installed distributions (a
  package declares ``[project.entry-points."streamtrain.plugins"] kafka = "streamtrain_kafka"``;
  a ``module:function`` value is called once its module is imported), and
- the modules named in ``STREAMTRAIN_PLUGINS`` (comma-separated), for one that is not installed.

A program using the library imports its plug-ins itself (or calls ``load_plugins``).
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from .errors import ConfigError

__all__ = ["GROUP", "ENV", "load_plugins"]

GROUP = "streamtrain.plugins"
ENV = "STREAMTRAIN_PLUGINS"

_loaded: dict[str, object] = {}  # what was loaded (an entry point's value, a module's name) -> it


def load_plugins() -> list[str]:
    """Load the plug-ins the installed distributions declare and ``STREAMTRAIN_PLUGINS`` names
    (each once per process).

    Returns
    -------
    list of str
        What was loaded, in order (entry points' values, then module names).

    Raises
    ------
    ConfigError
        A plug-in that cannot be loaded, named, with how to stop loading it.
    """
    wanted = [(ep.value, ep, f"entry point {ep.name!r} of {_dist_name(ep)}") for ep in entry_points(group=GROUP)]
    wanted += [(name, None, ENV) for name in (s.strip() for s in os.environ.get(ENV, "").split(",")) if name]
    for value, ep, origin in wanted:
        if value in _loaded:
            continue
        try:
            if ep is not None:
                loaded = ep.load()
                if callable(loaded) and ":" in value:
                    loaded()
            else:
                loaded = importlib.import_module(value)
        except Exception as e:  # whatever the plug-in raised: one line naming it
            advice = (f"remove it from {ENV}" if ep is None else
                      f"uninstall {_dist_name(ep)}, or fix it")
            raise ConfigError(f"plug-in {value!r} ({origin}) could not be loaded: {type(e).__name__}: {e}; "
                              f"{advice}") from e
        _loaded[value] = loaded
    return [value for value, _, _ in wanted]


def _dist_name(ep) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "an installed distribution"
