"""Every figure anglerank draws, behind one check for the optional ``plot`` extra.

- :func:`plot_scores`: a score directory (``anglerank inspect --plot``);
- :func:`plot_report`: the angle signal against gradient norms (``anglerank validate --plot``);
- :func:`plot_runs`: the curves of training runs (``anglerank plot``);
- :func:`plot_prompts`: a run's per-prompt records (``anglerank plot``, next to the curves).

matplotlib is imported only here and only when a figure is drawn. Figures are
built with the object-oriented API (``Figure`` on an Agg canvas), never through
``pyplot``, so drawing one changes no global backend or figure registry of the
program that called us. Files are written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from anglerank.errors import MissingExtra, UserError

__all__ = ["plot_prompts", "plot_report", "plot_runs", "plot_scores", "require_matplotlib", "smooth"]


def require_matplotlib(what: str = "--plot") -> None:
    """Raise :class:`MissingExtra` (``"<what> needs matplotlib: ..."``) unless matplotlib imports."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtra(f"{what} needs matplotlib: pip install 'anglerank[plot]' "
                           "(or pip install matplotlib)") from None


def _figure(what: str, **kwargs):
    require_matplotlib(what)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    """Write ``fig`` as a PNG to ``path`` via a temporary sibling (no half-written image)."""
    from anglerank.data.writer import OutputError

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(tmp):
            tmp.unlink()
        # a new file, never a link planted at the temporary's name (the replace below swaps a link at
        # ``path`` itself, never its target)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write plot {path}: {exc.strerror or exc}") from None
    return path


# --------------------------------------------------------------------------- inspect

