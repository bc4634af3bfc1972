"""CSV and JSON-lines tables (plain or gzip/zstd/bz2-compressed): decoded once, by pyarrow's
streaming readers, into a Parquet copy that is then read as any Parquet file is (row groups as
chunks, columns encoded; text offers no random access to rows).

The copy lives in ``$TMPDIR/streamtrain-tables/``, named by the file's path, size and
modification time, so that decoding processes, ``evaluate`` and ``predict`` of an unchanged file
reuse it; it is written to a temporary name and renamed into place (never half-written).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import DEFAULT_CACHE_BYTES
from .parquet import ParquetDataset
from .remote import is_url
from .tabular import many_name

__all__ = ["CSVDataset", "JSONLinesDataset", "table_copy"]

# Rows of text decoded per block (types are inferred from the first block).
BLOCK_BYTES = 16 << 20
# Columns whose type changes after the first block are read again as text (at most this often).
MAX_RETYPES = 64


def _copy_dir() -> Path:
    d = Path(os.environ.get("STREAMTRAIN_TABLE_CACHE") or Path(tempfile.gettempdir()) / "streamtrain-tables")
    d.mkdir(parents=True, exist_ok=True)
    return d


#: The copies' own version, in their names: a copy an older decoding made is not taken (2: a
#: CSV header's nameless column named, as pandas names it; 3: whole numbers written with a leading
#: zero, as zip codes are, read as text; 4: the field separator found from the header, not always a comma;
#: 5: a semicolon file's decimal commas).
COPY_VERSION = 5


def table_copy(path: str, kind: str, text: tuple[str, ...] | None = None) -> Path:
    """The Parquet copy of a CSV or JSON-lines file, decoded now unless an up-to-date one exists.
    ``text``: a CSV's columns read as text (those that any file of a set writes with leading zeros);
    None: this file's own (``_zero_led``)."""
    st = os.stat(path)
    given = "" if text is None else "|" + ",".join(text)
    key = hashlib.sha256(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{kind}|{COPY_VERSION}{given}".encode()
                         ).hexdigest()[:32]
    out = _copy_dir() / f"{Path(path).name}.{key}.parquet"
    if out.exists():
        return out
    free = shutil.disk_usage(out.parent).free
    if free < st.st_size:  # a Parquet copy is rarely larger than its text
        raise DataError(f"{path}: decoding it needs up to {st.st_size / 2**30:.1f} GiB in {out.parent}, which has "
                        f"{free / 2**30:.1f} GiB free; set STREAMTRAIN_TABLE_CACHE (or TMPDIR) to a larger disk")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        _decode(path, kind, tmp, text)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _decode(path: str, kind: str, out: Path, text: tuple[str, ...] | None = None) -> None:
    import pyarrow as pa

    types: dict = {}  # column -> the type it is read as, once it changed after the first block
    names: list = []  # the CSV's column names, as the reader found them
    dialect = _dialect(path) if kind == "csv" else (",", ".")
    if kind == "csv":
        types.update({name: pa.string() for name in (_zero_led(path, dialect) if text is None else text)})
    for _ in range(MAX_RETYPES):
        try:
            return _write(path, kind, out, types, names, dialect)
        except _Again:
            continue
        except pa.ArrowInvalid as e:
            if kind != "csv" and any(t is not None for t in types.values()):
                # a value that is not a timestamp after the first block: those columns stay text
                types.update({k: None for k in types})
                continue
            retyped = _retype(str(e), types, names, dialect[1])
            if retyped is None:
                raise DataError(f"{path}: cannot be read as {kind.upper()} ({_first_line(e)})") from None
        except (OSError, EOFError, pa.ArrowException) as e:
            raise DataError(f"{path}: cannot be read as {kind.upper()} ({_first_line(e)})") from None
    raise DataError(f"{path}: column types kept changing after the first block; convert it to Parquet with its "
                    "types stated")


def _retype(message: str, types: dict, names: list, point: str = "."):
    """A CSV column whose type changed after the first block, read again as float64 (numbers) or
    text; None where the error is not that."""
    import pyarrow as pa

    m = re.search(r"In CSV column #(\d+): .*CSV conversion error to (\w+): invalid value '([^']*)'", message)
    if not m or not names:
        return None
    col, target, value = names[int(m.group(1))], m.group(2), m.group(3)
    try:
        float(value.replace(",", ".") if point == "," else value)
        numeric = target.startswith(("int", "uint"))
    except ValueError:
        numeric = False
    new = pa.float64() if numeric else pa.string()
    if types.get(col) == new:
        return None
    types[col] = new
    return col


