"""The one input reader: records, one column, or rows by number, over checked inputs.

Inputs are Parquet, JSON Lines, JSON, Arrow files (``datasets`` folders and caches),
Hub datasets or in-memory tables (:mod:`anglerank.data.locate` finds the files,
:mod:`anglerank.data.fragments` reads each format as chunks of Arrow rows); everything
after this module sees one kind of input. All inputs are opened and checked before
any work starts (missing paths, unreadable files, schema mismatches, unusable prompt
columns), so a bad input fails in one line instead of after an hour of scoring. Rows
are numbered 0.. over the inputs in order. :class:`InputFiles` is the inputs themselves
(``column``, ``take``); :class:`InputSource` adds the prompt and id columns and streams
:class:`Record` s for scoring and training.

View columns (``string_view``, ``binary_view``, also inside structs and lists) are read
as ``large_string`` / ``large_binary``: Arrow's row selection has no kernel for views,
and every command then sees one of the string types it handles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from anglerank.data.fragments import InputError, file_fingerprint, from_memory, open_file
from anglerank.data.locate import locate
from anglerank.data.values import get_dotted
from anglerank.model.render import question_from_messages

__all__ = ["InputError", "InputFiles", "InputSource", "ParquetFiles", "ParquetSource", "Record", "field_type",
           "file_fingerprint", "open_inputs"]

AUTO_PROMPT_COLUMNS = ("question", "problem", "text")
AUTO_ID_COLUMNS = ("extra_info.index", "id", "index")


@dataclass
class Record:
    row: int
    id: Any
    question: str | None
    history: list[dict] | None  # messages up to and including the last user turn
    note: str | None = None


def open_inputs(inputs) -> list:
    """The fragments of ``inputs``: a path, an in-memory table, or a list of them; files read once each."""
    rows = isinstance(inputs, (list, tuple)) and inputs and all(isinstance(r, dict) for r in inputs)
    items = list(inputs) if isinstance(inputs, (list, tuple)) and not rows else [inputs]
    fragments, seen = [], set()
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            for path, recorded in locate(os.fspath(item)):
                key = path.resolve()
                if key not in seen:
                    seen.add(key)
                    fragments.append(open_file(path, recorded))
            continue
        fragment = from_memory(item)
        if fragment is None:
            what = f"{type(item).__module__.split('.')[0]}.{type(item).__name__}"
            raise InputError(f"cannot read a {what} as data; pass a path "
                             "(Parquet, JSON Lines, JSON, Arrow, a datasets folder, hf://datasets/...), a "
                             "datasets.Dataset, a pyarrow.Table or a polars or pandas DataFrame")
        fragments.append(fragment)
    if not fragments:
        raise InputError("no input given")
    return fragments


def field_type(schema: pa.Schema, dotted: str) -> pa.DataType | None:
    parts = dotted.split(".")
    if parts[0] not in schema.names:
        return None
    t = schema.field(parts[0]).type
    for part in parts[1:]:
        if not pa.types.is_struct(t) or t.get_field_index(part) < 0:
            return None
        t = t.field(part).type
    return t


def _is_messages(t: pa.DataType) -> bool:
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        return False
    v = t.value_type
    return pa.types.is_struct(v) and v.get_field_index("role") >= 0 and v.get_field_index("content") >= 0


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _plain_type(t: pa.DataType) -> pa.DataType:
    """``t`` with every view type replaced by its large equivalent (the same values)."""
    if pa.types.is_string_view(t):
        return pa.large_string()
    if pa.types.is_binary_view(t):
        return pa.large_binary()
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_plain_type(f.type)) for f in t])
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        item = t.value_field.with_type(_plain_type(t.value_type))
        if pa.types.is_fixed_size_list(t):
            return pa.list_(item, t.list_size)
        return pa.large_list(item) if pa.types.is_large_list(t) else pa.list_(item)
    if pa.types.is_map(t):
        return pa.map_(t.key_field.with_type(_plain_type(t.key_type)),
                       t.item_field.with_type(_plain_type(t.item_type)), t.keys_sorted)
    return t


def _plain_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_type(_plain_type(f.type)) for f in schema], metadata=schema.metadata)


def _all_columns(schema: pa.Schema) -> list[str]:
    out = []
    for f in schema:
        out.append(f.name)
        if pa.types.is_struct(f.type):
            out.extend(f"{f.name}.{c.name}" for c in f.type)
    return out


class InputFiles:
    """Inputs checked to share one schema; rows numbered 0.. across them.

    ``schema`` is the shared schema without metadata; ``metadata_schema`` is the first
    input's, metadata (Hugging Face ``features``) included, for writers that copy it.
    """

    SCHEMA_HINT = "all inputs must share one schema"

    def __init__(self, inputs):
        self.fragments = open_inputs(inputs)
        first = self.fragments[0]
        schema0 = first.schema.remove_metadata()
        for frag in self.fragments[1:]:
            if not frag.schema.remove_metadata().equals(schema0):
                raise InputError(f"{frag.name} has a different schema from {first.name}; {self.SCHEMA_HINT}")
        self.metadata_schema: pa.Schema = _plain_schema(first.schema)
        self.schema: pa.Schema = _plain_schema(schema0)
        self._views = not self.schema.equals(schema0)  # cast what is read (see the module docstring)
        self.rows_per_file = [f.num_rows for f in self.fragments]
        self.total_rows = sum(self.rows_per_file)

    @property
    def files(self) -> list[Path]:
        """The local files read (in-memory inputs have none)."""
        return [f.file for f in self.fragments if f.file is not None]

    @property
    def bytes_per_row(self) -> float:
        """Mean uncompressed size of a row, to size passes over the data."""
        return sum(f.nbytes for f in self.fragments) / self.total_rows if self.total_rows else 0.0

    def take(self, rows) -> pa.Table:
        """The global ``rows`` (in that order, repeats allowed), every column in its exact input type.

        Reads only the chunks (row groups) that hold a wanted row, one at a time, so memory
        is the result plus one chunk.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.total_rows):
            raise IndexError(f"row out of range [0, {self.total_rows})")
        wanted = np.unique(rows)
        pieces, base = [], 0
        for frag in self.fragments:
            for i, n in enumerate(frag.chunk_rows):
                lo, hi = np.searchsorted(wanted, [base, base + n])
                if hi > lo:
                    group = self._plain(frag.read_chunk(i).replace_schema_metadata(None))
                    pieces.append(group.take(pa.array(wanted[lo:hi] - base)))
                base += n
        table = pa.concat_tables(pieces) if pieces else self.schema.empty_table()
        pos = np.searchsorted(wanted, rows)
        return table if np.array_equal(pos, np.arange(len(wanted))) else table.take(pa.array(pos))

    def _plain(self, table: pa.Table) -> pa.Table:
        """``table`` as read, with view columns cast to the plain types of ``schema``."""
        if not self._views:
            return table
        return table.cast(pa.schema([self.schema.field(n) for n in table.column_names]))

    def fingerprints(self) -> list[dict]:
        """What the manifest records of each input (path, size, rows, fingerprint; the format unless Parquet)."""
        return [f.entry() for f in self.fragments]

    def column(self, name: str, rows: list[int] | None = None) -> list:
        """Python values of the (dotted) column ``name`` at the global ``rows`` (in that order), or at every row."""
        if field_type(self.schema, name) is None:
            raise InputError(f"column {name!r} not found; columns: {', '.join(_all_columns(self.schema))}")
        top, *inner = name.split(".")
        if rows is not None and any(not 0 <= r < self.total_rows for r in rows):
            raise IndexError(f"row out of range [0, {self.total_rows})")
        values: dict[int, Any] = {}
        out: list = []
        base = 0
        for frag, n in zip(self.fragments, self.rows_per_file):
            local = None if rows is None else sorted({r - base for r in rows if base <= r < base + n})
            if local is None or local:
                col = self._plain(frag.read([top])).column(top)
                if local is None:
                    out.extend(get_dotted(v, inner) for v in _values(col))
                else:
                    values.update((base + r, get_dotted(v, inner)) for r, v in zip(local, _values(col.take(local))))
            base += n
        return out if rows is None else [values[r] for r in rows]


