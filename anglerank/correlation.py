"""Rank correlations for `anglerank validate`: Spearman, partial Spearman and their intervals.

Pure numpy on long-format rows (one per sample and layer), so the report's
numbers can be recomputed from its own ``per_sample`` table.

The angle score against measured pass rates (:func:`pass_rate_agreement`) gets
bootstrap intervals instead (prompts resampled with replacement, seeded), and a
plain verdict (:func:`verdict`): a higher score puts a prompt earlier in the
curriculum and a higher pass rate means an easier prompt, so a ranking that
agrees with measured difficulty has a positive correlation.

Partial Spearman: ranks of x, y and the control z (question length in tokens) over the
complete cases, Pearson correlations of the ranks, then the first-order partial
correlation ``(r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))``. The 95% intervals
use Fisher's z with the Spearman variance ``1.06 / (n - 3 - k)`` (Fieller, Hartley and
Pearson 1957; k = number of controls), an approximation good for moderate n.
"""

from __future__ import annotations

import math

import numpy as np

from anglerank.angles import rankdata, spearman
from anglerank.data.values import finite_or_none

__all__ = ["X_VARS", "Y_VARS", "CONTROL", "MIN_INTERVAL_N", "partial_spearman", "fisher_ci", "correlations",
           "bootstrap_spearman", "pass_rate_agreement", "verdict"]

X_VARS = ("score", "intra", "inter")
Y_VARS = ("grad_a", "grad_b", "pass_rate", "nll", "n_question", "n_tokens")
CONTROL = "n_question"
BOOTSTRAP = 2000  # resamples per interval
# Below this many prompts a 95% interval of a rank correlation spans most of [-1, 1]: no verdict.
MIN_INTERVAL_N = 10


def _complete(*cols) -> list[np.ndarray]:
    arrs = [np.asarray([np.nan if v is None else v for v in c], dtype=np.float64) for c in cols]
    ok = np.ones(arrs[0].shape, dtype=bool)
    for a in arrs:
        ok &= ~np.isnan(a)
    return [a[ok] for a in arrs]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else math.nan


def partial_spearman(x, y, z) -> float:
    """Spearman correlation of x and y with z partialled out (see the module docstring).

    Triples with any NaN/None are dropped; NaN with fewer than 4 complete triples, a
    constant variable, or |r_xz| or |r_yz| equal to 1.
    """
    xa, ya, za = _complete(x, y, z)
    if xa.size < 4:
        return math.nan
    rx, ry, rz = rankdata(xa), rankdata(ya), rankdata(za)
    rxy, rxz, ryz = _pearson(rx, ry), _pearson(rx, rz), _pearson(ry, rz)
    den = (1.0 - rxz * rxz) * (1.0 - ryz * ryz)
    if any(math.isnan(v) for v in (rxy, rxz, ryz)) or den <= 1e-12:
        return math.nan
    return max(-1.0, min(1.0, (rxy - rxz * ryz) / math.sqrt(den)))


def fisher_ci(r: float, n: int, controls: int = 0) -> list[float] | None:
    """Approximate 95% interval for a (partial) Spearman r from n pairs."""
    dof = n - 3 - controls
    if r is None or math.isnan(r) or dof <= 0:
        return None
    if abs(r) >= 1.0:
        return [r, r]
    z, se = math.atanh(r), math.sqrt(1.06 / dof)
    return [math.tanh(z - 1.96 * se), math.tanh(z + 1.96 * se)]


def correlations(per_sample: list[dict], layers: list[int], control: str = CONTROL) -> list[dict]:
    """Spearman (raw and partial on ``control``) of X_VARS (and length) with Y_VARS, per layer.

    Rows of ``per_sample`` are long format (one per sample and layer); y variables that
    are missing for every sample (e.g. pass_rate without --rollouts) are skipped.
    """
    out = []
    for layer in layers:
        rows = [r for r in per_sample if r["layer"] == layer]
        ys = [y for y in Y_VARS if any(r.get(y) is not None for r in rows)]
        for x in (*X_VARS, control):
            for y in ys:
                if y == x or (x == control and y in ("n_tokens",)):
                    continue
                xv, yv, zv = [r[x] for r in rows], [r.get(y) for r in rows], [r[control] for r in rows]
                n = len(_complete(xv, yv)[0])
                rho = spearman(*_complete(xv, yv)) if n else math.nan
                entry = {"layer": layer, "x": x, "y": y, "n": n, "spearman": finite_or_none(rho),
                         "ci95": fisher_ci(rho, n)}
                if x != control and y != control:
                    n_p = len(_complete(xv, yv, zv)[0])
                    pr = partial_spearman(xv, yv, zv)
                    entry.update(partial_spearman=finite_or_none(pr), partial_n=n_p, partial_ci95=fisher_ci(pr, n_p, 1))
                else:
                    entry.update(partial_spearman=None, partial_n=None, partial_ci95=None)
                out.append(entry)
    return out


