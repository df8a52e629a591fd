"""Arrow IPC score parts and the manifest that makes them trustworthy.

Every part is written to a temporary file, fsynced and renamed; only then is it
recorded in ``manifest.json`` (itself replaced atomically). A reader therefore never
sees a half-written part, and an interrupted run knows exactly which rows are done.

The manifest records each part's file name, row count, size and a BLAKE2b checksum
of its bytes, and every reader checks them (:func:`verify_parts`) before trusting a
part: a part damaged, truncated or replaced after it was written is named in one
error line instead of being read as scores. Manifests written before checksums were
recorded are still read; their parts are checked for their row counts only.

An output directory may hold the user's files too. Only the names anglerank writes
(:func:`is_own_name`) are ever created, replaced or removed there, and every file is
opened with ``O_NOFOLLOW`` (:func:`open_own`): a symbolic link planted under one of
those names is refused, never written through.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.ipc as ipc

from anglerank.errors import UserError

MANIFEST = "manifest.json"
DONE = "DONE"


class OutputError(UserError):
    """A user-facing output problem (exists, unwritable)."""


class CorruptScores(OutputError):
    """A score directory whose manifest or parts do not hold what the manifest says."""


_PART_NAME = re.compile(r"scores-\d{5,}\.arrow$")
# the temporaries of a score directory: a part, the manifest or DONE being written, the write probe
_OWN_TEMP = re.compile(r"\.(scores-\d{5,}\.arrow|manifest\.json|DONE|write-test)\.tmp$")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # absent on Windows, which has no such links to plant


def is_part_name(name: str) -> bool:
    """A score part's file name as anglerank writes it (``scores-NNNNN.arrow``)."""
    return _PART_NAME.fullmatch(name) is not None


def is_own_name(name: str) -> bool:
    """A name anglerank writes into a score directory (every other file there is the user's)."""
    return name in (MANIFEST, DONE) or is_part_name(name) or _OWN_TEMP.fullmatch(name) is not None


def cannot_write(path, exc: OSError) -> OutputError:
    """A failed write (full disk, permissions) as one line naming the file."""
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


def _link_error(path) -> OutputError:
    return OutputError(f"{path} is a symbolic link where anglerank writes its own file; it is never followed: "
                       "remove the link or write elsewhere")


