"""Option builders and helpers the command groups share: selections, progress, the train options made from ``TrainConfig``, ``--config`` files."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import click
from click.core import ParameterSource

from ..config import LIMITS, TrainConfig
from ..config import choices as config_choices
from ..errors import nearest
from ..nn.optim import HYPERPARAMETERS, OPTIMIZERS
from ..progress import DEFAULT_EVERY, Progress
from ..readers import open_dataset
from ..train.trainer import Trainer

__all__ = ['FiniteFloat']


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


def _quiet_option(output: str):
    """``--quiet``/``-q`` of a command whose ``output`` is printed still (train's has its own help)."""
    return click.option("--quiet", "-q", is_flag=True,
                        help=f"Print nothing but {output}, warnings (what the model did not know in the data, "
                             "and the like) and errors.")


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


class PathOrURL(click.ParamType):
    """A local path (a ``Path``), or a URL such as ``s3://bucket/run`` (kept a string: a ``Path``
    would fold its ``//``)."""

    name = "path"

    def __init__(self, **path_options):
        self.path = click.Path(path_type=Path, **path_options)

    def convert(self, value, param, ctx):
        from ..readers.remote import is_url

        if isinstance(value, str) and is_url(value):
            return value
        return self.path.convert(value, param, ctx)


def _run_name(checkpoint) -> str:
    """The name of the run a checkpoint (a file, a directory or a URL of either) belongs to."""
    text = str(checkpoint).rstrip("/")
    if "://" in text:
        parts = text.split("/")
        return parts[-2] if text.endswith(".npz") else parts[-1]
    p = Path(checkpoint)
    return (p if p.is_dir() else p.parent).resolve().name


class FiniteFloat(click.FloatRange):
    """A float in a range that also refuses NaN and infinity (``float("nan")`` passes any range)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number", param, ctx)
        return value


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
    if meta.get("listed"):  # (--hash a --hash b is --hash a,b: a repeated list option is not one dropped)
        return click.option(flag, name, multiple=True, callback=_joined,
                            help=meta["help"] + " May be repeated. A name holding a comma goes in double quotes.")
    if name in table:
        kind = click.Choice(list(table[name]))
    elif isinstance(default, str):
        kind = click.STRING
    elif meta["kind"] is int:  # (epochs: None, its default, is worked out from the data)
        kind = click.IntRange(*LIMITS.get(name, (None, None)))
    else:
        lo, hi = LIMITS[name]
        kind = FiniteFloat(lo, hi, min_open=meta["min_open"], max_open=meta["max_open"])
    return click.option(flag, name, type=kind, default=default, show_default=True, help=meta["help"])


def _joined(ctx, param, values) -> str:
    """A repeated list option's values as one comma-separated list."""
    return ",".join(v for v in values if v.strip())


def _joined_or_none(ctx, param, values) -> str | None:
    """As ``_joined``; None where the option was not given."""
    return _joined(ctx, param, values) if values else None


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
            hint = nearest(name, params)
            raise click.BadParameter(f"{value}: unknown setting {key!r}"
                                     + (f" (did you mean {hint!r}?)" if hint else ""))
        p = params[name]
        try:
            if p.multiple and not isinstance(v, list):
                raise click.BadParameter("expected a list")
            if isinstance(p.type, (click.Path, PathOrURL)) and not isinstance(v, str):
                raise click.BadParameter(f"expected a path in quotes, not {type(v).__name__} {v!r}")
            settings[name] = p.type_cast_value(ctx, v)
        except click.BadParameter as e:
            raise click.BadParameter(f"{value}: {key}: {e.message}") from None
        except (TypeError, ValueError) as e:  # a TOML value of a type the option cannot take
            raise click.BadParameter(f"{value}: {key}: {type(v).__name__} {v!r} does not fit ({e})") from None
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    return value


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
