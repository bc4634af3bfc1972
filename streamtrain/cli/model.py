"""Commands that use a trained model: ``evaluate``, ``predict``, ``plot``, ``report``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import DataError
from ..io.outputs import check_output
from ..io.resolve import resolve_checkpoint
from ..io.rundir import read_history
from ..readers import FORMATS
from ..readers.subset import HoldoutSplit
from ..train.distributed import communicator
from ..train.schema import TRAINER
from ..train.trainer import Trainer
from .group import cli
from .options import (PathOrURL, _distributed_option, _log_every_option, _open_selected, _progress, _quiet_option,
                      _run_name, _selection_options)

__all__ = ['evaluate', 'predict', 'plot', 'report']


def _left_out(result: dict, left: int, skipping: bool) -> str:
    """The rows evaluate left out, by why: "12 without a label and 3 with NaN or Inf (...)"."""
    unlabelled, nonfinite = result["rows_without_label"], result["rows_nonfinite"]
    if unlabelled + nonfinite != left:  # (counted otherwise than the screen saw them: said together)
        return f"{left:,} without a label" + (", or with NaN or Inf (the run's --skip-nonfinite)" if skipping else "")
    parts = [f"{unlabelled:,} without a label"] if unlabelled else []
    parts += [f"{nonfinite:,} with NaN or Inf (the run's --skip-nonfinite)"] if nonfinite else []
    return " and ".join(parts)


@cli.command()
@click.argument("checkpoint", type=PathOrURL())
@click.argument("data")
@click.option("--split", type=click.Choice(["all", "train", "val"]), default="all", show_default=True,
              help="Evaluate on the training run's --val-fraction hold-out (val) or the rest (train).")
@_selection_options
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@_quiet_option("the metrics")
@_distributed_option
@_log_every_option
def evaluate(checkpoint, data, split, features, label, as_json, quiet, distributed, log_every):
    """Evaluate the model in CHECKPOINT (a file or a checkpoint directory) on DATA.

    Example: streamtrain evaluate runs/bc data/breast_cancer.h5 --split val
    """
    _checkpoint_first(checkpoint, "evaluate")
    trainer = Trainer.load(checkpoint, optimizer_state=False)  # (it predicts: no optimiser state)
    ds = trainer.open_like_training(_open_selected(trainer, data, features, label))
    if split != "all":
        cfg = trainer.config
        if not cfg.val_fraction:
            raise click.UsageError(f"{checkpoint}: the run had no --val-fraction, so --split {split} has no meaning")
        _same_data(trainer.fingerprint, ds, split)
        ds = HoldoutSplit(ds, cfg.val_fraction, cfg.seed, split)
    comm = communicator(distributed)  # several processes: each evaluates its share of the chunks
    with _progress(f"evaluating {ds.path}", ds.n_rows, quiet or as_json or comm.rank != 0, log_every) as progress:
        result = trainer.evaluate(ds, progress.update, comm)
    if comm.rank != 0:
        return
    result["split"] = split
    result["rows_left_out"] = left = max(0, int(ds.n_rows) - int(result["n"]))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    _say_outside(ds.path, result["outside_categories"])
    # (rows without a label, or with NaN/Inf where the run skipped such rows: said, not dropped silently)
    click.echo(f"{result['path']} ({split}): {result['n']:,} row{'s' if result['n'] != 1 else ''}"
               + (f"; {_left_out(result, left, ds.nonfinite == 'skip')} left out" if left else ""))
    if trainer.task == "regression":
        # (training minimises it on the standardised target, where --scale-target is on: the metrics
        # after it are in the target's own units)
        of = " of the standardised target" if trainer.model.target is not None else ""
        click.echo(f"loss {result['loss']:.4f} (half the squared error{of}, summed over outputs: what training "
                   f"minimises)  mse {result['mse']:.4f}  mae {result['mae']:.4f}  r2 {result['r2']:.4f}")
        return
    auc = f"  roc_auc {result['roc_auc']:.4f}" if result.get("roc_auc") is not None else ""
    click.echo(f"accuracy {result['accuracy']:.4f}  log_loss {result['log_loss']:.4f}{auc}")
    click.echo(f"{'class':>12} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>9}")
    for c, p, r, f, n in zip(result["classes"], result["precision"], result["recall"], result["f1"],
                             result["support"]):
        click.echo(f"{_short(c):>12} {p:9.3f} {r:7.3f} {f:6.3f} {n:9,d}")
    for avg in ("macro", "weighted"):
        m = result[avg]
        click.echo(f"{avg + ' avg':>12} {m['precision']:9.3f} {m['recall']:7.3f} {m['f1']:6.3f} {result['n']:9,d}")
    click.echo("confusion matrix (rows: true, columns: predicted):")
    names = [_short(c) for c in result["classes"]]
    width = max(6, *(len(n) for n in names), *(len(f"{v:,d}") for row in result["confusion_matrix"] for v in row))
    click.echo(f"{'':>12} " + " ".join(f"{n:>{width}}" for n in names))
    for name, row in zip(names, result["confusion_matrix"]):
        click.echo(f"{name:>12} " + " ".join(f"{v:>{width},d}" for v in row))


def _same_data(trained: dict, ds, split: str) -> None:
    """Refuse a split of other data than the run's: its hold-out is a choice of that data's rows."""
    fp = ds.fingerprint()
    keys = [k for k in ("n_rows", "sample") if k in trained and k in fp]
    if keys and any(trained[k] != fp[k] for k in keys):
        raise DataError(f"{ds.path}: not the data the run was trained on ({trained.get('path')}), so it has no "
                        f"--split {split} (the run's hold-out is a choice of that data's rows); evaluate it whole "
                        "with --split all")


def _short(value, most: int = 12) -> str:
    """A class's value as a table's cell shows it: at most ``most`` characters."""
    text = str(value)
    return text if len(text) <= most else text[:most - 1] + "…"


@cli.command()
@click.argument("checkpoint", type=PathOrURL())
@click.argument("data")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help=f"Output file: {', '.join(f.suffixes[0] for f in FORMATS.values() if f.writer)} "
              "(the format from the suffix; written atomically).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@_selection_options
@_quiet_option("the file")
@_log_every_option
def predict(checkpoint, data, out, overwrite, features, label, quiet, log_every):
    """Write predictions (and class probabilities) for every row of DATA, chunk by chunk.

    Example: streamtrain predict runs/bc data/breast_cancer.parquet --out predictions.csv
    """
    _checkpoint_first(checkpoint, "predict")
    trainer = Trainer.load(checkpoint, optimizer_state=False)  # (it predicts: no optimiser state)
    ds = trainer.open_like_training(_open_selected(trainer, data, features, label), need_label=False)
    with _progress(f"predicting {ds.path}", ds.n_rows, quiet, log_every) as progress:
        # a checkpoint directory may take new files (a run's own files are refused anyway)
        inputs = [data] + ([checkpoint] if Path(checkpoint).is_file() else [])
        info = trainer.write_predictions(ds, out, overwrite=overwrite, progress=progress.update, inputs=inputs)
    if not quiet:
        click.echo(f"wrote {info['path']}: {info['rows']:,} rows, {info['layout']}")
    _say_outside(ds.path, info["outside_categories"])


def _say_outside(path, outside: dict[str, int]) -> None:
    """A warning naming the categorical columns whose values were not among those training kept
    (read as the column's <other>), with their rows: said, not passed over silently."""
    if outside:
        parts = ", ".join(f"{name} {n:,} row{'s' if n != 1 else ''}" for name, n in outside.items())
        click.echo(f"warning: {path}: values not among the categories training kept (read as <other>): {parts}",
                   err=True)


def _checkpoint_first(checkpoint, command: str) -> None:
    """A usage error for a data file given where the checkpoint goes (the arguments swapped)."""
    from ..readers.formats import format_for

    if Path(str(checkpoint)).is_dir():  # (a run's directory may be named as data is: runs/x.parquet)
        return
    try:
        format_for(checkpoint)
    except DataError:
        return
    raise click.UsageError(f"{checkpoint} is a data file, not a checkpoint: the run comes first "
                           f"(streamtrain {command} RUN DATA{' --out FILE' if command == 'predict' else ''})")


@cli.command()
@click.argument("checkpoint", type=PathOrURL())
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (never a file of a run).")
def plot(checkpoint, out, overwrite):
    """Plot training and validation loss and accuracy per epoch from a checkpoint (file or directory).

    Example: streamtrain plot runs/bc --out curves.png
    """
    from ..plot import plot_history

    found, _, meta = resolve_checkpoint(checkpoint, TRAINER)
    history = read_history(found) or [r for r in [meta["state"]["record"]] if r]
    best = meta["state"]["restored_best"] or meta["state"]["early_stopping"]["best_epoch"]
    written = plot_history(history, out, title=f"run {_run_name(checkpoint)}", best_epoch=best,
                           overwrite=overwrite, inputs=[found])
    click.echo(f"wrote {written}")


@cli.command()
@click.argument("checkpoint", type=PathOrURL())
@click.argument("data", required=False)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="HTML file to write.")
@click.option("--split", type=click.Choice(["all", "train", "val"]), default="all", show_default=True,
              help="With DATA: evaluate on the run's --val-fraction hold-out (val) or the rest (train).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (never a file of a run).")
