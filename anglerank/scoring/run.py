"""A scoring run over files: plan the rows, resume or start the output, score window by
window, finish (what the CLI and ``anglerank.score(...)`` call).

The rows are cut into read-ahead windows on a global grid (see
:func:`anglerank.scoring.distributed.auto_window_rows`); every ``commit_every`` rows the
results become one Arrow part and the manifest records the next row, so a stop at any
point loses at most the rows since the last part and ``--resume`` continues from there
with identical numbers.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import pyarrow as pa
import torch

from anglerank.data import manifest as manifests
from anglerank.data.lock import output_lock
from anglerank.data.reader import InputError, ParquetSource, Record
from anglerank.data.writer import (
    DONE, MANIFEST, OutputError, ScoreWriter, own_files, part_problem, prepare_output_dir, read_manifest,
    refuse_links, score_schema, write_json_atomic,
)
from anglerank.errors import Interrupted, UserError
from anglerank.scoring.distributed import auto_window_rows, distributed_env, shard_dir, shard_range
from anglerank.scoring.engine import ScoreOptions, Scorer, build_scorer
from anglerank.signals import StopOnSignal

ProgressFn = Callable[[int, int, int], None]


def run_score(
    inputs,
    output,
    *,
    options: ScoreOptions | None = None,
    prompt_column: str | None = None,
    id_column: str | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    window_rows: int | None = None,
    commit_every: int = 4096,
    num_shards: int | None = None,
    shard_index: int | None = None,
    progress: ProgressFn | None = None,
    loaded=None,
    warn: Callable[[str], None] | None = None,
    **option_kwargs,
) -> dict:
    """Score ``inputs`` (paths or in-memory tables, see :mod:`anglerank.data.reader`) into the directory
    ``output``; return the manifest.

    ``options`` (or keyword arguments of :class:`ScoreOptions`) select model, preset,
    site, layers, estimator and performance settings; it is not modified. ``progress(done,
    total, tokens)`` is called after each batch. Pass ``loaded`` (a model.loading.LoadedModel) to
    reuse a model. With ``num_shards``/``shard_index`` (or under torchrun) this process
    scores one shard into ``output/shard-IIIII-of-NNNNN``;
    :func:`anglerank.scoring.distributed.merge` joins them.
    """
    opt = options or ScoreOptions(**option_kwargs)
    if limit is not None and limit < 0:
        raise UserError("--limit must be >= 0")
    for name in ("code_prefix_tokens", "code_suffix_tokens"):
        if getattr(opt, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(opt, name)}")
    opt, num_shards, shard_index = _shard_and_device(opt, num_shards, shard_index)
    plan = _plan(inputs, output, prompt_column, id_column, limit, window_rows, commit_every, num_shards, shard_index)
    if plan.source.id_note and warn:
        warn(plan.source.id_note)
    # one writer per directory for the whole run: a second score, merge or --overwrite is refused
    with output_lock(plan.out, what="score output"):
        scorer, loaded, device, dtype = build_scorer(_recorded_budget(opt, plan.out, resume), loaded, truncate=True,
                                                     warn=warn)
        new = manifests.build(
            scorer.opt, loaded, layers=scorer.layer_idx, num_layers=scorer.num_layers,
            dtype=dtype, device=device, source=plan.source, limit=limit, window_rows=plan.window_rows,
            commit_every=plan.commit_every, rows_expected=plan.total, num_shards=num_shards, shard_index=shard_index,
            row_start=plan.row_start, row_stop=plan.row_stop,
        )
        new["batch_tokens_basis"] = scorer.budget_basis
        manifest, start_row, previous = _resume_or_start(plan, new, resume, overwrite, warn)
        scorer.continue_backoffs(manifest.get("batch_tokens_backoff") or [])
        writer = ScoreWriter(plan.out, score_schema(plan.source.id_type, with_layer=True), manifest)
        if previous is not None and previous.get("complete"):
            return writer.finish(plan.row_stop, finished_at=previous.get("finished_at"))
        manifest = _score_windows(plan, scorer, writer, start_row, fresh=previous is None, progress=progress)
        return _finish(plan, manifest, warn)


# --- plan ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Plan:
    """Which rows this process scores, where the results go, and how rows are grouped."""

    source: ParquetSource
    out: Path
    total: int  # rows of the whole run (all shards), after --limit
    window_rows: int  # rows bucketed together, on a global grid
    commit_every: int  # rows per committed part, a multiple of window_rows
    row_start: int  # this shard's rows: [row_start, row_stop)
    row_stop: int


def _recorded_budget(opt: ScoreOptions, out: Path, resume: bool) -> ScoreOptions:
    """A resumed run keeps the batch budget it started with: the default depends on the machine (AMX or
    not), and the budget decides the batches, so a changed one would not score bit-identically."""
    if not resume or opt.batch_tokens is not None or not (out / "manifest.json").exists():
        return opt
    recorded = read_manifest(out).get("batch_tokens")
    return replace(opt, batch_tokens=int(recorded)) if recorded else opt


def _shard_and_device(opt: ScoreOptions, num_shards, shard_index) -> tuple[ScoreOptions, int, int]:
    """Under torchrun each rank is one shard on its own GPU (a copy of ``opt`` names the GPU)."""
    dist_env = distributed_env()
    if num_shards is None and dist_env is not None:
        shard_index, num_shards = dist_env[0], dist_env[1]
        if opt.device == "auto" and torch.cuda.is_available():
            opt = replace(opt, device=f"cuda:{dist_env[2]}")
    num_shards = 1 if num_shards is None else num_shards
    shard_index = shard_index or 0
    if num_shards < 1:
        raise UserError("--num-shards must be >= 1")
    return opt, num_shards, shard_index


def _plan(inputs, output, prompt_column, id_column, limit, window_rows, commit_every,
          num_shards: int, shard_index: int) -> _Plan:
    source = ParquetSource(inputs, prompt_column=prompt_column, id_column=id_column)
    total = source.total_rows if limit is None else min(limit, source.total_rows)
    if source.total_rows == 0:
        raise InputError("the input has no rows")
    window_rows = window_rows or auto_window_rows(total)
    if window_rows < 1:
        raise UserError("window_rows must be positive")
    if commit_every < 1:
        raise UserError("--commit-every must be positive")
    commit_every = max(window_rows, (commit_every // window_rows) * window_rows)
    row_start, row_stop = shard_range(total, num_shards, shard_index, window_rows)
    out = Path(output) if num_shards == 1 else shard_dir(output, shard_index, num_shards)
    return _Plan(source, out, total, window_rows, commit_every, row_start, row_stop)


# --- resume ----------------------------------------------------------------------------------

def _resume_or_start(plan: _Plan, new: dict, resume: bool, overwrite: bool,
                     warn: Callable[[str], None] | None) -> tuple[dict, int, dict | None]:
    """(manifest to continue, first row to score, the interrupted run's manifest or None)."""
    previous = read_manifest(plan.out) if resume else None
    if previous is None:
        prepare_output_dir(plan.out, overwrite)
        new.update(started_at=time.time(), elapsed_s=0.0, tokens=0)
        return new, plan.row_start, None
    manifests.check_resume(previous, new, plan.out)
    parts, next_row, problem = _intact_parts(plan, previous)
    if problem is not None:
        # a damaged or missing part is scored again, with every part after it (rows are sequential)
        previous = {**previous, "complete": False}
        if warn:
            warn(f"{problem}; scoring again from row {next_row}")
    recorded = {p["file"] for p in parts}
    refuse_links(plan.out)
    for f in own_files(plan.out):  # parts written but never committed (killed mid-rename) or damaged; temporaries
        if f.name not in recorded and f.name not in (MANIFEST, DONE):
            f.unlink()
    new["parts"] = parts
    for k in ("started_at", "elapsed_s", "tokens"):
        new[k] = previous.get(k, 0)
    for k in ("batch_tokens_basis", "batch_tokens_backoff"):  # how the recorded budget came about, kept
        if k in previous:
            new[k] = previous[k]
    return new, next_row, previous


def _intact_parts(plan: _Plan, previous: dict) -> tuple[list[dict], int, str | None]:
    """The recorded parts before the first bad one, the first row after them, and what was wrong (or None)."""
    nlayers = max(1, len(previous.get("layers") or []))
    row = plan.row_start
    for i, part in enumerate(previous["parts"]):
        problem = part_problem(plan.out, part)
        if problem is not None:
            return previous["parts"][:i], row, problem
        row += part["rows"] // nlayers  # each part holds whole input rows, one result per layer
    return previous["parts"], int(previous.get("next_row", plan.row_start)), None


# --- windows ----------------------------------------------------------------------------------

class _Abort(Exception):
    """Drop the window in flight (a stop was requested between two batches)."""


def _windows(source: ParquetSource, start_row: int, stop_row: int, window_rows: int):
    """Lists of records cut on the global grid of ``window_rows``, so shards form the same windows."""
    window: list[Record] = []
    for rec in source.iter_records(start_row, stop_row):
        window.append(rec)
        if (rec.row + 1) % window_rows == 0:
            yield window
            window = []
    if window:
        yield window


class _WindowLoop:
    """Scores a plan's rows window by window into a writer; ``done`` is the first row not yet scored."""

    def __init__(self, plan: _Plan, scorer: Scorer, writer: ScoreWriter, start_row: int,
                 progress: ProgressFn | None, guard: StopOnSignal):
        self.plan, self.scorer, self.writer = plan, scorer, writer
        self.progress, self.guard = progress, guard
        self.done = start_row
        self._partial = 0  # rows of the window in flight already through a batch
        self._t0 = time.perf_counter()
        self._base_elapsed, self._base_tokens = writer.manifest["elapsed_s"], writer.manifest["tokens"]

    def tokens(self) -> int:
        return self._base_tokens + self.scorer.tokens_seen

    def stats(self) -> dict:
        """Time and tokens so far, counting what an interrupted run already did."""
        el = self._base_elapsed + time.perf_counter() - self._t0
        tokens = self.tokens()
        stats = {"elapsed_s": round(el, 3), "tokens": tokens, "tokens_per_s": round(tokens / el, 1) if el > 0 else None}
        if self.scorer.backoffs:  # out-of-memory steps down of the batch budget
            stats["batch_tokens_backoff"] = self.scorer.backoffs
        return stats

    def _report(self, row: int) -> None:
        if self.progress:
            self.progress(row - self.plan.row_start, self.plan.row_stop - self.plan.row_start, self.tokens())

    def _on_batch(self, rows_in_batch: int) -> None:
        if self.progress:
            self._partial += rows_in_batch
            self._report(min(self.done + self._partial, self.plan.row_stop))
        if self.guard.requested:
            raise _Abort

    def _flush(self, window: list[Record]) -> None:
        self._partial = 0
        self.writer.add(self.scorer.score_records(window, on_batch=self._on_batch))
        self.done = window[-1].row + 1
        self._report(self.done)
        if self.done % self.plan.commit_every == 0:
            self.writer.commit(self.done, **self.stats())
        _release_free_memory()

    def run(self) -> None:
        """Score every window; a stop request ends the loop (raising _Abort inside a window)."""
        self._report(self.done)
        for window in _windows(self.plan.source, self.done, self.plan.row_stop, self.plan.window_rows):
            if self.guard.requested:
                break
            self._flush(window)
            if self.guard.requested:
                break


def _read_windows(loop: _WindowLoop) -> None:
    """Run the loop; a stop becomes a recorded request, an unreadable input an InputError."""
    try:
        loop.run()
    except (_Abort, KeyboardInterrupt):
        loop.guard.signum = loop.guard.signum or signal.SIGINT
    except InputError:
        raise
    except (OSError, pa.ArrowException) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a real I/O error (disk full, permissions): an output problem
        raise InputError(f"cannot read the input after row {loop.done}: {str(exc).splitlines()[0][:200]}") from None


def _score_windows(plan: _Plan, scorer: Scorer, writer: ScoreWriter, start_row: int, *, fresh: bool,
                   progress: ProgressFn | None) -> dict:
    """Score rows [start_row, row_stop) and finish the writer; on a stop commit and raise Interrupted."""
    with StopOnSignal() as guard:
        loop = _WindowLoop(plan, scorer, writer, start_row, progress, guard)
        try:
            _read_windows(loop)
            if guard.requested:
                writer.commit(loop.done, **loop.stats())
                raise Interrupted(
                    guard.exit_code,
                    f"interrupted after {loop.done - plan.row_start} of {plan.row_stop - plan.row_start} rows; "
                    f"committed output is in {plan.out}. Continue with the same command plus --resume",
                )
            return writer.finish(loop.done, **loop.stats(), finished_at=time.time())
        except InputError:
            if fresh:  # unreadable input: leave nothing half-written behind
                _remove_output(plan.out)
            raise
        except OSError as exc:
            raise OutputError(
                f"writing {plan.out} failed ({exc.strerror or exc}); committed parts are intact: free space or fix "
                "the problem, then rerun with --resume"
            ) from None


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS after each window.

    Batches of varying shapes fragment glibc's heap, so without this the resident
    size creeps up with the number of rows scored even though nothing is retained.
    """
    try:
        import ctypes

        _release_free_memory.libc = getattr(_release_free_memory, "libc", None) or ctypes.CDLL("libc.so.6")
        _release_free_memory.libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _remove_output(out: Path) -> None:
    for f in own_files(out):
        f.unlink(missing_ok=True)
    try:
        out.rmdir()
    except OSError:
        pass


# --- finish ----------------------------------------------------------------------------------

def _finish(plan: _Plan, manifest: dict, warn: Callable[[str], None] | None) -> dict:
    """Record (and warn about) id values shared by several rows; all rows are kept."""
    dup = _duplicate_ids(plan.out, manifest)
    if dup:
        manifest["duplicate_ids"] = dup
        write_json_atomic(plan.out / MANIFEST, manifest)
        if warn:
            warn(f"{dup} duplicate id value(s) in column {plan.source.id_column!r}; all rows were kept")
    return manifest


def _duplicate_ids(out: Path, manifest: dict) -> int:
    """Number of id values that occur on more than one row (checked once, at the end)."""
    if not manifest.get("id_column"):
        return 0
    import pyarrow.compute as pc
    import pyarrow.ipc as ipc

    cols = []
    for part in manifest["parts"]:
        with ipc.open_file(out / part["file"]) as r:
            t = r.read_all().select(["id", "layer"])
        cols.append(t.filter(pc.equal(t["layer"], manifest["layers"][0]))["id"])
    if not cols:
        return 0
    ids = pa.chunked_array([c for col in cols for c in col.chunks], type=cols[0].type)
    ids = pc.drop_null(ids)
    return int(len(ids) - pc.count_distinct(ids).as_py())
