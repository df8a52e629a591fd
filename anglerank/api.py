"""The Python API (notebooks, scripts): ``score``, ``rank`` and ``sample``, returning Arrow tables.

Each function does what its command does, on the same inputs (paths, ``hf://`` paths
or in-memory tables: ``datasets.Dataset``, ``pyarrow.Table``, polars and pandas
DataFrames) and with the same checks; a user mistake raises
:class:`anglerank.errors.UserError` with the message the command prints. ``output``
is optional: without it the results are written to a temporary place and returned
(``score`` then cannot be resumed). The scores table that ``score`` returns carries
its manifest (how it was scored, which data), so it can be handed to ``rank`` and
``sample`` in place of a score directory.

Progress shows as a ``tqdm.auto`` bar (a widget in Jupyter, text in a terminal), or a
rich bar where tqdm is not installed; ``progress=False`` turns it off and a callable
``progress(done, total, tokens)`` receives the reports instead.
"""

from __future__ import annotations

import inspect
import json
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa

from anglerank.curation.rank import rank as rank_command
from anglerank.curation.sample import sample as sample_command
from anglerank.data.writer import MANIFEST, checksum, load_scores, read_manifest
from anglerank.errors import Interrupted, UserError
from anglerank.scoring.options import ScoreOptions

__all__ = ["manifest_of", "rank", "sample", "score"]

MANIFEST_KEY = b"anglerank.manifest"  # the scores table's schema metadata key holding its manifest
_PART = "scores-00000.arrow"


def score(data, output=None, *, progress: bool | Callable = True, prompt_column: str | None = None,
          id_column: str | None = None, limit: int | None = None, overwrite: bool = False, resume: bool = False,
          commit_every: int = 4096, **options) -> pa.Table:
    """Score ``data`` and return the scores (one row per input row and layer) as a ``pyarrow.Table``.

    ``data``: a path (Parquet, JSON Lines, JSON, Arrow, a ``datasets`` folder, a glob or
    directory, ``hf://datasets/...``), a list of paths, or an in-memory table. ``output``:
    the score directory to write as well (what ``anglerank score -o`` writes; needed for
    ``resume``). ``options`` are those of :class:`anglerank.scoring.engine.ScoreOptions`
    (``model``, ``preset``, ``layers``, ``estimator``, ``dtype``, ``device``, ...).
    """
    from anglerank.scoring.run import run_score

    _check_options(ScoreOptions, options, "score")
    kw = dict(options=ScoreOptions(**options), prompt_column=prompt_column, id_column=id_column, limit=limit,
              commit_every=commit_every, warn=_warn)
    if output is None and resume:
        raise UserError("resume=True needs output=: the score directory of the interrupted run")
    with _progress(progress) as report:
        if output is not None:
            try:
                manifest = run_score(data, output, overwrite=overwrite, resume=resume, progress=report, **kw)
            except Interrupted as exc:
                raise Interrupted(exc.code, f"{exc} (from Python: the same call with resume=True)") from None
            return _with_manifest(load_scores(output), manifest)
        with tempfile.TemporaryDirectory(prefix="anglerank-") as tmp:
            try:
                manifest = run_score(data, Path(tmp) / "scores", progress=report, **kw)
            except Interrupted as exc:
                raise Interrupted(exc.code, "interrupted; nothing was kept (pass output= to keep what is scored "
                                            "and continue later with resume=True)") from None
            return _with_manifest(load_scores(Path(tmp) / "scores"), manifest)


def rank(scores, data=None, output=None, **options) -> pa.Table:
    """The input rows sorted by angle rank with ``angle_*`` columns, as ``anglerank rank`` writes them.

    ``scores``: a score directory or the table :func:`score` returned. ``data``: the
    scored input (a path, list of paths or in-memory table); default the files recorded
    with the scores. ``output``: the Parquet file to write as well. ``options`` are those
    of :func:`anglerank.curation.rank.rank` (``by``, ``ascending``, ``drop_null``,
    ``layer``, ``force``, ``overwrite``, ``memory_mb``).
    """
    _check_options(rank_command, options, "rank")
    with _score_dir(scores) as scores_dir, _output(output, "ranked.parquet") as out:
        rank_command(scores_dir, _data(scores_dir, data), out, **options)
        return _read_parquet([out])


