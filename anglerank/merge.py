"""Join the shards of a sharded score run into one output, refusing incomplete input.

Each shard directory (``shard-IIIII-of-NNNNN``) holds its own parts and manifest; the
merge checks that all N shards exist, finished, used the same settings, and together
cover every row exactly once, then copies their parts in row order into the top-level
directory with a merged manifest.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.ipc as ipc

from anglerank.data.writer import MANIFEST, OutputError, read_manifest, write_json_atomic

_SHARD_RE = re.compile(r"shard-(\d{5})-of-(\d{5})$")


def _settings_keys():
    from anglerank.score import SETTINGS_KEYS

    return SETTINGS_KEYS


def merge(output: Path | str, overwrite: bool = False) -> dict:
    out = Path(output)
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
    manifests = []
    for i in range(n):
        m = read_manifest(have[i])
        if m is None:
            raise OutputError(f"incomplete: shard {i} ({have[i].name}) has no manifest")
        if not m.get("complete") or not (have[i] / "DONE").exists():
            raise OutputError(
                f"incomplete: shard {i} stopped at row {m.get('next_row')} of {m.get('row_start')}..{m.get('row_stop')}; "
                "rerun it with --resume"
            )
        manifests.append(m)
    ref = manifests[0]
    for i, m in enumerate(manifests[1:], 1):
        diffs = [k for k in _settings_keys() if m.get(k) != ref.get(k)]
        if diffs:
            raise OutputError(f"shard {i} was scored with different settings ({', '.join(diffs)})")
    # every row exactly once: shard ranges tile [0, rows_expected) and each shard's rows match its range
    expected, nlayers = 0, len(ref["layers"])
    for i, m in enumerate(manifests):
        if m["row_start"] != expected:
            raise OutputError(f"rows {expected}..{m['row_start'] - 1} are not covered by any shard")
        rows = []
        for part in m["parts"]:
            with ipc.open_file(have[i] / part["file"]) as r:
                rows.append(r.read_all().column("row"))
        got = sum(len(c) for c in rows)
        want = (m["row_stop"] - m["row_start"]) * nlayers
        if got != want:
            raise OutputError(f"shard {i} holds {got} result rows, expected {want} for rows {m['row_start']}..{m['row_stop'] - 1}")
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
        expected = m["row_stop"]
    if expected != ref["rows_expected"]:
        raise OutputError(f"rows {expected}..{ref['rows_expected'] - 1} are not covered by any shard")

    if read_manifest(out) is not None and not overwrite:
        raise OutputError(f"{out} already holds a merged result; pass --overwrite to redo the merge")
    for f in out.glob("scores-*.arrow"):
        f.unlink()
    parts, idx = [], 0
    for i, m in enumerate(manifests):
        for part in m["parts"]:
            name = f"scores-{idx:05d}.arrow"
            tmp = out / f".{name}.tmp"
            shutil.copyfile(have[i] / part["file"], tmp)
            os.replace(tmp, out / name)
            parts.append({"file": name, "rows": part["rows"]})
            idx += 1
    merged = {k: v for k, v in ref.items() if k not in ("shard_index", "row_start", "row_stop", "parts")}
    merged.update(
        parts=parts, complete=True, num_shards=n, next_row=ref["rows_expected"],
        elapsed_s=round(max(m["elapsed_s"] for m in manifests), 3),
        tokens=sum(m["tokens"] for m in manifests),
        shards=[{"dir": have[i].name, "rows": m["row_stop"] - m["row_start"], "elapsed_s": m["elapsed_s"]}
                for i, m in enumerate(manifests)],
        merged_at=time.time(),
    )
    merged["tokens_per_s"] = round(merged["tokens"] / merged["elapsed_s"], 1) if merged["elapsed_s"] else None
    write_json_atomic(out / MANIFEST, merged)
    return merged
