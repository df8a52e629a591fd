"""From scores to training data: join scores back to the input rows, rank, export.

This module exists so that a trainer that knows nothing about anglerank can use the
scores: ``rank`` writes the input Parquet back out, every column untouched, sorted by
angle concentration with ``angle_*`` columns added; ``sample`` precomputes an
open-loop Gaussian curriculum (METHOD.md section 3, without the feedback term) as
one Parquet file per epoch; ``inspect`` summarises a score directory.

How the join works. ``anglerank score`` numbers rows 0.. over its input files in
order and records each file's fingerprint in ``manifest.json``. Here the same files
are scanned lazily with polars (``scan_parquet`` with a row index), the scores with
``scan_ipc``; a small "rank table" (row -> angle columns, sorted) is built from the
scores alone, then the data rows are gathered window by window in rank order. A
window holds at most ``window_rows`` rows (derived from ``memory_mb`` and the
Parquet metadata's uncompressed size), so a data set larger than memory is written
in several streaming passes over the input instead of one in-memory sort.

Why not ``sink_parquet``: polars writes ``large_string`` / ``large_list`` and drops
the schema metadata (Hugging Face ``features``), so the output would not load
*unchanged*. Each window is instead converted to Arrow, cast back to the input's
exact schema (nested types, nullability) and written with ``pyarrow``, keeping the
input's schema metadata with the new columns added to its ``huggingface`` features.

Null scores. A row whose ranking value (``by``) is null (unscored, question too
short, no prefix, or beyond ``--limit``) is ranked after every scored row, in input
order: its ``angle_rank`` continues the sequence (so ``angle_rank`` is always the
row's position in the file) and its ``angle_pct`` is null. NaN is treated as null.
The authors' released code sorts NaN first (METHOD.md section 4); anglerank does
not, on purpose: an unscorable prompt is no evidence of high concentration.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from anglerank.curriculum.units import parse_rank_value
from anglerank.data.reader import InputError, file_fingerprint, resolve_inputs
from anglerank.data.writer import MANIFEST, OutputError, read_manifest
from anglerank.errors import MissingExtra, UserError

__all__ = [
    "ANGLE_COLUMNS", "BY_CHOICES", "rank", "sample", "inspect", "rank_table", "load_layer_scores",
    "parse_rank_value", "text_histogram", "MissingExtra",
]

ROW = "__anglerank_row__"
BY_CHOICES = ("score", "intra", "inter")
ANGLE_FIELDS = (
    pa.field("angle_intra", pa.float64()),
    pa.field("angle_inter", pa.float64()),
    pa.field("angle_score", pa.float64()),
    pa.field("angle_rank", pa.int64()),
    pa.field("angle_pct", pa.float64()),
)
ANGLE_COLUMNS = tuple(f.name for f in ANGLE_FIELDS)
EPOCH_FIELD = pa.field("epoch", pa.int64())
DEFAULT_MEMORY_MB = 1024
ROW_GROUP_ROWS = 16384
_HF_TYPES = {pa.float64(): "float64", pa.int64(): "int64"}


# --------------------------------------------------------------------------- inputs

@dataclass
class Inputs:
    """The data files, checked to share one schema, with row counts and size hints."""

    files: list[Path]
    schema: pa.Schema  # first file's schema, metadata included
    rows: int
    bytes_per_row: float

    @classmethod
    def open(cls, data) -> "Inputs":
        if data is None or (isinstance(data, (list, tuple)) and not data):
            raise InputError("no --data given: pass the Parquet input(s) that were scored")
        files = resolve_inputs(list(data) if isinstance(data, (list, tuple)) else [str(data)])
        schema0, rows, nbytes = None, 0, 0
        for f in files:
            try:
                md = pq.ParquetFile(f).metadata
                schema = pq.read_schema(f)
            except Exception as exc:
                raise InputError(
                    f"{f} is not a readable Parquet file ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
                ) from None
            if schema0 is None:
                schema0 = schema
            elif not schema.remove_metadata().equals(schema0.remove_metadata()):
                raise InputError(f"{f} has a different schema from {files[0]}; all --data files must share one schema")
            rows += md.num_rows
            nbytes += sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
        for name in (*ANGLE_COLUMNS, ROW):
            if name in schema0.names:
                raise InputError(
                    f"the data already has a column {name!r} (is it an anglerank output?); "
                    "pass the original Parquet files that were scored"
                )
        return cls(files, schema0, rows, nbytes / rows if rows else 0.0)

    def scan(self):
        import polars as pl

        return pl.scan_parquet([str(f) for f in self.files], row_index_name=ROW).with_columns(
            pl.col(ROW).cast(pl.Int64)
        )

    def window_rows(self, memory_mb: float | None) -> int:
        """Rows per pass so that one window's data (Arrow + polars + cast copies) fits the budget."""
        budget = (memory_mb or DEFAULT_MEMORY_MB) * 2**20
        return max(1, int(budget / (3.0 * max(self.bytes_per_row, 1.0))))


