"""Angle-concentration math for GAIN-RL, kept apart from any model or I/O code.

GAIN-RL ranks prompts by how tightly the token hidden states of a prompt
cluster in angle (docs/method.md, "The signal" and "What the released code does"). This module holds only the
numbers: the paper-intent segment concentrations (exact ``O(L d)`` closed
forms plus a naive ``O(L^2 d)`` reference), a bug-compatible reproduction of
the authors' released scoring estimator ("gainrl-code", also in ``O(L d)``
plus a literal reference), and a small Spearman rank correlation used to
compare rankings. Everything is computed in float64 so the closed forms do
not lose precision when ``||s_Q||^2`` is close to ``n``.

Ordering note: the authors sort scores with ``torch.argsort(descending=True)``,
which puts NaN scores *first*. With the gainrl-code estimator and the default
offsets, every prompt of 232 tokens or fewer has a NaN "intra" term and thus a
NaN score, so these prompts lead the authors' ordering.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np
import torch

__all__ = [
    "NORM_EPS",
    "normalize_rows",
    "segment_concentration",
    "segment_concentration_shared_prefix",
    "naive_concentration",
    "combine",
    "gainrl_code_terms",
    "gainrl_code_score",
    "gainrl_code_terms_batch",
    "gainrl_code_reference",
    "rankdata",
    "spearman",
]

# Same epsilon as torch.nn.functional.normalize: rows with norm below it are
# divided by NORM_EPS instead, so an all-zero row gives u = 0.
NORM_EPS = 1e-12

Number = Union[float, torch.Tensor]


def normalize_rows(hidden_XD: torch.Tensor) -> torch.Tensor:
    """Cast to float64 and divide each row (last dim) by max(||row||, eps)."""
    hidden64_XD = hidden_XD.to(torch.float64)
    norm_X1 = torch.linalg.vector_norm(hidden64_XD, dim=-1, keepdim=True)
    return hidden64_XD / norm_X1.clamp_min(NORM_EPS)


# ---------------------------------------------------------------------------
# Paper-intent concentrations
# ---------------------------------------------------------------------------


def segment_concentration(
    hidden_BTD: torch.Tensor, q_mask_BT: torch.Tensor, p_mask_BT: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form intra-Q and inter-(Q, P) mean cosines, batched, ``O(B T D)``.

    For each sample ``b`` with unit rows ``u_i`` (zero rows give ``u_i = 0``),
    ``s_Q = sum_{i in Q} u_i``, ``s_P`` likewise, ``n = |Q|``, ``m = |P|``::

        intra = (||s_Q||^2 - sum_{i in Q} ||u_i||^2) / (n (n - 1))
        inter = (s_Q . s_P) / (n m)

    ``intra`` is NaN when ``n < 2``; ``inter`` is NaN when ``n == 0`` or
    ``m == 0``. Positions outside both masks (padding) never touch the
    result, even if they hold inf/NaN. Returns float64 ``[B]`` tensors on the
    input's device.
    """
    if hidden_BTD.dim() != 3:
        raise ValueError(f"hidden_BTD must be [B, T, D], got {tuple(hidden_BTD.shape)}")
    q_mask_BT = q_mask_BT.to(device=hidden_BTD.device, dtype=torch.bool)
    p_mask_BT = p_mask_BT.to(device=hidden_BTD.device, dtype=torch.bool)
    if q_mask_BT.shape != hidden_BTD.shape[:2] or p_mask_BT.shape != hidden_BTD.shape[:2]:
        raise ValueError("masks must be [B, T] matching hidden_BTD")

    unit_BTD = normalize_rows(hidden_BTD)
    zero = unit_BTD.new_zeros(())
    # torch.where (not multiplication) so garbage/inf in padding cannot leak.
    unit_q_BTD = torch.where(q_mask_BT.unsqueeze(-1), unit_BTD, zero)
    unit_p_BTD = torch.where(p_mask_BT.unsqueeze(-1), unit_BTD, zero)
    s_p_BD = unit_p_BTD.sum(dim=1)
    m_B = p_mask_BT.sum(dim=1).to(torch.float64)
    return _concentrations(unit_q_BTD, q_mask_BT, s_p_BD, m_B)


