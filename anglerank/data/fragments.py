"""The input formats: every input is a fragment of rows, read in chunks as Arrow.

A Parquet file is read lazily, row group by row group (its chunks). Every other form
is one Arrow table: JSON Lines and JSON files are parsed with ``pyarrow.json`` (or
``json`` for a list of objects), Arrow IPC files and streams (what ``datasets`` writes
with ``save_to_disk`` and into its cache) are memory-mapped, and in-memory data
(``datasets.Dataset``, ``pyarrow.Table``, polars or pandas DataFrames) is used as it
is; such a table is cut into chunks of ``CHUNK_ROWS`` rows so that the reader treats
every fragment alike.

Each fragment has a fingerprint that ties scores to their data (``--resume``,
``merge``, ``rank``, ``sample``): a Parquet file's is the hash of its footer (as it
always was), another file's the hash of its bytes, an in-memory table's the hash of
its rows serialised as Arrow IPC in fixed-size record batches (so it does not depend
on how the table happens to be chunked).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from anglerank.errors import UserError, one_line

__all__ = ["CHUNK_ROWS", "FORMATS", "InputError", "ParquetFragment", "TableFragment", "file_fingerprint",
           "format_of", "from_memory", "open_file", "table_fingerprint"]

CHUNK_ROWS = 8192
# a file's format from its name; gzip-compressed JSON is read as well
FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".jsonl.gz": "jsonl",
           ".ndjson.gz": "jsonl", ".json": "json", ".json.gz": "json", ".arrow": "arrow", ".feather": "arrow"}
_JSON_BLOCK = 16 << 20  # bytes parsed at once; one JSON line must fit in a block


class InputError(UserError):
    """A user-facing input problem; the CLI prints it in one line and exits 2."""


def file_fingerprint(path: Path) -> str:
    """Hash of the Parquet footer (schema, row groups, sizes, statistics) plus file size."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        fh.seek(max(0, size - 8))
        tail = fh.read(8)
        footer_len = int.from_bytes(tail[:4], "little") if len(tail) == 8 else 0
        fh.seek(max(0, size - 8 - footer_len))
        h.update(fh.read(footer_len + 8))
    return h.hexdigest()[:16]


def bytes_fingerprint(path: Path) -> str:
    """Hash of a file's size and bytes (a JSON or Arrow file has no footer that sums it up)."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def table_fingerprint(table: pa.Table) -> str:
    """Hash of a table's schema (without metadata) and rows, as IPC in batches of ``CHUNK_ROWS`` rows."""
    table = table.replace_schema_metadata(None)
    h = hashlib.sha256(str(table.num_rows).encode())
    for start in range(0, max(table.num_rows, 1), CHUNK_ROWS):
        sink = pa.BufferOutputStream()
        with ipc.new_stream(sink, table.schema) as w:
            w.write_table(table.slice(start, CHUNK_ROWS).combine_chunks())
        h.update(sink.getvalue())
    return h.hexdigest()[:16]


