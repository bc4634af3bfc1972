"""Entry point of the window-decoding process (``python -m streamtrain.data._worker SETUP``).

Kept apart from ``streamtrain.data.decoder`` so that running it does not re-import a module
the package has already imported.
"""

import json
import os
import signal
import sys
import threading
import time


def _exit_with_parent(parent: int) -> None:
    """End this process as soon as its parent is gone (killed, say, mid-window: the pipes would
    only tell once the window is decoded)."""
    while os.getppid() == parent:
        time.sleep(0.1)
    os._exit(0)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    setup = json.loads(sys.argv[1])
    threading.Thread(target=_exit_with_parent, args=(setup.get("parent", os.getppid()),), daemon=True).start()
    from streamtrain._malloc import reuse_freed_memory
    from streamtrain.data.decoder import serve

    reuse_freed_memory()  # as the streamtrain command does: chunk buffers reused, not faulted in afresh
    try:
        serve(setup)
    except (BrokenPipeError, ConnectionError, EOFError):
        pass  # the parent went away: nothing to report to anyone
    # No interpreter shutdown (which could write to a closed stderr): the work is done.
    os._exit(0)
