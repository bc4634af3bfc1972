"""A toy stream source, as a package of its own would add one: a file that a producer appends
pieces to, one JSON list of row objects per line (``tail -f`` as a source). ``--source
lines:PATH``. Its position is the byte offset after the last line handed over, so a service
killed and restarted reads each line once. Installed for the tests by this directory's
``.dist-info`` (an entry point of the group ``streamtrain.plugins``) when it is on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import time

from streamtrain.errors import DataError
from streamtrain.serve.sources import SOURCES, Entry, Registered, Rejected, StreamSource


class LinesSource(StreamSource):
    name = "lines"

    def __init__(self, path: str, columns) -> None:
        self.path, self.columns, self.offset = path, columns, 0
        self.file = None

    def start(self, position, state):
        self.offset = 0 if position is None else int(position)

    def poll(self, timeout):
        if self.file is None:
            if not os.path.exists(self.path):
                time.sleep(min(timeout, 0.1))
                return []
            self.file = open(self.path, "rb")
        self.file.seek(self.offset)
        out = []
        for line in self.file.readlines(1 << 20):
            if not line.endswith(b"\n"):  # still being written
                break
            start, self.offset = self.offset, self.offset + len(line)
            where = f"{self.path} bytes {start}-{self.offset}"
            try:
                X, y = self.columns.from_json(line, where)
            except DataError as e:
                out.append(Rejected(self.offset, where, str(e)))
                continue
            out.append(Entry(self.offset, X, y, where))
        if not out:
            time.sleep(min(timeout, 0.05))
        return out

    def close(self):
        if self.file is not None:
            self.file.close()


SOURCES["lines"] = Registered(lambda spec, columns, log_dir, queue_bytes: LinesSource(spec[len("lines:"):], columns),
                              "lines:PATH")
