"""Scoring on several processes or machines: the row grid, shards, torchrun, and merge.

Rows are cut into read-ahead windows on one global grid, and shards are whole runs of
windows, so a sharded, resumed or single run forms exactly the same batches and writes
bit-identical numbers. Each shard scores into ``OUTPUT/shard-IIIII-of-NNNNN``; :func:`merge`
checks that all shards finished with the same settings and cover every row exactly once,
then joins them. Nothing here imports torch: merging needs only pyarrow.
"""

from __future__ import annotations

import os
import re
import time
from contextlib import ExitStack
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.ipc as ipc

from anglerank.data import manifest
from anglerank.data.lock import output_lock
from anglerank.data.writer import (
    DONE, MANIFEST, OutputError, _fsync_dir, cannot_write, is_part_name, json_bytes, own_files, read_manifest,
    refuse_links, stage, verify_parts, write_own,
)
from anglerank.errors import UserError
from anglerank.signals import abort_on_signal

_SHARD_RE = re.compile(r"shard-(\d{5})-of-(\d{5})$")
_SHARD_FIELDS = ("layers", "row_start", "row_stop", "rows_expected", "elapsed_s", "tokens")  # what merge reads


def auto_window_rows(total: int) -> int:
    """Read-ahead window (rows bucketed together): a function of the row count only.

    Windows sit on a global grid of this size and shard boundaries fall on it too, so
    a sharded or resumed run forms exactly the batches of a single uninterrupted run
    and its output is bit-identical. It reaches its cap at 1,024 rows, so memory use
    is the same for any dataset beyond that (inputs under 1,024 rows have at most
    about four windows, hence at most four non-empty shards).
    """
    return min(256, max(8, -(-total // 4)))


def shard_range(total: int, num_shards: int, shard_index: int, window_rows: int) -> tuple[int, int]:
    """Rows [start, stop) of one shard: contiguous whole windows, deterministic, every row once."""
    if not 0 <= shard_index < num_shards:
        raise UserError(f"--shard-index must be in 0..{num_shards - 1}")
    units = -(-total // window_rows)
    lo = (units * shard_index) // num_shards
    hi = (units * (shard_index + 1)) // num_shards
    return min(total, lo * window_rows), min(total, hi * window_rows)


def shard_dir(output: Path, shard_index: int, num_shards: int) -> Path:
    return Path(output) / f"shard-{shard_index:05d}-of-{num_shards:05d}"


def distributed_env() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) under torchrun, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return None


def local_world_size() -> int:
    """Processes on this machine under torchrun (LOCAL_WORLD_SIZE; else all of them)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE") or 1)


def gpu_share(local_rank: int, local_world_size: int, visible: int) -> list[int]:
    """The GPUs (indices among the ``visible`` ones) that one local rank spreads its model over.

    Contiguous, disjoint and together all of them: 8 GPUs and 2 ranks give [0..3] and [4..7];
    8 and 3 give 2, 3 and 3 GPUs. With more ranks than GPUs, ranks share one GPU each.
    """
    if not 0 <= local_rank < local_world_size or visible < 1:
        raise UserError(f"local rank {local_rank} of {local_world_size} has no GPU among {visible} visible")
    if local_world_size >= visible:
        return [local_rank * visible // local_world_size]
    return list(range(local_rank * visible // local_world_size, (local_rank + 1) * visible // local_world_size))


# --- merge ------------------------------------------------------------------------------

def _shard_dirs(out: Path) -> list[Path]:
    """The shard directories of one run, in shard order; all N of them or an error."""
    if not out.is_dir():
        raise OutputError(f"{out} is not a directory")
    shards = sorted(p for p in out.iterdir() if p.is_dir() and _SHARD_RE.search(p.name))
    if not shards:
        raise OutputError(f"{out} contains no shard-IIIII-of-NNNNN directories")
    counts = {int(_SHARD_RE.search(p.name).group(2)) for p in shards}
    if len(counts) != 1:
        raise OutputError(f"{out} mixes shards of different runs (num_shards {sorted(counts)})")
    n = counts.pop()
    have = {int(_SHARD_RE.search(p.name).group(1)): p for p in shards}
    missing = [i for i in range(n) if i not in have]
    if missing:
        raise OutputError(f"incomplete: shard(s) {', '.join(map(str, missing))} of {n} missing in {out}")
    return [have[i] for i in range(n)]


def _finished_manifest(i: int, shard: Path) -> dict:
    m = read_manifest(shard)
    if m is None:
        raise OutputError(f"incomplete: shard {i} ({shard.name}) has no manifest")
    if not m.get("complete") or not (shard / DONE).exists():
        raise OutputError(
            f"incomplete: shard {i} stopped at row {m.get('next_row')} of {m.get('row_start')}..{m.get('row_stop')}; "
            "rerun it with --resume"
        )
    missing = [k for k in _SHARD_FIELDS if m.get(k) is None]
    if missing:
        raise OutputError(f"{shard / MANIFEST} lacks the field(s) {', '.join(missing)} of a finished shard; "
                          f"rescore shard {i}")
    verify_parts(shard, m, f"rerun shard {i} with --resume (it re-scores damaged or missing parts)")
    return m


def _check_shard_rows(i: int, shard: Path, m: dict, nlayers: int) -> None:
    """The shard holds each row of its range once per layer, in order."""
    rows = []
    for part in m["parts"]:
        with ipc.open_file(shard / part["file"]) as r:
            rows.append(r.read_all().column("row"))
    got = sum(len(c) for c in rows)
    want = (m["row_stop"] - m["row_start"]) * nlayers
    if got != want:
        raise OutputError(f"shard {i} holds {got} result rows, "
                          f"expected {want} for rows {m['row_start']}..{m['row_stop'] - 1}")
    prev = m["row_start"] - 1
    for col in rows:
        for chunk in col.chunks:
            if len(chunk) == 0:
                continue
            uniq = pc.unique(chunk)
            lo, hi = pc.min_max(chunk).values()
            if lo.as_py() < prev or hi.as_py() >= m["row_stop"] or len(uniq) * nlayers != len(chunk):
                raise OutputError(f"shard {i} has rows out of order or duplicated near row {lo.as_py()}")
            prev = hi.as_py()


def _check_coverage(shards: list[Path], ms: list[dict]) -> None:
    """Shard ranges tile [0, rows_expected) and each shard's rows match its range: every row exactly once."""
    expected, nlayers = 0, len(ms[0]["layers"])
    for i, (shard, m) in enumerate(zip(shards, ms)):
        if m["row_start"] != expected:
            raise OutputError(f"rows {expected}..{m['row_start'] - 1} are not covered by any shard")
        _check_shard_rows(i, shard, m, nlayers)
        expected = m["row_stop"]
    if expected != ms[0]["rows_expected"]:
        raise OutputError(f"rows {expected}..{ms[0]['rows_expected'] - 1} are not covered by any shard")


def _chunks(path: Path, size: int = 1 << 20):
    with open(path, "rb") as fh:
        while chunk := fh.read(size):
            yield chunk


def _write_merged(out: Path, sources: list[tuple[Path, dict]], merged: dict) -> None:
    """Copy each (shard part, merged part record) into ``out`` and write the merged manifest and ``DONE``.

    Everything is first written to temporaries beside the final names; only then are they
    renamed into place (renames need no space). A failure before that (a full disk) removes
    the temporaries and names the file that could not be written, leaving ``out`` as it was.
    """
    staged: list[Path] = []
    target = out / MANIFEST
    try:
        for src, part in sources:
            target = out / part["file"]
            staged.append(target.with_name(f".{target.name}.tmp"))
            write_own(staged[-1], _chunks(src))
        target = out / MANIFEST
        staged.append(stage(target, json_bytes(merged)))
        target = out / DONE  # renamed in last: it marks a finished run, as after a single run
        staged.append(stage(target, f"{merged['rows_expected']}\n".encode()))
    except BaseException as exc:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise cannot_write(target, exc) from None
        raise
    (out / DONE).unlink(missing_ok=True)  # first: a merge cut short must not look like a merged result
    (out / MANIFEST).unlink(missing_ok=True)
    new = {part["file"] for _, part in sources}
    for f in own_files(out, temporaries=False):
        if is_part_name(f.name) and f.name not in new:
            f.unlink()
    for tmp in staged:
        os.replace(tmp, tmp.with_name(tmp.name[1:-len(".tmp")]))
    _fsync_dir(out)


def merge(output: Path | str, overwrite: bool = False) -> dict:
    """Join the shards in ``output`` into one score directory; return the merged manifest."""
    out = Path(output)
    shards = _shard_dirs(out)
    # the merged directory and every shard are locked: no shard may still be (re)scoring while it is read
    with abort_on_signal(f"interrupted: the merge into {out} was not finished; run it again"), \
            ExitStack() as locks:
        locks.enter_context(output_lock(out, what="score output"))
        for i, shard in enumerate(shards):
            locks.enter_context(output_lock(shard, what=f"shard {i}"))
        return _merge_locked(out, shards, overwrite)


def _merge_locked(out: Path, shards: list[Path], overwrite: bool) -> dict:
    ms = [_finished_manifest(i, shard) for i, shard in enumerate(shards)]
    manifest.check_shards(ms)
    _check_coverage(shards, ms)
    if (out / MANIFEST).exists() and not overwrite:
        raise OutputError(f"{out} already holds a merged result; pass --overwrite to redo the merge")
    refuse_links(out)
    # the same bytes under new names: row count, size and checksum carry over
    sources = [(shard / part["file"], part) for shard, m in zip(shards, ms) for part in m["parts"]]
    sources = [(src, {**part, "file": f"scores-{i:05d}.arrow"}) for i, (src, part) in enumerate(sources)]
    ref = ms[0]
    merged = {k: v for k, v in ref.items() if k not in ("shard_index", "row_start", "row_stop", "parts")}
    merged.update(
        parts=[part for _, part in sources], complete=True, num_shards=len(shards), next_row=ref["rows_expected"],
        elapsed_s=round(max(m["elapsed_s"] for m in ms), 3),
        tokens=sum(m["tokens"] for m in ms),
        shards=[{"dir": shard.name, "rows": m["row_stop"] - m["row_start"], "elapsed_s": m["elapsed_s"]}
                for shard, m in zip(shards, ms)],
        merged_at=time.time(),
    )
    merged["tokens_per_s"] = round(merged["tokens"] / merged["elapsed_s"], 1) if merged["elapsed_s"] else None
    _write_merged(out, sources, merged)
    return merged
