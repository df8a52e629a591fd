"""Per-prompt training records: ``RUN_DIR/prompts.jsonl``, one line per drawn prompt per step.

``metrics.jsonl`` says how a step went on average; this file says what happened to
each prompt, so coverage (which prompts were drawn, how often, how soon again),
zero-variance groups and accuracy along the ranking can be read back after the
run. The first line is a header::

    {"records": "prompts", "version": 1, "n_prompts": N, "num_generations": G, "filter_groups": false}

and every other line one prompt's group in one step::

    step     global step, from 1 (as in metrics.jsonl)
    epoch    epoch, from 1 (as metrics.jsonl's step lines)
    id       the data's id column value, else the row index
    rank     its position in the curriculum's ranking when drawn (0 = first)
    rewards  the G total rewards
    correct  how many of the G are correct under the curriculum's rule (the judged reward >= correct_threshold)
    lengths  the G completion lengths in tokens
    angle    mean measured angle of its completions (what the curriculum averages into the epoch angle)
    dropped  true when --filter-groups dropped the group (its G rewards were all equal)

It is appended like ``metrics.jsonl`` (a line cut short by a kill is skipped when read;
a checkpoint records the file's size and ``--resume`` truncates back to it). A line
is about 170-180 bytes at G = 8 (4-digit ids and ranks, 3-digit lengths): 20 epochs of
256 prompts make 0.9 MB, 100,000 draws 18 MB, where one checkpoint of a 0.5B-parameter
policy with its optimiser is about 6 GB.

The statistics below are pure functions of the records (plus the pool size), for
``anglerank inspect RUN_DIR``, ``anglerank plot`` and benchmarks alike.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from anglerank.curriculum import correct
from anglerank.errors import UserError
from anglerank.train.metrics import Jsonl, read_jsonl, _json_default

__all__ = ["RECORDS_FILE", "Records", "step_lines", "read_records", "is_run_dir", "uniform", "coverage",
           "zero_variance", "decile_accuracy", "accuracy_by_decile_over_training", "zero_variance_over_training",
           "cartography", "summary", "summary_rows", "decile_rows"]

RECORDS_FILE = "prompts.jsonl"
_VERSION = 1
REDRAW_WINDOW = 3  # epochs: a re-draw this soon after the previous draw of the prompt counts as "soon"


class Records(Jsonl):
    """The run's ``prompts.jsonl``: a header line, then one line per drawn prompt per step."""

    def start(self, n_prompts: int, num_generations: int, filter_groups: bool) -> None:
        """Begin a fresh file with its header."""
        self.reset()
        self.write({"records": "prompts", "version": _VERSION, "n_prompts": int(n_prompts),
                    "num_generations": int(num_generations), "filter_groups": bool(filter_groups)})

    def write_lines(self, recs: list[dict]) -> None:
        """Append one step's lines in one write, so a kill tears at most the step's last line."""
        if recs:
            self.append("".join(json.dumps(r, separators=(",", ":"), default=_json_default) + "\n" for r in recs))


def step_lines(res, *, step: int, epoch: int, ids: list, order, num_generations: int,
               threshold: float) -> list[dict]:
    """One record per group of a step's result (``step.StepResult``), in the order they were rolled out.

    ``order`` is the curriculum's ranking at the time (``order[rank] = pool index``).
    """
    G = num_generations
    order = np.asarray(order)
    rank = np.empty(order.shape[0], dtype=np.int64)
    rank[order] = np.arange(order.shape[0])
    out = []
    for g, i in enumerate(res.prompts):
        s = slice(g * G, (g + 1) * G)
        ang = [a for a in res.angles[s] if a is not None and math.isfinite(a)]
        out.append({"step": step, "epoch": epoch, "id": ids[i], "rank": int(rank[i]), "rewards": res.rewards[s],
                    "correct": int(correct(res.judged[s], threshold).sum()), "lengths": res.lengths[s],
                    "angle": round(float(np.mean(ang)), 6) if ang else None, "dropped": bool(res.dropped[g])})
    return out


def is_run_dir(path) -> bool:
    """Whether ``path`` is a training run directory holding per-prompt records."""
    return (Path(path) / RECORDS_FILE).is_file()


