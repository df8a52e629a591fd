"""Pass rates as a column (`anglerank passrate`): how often the current model solves each prompt.

For every prompt of the data, G completions are sampled at a temperature, each
prompt from its own generator seeded by (seed, row), so a prompt's pass rate
depends only on the model, the settings and its row (not on which rows ran
before it, nor on an interruption). Each completion is judged by
:func:`anglerank.rewards.grading.grade` with the reference answer, the checker of the
built-in ``math`` reward, with the same ``answer_format``.

The output directory is resumable as ``anglerank score``'s is, with the same
pieces: rows committed as Arrow parts every ``commit_every`` rows and recorded
in ``manifest.json`` (:class:`anglerank.data.writer.ScoreWriter`), one writer
at a time (the output lock), and ``resume`` continuing after the last intact
part with identical numbers when the settings match. When every row is done,
two Parquet files are written:

- ``pass_rates.parquet``: ``row``, ``id``, ``n_rollouts``, ``n_correct``,
  ``pass_rate`` (null where a prompt could not be judged: empty or longer than
  ``max_length``, or no reference answer) and ``note``, joinable with the
  input by row or id;
- ``data.parquet``: the input rows, every column in its exact type, plus
  ``pass_rate``, ``n_correct`` and ``n_rollouts`` (null past ``limit``). Train
  on it with ``--ranking column:pass_rate:desc`` (easiest first: the oracle
  order), score and rank it like the input, or hand the directory to
  ``anglerank validate --pass-rates``.
"""

from __future__ import annotations

import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import torch

from anglerank import __version__
from anglerank.data import manifest as manifests
from anglerank.data.lock import output_lock
from anglerank.data.parquet_out import ROW_GROUP_ROWS, AtomicParquet, assemble, check_added_columns, output_schema
from anglerank.data.reader import InputError, ParquetSource, field_type
from anglerank.model import generation, loading
from anglerank.data.writer import (
    MANIFEST, OutputError, ScoreWriter, load_scores, own_files, part_problem, prepare_output_dir, read_manifest,
    refuse_links,
)
from anglerank.errors import Interrupted, UserError
from anglerank.model.device import resolve_device, resolve_dtype
from anglerank.model.render import Renderer
from anglerank.rewards.grading import grade, reference_answer
from anglerank.rollouts import PassRateOptions
from anglerank.scoring.engine import ScoreOptions
from anglerank.scoring.options import PromptFormat
from anglerank.settings import result_keys
from anglerank.signals import StopOnSignal

__all__ = ["PassRateOptions", "ADDED_COLUMNS", "RATES_FILE", "DATA_FILE", "rollout_correct", "run_passrate",
           "read_pass_rates", "pass_rates_at"]

RATES_FILE = "pass_rates.parquet"
DATA_FILE = "data.parquet"
ADDED_FIELDS = (pa.field("pass_rate", pa.float64()), pa.field("n_correct", pa.int64()),
                pa.field("n_rollouts", pa.int64()))
ADDED_COLUMNS = tuple(f.name for f in ADDED_FIELDS)
KIND = "passrate"
_SEED_STRIDE = 1_000_003  # row r of seed s samples from seed s * stride + r
_ANSWER_COLUMNS = ("reward_model.ground_truth", "answer", "solution", "ground_truth")  # as `anglerank train`

Progress = Callable[[int, int], None]


# What decides the numbers: a resumed run must match the interrupted one in all of these.
SETTINGS_KEYS = ("kind", "weights_fingerprint", "template_fingerprint", "prompt_column", "id_column",
                 "inputs_fingerprint", "limit", *result_keys(PromptFormat), "max_length", "dtype",
                 *result_keys(PassRateOptions))


def rollout_correct(model, tokenizer, prompt_ids: list[int], reference, options: PassRateOptions, row: int,
                    device) -> int:
    """How many of G completions sampled for one prompt have the reference's final answer."""
    gen = torch.Generator().manual_seed(options.seed * _SEED_STRIDE + int(row))
    ro = generation.generate(model, tokenizer, [prompt_ids] * options.rollouts, max_new_tokens=options.max_new_tokens,
                             temperature=options.temperature, top_p=options.top_p, batch_size=options.rollouts,
                             device=device, generator=gen)
    return sum(grade(text, reference, options.answer_format) for text in ro.texts)


