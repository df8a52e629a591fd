"""Arrow IPC score parts and the manifest that makes them trustworthy.

Every part is written to a temporary file, fsynced and renamed; only then is it
recorded in ``manifest.json`` (itself replaced atomically). A reader therefore never
sees a half-written part, and an interrupted run knows exactly which rows are done.
"""

from __future__ import annotations

import json
import os
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
    p = Path(out_dir) / MANIFEST
    if not p.exists():
        return None
    return json.loads(p.read_text())


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
            try:
                with open(tmp, "wb") as fh:
                    with ipc.new_file(fh, self.schema) as w:
                        w.write_table(table)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.out_dir / name)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            _fsync_dir(self.out_dir)
            self.manifest["parts"].append({"file": name, "rows": table.num_rows})
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
    tables = []
    for part in manifest.get("parts", []):
        with ipc.open_file(out_dir / part["file"]) as r:
            tables.append(r.read_all())
    if not tables:
        return score_schema().empty_table()
    return pa.concat_tables(tables)