def _head(path: str) -> tuple[str, list[str]]:
    """A CSV file's header line and its next whole lines (of its first 64 KB, decompressed), each
    as its separators and plain text outside quotes (the quoted text dropped): what its dialect is
    found from. A header longer than that: its first 64 KB."""
    import pyarrow as pa

    try:
        with pa.input_stream(path, compression="detect") as stream:
            head = stream.read(1 << 16).decode("utf-8", errors="replace")
    except (OSError, pa.ArrowException):  # (the read proper says what is wrong)
        return "", []
    lines, line, quoted = [], [], False
    for ch in head.lstrip("\ufeff"):
        if ch == '"':
            quoted = not quoted
        elif ch in "\r\n" and not quoted:
            if line:
                lines.append("".join(line))
            line = []
        elif not quoted:
            line.append(ch)
    if not lines:  # (no line ends in the first 64 KB: the header's beginning)
        return "".join(line), []
    return lines[0], lines[1:]  # (the line cut short at 64 KB is left out)


def _dialect(path: str) -> tuple[str, str]:
    """A CSV file's field separator and decimal point, from its first lines (``_head``).

    The separator: a tab in a .tsv file, else the one of ``,``, ``;``, tab and ``|`` its header
    line holds most often outside quotes (a comma where none or a tie): Excel and many European
    exports write semicolons. The decimal point: ``,`` where a semicolon-separated file (as exports
    in decimal-comma locales are) writes a number with one comma that cannot be a thousands' group
    (``3,25``, ``12,5``, ``1234,5``) and none with a point; else ``.`` (``1,911`` alone could be
    either: no guess)."""
    header, lines = _head(path)
    if ".tsv" in Path(path).name.lower():
        delimiter = "\t"
    else:
        counts = {d: header.count(d) for d in (",", ";", "\t", "|")}
        delimiter = max(counts, key=lambda d: (counts[d], d == ","))
        delimiter = delimiter if counts[delimiter] else ","
    if delimiter != ";":
        return delimiter, "."
    fields = [f.strip() for line in lines for f in line.split(delimiter)]
    comma = any(re.fullmatch(r"[-+]?\d+,\d+", f) and not re.fullmatch(r"[-+]?\d{1,3},\d{3}", f) for f in fields)
    point = any(re.fullmatch(r"[-+]?\d*\.\d+([eE][-+]?\d+)?", f) for f in fields)
    return delimiter, "," if comma and not point else "."