def _answer_column(source: ParquetSource, name: str | None) -> str:
    if name:
        if field_type(source.schema, name) is None:
            raise InputError(f"--answer-column {name!r} not found; top-level columns: {', '.join(source.schema.names)}")
        return name
    for candidate in _ANSWER_COLUMNS:
        if field_type(source.schema, candidate) is not None:
            return candidate
    raise InputError(f"the data has no reference-answer column ({', '.join(_ANSWER_COLUMNS)}); "
                     "name one with --answer-column")


def _schema(id_type: pa.DataType) -> pa.Schema:
    return pa.schema([pa.field("row", pa.int64(), nullable=False), pa.field("id", id_type),
                      pa.field("n_rollouts", pa.int64()), pa.field("n_correct", pa.int64()),
                      pa.field("pass_rate", pa.float64()), pa.field("note", pa.string())])


def _new_manifest(loaded, sopt, opt: PassRateOptions, source: ParquetSource, answer_column: str, dtype: str,
                  device: str, limit: int | None, total: int, commit_every: int) -> dict:
    files = source.fingerprints()
    return {
        "kind": KIND, "anglerank_version": __version__, "model": loaded.name, "model_path": str(loaded.path),
        "weights_fingerprint": loading.weights_fingerprint(loaded.path),
        "template_fingerprint": loading.text_fingerprint(getattr(loaded.tokenizer, "chat_template", None)),
        "preset": sopt.preset, "system": sopt.system, "prefix": sopt.prefix, "max_length": sopt.max_length,
        "dtype": dtype, "device": device, "prompt_column": source.prompt_column, "id_column": source.id_column,
        **asdict(opt), "answer_column": answer_column, "inputs": files,
        "inputs_fingerprint": manifests.inputs_fingerprint(files), "input_rows": source.total_rows, "limit": limit,
        "rows_expected": total, "commit_every": commit_every, "row_start": 0, "row_stop": total,
    }


def _resume_or_start(out: Path, new: dict, resume: bool, overwrite: bool,
                     warn: Callable[[str], None] | None) -> tuple[dict, int, dict | None]:
    """(manifest to continue, first row to measure, the interrupted run's manifest or None)."""
    previous = read_manifest(out) if resume else None
    if previous is None:
        if not overwrite and (out / MANIFEST).is_file():
            raise OutputError(f"output directory {out} already holds results; pass --resume to continue an "
                              "interrupted run or --overwrite to replace them")
        ours = (out / MANIFEST).is_file()  # only --overwrite gets here with one
        foreign = [n for n in (RATES_FILE, DATA_FILE) if not ours and (out / n).exists()]
        if foreign:
            raise OutputError(f"output directory {out} holds a {foreign[0]} that anglerank did not write; "
                              "choose another output directory")
        prepare_output_dir(out, overwrite)
        for name in (RATES_FILE, DATA_FILE):
            (out / name).unlink(missing_ok=True)
        new.update(started_at=time.time(), elapsed_s=0.0)
        return new, 0, None
    if previous.get("kind") != KIND:
        raise OutputError(f"cannot resume {out}: it holds no pass rates (an angle score directory?)")
    manifests.require_same(previous, new, SETTINGS_KEYS, what=f"cannot resume {out}: settings differ from the "
                           "interrupted run", remedy="use the original settings or a new output directory")
    parts, next_row = [], 0
    for part in previous["parts"]:
        problem = part_problem(out, part)
        if problem is not None:  # measured again from there, with every part after it (rows are sequential)
            previous = {**previous, "complete": False}
            if warn:
                warn(f"{problem}; measuring again from row {next_row}")
            break
        parts.append(part)
        next_row += part["rows"]
    else:
        next_row = int(previous.get("next_row", next_row))
    refuse_links(out)
    recorded = {p["file"] for p in parts} | {MANIFEST}
    for f in own_files(out):  # never committed, or damaged; only names anglerank writes
        if f.name not in recorded and f.name != "DONE":
            f.unlink()
    new.update(parts=parts, started_at=previous.get("started_at"), elapsed_s=previous.get("elapsed_s", 0.0))
    return new, next_row, previous


