"""Learning an :class:`~.encoding.Encoding` in one pass over a table: which columns need one,
what each column's pass counts (missing values, means, a bounded vocabulary and a distinct-count
sketch), and the decisions taken from it (categorical, hashed, or left out)."""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, DataError
from .distinct import DistinctCount
from .encoding import (MAX_LABEL_CLASSES, Encoding, EncodingOptions, _Cross, _Label, _Numeric, _numbers, _OneHot,
                       _Vector)
from .hashing import hash64, null_mask
from .kinds import kind_of
from .schema import ColumnPlan, choose_string_kind, identifier_like, infer_columns, is_text, option_value, type_text
from .vocab import Vocabulary

__all__ = ["learn_encoding", "needs_encoding", "identifier_notes", "VOCAB_CAPACITY"]

_T = pa.types
#: The distinct values a vocabulary counts exactly before it turns to a heavy-hitters summary.
VOCAB_CAPACITY = 100_000


def needs_encoding(schema: pa.Schema, features: list[str], label: str | None,
                   null_counts: Callable[[str], int | None]) -> bool:
    """Whether a table's chosen columns need more than a cast to float: a type that is not a plain
    number, or missing values (``null_counts(name)``: from the file's statistics, None unknown)."""
    for name in features + ([label] if label else []):
        t = schema.field(name).type
        plain = _T.is_integer(t) or _T.is_floating(t) or _T.is_boolean(t)
        vector = _T.is_fixed_size_list(t) and (_T.is_integer(t.value_type) or _T.is_floating(t.value_type))
        if not (plain or vector) or null_counts(name) != 0:
            return True
    return False


class SharedPass(NamedTuple):
    """Several processes share the pass: this one reads chunks ``rank``, ``rank + size``, ...;
    ``allgather(value)`` gives every process's JSON-able ``value``, by rank."""

    rank: int
    size: int
    allgather: Callable[[Any], list]


_shared: SharedPass | None = None


@contextmanager
def shared_pass(rank: int, size: int, allgather: Callable[[Any], list]):
    """Within it, an encoding learned over a reader that can split its chunks is learned by the
    ``size`` processes together (each reads its share; their counts merged in rank order), the
    same encoding on each, equal to one process's."""
    global _shared
    before, _shared = _shared, (SharedPass(rank, size, allgather) if size > 1 else None)
    try:
        yield
    finally:
        _shared = before


