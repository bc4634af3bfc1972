"""Resuming a run: the checkpoint directory made this run's (or the checkpoint to continue from),
the run's settings and weight column adopted from it, the data checked to be what it was trained
on, and the run's model, optimiser, state and history restored from it."""

from __future__ import annotations

import dataclasses
import io

from ..config import ENCODING_SETTINGS, RESUME_MAY_CHANGE, TrainConfig
from ..errors import CheckpointError
from ..io.checkpoint import load_checkpoint
from ..io.rundir import RunDirectory
from ..readers.base import Dataset
from .distributed import decided_by_rank0
from .schema import TRAINER
from .state import make_run_optimizer, restore

__all__ = ["claim", "adopt_settings", "adopt_weight", "check_resumable", "resume_run"]

# What a resumed run can never change: the saved parameters have their shape and type.
FIXED = ("hidden", "activation", "dtype")
#: A table's encoding settings (``config.ENCODING_SETTINGS``): kept in the checkpoint with the
#: model, they cannot change on resume either (with --force, a changed --drop was recorded, not applied).
ENCODING = ENCODING_SETTINGS


def claim(comm, rundir: RunDirectory | None, resume: bool, overwrite: bool, log):
    """The checkpoint ``(path, arrays, meta)`` to resume from, or None; the directory is made this
    run's. Rank 0 decides (it alone owns the directory); the others get its checkpoint's bytes
    and validate them again, or the same refusal."""
    found = []

    def decide():
        found.append(_claim(rundir, resume, overwrite, log))
        return {"path": None if found[0] is None else str(found[0][0])}

    outcome, data = decided_by_rank0(comm, decide, lambda o: rundir.checkpoint_bytes(found[0][0]) if o["path"] else None)
    if found or outcome["path"] is None:  # rank 0 (or alone), or nothing to resume from
        return found[0] if found else None
    source = io.BytesIO(data)
    source.name = outcome["path"]
    arrays, meta = load_checkpoint(source, TRAINER)
    return outcome["path"], arrays, meta


def _claim(rundir: RunDirectory | None, resume: bool, overwrite: bool, log):
    if rundir is None:
        return None
    if resume:
        return rundir.resume_point(TRAINER, warn=log and (lambda m: log(f"warning: {m}")))
    if rundir.holds_run():
        if not overwrite:
            raise CheckpointError(f"{rundir.where}: holds another run's checkpoints; pass --resume to continue "
                                  "it, or --overwrite to replace it (or use another --checkpoint-dir)")
        rundir.clear()
    rundir.start_metrics()
    return None


def adopt_settings(mine: TrainConfig, given: set | None, found, force: bool) -> TrainConfig:
    """The run's settings from its checkpoint, with those ``given`` here (None: all) where they may
    change (with ``force``, any but the model's shape)."""
    path, _, meta = found
    saved = TrainConfig.from_dict(meta["config"])
    if mine.epochs is None:  # not asked for: the run's own length
        mine = dataclasses.replace(mine, epochs=saved.epochs)
    fixed = FIXED + (ENCODING if meta["model"].get("encoding") is not None else ())
    changed = [k for k in fixed if getattr(saved, k) != getattr(mine, k) and (given is None or k in given)]
    if changed:  # not even --force: the saved parameters have another shape
        k = changed[0]
        what = " (the run's column encoding, learned from it, is kept with its model)" if k in ENCODING else ""
        raise CheckpointError(f"{path}: cannot resume with another {k} ({getattr(saved, k)!r} -> "
                              f"{getattr(mine, k)!r}){what}; use another --checkpoint-dir for a new model")
    problems = mine.differences(saved, given)
    if problems and not force:
        raise CheckpointError(f"{path}: cannot resume exactly; changed since the checkpoint: "
                              f"{'; '.join(problems)} (pass --force to resume anyway)")
    given = set(mine.to_dict()) if given is None else given
    keep = {k for k in given if k in RESUME_MAY_CHANGE or force} - set(fixed)
    return TrainConfig.from_dict({**saved.to_dict(), **{k: getattr(mine, k) for k in keep}})


def adopt_weight(found, weight):
    """The run's weight column, like its settings: ``weight`` where it is None or the same; weights
    given as values (arrays) are this call's; another column's name is refused."""
    saved = found[2]["model"].get("weight")
    if weight is None or weight == saved:
        return saved
    if isinstance(weight, str):
        raise CheckpointError(f"{found[0]}: the run weighs rows by {saved!r}, not {weight!r}")
    return weight


def check_resumable(found, train: Dataset, force: bool, rank: int = 0) -> dict:
    """The data's fingerprint, where it is the data the checkpoint was trained on (or ``force``).
    The checkpoint holds rank 0's: another process may read its own machine's copy of the data,
    whose files' times differ, so it compares the sampled chunks' bytes, not the files' stamps."""
    path, _, meta = found
    fp = train.fingerprint()
    saved_fp = meta["fingerprint"]
    skip = {"content"} if rank != 0 and "sample" in saved_fp else set()
    problems = [("data changed in place (its files' sizes or modification times, or sampled chunks, differ)"
                 if k in ("content", "sample") else f"data {k}: {saved_fp[k]!r} -> {fp[k]!r}")
                for k in fp if k in saved_fp and saved_fp[k] != fp[k] and k not in skip]
    problems = list(dict.fromkeys(problems))
    if problems and not force:
        raise CheckpointError(f"{path}: cannot resume exactly; changed since the checkpoint: "
                              f"{'; '.join(problems)} (pass --force to resume anyway)")
    if meta["model"]["n_in"] != train.n_features:
        raise CheckpointError(f"{path}: the model takes {meta['model']['n_in']} features, "
                              f"{train.path} has {train.n_features}")
    return fp


def resume_run(found, config: TrainConfig, train: Dataset, sampler, rundir: RunDirectory | None, force: bool, log,
               rank: int = 0):
    """``(model, optimizer, state, fingerprint, history)`` of the run in ``found`` continued on
    ``train`` with ``config`` (its adopted settings; the optimiser's state is the saved one), after
    the data is checked; ``sampler`` is put where the checkpoint was, ``history`` is the run's
    epochs up to it (from ``metrics.jsonl`` on rank 0; other ranks keep none)."""
    path, arrays, meta = found
    fingerprint = check_resumable(found, train, force, rank)
    _, model, _, state, _ = restore(arrays, meta)
    optimizer = make_run_optimizer(config, arrays)  # this run's settings, the saved state
    s = state.sampler or {"epoch": 0, "position": 0}
    history = rundir.metrics_upto(s["epoch"], state.record) if rundir is not None else []
    if state.sampler:
        try:
            sampler.load_state_dict(state.sampler)
        except ValueError as e:
            raise CheckpointError(f"{path}: cannot resume: {e}") from None
    if log and config.epochs is not None and s["epoch"] >= config.epochs:
        done = s["epoch"]  # (at least the --epochs asked: a run may have been given more before)
        log(f"{path}: the run has trained {done} epoch{'s' if done != 1 else ''} already, --epochs {config.epochs} "
            f"asks for {'no more' if done == config.epochs else 'fewer'}: nothing to train (--epochs {done + 1} or "
            "more trains on)")
    elif log:
        log(f"resuming from {path} (epoch {s['epoch'] + 1}, row {s['position']} of the epoch)")
    return model, optimizer, state, fingerprint, history