def verify_inputs(manifest: dict, inputs: Inputs, force: bool) -> list[str]:
    """Compare the data files with the manifest's fingerprints; raise unless ``force``.

    Returns the list of problems found (empty when the files match).
    """
    scored = manifest.get("inputs") or []
    problems: list[str] = []
    prints = [file_fingerprint(f) for f in inputs.files]
    if len(scored) != len(inputs.files):
        problems.append(f"{len(scored)} file(s) were scored but --data names {len(inputs.files)}")
    for i, (s, f, fp) in enumerate(zip(scored, inputs.files, prints)):
        if fp != s.get("fingerprint"):
            problems.append(
                f"{f.name} is not the file scored as input {i} ({Path(s.get('path', '?')).name}; "
                f"fingerprint {fp} != {s.get('fingerprint')})"
            )
    if problems and sorted(prints) == sorted(s.get("fingerprint") for s in scored):
        problems.append("same files, different order: pass them in the order they were scored")
    if problems and not force:
        raise InputError(
            "--data does not match the scored inputs: " + "; ".join(problems)
            + ". Pass the files given to `anglerank score`, in the same order, or --force to join by row position anyway"
        )
    return problems


# --------------------------------------------------------------------------- scores

@dataclass
class LayerScores:
    manifest: dict
    layer: int | None
    layers: list[int]
    frame: object  # pl.DataFrame: ROW, id, n_tokens, n_prefix, n_question, intra, inter, score, truncated, note


def _open_manifest(scores_dir, force: bool) -> dict:
    d = Path(scores_dir)
    if not d.is_dir():
        raise InputError(f"score directory not found: {d}")
    manifest = read_manifest(d)
    if manifest is None:
        raise InputError(f"{d} has no {MANIFEST}; is it an anglerank score directory?")
    if not manifest.get("complete") and not force:
        done = sum(p.get("rows", 0) for p in manifest.get("parts", []))
        raise InputError(
            f"score directory {d} is incomplete ({done} score rows committed, "
            f"{manifest.get('rows_expected', '?')} input rows expected); finish it with `anglerank score ... --resume`, "
            "or pass --force to use the committed rows (the rest get null scores)"
        )
    return manifest


def load_layer_scores(scores_dir, layer: int | None = None, force: bool = False) -> LayerScores:
    """The committed scores of one layer as a polars DataFrame (NaN turned into null).

    With several scored layers ``layer`` is required (the error lists them); with one
    it is optional. Duplicate rows for a layer are an error.
    """
    import polars as pl

    d = Path(scores_dir)
    manifest = _open_manifest(d, force)
    layers = [int(x) for x in (manifest.get("layers") or [])]
    parts = [d / p["file"] for p in manifest.get("parts", [])]
    for p in parts:
        if not p.exists():
            raise InputError(f"score part {p} listed in {d / MANIFEST} is missing")
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
    chosen = int(layer) if layer is not None else (layers[0] if layers else None)
    cols = ["row", "id", "n_tokens", "n_prefix", "n_question", "intra", "inter", "score", "truncated", "note"]
    if not parts:
        frame = pl.DataFrame(
            {"row": [], "id": [], "n_tokens": [], "n_prefix": [], "n_question": [], "intra": [], "inter": [],
             "score": [], "truncated": [], "note": []},
            schema={"row": pl.Int64, "id": pl.Int64, "n_tokens": pl.Int32, "n_prefix": pl.Int32,
                    "n_question": pl.Int32, "intra": pl.Float64, "inter": pl.Float64, "score": pl.Float64,
                    "truncated": pl.Boolean, "note": pl.String},
        )
    else:
        lf = pl.scan_ipc([str(p) for p in parts])
        names = lf.collect_schema().names()
        if "layer" in names and chosen is not None:
            lf = lf.filter(pl.col("layer") == chosen)
        frame = lf.select([c for c in cols if c in names]).collect()
    frame = frame.with_columns(
        pl.col("row").cast(pl.Int64),
        *[pl.col(c).cast(pl.Float64).fill_nan(None) for c in ("intra", "inter", "score") if c in frame.columns],
    ).rename({"row": ROW})
    dup = frame.height - frame[ROW].n_unique()
    if dup:
        raise InputError(f"{d} has {dup} duplicate score rows{'' if chosen is None else f' for layer {chosen}'}")
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