def _judge(rec, rendered, reference, opt: PassRateOptions, model, tokenizer, device, max_length: int) -> dict:
    """One output row: the prompt's pass rate, or why it has none."""
    note = None
    if not rendered.ids:
        note = rendered.note or "empty prompt"
    elif rendered.truncated:
        note = f"prompt longer than --max-length {max_length} tokens"
    elif reference_answer(reference) is None:
        note = "no reference answer"
    row = {"row": rec.row, "id": rec.id, "n_rollouts": 0, "n_correct": 0, "pass_rate": None, "note": note}
    if note is None:
        k = rollout_correct(model, tokenizer, rendered.ids, reference, opt, rec.row, device)
        row.update(n_rollouts=opt.rollouts, n_correct=k, pass_rate=k / opt.rollouts)
    return row


@dataclass
class _Run:
    source: ParquetSource
    out: Path
    writer: ScoreWriter
    opt: PassRateOptions
    loaded: object
    renderer: object
    device: str
    answers: list
    total: int
    commit_every: int


def _measure(run: _Run, start: int, progress: Progress | None) -> dict:
    """Measure rows [start, total) and finish the writer; on a stop commit and raise Interrupted."""
    t0, base = time.perf_counter(), run.writer.manifest.get("elapsed_s") or 0.0
    done = start

    def stats() -> dict:
        return {"elapsed_s": round(base + time.perf_counter() - t0, 3)}

    model, tok = run.loaded.model, run.loaded.tokenizer
    with StopOnSignal() as guard:
        try:
            if progress:
                progress(done, run.total)
            for rec in run.source.iter_records(start, run.total):
                if guard.requested:
                    break
                rendered = run.renderer.render(rec.question, rec.history)
                run.writer.add([_judge(rec, rendered, run.answers[rec.row], run.opt, model, tok, run.device,
                                       run.renderer.max_length)])
                done = rec.row + 1
                if progress:
                    progress(done, run.total)
                if done % run.commit_every == 0:
                    run.writer.commit(done, **stats())
        except KeyboardInterrupt:
            guard.signum = guard.signum or signal.SIGINT
        except OSError as exc:
            raise OutputError(f"writing {run.out} failed ({exc.strerror or exc}); committed rows are intact: free "
                              "space or fix the problem, then run the same command with --resume") from None
        if guard.requested:
            run.writer.commit(done, **stats())
            raise Interrupted(guard.exit_code, f"interrupted after {done} of {run.total} rows; committed pass rates "
                              f"are in {run.out}. Continue with the same command plus --resume")
    return run.writer.finish(done, **stats(), finished_at=time.time())


def _write_outputs(run: _Run, manifest: dict) -> None:
    """``pass_rates.parquet`` from the committed parts, and the input with the pass-rate columns added."""
    rates = load_scores(run.out)
    with AtomicParquet(run.out / RATES_FILE, rates.schema) as w:
        w.write(rates)
    n = run.source.total_rows
    pad = pa.nulls(n - rates.num_rows)
    added = pa.table({name: pa.concat_arrays([rates.column(name).combine_chunks().cast(f.type), pad.cast(f.type)])
                      for name, f in zip(ADDED_COLUMNS, ADDED_FIELDS)})
    provenance = {"command": "passrate", "model": manifest.get("model"),
                  **{k: manifest.get(k) for k in SETTINGS_KEYS if not k.endswith("fingerprint") and k != "kind"}}
    schema = output_schema(run.source.metadata_schema, ADDED_FIELDS, provenance)
    with AtomicParquet(run.out / DATA_FILE, schema) as w:
        for lo in range(0, n, ROW_GROUP_ROWS):
            hi = min(n, lo + ROW_GROUP_ROWS)
            w.write(assemble(run.source.take(range(lo, hi)), added.slice(lo, hi - lo), schema))