def read_records(run_dir) -> tuple[dict, list[dict]]:
    """(header, records) of ``RUN_DIR/prompts.jsonl``.

    A last line cut short (the run was killed while writing it) is skipped with a
    warning; a bad line anywhere else, or a missing header, means the file is not a
    run's records: an error naming it.
    """
    path = Path(run_dir) / RECORDS_FILE
    if not path.is_file():
        raise UserError(f"no {RECORDS_FILE} in {run_dir}: not a training run directory (or one from before "
                        "per-prompt records)")
    out = read_jsonl(path)
    if not out or not isinstance(out[0], dict) or out[0].get("records") != "prompts":
        raise UserError(f"{path}: no header line; is this a run's {RECORDS_FILE}?")
    header, recs = out[0], out[1:]
    if header.get("version") != _VERSION:
        raise UserError(f"{path}: unsupported records version {header.get('version')!r}")
    return header, recs


# ------------------------------------------------------------------ statistics (pure)

def uniform(rec: dict) -> bool:
    """Whether a group's rewards were all equal (zero variance: no advantage, no gradient)."""
    r = np.asarray(rec["rewards"], dtype=np.float64)
    return bool(r.size) and bool(np.ptp(r) == 0)


def _draws(recs: list[dict]) -> dict:
    """Epochs in which each prompt id was drawn, in order (one entry per record)."""
    by = defaultdict(list)
    for r in recs:
        by[_key(r["id"])].append(r["epoch"])
    return by


def _key(x):
    return json.dumps(x) if isinstance(x, (list, dict)) else x


def coverage(recs: list[dict], n_prompts: int, window: int = REDRAW_WINDOW) -> dict:
    """How the run covered the pool.

    ``drawn`` / ``never_drawn`` prompts; ``draws_min`` / ``draws_median`` / ``draws_max``
    over the drawn prompts; ``redraw_share``: the share of all draws whose prompt had
    already been drawn within the ``window`` epochs before (1 <= gap <= window).
    """
    by = _draws(recs)
    counts = np.asarray([len(v) for v in by.values()], dtype=np.int64)
    soon = sum(1 for eps in by.values() for a, b in zip(eps, eps[1:]) if 1 <= b - a <= window)
    return {"draws": len(recs), "drawn": len(by), "never_drawn": max(0, int(n_prompts) - len(by)),
            "draws_min": int(counts.min()) if counts.size else None,
            "draws_median": float(np.median(counts)) if counts.size else None,
            "draws_max": int(counts.max()) if counts.size else None,
            "redraw_window": window, "redraw_share": soon / len(recs) if recs else None}


def zero_variance(recs: list[dict], num_generations: int) -> dict:
    """Shares of groups whose rewards were all equal, split into all correct, all wrong and the rest
    (equal rewards without one verdict, e.g. every completion scored 0.4)."""
    n = len(recs)
    uni = [r for r in recs if uniform(r)]
    right = sum(r["correct"] == num_generations for r in uni)
    wrong = sum(r["correct"] == 0 for r in uni)
    share = (lambda k: k / n if n else None)  # noqa: E731
    return {"groups": n, "zero_variance": share(len(uni)), "all_correct": share(right), "all_wrong": share(wrong),
            "other": share(len(uni) - right - wrong), "dropped": share(sum(bool(r.get("dropped")) for r in recs))}


