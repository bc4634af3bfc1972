"""Data commands: ``make-data`` and ``inspect``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ..config import LIMITS, MAX_FEATURES
from ..features.encoding import Encoding
from ..io.digest import params_digest
from ..io.resolve import resolve_checkpoint
from ..io.rundir import read_history
from ..readers import FORMATS, open_dataset
from ..readers.remote import is_url
from ..synthetic import TASKS, make_data
from ..train.schema import TRAINER
from .group import cli
from .options import FiniteFloat, _log_every_option, _progress, _selection, _selection_options, _text

__all__ = ['make_data_cmd', 'inspect']


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
        if meta["model"].get("encoding") is not None:  # the model's encoding, a line per column
            info["columns"] = Encoding.from_state(meta["model"].pop("encoding")).describe()
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