def _concentrations(unit_q_BTD, q_mask_BT, s_p_BD, m_B) -> tuple[torch.Tensor, torch.Tensor]:
    """intra and inter from the masked unit Q rows and the P rows' sum and count (float64 [B])."""
    s_q_BD = unit_q_BTD.sum(dim=1)
    sqnorm_q_B = (unit_q_BTD * unit_q_BTD).sum(dim=(1, 2))
    n_B = q_mask_BT.sum(dim=1).to(torch.float64)

    nan = unit_q_BTD.new_full((), math.nan)
    intra_num_B = (s_q_BD * s_q_BD).sum(dim=1) - sqnorm_q_B
    intra_den_B = n_B * (n_B - 1.0)
    intra_B = torch.where(
        n_B >= 2, intra_num_B / torch.where(n_B >= 2, intra_den_B, 1.0), nan
    )
    inter_num_B = (s_q_BD * s_p_BD).sum(dim=1)
    inter_den_B = n_B * m_B
    ok_B = (n_B > 0) & (m_B > 0)
    inter_B = torch.where(ok_B, inter_num_B / torch.where(ok_B, inter_den_B, 1.0), nan)
    return intra_B, inter_B


def segment_concentration_shared_prefix(
    hidden_BTD: torch.Tensor, q_mask_BT: torch.Tensor, prefix_PD: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`segment_concentration` for rows whose P segment is the same ``prefix_PD`` for all.

    ``hidden_BTD`` holds only the tokens after the prefix (``q_mask_BT`` indexes them);
    ``P`` is every row of ``prefix_PD``. With the prefix cache the prefix's hidden states
    are shared by the batch, so its unit rows are summed once instead of once per row,
    and it is never concatenated in front of every row. Equal to
    ``segment_concentration(cat(prefix, hidden), q_mask shifted by P, first P tokens)`` up
    to float64 rounding (the P sum is reduced over [P, D] instead of [B, P + T, D]).
    """
    if hidden_BTD.dim() != 3 or prefix_PD.dim() != 2:
        raise ValueError("hidden_BTD must be [B, T, D] and prefix_PD [P, D]")
    q_mask_BT = q_mask_BT.to(device=hidden_BTD.device, dtype=torch.bool)
    if q_mask_BT.shape != hidden_BTD.shape[:2]:
        raise ValueError("q_mask_BT must be [B, T] matching hidden_BTD")
    B = hidden_BTD.shape[0]
    s_p_D = normalize_rows(prefix_PD).sum(dim=0)
    m_B = torch.full((B,), float(prefix_PD.shape[0]), dtype=torch.float64, device=hidden_BTD.device)
    unit_BTD = normalize_rows(hidden_BTD)
    unit_q_BTD = torch.where(q_mask_BT.unsqueeze(-1), unit_BTD, unit_BTD.new_zeros(()))
    return _concentrations(unit_q_BTD, q_mask_BT, s_p_D.to(unit_BTD.device).expand(B, -1), m_B)


def _as_index_tensor(idx, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(list(idx) if not torch.is_tensor(idx) else idx, dtype=torch.long,
                           device=device).reshape(-1)


def naive_concentration(hidden_LD: torch.Tensor, q_idx, p_idx) -> tuple[float, float]:
    """Plain ``O(L^2 d)`` reference: full float64 cosine matrix, explicit means.

    intra = mean of ``u_i . u_j`` over ``i != j`` in ``q_idx`` (NaN if < 2
    tokens); inter = mean over ``i in q_idx``, ``j in p_idx`` (NaN if either is
    empty).
    """
    unit_LD = normalize_rows(hidden_LD)
    cos_LL = unit_LD @ unit_LD.T
    q_N = _as_index_tensor(q_idx, cos_LL.device)
    p_M = _as_index_tensor(p_idx, cos_LL.device)
    n, m = q_N.numel(), p_M.numel()

    if n >= 2:
        block_NN = cos_LL[q_N][:, q_N]
        offdiag_NN = q_N.unsqueeze(1) != q_N.unsqueeze(0)
        intra = float(block_NN[offdiag_NN].mean())
    else:
        intra = math.nan
    if n > 0 and m > 0:
        inter = float(cos_LL[q_N][:, p_M].mean())
    else:
        inter = math.nan
    return intra, inter


def combine(intra: Number, inter: Number, w_intra: float = 1.0, w_inter: float = 1.0) -> Number:
    """Weighted score ``w_intra * intra + w_inter * inter`` (NaN propagates)."""
    return w_intra * intra + w_inter * inter


# ---------------------------------------------------------------------------
# The authors' released estimator ("gainrl-code"), bug-compatible
# ---------------------------------------------------------------------------
#
# For one prompt the authors compute (inp: [L, d] cast to float32):
#
#     normalized = F.normalize(inp, p=2, dim=1)
#     cos = normalized @ normalized.T
#     cos = cos * torch.tril(torch.ones_like(cos), diagonal=1)  # keeps j <= i+1
#     val = cos[110:-6][110:-6].mean() + 8 * cos[110:-6][:110].mean()
#
# Both slicings select ROWS (the second slice re-slices rows of the first),
# and each .mean() runs over all L columns of the selected rows, masked zeros
# included; an empty selection gives NaN. Row i's masked sum is
#     sum_{j <= min(i+1, L-1)} u_i . u_j = u_i . C[min(i+1, L-1)]
# with C the cumulative sum of the unit rows, which gives O(L d).


def _gainrl_row_ranges(length: int, prefix_tokens: int, suffix_tokens: int) -> tuple[range, range]:
    """Original row ranges of ``x[p:-s][p:-s]`` and ``x[p:-s][:p]`` for ``len(x) == length``.

    Slicing a ``range`` follows Python's slice semantics exactly (negative
    indices, clamping, and ``-0 == 0``), so this reproduces the authors' row
    selection for every length.
    """
    p, s = prefix_tokens, suffix_tokens
    rows_a = range(length)[p:-s]
    return rows_a[p:-s], rows_a[:p]


def _masked_row_mean(unit_LD: torch.Tensor, cumsum_LD: torch.Tensor, rows: range) -> float:
    length = unit_LD.shape[0]
    if len(rows) == 0:
        return math.nan
    assert rows.step == 1
    idx_R = torch.arange(rows.start + 1, rows.stop + 1, device=unit_LD.device).clamp_max(length - 1)
    total = (unit_LD[rows.start:rows.stop] * cumsum_LD[idx_R]).sum()
    return float(total) / (len(rows) * length)


def gainrl_code_terms(
    hidden_LD: torch.Tensor, prefix_tokens: int = 110, suffix_tokens: int = 6
) -> tuple[float, float]:
    """``(intra_term, inter_term)`` of the authors' estimator in ``O(L d)``.

    Equal to :func:`gainrl_code_reference` (up to rounding) for every length,
    including NaN exactly where the literal slices are empty. Note
    ``suffix_tokens=0`` makes ``x[p:-0]`` empty, as in Python.
    """
    if hidden_LD.dim() != 2:
        raise ValueError(f"hidden_LD must be [L, d], got {tuple(hidden_LD.shape)}")
    length = hidden_LD.shape[0]
    intra_rows, inter_rows = _gainrl_row_ranges(length, prefix_tokens, suffix_tokens)
    if len(intra_rows) == 0 and len(inter_rows) == 0:
        return math.nan, math.nan
    unit_LD = normalize_rows(hidden_LD)
    cumsum_LD = torch.cumsum(unit_LD, dim=0)
    return (
        _masked_row_mean(unit_LD, cumsum_LD, intra_rows),
        _masked_row_mean(unit_LD, cumsum_LD, inter_rows),
    )


def gainrl_code_score(intra_term: Number, inter_term: Number, inter_weight: float = 8.0) -> Number:
    """Authors' score ``intra + 8 * inter`` (NaN propagates).

    The authors rank with ``torch.argsort(score, descending=True)``, which puts
    NaN scores first.
    """
    return intra_term + inter_weight * inter_term


def gainrl_code_terms_batch(
    hidden_BTD: torch.Tensor,
    lengths_B: Union[torch.Tensor, Sequence[int]],
    prefix_tokens: int = 110,
    suffix_tokens: int = 6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample :func:`gainrl_code_terms` on a right-padded batch.

    Sample ``b`` is ``hidden_BTD[b, :lengths_B[b]]``. Returns float64 ``[B]``
    tensors ``(intra_B, inter_B)`` on the input's device.
    """
    if hidden_BTD.dim() != 3:
        raise ValueError(f"hidden_BTD must be [B, T, D], got {tuple(hidden_BTD.shape)}")
    lengths = [int(x) for x in (lengths_B.tolist() if torch.is_tensor(lengths_B) else lengths_B)]
    if len(lengths) != hidden_BTD.shape[0]:
        raise ValueError("lengths_B must have one entry per sample")
    intra_list, inter_list = [], []
    for b, length in enumerate(lengths):
        if not 0 <= length <= hidden_BTD.shape[1]:
            raise ValueError(f"length {length} out of range for T={hidden_BTD.shape[1]}")
        intra, inter = gainrl_code_terms(hidden_BTD[b, :length], prefix_tokens, suffix_tokens)
        intra_list.append(intra)
        inter_list.append(inter)
    kw = dict(dtype=torch.float64, device=hidden_BTD.device)
    return torch.tensor(intra_list, **kw), torch.tensor(inter_list, **kw)


