"""PNG curves of one or several `anglerank train` runs (the optional `plot` extra).

This module exists so a run can be looked at without a notebook: it reads
``metrics.jsonl`` and draws reward and accuracy per step, held-out accuracy
against steps and against wall-clock time, the sampling window (mu and the
subset's mean rank) and the epoch angle. Several runs are overlaid, labelled
by directory name, which is how the benchmark compares samplers.
matplotlib is imported lazily; without it the error says how to install it.
"""

from __future__ import annotations

from pathlib import Path

from anglerank.train.loop import read_metrics

__all__ = ["plot_runs", "smooth"]


def smooth(ys: list[float], k: int = 5) -> list[float]:
    """Trailing moving average over up to ``k`` points (None values skipped)."""
    out = []
    for i in range(len(ys)):
        window = [y for y in ys[max(0, i - k + 1): i + 1] if y is not None]
        out.append(sum(window) / len(window) if window else float("nan"))
    return out


def _mpl():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install 'anglerank[plot]' (or pip install matplotlib)") from None
    return plt


def plot_runs(run_dirs, output=None, labels: list[str] | None = None, title: str | None = None,
              colors: list[str] | None = None) -> Path:
    """Draw the curves of ``run_dirs`` into one PNG; return its path.

    ``labels`` and ``colors`` (matplotlib colour specs) are per run; by default the
    directory name and one colour per run.
    """
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("give at least one run directory")
    runs = [(labels[i] if labels else d.name, read_metrics(d)) for i, d in enumerate(run_dirs)]
    plt = _mpl()
    out = Path(output) if output else run_dirs[0] / "curves.png"
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    ax = axes.ravel()
    for i, (label, recs) in enumerate(runs):
        c = colors[i] if colors else f"C{i % 10}"
        steps = [r for r in recs if r["type"] == "step"]
        epochs = [r for r in recs if r["type"] == "epoch"]
        evals = [r for r in recs if r["type"] == "eval"]
        x = [r["step"] for r in steps]
        ax[0].plot(x, smooth([r["reward_mean"] for r in steps]), label=label, color=c)
        ax[1].plot(x, smooth([r["accuracy"] for r in steps]), label=label, color=c)
        if evals:
            ax[2].plot([r["step"] for r in evals], [r["eval_accuracy"] for r in evals], marker="o", label=label,
                       color=c)
            ax[3].plot([r["elapsed_s"] / 60 for r in evals], [r["eval_accuracy"] for r in evals], marker="o",
                       label=label, color=c)
        if epochs:
            ex = [r["epoch"] for r in epochs]
            if any(r.get("subset_mean_rank") is not None for r in epochs):
                ax[4].plot(ex, [r.get("subset_mean_rank") for r in epochs], marker=".", color=c,
                           label=f"{label} mean rank")
            if any(r.get("mu") is not None for r in epochs):
                ax[4].plot(ex, [r.get("mu") for r in epochs], linestyle="--", color=c, label=f"{label} mu")
            ax[5].plot(ex, [r.get("angle") for r in epochs], marker=".", label=label, color=c)
    titles = [("reward mean (5-step avg)", "step"), ("train accuracy (5-step avg)", "step"),
              ("held-out greedy accuracy", "step"), ("held-out greedy accuracy", "wall-clock minutes"),
              ("sampling window (ranks)", "epoch"), ("epoch angle (mean pairwise cosine)", "epoch")]
    for a, (t, xl) in zip(ax, titles):
        a.set_title(t)
        a.set_xlabel(xl)
        a.grid(alpha=0.3)
        if a.has_data():
            a.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
