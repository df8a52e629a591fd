"""``anglerank inspect``: what a score directory holds, before anyone trains on it.

Counts, nulls, summary statistics, the correlation of each score with question
length (the confound the paper does not control for), a histogram, the extreme
rows (with their question text when the data is given) and, for a multi-layer run,
one line per layer. Everything is returned as a JSON-ready dict; the CLI renders it.
"""

from __future__ import annotations

import re

import numpy as np

from anglerank.curation.scores import ROW, load_layer_scores, open_data, open_manifest, verify_inputs
from anglerank.data.reader import ParquetFiles, field_type
from anglerank.data.values import finite_or_none
from anglerank.errors import UserError
from anglerank.model.render import question_from_messages
from anglerank.plots import plot_prompts, plot_scores, require_matplotlib
from anglerank.train.records import prompt_figure_data, read_records, summary

__all__ = ["inspect", "inspect_run", "text_histogram", "QUANTILES", "group_notes", "note_label", "null_warning"]

QUANTILES = {"min": 0.0, "p05": 0.05, "p25": 0.25, "median": 0.5, "p75": 0.75, "p95": 0.95, "max": 1.0}
_TERMS = ("intra", "inter", "score")


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
    if k < 0:
        raise UserError("-k must be >= 0")
    if bins < 1:
        raise UserError("--bins must be >= 1")
    if plot is not None:
        require_matplotlib()
    manifest = open_manifest(scores_dir, force)
    layers = [int(x) for x in (manifest.get("layers") or [])]
    if layer is None and len(layers) > 1:
        layer = layers[-1]
    ls = load_layer_scores(scores_dir, layer, force)
    res: dict = {
        "scores_dir": str(scores_dir),
        **{key: manifest.get(key) for key in ("model", "estimator", "site")},
        "layer": ls.layer,
        "complete": bool(manifest.get("complete")),
        "rows_expected": manifest.get("rows_expected"),
        **_summary(ls.frame, bins),
    }
    top, bottom = _extremes(ls.frame, k)
    questions = None
    if data is not None:
        files = open_data(data)
        res["input_mismatch"] = verify_inputs(manifest, files, force)
        questions = _questions(files, manifest, top[ROW].to_list() + bottom[ROW].to_list())
    res["top"], res["bottom"] = _listed(top, questions), _listed(bottom, questions)
    if len(layers) > 1:
        res["layers"] = [_layer_line(lay, ls.frame if lay == ls.layer else  # parts checked once, above
                                     load_layer_scores(scores_dir, lay, force, verify=False).frame) for lay in layers]
    if plot is not None:
        columns = {c: _col(ls.frame, c) for c in (*_TERMS, "n_question")}
        res["plot"] = str(plot_scores(columns, plot, title=_plot_title(res)))
    return res


def inspect_run(run_dir, plot=None) -> dict:
    """Summary of a training run's per-prompt records (``anglerank.train.records.summary``); ``plot`` writes
    their figures to a PNG (needs matplotlib)."""
    if plot is not None:
        require_matplotlib()
    header, recs = read_records(run_dir)
    res = {"run_dir": str(run_dir), **summary(header, recs)}
    if plot is not None:
        res["plot"] = str(plot_prompts(prompt_figure_data(header, recs), plot, title=str(run_dir)))
    return res


def _col(frame, name: str) -> np.ndarray:
    """A score-frame column as float64 with NaN for null (empty when the column is absent)."""
    return frame[name].cast(float).to_numpy().astype(np.float64) if name in frame.columns else np.array([])


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


def _summary(f, bins: int) -> dict:
    """Counts, nulls, notes, statistics, length correlations and the score histogram of one layer."""
    from anglerank.angles import spearman

    terms = {c: _col(f, c) for c in _TERMS}
    nq, nt = _col(f, "n_question"), _col(f, "n_tokens")
    notes = {}
    if "note" in f.columns:
        vc = f["note"].drop_nulls().value_counts(sort=True)
        notes = {str(a): int(b) for a, b in zip(vc[vc.columns[0]].to_list(), vc[vc.columns[1]].to_list())}
    order = ("score", "intra", "inter")
    return {
        "count": int(f.height),
        "null": {c: int(np.isnan(v).sum()) for c, v in terms.items()},
        "truncated": int(f["truncated"].sum()) if "truncated" in f.columns else 0,
        "notes": notes,
        "note_groups": group_notes(notes),
        "stats": {c: _stats(v) for c, v in terms.items()},
        "spearman": {
            "n_question": {c: finite_or_none(spearman(terms[c], nq)) for c in order},
            "n_tokens": {c: finite_or_none(spearman(terms[c], nt)) for c in order},
        },
        "histogram": _histogram(terms["score"], bins),
    }


_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_COUNTED = re.compile(r"\s*\((\d+(?:\.\d+)?) ([^()]*)\)$")  # a trailing "(41 tokens)"


