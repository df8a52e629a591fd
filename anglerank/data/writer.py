"""Arrow IPC score parts and the manifest that makes them trustworthy.

Every part is written to a temporary file, fsynced and renamed; only then is it
recorded in ``manifest.json`` (itself replaced atomically). A reader therefore never
sees a half-written part, and an interrupted run knows exactly which rows are done.

The manifest records each part's file name, row count, size and a BLAKE2b checksum
of its bytes, and every reader checks them (:func:`verify_parts`) before trusting a
part: a part damaged, truncated or replaced after it was written is named in one
error line instead of being read as scores. Manifests written before checksums were
recorded are still read; their parts are checked for their row counts only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from anglerank.errors import UserError

MANIFEST = "manifest.json"
DONE = "DONE"
PART_GLOB = "scores-*.arrow"


class OutputError(UserError):
    """A user-facing output problem (exists, unwritable)."""


class CorruptScores(OutputError):
    """A score directory whose manifest or parts do not hold what the manifest says."""


_PART_NAME = re.compile(r"scores-\d{5,}\.arrow$")


def score_schema(id_type: pa.DataType = pa.int64(), with_layer: bool = False) -> pa.Schema:
    fields = [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("id", id_type),
    ]
    if with_layer:
        fields.append(pa.field("layer", pa.int32(), nullable=False))
    fields += [
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("n_prefix", pa.int32(), nullable=False),
        pa.field("n_question", pa.int32(), nullable=False),
        pa.field("intra", pa.float64()),
        pa.field("inter", pa.float64()),
        pa.field("score", pa.float64()),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("note", pa.string()),
    ]
    return pa.schema(fields)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_manifest(out_dir: Path) -> dict | None:
    """The manifest of a score directory (None if it has none), checked to be one.

    Only its shape is checked here (an object whose ``parts`` are plain part file names
    with row counts), so that no reader fails on a damaged manifest with an internal
    error; the parts themselves are checked by :func:`verify_parts`.
    """
    p = Path(out_dir) / MANIFEST
    if not p.exists():
        return None
    try:
        manifest = json.loads(p.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptScores(f"{p} is not valid JSON ({exc}); the score directory is damaged") from None
    except OSError as exc:
        raise OutputError(f"cannot read {p}: {exc.strerror or exc}") from None
    if not isinstance(manifest, dict):
        raise CorruptScores(f"{p} holds a JSON {type(manifest).__name__}, not an anglerank manifest (an object)")
    parts = manifest.get("parts", [])
    ok = isinstance(parts, list) and all(
        isinstance(q, dict) and isinstance(q.get("file"), str) and _PART_NAME.fullmatch(q["file"])
        and isinstance(q.get("rows"), int) and not isinstance(q.get("rows"), bool) and q["rows"] >= 0
        for q in parts
    )
    if not ok:
        raise CorruptScores(f"{p} has a malformed 'parts' list (each part needs a file scores-NNNNN.arrow and rows)")
    return manifest


def checksum(data) -> str:
    """The recorded checksum of a part's bytes: BLAKE2b, 128-bit digest, hex."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def part_problem(out_dir: Path, part: dict) -> str | None:
    """What is wrong with one recorded part (missing, size, checksum, unreadable, row count), or None."""
    path = Path(out_dir) / part["file"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"score part {part['file']} is missing"
    except OSError as exc:
        return f"score part {part['file']} cannot be read ({exc.strerror or exc})"
    size = part.get("bytes")
    if size is not None and len(data) != size:
        how = "truncated" if len(data) < size else "longer than written"
        return f"score part {part['file']} is {how} ({len(data)} bytes, {size} recorded)"
    if part.get("blake2b") is not None and checksum(data) != part["blake2b"]:
        return f"score part {part['file']} fails its checksum (changed or damaged after it was written)"
    try:
        with ipc.open_file(pa.py_buffer(data)) as r:
            rows = sum(r.get_batch(i).num_rows for i in range(r.num_record_batches))
    except (pa.ArrowException, OSError, ValueError):
        return f"score part {part['file']} is not a readable Arrow file (truncated or damaged)"
    if rows != part["rows"]:
        return f"score part {part['file']} holds {rows} rows, the manifest records {part['rows']}"
    return None


def expected_rows(manifest: dict) -> int | None:
    """Result rows a complete directory holds: its input rows times its layers (None if unknown)."""
    layers = manifest.get("layers") or []
    if "row_start" in manifest and "row_stop" in manifest:
        n = manifest["row_stop"] - manifest["row_start"]
    else:
        n = manifest.get("rows_expected")
    return n * len(layers) if isinstance(n, int) and layers else None


def verify_parts(out_dir: Path, manifest: dict, remedy: str) -> None:
    """Refuse a score directory whose parts differ from its manifest, naming the first bad part.

    A complete directory must also hold exactly its rows (input rows times layers).
    ``remedy`` ends the message (how the user gets a good directory back).
    """
    out_dir = Path(out_dir)
    for part in manifest.get("parts", []):
        problem = part_problem(out_dir, part)
        if problem:
            raise CorruptScores(f"{out_dir}: {problem}; {remedy}")
    want, got = expected_rows(manifest), sum(p["rows"] for p in manifest.get("parts", []))
    if manifest.get("complete") and want is not None and got != want:
        raise CorruptScores(f"{out_dir} is marked complete but holds {got} score rows, expected {want}; {remedy}")


def own_files(out_dir: Path) -> list[Path]:
    """The files anglerank writes into an output directory (nothing else is ever removed)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    files = [out_dir / MANIFEST, out_dir / DONE, *out_dir.glob(PART_GLOB), *out_dir.glob(".*.tmp")]
    return [p for p in files if p.exists()]


def prepare_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an existing output unless --overwrite; then remove only our own files."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"output {out_dir} exists and is not a directory")
    ours = own_files(out_dir)
    if ours and not overwrite:
        raise OutputError(f"output directory {out_dir} already holds scores; pass --overwrite to replace them")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write to output directory {out_dir}: {exc.strerror or exc}") from None
    for p in ours:
        p.unlink()


class ScoreWriter:
    """Buffers result rows and commits them as numbered Arrow IPC parts."""

    def __init__(self, out_dir: Path, schema: pa.Schema, manifest: dict):
        self.out_dir = Path(out_dir)
        self.schema = schema
        self.manifest = manifest
        self.manifest.setdefault("parts", [])
        self.manifest["complete"] = False
        self._buffer: list[dict] = []
        write_json_atomic(self.out_dir / MANIFEST, self.manifest)
        (self.out_dir / DONE).unlink(missing_ok=True)  # DONE only ever marks a complete manifest

    @property
    def rows_committed(self) -> int:
        return sum(p["rows"] for p in self.manifest["parts"])

    def add(self, rows: list[dict]) -> None:
        self._buffer.extend(rows)

    def commit(self, next_row: int, **stats) -> None:
        """Write buffered rows as one part; ``next_row`` is the first input row not yet covered."""
        if self._buffer:
            table = pa.Table.from_pylist(self._buffer, schema=self.schema)
            idx = len(self.manifest["parts"])
            name = f"scores-{idx:05d}.arrow"
            tmp = self.out_dir / f".{name}.tmp"
            sink = pa.BufferOutputStream()  # in memory first: the checksum is of exactly these bytes
            with ipc.new_file(sink, self.schema) as w:
                w.write_table(table)
            data = sink.getvalue()
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.out_dir / name)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            _fsync_dir(self.out_dir)
            self.manifest["parts"].append(
                {"file": name, "rows": table.num_rows, "bytes": data.size, "blake2b": checksum(data)})
            self._buffer = []
        self.manifest["next_row"] = next_row
        self.manifest["updated_at"] = time.time()
        self.manifest.update(stats)
        write_json_atomic(self.out_dir / MANIFEST, self.manifest)

    def finish(self, next_row: int, **stats) -> dict:
        self.commit(next_row, **stats)
        self.manifest["complete"] = True
        write_json_atomic(self.out_dir / MANIFEST, self.manifest)
        # the completion marker that `anglerank merge` (and any scheduler) can check
        (self.out_dir / DONE).write_text(f"{self.rows_committed}\n")
        return self.manifest


def load_scores(out_dir: Path | str) -> pa.Table:
    """All committed parts of a score directory as one table, in row order."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    if manifest is None:
        if any(out_dir.glob("shard-*-of-*")):
            raise OutputError(f"{out_dir} holds unmerged shards; run `anglerank merge {out_dir}` first")
        raise OutputError(f"{out_dir} has no {MANIFEST}; is it an anglerank score directory?")
    verify_parts(out_dir, manifest, "rescore it (`anglerank score ... --resume` re-scores damaged parts)")
    tables = []
    for part in manifest.get("parts", []):
        with ipc.open_file(out_dir / part["file"]) as r:
            tables.append(r.read_all())
    if not tables:
        return score_schema().empty_table()
    return pa.concat_tables(tables)
