"""What an HDF5 file holds, found without reading rows: its datasets and tables (the compound
datasets PyTables and pandas ``to_hdf(format="table")`` write) and a table's columns, whether a
dataset is safe to read (no storage outside the file unless allowed) and fully written, its
filters, and where its rows lie in the file's bytes. ``hdf5.HDF5Dataset`` reads through these."""

from __future__ import annotations

import os
import re

import numpy as np

from ..errors import DataError
from .arrow_columns import Spec, is_plain
from .columns import Column, vector_columns

__all__ = ["find_datasets", "check_safe", "check_written", "table_columns", "compression", "locate"]

# The most categories read for one pandas categorical column (its categories table).
MAX_CATEGORIES = 1 << 24

# Where pandas keeps a categorical column's categories: a table of its own, not data.
_PANDAS_META = re.compile(r"(^|/)meta/[^/]+/meta/table$")


def _pandas_names(raw) -> list[str] | None:
    """A block's column names, as pandas keeps them beside its table (a pickled list of text,
    read by ``plain_pickle``), or None."""
    names = plain_pickle(raw.encode() if isinstance(raw, str) else raw)
    return names if isinstance(names, list) and names and all(isinstance(n, str) for n in names) else None


def _links(f) -> dict[str, object]:
    """Every dataset of the open file ``f`` by name, and every external link (not followed)."""
    import h5py

    found: dict[str, object] = {}

    def visit(name, link):
        if isinstance(link, (h5py.ExternalLink,)):
            found[name] = link
        elif isinstance(link, h5py.HardLink):
            obj = f.get(name)
            if isinstance(obj, h5py.Dataset):
                found[name] = obj

    f.visititems_links(visit) if hasattr(f, "visititems_links") else f.visititems(
        lambda n, o: found.__setitem__(n, o) if isinstance(o, h5py.Dataset) else None)
    return found


def find_datasets(f, path: str, allow_external: bool) -> tuple[dict[str, object], list[str]]:
    """``(datasets by name, the names of the tables among them)`` of the open file ``f``; an
    external link to another file is refused unless ``allow_external`` (then h5py follows it)."""
    import h5py

    found = _links(f)
    for name, obj in found.items():
        if not hasattr(obj, "shape") and not allow_external:
            raise DataError(f"{path}: {name!r} is an external link to another file; refused "
                            "(pass allow_external=True if you trust it)")
    dsets = {k: (v if hasattr(v, "shape") else f.get(k)) for k, v in found.items()}
    dsets = {k: v for k, v in dsets.items() if isinstance(v, h5py.Dataset)}
    tables = [k for k, v in dsets.items() if v.dtype.names and v.ndim == 1 and not _PANDAS_META.search(k)]
    return dsets, tables


def check_safe(dset, path: str, allow_external: bool) -> None:
    """Refuse data stored outside the file unless explicitly allowed."""
    if allow_external:
        return
    if dset.external:
        raise DataError(f"{path}: dataset {dset.name!r} uses external storage; "
                        "refused (pass allow_external=True if you trust it)")
    if dset.is_virtual and any(src.file_name != "." for src in dset.virtual_sources()):
        raise DataError(f"{path}: dataset {dset.name!r} is a virtual dataset pointing to other files; "
                        "refused (pass allow_external=True if you trust it)")