def _values(col: pa.ChunkedArray) -> list:
    """Python values of a column; a cell that is not valid UTF-8 reads as None."""
    try:
        return col.to_pylist()
    except UnicodeDecodeError:
        out = []
        for v in col:
            try:
                out.append(v.as_py())
            except UnicodeDecodeError:
                out.append(None)
        return out


_UNREADABLE = "\0unreadable"  # key of a row's unreadable columns (no column can have this name)


def _batch_rows(batch: pa.RecordBatch) -> list[dict]:
    """The rows of a batch as dicts; a cell that is not valid UTF-8 spoils only its own row.

    Such a row keeps its readable cells and lists the others under ``_UNREADABLE`` (the
    scorer gives it a null score and a note) instead of aborting the whole run with a codec error.
    """
    try:
        return batch.to_pylist()
    except UnicodeDecodeError:
        pass
    rows = []
    for i in range(batch.num_rows):
        item, bad = {}, []
        for name, col in zip(batch.schema.names, batch.columns):
            try:
                item[name] = col[i].as_py()
            except UnicodeDecodeError:
                bad.append(name)
        rows.append({**item, _UNREADABLE: bad} if bad else item)
    return rows


def _id_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t  # dictionary ids are copied as plain values


def _skipped_note(skipped: list[str], outcome: str) -> str | None:
    if not skipped:
        return None
    what = (f"column {skipped[0]} is not an integer or string id and was" if len(skipped) == 1 else
            f"columns {' and '.join(skipped)} are not integer or string ids and were")
    return f"{what} skipped; {outcome} (choose the id column with --id-column)"


