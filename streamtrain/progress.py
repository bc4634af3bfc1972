"""Progress of a long pass over rows: a tqdm bar on a terminal, otherwise a line every few seconds.

>>> p = Progress(1000, "reading", log=print, every=0)
>>> p.update(400)
reading: 400 of 1,000 rows (40%)
>>> p.update(600)
reading: 1,000 of 1,000 rows (100%)
>>> p.close()  # doctest: +ELLIPSIS
reading: 1,000 rows in ... s
"""

from __future__ import annotations

import sys
import time
from typing import Callable

__all__ = ["Progress", "DEFAULT_EVERY"]

# Seconds between progress lines where there is no terminal to draw a bar on.
DEFAULT_EVERY = 5.0


class Progress:
    """``update(n)`` as rows are done, ``close()`` at the end. With ``log`` None nothing is shown;
    on a terminal (``file`` is a tty) a bar, else ``log`` gets a line at most every ``every`` seconds."""

    def __init__(self, total: int | None, what: str, log: Callable[[str], None] | None = None,
                 every: float = DEFAULT_EVERY, file=None):
        self.total, self.what, self.log, self.every = total, what, log, every
        self.done, self.started = 0, time.monotonic()
        self.last = self.started
        self.bar = None
        file = file or sys.stderr
        if log is not None and getattr(file, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit="row", unit_scale=True, leave=False, file=file,
                            mininterval=0.2)

    def update(self, n: int) -> None:
        self.done += int(n)
        if self.bar is not None:
            self.bar.update(int(n))
        elif self.log is not None:
            now = time.monotonic()
            if now - self.last >= self.every:
                self.last = now
                of = f" of {self.total:,} rows ({self.done / self.total:.0%})" if self.total else " rows"
                self.log(f"{self.what}: {self.done:,}{of}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.log is not None and time.monotonic() - self.started >= self.every:
            self.log(f"{self.what}: {self.done:,} rows in {time.monotonic() - self.started:.1f} s")

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
