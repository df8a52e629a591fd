"""Rank correlations for `anglerank validate`: Spearman, partial Spearman and their intervals.

Pure numpy on long-format rows (one per sample and layer), so the report's
numbers can be recomputed from its own ``per_sample`` table.

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

__all__ = ["X_VARS", "Y_VARS", "CONTROL", "partial_spearman", "fisher_ci", "correlations"]

X_VARS = ("score", "intra", "inter")
Y_VARS = ("grad_a", "grad_b", "pass_rate", "nll", "n_question", "n_tokens")
CONTROL = "n_question"


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
