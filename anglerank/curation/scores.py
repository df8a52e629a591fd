"""What rank, sample and inspect share: a score directory read back, and the data it scored.

How the join works. ``anglerank score`` numbers rows 0.. over its input files in
order and records each file's fingerprint in ``manifest.json``. Here the scores of
one layer are read with polars (``scan_ipc``), the data files are checked against
the fingerprints, and a small "rank table" (input row -> angle columns, in rank
order) is built from the scores alone; the commands then fetch the data rows they
need, window by window, with :meth:`anglerank.data.reader.ParquetFiles.take`.

Null scores. A row whose ranking value (``by``) is null (unscored, question too
short, no prefix, or beyond ``--limit``) is ranked after every scored row, in input
order: its ``angle_rank`` continues the sequence (so ``angle_rank`` is always the
row's position in the ranking) and its ``angle_pct`` is null. NaN is treated as
null. The authors' released code sorts NaN first (docs/method.md, "What the released code does"); anglerank
does not, on purpose: an unscorable prompt is no evidence of high concentration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anglerank.data.parquet_out import ANGLE_COLUMNS, check_added_columns
from anglerank.data.reader import InputError, ParquetFiles
from anglerank.data.writer import MANIFEST, read_manifest, verify_parts
from anglerank.errors import UserError

__all__ = ["BY_CHOICES", "ROW", "LayerScores", "check_memory_mb", "covers_all_rows", "load_layer_scores", "open_data",
           "open_manifest", "provenance", "rank_table", "verify_inputs", "window_rows"]

ROW = "__anglerank_row__"  # the input row number in the score frames and the rank table
BY_CHOICES = ("score", "intra", "inter")
DEFAULT_MEMORY_MB = 1024
_SCORE_COLUMNS = {"row": "Int64", "id": "Int64", "n_tokens": "Int32", "n_prefix": "Int32", "n_question": "Int32",
                  "intra": "Float64", "inter": "Float64", "score": "Float64", "truncated": "Boolean", "note": "String"}


# --------------------------------------------------------------------------- the data

def open_data(data) -> ParquetFiles:
    """The scored input(s) (paths or in-memory tables), checked to share one schema and to hold no
    ``angle_*`` column."""
    if data is None or (isinstance(data, (list, tuple)) and not data):
        raise InputError("no --data given: pass the input(s) that were scored")
    files = ParquetFiles(data)
    check_added_columns(files.schema, ANGLE_COLUMNS,
                        "is it an anglerank output? Pass the original input(s) that were scored")
    return files


def check_memory_mb(memory_mb: float | None) -> None:
    """``--memory-mb`` is a positive, finite number of MiB (None: the default)."""
    if memory_mb is None:
        return
    try:
        ok = math.isfinite(float(memory_mb)) and float(memory_mb) > 0 and not isinstance(memory_mb, bool)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"--memory-mb must be a positive number of MiB, got {memory_mb!r}")


def window_rows(files: ParquetFiles, memory_mb: float | None) -> int:
    """Rows per pass so that one window's data (row group read, taken rows, output copy) fits the budget."""
    check_memory_mb(memory_mb)
    budget = (DEFAULT_MEMORY_MB if memory_mb is None else float(memory_mb)) * 2**20
    return max(1, int(budget / (3.0 * max(files.bytes_per_row, 1.0))))


def verify_inputs(manifest: dict, files: ParquetFiles, force: bool) -> list[str]:
    """Compare the data files with the manifest's fingerprints; raise unless ``force``.

    Returns the list of problems found (empty when the files match).
    """
    scored = manifest.get("inputs") or []
    problems: list[str] = []
    entries = files.fingerprints()
    prints = [e["fingerprint"] for e in entries]
    if len(scored) != len(entries):
        problems.append(f"{len(scored)} file(s) were scored but --data names {len(entries)}")
    for i, (s, e, fp) in enumerate(zip(scored, entries, prints)):
        if fp != s.get("fingerprint"):
            problems.append(
                f"{Path(e['path']).name} is not the file scored as input {i} ({Path(s.get('path', '?')).name}; "
                f"fingerprint {fp} != {s.get('fingerprint')})"
            )
    if problems and sorted(prints) == sorted(s.get("fingerprint") for s in scored):
        problems.append("same files, different order: pass them in the order they were scored")
    if problems and not force:
        raise InputError(
            "--data does not match the scored inputs: " + "; ".join(problems)
            + ". Pass the files given to `anglerank score`, in the same order, or --force to join by row position "
            "anyway"
        )
    return problems