@_selection_options
@_log_every_option
def report(checkpoint, data, out, split, overwrite, features, label, log_every):
    """Write a training run as one self-contained HTML page: curves per epoch with the best epoch
    marked, the settings, the data's fingerprint, and, with DATA, evaluate's figures (per-class
    table, confusion matrix, ROC curve for two classes).

    Example: streamtrain report runs/bc data/breast_cancer.h5 --split val --out bc.html
    """
    from ..report import report_html, write_report

    found, _, meta = resolve_checkpoint(checkpoint, TRAINER)
    history = read_history(found) or [r for r in [meta["state"]["record"]] if r]
    best = meta["state"]["restored_best"] or meta["state"]["early_stopping"]["best_epoch"]
    inputs = [found] + ([data] if data else [])
    check_output(out, overwrite=overwrite, inputs=inputs)  # before an evaluation that may take long
    evaluation = None
    if data is not None:
        trainer = Trainer.load(found, optimizer_state=False)
        ds = trainer.open_like_training(_open_selected(trainer, data, features, label))
        if split != "all":
            if not trainer.config.val_fraction:
                raise click.UsageError(f"{checkpoint}: the run had no --val-fraction, so --split {split} has no "
                                       "meaning")
            ds = HoldoutSplit(ds, trainer.config.val_fraction, trainer.config.seed, split)
        with _progress(f"evaluating {ds.path}", ds.n_rows, False, log_every) as progress:
            evaluation = trainer.evaluate(ds, progress.update)
        evaluation["split"] = split
    page = report_html(_run_name(checkpoint), history, meta, best, evaluation)
    click.echo(f"wrote {write_report(out, page, overwrite=overwrite, inputs=inputs)}")
