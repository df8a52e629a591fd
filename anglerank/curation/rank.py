"""``anglerank rank``: the input rows written back out, sorted by angle concentration.

This exists so that a trainer that knows nothing about anglerank can use the scores:
every input column is kept untouched, ``angle_*`` columns are added, and the rows are
in rank order. The data is read in windows of at most ``window_rows`` rows (derived
from ``memory_mb`` and the Parquet metadata's uncompressed size), so a data set
larger than memory is written in several streaming passes instead of one in-memory
sort.
"""

from __future__ import annotations

import time
from pathlib import Path

from anglerank.curation.scores import (
    BY_CHOICES, ROW, check_memory_mb, covers_all_rows, load_layer_scores, open_data, provenance, rank_table,
    verify_inputs, window_rows as _window,
)
from anglerank.data.lock import output_lock
from anglerank.data.parquet_out import ANGLE_FIELDS, AtomicParquet, assemble, check_output_file, output_schema
from anglerank.errors import UserError
from anglerank.signals import abort_on_signal

__all__ = ["rank"]


def rank(
    scores_dir,
    data,
    output,
    *,
    by: str = "score",
    ascending: bool = False,
    drop_null: bool = False,
    force: bool = False,
    layer: int | None = None,
    overwrite: bool = False,
    memory_mb: float | None = None,
    window_rows: int | None = None,
) -> dict:
    """Write the input rows sorted by angle rank, with ``angle_*`` columns; return a summary.

    ``angle_rank`` is 0 for the highest ``by`` value (lowest with ``ascending``) and
    equals the row's position in the output; ``angle_pct = angle_rank / (n_scored - 1)``
    (0 first, 1 last scored row; 0 when only one row is scored; null for null rows).
    Rows whose ``by`` value is null come last, or are removed with ``drop_null``.
    ``force`` accepts an incomplete score directory and data whose fingerprints differ
    (rows are then joined by position). The data is read in passes of at most
    ``window_rows`` rows (default derived from ``memory_mb``, 1024 MiB).
    """
    t0 = time.perf_counter()
    if by not in BY_CHOICES:
        raise UserError(f"--by must be one of {', '.join(BY_CHOICES)}, got {by!r}")
    check_memory_mb(memory_mb)
    files = open_data(data)
    out = Path(output)
    if out.suffix and out.suffix.lower() not in (".parquet", ".pq"):  # r.csv would silently hold Parquet
        raise UserError(f"--output {out}: rank writes Parquet; give the file a .parquet name")
    # SIGTERM cleans up like Ctrl-C; one writer per output file
    with abort_on_signal(f"interrupted: {out} was not written (no partial file left)"), \
            output_lock(out, what="rank output", directory=False):
        check_output_file(out, files.files, overwrite)
        ls = load_layer_scores(scores_dir, layer, force)
        problems = verify_inputs(ls.manifest, files, force)
        table, n_scored = rank_table(ls.frame, files.total_rows, by, ascending, drop_null)
        outside = int((ls.frame[ROW] >= files.total_rows).sum())
        window = int(window_rows) if window_rows else _window(files, memory_mb)
        if window < 1:
            raise UserError(f"window_rows must be a positive integer, got {window_rows!r}")
        prov = provenance("rank", ls, scores_dir, by=by, ascending=ascending, drop_null=drop_null)
        schema = output_schema(files.metadata_schema, ANGLE_FIELDS, prov)
        passes = 0
        with AtomicParquet(out, schema) as w:
            for start in range(0, table.height, window):
                part = table.slice(start, window)
                w.write(assemble(files.take(part[ROW].to_numpy()), part.to_arrow(), schema))
                passes += 1
            if table.height == 0:
                w.write(schema.empty_table())
    return {
        "output": str(out),
        "rows_in": files.total_rows,
        "rows_out": table.height,
        "scored": n_scored,
        "null": files.total_rows - n_scored,
        "dropped_null": files.total_rows - table.height,
        "unscored_rows": files.total_rows - (ls.frame.height - outside),
        "scores_outside_data": outside,
        "by": by,
        "ascending": ascending,
        "layer": ls.layer,
        "estimator": ls.manifest.get("estimator"),
        "forced": bool(force),
        "input_mismatch": problems,
        "score_dir_complete": covers_all_rows(ls.manifest),
        "passes": passes,
        "window_rows": window,
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
