"""Training curves: loss and accuracy (or R^2) per epoch, the plots the textbook draws."""

from __future__ import annotations

import os
from typing import Any

from .errors import StreamtrainError
from .io.atomic import atomic_path
from .io.writers import check_output_dir

__all__ = ["plot_history"]


def plot_history(history: list[dict[str, Any]], out: str | os.PathLike, title: str = "") -> str:
    """Write a PNG of training/validation loss and validation accuracy (or R^2) per epoch."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise StreamtrainError("plotting needs matplotlib: pip install 'streamtrain[plot]'") from None
    if not history:
        raise StreamtrainError("nothing to plot: the history is empty")
    check_output_dir(out)
    epochs = [h["epoch"] for h in history]
    metric = "val_accuracy" if "val_accuracy" in history[0] else "val_r2" if "val_r2" in history[0] else None
    fig, axes = plt.subplots(1, 2 if metric else 1, figsize=(10 if metric else 5, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot(epochs, [h["train_loss"] for h in history], label="training")
    if "val_loss" in history[0]:
        ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    if metric:
        ax = axes[0][1]
        ax.plot(epochs, [h[metric] for h in history], color="tab:green")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy" if metric == "val_accuracy" else "validation R^2")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    except OSError as e:
        raise StreamtrainError(f"{out}: cannot write ({e.strerror or e})") from None
    finally:
        plt.close(fig)
    return os.fspath(out)
