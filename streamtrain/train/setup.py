"""Setting a run up: its settings checked before any data is read, its data opened (a weight
column, a decoded copy, a validation split), its sampler, and the hooks a run always has."""

from __future__ import annotations

import logging
import os

import numpy as np

from ..data.loader import window_rows_for
from ..data.sampling import Sampler
from ..data.scaling import scan
from ..errors import ConfigError, DataError
from ..features.learn import shared_pass
from ..features.schema import DROPPED
from ..model import Model
from ..progress import Progress
from ..readers import ArrayDataset, open_dataset
from ..readers.base import Dataset
from ..readers.subset import HoldoutSplit
from .hooks import (
    Checkpointer,
    DirectoryWatch,
    DivergenceGuard,
    EarlyStopping,
    EpochLog,
    MetricsLog,
    ProgressBar,
    ProgressLines,
    RanksAgree,
    StopOnSignals,
    Validation,
)

__all__ = ["check_settings", "open_data", "make_sampler", "new_model", "standard_hooks", "say_left_out", "say_notes",
           "refuse_left_out"]

_LOG = logging.getLogger("streamtrain")


def check_settings(cfg, comm, has_val: bool, resume: bool, overwrite: bool, checkpoint_dir) -> None:
    """Refuse, before any data is read, settings that would do nothing or contradict each other."""
    if resume and overwrite:
        raise ConfigError("resume and overwrite contradict each other: give one")
    if comm.size > 1 and cfg.batch_size == 1:
        raise ConfigError(f"batch_size 1 on {comm.size} processes would make an allreduce per row: train "
                          "online on one process (its compiled per-sample loop does 500k+ rows/s), or give a "
                          f"batch of at least {comm.size} rows")
    if (resume or overwrite) and not checkpoint_dir:
        raise ConfigError(f"{'resume' if resume else 'overwrite'} needs a checkpoint directory")
    validation = has_val or cfg.val_fraction > 0
    watched = cfg.early_stopping_metric.startswith("val_")
    for name, on in (("early_stopping", cfg.early_stopping), ("keep_best", cfg.keep_best)):
        if on and watched and not validation:
            raise ConfigError(f"{name} needs validation data (--val or --val-fraction): without it, it does nothing")
    if cfg.early_stopping_metric.endswith("_r2") and cfg.task in ("binary", "multiclass") or \
            cfg.early_stopping_metric.endswith("_accuracy") and cfg.task == "regression":
        raise ConfigError(f"early_stopping_metric: a {cfg.task} run has no {cfg.early_stopping_metric}")


def open_data(cfg, comm, source, val, features, label, weight=None, log=None, encoding: dict | None = None
              ) -> tuple[Dataset, Dataset | None, str | None]:
    """``(training data, validation data or None, the weight column or None)`` of a run;
    ``encoding``: the resumed run's column encoding (applied, not learned again)."""
    opts = {"dtype": cfg.dtype, "nonfinite": "skip" if cfg.skip_nonfinite else "error",
            "allow_missing_chunks": cfg.allow_missing_chunks}
    encode = {"encoding": encoding} if encoding is not None else (
        {"encode": cfg.encode_options()} if cfg.encode_options() else {})
    if weight is not None and not isinstance(weight, str):  # per-row values for (X, y) arrays
        if not (isinstance(source, tuple) and len(source) == 2):
            raise DataError("per-row weights go with (X, y) arrays; for a file, name its weight column")
        X, y = np.asarray(source[0]), source[1]
        w = np.asarray(weight, dtype=np.float64).reshape(-1)
        if X.ndim != 2 or len(w) != len(X):
            raise DataError(f"sample weights: {len(w)} values for {len(X)} rows")
        source = ArrayDataset(np.column_stack([X, w]), y, dtype=cfg.dtype,
                              feature_names=[f"f{j}" for j in range(X.shape[1])] + ["sample_weight"])
        weight = "sample_weight"
    # several processes learn a table's encoding together, each reading its share of the chunks
    with shared_pass(comm.rank, comm.size, comm.allgather):
        data = open_dataset(source, features, label, **opts, **encode)
    if data.encoding is not None:
        data.missing_label = cfg.missing_label
    if cfg.strict:
        refuse_left_out(data)
    if comm.rank == 0:
        say_left_out(data)
        say_notes(data)
    if weight is not None:
        data = _with_weight(source, data, label, weight, opts)
    if comm.size > 1:
        same_data_everywhere(comm, data)
    if cfg.cache_dir:
        data = _decoded(cfg, comm, data, log)
    if val is not None:  # read as training's data is: its columns, encoded the same way
        same = {"encoding": data.encoding.state_dict()} if data.encoding is not None else {}
        held = open_dataset(val, data.selection, data.label_name, **opts, **same)
        if comm.rank == 0 and _same_file(held.path, data.path):  # (as an HDF5 file's one table chosen: its rows)
            _LOG.warning(f"{held.path}: --val names the data trained on (the same file, the same selection): its "
                         "figures are of the rows trained on; give other data, or --val-fraction to hold some out")
        return data, held, weight
    if cfg.val_fraction:
        train = HoldoutSplit(data, cfg.val_fraction, cfg.seed, "train")
        if comm.rank == 0 and train.n_rows < cfg.batch_size:  # (a run on a handful of rows: said, not silent)
            _LOG.warning(f"{data.path}: --val-fraction {cfg.val_fraction:g} leaves {train.n_rows:,} of its "
                         f"{data.n_rows:,} rows to train on, fewer than a batch of {cfg.batch_size}: a smaller "
                         "--val-fraction trains on more")
        return train, HoldoutSplit(data, cfg.val_fraction, cfg.seed, "val"), weight
    return data, None, weight


