"""A model: the network with what using it needs (scaler, labels, feature selection, how its data
is read); evaluate and predict, streaming over any source.

>>> import numpy as np
>>> from streamtrain import Trainer
>>> t = Trainer(hidden=4, epochs=2)
>>> _ = t.fit((np.random.default_rng(0).standard_normal((64, 3)), np.arange(64) % 2), log=None)
>>> t.model.predict(np.zeros((2, 3))).shape
(2,)
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterator

import numpy as np

from .data.scaling import DataStats, Scaler
from .errors import ConfigError, DataError
from .features.encoding import Encoding
from .metrics import metrics_for
from .nn.network import PARAM_NAMES, InputLayout, TwoLayerNet
from .nn.optim import attach, prepare_zeros
from .readers import detect_format, open_dataset
from .readers.base import Dataset
from .labels import Labels, given_classes

__all__ = ["Model"]

_LOG = logging.getLogger("streamtrain")


class Model:
    """``net`` (a ``TwoLayerNet``), ``scaler``, ``labels`` (task and classes) and the feature
    selection of training (``feature_names``, ``selection``, ``label_name``, the ``source_format``
    it was trained from); ``nonfinite`` and ``allow_missing_chunks`` say how data is read."""

    def __init__(self, net: TwoLayerNet, scaler: Scaler, labels: Labels, feature_names: list[str], selection,
                 label_name: str | None, source_format: str | None = None, nonfinite: str = "error",
                 allow_missing_chunks: bool = False, weight: str | None = None, class_weights: list | None = None):
        self.net, self.scaler, self.labels = net, scaler, labels
        self.feature_names, self.selection, self.label_name = list(feature_names), selection, label_name
        self.source_format = source_format
        self.nonfinite, self.allow_missing_chunks = nonfinite, allow_missing_chunks
        # training only: the column whose values weigh each row's loss (read after the features), and
        # each class's weight
        self.weight, self.class_weights = weight, class_weights

    #: The learned column encoding of training's data (``features.encoding.Encoding``), or None.
    encoding = None
    #: A regression target's ``(mean, std)``, each of shape (n_out,), by which the network's
    #: targets are standardised (None: used as they are).
    target = None

    @property
    def class_weight_vector(self) -> np.ndarray | None:
        """Each class index's loss weight, or None (all 1)."""
        return None if self.class_weights is None else np.asarray(self.class_weights, dtype=self.net.dtype)

    @classmethod
    def build(cls, config, stats: DataStats, n_features: int, feature_names, label_name: str, selection,
              source_format: str | None, where: str, log=None, weight: str | None = None,
              encoding=None, whole: bool = False) -> "Model":
        """A new model for data of this shape: task and classes from the label summary, the
        scaler from the feature statistics, the network initialised from ``config.seed``.
        ``weight``: the last of the ``n_features`` columns weighs each row's loss (not a feature);
        ``encoding``: the data's learned column encoding (kept, applied to all data the model reads;
        its 0/1 inputs are not scaled; a class label's values are the classes). ``whole``: the
        statistics are of all the rows to train on, so a feature constant in them is ignored (its
        scaling factor 0: ``ignored_constant`` names those scaled), and so is a 0/1 input that never changes."""
        classes = None if encoding is None else encoding.classes
        if classes is None and config.class_list() and stats.label_ndim == 1:
            classes = given_classes(config.class_list(), stats, label_name, where)
        labels = Labels.from_stats(stats, config.task, label_name, where, log, classes)
        n_in = n_features - (weight is not None)
        if weight is not None:
            feature_names = list(feature_names)[:n_in]
            if stats.mean is not None:
                stats.mean, stats.m2 = stats.mean[:n_in], stats.m2[:n_in]
        layout = _layout(encoding, config.dtype, where)
        check_memory(n_in if layout is None else layout.n_rows, config, where)
        # (a table's optimiser state made ready beside its initial draw: each maps fresh pages)
        zeros = prepare_zeros(config.optimizer, (n_in if layout is None else layout.n_rows, config.hidden),
                              config.dtype)
        net = TwoLayerNet(n_in, config.hidden, labels.n_out, config.activation, labels.task, config.init,
                          config.seed, config.dtype, layout)
        attach(zeros, net.params["W1"])
        scaler = Scaler.from_stats(config.scale, stats, config.dtype, constant=0.0 if whole else 1.0)
        keep = None
        if encoding is not None and scaler.mean is not None:  # one-hot codes and indicators stay 0/1
            keep = encoding.unscaled[:n_in]
            scaler.mean[keep], scaler.scale[keep] = 0, 1
        ignored = [] if scaler.scale is None else [feature_names[j] for j in np.flatnonzero(scaler.scale[:n_in] == 0)]
        if whole and keep is not None:  # a 0/1 input the same in every row (a category, a missing value, a
            # date part never seen, or seen in every row): nothing to learn from it, so its value in other
            # data adds nothing (not the initial draw of weights it never trained, nor a second bias)
            # (never a column of codes: their values are rows of the first layer, and unread here)
            same = keep & ~encoding.gathered_inputs[:n_in] & (stats.var[:n_in] == 0)
            scaler.scale[same] = 0
        model = cls(net, scaler, labels, feature_names, selection, label_name, source_format,
                    "skip" if config.skip_nonfinite else "error", config.allow_missing_chunks, weight,
                    labels.class_weights(config.class_weight, stats, where))
        model.encoding = encoding
        model.ignored_constant = ignored
        if labels.task == "regression" and config.scale_target and stats.label_mean is not None \
                and stats.label_mean.shape == (labels.n_out,):
            std = stats.label_std.copy()
            std[~(std > 0)] = 1.0  # a constant target: centred only
            model.target = (stats.label_mean.astype(np.float64), std.astype(np.float64))
        return model

    @property
    def task(self) -> str:
        return self.labels.task

    @property
    def classes(self) -> list:
        return self.labels.classes

    @property
    def read_options(self) -> dict[str, Any]:
        """How this model's data is opened: ``open_dataset``'s keyword arguments."""
        opts = {"dtype": self.net.dtype, "nonfinite": self.nonfinite, "allow_missing_chunks": self.allow_missing_chunks}
        if self.encoding is not None:  # the columns are encoded as in training, never learned anew
            opts["encoding"] = self.encoding.state_dict()
        return opts

    # -- what training feeds the network ---------------------------------------
    def targets(self, y: np.ndarray, where: str = "") -> np.ndarray:
        """Labels as the network wants them: class indices, or values of the network's dtype."""
        t = self.labels.targets(y, where)
        if self.task != "regression":
            return t
        if self.target is not None:  # (rows,) for one target, else (rows, n_out): broadcast either way
            mean, std = self.target
            t = (t - mean[0]) / std[0] if t.ndim == 1 else (t - mean) / std
        return t.astype(self.net.dtype, copy=False)

    def in_target_units(self, out: np.ndarray) -> np.ndarray:
        """Network outputs ``(rows, n_out)`` of a regression in the target's own units."""
        if self.task != "regression" or self.target is None:
            return out
        mean, std = self.target
        return (out * std + mean).astype(out.dtype, copy=False)

    def prepare(self, X: np.ndarray, y: np.ndarray, where: str = "") -> tuple[np.ndarray, np.ndarray]:
        """A block's scaled features and targets (packed with the weight column's values, where the
        run has one: a record array of ``t`` and ``w``)."""
        X, w = self.split_weight(X)
        return self.scaler.transform(X), self.pack(self.targets(y, where), w)

    def split_weight(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(features, weights)`` of rows read with the weight column after the features."""
        if self.weight is None or X.shape[1] == self.net.n_in:
            return X, None
        return np.ascontiguousarray(X[:, :self.net.n_in]), X[:, self.net.n_in].copy()

    @staticmethod
    def pack(T: np.ndarray, w: np.ndarray | None) -> np.ndarray:
        """Targets with their rows' weights, as one array the loader can slice into batches."""
        if w is None:
            return T
        packed = np.empty(len(T), dtype=[("t", T.dtype, T.shape[1:]), ("w", w.dtype)])
        packed["t"], packed["w"] = T, w
        return packed

    def loader_steps(self, config, where: str):
        """``(transform, scale, prepare)`` for the loader and the loop: the loader scales gathered rows
        in place where the scaling is standard (``scale``, a weight column left as it is) and
        ``transform`` makes targets; ``prepare`` runs per batch where scaling depends on it."""
        if config.scale == "batch-center":
            return None, None, (lambda X, y: self.prepare(X, y, where))
        scaler = self.scaler
        if scaler.kind == "standard" and scaler.mean is not None:
            mean, factor = scaler.mean, scaler.scale
            if self.weight is not None:
                mean, factor = np.append(mean, 0), np.append(factor, 1)

            def transform(X, y):
                X, w = self.split_weight(X)
                return X, self.pack(self.targets(y, where), w)
            return transform, (mean, factor), None
        return (lambda X, y: self.prepare(X, y, where)), None, None

    # -- using it --------------------------------------------------------------
    @property
    def generic_names(self) -> bool:
        """Whether the features bear no names of their own (f0, f1, ...: a 2-D array without
        names, arrays, partial_fit), so that any source of the same width may be matched."""
        return self.feature_names == [f"f{j}" for j in range(self.net.n_in)]

    def open_like_training(self, source, need_label: bool = True) -> Dataset:
        """Open ``source`` with the features of training, in whatever layout it stores them, and check
        they fit: the selection of training (the same dataset path, or the same columns), the
        feature names (another layout of the same columns), or, where the names are generic
        (f0, f1, ...), whatever features the source has if their number agrees. ``need_label``:
        evaluation needs the label (the training label's name, or one detected); prediction does not."""
        if isinstance(source, Dataset):
            return self._fits(source)
        labels = [self.label_name, None] if need_label else [False]
        tries = [self.feature_names]
        if isinstance(source, (str, os.PathLike)) and detect_format(source) == self.source_format:
            tries.insert(0, self.selection)
        # (last, the file's features found as the readers find them: by number where the names are
        # generic, else only where their names are the model's, as a matrix's attribute names them)
        tries.append(None)
        unlabelled = None
        for features in tries:
            # Found by itself, a label column must be told apart from the features, used or not.
            for label in (labels if features is not None else [self.label_name, None]):
                try:
                    ds = open_dataset(source, features, label, **self.read_options)
                except DataError:
                    continue
                if features is None and not self.generic_names and list(ds.feature_names) != self.feature_names:
                    ds.close()
                    continue
                ds.opened_by_model = True  # its selection is the model's own, not the user's
                if ds.n_features == self.net.n_in and (need_label is False or ds.label_name is not None):
                    return self._fits(ds)
                if ds.n_features == self.net.n_in:
                    unlabelled = ds.path
                ds.close()
        if unlabelled is not None:
            raise DataError(f"{unlabelled}: no label to evaluate against (the model's was {self.label_name!r}); "
                            "name the file's label column with --label, or write predictions of unlabelled data "
                            "with streamtrain predict")
        raise DataError(self._mismatch(source, need_label))

    def _fits(self, ds: Dataset) -> Dataset:
        weighted = self.weight is not None and list(ds.feature_names)[-1:] == [self.weight]
        if ds.n_features != self.net.n_in + weighted:
            raise DataError(f"{ds.path}: has {ds.n_features} features, the model expects {self.net.n_in}")
        if weighted:
            return ds
        generic = self.generic_names or list(ds.feature_names) == [f"f{j}" for j in range(ds.n_features)]
        if ds.format != "memory" and not generic and list(ds.feature_names) != self.feature_names:
            diff = next(f"{a!r} vs {b!r}" for a, b in zip(ds.feature_names, self.feature_names) if a != b)
            if not self._selected_by_user(ds):
                raise DataError(f"{ds.path}: feature names differ from the model's ({diff}); name the columns "
                                "to use with --features (in the model's order) to take them as its features")
            if not getattr(ds, "said_mapped", False):  # once per dataset, however often it is matched
                ds.said_mapped = True
                _LOG.warning(f"{ds.path}: the selected columns {_names(ds.feature_names)} are taken as the "
                             f"model's features {_names(self.feature_names)}, in that order")
        return ds

    @staticmethod
    def _selected_by_user(ds: Dataset) -> bool:
        """Whether ``ds``'s features were named when it was opened (``--features``, ``open_dataset(...,
        features=)``): the user's statement that these columns are the model's features."""
        if getattr(ds, "opened_by_model", False):
            return False
        return (getattr(ds, "reopen", None) or {}).get("features") is not None

    def _mismatch(self, source, need_label: bool) -> str:
        """Why ``source`` cannot be matched: what the model expects, what the file has, what selects it."""
        names = self.feature_names
        expects = f"{len(names)} features ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
        where = f"{source}" if isinstance(source, (str, os.PathLike)) else "<data>"
        try:
            with open_dataset(source, None, None, **self.read_options) as found:
                has = (f"{found.n_features} features ({', '.join(found.feature_names[:4])}"
                       f"{', ...' if found.n_features > 4 else ''})" + (f" in {found.selection!r}"
                                                                          if isinstance(found.selection, str) else ""))
                hint = (f"--features {found.selection}" if isinstance(found.selection, str)
                        else _columns_hint(found.feature_names, len(names)))
        except DataError as e:
            if self.encoding is not None:  # (the model reads its own columns: no --features fixes a file's lack)
                return str(e)
            has, hint = f"no features streamtrain finds by itself ({e})", "--features"
        label = f" and the label {self.label_name!r}" if need_label and self.label_name else ""
        return (f"{where}: the model expects {expects}{label}; the file has {has}; select them with {hint}"
                + (" (and --label)" if label else ""))

    def iter_outputs(self, source, progress=None) -> Iterator[tuple[Dataset, np.ndarray, np.ndarray | None]]:
        """Per chunk: the dataset, network outputs ``(rows, n_out)`` and raw labels (or None);
        ``progress(rows)`` hears of each chunk."""
        ds = self.open_like_training(source, need_label=False)
        self.outside = {}
        for X, y in ds.iter_chunks():
            self._count_outside(X)
            yield ds, self.in_target_units(self.net.predict_output(self.scaler.transform(self.split_weight(X)[0]))), y
            if progress is not None:
                progress(len(X))

    def evaluate(self, source, progress=None, comm=None) -> dict[str, Any]:
        """Loss and metrics over every row of ``source``, streamed.

        Parameters
        ----------
        source : path, Dataset, (X, y) arrays or table
            Data with the training features (in any layout) and a label.
        progress : callable, optional
            ``progress(rows)`` hears of each chunk.
        comm : Communicator, optional
            With several processes, each evaluates its share of the chunks; the metrics are summed.

        Returns
        -------
        dict
            ``loss`` and ``n``; accuracy, log loss, per-class precision / recall / F1 / support,
            their macro and weighted averages, the confusion matrix (and the ROC AUC for two
            classes); or MSE, MAE and R^2. ``rows_without_label`` and ``rows_nonfinite``: the rows
            left out for having no label, and for NaN or Inf in a feature (where the run skipped them).
        """
        ds = self.open_like_training(source, need_label=True)
        if ds.nonfinite == "error":  # (the advice for training's option would not apply here)
            ds.nonfinite = "refuse"
        part = (0, 1) if comm is None else (comm.rank, comm.size)
        if ds.label_name is None:
            raise DataError(f"{ds.path}: no label to evaluate against")
        acc = metrics_for(self.task, self.classes)
        self.outside = {}
        for X, y in ds.iter_chunks(part):
            self._count_outside(X)
            t = self.targets(y, ds.path)
            loss, output = self.net.loss_and_output(self.scaler.transform(self.split_weight(X)[0]), t)
            if self.task == "regression" and self.target is not None:  # metrics in the target's units
                t, output = self.labels.targets(y, ds.path), self.in_target_units(output)
            acc.update(loss, t, output)
            if progress is not None:
                progress(len(X))
        left_out = np.array(ds.rows_left_out(part), np.float64)  # (without a label, with NaN or Inf)
        if comm is not None:
            acc.reduce(comm)
            if comm.size > 1:
                self.outside = _summed(comm.allgather(self.outside))
                left_out = comm.allreduce(left_out)
        return {"path": ds.path, "task": self.task, **acc.result(), "outside_categories": dict(self.outside),
                "rows_without_label": int(left_out[0]), "rows_nonfinite": int(left_out[1])}

    #: The scaled features ``build`` found constant in all the rows trained on (their factor 0).
    ignored_constant: list[str] = []

    #: Per categorical column, the rows the last ``evaluate``, ``predict`` or ``write_predictions``
    #: read whose value was not among the categories training kept (read as its ``<other>``).
    outside: dict[str, int] = {}

    def _count_outside(self, X: np.ndarray) -> None:
        if self.encoding is not None:
            for name, n in self.encoding.outside_categories(X).items():
                self.outside[name] = self.outside.get(name, 0) + n

    def write_predictions(self, source, out: str | os.PathLike, overwrite: bool = False,
                          progress=None, inputs=()) -> dict[str, Any]:
        """Stream predictions for every row of ``source`` to ``out`` (.parquet, .h5, .zarr, .csv), chunk by
        chunk and atomically; ``out`` never replaces ``source`` or the other ``inputs``. Classification: columns ``p_<class>`` and ``prediction``; regression:
        ``prediction`` (or ``prediction_<j>`` for several outputs)."""
        from .io.writers import open_writer

        ds = self.open_like_training(source, need_label=False)
        ds.nonfinite = "refuse"  # (a row per row read: one the model's training skipped is an error here)
        if self.task == "regression":
            names = ["prediction"] if self.net.n_out == 1 else [f"prediction_{j}" for j in range(self.net.n_out)]
            label, label_dtype = None, None
        else:
            names = [f"p_{c}" for c in self.classes]
            label = "prediction"
            label_dtype = np.asarray(self.classes).dtype
        n = 0
        with open_writer(out, ds.n_rows, names, label, label_dtype, chunk_rows=int(ds.chunk_sizes.max()),
                         overwrite=overwrite, inputs=[ds.path, *inputs]) as w:
            for _, output, _ in self.iter_outputs(ds, progress):
                if self.task == "regression":
                    w.write(output.astype(np.float32), None)
                else:
                    proba = np.hstack([1 - output, output]) if self.task == "binary" else output
                    w.write(proba.astype(np.float32), self.labels.decode(proba.argmax(axis=1)))
                n += len(output)
            layout = w.layout()
        return {"path": os.fspath(out), "rows": n, "columns": names + ([label] if label else []), "layout": layout,
                "outside_categories": dict(self.outside)}

    def predict_proba(self, source) -> np.ndarray:
        """Class probabilities for every row of ``source`` (held in memory: for small data;
        ``write_predictions`` streams).

        Returns
        -------
        ndarray, shape (rows, n_classes)
        """
        out = np.concatenate([o for _, o, _ in self.iter_outputs(source)])
        return np.hstack([1 - out, out]) if self.task == "binary" else out

    def predict(self, source) -> np.ndarray:
        """Predictions for every row of ``source`` (features in any layout, no label needed; held in
        memory: for small data, ``write_predictions`` streams).

        Returns
        -------
        ndarray, shape (rows,) or (rows, n_outputs)
            The label's own values (classification), or the values (regression).
        """
        out = np.concatenate([o for _, o, _ in self.iter_outputs(source)])
        if self.task == "regression":
            return out[:, 0] if out.shape[1] == 1 else out
        idx = (out[:, 0] > 0.5).astype(int) if self.task == "binary" else out.argmax(axis=1)
        return self.labels.decode(idx)

    # -- as a checkpoint holds it ----------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """Parameters and scaling statistics, by checkpoint name."""
        arrays = {f"param.{k}": v for k, v in self.net.params.items()}
        arrays.update({f"scaler.{k}": v for k, v in self.scaler.state().items() if k != "kind"})
        if self.target is not None:
            arrays["target.mean"], arrays["target.std"] = self.target
        return arrays

    def meta(self) -> dict[str, Any]:
        return {**self.net.config(), "classes": self.classes, "feature_names": self.feature_names,
                "selection": self.selection, "label": self.label_name, "scale": self.scaler.kind,
                "source_format": self.source_format, "weight": self.weight, "class_weights": self.class_weights,
                "encoding": None if self.encoding is None else self.encoding.state_dict()}

    @classmethod
    def from_checkpoint(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any], config) -> "Model":
        """The model of a (validated) checkpoint."""
        encoding = None if meta.get("encoding") is None else Encoding.from_state(meta["encoding"])
        net = TwoLayerNet(meta["n_in"], meta["hidden"], meta["n_out"], meta["activation"], meta["task"], meta["init"],
                          dtype=meta["dtype"], layout=_layout(encoding, meta["dtype"], "checkpoint"))
        for k in PARAM_NAMES:
            net.params[k] = np.array(arrays[f"param.{k}"])
        scaler = Scaler(meta["scale"], arrays.get("scaler.mean"), arrays.get("scaler.scale"), meta["dtype"])
        model = cls(net, scaler, Labels(meta["task"], meta["classes"], meta["n_out"]), meta["feature_names"],
                    meta["selection"], meta["label"], meta.get("source_format"),
                    "skip" if config.skip_nonfinite else "error", config.allow_missing_chunks, meta.get("weight"),
                    meta.get("class_weights"))
        model.encoding = encoding
        if "target.mean" in arrays:
            model.target = (np.array(arrays["target.mean"], np.float64), np.array(arrays["target.std"], np.float64))
        return model


