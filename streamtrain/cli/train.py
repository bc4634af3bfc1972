"""``streamtrain train``."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from ..errors import Interrupted
from ..train.distributed import communicator
from ..train.hooks import ProgressBar
from ..train.trainer import Trainer
from .group import cli
from .options import (PathOrURL, _config_options, _distributed_option, _echo_err, _given_settings, _load_config,
                      _log_every_option, _selection, _selection_options)

__all__ = ['JsonLines', 'train']


class JsonLines:
    """``train --json``: each epoch's record as one JSON object on stdout, for a pipeline to read."""

    def on_epoch_end(self, trainer, record):
        click.echo(json.dumps(record))


class _Unsaved:
    """A run without ``--checkpoint-dir`` says so as its training begins (its data opened)."""

    def __init__(self, log):
        self.log = log

    def on_train_begin(self, trainer):
        self.log("note: no --checkpoint-dir, so the model will not be saved (--checkpoint-dir runs/NAME saves it)")


@cli.command()
@click.argument("data")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), callback=_load_config, is_eager=True,
              expose_value=False, help="TOML file of train options (keys as the option names); the command line wins.")
@_selection_options
@click.option("--val", default=None, help="A separate validation dataset.")
@click.option("--weight", default=None, help="A column whose values weigh each row's loss (one column per feature).")
@_config_options
@click.option("--checkpoint-dir", type=PathOrURL(file_okay=False), default=None,
              help="Directory of this run's checkpoints and metrics.jsonl (one run per directory), or a "
              "URL in object storage (s3://bucket/run: each checkpoint uploaded, then a manifest naming it).")
@click.option("--resume", is_flag=True, help="Continue the run in --checkpoint-dir from its newest valid checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace the run in --checkpoint-dir with a new one.")
@click.option("--force", is_flag=True, help="Resume even if the data or settings changed.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but warnings (what was left out of the data, and the like) and errors.")
@click.option("--json", "as_json", is_flag=True, help="Write each epoch's record to stdout as one JSON object per line.")
@_distributed_option
@click.option("--mlflow", "mlflow_uri", default=None, metavar="URI",
              help="Log the run to MLflow at this tracking URI (e.g. file:./mlruns): settings, each epoch's "
              "metrics, the final checkpoint. Needs pip install 'streamtrain[mlflow]'.")
@_log_every_option
@click.pass_context
def train(ctx, data, features, label, val, weight, checkpoint_dir, resume, overwrite, force, quiet, as_json, distributed,
          mlflow_uri, log_every, **settings):
    """Train on DATA, streaming it in minibatches.

    One run per --checkpoint-dir: --resume continues it there (its settings come from the
    checkpoint; --epochs may be raised), --overwrite replaces it.

    Example: streamtrain train data/breast_cancer.h5 --hidden 10 --l2 0.01 --val-fraction 0.2
    --checkpoint-dir runs/bc --epochs 30
    """
    if resume and checkpoint_dir is None:
        raise click.UsageError("--resume needs --checkpoint-dir")
    if resume and overwrite:
        raise click.UsageError("give --resume or --overwrite, not both")
    if val is not None and settings["val_fraction"]:
        raise click.UsageError("give --val or --val-fraction, not both")
    trainer = Trainer(**_given_settings(ctx, settings))
    comm = communicator(distributed)
    lead = comm.rank == 0  # with several processes, rank 0 alone speaks
    quiet = quiet or not lead
    log = None if quiet else _echo_err
    # A live bar only on a terminal; in a pipe or a log file the per-epoch lines suffice.
    callbacks = [ProgressBar()] if not quiet and sys.stderr.isatty() else []
    if as_json and lead:
        callbacks.append(JsonLines())
    if mlflow_uri and lead:
        from ..train.tracking import MLflowLogger

        callbacks.append(MLflowLogger(mlflow_uri, experiment="streamtrain",
                                      run_name=Path(checkpoint_dir).name if checkpoint_dir else None))
    if checkpoint_dir is None and log is not None:  # (said as training starts too: a long run's end is late)
        callbacks.insert(0, _Unsaved(log))
    try:
        history = trainer.fit(data, val, features=_selection(features), label=label, weight=weight,
                              checkpoint_dir=checkpoint_dir,
                              resume=resume, force=force, overwrite=overwrite, callbacks=callbacks, log=log,
                              log_every=log_every, distributed=comm)
    except Interrupted as e:
        if checkpoint_dir is not None and trainer.global_step:
            again = ["streamtrain", "train", data, "--checkpoint-dir", str(checkpoint_dir), "--resume"]
            again += [a for f in features for a in ("--features", f)]
            again += (["--label", label] if label else []) + (["--val", val] if val else [])
            again += ["--weight", weight] if weight else []
            under = " under your MPI launcher" if comm.size > 1 else ""
            e.args = (f"{e.args[0]}; continue{under} with: {shlex.join(again)}",)
        raise
    if quiet or as_json:
        return
    if not history:
        click.echo("nothing to do: the checkpoint already holds all requested epochs")
        return
    shown = trainer.summary
    samples = sum(h["samples"] for h in history)
    seconds = sum(h["seconds"] for h in history)
    n = len(history)
    parts = [f"trained {n} epoch{'s' if n != 1 else ''}"]
    if trainer.state.restored_best:
        metric = trainer.config.early_stopping_metric.replace("_", " ")
        parts.append(f"model of epoch {trainer.state.restored_best} (the best by {metric})")
    parts.append(f"train_loss {shown['train_loss']:.4f}")
    for key in ("val_loss", "val_accuracy", "val_r2"):
        if key in shown:
            parts.append(f"{key} {shown[key]:.4f}")
    parts.append(f"{samples / seconds:,.0f} samples/s" if seconds else "")
    click.echo(", ".join(p for p in parts if p))
    if checkpoint_dir is None:  # (a run that saves nothing says so: a model is not kept without being asked)
        _echo_err("note: no --checkpoint-dir, so the model was not saved; give one (--checkpoint-dir runs/NAME) "
                  "to evaluate, predict or resume later")
