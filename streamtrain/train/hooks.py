"""Ready-made trainer callbacks (``on_batch_end(trainer, rows, loss)``, ``on_epoch_end(trainer, record)``)."""

from __future__ import annotations

import shutil
import sys

__all__ = ["ProgressBar"]


class ProgressBar:
    """A tqdm bar per epoch on stderr: batches done, samples/s, ETA and a running loss."""

    def __init__(self, file=None, every: int = 50):
        self.file = file or sys.stderr
        self.every = every  # postfix formatting is not free: update it every N batches
        self.bar = None
        self.loss = None

    def on_batch_end(self, trainer, rows, loss):
        from tqdm import tqdm

        s = trainer.sampler
        if self.bar is None:
            done = -(-(s.position - len(rows)) // s.batch_size)
            # A terminal reporting no size (0 x 0, e.g. a fresh pty) would hide the bar: assume 100 x 20.
            size = shutil.get_terminal_size((100, 20))
            self.bar = tqdm(total=len(s), initial=done, desc=f"epoch {s.epoch + 1}/{trainer.config.epochs}",
                            unit="batch", leave=False, file=self.file, ncols=size.columns or 100,
                            nrows=size.lines or 20)
        self.loss = loss if self.loss is None else 0.98 * self.loss + 0.02 * loss
        self.bar.update(1)
        if self.bar.n % self.every == 0:
            rate = self.bar.format_dict.get("rate") or 0
            self.bar.set_postfix_str(f"loss {self.loss:.4f}, {rate * s.batch_size:,.0f} samples/s", refresh=False)

    def on_epoch_end(self, trainer, record):
        if self.bar is not None:
            self.bar.close()
        self.bar, self.loss = None, None