def _left_unasked(data: Dataset) -> list[tuple[str, str]]:
    """``(name, why)`` of the columns of ``data`` left out that the user did not drop (``--drop``)."""
    return [(name, why) for name, why in data.left_out if why != DROPPED]


def refuse_left_out(data: Dataset) -> None:
    """``--strict``: a DataError naming every column left out, unless the user dropped it."""
    left = _left_unasked(data)
    if left:
        raise DataError(f"{data.path}: {len(left)} column{'s' if len(left) != 1 else ''} cannot be used: "
                        + "; ".join(f"{name} ({why})" for name, why in left)
                        + " (--drop them, or name the columns to use with --features; without --strict they "
                          "are left out with a note)")


def say_left_out(data: Dataset) -> None:
    """One warning line naming every column of ``data`` that is neither a feature nor the label
    (nothing the user gave is dropped silently), but those the user dropped (``--drop``)."""
    left = _left_unasked(data)
    if not left:
        return
    kinds: dict[str, list[str]] = {}
    for name, why in left:
        stored, reason = _stored_and_reason(why)
        if reason:
            kinds.setdefault(reason, []).append(f"{name} ({stored})")
        else:
            kinds.setdefault(why, []).append(name)
    parts = [f"{', '.join(names)}: {why}" for why, names in kinds.items()]
    _LOG.warning(f"{data.path}: {len(left)} column{'s' if len(left) != 1 else ''} left out: "
                 + "; ".join(parts) + " (--features names the columns to use)")


def say_notes(data: Dataset) -> None:
    """A warning line for each column used as it is that may not be what it seems (the encoding's
    ``notes``: whole numbers that look like an identifier)."""
    encoding = getattr(data, "encoding", None)
    for name, note in encoding.notes if encoding is not None else getattr(data, "notes", ()):
        _LOG.warning(f"{data.path}: column {name!r} {note}")


def _stored_and_reason(why: str) -> tuple[str, str]:
    """A left-out column's reason split at its first ": " outside brackets, as ``(stored type,
    reason)`` ("list<element: int64>: a list per row" is one type and its reason); ``(why, "")``
    where there is none."""
    depth = 0
    for i, ch in enumerate(why):
        if ch in "<([":
            depth += 1
        elif ch in ">)]":
            depth = max(0, depth - 1)
        elif depth == 0 and why.startswith(": ", i):
            return why[:i], why[i + 2:]
    return why, ""


def same_data_everywhere(comm, data: Dataset) -> None:
    """Refuse, on every process alike, data that is not the same on every process: each machine
    may read its own copy (its files' times differ; their layout and sampled chunks may not)."""
    import socket

    mine = {k: v for k, v in data.fingerprint().items() if k != "content"}
    every = comm.allgather({"fingerprint": mine, "host": socket.gethostname()})
    first = every[0]
    for rank, other in enumerate(every):
        differ = [k for k in first["fingerprint"] if other["fingerprint"].get(k) != first["fingerprint"][k]]
        if differ:
            what = ", ".join("its sampled chunks" if k == "sample" else k for k in differ)
            raise DataError(f"{data.path}: rank {rank} (host {other['host']}) reads other data than rank 0 (host "
                            f"{first['host']}): {what} differ; give every machine the same copy of the data")


def _decoded(cfg, comm, data: Dataset, log) -> Dataset:
    """``data`` read from its decoded copy in ``cache_dir``: on each machine the first of its
    processes makes it (if it is not there yet) on that machine's disk while the others wait, then
    they open it. One copy per machine, decoded once, with or without a file system they share."""
    from ..readers.decoded import decoded_copy

    if comm.local_rank == 0:
        data = decoded_copy(data, cfg.cache_dir, cfg.cache_max_gb, log if comm.rank == 0 else None)
    comm.barrier()
    if comm.local_rank != 0:
        data = decoded_copy(data, cfg.cache_dir, cfg.cache_max_gb, None)
    return data


