"""Parquet output that any trainer can load unchanged: the input's columns plus ``angle_*``.

``anglerank rank`` and ``anglerank sample`` both write the input rows back out with
added columns. This module is the one place that says how: the added fields, the
output schema (the input's exact schema and metadata, with the new columns added to
its Hugging Face ``features`` so ``datasets`` loads them with the right types), the
assembly of input rows and added columns into one Arrow table, and a writer that
leaves either the complete file or nothing.

Why not polars ``sink_parquet``: it writes ``large_string`` / ``large_list`` and
drops the schema metadata, so the output would not load *unchanged*. The input rows
come from :meth:`anglerank.data.reader.ParquetFiles.take` in their exact Arrow types
and are written with ``pyarrow``.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from anglerank.data.lock import stale_temps
from anglerank.data.reader import InputError
from anglerank.data.writer import OutputError, cannot_write, open_own

__all__ = [
    "ANGLE_FIELDS", "ANGLE_COLUMNS", "EPOCH_FIELD", "ROW_GROUP_ROWS", "AtomicParquet", "assemble",
    "check_added_columns", "check_output_file", "output_schema",
]

ANGLE_FIELDS = (
    pa.field("angle_intra", pa.float64()),
    pa.field("angle_inter", pa.float64()),
    pa.field("angle_score", pa.float64()),
    pa.field("angle_rank", pa.int64()),
    pa.field("angle_pct", pa.float64()),
)
ANGLE_COLUMNS = tuple(f.name for f in ANGLE_FIELDS)
EPOCH_FIELD = pa.field("epoch", pa.int64())
ROW_GROUP_ROWS = 16384
_HF_TYPES = {pa.float64(): "float64", pa.int64(): "int64"}


def check_added_columns(schema: pa.Schema, names: Iterable[str], hint: str) -> None:
    """Refuse input that already has a column the output would add (``hint`` says what to do)."""
    for name in names:
        if name in schema.names:
            raise InputError(f"the data already has a column {name!r}; {hint}")


def output_schema(in_schema: pa.Schema, extra: Iterable[pa.Field], provenance: dict) -> pa.Schema:
    """The input schema (metadata included) + ``extra`` fields, with ``provenance`` under ``anglerank``."""
    extra = list(extra)
    meta = dict(in_schema.metadata or {})
    hf = meta.get(b"huggingface")
    if hf:
        try:
            obj = json.loads(hf)
            feats = obj.get("info", {}).get("features")
            if isinstance(feats, dict):
                for f in extra:
                    feats[f.name] = {"dtype": _HF_TYPES[f.type], "_type": "Value"}
                meta[b"huggingface"] = json.dumps(obj).encode()
        except (ValueError, AttributeError, KeyError):
            pass  # foreign or malformed metadata: copied as it is, the columns are still there
    meta[b"anglerank"] = json.dumps(provenance, default=str).encode()
    return pa.schema(list(in_schema) + extra, metadata=meta)


def assemble(data: pa.Table, added: pa.Table, schema: pa.Schema) -> pa.Table:
    """Input rows (exact types) side by side with the ``added`` columns, as ``schema``."""
    names = schema.names[data.num_columns:]
    arrays = list(data.columns) + [added.column(n).cast(schema.field(n).type) for n in names]
    return pa.Table.from_arrays(arrays, schema=schema)


def check_output_file(path: Path, inputs: Iterable[Path], overwrite: bool) -> None:
    """An output file may not be a directory, one of the inputs, or (without ``overwrite``) exist."""
    if path.exists() and path.is_dir():
        raise OutputError(f"output {path} is a directory; give a file name such as ranked.parquet")
    if any(path.resolve() == Path(f).resolve() for f in inputs):
        raise OutputError(f"output {path} is one of the --data files; write the ranked data elsewhere")
    if path.exists() and not overwrite:
        raise OutputError(f"output {path} exists; pass --overwrite to replace it")


class AtomicParquet:
    """ParquetWriter to a temporary sibling, renamed over ``path`` only on success.

    The caller holds ``path``'s output lock, so temporaries a killed run left are removed.
    The temporary is created with ``O_EXCL | O_NOFOLLOW`` (never through a link planted
    under its name) and removed on any failure; a failed write (a full disk) is one
    :class:`OutputError` naming ``shown`` (default ``path``), and ``path`` stays as it was.
    """

    def __init__(self, path: Path, schema: pa.Schema, shown: Path | None = None):
        self.path = Path(path)
        self.shown = shown or self.path
        self.schema = schema
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._fh = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for stale in stale_temps(self.path):
                if stale.is_file() and not stale.is_symlink():
                    stale.unlink()
            self._fh = os.fdopen(open_own(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb")
            self.writer = pq.ParquetWriter(self._fh, schema, compression="zstd")
        except (OSError, pa.ArrowException) as exc:
            self._discard()
            raise self._failed(exc) from None
        self.rows = 0
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    def _failed(self, exc: Exception) -> OutputError:
        if isinstance(exc, OSError):
            return cannot_write(self.shown, exc)
        return OutputError(f"cannot write {self.shown}: {str(exc).splitlines()[0][:200]}")

    def _discard(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError, ValueError):
                self._fh.close()
            self.tmp.unlink(missing_ok=True)
            self._fh = None

    def write(self, table: pa.Table) -> None:
        """Append rows; small tables are buffered so row groups are not tiny."""
        self._buffer.append(table)
        self._buffered += table.num_rows
        self.rows += table.num_rows
        if self._buffered >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            try:
                self.writer.write_table(pa.concat_tables(self._buffer), row_group_size=ROW_GROUP_ROWS)
            except (OSError, pa.ArrowException) as exc:
                raise self._failed(exc) from None
            self._buffer, self._buffered = [], 0

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
            self._discard()
            return False
        try:
            self._flush()
            self.writer.close()
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self.tmp, self.path)
        except BaseException as failure:
            with contextlib.suppress(Exception):
                self.writer.close()
            self._discard()
            if isinstance(failure, (OSError, pa.ArrowException)):
                raise self._failed(failure) from None
            raise
        return False
