"""Data commands: ``make-data`` and ``inspect``."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import click

from ..config import LIMITS, MAX_FEATURES, TrainConfig
from ..features.encoding import Encoding
from ..io.digest import params_digest
from ..io.resolve import resolve_checkpoint
from ..io.rundir import read_history
from ..io.store import is_remote_checkpoint
from ..readers import FORMATS, open_dataset
from ..readers.remote import is_url
from ..synthetic import TASKS, make_data
from ..train.schema import TRAINER
from .group import cli
from .options import (FiniteFloat, _config_options, _given_settings, _log_every_option, _progress, _selection,
                      _selection_options, _text)

__all__ = ['make_data_cmd', 'inspect']


@cli.command("make-data")
@click.argument("out", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--rows", type=click.IntRange(1, 1 << 62), required=True, help="Number of rows.")
@click.option("--kind", type=click.Choice(["teacher", "clicks"]), default="teacher", show_default=True,
              help="teacher: numeric features labelled by a random network (.h5, .zarr, .parquet); clicks: a "
                   "click log like Criteo's, 13 integer and 26 categorical columns, a time, a click label "
                   "(.parquet, .csv, .csv.gz, .h5).")
@click.option("--features", type=click.IntRange(1, MAX_FEATURES), help="Number of features (--kind teacher).")
@click.option("--task", type=click.Choice(TASKS), default="binary", show_default=True,
              help="What the teacher's labels are: two classes, several, or real values.")
@click.option("--classes", type=click.IntRange(2, 1 << 16), default=2, show_default=True,
              help="Classes for --task multiclass.")
@click.option("--chunk-rows", type=click.IntRange(1, 1 << 31), default=None,
              help="Rows per chunk / row group [default: 16384; 100000 for clicks].")
@click.option("--seed", type=click.IntRange(*LIMITS["seed"]), default=0, show_default=True,
              help="Seed of the features and labels.")
@click.option("--noise", type=FiniteFloat(0, 1e6), default=0.5, show_default=True, help="Label noise of the teacher.")
@click.option("--max-levels", type=click.IntRange(100, 1 << 40), default=10_000_000, show_default=True,
              help="Levels of the largest categorical column (--kind clicks; the others log-spaced down to 100).")
@click.option("--days", type=click.IntRange(1, 10_000), default=7, show_default=True,
              help="Days the time column spans (--kind clicks).")
@click.option("--compression", default="default", show_default=True,
              help="none, or the format's codec (" + "; ".join(
                  f"{f.name}: {', '.join(c for c in f.compressions if c)}" for f in FORMATS.values()
                  if f.reader and f.writer and any(f.compressions)) + ").")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@_log_every_option
def make_data_cmd(out, rows, kind, features, task, classes, chunk_rows, seed, noise, max_levels, days, compression,
                  overwrite, log_every):
    """Write a synthetic dataset to OUT, chunk by chunk in flat memory.

    Labels come from a fixed random teacher network plus noise (--kind teacher), or from a hidden
    model of the categories and their pairs (--kind clicks).

    Example: streamtrain make-data big.h5 --rows 20000000 --features 64
    """
    started = time.perf_counter()
    if kind == "clicks":
        if features is not None:
            raise click.UsageError("--features is for --kind teacher (a click log has its own 39 columns)")
        from ..clicks import make_clicks

        with _progress(f"writing {out}", rows, every=log_every) as progress:
            info = make_clicks(out, rows, chunk_rows or 100_000, seed, max_levels, days, overwrite, progress.update)
        click.echo(f"wrote {info['path']}: {rows:,} rows of clicks (13 integer, 26 categorical columns of "
                   f"{info['levels'][0]:,} to {info['levels'][-1]:,} levels), {info['chunks']} chunks, "
                   f"in {time.perf_counter() - started:.1f}s")
        return
    if features is None:
        raise click.UsageError("Missing option '--features' (the number of features of --kind teacher).")
    with _progress(f"writing {out}", rows, every=log_every) as progress:
        info = make_data(out, rows, features, task, classes, chunk_rows or 16384, seed, noise,
                         None if compression == "none" else compression, overwrite, progress.update)
    secs = time.perf_counter() - started
    click.echo(f"wrote {info['path']}: {rows:,} rows x {features} features, task {task}, "
               f"{info['chunks']} chunks, in {secs:.1f}s")


#: ``train``'s options that decide how a table's columns are encoded: ``inspect`` takes them too,
#: so the plan it shows is the one ``train`` with the same options follows.
ENCODING_SETTINGS = ("max_categories", "min_frequency", "hash_buckets", "hash_bits", "one_hot_max", "missing",
                     "categorical", "numeric", "hash", "drop", "cross", "date_parts", "classes")


@cli.command()
@click.argument("path")
@_selection_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@functools.partial(_config_options, only=ENCODING_SETTINGS)
@click.pass_context
def inspect(ctx, path, features, label, as_json, **encoding):
    """Describe a dataset (layout, selection, and for a table what happens to each column, under
    train's column options given here) or a checkpoint (metadata, history, parameter digest).

    Example: streamtrain inspect data/digits.parquet --json
    """
    given = _given_settings(ctx, encoding)
    local = None if is_url(path) else Path(path)
    if (local.suffix == ".npz" or (local.is_dir() and any(local.glob("ckpt-*.npz")))) if local is not None \
            else is_remote_checkpoint(path):  # (a run in object storage: --checkpoint-dir s3://...)
        if given:
            raise click.UsageError(f"--{next(iter(given)).replace('_', '-')} applies to a dataset; a checkpoint's "
                                   f"columns are encoded as its run learned them (inspect it without the option)")
        found, arrays, meta = resolve_checkpoint(local or path, TRAINER)
        params = {k: v for k, v in arrays.items() if k.startswith("param.")}
        state = meta.pop("state")
        info = {"checkpoint": str(found), **meta, **state, "history": read_history(found),
                "params_sha256": params_digest(params)}
        if meta["model"].get("encoding") is not None:  # the model's encoding, a line per column
            info["columns"] = Encoding.from_state(meta["model"].pop("encoding")).describe()
    else:
        encode = TrainConfig(**given).encode_options() if given else None
        with open_dataset(path, _selection(features), label, **({"encode": encode} if encode else {})) as ds:
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