def _with_weight(source, data: Dataset, label, weight: str, opts: dict) -> Dataset:
    """The dataset read with the weight column after the features (one column per feature)."""
    if list(data.feature_names)[-1:] == [weight] and data.format == "memory":
        return data
    if data.encoding is not None:
        raise DataError(f"{data.path}: a weight column with encoded columns (strings, categories, missing values) "
                        "is not supported yet; write the weights beside all-numeric features")
    if isinstance(data.selection, str):
        raise DataError(f"{data.path}: a weight column goes with one column per feature (Parquet, Zarr or "
                        f"HDF5 columns), not a 2-D features array ({data.selection!r})")
    names = [n for n in data.feature_names if n != weight]
    data.close()
    return open_dataset(source, names + [weight], label, **opts)


def _same_file(a, b) -> bool:
    """Whether two datasets' paths name the same local file (a glob or a URL: never)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, TypeError, ValueError):
        return False


def new_model(cfg, comm, data: Dataset, weight: str | None, log, log_every: float):
    """A new model for ``data``, from a pass over what the run needs: feature statistics for
    standard scaling, else the labels alone (the classes; for a regression the first chunk's
    width). With several processes each reads its share of the chunks; the statistics are merged."""
    if data.label_name is None:
        raise DataError(f"{data.path}: no label found; name it with --label")
    features = cfg.scale == "standard"
    first_only = not features and cfg.task == "regression" and not cfg.scale_target
    what = (f"statistics pass over {data.path} (feature means and variances for --scale standard; the label's "
            "classes)" if features else f"reading the labels of {data.path} ("
            + ("their width" if first_only else "the classes") + f"; --scale {cfg.scale} needs no feature statistics)")
    with Progress(data.n_rows, what, log, log_every) as progress:
        stats = scan(data, features, progress.update, first_only, (comm.rank, comm.size)).merged_across(comm)
    unlabelled = data.n_rows - stats.labelled
    if data.missing_labels == "skip" and unlabelled > 0 and not first_only and log and comm.rank == 0:
        held = " among the rows trained on (the hold-out's are skipped too)" if getattr(data, "part", None) == "train" \
            else ""
        log(f"{data.path}: {unlabelled:,} row{'s' if unlabelled != 1 else ''} without a label skipped{held} "
            "(--missing-label error refuses them)")
    data.stamp_soon()  # (the run's fingerprint, read on the other core while the first layer is drawn)
    model = Model.build(cfg, stats, data.n_features, list(data.feature_names), data.label_name, data.selection,
                        data.format, data.path, log, weight, data.encoding, whole=True)
    constant = model.ignored_constant
    if constant and log and comm.rank == 0:  # (with several processes, rank 0 alone speaks; --quiet: not said)
        one = len(constant) == 1
        log(f"note: {data.path}: {len(constant)} feature{'' if one else 's'} constant in the rows trained on "
            f"({', '.join(map(repr, constant[:8]))}{', ...' if len(constant) > 8 else ''}): nothing can be learned "
            f"from {'it' if one else 'them'}, so the model ignores {'its' if one else 'their'} values (a value that "
            "differs in other data moves no prediction)")
    return model


def make_sampler(cfg, comm, train: Dataset) -> Sampler:
    """The run's sampler over ``train`` (this process's share of each global batch)."""
    return Sampler(train.bounds, cfg.batch_size, cfg.shuffle, cfg.seed, cfg.drop_last,
                   window_rows=window_rows_for(cfg.window_mb * 2**20, train), replacement=cfg.replacement,
                   rank=comm.rank, world_size=comm.size, shard="batches")


def standard_hooks(cfg, task: str, comm, val_ds, rundir, callbacks: list, log, log_every: float) -> list:
    """The hooks of a run, in order: the divergence guard, validation, early stopping, the epoch
    and progress lines, the checkpointer (with the metrics and the directory's watch), the ranks'
    agreement, the user's ``callbacks`` (after the checkpointer: at the end of training, the
    final checkpoint is there), and the signals."""
    hooks: list = [DivergenceGuard()]
    if val_ds is not None:
        hooks.append(Validation(val_ds, log, log_every))
    metric, regression = cfg.early_stopping_metric, task == "regression"
    recorded = not (metric.endswith("_r2") and not regression or metric.endswith("_accuracy") and regression)
    if not recorded and (cfg.early_stopping or cfg.keep_best):
        raise ConfigError(f"early_stopping_metric: a {task} run has no {metric}")
    if recorded and (val_ds is not None or not metric.startswith("val_")):
        hooks.append(EarlyStopping(cfg.early_stopping, log, metric, cfg.min_delta))
    if log:
        hooks.append(EpochLog(log))
        if not any(isinstance(h, ProgressBar) for h in callbacks):
            hooks.append(ProgressLines(log, log_every))
    if rundir is not None:
        hooks += [Checkpointer(rundir, cfg), MetricsLog(rundir), DirectoryWatch(rundir)]
    if comm.size > 1:
        hooks.append(RanksAgree(comm))
    return hooks + list(callbacks) + [StopOnSignals()]