def _decile(rank: int, n_prompts: int) -> int:
    return min(9, int(rank) * 10 // max(1, int(n_prompts)))


def decile_accuracy(recs: list[dict], n_prompts: int, num_generations: int) -> list[float | None]:
    """Accuracy (correct completions / completions) of the draws in each rank decile (0 = top of the ranking)."""
    right, total = np.zeros(10), np.zeros(10)
    for r in recs:
        d = _decile(r["rank"], n_prompts)
        right[d] += r["correct"]
        total[d] += num_generations
    return [float(a / t) if t else None for a, t in zip(right, total)]


def _progress_bins(recs: list[dict], bins: int) -> tuple[np.ndarray, int]:
    """Each record's bin of training progress (by step) and the number of bins."""
    steps = np.asarray([r["step"] for r in recs], dtype=np.int64)
    if not steps.size:
        return steps, 0
    last = int(steps.max())
    bins = max(1, min(int(bins), last))
    return np.minimum((steps - 1) * bins // last, bins - 1), bins


def accuracy_by_decile_over_training(recs: list[dict], n_prompts: int, num_generations: int,
                                     bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy ``[10, bins]`` with NaN where no draw fell, last step of each bin ``[bins]``): rank
    deciles against training progress, for a heatmap."""
    where, bins = _progress_bins(recs, bins)
    right, total = np.zeros((10, bins)), np.zeros((10, bins))
    ends = np.zeros(bins, dtype=np.int64)
    for r, b in zip(recs, where):
        d = _decile(r["rank"], n_prompts)
        right[d, b] += r["correct"]
        total[d, b] += num_generations
        ends[b] = max(ends[b], r["step"])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, right / np.where(total > 0, total, 1), np.nan), ends


def zero_variance_over_training(recs: list[dict], num_generations: int, bins: int = 20) -> dict:
    """Per bin of training progress: its last ``step`` and the shares of all-correct, all-wrong and other
    zero-variance groups (lists of length ``bins``)."""
    where, bins = _progress_bins(recs, bins)
    out = {k: np.zeros(bins) for k in ("groups", "all_correct", "all_wrong", "other")}
    ends = np.zeros(bins, dtype=np.int64)
    for r, b in zip(recs, where):
        out["groups"][b] += 1
        ends[b] = max(ends[b], r["step"])
        if uniform(r):
            kind = ("all_correct" if r["correct"] == num_generations else "all_wrong" if r["correct"] == 0
                    else "other")
            out[kind][b] += 1
    n = np.maximum(out.pop("groups"), 1)
    return {"step": ends.tolist(), **{k: (v / n).tolist() for k, v in out.items()}}


def cartography(recs: list[dict], num_generations: int) -> dict:
    """Dataset cartography per prompt: ``confidence`` (mean correctness over its draws), ``variability``
    (standard deviation of the per-draw correctness) and ``draws``, as aligned lists with ``id``."""
    by = defaultdict(list)
    for r in recs:
        by[_key(r["id"])].append(r["correct"] / num_generations)
    ids = list(by)
    return {"id": ids, "confidence": [float(np.mean(by[i])) for i in ids],
            "variability": [float(np.std(by[i])) for i in ids], "draws": [len(by[i]) for i in ids]}


def prompt_figure_data(header: dict, recs: list[dict]) -> dict:
    """What :func:`anglerank.plots.plot_prompts` draws of a run's per-prompt records: accuracy by rank
    decile over training, the data map and the zero-variance groups over training."""
    if not recs:
        raise UserError("no per-prompt records to draw: the run has no training step yet")
    n, G = int(header["n_prompts"]), int(header["num_generations"])
    acc, ends = accuracy_by_decile_over_training(recs, n, G)
    return {"n_prompts": n, "accuracy": acc, "ends": ends, "cartography": cartography(recs, G),
            "zero_variance": zero_variance_over_training(recs, G)}


def summary(header: dict, recs: list[dict]) -> dict:
    """Everything ``anglerank inspect RUN_DIR`` shows, as a JSON-ready dict."""
    n, G = int(header["n_prompts"]), int(header["num_generations"])
    last = max((r["step"] for r in recs), default=0)
    first_third = [r for r in recs if r["step"] <= last / 3]
    last_third = [r for r in recs if r["step"] > 2 * last / 3]
    return {"n_prompts": n, "num_generations": G, "filter_groups": bool(header.get("filter_groups")),
            "steps": last, "epochs": max((r["epoch"] for r in recs), default=0),
            "coverage": coverage(recs, n), "zero_variance": zero_variance(recs, G),
            "decile_accuracy": {"first_third": decile_accuracy(first_third, n, G),
                                "last_third": decile_accuracy(last_third, n, G)}}


def summary_rows(s: dict) -> list[tuple[str, str]]:
    """The summary as (label, value) lines of a table (the deciles: :func:`decile_rows`)."""
    c, z = s["coverage"], s["zero_variance"]
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    rows = [("steps / epochs", f"{s['steps']} / {s['epochs']} (G = {s['num_generations']}"
                               f"{', --filter-groups' if s['filter_groups'] else ''})"),
            ("prompts drawn", f"{c['drawn']:,} of {s['n_prompts']:,} ({c['draws']:,} draws)"),
            ("prompts never drawn", f"{c['never_drawn']:,}"),
            ("draws per prompt", "-" if c["draws_min"] is None else
             f"min {c['draws_min']}, median {c['draws_median']:g}, max {c['draws_max']}"),
            (f"re-draws within {c['redraw_window']} epochs", pct(c["redraw_share"]) + " of draws"),
            ("zero-variance groups", f"{pct(z['zero_variance'])} (all correct {pct(z['all_correct'])}, "
                                     f"all wrong {pct(z['all_wrong'])}"
                                     + (f", other {pct(z['other'])}" if z["other"] else "") + ")")]
    if s["filter_groups"]:
        rows.append(("dropped by --filter-groups", pct(z["dropped"])))
    return rows


def decile_rows(s: dict) -> list[tuple[str, list[str]]]:
    """Accuracy by rank decile, first and last third of training, as table rows of 10 cells ("-": no draw)."""
    cells = lambda xs: ["-" if x is None else f"{x:.2f}" for x in xs]  # noqa: E731
    d = s["decile_accuracy"]
    return [("first 1/3", cells(d["first_third"])), ("last 1/3", cells(d["last_third"]))]