class _Beside:
    """The pass's work on a second core, where there is one: the next chunk read while this one is
    counted (``ahead``), and a chunk's columns counted two at a time (``each``). Each column's
    state is touched by one thread at a time, in chunk order: the result is the one thread's."""

    def __init__(self, wanted: bool):
        import os

        self._pool = None
        if wanted and (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(2, thread_name_prefix="streamtrain-pass")

    def __enter__(self) -> _Beside:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def ahead(self, items: Iterable):
        """``items``, the next one made on the other thread while the caller works on this one."""
        if self._pool is None:
            yield from items
            return
        it = iter(items)
        _end = object()
        coming = self._pool.submit(next, it, _end)
        while True:
            item = coming.result()
            if item is _end:
                return
            coming = self._pool.submit(next, it, _end)
            yield item

    def each(self, work: Callable, items: Iterable) -> None:
        """``work(item)`` for every item, two at a time (errors raised as the loop's would be)."""
        if self._pool is None:
            for item in items:
                work(item)
            return
        for f in [self._pool.submit(work, item) for item in items]:
            f.result()


class _Pass:
    """What the one pass over the data accumulates for one column: for a categorical column its
    values (non-null), a distinct-count sketch and a vocabulary, which is given up as soon as the
    column has more than ``vocab_upto`` distinct values (it will be hashed: counting its values,
    most of the pass over a click log, would be for nothing; None: kept, as for a column the user
    declared categorical; -1: never counted, every column being hashed)."""

    def __init__(self, plan: ColumnPlan, count_values: bool, vocab_upto: int | None = None):
        self.plan = plan
        self.sums: dict[int, float] = {}  # per chunk: summed in chunk order, however the pass was shared
        self.count = self.nulls = self.values = 0
        self.vocab_upto = vocab_upto
        self.vocab = Vocabulary(VOCAB_CAPACITY) if count_values and (vocab_upto is None or vocab_upto >= 0) else None
        self.distinct = DistinctCount() if count_values else None
        self.number_share: float | None = None  # (text: the share of its first values that are numbers)
        self.zero_led = False  # (text: whether any of those is written with a leading zero, as zip codes are)

    def update(self, col, chunk: int) -> None:
        gone = null_mask(col)
        v = None
        if self.distinct is None and self.plan.kind in ("numeric", "datetime") and is_text(col.type):
            v = _numbers(col)  # (numbers written as text: one that is not a number is missing)
            gone = gone | np.isnan(v)
        missing = int(gone.sum())
        self.nulls += missing
        if self.distinct is not None:
            if self.number_share is None and is_text(col.type) and len(col) > missing:
                parsed = ~np.isnan(_numbers(col[:4096]))  # (a CSV's numbers with a few "?" among them)
                self.number_share = float(parsed.sum() / max(1, len(parsed) - int(gone[:4096].sum())))
                self.zero_led = bool(pc.any(pc.match_substring_regex(col[:4096].cast(pa.string()),
                                                                     r"^\s*[+-]?0\d")).as_py())
            if self.vocab is not None:
                self.vocab.update(col)
            self.distinct.update(col)
            self.values += len(col) - missing
            self._beyond_vocabulary()
        elif self.plan.kind in ("numeric", "datetime"):
            v = _numbers(col) if v is None else v
            ok = ~gone & np.isfinite(v)
            self.sums[chunk] = float(v[ok].sum())
            self.count += int(ok.sum())

    @property
    def mean(self) -> float:
        total = 0.0
        for k in sorted(self.sums):
            total += self.sums[k]
        return total / self.count if self.count else 0.0

    def _beyond_vocabulary(self) -> None:
        """Give the vocabulary up once the column cannot be categorical: more distinct values than
        ``vocab_upto`` as the decision counts them (``choose_string_kind``: the sketch's estimate,
        at most the values seen). Both only grow with more values: the estimate is exact below
        the sketch's ``k``, at least ``k - 1`` when it turns to an estimate, and above, its k-th
        smallest hash only falls."""
        d, limit = self.distinct, self.vocab_upto
        if self.vocab is not None and limit is not None and min(d.estimate(), self.values) > limit:
            self.vocab = None

    def state(self) -> dict:
        return {"sums": [[k, v] for k, v in self.sums.items()], "count": self.count, "nulls": self.nulls,
                "values": self.values, "vocab": None if self.vocab is None else self.vocab.state_dict(),
                "distinct": None if self.distinct is None else [int(h) for h in self.distinct._mins]}

    def merge(self, state: dict) -> None:
        """Add another process's share (its :meth:`state`)."""
        self.sums.update({int(k): float(v) for k, v in state["sums"]})
        self.count += state["count"]
        self.nulls += state["nulls"]
        self.values += state["values"]
        if self.distinct is not None:
            self.distinct._absorb(np.array(state["distinct"], np.uint64))
            if state["vocab"] is None:  # beyond a vocabulary in that share: in the whole too
                self.vocab = None
            elif self.vocab is not None:
                self.vocab.merge(Vocabulary.from_state(state["vocab"]))
            self._beyond_vocabulary()


def _seen(plan: ColumnPlan, acc: _Pass | None, nulls: int | None = None, rows: int = 0) -> str:
    """The column's stored type, and what the pass counted of it (missing values, distinct values);
    for a column the pass did not read, the missing values the file's statistics record (``nulls``,
    of ``rows`` where the pass counted them)."""
    text = type_text(plan.arrow_type)
    if acc is None and nulls is not None:
        text += ", none missing" if not nulls else f", {nulls:,} missing" + (f" of {rows:,}" if rows else "")
    if acc is not None:
        seen = acc.count + acc.nulls if acc.distinct is None else acc.values + acc.nulls
        text += f", {acc.nulls:,} missing of {seen:,}" if acc.nulls else ", none missing"
        if acc.distinct is not None:
            text += f", {'' if acc.distinct.exact else '~'}{acc.distinct.estimate():,} distinct"
    return text + _numbers_hint(plan, acc)


def _numbers_hint(plan: ColumnPlan, acc: _Pass | None) -> str:
    """Where a text column's values are mostly numbers: how to read them as numbers."""
    if acc is None or acc.number_share is None or acc.number_share < 0.9:
        return ""
    if acc.zero_led:  # (a code written with digits: text is what keeps it whole)
        return (f" (numbers with leading zeros, as codes are written: kept as text; --numeric "
                f"{option_value(plan.name)} reads them as numbers)")
    return (f" ({acc.number_share:.0%} of its first values are numbers: --numeric {option_value(plan.name)} "
            "reads them so, the others as missing)")


def _in_shared_table(name: str, options: EncodingOptions) -> _OneHot:
    """A column hashed into the table every such column shares, with a salt of its own (its name's
    hash: the same value in two columns selects two rows)."""
    salt = int(hash64(pa.array([name]))[0])
    return _OneHot(name, buckets=1 << options.hash_bits, shared=True, salt=salt)


def learn_encoding(schema: pa.Schema, features: list[str], label: str | None,
                   tables: Callable[[list[str]], Iterable[pa.Table]], options: EncodingOptions, where: str,
                   null_counts: Callable[[str], int | None] = lambda name: None) -> Encoding:
    """Learn an encoding in one pass over the data.

    Parameters
    ----------
    schema : pyarrow.Schema
        The table's columns.
    features : list of str
        The candidate feature columns (every column but the label and partition keys, or the
        user's), in order.
    label : str or None
    tables : callable
        ``tables(columns)`` yields the data's chunks as Arrow tables of those columns, in order.
    options : EncodingOptions
    where : str
        The data's name, for messages.
    null_counts : callable
        A column's missing values as the file's statistics record them (None: unknown); a
        numeric column known to have none is not read in the pass.

    Returns
    -------
    Encoding
    """
    sub = pa.schema([schema.field(n) for n in features])
    for key, cols in options.overrides.items():  # (infer_columns knows the features alone: "no column" would puzzle)
        if not isinstance(cols, (list, tuple, dict)):  # (a malformed value: infer_columns says what it should be)
            continue
        named = [c for c in cols if c not in features and c in schema.names]
        if named:
            what = "the label" if named[0] == label else "not among the features (--features names them)"
            raise ConfigError(f"{where}: --{key} {named[0]}: that column is {what}")
    try:
        plans = infer_columns(sub, {k: v for k, v in options.overrides.items() if v} or None)
    except ConfigError as e:  # (the file it is about)
        raise ConfigError(f"{where}: {e}") from None
    numbers = set(options.overrides.get("numeric") or [])  # (the user's own word: no note)
    whole = [p.name for p in plans if p.kind == "numeric" and _T.is_integer(p.arrow_type) and p.name not in numbers]
    passes: dict[str, _Pass] = {}
    declared = set(options.overrides.get("categorical") or [])
    for p in plans:
        if p.kind == "categorical" or (p.kind == "hashed" and p.buckets is None):
            # (a vocabulary only for a column that may be categorical: every one hashed with --hash-bits)
            upto = -1 if options.hash_bits is not None else None if p.name in declared else options.max_categories
            passes[p.name] = _Pass(p, True, upto)
        elif p.kind == "datetime" or (p.kind == "numeric" and not _T.is_fixed_size_list(p.arrow_type)
                                      and (null_counts(p.name) != 0 or is_text(p.arrow_type))):
            passes[p.name] = _Pass(p, count_values=False)
    label_type = schema.field(label).type if label else None
    # (a boolean label is a class label too: its classes False and True, as the user wrote them)
    class_label = label_type is not None and not (_T.is_integer(label_type) or _T.is_floating(label_type)
                                                  or _T.is_decimal(label_type))
    label_vocab = Vocabulary(MAX_LABEL_CLASSES + 1) if class_label else None
    if class_label:
        try:
            kind_of(label_type)
        except DataError:
            raise DataError(f"{where}: label {label!r} is of type {label_type}, neither numbers nor classes "
                            "(strings, categories, bools)") from None
    rows = 0
    keys = list(passes) + ([label] if class_label else [])
    share = _shared if _shared is not None and "part" in inspect.signature(tables).parameters else None
    # (the first chunk's whole numbers, read once more, by the first process alone: it says what it notes)
    notes = identifier_notes(whole, tables) if share is None or share.rank == 0 else {}
    too_many = DataError(f"{where}: label {label!r} has more than {MAX_LABEL_CLASSES} distinct values: "
                         "too many classes (a numeric target trains with --task regression)")
    if keys:
        chunks = tables(keys, part=(share.rank, share.size)) if share else enumerate(tables(keys))
        with _Beside(len(passes) > 1) as beside:
            for i, table in beside.ahead(chunks):
                rows += table.num_rows
                # (each column's pass is its own: hashing, sorting and Arrow's counts release the GIL)
                beside.each(lambda item: item[1].update(table.column(item[0]), i), passes.items())
                if label_vocab is not None:
                    label_vocab.update(table.column(label))
                    if len(label_vocab) > MAX_LABEL_CLASSES or not label_vocab.exact:
                        raise too_many
    if share is not None:  # every process's share, merged in rank order: the same on each
        mine = {"rows": rows, "passes": {k: a.state() for k, a in passes.items()},
                "label": None if label_vocab is None else label_vocab.state_dict()}
        everyone = share.allgather(mine)
        rows = sum(s["rows"] for s in everyone)
        passes = {k: _Pass(a.plan, a.distinct is not None, a.vocab_upto) for k, a in passes.items()}
        label_vocab = Vocabulary(MAX_LABEL_CLASSES + 1) if class_label else None
        for s in everyone:
            for k, acc in passes.items():
                acc.merge(s["passes"][k])
            if label_vocab is not None:
                label_vocab.merge(Vocabulary.from_state(s["label"]))
        if label_vocab is not None and (len(label_vocab) > MAX_LABEL_CLASSES or not label_vocab.exact):
            raise too_many
    columns, left = [], []
    for p in plans:
        acc = passes.get(p.name)
        n_before = len(columns)
        if p.kind == "unusable":
            left.append((p.name, p.reason))
        elif p.kind in ("numeric", "datetime"):
            if _T.is_fixed_size_list(p.arrow_type):
                columns.append(_Vector(p.name, p.arrow_type.list_size))
                continue
            if is_text(p.arrow_type) and acc is not None and not acc.count and rows:
                raise ConfigError(f"{where}: --numeric {p.name}: no value of column {p.name!r} "
                                  f"({type_text(p.arrow_type)}) is a number (--categorical or --hash take text)")
            if acc is not None and acc.nulls and options.missing == "error":
                raise DataError(f"{where}: column {p.name!r} has {acc.nulls:,} missing values "
                                "(--missing impute fills them with the column's mean)")
            mean = acc.mean if acc is not None else 0.0
            parts = tuple(dict.fromkeys(options.date_parts.get(p.name, ())))
            if parts and p.kind != "datetime":
                raise ConfigError(f"{where}: --date-parts {p.name}: the column is {type_text(p.arrow_type)}, which "
                                  "has no date parts")
            if "hour" in parts and _T.is_date(p.arrow_type):  # (a bare --date-parts COL asks for all three)
                rest = "+".join(x for x in parts if x != "hour") or "weekday+month"
                raise ConfigError(f"{where}: --date-parts {p.name}: the column is {type_text(p.arrow_type)}, a date "
                                  "with no time of day, so no hour; ask for its other parts: "
                                  f"--date-parts {p.name}:{rest}")
            zone = getattr(p.arrow_type, "tz", None) if parts and _T.is_timestamp(p.arrow_type) else None
            columns.append(_Numeric(p.name, p.kind, mean if p.kind == "datetime" else 0.0, mean,
                                    bool(acc is not None and acc.nulls), options.missing, parts, zone,
                                    is_text(p.arrow_type)))
        elif p.kind == "hashed" and p.buckets is not None and options.hash_bits is None:
            columns.append(_OneHot(p.name, buckets=p.buckets, gather=p.buckets + 1 > options.one_hot_max))
        elif p.kind == "hashed" and p.buckets is not None:
            columns.append(_in_shared_table(p.name, options))
        else:  # categorical, or a string/dictionary decided here by its cardinality
            overridden = p.name in declared
            seen = acc.values
            choice = choose_string_kind(acc.distinct.estimate(), seen, options.max_categories)
            if options.hash_bits is not None and (overridden or choice.kind in ("categorical", "hashed")):
                columns.append(_in_shared_table(p.name, options))
            elif overridden or choice.kind == "categorical":
                cats = acc.vocab.finalize(options.max_categories, options.min_frequency)
                columns.append(_OneHot(p.name, cats=cats, gather=1 + cats.oov_buckets + len(cats) > options.one_hot_max))
            elif choice.kind == "hashed":
                columns.append(_OneHot(p.name, buckets=options.hash_buckets,
                                       gather=options.hash_buckets + 1 > options.one_hot_max))
            else:
                approx = "" if acc.distinct.exact else "~"
                left.append((p.name, f"{type_text(p.arrow_type)}: {approx}{choice.reason}{_numbers_hint(p, acc)}"))
        if len(columns) > n_before:
            columns[-1].seen = _seen(p, acc, null_counts(p.name) if acc is None else None, rows) + (
                f" ({notes[p.name]})" if p.name in notes else "")
            if p.kind == "datetime":  # (which seconds: since the epoch, since midnight, of a duration)
                columns[-1].reads = p.reason.split(": ", 1)[-1]
    kinds = {c.name: c.kind for c in columns}
    for a, b in options.crosses:
        bad = next((k for k in (a, b) if kinds.get(k) not in ("categorical", "hashed")), None)
        if bad is not None:
            what = "no feature column" if bad not in kinds else f"a {kinds[bad]} column"
            raise ConfigError(f"{where}: --cross {a}:{b}: {bad!r} is {what}; a cross pairs two categorical columns")
        if options.hash_bits is not None:
            columns.append(_Cross(a, b, 1 << options.hash_bits, shared=True))
        else:
            columns.append(_Cross(a, b, options.hash_buckets, gather=options.hash_buckets + 1 > options.one_hot_max))
    planned = {p.name: p for p in plans}
    unknown = [c for c in options.date_parts if c not in planned]
    if unknown:
        raise ConfigError(f"{where}: --date-parts {unknown[0]}: no such feature column")
    for name in options.date_parts:  # (numbers and times were checked above; the rest never are)
        if planned[name].kind not in ("numeric", "datetime"):
            raise ConfigError(f"{where}: --date-parts {name}: the column is {type_text(planned[name].arrow_type)}, "
                              "which has no date parts")
    if not columns:
        raise DataError(f"{where}: no column can be used as a feature ("
                        + "; ".join(f"{n}: {why}" for n, why in left[:4]) + ")")
    label_enc = None
    if label_vocab is not None:
        values = label_vocab.finalize().values
        if not len(values):
            raise DataError(f"{where}: no rows" if not rows else
                            f"{where}: label {label!r} has no values (every row's is missing)")
        label_enc = _Label(label, _given_classes(values, options.classes, label, where) if options.classes
                           else values.take(pc.sort_indices(values)))
    encoding = Encoding(columns, label_enc, label, left, rows)
    encoding.notes = list(notes.items())
    if label_enc is not None and not options.classes:
        twins = _case_twins(label_enc.classes)
        if twins:
            encoding.notes.append((label, f"(the label) has classes that differ only in case or spaces, each a class "
                                          f"of its own: {'; '.join(', '.join(map(repr, t)) for t in twins[:3])}"
                                          f"{'; ...' if len(twins) > 3 else ''} (write them alike to make them one)"))
    return encoding


def _case_twins(classes) -> list[list[str]]:
    """Groups of text classes that are one value but for case or surrounding spaces ("Yes", "yes ")."""
    groups: dict[str, list[str]] = {}
    for c in classes:
        if isinstance(c, str):
            groups.setdefault(c.strip().casefold(), []).append(c)
    return [g for g in groups.values() if len(g) > 1]


#: The values of a column of whole numbers looked at for an identifier's pattern (its first chunk's).
ID_LOOK = 4096


def identifier_notes(names: list[str], tables) -> dict[str, str]:
    """Of ``names`` (columns of whole numbers), those whose first values look like an identifier's
    (``identifier_like``), each with a note saying so and how to leave it out."""
    if not names:
        return {}
    chunks = tables(names)
    try:
        first = next(iter(chunks), None)
    finally:
        if hasattr(chunks, "close"):
            chunks.close()
    out = {}
    for name in names if first is not None else ():
        why = identifier_like(name, first.column(name)[:ID_LOOK].drop_null().to_numpy())
        if why is not None:
            out[name] = (f"looks like an identifier, which is no number to learn from: {why}; "
                         f"--drop {option_value(name)} leaves it out (--numeric {option_value(name)} keeps it, "
                         "as a time in whole seconds would be, without this note)")
    return out


def _given_classes(seen: pa.Array, given: list[str], label: str, where: str) -> pa.Array:
    """``--classes`` as the label's values, in their order; every value seen must be one of them."""
    try:
        classes = pc.cast(pa.array(given, pa.string()), seen.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise DataError(f"{where}: --classes {','.join(given)}: not values of label {label!r} ({type_text(seen.type)}: "
                        f"{str(e).splitlines()[0]})") from None
    outside = [v for v in seen.to_pylist() if v not in set(classes.to_pylist())]
    if outside:
        raise DataError(f"{where}: label {label!r} holds {outside[0]!r}, which is not one of --classes "
                        f"{','.join(given)} (add it, or leave --classes out to take the label's values)")
    return classes