def group_notes(notes: dict[str, int]) -> list[dict]:
    """Row notes grouped by kind, the commonest first.

    A note's kind is its text without its numbers (``gainrl-code slice empty (41 tokens)``
    is the kind ``gainrl-code slice empty``, counted in ``tokens``), so one cause reads as
    one line however many lengths it hit. A row with several notes (joined by ``"; "``)
    counts in each kind. Each group: ``kind``, ``rows``, and for a trailing ``(N unit)``
    the ``unit`` and the ``min`` / ``max`` of N (else None).
    """
    groups: dict[str, dict] = {}
    for text, count in notes.items():
        for part in str(text).split("; "):
            m = _COUNTED.search(part)
            kind = part[: m.start()] if m else _NUMBER.sub("N", part)
            g = groups.setdefault(kind, {"kind": kind, "rows": 0, "unit": None, "min": None, "max": None})
            g["rows"] += int(count)
            if m:
                v = float(m.group(1))
                v = int(v) if v.is_integer() else v
                g["unit"] = m.group(2)
                g["min"] = v if g["min"] is None else min(g["min"], v)
                g["max"] = v if g["max"] is None else max(g["max"], v)
    return sorted(groups.values(), key=lambda g: (-g["rows"], g["kind"]))


def note_label(g: dict) -> str:
    """One group of :func:`group_notes` as text: ``gainrl-code slice empty: 25 rows, 3-41 tokens``."""
    text = f"{g['kind']}: {g['rows']:,} row{'s' if g['rows'] != 1 else ''}"
    if g["unit"] is not None:
        span = f"{g['min']}" if g["min"] == g["max"] else f"{g['min']}-{g['max']}"
        text += f", {span} {g['unit']}"
    return text


# why a kind of note nulls a score, and what to do about it
_NOTE_HINTS = {
    "gainrl-code slice empty": "--estimator gainrl-code cuts --code-prefix-tokens and --code-suffix-tokens "
                               "tokens (110 and 6) off every prompt twice, as the authors' script does, so a "
                               "prompt of up to 2 x (110 + 6) = 232 tokens has no question rows left and no "
                               "score; --estimator paper scores every prompt",
}


def null_warning(scores, where) -> str | None:
    """A warning when more than half of the scores in ``scores`` (a score table) are null: how many, the
    commonest reason (its note kind) and, for a known cause, what to change; None otherwise."""
    import pyarrow.compute as pc

    n = scores.num_rows
    null = scores.column("score").null_count
    if not n or 2 * null <= n:
        return None
    msg = f"{null:,} of {n:,} scores are null ({100 * null / n:.0f}%)"
    notes = {}
    if "note" in scores.column_names:
        why = pc.drop_null(scores.filter(pc.is_null(scores.column("score"))).column("note"))
        notes = {d["values"]: d["counts"] for d in pc.value_counts(why).to_pylist()}
    groups = group_notes(notes)
    if groups:
        msg += f"; the commonest reason: {note_label(groups[0])}"
        if groups[0]["kind"] in _NOTE_HINTS:
            msg += f". {_NOTE_HINTS[groups[0]['kind']]}"
    return msg + f" (every reason: anglerank inspect {where})"


def _histogram(score: np.ndarray, bins: int) -> dict:
    valid = score[~np.isnan(score)]
    if not valid.size:
        return {"edges": [], "counts": []}
    lo, hi = float(valid.min()), float(valid.max())
    counts, edges = np.histogram(valid, bins=bins, range=(lo, hi) if hi > lo else (lo - 0.5, lo + 0.5))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _extremes(f, k: int):
    """The ``k`` highest and ``k`` lowest scored rows (ties by input row), lowest first in ``bottom``."""
    import polars as pl

    ranked = f.filter(pl.col("score").is_not_null()).sort(["score", ROW], descending=[True, False])
    return ranked.head(k), (ranked.tail(k).reverse() if k else ranked.head(0))


def _questions(files: ParquetFiles, manifest: dict, rows: list[int]) -> dict[int, str | None]:
    """The question text of the given rows, read the way `score` read them."""
    col = manifest.get("prompt_column")
    if not col or not rows or field_type(files.schema, col) is None:
        return {}
    out = {}
    for r, value in zip(rows, files.column(col, rows)):
        if isinstance(value, list):
            value = question_from_messages(value)[1]
        out[int(r)] = value if isinstance(value, str) else None
    return out


def _listed(frame, questions: dict | None) -> list[dict]:
    """Rows of ``frame`` as dicts (``row``, ``id``, terms), with ``question`` when the data was read."""
    out = []
    for d in frame.select([c for c in (ROW, "id", "score", "intra", "inter", "n_question")
                           if c in frame.columns]).to_dicts():
        d["row"] = d.pop(ROW)
        if questions is not None:
            d["question"] = questions.get(d["row"])
        out.append(d)
    return out


def _layer_line(layer: int, frame) -> dict:
    from anglerank.angles import spearman

    score = _col(frame, "score")
    st = _stats(score)
    return {"layer": layer, "scored": st["count"], "mean": st["mean"], "std": st["std"],
            "spearman_n_question": finite_or_none(spearman(score, _col(frame, "n_question")))}


def _plot_title(res: dict) -> str:
    sp = res["spearman"]["n_question"]["score"]
    sp_s = "n/a" if sp is None else f"{sp:+.3f}"
    return (f"{res.get('model') or 'scores'} · {res.get('estimator')} · layer {res.get('layer')} · "
            f"{res['stats']['score']['count']:,} scored · Spearman(score, n_question) {sp_s}")


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
