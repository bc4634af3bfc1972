"""Entry point of the window-decoding process (``python -m streamtrain._worker SETUP``).

Kept apart from ``streamtrain.decoder`` so that running it does not re-import a module
the package has already imported.
"""

import json
import signal
import sys

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    from streamtrain._malloc import reuse_freed_memory
    from streamtrain.decoder import serve

    reuse_freed_memory()  # as the streamtrain command does: chunk buffers reused, not faulted in afresh

    serve(json.loads(sys.argv[1]))
