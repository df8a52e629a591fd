"""Does the angle signal mean anything for *this* model and data? (`anglerank validate`)

GAIN-RL's argument is that prompts whose hidden states are
more concentrated in angle produce larger gradients, so they are learned first. This
module measures that on a seeded sample of a dataset instead of taking it on faith:

1. angle scores (``intra``, ``inter``, ``score``) and token counts, computed by the
   same :class:`anglerank.scoring.engine.Scorer` as ``anglerank score`` (identical numbers);
2. per-prompt gradient norms of the mean token negative log-likelihood of a target
   completion (a reference-solution column, else the model's own greedy completion)
   with respect to (a) the weight matrices that read the hooked site at each
   requested layer and (b) all parameters; one prompt per backward pass, float32;
3. optionally pass rates from G sampled completions judged by
   :func:`anglerank.rewards.grading.grade` (the checker of the ``math`` reward), sampled as
   ``anglerank passrate`` samples them, or read from a ``passrate`` output;
4. Spearman rank correlations of ``score``/``intra``/``inter`` with all of the
   above and with question length, raw and with question length partialled out
   (:mod:`anglerank.correlation`); with pass rates, the score against them with
   bootstrap intervals and a plain verdict (overall, with question length
   partialled out, and per group of ``group_column``).

Completions come from :func:`anglerank.model.generation.generate`, the trainer's own
generation path. The caller's model is left as given: gradients are taken on a
float32 copy unless the model already is float32 (see :func:`anglerank.gradnorms.float32_model`).

The gradient norms and the weights that "read the site" are measured by
:mod:`anglerank.gradnorms`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np

from anglerank import __version__
from anglerank.correlation import CONTROL, correlations, pass_rate_agreement
from anglerank.data.reader import InputError, ParquetSource, Record, field_type
from anglerank.gradnorms import float32_model, site_readers, target_nll_grads
from anglerank.model import generation
from anglerank.passrate import PassRateOptions, pass_rates_at, rollout_correct
from anglerank.rewards.grading import reference_answer
from anglerank.rollouts import ValidateOptions
from anglerank.scoring.engine import ScoreOptions, build_scorer

Progress = Callable[[str, int, int], None]


# --- options ---------------------------------------------------------------------------

# --- data ----------------------------------------------------------------------------

def sample_rows(total: int, samples: int, seed: int) -> list[int]:
    """A seeded sample of row numbers without replacement, in ascending order."""
    if total <= samples:
        return list(range(total))
    rng = np.random.default_rng(seed)
    return sorted(int(r) for r in rng.choice(total, size=samples, replace=False))


def check_column(source: ParquetSource, column: str, what: str, numeric_ok: bool) -> None:
    import pyarrow as pa

    t = field_type(source.schema, column)
    if t is None:
        names = [f.name for f in source.schema]
        raise InputError(f"{what} column {column!r} not found; top-level columns: {', '.join(names)} "
                         "(use a dotted path such as extra_info.answer for struct fields)")
    ok = pa.types.is_string(t) or pa.types.is_large_string(t)
    if numeric_ok:
        ok = ok or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
    if not ok:
        raise InputError(f"{what} column {column!r} has type {t}; "
                         f"expected a string{' or a number' if numeric_ok else ''}")



# --- the run -----------------------------------------------------------------------------

@dataclass
class _Plan:
    """The seeded sample a run works on, read and rendered, and the model that scores it."""

    source: ParquetSource
    scorer: Any  # anglerank.scoring.engine.Scorer
    loaded: Any  # anglerank.model.loading.LoadedModel
    owned: bool  # run_validate loaded the model itself, so it may change it in place
    device: str
    dtype: str
    records: list[Record]
    rendered: dict[int, Any]  # row -> render.Rendered
    targets: dict[int, Any]  # row -> reference completion (--target-column)
    answers: dict[int, Any]  # row -> reference answer (--answer-column)
    groups: dict[int, Any]  # row -> value of --group-column
    notes: dict[int, list[str]]  # row -> why a measurement is missing; the stages add to it

    @property
    def layers(self) -> list[int]:
        return self.scorer.layer_idx

    @property
    def live(self) -> list[Record]:
        """Records whose prompt rendered to at least one token."""
        return [rec for rec in self.records if self.rendered[rec.row].ids]


@dataclass
class _Measured:
    reader_names: dict[int, list[str]]  # layer -> the weights behind grad_a
    target_ids: dict[int, list[int]]
    grads: dict[int, tuple[float, dict[int, float], float]]  # row -> (nll, {layer: grad_a}, grad_b)
    passes: dict[int, float]  # row -> pass rate


def _plan(inputs, sopt: ScoreOptions, vopt: ValidateOptions, prompt_column, id_column, loaded,
          warn: Callable[[str], None] | None = None) -> _Plan:
    """Check the inputs, load the model unless given, draw the sample and render it."""
    source = ParquetSource(inputs, prompt_column=prompt_column, id_column=id_column)
    if vopt.target_column:
        check_column(source, vopt.target_column, "target", numeric_ok=False)
    if vopt.answer_column:
        check_column(source, vopt.answer_column, "answer", numeric_ok=True)
    if vopt.group_column:
        check_column(source, vopt.group_column, "group", numeric_ok=True)
    if source.total_rows == 0:
        raise InputError("the input has no rows")
    if vopt.pass_rates:
        pass_rates_at(vopt.pass_rates, source, [], {})  # a wrong file fails now, not after the gradients
    owned = loaded is None
    scorer, loaded, device, dtype = build_scorer(sopt, loaded, warn=warn)
    rows = sample_rows(source.total_rows, vopt.samples, vopt.seed)
    wanted = set(rows)
    records = [r for r in source.iter_records() if r.row in wanted]

    def at_rows(column):
        return dict(zip(rows, source.column(column, rows))) if column else {}

    return _Plan(source, scorer, loaded, owned, device, dtype, records,
                 rendered={rec.row: scorer.renderer.render(rec.question, rec.history) for rec in records},
                 targets=at_rows(vopt.target_column), answers=at_rows(vopt.answer_column),
                 groups=at_rows(vopt.group_column), notes={rec.row: [] for rec in records})


def _score(plan: _Plan, tick: Progress) -> dict[int, list[dict]]:
    """Angle scores per row, one entry per layer, as `anglerank score` computes them."""
    tick("score", 0, len(plan.records))
    scored = plan.scorer.score_records(plan.records)
    tick("score", len(plan.records), len(plan.records))
    by_row: dict[int, list[dict]] = {}
    for d in scored:
        by_row.setdefault(d["row"], []).append(d)
    return by_row


def _reference_targets(plan: _Plan, vopt: ValidateOptions) -> dict[int, list[int]]:
    """Target token ids from the reference column, cut to ``max_new_tokens``."""
    tok = plan.loaded.tokenizer
    out = {}
    for rec in plan.live:
        text = plan.targets.get(rec.row)
        if text is None or not str(text).strip():
            plan.notes[rec.row].append("empty target")
            continue
        ids = tok(str(text), add_special_tokens=False)["input_ids"]
        if len(ids) > vopt.max_new_tokens:
            plan.notes[rec.row].append(f"target cut to {vopt.max_new_tokens} tokens")
        out[rec.row] = ids[: vopt.max_new_tokens]
    return out


def _greedy_targets(plan: _Plan, vopt: ValidateOptions, model, tick: Progress,
                    first_batch: Callable[[dict, float], None] | None = None) -> dict[int, list[int]]:
    """The model's own greedy completions, in batches of prompts of similar length; ``first_batch(targets,
    seconds)`` is called once the first batch is done."""
    order = sorted(plan.live, key=lambda r: (len(plan.rendered[r.row].ids), r.row))
    out = {}
    tick("greedy", 0, len(order))
    for i in range(0, len(order), vopt.gen_batch):
        chunk = order[i: i + vopt.gen_batch]
        t0 = time.perf_counter()
        ro = generation.generate(model, plan.loaded.tokenizer, [plan.rendered[r.row].ids for r in chunk],
                                 max_new_tokens=vopt.max_new_tokens, greedy=True, batch_size=len(chunk),
                                 device=next(model.parameters()).device)
        out.update(zip((r.row for r in chunk), ro.completion_ids))
        if i == 0 and first_batch is not None:
            first_batch(dict(out), time.perf_counter() - t0)
        tick("greedy", i + len(chunk), len(order))
    return out


@dataclass
class _Ahead:
    """Measurements of the first prompt taken ahead of the rest, to time the run; the stages reuse them."""

    grads: dict = field(default_factory=dict)  # row -> target_nll_grads(...)
    passes: dict = field(default_factory=dict)  # row -> pass rate


def _time_first(ahead: _Ahead, plan: _Plan, vopt: ValidateOptions, model, readers, targets: dict[int, list[int]],
                greedy_s: float, *, estimate: Callable[[float, int], None]) -> None:
    """Measure one prompt of ``targets`` through the later stages (kept in ``ahead``) and pass the whole
    measurement's expected seconds to ``estimate(seconds, samples)``: every stage costs about what its first
    unit did (a greedy batch of the shortest prompts, one backward, one prompt's rollouts)."""
    row = next((r for r, ids in targets.items() if ids), None)
    t0 = time.perf_counter()
    if row is not None:
        ahead.grads[row] = target_nll_grads(model, plan.rendered[row].ids, targets[row], readers)
    t1 = time.perf_counter()
    ref = reference_answer(plan.answers.get(row)) if vopt.rollouts and row is not None else None
    if ref is not None:
        ahead.passes[row] = _rollouts(plan, vopt, model, row, ref)
    t2 = time.perf_counter()
    n = len(plan.live)
    batches = 0 if vopt.target_column else math.ceil(n / vopt.gen_batch)
    estimate(greedy_s * batches + (t1 - t0) * n + (t2 - t1) * n, len(plan.records))


def _gradients(plan: _Plan, model, readers, target_ids: dict[int, list[int]], tick: Progress,
               ahead: dict) -> dict:
    """(nll, {layer: grad_a}, grad_b) per row with a target, one prompt per backward (``ahead``: rows done)."""
    grads = {}
    todo = [rec for rec in plan.live if target_ids.get(rec.row)]
    tick("gradients", 0, len(todo))
    for k, rec in enumerate(todo):
        nll, ga, gb = ahead.get(rec.row) or target_nll_grads(model, plan.rendered[rec.row].ids,
                                                             target_ids[rec.row], readers)
        if all(math.isfinite(v) for v in (nll, gb, *ga.values())):
            grads[rec.row] = (nll, ga, gb)
        else:
            plan.notes[rec.row].append("non-finite loss or gradient")
        tick("gradients", k + 1, len(todo))
    return grads


def _rollouts(plan: _Plan, vopt: ValidateOptions, model, row: int, ref) -> float:
    """One prompt's pass rate: G sampled completions from the row's own generator, judged against ``ref``."""
    opt = PassRateOptions(rollouts=vopt.rollouts, temperature=vopt.temperature, top_p=vopt.top_p,
                          max_new_tokens=vopt.max_new_tokens, seed=vopt.seed, answer_format=vopt.answer_format)
    device = next(model.parameters()).device
    return rollout_correct(model, plan.loaded.tokenizer, plan.rendered[row].ids, ref, opt, row, device) / opt.rollouts


def _pass_rates(plan: _Plan, vopt: ValidateOptions, model, tick: Progress, ahead: dict) -> dict[int, float]:
    """Share of G sampled completions per prompt whose final answer matches the reference, sampled as
    ``anglerank passrate`` samples them (its own generator per row: independent of the sample's other rows).
    ``ahead``: rows already measured."""
    if vopt.pass_rates:
        return pass_rates_at(vopt.pass_rates, plan.source, [rec.row for rec in plan.records], plan.notes)
    passes = {}
    tick("rollouts", 0, len(plan.live))
    for k, rec in enumerate(plan.live):
        ref = reference_answer(plan.answers.get(rec.row))
        if ref is None:
            plan.notes[rec.row].append("no reference answer")
        else:
            passes[rec.row] = ahead[rec.row] if rec.row in ahead else _rollouts(plan, vopt, model, rec.row, ref)
        tick("rollouts", k + 1, len(plan.live))
    return passes


def _measure(plan: _Plan, site: str, vopt: ValidateOptions, tick: Progress,
             estimate: Callable[[float, int], None] | None) -> _Measured:
    """Targets, gradient norms and pass rates, on a float32 model (see :func:`anglerank.gradnorms.float32_model`);
    with ``estimate``, the first prompt is timed through every stage first (see :func:`_time_first`)."""
    with float32_model(plan.loaded.model, in_place=plan.owned) as model:
        live = plan.live
        readers = (site_readers(model, plan.layers, site, plan.rendered[live[0].row].ids) if live
                   else {layer: {} for layer in plan.layers})
        ahead = _Ahead()
        first = None if estimate is None else partial(_time_first, ahead, plan, vopt, model, readers,
                                                      estimate=estimate)
        if vopt.target_column:
            target_ids = _reference_targets(plan, vopt)
            if first is not None:
                first(target_ids, 0.0)
        else:
            target_ids = _greedy_targets(plan, vopt, model, tick, first)
        grads = _gradients(plan, model, readers, target_ids, tick, ahead.grads)
        passes = _pass_rates(plan, vopt, model, tick, ahead.passes) if vopt.rollouts or vopt.pass_rates else {}
    return _Measured({layer: list(ps) for layer, ps in readers.items()}, target_ids, grads, passes)


def _per_sample(plan: _Plan, by_row: dict[int, list[dict]], m: _Measured, rollouts: bool) -> list[dict]:
    """One row per sample and layer with every value the correlations use."""
    out = []
    for rec in plan.records:
        g = m.grads.get(rec.row)
        for d in by_row[rec.row]:
            note = "; ".join([x for x in [d.get("note"), *plan.notes[rec.row]] if x]) or None
            out.append({
                "row": rec.row, "id": rec.id, "layer": d["layer"],
                "n_tokens": d["n_tokens"], "n_prefix": d["n_prefix"], "n_question": d["n_question"],
                "n_target": len(m.target_ids[rec.row]) if rec.row in m.target_ids else None,
                "intra": d["intra"], "inter": d["inter"], "score": d["score"],
                "nll": g[0] if g else None,
                "grad_a": g[1][d["layer"]] if g else None,
                "grad_b": g[2] if g else None,
                "pass_rate": m.passes.get(rec.row) if rollouts else None,
                "note": note,
            })
    out.sort(key=lambda r: (r["row"], r["layer"]))
    return out


def _agreement(plan: _Plan, per_sample: list[dict], vopt: ValidateOptions) -> list[dict]:
    """Score against pass rate per layer: overall, question length partialled out, per group."""
    out = []
    for layer in plan.layers:
        rows = [r for r in per_sample if r["layer"] == layer]
        groups = [plan.groups.get(r["row"]) for r in rows] if vopt.group_column else None
        out.append({"layer": layer, **pass_rate_agreement(
            [r["score"] for r in rows], [r["pass_rate"] for r in rows], groups=groups,
            covariate=[r[CONTROL] for r in rows], seed=vopt.seed)})
    return out


def _report(plan: _Plan, sopt: ScoreOptions, vopt: ValidateOptions, m: _Measured, per_sample: list[dict],
            elapsed_s: float) -> dict:
    target = (f"column {vopt.target_column}" if vopt.target_column
              else f"greedy completion (<= {vopt.max_new_tokens} tokens)")
    return {
        "anglerank_version": __version__,
        "model": plan.loaded.name,
        "model_path": str(plan.loaded.path),
        "dtype": plan.dtype,
        "grad_dtype": "float32",
        "device": plan.device,
        **{k: v for k, v in asdict(sopt).items() if k not in ("model", "dtype", "device", "layers", "batch_tokens")},
        "layers": plan.layers,
        "inputs": [str(f) for f in plan.source.files],
        "input_rows": plan.source.total_rows,
        "prompt_column": plan.source.prompt_column,
        "id_column": plan.source.id_column,
        **asdict(vopt),
        "target": target,
        "grad_a_params": {str(layer): names for layer, names in m.reader_names.items()},
        "control": CONTROL,
        "n_samples": len(plan.records),
        "n_with_gradients": len(m.grads),
        "elapsed_s": round(elapsed_s, 2),
        "correlations": correlations(per_sample, plan.layers),
        "pass_rate_agreement": _agreement(plan, per_sample, vopt) if m.passes else None,
        "per_sample": per_sample,
    }


def run_validate(
    inputs,
    *,
    score_options: ScoreOptions | None = None,
    options: ValidateOptions | None = None,
    prompt_column: str | None = None,
    id_column: str | None = None,
    loaded=None,
    progress: Progress | None = None,
    estimate: Callable[[float, int], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict:
    """Measure the angle signal against gradient norms (and pass rates) on a sample.

    Returns a JSON-ready report: settings, ``per_sample`` (one row per sample and
    layer, with every value the correlations use) and ``correlations``.
    ``progress(stage, done, total)`` is called as work completes. Pass ``loaded`` (a
    model.loading.LoadedModel) to reuse a model; it is left as given (dtype, weights,
    ``requires_grad``, training mode): a model that is not float32 is copied to
    float32 for the generation and gradient stages. ``estimate(seconds, samples)`` is
    called once, early, with the expected time of the generation, gradient and rollout
    stages, timed on the first prompt (whose measurements are kept: the report is the same).
    ``warn(message)`` hears about out-of-memory back-offs (default: a RuntimeWarning).
    """
    sopt = score_options or ScoreOptions()
    vopt = options or ValidateOptions()
    tick = progress or (lambda stage, done, total: None)
    t0 = time.perf_counter()
    plan = _plan(inputs, sopt, vopt, prompt_column, id_column, loaded, warn)
    by_row = _score(plan, tick)
    measured = _measure(plan, sopt.site, vopt, tick, estimate)
    per_sample = _per_sample(plan, by_row, measured, rollouts=bool(vopt.rollouts or vopt.pass_rates))
    return _report(plan, sopt, vopt, measured, per_sample, time.perf_counter() - t0)