class ParquetFragment:
    """A Parquet file, read row group by row group."""

    format = "parquet"

    def __init__(self, path: Path, recorded: str):
        try:
            self._pf = pq.ParquetFile(path)
        except Exception as exc:
            raise InputError(f"{path} is not a readable Parquet file ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:120]})") from None
        self.file, self.name, self.recorded = path, str(path), recorded
        self.schema: pa.Schema = self._pf.schema_arrow
        md = self._pf.metadata
        self.num_rows = md.num_rows
        self.chunk_rows = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        self.nbytes = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))

    def read_chunk(self, i: int, columns: list[str] | None = None) -> pa.Table:
        return self._pf.read_row_group(i, columns=columns)

    def read(self, columns: list[str]) -> pa.Table:
        return self._pf.read(columns=columns)

    def batches(self, i: int, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        return self._pf.iter_batches(batch_size=batch_size, row_groups=[i], columns=columns)

    def entry(self) -> dict:
        return {"path": self.recorded, "size": self.file.stat().st_size, "rows": self.num_rows,
                "fingerprint": file_fingerprint(self.file)}


class TableFragment:
    """Rows held as one Arrow table (a parsed or memory-mapped file, or data handed in memory)."""

    def __init__(self, table: pa.Table, *, format: str, name: str, fingerprint: Callable[[], str],
                 file: Path | None = None, recorded: str | None = None, size: int | None = None):
        self._table = table
        self.format, self.name, self.file = format, name, file
        self.recorded = recorded or name
        self.size = table.nbytes if size is None else size
        self._fingerprint, self._print = fingerprint, None
        self.schema: pa.Schema = table.schema
        self.num_rows = table.num_rows
        self.chunk_rows = [min(CHUNK_ROWS, self.num_rows - s) for s in range(0, self.num_rows, CHUNK_ROWS)]
        self.nbytes = table.nbytes

    def read_chunk(self, i: int, columns: list[str] | None = None) -> pa.Table:
        part = self._table.slice(i * CHUNK_ROWS, CHUNK_ROWS)
        return part if columns is None else part.select(columns)

    def read(self, columns: list[str]) -> pa.Table:
        return self._table.select(columns)

    def batches(self, i: int, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        return iter(self.read_chunk(i, columns).to_batches(max_chunksize=batch_size))

    def entry(self) -> dict:
        if self._print is None:  # hashing a large table takes a while: once is enough
            self._print = self._fingerprint()
        return {"path": self.recorded, "format": self.format, "size": self.size, "rows": self.num_rows,
                "fingerprint": self._print}


# --------------------------------------------------------------------------- files

def format_of(path: Path, sniff: bool = True) -> str | None:
    """The format of a file from its name, else (with ``sniff``) from its first bytes; None if unknown."""
    name = path.name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return FORMATS[suffix]
    if not sniff:
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError:
        return None
    if head[:4] == b"PAR1":
        return "parquet"
    if head == b"ARROW1" or head[:4] == b"\xff\xff\xff\xff":
        return "arrow"
    return None


def open_file(path: Path, recorded: str):
    """The fragment of one input file; ``recorded`` is the path the manifest keeps for it."""
    kind = format_of(path)
    if kind == "parquet":
        return ParquetFragment(path, recorded)
    if kind is None:
        raise InputError(f"{path}: unknown input format; anglerank reads Parquet, JSON Lines (.jsonl, .jsonl.gz), "
                         "JSON (.json, a list of objects), Arrow (.arrow) and datasets save_to_disk folders")
    table = {"jsonl": _read_jsonl, "json": _read_json, "arrow": _read_arrow}[kind](path)
    if kind != "arrow" and table.num_columns == 0:
        raise InputError(f"{path} holds no JSON records")
    return TableFragment(table, format=kind, name=str(path), file=path, recorded=recorded,
                         size=path.stat().st_size, fingerprint=lambda: bytes_fingerprint(path))


def _read_arrow(path: Path) -> pa.Table:
    """An Arrow IPC file or stream, memory-mapped (zero copy, as ``datasets`` reads its own files)."""
    try:
        source = pa.memory_map(str(path))
        magic = source.read(6)
        source.seek(0)
        reader = ipc.open_file(source) if magic == b"ARROW1" else ipc.open_stream(source)
        return reader.read_all()
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path} is not a readable Arrow file ({one_line(exc, 160)})") from None


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _read_jsonl(path: Path) -> pa.Table:
    import pyarrow.json as pj

    try:
        return pj.read_json(path, read_options=pj.ReadOptions(block_size=_JSON_BLOCK))
    except (OSError, pa.ArrowException) as exc:
        failure = exc
    # say which line is wrong (Arrow counts rows within a block); lines that are all valid are tabled here
    rows = _json_lines(path)
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowException, TypeError, ValueError):
        raise InputError(f"{path} cannot be read as one table ({one_line(failure, 200)})") from None