# --- the angle score against measured pass rates --------------------------------------------

def bootstrap_spearman(x, y, z=None, *, n_boot: int = BOOTSTRAP, seed: int = 0) -> dict:
    """Spearman of x and y (partial on ``z`` when given) with a percentile bootstrap 95% interval.

    Incomplete pairs (or triples) are dropped first; the ``n`` left are resampled with
    replacement ``n_boot`` times from ``numpy.random.default_rng(seed)`` (an ``(n_boot, n)``
    draw of indices), and the interval is the 2.5th and 97.5th percentile of the resampled
    correlations that are defined. Returns ``{"n", "spearman", "ci95"}``; ``ci95`` is None
    below ``MIN_INTERVAL_N`` prompts or when the correlation is undefined (a constant side).
    """
    cols = _complete(x, y) if z is None else _complete(x, y, z)
    n = int(cols[0].size)

    def stat(*c) -> float:
        return spearman(c[0], c[1]) if z is None else partial_spearman(*c)

    rho = stat(*cols) if n else math.nan
    ci = None
    if n >= MIN_INTERVAL_N and math.isfinite(rho):
        idx = np.random.default_rng(seed).integers(0, n, size=(int(n_boot), n))
        boot = np.asarray([stat(*(c[i] for c in cols)) for i in idx])
        boot = boot[np.isfinite(boot)]
        if boot.size:
            lo, hi = np.percentile(boot, [2.5, 97.5])
            ci = [float(lo), float(hi)]
    return {"n": n, "spearman": finite_or_none(rho), "ci95": ci}


def pass_rate_agreement(score, pass_rate, *, groups=None, covariate=None, n_boot: int = BOOTSTRAP,
                        seed: int = 0) -> dict:
    """How the angle score orders prompts against their measured pass rates.

    ``overall``: Spearman of score with pass rate; ``partial`` (with ``covariate``, e.g.
    prompt length in tokens): the same with the covariate partialled out; ``groups``
    (with per-prompt ``groups`` values, e.g. the problem kind): the correlation within
    each group. Each comes with its bootstrap 95% interval (:func:`bootstrap_spearman`,
    same ``seed``), and ``verdict`` says what the overall one means.
    """
    score, pass_rate = list(score), list(pass_rate)
    out = {"overall": bootstrap_spearman(score, pass_rate, n_boot=n_boot, seed=seed)}
    if covariate is not None:
        out["partial"] = bootstrap_spearman(score, pass_rate, list(covariate), n_boot=n_boot, seed=seed)
    if groups is not None:
        groups = ["null" if g is None else str(g) for g in groups]
        out["groups"] = {
            g: bootstrap_spearman([s for s, k in zip(score, groups) if k == g],
                                  [p for p, k in zip(pass_rate, groups) if k == g], n_boot=n_boot, seed=seed)
            for g in sorted(set(groups))
        }
    out["verdict"] = verdict(out["overall"], pass_rate)
    return out


def verdict(entry: dict, pass_rate=None) -> str:
    """One plain sentence on a :func:`bootstrap_spearman` result of score against pass rate."""
    n, rho, ci = entry["n"], entry["spearman"], entry["ci95"]
    if rho is None:
        rates = {v for v in (pass_rate or []) if v is not None}
        why = (f"every prompt has the same pass rate ({next(iter(rates)):.2f})" if len(rates) == 1
               else f"n = {n} prompts with both a score and a pass rate" if n < 3
               else "the scores or pass rates do not vary")
        return f"on this sample the angle ranking cannot be compared with measured difficulty: {why}"
    if ci is None:
        return (f"on this sample rho = {rho:+.2f} (n = {n}), but {n} prompts are too few for a meaningful "
                f"95% interval (at least {MIN_INTERVAL_N} needed), so there is no verdict")
    stats = f"rho = {rho:+.2f}, 95% CI [{ci[0]:+.2f}, {ci[1]:+.2f}], n = {n}"
    if ci[0] > 0:
        return f"on this sample the angle ranking agrees with measured difficulty: {stats}"
    if ci[1] < 0:
        return f"on this sample the angle ranking runs against measured difficulty (hard prompts first): {stats}"
    return f"on this sample the angle ranking is indistinguishable from a random order: {stats}"