def _layout(encoding, dtype, where: str) -> InputLayout | None:
    """How the encoding's gathered columns (codes) meet the first layer, or None."""
    parts = None if encoding is None else encoding.layout()
    if parts is None:
        return None
    layout = InputLayout(*parts)
    if np.dtype(dtype) == np.float32 and layout.sizes.max() > 1 << 24:  # codes beyond are not exact in float32
        raise ConfigError(f"{where}: a column of {int(layout.sizes.max()):,} codes needs --dtype float64 "
                          "(float32 holds integers exactly up to 16,777,216)")
    return layout


def check_memory(rows: int, config, where: str) -> None:
    """Refuse, before anything is allocated, a first layer of ``rows`` rows whose weights and the
    copies training keeps (the optimiser's state, the best epoch's, a checkpoint's) would not fit
    in the memory available, naming what shrinks it."""
    from .data.decoder import available_memory
    from .nn.optim import OPTIMIZERS

    free = available_memory()
    shapes = {"W1": (rows, config.hidden)}
    state = OPTIMIZERS[config.optimizer].state(shapes, config.dtype) if config.optimizer in OPTIMIZERS else {}
    if config.optimizer == "sgd" and not (config.l2 and not config.l1 and not config.dense_updates):
        state = {}  # (plain SGD keeps a raw table only for its lazy L2 decay)
    copies = 3 + sum(1 for k in state if k.endswith("W1"))  # weights, best, checkpoint; + state
    need = rows * config.hidden * np.dtype(config.dtype).itemsize * copies
    need += sum(rows * np.dtype(d).itemsize for k, (d, shape) in state.items() if shape == (rows,))  # per row (stamps)
    if free is not None and need > free:
        raise ConfigError(f"{where}: the first layer's {rows:,} rows x {config.hidden} weights need "
                          f"{need / 2**30:.1f} GiB with what training keeps of them ({copies} copies: the "
                          f"optimiser's state, the best epoch's, a checkpoint's), more than the {free / 2**30:.1f} "
                          "GiB available; fewer rows: --hash-buckets, --max-categories, --hash COL:BUCKETS, "
                          "or a smaller --hidden")


def _names(names: list[str]) -> str:
    """A list of names in a line: all of a few, the first and last of many."""
    names = list(names)
    return ", ".join(map(repr, names)) if len(names) <= 4 else f"{names[0]!r} ... {names[-1]!r} ({len(names)})"


def _columns_hint(found: list[str], wanted: int) -> str:
    """The ``--features`` that selects ``wanted`` columns of a file whose features are ``found``:
    a glob where their names share a prefix, else one option per column (in the model's order)."""
    import shlex

    found = list(found)
    prefix = os.path.commonprefix(found[:wanted]) if len(found) >= wanted else ""
    if prefix and len(found) >= wanted and sum(f.startswith(prefix) for f in found) == wanted:
        return f"--features {shlex.quote(prefix + '*')} (the file's columns in that order must be the model's)"
    return f"--features NAME for each of the model's {wanted} features, in its order"


def _summed(counts: list[dict[str, int]]) -> dict[str, int]:
    """Per-name counts added up, in the order names first appear."""
    total: dict[str, int] = {}
    for one in counts:
        for name, n in one.items():
            total[name] = total.get(name, 0) + n
    return total