def run_passrate(inputs, output, *, options: PassRateOptions | None = None, score_options=None,
                 prompt_column: str | None = None, id_column: str | None = None, limit: int | None = None,
                 overwrite: bool = False, resume: bool = False, commit_every: int = 64,
                 progress: Progress | None = None, loaded=None, warn: Callable[[str], None] | None = None) -> dict:
    """Measure every prompt's pass rate into the directory ``output``; return its manifest.

    ``score_options`` (an :class:`anglerank.scoring.engine.ScoreOptions`) gives the model,
    rendering (preset, system, prefix, max_length), dtype and device; its scoring fields
    are not used. ``progress(done, total)`` is called after each row. Pass ``loaded`` (a
    model.loading.LoadedModel) to reuse a model.
    """
    opt, sopt = options or PassRateOptions(), score_options or ScoreOptions()
    if limit is not None and limit < 0:
        raise UserError("--limit must be >= 0")
    if commit_every < 1:
        raise UserError("--commit-every must be positive")
    source = ParquetSource(inputs, prompt_column=prompt_column, id_column=id_column)
    if source.total_rows == 0:
        raise InputError("the input has no rows")
    check_added_columns(source.schema, ADDED_COLUMNS, "pass the data without it, or rename the column")
    answer_column = _answer_column(source, opt.answer_column)
    total = source.total_rows if limit is None else min(limit, source.total_rows)
    out = Path(output)
    with output_lock(out, what="pass-rate output"):
        device = resolve_device(sopt.device)
        dtype = resolve_dtype(sopt.dtype, device)
        if loaded is None:
            loaded = loading.load(sopt.model, device=device, dtype=dtype)
        renderer = Renderer(loaded.tokenizer, sopt.preset, sopt.system, sopt.prefix, sopt.max_length)
        new = _new_manifest(loaded, sopt, opt, source, answer_column, dtype, device, limit, total, commit_every)
        manifest, start, previous = _resume_or_start(out, new, resume, overwrite, warn)
        writer = ScoreWriter(out, _schema(source.id_type), manifest)
        run = _Run(source, out, writer, opt, loaded, renderer, device, source.column(answer_column)[:total], total,
                   commit_every)
        if previous is not None and previous.get("complete"):
            manifest = writer.finish(total, finished_at=previous.get("finished_at"))
        else:
            manifest = _measure(run, start, progress)
        _write_outputs(run, manifest)
    return manifest


def read_pass_rates(path) -> tuple[pa.Table, dict]:
    """The pass rates of an ``anglerank passrate`` output (the directory, or its ``pass_rates.parquet``)
    and its manifest; an unfinished or foreign directory is a one-line error."""
    import pyarrow.parquet as pq

    p = Path(path)
    folder = p.parent if p.name == RATES_FILE else p
    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest is None or manifest.get("kind") != KIND:
        raise InputError(f"--pass-rates {path} is not an `anglerank passrate` output directory")
    if not manifest.get("complete") or not (folder / RATES_FILE).is_file():
        raise InputError(f"--pass-rates {path} is unfinished; complete it with `anglerank passrate ... --resume`")
    try:
        return pq.read_table(folder / RATES_FILE), manifest
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read {folder / RATES_FILE}: {str(exc).splitlines()[0][:200]}") from None


def pass_rates_at(path, source: ParquetSource, rows: list[int], notes: dict[int, list[str]]) -> dict[int, float]:
    """Pass rates of ``rows`` of ``source`` from the ``anglerank passrate`` output ``path``, which must
    have been measured on the same files; a row without one gets a note instead."""
    table, manifest = read_pass_rates(path)
    if manifest.get("inputs_fingerprint") != manifests.inputs_fingerprint(source.fingerprints()):
        names = ", ".join(Path(f["path"]).name for f in manifest.get("inputs", []))
        raise InputError(f"--pass-rates {path} was measured on other data ({names}); pass the pass rates of the "
                         "files being validated")
    by_row = dict(zip(table.column("row").to_pylist(), table.column("pass_rate").to_pylist()))
    out = {}
    for r in rows:
        if by_row.get(r) is None:
            notes[r].append("no pass rate" if r in by_row else "no pass rate (beyond the measured rows)")
        else:
            out[r] = by_row[r]
    return out