def check_written(d, path: str, allow_missing: bool) -> None:
    """Refuse a dataset with chunks (or contiguous storage) never written: HDF5 reads them as
    fill values, which would be trained on as data (``allow_missing`` accepts that)."""
    if allow_missing or d.shape[0] == 0 or d.is_virtual or d.external:
        return
    try:
        if d.chunks is None:
            missing, total = (1, 1) if d.id.get_offset() is None else (0, 1)
        else:
            total = int(np.prod([-(-n // c) for n, c in zip(d.shape, d.chunks)], dtype=object))
            missing = total - d.id.get_num_chunks()
    except (AttributeError, OSError, RuntimeError):  # an old HDF5 library without the query
        return
    if missing > 0:
        what = "its storage was" if d.chunks is None else f"{missing} of its {total} chunks were"
        raise DataError(f"{path}: dataset {d.name!r} has {d.shape[0]} rows, but {what} never written "
                        "(HDF5 would read fill values); pass --allow-missing-chunks to train on them")


def table_columns(T) -> tuple[list[Column], dict[str, Spec]]:
    """The columns of table ``T``, a vector field's elements named as pandas named them (its
    index, which pandas adds, left out), and what each field means (:class:`Spec`, by field):
    pandas' attributes mark strings with their text for missing values, categorical codes (their
    categories in the file beside the table) and timestamps."""
    columns: list[Column] = []
    specs: dict[str, Spec] = {}
    for field in T.dtype.names:
        sub = T.dtype.fields[field][0]
        if field == "index" and T.attrs.get("index_kind") is not None:
            continue  # the pandas index, not data
        specs[field] = spec = _pandas_spec(T, field)
        width = sub.shape[0] if sub.shape else None
        names = _pandas_names(T.attrs.get(f"{field}_kind", b"")) if width else None
        kind = {"category": "category", "datetime": "timestamp"}.get(spec.kind, str(sub.base))
        columns += vector_columns(field, width, is_plain(spec, sub.base), names, type=kind)
    order = _pandas_order(T)
    if order:  # pandas groups columns in blocks by type: put them back in the frame's order
        rank = {n: k for k, n in enumerate(order)}
        columns.sort(key=lambda c: rank.get(c.name, len(rank)))
    return columns, specs


def _pandas_order(T) -> list[str] | None:
    """The frame's column order that pandas keeps beside a table (``[(1, [names...])]``, pickled,
    read by ``plain_pickle``), or None."""
    axes = plain_pickle(T.parent.attrs.get("non_index_axes")) if T.parent is not None else None
    if not (isinstance(axes, list) and len(axes) == 1 and isinstance(axes[0], tuple) and len(axes[0]) == 2
            and axes[0][0] == 1 and isinstance(axes[0][1], list) and all(isinstance(n, str) for n in axes[0][1])):
        return None
    return axes[0][1]


def _pandas_zone(T, field: str) -> str | None:
    """The time zone pandas kept for timestamp field ``field`` of table ``T`` (in the ``info``
    beside it: ``{field: {"tz": zone}}``, pickled, read by ``plain_pickle``), or None."""
    info = plain_pickle(T.parent.attrs.get("info")) if T.parent is not None else None
    entry = info.get(field) if isinstance(info, dict) else None
    zone = entry.get("tz") if isinstance(entry, dict) else None
    return zone if isinstance(zone, str) and zone else None


#: The opcodes ``plain_pickle`` follows: those that make dicts, lists, tuples, text, numbers and
#: None, and the memo; any other (a class, a call) and it gives up.
_PLAIN_OPS = {"PROTO", "FRAME", "STOP", "MARK", "DICT", "EMPTY_DICT", "LIST", "EMPTY_LIST", "TUPLE", "EMPTY_TUPLE",
              "TUPLE1", "TUPLE2", "TUPLE3", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "STRING", "BINSTRING",
              "SHORT_BINSTRING", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "FLOAT", "BINFLOAT", "NONE",
              "NEWTRUE", "NEWFALSE", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET",
              "SETITEM", "SETITEMS", "APPEND", "APPENDS"}


def plain_pickle(raw) -> object | None:
    """The value of a pickle that holds only dicts, lists, tuples, text, numbers and None (as
    pandas' table attributes are), read from its opcodes (``pickletools.genops``, which runs
    nothing); None for anything else or anything malformed. Never ``pickle.loads``."""
    import pickletools

    if isinstance(raw, (np.bytes_, np.void)):
        raw = bytes(raw)
    if not isinstance(raw, bytes) or len(raw) > 1 << 20:
        return None
    stack: list = []
    marks: list[int] = []
    memo: dict = {}
    try:
        for op, arg, _ in pickletools.genops(raw):
            name = op.name
            if name not in _PLAIN_OPS:
                return None
            if name == "MARK":
                marks.append(len(stack))
            elif name in ("DICT", "LIST", "TUPLE"):
                k = marks.pop()
                items, stack[k:] = stack[k:], []
                stack.append(dict(zip(items[::2], items[1::2])) if name == "DICT" else
                             list(items) if name == "LIST" else tuple(items))
            elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE"):
                stack.append({} if name == "EMPTY_DICT" else [] if name == "EMPTY_LIST" else ())
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items, stack[-n:] = stack[-n:], []
                stack.append(tuple(items))
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name == "SETITEM":
                value, key = stack.pop(), stack.pop()
                stack[-1][key] = value
            elif name == "SETITEMS":
                k = marks.pop()
                items, stack[k:] = stack[k:], []
                stack[-1].update(zip(items[::2], items[1::2]))
            elif name == "APPEND":
                value = stack.pop()
                stack[-1].append(value)
            elif name == "APPENDS":
                k = marks.pop()
                items, stack[k:] = stack[k:], []
                stack[-1].extend(items)
            elif name == "NONE":
                stack.append(None)
            elif name in ("NEWTRUE", "NEWFALSE"):
                stack.append(name == "NEWTRUE")
            elif name == "STOP":
                return stack[-1] if len(stack) == 1 else None
            elif name not in ("PROTO", "FRAME"):
                stack.append(arg.decode("utf-8", "replace") if isinstance(arg, bytes) else arg)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return None


def _text_attr(value) -> str | None:
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _pandas_spec(T, field: str) -> Spec:
    """What pandas' attributes say field ``field`` of table ``T`` holds (a plain Spec if nothing)."""
    meta = _text_attr(T.attrs.get(f"{field}_meta"))
    dtype = _text_attr(T.attrs.get(f"{field}_dtype")) or ""
    cats = _categories(T, field) if meta == "category" else None
    if cats is not None:
        return Spec("category", categories=cats)
    if dtype.startswith("datetime64"):
        unit = dtype[len("datetime64["):-1] if dtype.endswith("]") else "ns"
        return Spec("datetime", unit=unit if unit in ("s", "ms", "us", "ns") else "ns", tz=_pandas_zone(T, field))
    if T.dtype.fields[field][0].base.kind in "SUO":
        return Spec("string", nan_rep=_text_attr(T.attrs.get(f"{field}_nan_rep")))
    return Spec()


def _categories(T, field: str) -> tuple[str, ...] | None:
    """A pandas categorical column's categories, from the table pandas writes beside ``T`` (None
    where it is not there: the codes are then read as numbers)."""
    import h5py

    node = T.parent.get(f"meta/{field}/meta/table")
    if not isinstance(node, h5py.Dataset) or node.dtype.names is None or "values" not in node.dtype.names \
            or node.ndim != 1 or node.shape[0] > MAX_CATEGORIES:
        return None
    values = node["values"]
    return tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values.tolist())


def compression(d) -> str | None:
    """The compression (else the filters, comma-separated) of dataset ``d``, or None."""
    plist = d.id.get_create_plist()
    filters = [plist.get_filter(k)[3].decode(errors="replace") for k in range(plist.get_nfilters())]
    return d.compression or ",".join(filters) or None


def locate(path: str, d):
    """``(chunk byte offsets, chunk rows, row bytes, dtype, row shape)`` of dataset ``d``, or
    None where its rows are not plain bytes in the file (compressed, split columns, virtual...)."""
    if _filtered(d) or d.external or d.is_virtual or d.dtype.kind not in "biuf":
        return None
    row_shape = d.shape[1:]
    row_bytes = d.dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
    try:
        if d.chunks is None:
            offset = d.id.get_offset()
            if offset is None:
                return None
            offsets, chunk_rows = np.array([offset], np.int64), max(1, d.shape[0])
        else:
            if tuple(d.chunks[1:]) != tuple(row_shape):
                return None  # chunks split the columns: rows are not contiguous bytes
            offsets = np.full(-(-d.shape[0] // d.chunks[0]), -1, np.int64)

            def note(info):
                offsets[info.chunk_offset[0] // d.chunks[0]] = info.byte_offset

            d.id.chunk_iter(note)
            if (offsets < 0).any():
                return None  # unwritten chunks read as fill values: let h5py handle them
            chunk_rows = d.chunks[0]
        if os.path.getsize(path) < offsets.max() + min(chunk_rows, d.shape[0]) * row_bytes:
            return None  # a truncated file: let h5py report it
    except (OSError, ValueError, AttributeError, RuntimeError, TypeError):
        return None
    return offsets, chunk_rows, row_bytes, d.dtype, row_shape


def _filtered(d) -> bool:
    """Whether any HDF5 filter (compression, shuffle, checksum...) transforms the stored bytes."""
    return bool(d.compression) or d.id.get_create_plist().get_nfilters() > 0
