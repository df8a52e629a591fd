"""``anglerank sample``: an open-loop GAIN-RL curriculum written ahead of training.

For trainers that cannot call back into anglerank: the curriculum package's sweep
(docs/method.md, "The training loop" without the feedback term; the window centre moves a fixed step
per epoch and stays on the data) draws every epoch's ranks, and this module writes
them as one Parquet file per epoch (or one file with all epochs in order), each row
the input row with its ``angle_*`` columns and ``epoch``.

A curriculum directory is built next to the output and renamed into place, and it
counts as finished only once its ``sample.json`` is there: an interrupted run leaves
no half-written curriculum that looks complete, and running it again just works.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from anglerank.curation.scores import (
    ROW, check_memory_mb, covers_all_rows, load_layer_scores, open_data, provenance, rank_table, verify_inputs,
    window_rows as _window,
)
from anglerank.curriculum import draw_schedule, sweep_sampler
from anglerank.curriculum.rankings import Ranking
from anglerank.curriculum.units import parse_rank_value
from anglerank.data.parquet_out import (
    ANGLE_FIELDS, EPOCH_FIELD, AtomicParquet, assemble, check_added_columns, check_output_file, output_schema,
)
from anglerank.data.reader import InputError, ParquetFiles
from anglerank.data.lock import output_lock, stale_temps
from anglerank.data.writer import OutputError, _fsync_dir, cannot_write, write_json_atomic
from anglerank.errors import UserError
from anglerank.signals import abort_on_signal

__all__ = ["sample"]

SAMPLE_JSON = "sample.json"
_EPOCH_FILE = re.compile(r"epoch_\d{4,}\.parquet")


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
    ranking: str = "angle",
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
    The window walks the angle ranking (``by``, ``ascending``) unless ``ranking`` names
    another (:mod:`anglerank.curriculum.rankings`: ``random``, ``length`` in prompt
    tokens, ``column:NAME[:desc]``) over the same rows. Default ``sigma`` is the
    curriculum's (2/15 N, the authors' 1000 ranks scaled from their 7,500 prompts). The
    centre stays on the data: a step that would carry it past the last rank leaves it there
    (every later epoch still draws K distinct rows spread over the tail), or with ``wrap``
    starts a new pass at rank 0.

    Output: ``output/epoch_0000.parquet`` ... plus ``output/sample.json``; with
    ``concat`` the single file ``output`` holding all epochs in order. Every file keeps
    the input columns and adds the ``angle_*`` columns and ``epoch``. Rows are shuffled
    within an epoch (seeded) unless ``keep_order`` (then in rank order).
    """
    t0 = time.perf_counter()
    if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 1:
        raise UserError(f"--epochs must be a positive integer, got {epochs!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"--seed must be an integer >= 0, got {seed!r}")
    check_memory_mb(memory_mb)
    files = open_data(data)
    out = Path(output)
    # SIGTERM cleans up like Ctrl-C; one writer per output (locked from outside: it is renamed into place)
    with abort_on_signal(f"interrupted: no curriculum was written to {out}; run the same command again"), \
            output_lock(out, what="sample output", directory=False):
        if concat:
            check_output_file(out, files.files, overwrite)
        else:
            _check_sample_dir(out, overwrite)
        ls = load_layer_scores(scores_dir, layer, force)
        problems = verify_inputs(ls.manifest, files, force)
        table, n_scored = rank_table(ls.frame, files.total_rows, by, ascending, drop_null=not include_null)
        if table.height == 0:
            raise InputError("no scored rows to sample from" + ("" if include_null else " (all scores are null)"))
        table = _walk_order(table, Ranking.parse(ranking), files, ls.frame, seed)
        draws, params = _schedule(table.height, subset, epochs, mu0=mu0, sigma=sigma, step=step, seed=seed,
                                  shuffle=not keep_order, wrap=wrap)
        params.update(ranking=str(Ranking.parse(ranking)), by=by, ascending=ascending, include_null=include_null,
                      mu=params.pop("mu"))
        check_added_columns(files.schema, [EPOCH_FIELD.name], "rename it before sampling")
        prov = provenance("sample", ls, scores_dir, **{k: v for k, v in params.items() if k != "mu"})
        schema = output_schema(files.metadata_schema, (*ANGLE_FIELDS, EPOCH_FIELD), prov)
        window = int(window_rows) if window_rows else _window(files, memory_mb)
        summary = {
            "output": str(out), "concat": concat, "files": [], "rows_in": files.total_rows, "ranked": table.height,
            "null_excluded": 0 if include_null else files.total_rows - n_scored,
            "unscored_rows": files.total_rows - int((ls.frame[ROW] < files.total_rows).sum()),
            "rows_written": sum(len(d) for d in draws), **params, "layer": ls.layer,
            "estimator": ls.manifest.get("estimator"), "forced": bool(force), "input_mismatch": problems,
            "score_dir_complete": covers_all_rows(ls.manifest),
        }
        if concat:
            summary["files"] = _write(files, table, draws, schema, out, concat=True, window=window)
            return {**summary, "elapsed_s": round(time.perf_counter() - t0, 3)}
        # built beside the output and renamed into place: a curriculum is there whole or not at all
        with _staging_dir(out) as tmp:
            summary["files"] = _write(files, table, draws, schema, tmp, concat=False, window=window, shown=out)
            summary["elapsed_s"] = round(time.perf_counter() - t0, 3)
            try:
                write_json_atomic(tmp / SAMPLE_JSON, {**summary, "provenance": prov})
            except OSError as exc:
                raise cannot_write(out / SAMPLE_JSON, exc) from None
            _publish(tmp, out)
    return summary


def _walk_order(table, ranking: Ranking, files: ParquetFiles, scores, seed: int):
    """The ranked table re-ordered into the walk of ``ranking`` (the angle ranking as it is)."""
    import polars as pl

    if ranking.kind == "angle":
        return table
    rows = table[ROW].to_numpy()
    lengths = values = None
    if ranking.kind == "length":
        lengths = table.select(ROW).join(scores.select(ROW, "n_tokens"), on=ROW, how="left")["n_tokens"].to_list()
    elif ranking.kind == "column":
        values = files.column(ranking.column, rows.tolist())
    order = ranking.order(len(rows), seed=seed, lengths=lengths, values=values)
    return table[pl.Series(order)]


def _schedule(n: int, subset, epochs: int, *, mu0, sigma, step, seed: int, shuffle: bool,
              wrap: bool) -> tuple[list[np.ndarray], dict]:
    """Every epoch's draw (rank positions) and the resolved settings, from the curriculum's sweep."""
    def parse(v):
        return None if v is None else parse_rank_value(v)

    sampler = sweep_sampler(n, parse(subset), epochs, mu0=parse(mu0), sigma=parse(sigma), step=parse(step),
                            seed=seed, shuffle=shuffle, wrap=wrap)
    settings = {"n_items": n, "subset": sampler.subset_size, "epochs": epochs, "mu0": sampler.mu0,
                "sigma": sampler.sigma, "step": sampler.step, "wrap": wrap, "seed": seed, "shuffle": shuffle}
    draws, mus = draw_schedule(sampler, epochs)
    return draws, {**settings, "mu": mus}


def _write(files: ParquetFiles, table, draws: list[np.ndarray], schema: pa.Schema, out: Path, *, concat: bool,
           window: int, shown: Path | None = None) -> list[str]:
    """Write the epochs into the directory ``out`` (or the file, with ``concat``), ``window`` rows of data
    at a time; return the file names written. Errors name the files under ``shown`` (where they are going)."""
    ranked = table.to_arrow()  # rank -> row and angle columns
    row_of_rank = table[ROW].to_numpy()
    names: list[str] = []
    with ExitStack() as stack:
        one_file = stack.enter_context(AtomicParquet(out, schema)) if concat else None
        for group in _epoch_groups([len(d) for d in draws], window):
            ranks = np.concatenate([draws[t] for t in group])
            epoch_of = np.concatenate([np.full(len(draws[t]), t, dtype=np.int64) for t in group])
            added = ranked.take(pa.array(ranks)).append_column(EPOCH_FIELD, pa.array(epoch_of))
            rows = assemble(files.take(row_of_rank[ranks]), added, schema)
            if one_file is not None:
                one_file.write(rows)
                continue
            offset = 0
            for t in group:
                name = f"epoch_{t:04d}.parquet"
                with AtomicParquet(out / name, schema, shown=(shown or out) / name) as w:
                    w.write(rows.slice(offset, len(draws[t])))
                offset += len(draws[t])
                names.append(name)
    return [out.name] if concat else names


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


def _ours(p: Path) -> bool:
    """A file of a curriculum directory (everything else in it is the user's and is kept)."""
    return p.name == SAMPLE_JSON or _EPOCH_FILE.fullmatch(p.name) is not None


def _check_sample_dir(out: Path, overwrite: bool) -> None:
    """A finished curriculum (its ``sample.json``) is replaced only with ``overwrite``.

    Epoch files without ``sample.json`` are what an interrupted run left while moving a
    curriculum into place; they are replaced without asking.
    """
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a directory (use --concat to write one file)")
    if (out / SAMPLE_JSON).exists() and not overwrite:
        raise OutputError(f"output directory {out} already holds a curriculum; pass --overwrite to replace it")


@contextlib.contextmanager
def _staging_dir(out: Path) -> Iterator[Path]:
    """An empty directory next to ``out`` for the new curriculum; gone afterwards unless published."""
    for stale in stale_temps(out):  # we hold the output's lock
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise OutputError(f"cannot create {tmp} next to the output: {exc.strerror or exc}") from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished curriculum from ``tmp`` to ``out``, ``sample.json`` last.

    When ``out`` is absent or holds only curriculum files, the whole directory is
    renamed into place; when it also holds the user's files, those are kept and the
    curriculum files are replaced one by one, ``sample.json`` (what marks a curriculum
    finished) removed first and moved in last.
    """
    if out.is_dir() and not out.is_symlink() and all(_ours(p) for p in out.iterdir()):
        old = out.parent / f".{out.name}.{os.getpid()}.old.tmp"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    elif not out.exists():
        os.rename(tmp, out)
    else:
        (out / SAMPLE_JSON).unlink(missing_ok=True)
        for p in out.iterdir():
            if _ours(p):
                p.unlink()
        for p in sorted(tmp.iterdir(), key=lambda q: q.name == SAMPLE_JSON):
            os.replace(p, out / p.name)
    _fsync_dir(out.parent)