def _json_lines(path: Path) -> list[dict]:
    """Every line's object; the first line that is not a JSON object is one error naming it."""
    rows = []
    try:
        with _open_bytes(path) as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except ValueError as exc:  # UnicodeDecodeError is one as well
                    raise InputError(f"{path}, line {n}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
                if not isinstance(value, dict):
                    raise InputError(f"{path}, line {n}: expected a JSON object, got {_json_type(value)}")
                rows.append(value)
    except (OSError, EOFError) as exc:  # a damaged .gz
        raise InputError(f"{path} cannot be read ({one_line(exc, 160)})") from None
    return rows


def _json_type(value: Any) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _read_json(path: Path) -> pa.Table:
    """A JSON list of objects; a file of JSON Lines named .json is read as such (as ``datasets`` does)."""
    try:
        with _open_bytes(path) as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise InputError(f"{path} cannot be read ({one_line(exc, 160)})") from None
    if not data.lstrip().startswith(b"["):
        whole = _whole_object(data)
        if whole is not None:
            raise InputError(f"{path} holds one JSON object (keys: {', '.join(list(whole)[:5])}), not a list of "
                             "objects or JSON Lines; pass the list itself")
        return _read_jsonl(path)
    try:
        rows = json.loads(data)
    except ValueError as exc:
        where = f", line {exc.lineno}" if hasattr(exc, "lineno") else ""
        raise InputError(f"{path}{where}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"{path}: item {i} of the list is {_json_type(row)}, not a JSON object")
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise InputError(f"{path} cannot be read as one table ({one_line(exc, 200)})") from None


def _whole_object(data: bytes) -> dict | None:
    """The file as one JSON object spread over several lines (not JSON Lines), else None."""
    if data.strip().count(b"\n") == 0:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------- in memory

def from_memory(obj: Any) -> TableFragment | None:
    """The fragment of an in-memory table (datasets, pyarrow, polars, pandas, a list of row dicts), or None."""
    found = _memory_table(obj)
    if found is None:
        return None
    table, what = found
    return TableFragment(table, format="memory", name=f"<in-memory {what}>",
                         fingerprint=lambda: table_fingerprint(table))


def _memory_table(obj: Any) -> tuple[pa.Table, str] | None:
    module = type(obj).__module__.split(".")[0]
    kind = type(obj).__name__
    if isinstance(obj, pa.Table):
        return obj, "pyarrow.Table"
    if isinstance(obj, pa.RecordBatch):
        return pa.Table.from_batches([obj]), "pyarrow.RecordBatch"
    if module == "datasets":
        if kind in ("DatasetDict", "IterableDatasetDict"):
            splits = ", ".join(map(str, obj.keys()))
            raise InputError(f"a datasets.{kind} holds several splits ({splits}); pass one of them, e.g. data['train']")
        if kind == "IterableDataset":
            raise InputError("a streaming datasets.IterableDataset has no fixed rows to number; load it without "
                             "streaming=True (or save its rows to Parquet or JSON Lines first)")
        if kind == "Dataset":  # with the row selection of .select/.shuffle/.filter; zero-copy when there is none
            return obj.with_format("arrow")[:], "datasets.Dataset"
    if module == "polars" and kind == "LazyFrame":
        raise InputError("a polars LazyFrame is not data yet; pass frame.collect()")
    if module == "polars" and kind == "DataFrame":
        return obj.to_arrow(), "polars.DataFrame"
    if module == "pandas" and kind == "DataFrame":
        return pa.Table.from_pandas(obj, preserve_index=False), "pandas.DataFrame"
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(r, dict) for r in obj):
        try:
            return pa.Table.from_pylist(list(obj)), "list of rows"
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise InputError(f"the list of rows cannot be read as one table ({one_line(exc, 200)})") from None
    return None
