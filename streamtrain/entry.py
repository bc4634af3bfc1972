"""The ``streamtrain`` command's entry point: signals first, then the (slow) imports.

SIGINT and SIGTERM during start-up (imports, opening the data, the statistics pass) end
the command with one line and exit code 130 / 143, as they do during training, where the
trainer replaces these handlers with ones that finish the current batch first.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

__all__ = ["main"]


def _in_import(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _stop(signum, frame):
    if _in_import(frame):
        # An exception raised inside the import machinery can leave its global lock held, and
        # the next import in another thread then waits forever (seen: the compiled step's
        # loader thread importing numba): deliver the signal again once the import is done.
        timer = threading.Timer(0.02, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()
        return
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
        print(e, file=sys.stderr, flush=True)
        os._exit(e.exit_code)
    cli_main(argv)
