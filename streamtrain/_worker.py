"""Entry point of the window-decoding process (``python -m streamtrain._worker SETUP``).

Kept apart from ``streamtrain.decoder`` so that running it does not re-import a module
the package has already imported.
"""

import json
import signal
import sys

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    from streamtrain.decoder import serve

    serve(json.loads(sys.argv[1]))