# --------------------------------------------------------------------------- output

def _output_schema(in_schema: pa.Schema, extra: Iterable[pa.field], provenance: dict) -> pa.Schema:
    fields = list(in_schema) + list(extra)
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
            pass
    meta[b"anglerank"] = json.dumps(provenance, default=str).encode()
    return pa.schema(fields, metadata=meta)


def _cast_exact(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """An Arrow table from polars (large_string, large_list, ...) cast back to exact types."""
    try:
        return t.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        for f in schema:
            try:
                t.column(f.name).cast(f.type)
            except Exception:
                raise InputError(
                    f"column {f.name!r} ({f.type}) does not survive the round trip through polars ({exc})"
                ) from None
        raise


class _Gathered:
    """Data rows fetched by one streaming polars scan, held in the input's exact Arrow types.

    Reordering (``take``) is done in Arrow, not polars: polars 2.1 panics on gathers
    of some types (``Map``), and Arrow keeps dictionary / extension types untouched.
    """

    def __init__(self, inputs: Inputs, keys):
        import polars as pl

        k = pl.Series(ROW, np.unique(np.asarray(keys, dtype=np.int64)))
        df = inputs.scan().filter(pl.col(ROW).is_in(k.implode())).collect(engine="streaming")
        rows = df[ROW].to_numpy()
        order = np.argsort(rows, kind="stable")
        self.rows = rows[order]
        table = _cast_exact(df.drop(ROW).to_arrow(), pa.schema(list(inputs.schema)))
        self.table = table if np.array_equal(order, np.arange(len(order))) else table.take(order)

    def take(self, rows) -> pa.Table:
        rows = np.asarray(rows, dtype=np.int64)
        pos = np.searchsorted(self.rows, rows)
        if rows.size and (pos.max() >= len(self.rows) or not np.array_equal(self.rows[pos], rows)):
            raise RuntimeError("internal error: a ranked row was not found in the data scan")
        return self.table.take(pos)


def _assemble(data: pa.Table, part, schema: pa.Schema) -> pa.Table:
    """Input columns (already exact) + the added columns of ``part`` (a polars frame)."""
    extra_names = schema.names[data.num_columns:]
    extra = part.select(extra_names).to_arrow()
    arrays = list(data.columns) + [extra.column(n).cast(schema.field(n).type) for n in extra_names]
    return pa.Table.from_arrays(arrays, schema=schema)


def _check_output_file(path: Path, inputs: Inputs, overwrite: bool) -> None:
    if path.exists() and path.is_dir():
        raise OutputError(f"output {path} is a directory; give a file name such as ranked.parquet")
    if any(path.resolve() == f.resolve() for f in inputs.files):
        raise OutputError(f"output {path} is one of the --data files; write the ranked data elsewhere")
    if path.exists() and not overwrite:
        raise OutputError(f"output {path} exists; pass --overwrite to replace it")


class _AtomicParquet:
    """ParquetWriter to a temporary sibling, renamed over ``path`` only on success."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = Path(path)
        self.schema = schema
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.rows = 0
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    def write(self, table: pa.Table) -> None:
        """Append rows; small tables are buffered so row groups are not tiny."""
        self._buffer.append(table)
        self._buffered += table.num_rows
        self.rows += table.num_rows
        if self._buffered >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self.writer.write_table(pa.concat_tables(self._buffer), row_group_size=ROW_GROUP_ROWS)
            self._buffer, self._buffered = [], 0

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._flush()
            self.writer.close()
        except Exception:
            if exc_type is None:
                raise
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            return False
        with open(self.tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)
        return False


def _provenance(kind: str, ls: LayerScores, scores_dir, **extra) -> dict:
    m = ls.manifest
    return {
        "kind": kind, "scores_dir": str(Path(scores_dir).resolve()), "model": m.get("model"),
        "estimator": m.get("estimator"), "site": m.get("site"), "preset": m.get("preset"), "layer": ls.layer,
        "inputs_fingerprint": m.get("inputs_fingerprint"), **extra,
    }


# --------------------------------------------------------------------------- rank

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
    inputs = Inputs.open(data)
    out = Path(output)
    _check_output_file(out, inputs, overwrite)
    ls = load_layer_scores(scores_dir, layer, force)
    problems = verify_inputs(ls.manifest, inputs, force)
    table, n_scored = rank_table(ls.frame, inputs.rows, by, ascending, drop_null)
    outside = int((ls.frame[ROW] >= inputs.rows).sum())
    unscored = inputs.rows - (ls.frame.height - outside)
    window = int(window_rows) if window_rows else inputs.window_rows(memory_mb)
    if window < 1:
        raise ValueError("window_rows must be positive")
    prov = _provenance("rank", ls, scores_dir, by=by, ascending=ascending, drop_null=drop_null)
    schema = _output_schema(inputs.schema, ANGLE_FIELDS, prov)
    passes = 0
    with _AtomicParquet(out, schema) as w:
        for start in range(0, table.height, window):
            part = table.slice(start, window)
            rows = part[ROW].to_numpy()
            w.write(_assemble(_Gathered(inputs, rows).take(rows), part, schema))
            passes += 1
        if table.height == 0:
            w.write(schema.empty_table())
    return {
        "output": str(out),
        "rows_in": inputs.rows,
        "rows_out": table.height,
        "scored": n_scored,
        "null": inputs.rows - n_scored,
        "dropped_null": inputs.rows - table.height,
        "unscored_rows": unscored,
        "scores_outside_data": outside,
        "by": by,
        "ascending": ascending,
        "layer": ls.layer,
        "estimator": ls.manifest.get("estimator"),
        "forced": bool(force),
        "input_mismatch": problems,
        "score_dir_complete": bool(ls.manifest.get("complete")),
        "passes": passes,
        "window_rows": window,
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }


# --------------------------------------------------------------------------- sample



def _epoch_groups(sizes: list[int], window: int) -> Iterator[range]:
    """Consecutive epochs whose total rows stay within ``window`` (at least one epoch each)."""
    start, total = 0, 0
    for t, k in enumerate(sizes):
        if t > start and total + k > window:
            yield range(start, t)
            start, total = t, 0
        total += k
    if start < len(sizes):
        yield range(start, len(sizes))


def _prepare_sample_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a directory (use --concat to write one file)")
    ours = [*out.glob("epoch_*.parquet"), out / "sample.json"] if out.exists() else []
    ours = [p for p in ours if p.exists()]
    if ours and not overwrite:
        raise OutputError(f"output directory {out} already holds a curriculum; pass --overwrite to replace it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {out}: {exc.strerror or exc}") from None
    for p in ours:
        p.unlink()


def sample(
    scores_dir,
    data,
    subset,
    epochs: int,
    output,
    *,
    mu0=0,
    sigma=None,
    step=None,
    seed: int = 0,
    keep_order: bool = False,
    wrap: bool = False,
    concat: bool = False,
    by: str = "score",
    ascending: bool = False,
    include_null: bool = False,
    force: bool = False,
    layer: int | None = None,
    overwrite: bool = False,
    memory_mb: float | None = None,
    window_rows: int | None = None,
) -> dict:
    """Write an open-loop Gaussian curriculum: one Parquet file of ``subset`` rows per epoch.

    Epoch ``t`` draws ``subset`` distinct ranks with probability proportional to
    ``exp(-0.5 ((rank - mu_t) / sigma)^2)``, ``mu_t = mu0 + t * step``, over the ``N``
    ranked rows (rows with a null score are left out unless ``include_null``).
    ``mu0``, ``sigma``, ``step`` and ``subset`` follow ``resolve_rank_units``: an int is
    ranks, a float in (0, 1] a fraction of N (``0.1 -> 0.1 N``), a larger float ranks.
    ``step=None`` sweeps the centre from ``mu0`` to the last rank over the epochs.
    Default ``sigma`` is the curriculum's (2/15 N, the authors' 1000 ranks scaled from
    their 7,500 prompts). The centre stays on the data: a step that would carry it past
    the last rank leaves it there (every later epoch still draws K distinct rows spread
    over the tail), or with ``wrap`` starts a new pass at rank 0.

    Output: ``output/epoch_0000.parquet`` ... plus ``output/sample.json``; with
    ``concat`` the single file ``output`` holding all epochs in order. Every file keeps
    the input columns and adds the ``angle_*`` columns and ``epoch``. Rows are shuffled
    within an epoch (seeded) unless ``keep_order`` (then in rank order).
    """
    from anglerank.curriculum import draw_schedule, sweep_sampler

    t0 = time.perf_counter()
    if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 1:
        raise UserError(f"--epochs must be a positive integer, got {epochs!r}")
    inputs = Inputs.open(data)
    out = Path(output)
    if concat:
        _check_output_file(out, inputs, overwrite)
    ls = load_layer_scores(scores_dir, layer, force)
    problems = verify_inputs(ls.manifest, inputs, force)
    table, n_scored = rank_table(ls.frame, inputs.rows, by, ascending, drop_null=not include_null)
    n = table.height
    if n == 0:
        raise InputError("no scored rows to sample from" + ("" if include_null else " (all scores are null)"))
    parse = lambda v: None if v is None else parse_rank_value(v)  # noqa: E731
    sampler = sweep_sampler(n, parse(subset), epochs, mu0=parse(mu0), sigma=parse(sigma), step=parse(step),
                            seed=seed, shuffle=not keep_order, wrap=wrap)
    step_abs = sampler.step
    draws, mus = draw_schedule(sampler, epochs)

    window = int(window_rows) if window_rows else inputs.window_rows(memory_mb)
    params = {
        "n_items": n, "subset": sampler.subset_size, "epochs": epochs, "mu0": sampler.mu0, "sigma": sampler.sigma,
        "step": step_abs, "wrap": wrap, "seed": seed, "shuffle": not keep_order, "by": by, "ascending": ascending,
        "include_null": include_null, "mu": mus,
    }
    if EPOCH_FIELD.name in inputs.schema.names:
        raise InputError("the data already has a column 'epoch'; rename it before sampling")
    prov = _provenance("sample", ls, scores_dir, **{k_: v for k_, v in params.items() if k_ != "mu"})
    schema = _output_schema(inputs.schema, (*ANGLE_FIELDS, EPOCH_FIELD), prov)

    import polars as pl

    files: list[str] = []
    row_of_rank = table[ROW].to_numpy()
    with ExitStack() as stack:
        if concat:
            concat_writer = stack.enter_context(_AtomicParquet(out, schema))
        else:
            _prepare_sample_dir(out, overwrite)
        for group in _epoch_groups([len(d) for d in draws], window):
            ranks = np.concatenate([draws[t] for t in group])
            epoch_of = np.concatenate([np.full(len(draws[t]), t, dtype=np.int64) for t in group])
            part = table[pl.Series(ranks)].with_columns(pl.Series("epoch", epoch_of))
            rows = row_of_rank[ranks]
            arrow = _assemble(_Gathered(inputs, rows).take(rows), part, schema)
            if concat:
                concat_writer.write(arrow)
                continue
            offset = 0
            for t in group:
                name = f"epoch_{t:04d}.parquet"
                with _AtomicParquet(out / name, schema) as w:
                    w.write(arrow.slice(offset, len(draws[t])))
                offset += len(draws[t])
                files.append(name)
    summary = {
        "output": str(out),
        "concat": concat,
        "files": files if not concat else [out.name],
        "rows_in": inputs.rows,
        "ranked": n,
        "null_excluded": 0 if include_null else inputs.rows - n_scored,
        "rows_written": sum(len(d) for d in draws),
        **params,
        "layer": ls.layer,
        "estimator": ls.manifest.get("estimator"),
        "forced": bool(force),
        "input_mismatch": problems,
        "score_dir_complete": bool(ls.manifest.get("complete")),
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    if not concat:
        from anglerank.data.writer import write_json_atomic

        write_json_atomic(out / "sample.json", {**summary, "provenance": prov})
    return summary


# --------------------------------------------------------------------------- inspect

QUANTILES = {"min": 0.0, "p05": 0.05, "p25": 0.25, "median": 0.5, "p75": 0.75, "p95": 0.95, "max": 1.0}


def _stats(x: np.ndarray) -> dict:
    """count, mean, std (ddof=1), and linear-interpolated quantiles of the non-null values."""
    x = x[~np.isnan(x)]
    if x.size == 0:
        return {"count": 0, "mean": None, "std": None, **{k: None for k in QUANTILES}}
    q = np.quantile(x, list(QUANTILES.values()))
    return {
        "count": int(x.size),
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size > 1 else None,
        **{k: float(v) for k, v in zip(QUANTILES, q)},
    }


def _nan_or_none(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _col(frame, name: str) -> np.ndarray:
    return frame[name].cast(float).to_numpy().astype(np.float64) if name in frame.columns else np.array([])


def _questions(inputs: Inputs, manifest: dict, rows: list[int]) -> dict[int, str | None]:
    """The question text of the given rows, read the way `score` read them."""
    from anglerank.render import question_from_messages

    col = manifest.get("prompt_column")
    if not col or not rows:
        return {}
    parts = col.split(".")
    if parts[0] not in inputs.schema.names:
        return {}
    g = _Gathered(inputs, rows)
    out = {}
    for r, value in zip(g.rows.tolist(), g.table.column(parts[0]).to_pylist()):
        for p in parts[1:]:
            value = value.get(p) if isinstance(value, dict) else None
        if isinstance(value, list):
            value = question_from_messages(value)[1]
        out[int(r)] = value if isinstance(value, str) else None
    return out


def inspect(
    scores_dir,
    data=None,
    *,
    k: int = 5,
    layer: int | None = None,
    bins: int = 20,
    plot=None,
    force: bool = False,
) -> dict:
    """Summary statistics of a score directory (one layer), as a JSON-ready dict.

    Keys: ``count`` (score rows), ``null`` (per column), ``stats`` (mean, std with
    ddof=1, linear quantiles of intra, inter, score), ``spearman`` of each with
    ``n_question`` and ``n_tokens``, ``histogram`` of score (``bins`` equal-width bins
    from min to max), ``top`` / ``bottom`` ``k`` rows by score (with question text when
    ``data`` is given), and ``layers`` (per-layer score summary when several were
    scored). Defaults to the last scored layer. ``plot`` writes a PNG (needs matplotlib).
    """
    from anglerank.angles import spearman

    if k < 0:
        raise UserError("-k must be >= 0")
    if bins < 1:
        raise UserError("--bins must be >= 1")
    if plot is not None:
        _require_matplotlib()
    manifest = _open_manifest(scores_dir, force)
    layers = [int(x) for x in (manifest.get("layers") or [])]
    if layer is None and len(layers) > 1:
        layer = layers[-1]
    ls = load_layer_scores(scores_dir, layer, force)
    f = ls.frame
    intra, inter, score = _col(f, "intra"), _col(f, "inter"), _col(f, "score")
    nq, nt = _col(f, "n_question"), _col(f, "n_tokens")
    res: dict = {
        "scores_dir": str(scores_dir),
        "model": manifest.get("model"),
        "estimator": manifest.get("estimator"),
        "site": manifest.get("site"),
        "layer": ls.layer,
        "complete": bool(manifest.get("complete")),
        "rows_expected": manifest.get("rows_expected"),
        "count": int(f.height),
        "null": {c: int(np.isnan(v).sum()) for c, v in (("intra", intra), ("inter", inter), ("score", score))},
        "truncated": int(f["truncated"].sum()) if "truncated" in f.columns else 0,
        "notes": {},
        "stats": {c: _stats(v) for c, v in (("intra", intra), ("inter", inter), ("score", score))},
        "spearman": {
            "n_question": {c: _nan_or_none(spearman(v, nq)) for c, v in (("score", score), ("intra", intra), ("inter", inter))},
            "n_tokens": {c: _nan_or_none(spearman(v, nt)) for c, v in (("score", score), ("intra", intra), ("inter", inter))},
        },
    }
    if "note" in f.columns:
        vc = f["note"].drop_nulls().value_counts(sort=True)
        res["notes"] = {str(a): int(b) for a, b in zip(vc[vc.columns[0]].to_list(), vc[vc.columns[1]].to_list())}
    valid = score[~np.isnan(score)]
    if valid.size:
        lo, hi = float(valid.min()), float(valid.max())
        counts, edges = np.histogram(valid, bins=bins, range=(lo, hi) if hi > lo else (lo - 0.5, lo + 0.5))
        res["histogram"] = {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}
    else:
        res["histogram"] = {"edges": [], "counts": []}

    import polars as pl

    ranked = f.filter(pl.col("score").is_not_null()).sort(["score", ROW], descending=[True, False])
    top, bottom = ranked.head(k), ranked.tail(k).reverse() if k else ranked.head(0)
    qtext: dict = {}
    if data is not None:
        inputs = Inputs.open(data)
        res["input_mismatch"] = verify_inputs(manifest, inputs, force)
        qtext = _questions(inputs, manifest, top[ROW].to_list() + bottom[ROW].to_list())

    def rows_of(frame) -> list[dict]:
        out = []
        for d in frame.select([c for c in (ROW, "id", "score", "intra", "inter", "n_question") if c in frame.columns]).to_dicts():
            d["row"] = d.pop(ROW)
            if data is not None:
                d["question"] = qtext.get(d["row"])
            out.append(d)
        return out

    res["top"], res["bottom"] = rows_of(top), rows_of(bottom)
    if len(layers) > 1:
        res["layers"] = []
        for lay in layers:
            lf = ls.frame if lay == ls.layer else load_layer_scores(scores_dir, lay, force).frame
            s_l = _col(lf, "score")
            st = _stats(s_l)
            res["layers"].append({
                "layer": lay, "scored": st["count"], "mean": st["mean"], "std": st["std"],
                "spearman_n_question": _nan_or_none(spearman(s_l, _col(lf, "n_question"))),
            })
    if plot is not None:
        res["plot"] = str(plot_scores(f, plot, title=_plot_title(res)))
    return res


def text_histogram(edges: list[float], counts: list[int], width: int = 40) -> list[str]:
    """Unicode bar lines (eighth-block resolution) for a histogram; pure, for the CLI."""
    if not counts:
        return []
    blocks = " ▏▎▍▌▋▊▉█"
    top = max(counts) or 1
    lines = []
    for i, c in enumerate(counts):
        units = round(c / top * width * 8)
        bar = "█" * (units // 8) + (blocks[units % 8] if units % 8 else "")
        lines.append(f"{edges[i]:>10.5f} {edges[i + 1]:>10.5f} │{bar:<{width}} {c}")
    return lines


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtra("--plot needs matplotlib: pip install 'anglerank[plot]'") from None


def _plot_title(res: dict) -> str:
    sp = res["spearman"]["n_question"]["score"]
    sp_s = "n/a" if sp is None else f"{sp:+.3f}"
    return (f"{res.get('model') or 'scores'} · {res.get('estimator')} · layer {res.get('layer')} · "
            f"{res['stats']['score']['count']:,} scored · Spearman(score, n_question) {sp_s}")


def plot_scores(frame, path, title: str = "") -> Path:
    """Histograms of intra, inter, score and score vs question length, as one PNG."""
    _require_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    data = {c: _col(frame, c) for c in ("intra", "inter", "score", "n_question")}
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, name, color in zip(axes.flat[:3], ("intra", "inter", "score"), ("#4C72B0", "#55A868", "#C44E52")):
        v = data[name][~np.isnan(data[name])]
        if v.size:
            ax.hist(v, bins=min(50, max(5, int(np.sqrt(v.size)))), color=color, alpha=0.85)
            ax.axvline(float(np.median(v)), color="k", lw=1, ls="--", label=f"median {np.median(v):.4f}")
            ax.legend(fontsize=8)
        ax.set_title(f"C_{name}" if name != "score" else "score", fontsize=10)
        ax.set_xlabel(name)
        ax.set_ylabel("rows")
    ax = axes.flat[3]
    ok = ~(np.isnan(data["score"]) | np.isnan(data["n_question"]))
    ax.scatter(data["n_question"][ok], data["score"][ok], s=6, alpha=0.5, color="#8172B2")
    ax.set_xlabel("question tokens (n_question)")
    ax.set_ylabel("score")
    ax.set_title("score vs question length", fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return path