class InputSource(InputFiles):
    """Validated inputs with a resolved prompt column and id column, streamed as records."""

    SCHEMA_HINT = "score files with different schemas in separate runs"

    def __init__(self, inputs, prompt_column: str | None = None, id_column: str | None = None):
        super().__init__(inputs)
        self.prompt_column, self.prompt_kind = self._resolve_prompt(prompt_column)
        self.id_column, self.id_type = self._resolve_id(id_column)

    # -- column resolution -----------------------------------------------------------
    def _resolve_prompt(self, name: str | None) -> tuple[str, str]:
        cols = ", ".join(_all_columns(self.schema))
        if name is not None:
            t = field_type(self.schema, name)
            if t is None:
                raise InputError(f"prompt column {name!r} not found; columns: {cols}")
            if _is_messages(t):
                return name, "messages"
            if _is_string(t):
                return name, "string"
            raise InputError(
                f"prompt column {name!r} has type {t}; expected a string or a list of {{role, content}} messages"
            )
        t = field_type(self.schema, "prompt")
        if t is not None:
            if _is_messages(t):
                return "prompt", "messages"
            if _is_string(t):
                return "prompt", "string"
            raise InputError(
                f"column 'prompt' has type {t}; expected a string or a list of {{role, content}} messages "
                "(or choose another column with --prompt-column)"
            )
        found = [c for c in AUTO_PROMPT_COLUMNS if c in self.schema.names]
        if len(found) > 1:
            raise InputError(
                f"ambiguous prompt column: found {', '.join(found)}; choose one with --prompt-column (columns: {cols})"
            )
        if not found:
            raise InputError(f"no prompt column found (looked for prompt, question, problem, text); columns: {cols}; "
                             "use --prompt-column")
        t = field_type(self.schema, found[0])
        if not _is_string(t):
            raise InputError(f"prompt column {found[0]!r} has type {t}; expected a string (use --prompt-column)")
        return found[0], "string"

    def _resolve_id(self, name: str | None) -> tuple[str | None, pa.DataType]:
        """The id column and its type. Ids are integers or strings: a named column of another type is
        refused; an auto-detected candidate of another type is skipped, and ``id_note`` says so."""
        self.id_note = None
        if name is not None:
            t = field_type(self.schema, name)
            if t is None:
                raise InputError(f"id column {name!r} not found; columns: {', '.join(_all_columns(self.schema))}")
            t = _id_type(t)
            if not (pa.types.is_integer(t) or _is_string(t)):
                # checked here, before scoring: the duplicate-id check at the end cannot compare such values
                hint = ", e.g. a field inside it such as extra_info.index" if pa.types.is_nested(t) else ""
                raise InputError(f"id column {name!r} has type {t}; expected an integer or a string column{hint}")
            return name, t
        skipped = []
        for cand in AUTO_ID_COLUMNS:
            t = field_type(self.schema, cand)
            if t is not None and (pa.types.is_integer(_id_type(t)) or _is_string(_id_type(t))):
                self.id_note = _skipped_note(skipped, f"the ids are taken from {cand!r}")
                return cand, _id_type(t)
            if t is not None:
                skipped.append(f"{cand!r} ({t})")
        self.id_note = _skipped_note(skipped, "no ids are copied")
        return None, pa.int64()

    # -- iteration -------------------------------------------------------------------
    def iter_records(self, start_row: int = 0, stop_row: int | None = None, batch_size: int = 512) -> Iterator[Record]:
        """Records for global rows [start_row, stop_row), skipping whole chunks (row groups) before start."""
        stop_row = self.total_rows if stop_row is None else min(stop_row, self.total_rows)
        top = sorted({c.split(".")[0] for c in [self.prompt_column, self.id_column] if c})
        p_parts = self.prompt_column.split(".")
        id_parts = self.id_column.split(".") if self.id_column else None
        base = 0
        for frag in self.fragments:
            for chunk, n in enumerate(frag.chunk_rows):
                lo, hi = base, base + n
                base = hi
                if hi <= start_row or n == 0:
                    continue
                if lo >= stop_row:
                    return
                row = lo
                for batch in frag.batches(chunk, top, batch_size):
                    for item in _batch_rows(batch):
                        if start_row <= row < stop_row:
                            yield self._record(row, item, p_parts, id_parts)
                        row += 1
                        if row >= stop_row:
                            return

    def _record(self, row: int, item: dict, p_parts: list[str], id_parts: list[str] | None) -> Record:
        rid = get_dotted(item, id_parts) if id_parts else None
        bad = item.get(_UNREADABLE)
        if bad:
            return Record(row, rid, None, None, f"invalid UTF-8 in column {', '.join(map(repr, bad))}")
        value = get_dotted(item, p_parts)
        if self.prompt_kind == "string":
            return Record(row, rid, value, None, None if value is not None else "null question")
        if value is None:
            return Record(row, rid, None, None, "null prompt")
        history, question, note = question_from_messages(value)
        return Record(row, rid, question, history, note)


# the names the rest of anglerank has always imported (Parquet was once the only format)
ParquetFiles = InputFiles
ParquetSource = InputSource
