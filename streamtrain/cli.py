"""The ``streamtrain`` command: parses options, calls the library, prints. No logic lives only here."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

import click
from click.core import ParameterSource

from ._malloc import reuse_freed_memory
from .config import LIMITS, MAX_FEATURES, TrainConfig
from .config import choices as config_choices
from .errors import ConfigError, Interrupted, StreamtrainError, TrainingError, os_reason
from .io.checkpoint import params_digest, resolve_checkpoint
from .io.rundir import read_history
from .nn.optim import HYPERPARAMETERS, OPTIMIZERS
from .progress import DEFAULT_EVERY, Progress
from .readers import FORMATS, open_dataset
from .readers.remote import is_url
from .readers.subset import HoldoutSplit
from .synthetic import TASKS, make_data
from .train.distributed import active as active_communicator
from .train.distributed import communicator
from .train.hooks import ProgressBar
from .train.schema import TRAINER
from .train.trainer import Trainer

__all__ = ["cli", "main"]

_DEFAULTS = TrainConfig()


def _selection(features: tuple[str, ...]):
    """``--features`` given once is a dataset path or glob; several times, a list of columns."""
    if not features:
        return None
    return features[0] if len(features) == 1 else list(features)


def _open_selected(trainer: Trainer, data, features, label):
    """DATA as given, or opened with explicit --features/--label (else the checkpoint's selection)."""
    if not features and label is None:
        return data
    return open_dataset(data, _selection(features), label, **trainer.model.read_options)


def _echo_err(msg: str) -> None:
    click.echo(msg, err=True)


def _log_every_option(f):
    return click.option("--log-every", type=FiniteFloat(0, 86400), default=DEFAULT_EVERY, show_default=True,
                        help="Seconds between progress lines where stderr is not a terminal (a terminal shows bars).")(f)


def _progress(what: str, total: int | None, quiet: bool = False, every: float = DEFAULT_EVERY) -> Progress:
    """Progress on stderr: a bar on a terminal, a line every ``every`` seconds otherwise."""
    return Progress(total, what, None if quiet else _echo_err, every)


def _distributed_option(f):
    return click.option("--distributed", type=click.Choice(["auto", "none", "mpi"]), default="auto", show_default=True,
                        help="Several processes sharing the work: auto (on MPI where mpiexec or srun started "
                        "several), none, mpi.")(f)


def _selection_options(f):
    f = click.option("--label", default=None, help="Label dataset/array/column name.")(f)
    f = click.option("--features", multiple=True,
                     help="Feature dataset/array path, or column names/globs (repeatable), e.g. 'f*'.")(f)
    return f


class FiniteFloat(click.FloatRange):
    """A float in a range that also refuses NaN and infinity (``float("nan")`` passes any range)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number", param, ctx)
        return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamtrain")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
@click.pass_context
def cli(ctx, debug):
    """Train a two-layer neural network on HDF5, Zarr or Parquet data larger than memory.

    Example: streamtrain train data/breast_cancer.h5 --hidden 10 --val-fraction 0.2
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@cli.command("make-data")
@click.argument("out", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--rows", type=click.IntRange(1, 1 << 62), required=True, help="Number of rows.")
@click.option("--features", type=click.IntRange(1, MAX_FEATURES), required=True, help="Number of features.")
@click.option("--task", type=click.Choice(TASKS), default="binary", show_default=True,
              help="What the teacher's labels are: two classes, several, or real values.")
@click.option("--classes", type=click.IntRange(2, 1 << 16), default=2, show_default=True,
              help="Classes for --task multiclass.")
@click.option("--chunk-rows", type=click.IntRange(1, 1 << 31), default=16384, show_default=True,
              help="Rows per chunk / row group.")
@click.option("--seed", type=click.IntRange(*LIMITS["seed"]), default=0, show_default=True,
              help="Seed of the features and labels.")
@click.option("--noise", type=FiniteFloat(0, 1e6), default=0.5, show_default=True, help="Label noise of the teacher.")
@click.option("--compression", default="default", show_default=True,
              help="none, or the format's codec (" + "; ".join(
                  f"{f.name}: {', '.join(c for c in f.compressions if c)}" for f in FORMATS.values()
                  if f.reader and f.writer and any(f.compressions)) + ").")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@_log_every_option
def make_data_cmd(out, rows, features, task, classes, chunk_rows, seed, noise, compression, overwrite, log_every):
    """Write a synthetic dataset to OUT (.h5, .zarr or .parquet), chunk by chunk in flat memory.

    Labels come from a fixed random teacher network plus noise.

    Example: streamtrain make-data big.h5 --rows 20000000 --features 64
    """
    started = time.perf_counter()
    with _progress(f"writing {out}", rows, every=log_every) as progress:
        info = make_data(out, rows, features, task, classes, chunk_rows, seed, noise,
                         None if compression == "none" else compression, overwrite, progress.update)
    secs = time.perf_counter() - started
    click.echo(f"wrote {info['path']}: {rows:,} rows x {features} features, task {task}, "
               f"{info['chunks']} chunks, in {secs:.1f}s")


def _config_option(f: dataclasses.Field):
    """The ``train`` option of one ``TrainConfig`` field: type and range from the config's tables."""
    name, default, meta = f.name, f.default, f.metadata
    flag = "--" + name.replace("_", "-")
    table = config_choices()
    if name == "lr":
        lo, hi = LIMITS[name]
        return click.option(flag, name, type=FiniteFloat(lo, hi, min_open=True), default=None, help=meta["help"])
    if isinstance(default, bool):
        if default:
            return click.option(f"{flag}/--no-{flag[2:]}", name, default=True, show_default=True, help=meta["help"])
        return click.option(flag, name, is_flag=True, help=meta["help"])
    if name in table:
        kind = click.Choice(list(table[name]))
    elif isinstance(default, str):
        kind = click.STRING
    elif isinstance(default, int):
        kind = click.IntRange(*LIMITS.get(name, (None, None)))
    else:
        lo, hi = LIMITS[name]
        kind = FiniteFloat(lo, hi, min_open=meta["min_open"], max_open=meta["max_open"])
    return click.option(flag, name, type=kind, default=default, show_default=True, help=meta["help"])


def _hyperparameter_option(name: str):
    """The option of an optimiser hyperparameter (collected into ``optimizer_params``)."""
    users = HYPERPARAMETERS[name]
    spec = OPTIMIZERS[users[0]].params[name]
    kind = FiniteFloat(spec.low, spec.high, min_open=spec.low_open, max_open=spec.high_open)
    return click.option(f"--{name}", f"hp_{name}", type=kind, default=None,
                        help=f"{spec.help} [default: {spec.default:g}; for {', '.join(users)}]")


def _config_options(command, only=None):
    for f in reversed(dataclasses.fields(TrainConfig)):
        if only is not None and f.name not in only:
            continue
        if f.name == "optimizer_params":
            for name in reversed(list(HYPERPARAMETERS)):
                command = _hyperparameter_option(name)(command)
        else:
            command = _config_option(f)(command)
    return command


class JsonLines:
    """``train --json``: each epoch's record as one JSON object on stdout, for a pipeline to read."""

    def on_epoch_end(self, trainer, record):
        click.echo(json.dumps(record))


def _given_settings(ctx, settings: dict) -> dict:
    """The settings given on the command line or in --config (the rest: defaults, or when resuming
    the run's own), with the optimiser's hyperparameters gathered into ``optimizer_params``."""
    sources = (ParameterSource.COMMANDLINE, ParameterSource.DEFAULT_MAP, ParameterSource.ENVIRONMENT)
    given = {k: v for k, v in settings.items() if ctx.get_parameter_source(k) in sources}
    params = {k[3:]: given.pop(k) for k in list(given) if k.startswith("hp_")}
    if params:
        given["optimizer_params"] = params
    return given


def _load_config(ctx, param, value):
    """--config FILE.toml: its keys become the defaults, so the command line still overrides them.
    Each value is checked here by its option's type, so an error names the file and the key."""
    if value is None:
        return None
    import tomllib

    try:
        with open(value, "rb") as fh:
            raw = tomllib.load(fh)
    except UnicodeDecodeError:
        raise click.BadParameter(f"{value}: not UTF-8 text (TOML files are UTF-8)") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise click.BadParameter(f"{value}: {e}") from None
    table = raw.get("train", raw)  # a [train] table, or top-level keys
    if not isinstance(table, dict):
        raise click.BadParameter(f"{value}: [train] must be a table")
    params = {p.name: p for p in ctx.command.params}
    settings = {}
    for key, v in table.items():
        name = key.replace("-", "_")
        if name not in params or name == "config":
            hint = difflib.get_close_matches(name, params, n=1)
            raise click.BadParameter(f"{value}: unknown setting {key!r}"
                                     + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        p = params[name]
        try:
            if p.multiple and not isinstance(v, list):
                raise click.BadParameter("expected a list")
            if isinstance(p.type, click.Path) and not isinstance(v, str):
                raise click.BadParameter(f"expected a path in quotes, not {type(v).__name__} {v!r}")
            settings[name] = p.type_cast_value(ctx, v)
        except click.BadParameter as e:
            raise click.BadParameter(f"{value}: {key}: {e.message}") from None
        except (TypeError, ValueError) as e:  # a TOML value of a type the option cannot take
            raise click.BadParameter(f"{value}: {key}: {type(v).__name__} {v!r} does not fit ({e})") from None
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    return value


@cli.command()
@click.argument("data")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), callback=_load_config, is_eager=True,
              expose_value=False, help="TOML file of train options (keys as the option names); the command line wins.")
@_selection_options
@click.option("--val", default=None, help="A separate validation dataset.")
@click.option("--weight", default=None, help="A column whose values weigh each row's loss (one column per feature).")
@_config_options
@click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of this run's checkpoints and metrics.jsonl (one run per directory).")
@click.option("--resume", is_flag=True, help="Continue the run in --checkpoint-dir from its newest valid checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace the run in --checkpoint-dir with a new one.")
@click.option("--force", is_flag=True, help="Resume even if the data or settings changed.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
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
        from .train.tracking import MLflowLogger

        callbacks.append(MLflowLogger(mlflow_uri, experiment="streamtrain",
                                      run_name=Path(checkpoint_dir).name if checkpoint_dir else None))
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


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("data")
@click.option("--split", type=click.Choice(["all", "train", "val"]), default="all", show_default=True,
              help="Evaluate on the training run's --val-fraction hold-out (val) or the rest (train).")
@_selection_options
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@_distributed_option
@_log_every_option
def evaluate(checkpoint, data, split, features, label, as_json, distributed, log_every):
    """Evaluate the model in CHECKPOINT (a file or a checkpoint directory) on DATA.

    Example: streamtrain evaluate runs/bc data/breast_cancer.h5 --split val
    """
    trainer = Trainer.load(checkpoint)
    ds = trainer.open_like_training(_open_selected(trainer, data, features, label))
    if split != "all":
        cfg = trainer.config
        if not cfg.val_fraction:
            raise click.UsageError(f"{checkpoint}: the run had no --val-fraction, so --split {split} has no meaning")
        ds = HoldoutSplit(ds, cfg.val_fraction, cfg.seed, split)
    comm = communicator(distributed)  # several processes: each evaluates its share of the chunks
    with _progress(f"evaluating {ds.path}", ds.n_rows, as_json or comm.rank != 0, log_every) as progress:
        result = trainer.evaluate(ds, progress.update, comm)
    if comm.rank != 0:
        return
    result["split"] = split
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{result['path']} ({split}): {result['n']:,} rows")
    if trainer.task == "regression":
        click.echo(f"loss {result['loss']:.4f} (half the squared error, summed over outputs: what training "
                   f"minimises)  mse {result['mse']:.4f}  mae {result['mae']:.4f}  r2 {result['r2']:.4f}")
        return
    auc = f"  roc_auc {result['roc_auc']:.4f}" if result.get("roc_auc") is not None else ""
    click.echo(f"accuracy {result['accuracy']:.4f}  log_loss {result['log_loss']:.4f}{auc}")
    click.echo(f"{'class':>12} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>9}")
    for c, p, r, f, n in zip(result["classes"], result["precision"], result["recall"], result["f1"],
                             result["support"]):
        click.echo(f"{c!s:>12} {p:9.3f} {r:7.3f} {f:6.3f} {n:9,d}")
    for avg in ("macro", "weighted"):
        m = result[avg]
        click.echo(f"{avg + ' avg':>12} {m['precision']:9.3f} {m['recall']:7.3f} {m['f1']:6.3f} {result['n']:9,d}")
    click.echo("confusion matrix (rows: true, columns: predicted):")
    for row in result["confusion_matrix"]:
        click.echo("  " + " ".join(f"{v:6d}" for v in row))


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("data")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help=f"Output file: {', '.join(f.suffixes[0] for f in FORMATS.values() if f.writer)} "
              "(the format from the suffix; written atomically).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@_selection_options
@_log_every_option
def predict(checkpoint, data, out, overwrite, features, label, log_every):
    """Write predictions (and class probabilities) for every row of DATA, chunk by chunk.

    Example: streamtrain predict runs/bc data/breast_cancer.parquet --out predictions.csv
    """
    trainer = Trainer.load(checkpoint)
    ds = trainer.open_like_training(_open_selected(trainer, data, features, label), need_label=False)
    with _progress(f"predicting {ds.path}", ds.n_rows, every=log_every) as progress:
        # a checkpoint directory may take new files (a run's own files are refused anyway)
        inputs = [data] + ([checkpoint] if Path(checkpoint).is_file() else [])
        info = trainer.write_predictions(ds, out, overwrite=overwrite, progress=progress.update, inputs=inputs)
    click.echo(f"wrote {info['path']}: {info['rows']} rows, columns {', '.join(info['columns'])}")


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (never a file of a run).")
def plot(checkpoint, out, overwrite):
    """Plot training and validation loss and accuracy per epoch from a checkpoint (file or directory).

    Example: streamtrain plot runs/bc --out curves.png
    """
    from .plot import plot_history

    found, _, meta = resolve_checkpoint(checkpoint, TRAINER)
    history = read_history(found) or [r for r in [meta["state"]["record"]] if r]
    run = checkpoint if Path(checkpoint).is_dir() else Path(checkpoint).parent
    best = meta["state"]["restored_best"] or meta["state"]["early_stopping"]["best_epoch"]
    written = plot_history(history, out, title=f"run {Path(run).resolve().name}", best_epoch=best,
                           overwrite=overwrite, inputs=[found])
    click.echo(f"wrote {written}")


@cli.command()
@click.argument("path")
@_selection_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def inspect(path, features, label, as_json):
    """Describe a dataset (layout, selection) or a checkpoint (metadata, history, parameter digest).

    Example: streamtrain inspect data/digits.parquet --json
    """
    local = None if is_url(path) else Path(path)
    if local is not None and (local.suffix == ".npz" or (local.is_dir() and any(local.glob("ckpt-*.npz")))):
        found, arrays, meta = resolve_checkpoint(local, TRAINER)
        params = {k: v for k, v in arrays.items() if k.startswith("param.")}
        state = meta.pop("state")
        info = {"checkpoint": str(found), **meta, **state, "history": read_history(found),
                "params_sha256": params_digest(params)}
    else:
        with open_dataset(path, _selection(features), label) as ds:
            info = ds.describe()
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    for key, value in info.items():
        if key == "history":
            click.echo(f"history: {len(value)} epoch{'s' if len(value) != 1 else ''} (metrics.jsonl)")
        elif isinstance(value, dict):
            click.echo(f"{key}:")
            for k, v in value.items():
                click.echo(f"  {k}: {_text(v)}")
        else:
            click.echo(f"{key}: {_text(value)}")


# The settings that mean something for a model learning from a stream (no epochs, shuffles of
# files, hold-outs or early stopping; a cosine schedule needs a run's length, which a stream has not).
SERVE_SETTINGS = ("hidden", "activation", "task", "init", "batch_size", "lr", "lr_schedule", "power_t", "lr_gamma",
                  "lr_step", "warmup", "optimizer", "optimizer_params", "seed", "scale", "dtype", "compiled",
                  "checkpoint_seconds", "keep")


def _serve_options(command):
    return _config_options(command, SERVE_SETTINGS)


@cli.command(epilog="""\b
More examples:
  curl -X POST localhost:8000/learn -d '[{"f0": 1, "f1": 2, "f2": 3, "y": 1}]'
  curl -X POST localhost:8000/predict -d '[{"f0": 1, "f1": 2, "f2": 3}]'
  streamtrain serve --source dir:landing/ --init-from runs/digits --checkpoint-dir svc
  streamtrain serve --source 'redis://127.0.0.1:6379/0?stream=rows' --init-from runs/bc --checkpoint-dir svc
  streamtrain serve --source 'nats://127.0.0.1:4222?stream=ROWS' --init-from runs/bc --checkpoint-dir svc""")
@click.option("--source", required=True, metavar="SOURCE",
              help="Where rows come from: http (POST /learn), dir:PATH (files landing there), "
              "redis://HOST:PORT/DB?stream=NAME[&group=G], nats://HOST:PORT?stream=NAME[&durable=D].")
@click.option("--checkpoint-dir", type=click.Path(path_type=Path), required=True,
              help="The service's directory: checkpoints (it continues from the newest), the HTTP source's log, "
              "refused input (rejected.jsonl). One service per directory.")
@click.option("--features", default=None, metavar="NAMES",
              help="The stream's feature columns, comma-separated (not needed with --init-from).")
@click.option("--label", default=None, help="The label column (default: y, or the --init-from run's).")
@click.option("--classes", default=None, metavar="LABELS",
              help="A new classifier's labels, comma-separated (integers or strings).")
@click.option("--init-from", type=click.Path(path_type=Path), default=None, metavar="RUN",
              help="Start from the model of a train run (its scaler, classes and features); serve's settings "
              "given here override its training settings.")
@click.option("--scale-rows", type=click.IntRange(1, 1 << 26), default=1000, show_default=True,
              help="Without --init-from and with --scale standard, the first rows that set the scaler "
              "(before the first update).")
@click.option("--shuffle-mb", type=FiniteFloat(0, 1 << 20), default=0.0, show_default=True,
              help="Mix the stream through a buffer of this many MB of rows (0: train in arrival order); the "
              "buffer is part of each checkpoint.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: a free one, named on stderr).")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A file holding a bearer token that /learn, /snapshot and /reload then require.")
@click.option("--max-body-mb", type=FiniteFloat(0, 4096, min_open=True), default=16.0, show_default=True,
              help="Largest request body (413 beyond).")
@click.option("--queue-mb", type=FiniteFloat(0, 1 << 20, min_open=True), default=64.0, show_default=True,
              help="Rows posted to /learn that may wait for training (429 with Retry-After beyond).")
@_serve_options
@click.pass_context
def serve(ctx, source, checkpoint_dir, features, label, classes, init_from, scale_rows, shuffle_mb, host, port,
          token_file, max_body_mb, queue_mb, **settings):
    """Learn from a stream that never ends and answer predictions meanwhile.

    Each row updates the model exactly once across crashes and restarts: checkpoints hold the
    source's position, and brokers are acknowledged only once a checkpoint covers their
    entries. Endpoints: POST /learn (JSON rows or Arrow IPC; source http), POST /predict,
    GET /metrics (Prometheus), /healthz, /readyz, POST /snapshot, POST /reload.

    Example: streamtrain serve --source http --checkpoint-dir svc --features f0,f1,f2 --classes 0,1
    """
    from .serve.service import Service

    given = _given_settings(ctx, settings)
    if given.get("lr_schedule") == "cosine":
        raise click.UsageError("--lr-schedule cosine decays over a run's length, which a stream has not")
    init = None
    if init_from is not None:
        init = Trainer.load(init_from)
        config = TrainConfig(**{**init.config.to_dict(), **given})
    else:
        config = TrainConfig(**given)
    if "checkpoint_seconds" not in given:
        config = TrainConfig(**{**config.to_dict(), "checkpoint_seconds": 10.0})
    token = None
    if token_file is not None:
        token = _read_token(token_file)
    names = None if features is None else [f.strip() for f in features.split(",") if f.strip()]
    labels = None if classes is None else [_class_value(c.strip()) for c in classes.split(",") if c.strip()]

    def open_service():
        return Service(config, source, checkpoint_dir, features=names, label=label, classes=labels,
                       init_from=init, scale_rows=scale_rows, shuffle_bytes=int(shuffle_mb * 2**20),
                       checkpoint_every=config.checkpoint_seconds or 10.0, keep=config.keep, token=token,
                       max_body_bytes=int(max_body_mb * 2**20), queue_bytes=int(queue_mb * 2**20), log=_echo_err)

    _run_server(open_service, host, port)


def _read_token(path: Path) -> str:
    """The bearer token a file holds (its surrounding white space aside), or one line saying why not."""
    data = path.read_bytes()
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: the token file is not UTF-8 text ({e.reason}: byte {data[e.start]:#04x} at "
                          f"offset {e.start})") from None
    if not token:
        raise click.UsageError(f"{path}: the token file is empty")
    if any(c < " " or c == "\x7f" for c in token):
        raise ConfigError(f"{path}: the token holds a control character (a line break?); an Authorization "
                          "header cannot carry it")
    return token


def _class_value(text: str):
    """A class label as given on the command line: an integer where it reads as one."""
    try:
        return int(text)
    except ValueError:
        return text


def _run_server(open_service, host: str, port: int) -> None:
    """Listen at once (``/readyz`` says 503 "loading" while ``open_service()`` resumes from the
    checkpoint and reaches the source), serve until SIGINT or SIGTERM, then stop training and write
    the last checkpoint. An error while loading ends the server and is raised here."""
    import threading

    import uvicorn

    from .serve.service import Loading

    sock = _listen(host, port)  # before loading anything: a port in use is one line, and --port 0 is named
    port = sock.getsockname()[1]
    app = Loading()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           lifespan="off"))

    def load():
        try:
            svc = open_service()
            svc.start()
            app.serve(svc)
            _echo_err(f"ready (source: {svc.source.name}; checkpoints in {svc.dir})")
        except BaseException as e:  # raised in the main thread once the server has stopped
            app.error = e
            server.should_exit = True

    loader = threading.Thread(target=load, name="loading", daemon=True)
    loader.start()
    _echo_err(f"serving on http://{f'[{host}]' if ':' in host else host}:{port} (loading)")
    how = "stopped"
    try:
        server.run(sockets=[sock])  # until SIGINT or SIGTERM: uvicorn finishes the requests in flight
    except Interrupted as e:  # uvicorn hands the signal on once it has shut down: the normal way out
        how = f"stopped by {e.signal_name}"
    finally:
        loader.join()  # a stop while loading lets the loading finish, then stops what it opened
        if app.service is not None:
            app.service.stop()
    if app.error is not None:
        raise app.error
    svc = app.service
    if svc.failure:
        raise TrainingError(svc.failure)
    _echo_err(f"{how}; checkpoint written in {svc.dir} (update {svc.learner.state.global_step})")


def _listen(host: str, port: int):
    """A listening socket on ``host:port`` (``port`` 0: a free one), or the one-line reason why not."""
    import socket

    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = info[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        why = os_reason(e) if isinstance(e, OSError) else e
        raise ConfigError(f"--host {host}: cannot listen there ({why})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after a stop
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise ConfigError(f"{host}:{port}: cannot listen there ({os_reason(e)}); choose another --port") from None
    return sock


def _text(value, most: int = 12) -> str:
    """A value as inspect prints it: plain words, no Python reprs."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(_text(v) for v in value[:most])
        return shown + (f", ... ({len(value)} in all)" if len(value) > most else "")
    if isinstance(value, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items()) or "none"
    return str(value)


def main(argv=None) -> None:
    """Run the command: user errors become one line on stderr and exit code 2 (1 for training
    failures, 130 / 143 for SIGINT / SIGTERM); ``--debug`` shows the traceback."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    _show_library_warnings()
    try:
        reuse_freed_memory()
        cli.main(args=args, prog_name="streamtrain", standalone_mode=False)
    except click.exceptions.Exit as e:
        exit_now(e.exit_code)
    except click.exceptions.Abort:
        _fail("interrupted", 130, debug)
    except click.ClickException as e:
        hint = ""
        if isinstance(e, click.UsageError) and e.ctx is not None:
            hint = f" (see '{e.ctx.command_path} --help')"
        _fail(f"error: {e.format_message()}{hint}", e.exit_code, debug, everywhere=True)
    except Interrupted as e:
        _fail(str(e), e.exit_code, debug)
    except StreamtrainError as e:
        _fail(f"error: {e}", e.exit_code, debug, everywhere=e.everywhere)
    except KeyboardInterrupt:
        _fail("interrupted", 130, debug)
    except OSError as e:  # an output or input the library did not name: still one line
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        _fail(f"error: {where}{os_reason(e)}", 2, debug)
    except MemoryError:
        _fail("error: out of memory; lower --window-mb, --batch-size or --hidden", 2, debug)
    exit_now(0)


def _show_library_warnings() -> None:
    """The library's warnings (a damaged checkpoint passed over, say) as "warning: ..." lines on stderr."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    logger = logging.getLogger("streamtrain")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _fail(message: str, code: int, debug: bool, everywhere: bool = False) -> None:
    """Say ``message`` (one line) and end with ``code``; ``everywhere``: every process of an MPI job
    is expected to fail alike (a setting, the command line), so rank 0 should be the one to say it."""
    comm = active_communicator()
    if comm.size > 1 and code not in (130, 143):
        # MPI's model: an error on one process ends the job. Rank 0 speaks first; the others wait a
        # moment so that, where every rank fails alike, the job ends before they repeat it (longer
        # where that is expected: a loaded machine can take seconds to deliver rank 0's abort).
        if comm.rank:
            time.sleep(5.0 if everywhere else 0.5)
        message = message.replace("error: ", f"error: rank {comm.rank}: ", 1)
    elif comm.size > 1 and comm.rank:
        message = ""  # an interrupt: every rank stops at the same step; rank 0 says so
    if debug:
        traceback.print_exc()
    if message:  # one line, whatever the message holds
        _echo_err(" ".join(message.split()) if "\n" in message else message)
    if comm.size > 1 and code not in (130, 143):
        comm.abort(code)  # once the launcher has read the line
    exit_now(code)


def exit_now(code: int) -> None:
    """End the process after a failure or an interrupt, skipping interpreter finalisation.

    What streamtrain must clean up (decoding workers, the checkpoint writer, the directory
    lock) is cleaned up before this. Finalisation would then only add noise (asyncio reporting
    zarr's or s3fs's pending tasks) or hang: a run cut short can leave a daemon thread (the
    compiled step's loader, importing numba) frozen while it holds the import lock, and a
    warning printed at shutdown imports.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
