"""Training curves: loss and accuracy (or R^2) per epoch, the plots the textbook draws."""

from __future__ import annotations

import os
from typing import Any

from .errors import StreamtrainError, os_reason
from .io.atomic import atomic_path
from .io.outputs import check_output

__all__ = ["plot_history"]


def plot_history(history: list[dict[str, Any]], out: str | os.PathLike, title: str = "",
                 best_epoch: int | None = None, overwrite: bool = False, inputs=()) -> str:
    """Write a PNG of training (and validation) loss and accuracy (or R^2) per epoch; ``best_epoch``,
    if given (the one early stopping kept), is marked. ``out`` must not exist unless ``overwrite``,
    and is never a run's file or one of ``inputs`` (see ``io.outputs``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise StreamtrainError("plotting needs matplotlib: pip install 'streamtrain[plot]'") from None
    if not history:
        raise StreamtrainError("nothing to plot: the history is empty")
    check_output(out, overwrite=overwrite, inputs=inputs)
    epochs = [h["epoch"] for h in history]
    metrics = [m for m in ("train_accuracy", "val_accuracy", "val_r2") if m in history[-1]]
    fig, axes = plt.subplots(1, 2 if metrics else 1, figsize=(10 if metrics else 5, 4), squeeze=False)
    panels = [(axes[0][0], [("train_loss", "training"), ("val_loss", "validation")], "loss")]
    if metrics:
        label = "R^2" if metrics == ["val_r2"] else "accuracy"
        panels.append((axes[0][1], [(m, "training" if m.startswith("train") else "validation") for m in metrics],
                       label))
    for ax, series, ylabel in panels:
        for key, name in series:
            points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, markersize=3, label=name)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    except OSError as e:
        raise StreamtrainError(f"{out}: cannot write ({os_reason(e)})") from None
    finally:
        plt.close(fig)
    return os.fspath(out)