def _zero_led(path: str, dialect: tuple[str, str] | None = None) -> list[str]:
    """The columns of a CSV file that its first block would read as whole numbers but whose text
    has a leading zero (zip codes, account numbers: "02139" is not 2139): read as text instead.
    ``dialect``: the file's ``_dialect``, where known."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    delimiter, point = dialect or _dialect(path)
    parse, block = pacsv.ParseOptions(delimiter=delimiter), min(BLOCK_BYTES, 1 << 20)
    try:
        with pa.input_stream(path, compression="detect") as stream:
            schema = pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=block), parse_options=parse,
                                    convert_options=pacsv.ConvertOptions(decimal_point=point)).schema
        twice = {n for n in schema.names if schema.names.count(n) > 1}  # (the copy's read names those)
        ints = [f.name for f in schema if pa.types.is_integer(f.type) and f.name and f.name not in twice]
        if not ints:
            return []
        with pa.input_stream(path, compression="detect") as stream:
            first = pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=block), parse_options=parse,
                                   convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in ints},
                                                                        include_columns=ints, decimal_point=point)
                                   ).read_next_batch()
    except (OSError, EOFError, StopIteration, KeyError, pa.ArrowException):  # (the copy's own read says what)
        return []
    return [n for n in ints if pc.any(pc.match_substring_regex(first.column(n), r"^\s*[+-]?0\d")).as_py()]


def _header_names(path: str, names: list[str]) -> list[str]:
    """A CSV header's column names, a nameless one named as pandas names it (``Unnamed: 0``: the
    index ``DataFrame.to_csv`` writes first); a name given twice is an error naming it."""
    out = [n if n else f"Unnamed: {i}" for i, n in enumerate(names)]
    seen: dict[str, int] = {}
    for i, n in enumerate(out):
        if n in seen:
            raise DataError(f"{path}: the header names column {n!r} twice (columns {seen[n] + 1} and {i + 1}): "
                            "rename one")
        seen[n] = i
    return out


def _write(path: str, kind: str, out: Path, types: dict, names: list, dialect: tuple[str, str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    stream = pa.input_stream(path, compression="detect")
    if kind == "csv":
        import pyarrow.csv as pacsv

        delimiter, point = dialect

        def open_csv(stream, read_options):
            return pacsv.open_csv(stream, read_options=read_options, parse_options=pacsv.ParseOptions(delimiter=delimiter),
                                  convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True,
                                                                       decimal_point=point))

        reader = open_csv(stream, pacsv.ReadOptions(block_size=BLOCK_BYTES))
        header = _header_names(path, reader.schema.names)
        if header != reader.schema.names:  # (read again, its header named)
            stream.close()
            stream = pa.input_stream(path, compression="detect")
            reader = open_csv(stream, pacsv.ReadOptions(block_size=BLOCK_BYTES, column_names=header, skip_rows=1))
        names[:] = reader.schema.names
    else:
        import pyarrow.json as pajson

        explicit = pa.schema([(k, t) for k, t in types.items() if t is not None]) if types else None
        reader = pajson.open_json(stream, read_options=pajson.ReadOptions(block_size=BLOCK_BYTES),
                                  parse_options=pajson.ParseOptions(explicit_schema=explicit))
    writer = None
    try:
        for batch in reader:
            if writer is None and kind != "csv" and not types:
                stamps = _timestamp_like(batch)
                if stamps:  # read again with them as timestamps (a later value that is not one: as text)
                    types.update({k: pa.timestamp("ns") for k in stamps})
                    raise _Again()
            if writer is None:
                writer = pq.ParquetWriter(out, batch.schema, compression="snappy")
            writer.write_batch(batch)
        if writer is None:
            raise DataError(f"{path}: holds no rows")
    finally:
        if writer is not None:
            writer.close()
        stream.close()


class _Again(Exception):
    """Read the file again, with the types found in its first block."""


def _timestamp_like(batch) -> list[str]:
    """The text columns of a JSON-lines block whose every value is an ISO 8601 timestamp (the JSON
    reader infers only whole seconds; fractions and offsets stay text)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found = []
    for name, col in zip(batch.schema.names, batch.columns):
        if not pa.types.is_string(col.type) or col.null_count == len(col):
            continue
        try:
            pc.cast(col, pa.timestamp("ns"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        found.append(name)
    return found


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class CSVDataset(ParquetDataset):
    """Rows of a CSV (or TSV) file, plain or compressed, read through its decoded Parquet copy."""

    format = "csv"
    _kind = "csv"

    def __init__(self, path: str, features=None, label: str | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 dtype=np.float32, storage_options: dict | None = None, allow_missing_chunks: bool = False,
                 encoding: dict | None = None, encode: dict | None = None):
        paths = [os.fspath(p) for p in path] if isinstance(path, (list, tuple)) else [str(path)]
        for p in paths:
            if is_url(p):
                raise DataError(f"{p}: {self.format} is read from local files (download it first)")
            if not os.path.isfile(p):
                raise DataError(f"{p}: no such file")
        self._sources = paths
        # (a set of CSV files reads a column as text wherever one of them writes it with leading zeros)
        text = tuple(sorted(set().union(*map(_zero_led, paths)))) if self._kind == "csv" and len(paths) > 1 else None
        copies = [str(table_copy(p, self._kind, text)) for p in paths]
        self._source_of = dict(zip(copies, paths))
        super().__init__(copies if len(copies) > 1 else copies[0], features, label, cache_bytes, dtype,
                         encoding=encoding, encode=encode, name=many_name(paths))
        # each file's first row in the dataset, for messages naming rows within the file (found once:
        # a message is made for every chunk read)
        self._file_start: dict[int, int] = {}
        for c, (f_idx, _, _) in enumerate(self._parts):
            self._file_start.setdefault(f_idx, int(self.bounds[c]))

    def _where(self, i: int) -> str:
        f_idx = self._parts[i][0]
        start = self._file_start[f_idx]
        a, b = int(self.bounds[i]) - start, int(self.bounds[i + 1]) - start
        return f"{self._source_of.get(self._files[f_idx], self._files[f_idx])}, rows {a:,} to {b - 1:,}"

    def _stamped_files(self):
        return list(self._sources)

    def extra_info(self):
        return {"files": len(self._sources), "decoded_copy": self._files[0] if len(self._files) == 1
                else os.path.dirname(self._files[0])}


class JSONLinesDataset(CSVDataset):
    """Rows of a JSON-lines file (one object per line), plain or compressed."""

    format = "jsonl"
    _kind = "jsonl"
