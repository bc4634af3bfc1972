"""The ``streamtrain`` group: the commands of the other modules of this package join it."""

from __future__ import annotations

import click

__all__ = ['cli']


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