def open_own(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """A descriptor of anglerank's own file ``path``, opened without following a link in its place."""
    try:
        return os.open(path, flags | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.EEXIST and Path(path).is_symlink()):
            raise _link_error(path) from None
        raise


def write_own(path: Path, chunks: Iterable) -> None:
    """Write ``chunks`` (bytes) into our file ``path`` and fsync it; a failure removes it and re-raises."""
    path = Path(path)
    fd = open_own(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


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


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def stage(path: Path, data: bytes) -> Path:
    """``data`` written to ``path``'s temporary (``.NAME.tmp``), ready to be renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    write_own(tmp, [data])
    return tmp


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename; on failure ``path`` is as it was and no temporary is left."""
    tmp = stage(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, json_bytes(obj))


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _input_entry(v) -> bool:
    return (isinstance(v, dict) and isinstance(v.get("path"), str) and isinstance(v.get("fingerprint"), str)
            and all(_count(v[k]) for k in ("rows", "size") if k in v))


# Fields that readers compute with, and what each must hold when present (a crafted or damaged
# manifest is then named field by field instead of giving nonsense such as "rows a..239").
_FIELDS: dict[str, tuple[Any, str]] = {
    **{k: (_count, "an integer >= 0") for k in (
        "row_start", "row_stop", "rows_expected", "next_row", "input_rows", "num_layers", "num_shards",
        "shard_index", "window_rows", "commit_every", "tokens", "duplicate_ids")},
    **{k: (lambda v: v is None or _count(v), "an integer >= 0 or null") for k in ("limit", "batch_tokens")},
    **{k: (lambda v: v is None or _number(v), "a number or null") for k in (
        "elapsed_s", "tokens_per_s", "started_at", "updated_at", "finished_at", "merged_at")},
    **{k: (lambda v: v is None or isinstance(v, str), "a string or null") for k in (
        "model", "estimator", "site", "preset", "prompt_column", "id_column", "inputs_fingerprint")},
    "complete": (lambda v: isinstance(v, bool), "true or false"),
    "layers": (lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
               "a list of layer numbers"),
    "inputs": (lambda v: isinstance(v, list) and all(map(_input_entry, v)),
               "a list of input files (each with path, fingerprint and row count)"),
}


def _check_fields(p: Path, manifest: dict) -> None:
    """Every known field of ``manifest`` (read from ``p``) has the type anglerank writes."""
    parts = manifest.get("parts", [])
    ok = isinstance(parts, list) and all(
        isinstance(q, dict) and isinstance(q.get("file"), str) and _PART_NAME.fullmatch(q["file"])
        and _count(q.get("rows")) and (q.get("bytes") is None or _count(q["bytes"]))
        and (q.get("blake2b") is None or isinstance(q["blake2b"], str)) for q in parts
    )
    if not ok:
        raise CorruptScores(f"{p} has a malformed 'parts' list (each part needs a file scores-NNNNN.arrow and rows; "
                            "bytes and blake2b, when recorded, a size and a checksum)")
    for key, (valid, what) in _FIELDS.items():
        if key in manifest and not valid(manifest[key]):
            shown = json.dumps(manifest[key])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise CorruptScores(f"{p} has a malformed field {key!r}: expected {what}, got {shown}; "
                                "the score directory is damaged")
    if _count(manifest.get("row_start")) and _count(manifest.get("row_stop")) \
            and manifest["row_start"] > manifest["row_stop"]:
        raise CorruptScores(f"{p} has a malformed field 'row_stop': {manifest['row_stop']} is before "
                            f"row_start {manifest['row_start']}; the score directory is damaged")


def read_manifest(out_dir: Path) -> dict | None:
    """The manifest of a score directory (None if it has none), checked to be one.

    Its shape is checked here (an object whose ``parts`` are plain part file names with
    row counts, and whose known fields have the types anglerank writes), so that no
    reader fails on a damaged manifest with an internal error or a misleading number;
    the parts themselves are checked by :func:`verify_parts`.
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
    _check_fields(p, manifest)
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


def own_files(out_dir: Path, *, temporaries: bool = True) -> list[Path]:
    """The files anglerank writes into an output directory, exactly by name (nothing else is ever removed).

    A link under one of those names is listed too: removing it removes the link, never its target.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.iterdir()
                  if is_own_name(p.name) and (temporaries or not p.name.endswith(".tmp"))
                  and (p.is_symlink() or not p.is_dir()))


def refuse_links(out_dir: Path) -> None:
    """Refuse an output directory with a symbolic link under a name anglerank writes, before writing anything."""
    for p in own_files(out_dir):
        if p.is_symlink():
            raise _link_error(p)


def prepare_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an output holding scores unless --overwrite; then remove only our own files.

    The user's files in the directory (any other name) are left as they are, and written beside.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"output {out_dir} exists and is not a directory")
    refuse_links(out_dir)
    if own_files(out_dir, temporaries=False) and not overwrite:
        raise OutputError(f"output directory {out_dir} already holds scores; pass --overwrite to replace them")
    probe = out_dir / ".write-test.tmp"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_own(probe, [])
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write to output directory {out_dir}: {exc.strerror or exc}") from None
    for p in own_files(out_dir):
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
        try:
            write_json_atomic(self.out_dir / MANIFEST, self.manifest)
        except OSError as exc:  # a full disk before this run scored anything
            raise cannot_write(self.out_dir / MANIFEST, exc) from None
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
            write_own(tmp, [data])
            try:
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
        write_atomic(self.out_dir / DONE, f"{self.rows_committed}\n".encode())
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
