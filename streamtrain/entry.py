"""The ``streamtrain`` command's entry point: signals first, then the (slow) imports.

SIGINT and SIGTERM during start-up (imports, opening the data, the statistics pass) end
the command with one line and exit code 130 / 143, as they do during training, where the
trainer replaces these handlers with ones that finish the current batch first.
"""

from __future__ import annotations

import signal
import sys

__all__ = ["main"]


def _stop(signum, frame):
    from .errors import Interrupted

    name = signal.Signals(signum).name
    raise Interrupted(f"interrupted by {name}; nothing was being trained, so nothing needed saving", name)


def main(argv=None) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    from .errors import Interrupted

    try:
        from .cli import main as cli_main
    except Interrupted as e:  # while importing
        print(e, file=sys.stderr)
        sys.exit(e.exit_code)
    cli_main(argv)