# --------------------------------------------------------------------------- the scores

@dataclass
class LayerScores:
    manifest: dict
    layer: int | None
    layers: list[int]
    frame: object  # pl.DataFrame: ROW, id, n_tokens, n_prefix, n_question, intra, inter, score, truncated, note


def covers_all_rows(manifest: dict) -> bool:
    """Complete, and not one shard of a sharded run (a merged run covers every row)."""
    start, stop = manifest.get("row_start", 0), manifest.get("row_stop", manifest.get("rows_expected"))
    one_shard = "shard_index" in manifest and (manifest.get("num_shards") or 1) > 1
    return bool(manifest.get("complete")) and not one_shard and start == 0 and stop == manifest.get("rows_expected")


def open_manifest(scores_dir, force: bool) -> dict:
    """The manifest of a score directory; an incomplete or partial one (one shard) only with ``force``."""
    d = Path(scores_dir)
    if not d.is_dir():
        raise InputError(f"score directory not found: {d}")
    manifest = read_manifest(d)
    if manifest is None:
        if any(d.glob("shard-*-of-*")):
            raise InputError(f"{d} holds unmerged shards; run `anglerank merge {d}` first")
        raise InputError(f"{d} has no {MANIFEST}; is it an anglerank score directory?")
    if manifest.get("kind", "score") != "score":
        raise InputError(f"{d} holds {manifest['kind']} results, not angle scores; pass an `anglerank score` "
                         "output directory")
    if not manifest.get("complete") and not force:
        done = sum(p.get("rows", 0) for p in manifest.get("parts", []))
        raise InputError(
            f"score directory {d} is incomplete ({done} score rows committed, "
            f"{manifest.get('rows_expected', '?')} input rows expected); "
            "finish it with `anglerank score ... --resume`, "
            "or pass --force to use the committed rows (the rest get null scores)"
        )
    if not covers_all_rows(manifest) and manifest.get("complete") and not force:
        what = (f"shard {manifest.get('shard_index')} of {manifest.get('num_shards')}" if "shard_index" in manifest
                else "part of a run")
        raise InputError(
            f"score directory {d} holds only {what}: rows {manifest.get('row_start')}.."
            f"{manifest.get('row_stop', 0) - 1} of {manifest.get('rows_expected')}; run `anglerank merge {d.parent}` "
            f"when every shard is done and use {d.parent}, or pass --force to use these rows (the rest get null scores)"
        )
    return manifest


def _choose_layer(d: Path, manifest: dict, layer: int | None) -> int | None:
    layers = [int(x) for x in (manifest.get("layers") or [])]
    if layer is not None and int(layer) < 0 and manifest.get("num_layers"):
        layer = int(layer) + int(manifest["num_layers"])  # -1 = the model's last layer, as in `score`
    if layer is not None and layers and int(layer) not in layers:
        raise UserError(
            f"layer {layer} was not scored in {d}; scored layers: {', '.join(map(str, layers))} "
            "(absolute layer numbers, as in its manifest)"
        )
    if layer is None and len(layers) > 1:
        raise UserError(
            f"{d} holds scores for several layers ({', '.join(map(str, layers))}); choose one with --layer"
        )
    return int(layer) if layer is not None else (layers[0] if layers else None)