def gainrl_code_reference(
    hidden_LD: torch.Tensor, prefix_tokens: int = 110, suffix_tokens: int = 6
) -> tuple[float, float]:
    """Literal float64 transcription of the authors' code (full ``L x L`` matrix).

    For tests only: ``O(L^2 d)``.
    """
    p, s = prefix_tokens, suffix_tokens
    unit_LD = normalize_rows(hidden_LD)
    cos_LL = unit_LD @ unit_LD.T
    cos_LL = cos_LL * torch.tril(torch.ones_like(cos_LL), diagonal=1)
    rows_a = cos_LL[p:-s]
    return float(rows_a[p:-s].mean()), float(rows_a[:p].mean())


# ---------------------------------------------------------------------------
# Rank correlation
# ---------------------------------------------------------------------------


def rankdata(x) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their average rank (float64)."""
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    order = np.argsort(arr, kind="mergesort")
    sorted_vals = arr[order]
    n = arr.size
    ranks = np.empty(n, dtype=np.float64)
    if n == 0:
        return ranks
    # Boundaries of runs of equal values in sorted order.
    new_run = np.concatenate(([True], sorted_vals[1:] != sorted_vals[:-1]))
    run_id = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.concatenate((starts[1:], [n]))  # exclusive
    avg = (starts + ends + 1) / 2.0  # mean of 1-based positions start+1 .. end
    ranks[order] = avg[run_id]
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation with average ranks for ties.

    Pairs where either value is NaN are dropped. NaN if fewer than 3 valid
    pairs remain or either side is constant.
    """
    xa = np.asarray(x, dtype=np.float64).reshape(-1)
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    if xa.shape != ya.shape:
        raise ValueError("x and y must have the same length")
    valid = ~(np.isnan(xa) | np.isnan(ya))
    xa, ya = xa[valid], ya[valid]
    if xa.size < 3:
        return math.nan
    rx, ry = rankdata(xa), rankdata(ya)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    if denom == 0.0:
        return math.nan
    return float(rx @ ry) / denom