def sample(scores, data=None, output=None, *, subset, epochs: int, **options) -> pa.Table:
    """An open-loop curriculum, as ``anglerank sample`` writes it: every epoch's rows, in order, with
    ``angle_*`` columns and ``epoch``.

    ``scores`` and ``data`` as for :func:`rank`; ``subset`` rows per epoch for ``epochs``
    epochs. ``output``: the curriculum directory to write as well (one file with
    ``concat=True``). ``options`` are those of :func:`anglerank.curation.sample.sample`
    (``sigma``, ``mu0``, ``step``, ``seed``, ``ranking``, ``wrap``, ...).
    """
    _check_options(sample_command, options, "sample")
    concat = bool(options.get("concat")) or output is None
    options["concat"] = concat
    with _score_dir(scores) as scores_dir, _output(output, "curriculum.parquet") as out:
        summary = sample_command(scores_dir, _data(scores_dir, data), subset, epochs, out, **options)
        return _read_parquet([out] if concat else [Path(out) / f for f in summary["files"]])


def manifest_of(scores: pa.Table) -> dict:
    """The manifest of a scores table returned by :func:`score` (how it was scored, which data)."""
    raw = (scores.schema.metadata or {}).get(MANIFEST_KEY) if isinstance(scores, pa.Table) else None
    if raw is None:
        raise UserError("expected the scores table that anglerank.score returned, or a score directory")
    return json.loads(raw)


# --------------------------------------------------------------------------- helpers

def _check_options(target, options: dict, what: str) -> None:
    """Unknown keyword arguments are one clear error listing the known ones."""
    known = [p for p in inspect.signature(target).parameters if p not in ("scores_dir", "data", "output", "subset",
                                                                          "epochs", "self")]
    unknown = [k for k in options if k not in known]
    if unknown:
        raise UserError(f"{what}: unknown option {unknown[0]!r}; options: {', '.join(known)}")


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def _with_manifest(table: pa.Table, manifest: dict) -> pa.Table:
    return table.replace_schema_metadata({**(table.schema.metadata or {}), MANIFEST_KEY: json.dumps(manifest)})


@contextmanager
def _score_dir(scores) -> Iterator[Path]:
    """A score directory as it is; a scores table as a score directory written for the call."""
    if isinstance(scores, (str, Path)):
        yield Path(scores)
        return
    import pyarrow.ipc as ipc

    manifest = manifest_of(scores)
    table = scores.replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    part = sink.getvalue()
    manifest["parts"] = [{"file": _PART, "rows": table.num_rows, "bytes": part.size, "blake2b": checksum(part)}]
    with tempfile.TemporaryDirectory(prefix="anglerank-") as tmp:
        d = Path(tmp) / "scores"
        d.mkdir()
        (d / _PART).write_bytes(part.to_pybytes())
        (d / MANIFEST).write_text(json.dumps(manifest))
        yield d


def _data(scores_dir: Path, data):
    """``data``, else the inputs recorded with the scores (in-memory inputs must be passed again)."""
    if data is not None:
        return data
    inputs = (read_manifest(scores_dir) or {}).get("inputs") or []
    if any(entry.get("format") == "memory" for entry in inputs):
        raise UserError("the scores were computed from in-memory data; pass the same data as data=")
    if not inputs:
        raise UserError("data= is required: the input(s) that were scored, in the same order")
    return [entry["path"] for entry in inputs]


@contextmanager
def _output(output, name: str) -> Iterator[Path]:
    if output is not None:
        yield Path(output)
        return
    with tempfile.TemporaryDirectory(prefix="anglerank-") as tmp:
        yield Path(tmp) / name


def _read_parquet(paths: list[Path]) -> pa.Table:
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(p) for p in paths])


# --------------------------------------------------------------------------- progress

@contextmanager
def _progress(progress: Any) -> Iterator[Callable | None]:
    """The ``progress(done, total, tokens)`` callback to pass on: None, the caller's, or a bar's."""
    if callable(progress):
        yield progress
    elif not progress:
        yield None
    else:
        bar = _Bar()
        try:
            yield bar.report
        finally:
            bar.close()


class _Bar:
    """A progress bar over rows, made at the first report (when the total is known)."""

    def __init__(self):
        self._bar = self._rich = None
        self._start = (0, 0, 0.0)

    def report(self, done: int, total: int, tokens: int) -> None:
        if self._bar is None and self._rich is None:
            self._start = (done, tokens, time.perf_counter())
            self._open(done, total)
        elapsed = max(1e-9, time.perf_counter() - self._start[2])
        rate = f"{(tokens - self._start[1]) / elapsed:,.0f} tok/s"
        if self._bar is not None:
            self._bar.set_postfix_str(rate, refresh=False)
            self._bar.update(done - self._bar.n)
        else:
            self._rich[0].update(self._rich[1], completed=done, rate=rate)

    def _open(self, done: int, total: int) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self._bar = tqdm(total=total, initial=done, desc="scoring", unit="row", dynamic_ncols=True)
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        prog = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=Console(stderr=True))
        prog.start()
        self._rich = (prog, prog.add_task("score", total=total, completed=done, rate=""))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._rich is not None:
            self._rich[0].stop()