def plot_scores(columns: dict[str, np.ndarray], path, title: str = "") -> Path:
    """Histograms of intra, inter, score and score vs question length, as one PNG.

    ``columns`` maps ``intra``, ``inter``, ``score`` and ``n_question`` to float arrays
    (NaN for null) of equal length.
    """
    fig = _figure("--plot", figsize=(11, 8))
    axes = fig.subplots(2, 2)
    for ax, name, color in zip(axes.flat[:3], ("intra", "inter", "score"), ("#4C72B0", "#55A868", "#C44E52")):
        v = columns[name][~np.isnan(columns[name])]
        if v.size:
            ax.hist(v, bins=min(50, max(5, int(np.sqrt(v.size)))), color=color, alpha=0.85)
            ax.axvline(float(np.median(v)), color="k", lw=1, ls="--", label=f"median {np.median(v):.4f}")
            ax.legend(fontsize=8)
        ax.set_title(f"C_{name}" if name != "score" else "score", fontsize=10)
        ax.set_xlabel(name)
        ax.set_ylabel("rows")
    ax = axes.flat[3]
    score, nq = columns["score"], columns["n_question"]
    ok = ~(np.isnan(score) | np.isnan(nq))
    ax.scatter(nq[ok], score[ok], s=6, alpha=0.5, color="#8172B2")
    ax.set_xlabel("question tokens (n_question)")
    ax.set_ylabel("score")
    ax.set_title("score vs question length", fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- validate

# The names `anglerank validate` shows for its report's measurements, in its table and its plot alike.
VALIDATE_LABELS = {"grad_a": "‖∇W_site‖", "grad_b": "‖∇θ‖", "pass_rate": "pass rate", "nll": "target NLL",
                   "n_question": "question len", "n_tokens": "total tokens"}


def plot_report(report: dict, path, layer: int | None = None) -> Path:
    """Scatter plots of score/intra/inter against each measured quantity for one layer."""
    from anglerank.correlation import X_VARS

    layer = max(report["layers"]) if layer is None else layer
    rows = [r for r in report["per_sample"] if r["layer"] == layer]
    ys = [y for y in ("grad_a", "grad_b", "pass_rate", "n_question") if any(r.get(y) is not None for r in rows)]
    corr = {(c["x"], c["y"]): c for c in report["correlations"] if c["layer"] == layer}
    fig = _figure("--plot", figsize=(3.3 * len(ys), 2.9 * len(X_VARS)))
    axes = fig.subplots(len(X_VARS), len(ys), squeeze=False)
    for i, x in enumerate(X_VARS):
        for j, y in enumerate(ys):
            ax = axes[i][j]
            pts = [(r[x], r[y]) for r in rows if r.get(x) is not None and r.get(y) is not None]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=9, alpha=0.6)
            if y.startswith("grad") and pts and min(p[1] for p in pts) > 0 and \
                    max(p[1] for p in pts) > 20 * min(p[1] for p in pts):
                ax.set_yscale("log")
            c = corr.get((x, y), {})
            rho, prho = c.get("spearman"), c.get("partial_spearman")
            title = f"ρ={rho:+.2f}" if rho is not None else "ρ=n/a"
            if prho is not None:
                title += f"  partial ρ={prho:+.2f}"
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(VALIDATE_LABELS.get(x, x), fontsize=8)
            ax.set_ylabel(VALIDATE_LABELS.get(y, y), fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(f"anglerank validate: {report['model']}, layer {layer}, {report['site']}, "
                 f"{report['estimator']}, n={report['n_samples']}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- train

def smooth(ys: list[float], k: int = 5) -> list[float]:
    """Trailing moving average over up to ``k`` points (None values skipped)."""
    out = []
    for i in range(len(ys)):
        window = [y for y in ys[max(0, i - k + 1): i + 1] if y is not None]
        out.append(sum(window) / len(window) if window else float("nan"))
    return out


_RUN_PANELS = [("reward mean (5-step avg)", "step"), ("train accuracy (5-step avg)", "step"),
               ("held-out greedy accuracy", "step"), ("held-out greedy accuracy", "wall-clock minutes"),
               ("sampling window (ranks)", "epoch"), ("epoch angle (mean pairwise cosine)", "epoch")]


def _draw_run(ax, label: str, recs: list[dict], c: str) -> None:
    """One run's curves on the six panels ``ax``."""
    steps = [r for r in recs if r["type"] == "step"]
    epochs = [r for r in recs if r["type"] == "epoch"]
    evals = [r for r in recs if r["type"] == "eval"]
    x = [r["step"] for r in steps]
    ax[0].plot(x, smooth([r["reward_mean"] for r in steps]), label=label, color=c)
    ax[1].plot(x, smooth([r["accuracy"] for r in steps]), label=label, color=c)
    if evals:
        acc = [r["eval_accuracy"] for r in evals]
        ax[2].plot([r["step"] for r in evals], acc, marker="o", label=label, color=c)
        ax[3].plot([r["elapsed_s"] / 60 for r in evals], acc, marker="o", label=label, color=c)
    if epochs:
        ex = [r["epoch"] for r in epochs]
        if any(r.get("subset_mean_rank") is not None for r in epochs):
            ax[4].plot(ex, [r.get("subset_mean_rank") for r in epochs], marker=".", color=c, label=f"{label} mean rank")
        if any(r.get("mu") is not None for r in epochs):
            ax[4].plot(ex, [r.get("mu") for r in epochs], linestyle="--", color=c, label=f"{label} mu")
        ax[5].plot(ex, [r.get("angle") for r in epochs], marker=".", label=label, color=c)


def plot_runs(runs, output, title: str | None = None, colors: list[str] | None = None) -> Path:
    """Draw the curves of training runs into one PNG at ``output``; return its path.

    ``runs`` holds one ``(label, records)`` pair per run, the records of its
    ``metrics.jsonl`` (:func:`anglerank.train.metrics.read_metrics`). Reward and
    accuracy per step, held-out accuracy against steps and wall-clock time, the
    sampling window (mu and the subset's mean rank) and the epoch angle; several runs
    are overlaid. ``colors`` (matplotlib colour specs) are per run; by default one
    colour per run.
    """
    if not runs:
        raise UserError("give at least one run directory")
    fig = _figure("`anglerank plot`", figsize=(15, 8.5))
    ax = fig.subplots(2, 3).ravel()
    for i, (label, recs) in enumerate(runs):
        _draw_run(ax, label, recs, colors[i] if colors else f"C{i % 10}")
    for a, (t, xl) in zip(ax, _RUN_PANELS):
        a.set_title(t)
        a.set_xlabel(xl)
        a.grid(alpha=0.3)
        if a.has_data():
            a.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, Path(output))


# --------------------------------------------------------------------------- train: per-prompt records

def plot_prompts(data: dict, path, title: str = "") -> Path:
    """What practitioners read from per-prompt records, as one PNG: accuracy by rank decile over training
    (heatmap), a data map in the style of dataset cartography (one point per prompt: variability of its
    correctness across draws against its mean correctness) and the share of zero-variance groups over
    training, split into all correct and all wrong. ``data`` is what
    :func:`anglerank.train.records.prompt_figure_data` makes of a run's records."""
    n = data["n_prompts"]
    fig = _figure("`anglerank plot`", figsize=(17, 5))
    ax = fig.subplots(1, 3)
    acc, ends = data["accuracy"], data["ends"]
    from matplotlib import colormaps

    im = ax[0].imshow(acc, aspect="auto", cmap=colormaps["viridis"].with_extremes(bad="#e8e8e8"), vmin=0, vmax=1,
                      interpolation="nearest")  # grey: no draw in that decile and stretch of training
    fig.colorbar(im, ax=ax[0], label="accuracy")
    _bin_ticks(ax[0], ends)
    ax[0].set_yticks(range(10), [f"{10 * d}-{10 * d + 10}%" for d in range(10)], fontsize=8)
    ax[0].set(title="accuracy by rank decile", xlabel="training progress (last step of each bin)",
              ylabel="rank decile (top = first ranked)")
    cart = data["cartography"]
    sc = ax[1].scatter(cart["variability"], cart["confidence"], c=cart["draws"], s=14, cmap="plasma", alpha=0.7)
    fig.colorbar(sc, ax=ax[1], label="draws")
    ax[1].set(title=f"data map ({len(cart['id']):,} prompts drawn of {n:,})", ylim=(-0.03, 1.03),
              xlabel="variability (std of correctness across draws)", ylabel="mean correctness")
    zv = data["zero_variance"]
    x, bottom = np.arange(len(zv["step"])), np.zeros(len(zv["step"]))
    for key, label, color in (("all_correct", "all correct", "#55A868"), ("all_wrong", "all wrong", "#C44E52"),
                              ("other", "equal, neither", "#8C8C8C")):
        if key != "other" or any(zv[key]):
            ax[2].bar(x, zv[key], bottom=bottom, color=color, label=label, width=0.9)
            bottom += np.asarray(zv[key])
    _bin_ticks(ax[2], zv["step"])
    ax[2].set(title="zero-variance groups (all G rewards equal)", xlabel="training progress (last step of each bin)",
              ylabel="share of groups", ylim=(0, 1))
    ax[2].legend(fontsize=8)
    for a in ax[1:]:
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _bin_ticks(ax, ends) -> None:
    """Label at most ~8 progress bins with the last step each covers."""
    ends = list(ends)
    every = max(1, -(-len(ends) // 8))
    ticks = list(range(0, len(ends), every))
    ax.set_xticks(ticks, [str(ends[i]) for i in ticks], fontsize=8)