def load_layer_scores(scores_dir, layer: int | None = None, force: bool = False, *,
                      verify: bool = True) -> LayerScores:
    """The committed scores of one layer as a polars DataFrame (NaN turned into null).

    With several scored layers ``layer`` is required (the error lists them); with one
    it is optional. Duplicate rows for a layer are an error. Every part is first checked
    against the manifest (row count, size, checksum), even with ``force``: ``verify=False``
    only for a directory already checked by the caller.
    """
    import polars as pl

    d = Path(scores_dir)
    manifest = open_manifest(d, force)
    chosen = _choose_layer(d, manifest, layer)
    if verify:
        verify_parts(d, manifest, "score it again (`anglerank score ... --resume` re-scores damaged or missing parts)")
    parts = [d / p["file"] for p in manifest.get("parts", [])]
    if not parts:
        frame = pl.DataFrame({c: [] for c in _SCORE_COLUMNS},
                             schema={c: getattr(pl, t) for c, t in _SCORE_COLUMNS.items()})
    else:
        lf = pl.scan_ipc([str(p) for p in parts])
        names = lf.collect_schema().names()
        if "layer" in names and chosen is not None:
            lf = lf.filter(pl.col("layer") == chosen)
        frame = lf.select([c for c in _SCORE_COLUMNS if c in names]).collect()
    frame = frame.with_columns(
        pl.col("row").cast(pl.Int64),
        *[pl.col(c).cast(pl.Float64).fill_nan(None) for c in ("intra", "inter", "score") if c in frame.columns],
    ).rename({"row": ROW})
    dup = frame.height - frame[ROW].n_unique()
    if dup:
        raise InputError(f"{d} has {dup} duplicate score rows{'' if chosen is None else f' for layer {chosen}'}")
    layers = [int(x) for x in (manifest.get("layers") or [])]
    return LayerScores(manifest, chosen, layers, frame)


def rank_table(scores, n_rows: int, by: str = "score", ascending: bool = False, drop_null: bool = False):
    """Row -> angle columns for input rows ``0 .. n_rows-1``, sorted by ``angle_rank``.

    ``scores`` is a polars DataFrame with ``ROW``, ``intra``, ``inter``, ``score``.
    Ties are broken by input row. Returns ``(table, n_scored)`` where ``n_scored`` is
    the number of rows with a non-null ``by`` value; those come first.
    """
    import polars as pl

    if by not in BY_CHOICES:
        raise UserError(f"--by must be one of {', '.join(BY_CHOICES)}, got {by!r}")
    base = pl.DataFrame({ROW: np.arange(n_rows, dtype=np.int64)})
    s = scores.select(ROW, "intra", "inter", "score").filter(pl.col(ROW) < n_rows)
    df = base.join(s, on=ROW, how="left").sort([by, ROW], descending=[not ascending, False], nulls_last=True)
    n_scored = int(df[by].is_not_null().sum())
    df = df.with_row_index("angle_rank").with_columns(pl.col("angle_rank").cast(pl.Int64))
    denom = max(n_scored - 1, 1)
    df = df.select(
        ROW,
        pl.col("intra").alias("angle_intra"),
        pl.col("inter").alias("angle_inter"),
        pl.col("score").alias("angle_score"),
        "angle_rank",
        pl.when(pl.col("angle_rank") < n_scored).then(pl.col("angle_rank") / denom).otherwise(None)
        .cast(pl.Float64).alias("angle_pct"),
    )
    if drop_null:
        df = df.head(n_scored)
    return df, n_scored


def provenance(kind: str, ls: LayerScores, scores_dir, **extra) -> dict:
    """What an output file was made from, stored in its schema metadata under ``anglerank``."""
    m = ls.manifest
    return {
        "kind": kind, "scores_dir": str(Path(scores_dir).resolve()), "model": m.get("model"),
        "estimator": m.get("estimator"), "site": m.get("site"), "preset": m.get("preset"), "layer": ls.layer,
        "inputs_fingerprint": m.get("inputs_fingerprint"), **extra,
    }
