"""Tests for anglerank.angles: closed forms vs naive references."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from anglerank.angles import (
    combine,
    gainrl_code_reference,
    gainrl_code_score,
    gainrl_code_terms,
    gainrl_code_terms_batch,
    naive_concentration,
    rankdata,
    segment_concentration,
    segment_concentration_shared_prefix,
    spearman,
)

TOL = 1e-9


def _close(a: float, b: float, tol: float = TOL) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


def _random_spans(gen: torch.Generator, length: int) -> tuple[list[int], list[int]]:
    """Random disjoint P (before) and Q (after) contiguous spans inside [0, length)."""
    cuts = sorted(torch.randint(0, length + 1, (3,), generator=gen).tolist())
    p_idx = list(range(cuts[0], cuts[1]))
    q_idx = list(range(cuts[1], cuts[2]))
    return q_idx, p_idx


# ---------------------------------------------------------------------------
# Paper-intent concentrations
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("length,dim", [(2, 3), (5, 4), (17, 8), (64, 16), (129, 33)])
def test_closed_form_matches_naive_single(length: int, dim: int) -> None:
    gen = torch.Generator().manual_seed(1000 + length * 7 + dim)
    for trial in range(10):
        hidden_LD = torch.randn(length, dim, generator=gen, dtype=torch.float64)
        # Add a shared direction sometimes so cosines are not all near zero.
        if trial % 2:
            hidden_LD += 3.0 * torch.randn(1, dim, generator=gen, dtype=torch.float64)
        q_idx, p_idx = _random_spans(gen, length)
        q_mask_BT = torch.zeros(1, length, dtype=torch.bool)
        p_mask_BT = torch.zeros(1, length, dtype=torch.bool)
        q_mask_BT[0, q_idx] = True
        p_mask_BT[0, p_idx] = True
        intra_B, inter_B = segment_concentration(hidden_LD[None], q_mask_BT, p_mask_BT)
        intra_ref, inter_ref = naive_concentration(hidden_LD, q_idx, p_idx)
        assert intra_B.dtype == torch.float64 and inter_B.dtype == torch.float64
        assert _close(float(intra_B[0]), intra_ref)
        assert _close(float(inter_B[0]), inter_ref)


def test_closed_form_float32_input_is_computed_in_float64() -> None:
    gen = torch.Generator().manual_seed(3)
    hidden_LD = torch.randn(40, 16, generator=gen) + 5.0  # highly concentrated, float32
    q_idx, p_idx = list(range(10, 40)), list(range(0, 10))
    q_mask_BT = torch.zeros(1, 40, dtype=torch.bool)
    p_mask_BT = torch.zeros(1, 40, dtype=torch.bool)
    q_mask_BT[0, q_idx] = True
    p_mask_BT[0, p_idx] = True
    intra_B, inter_B = segment_concentration(hidden_LD[None], q_mask_BT, p_mask_BT)
    intra_ref, inter_ref = naive_concentration(hidden_LD, q_idx, p_idx)
    assert _close(float(intra_B[0]), intra_ref)
    assert _close(float(inter_B[0]), inter_ref)


def test_closed_form_batch_right_padding_and_garbage() -> None:
    gen = torch.Generator().manual_seed(11)
    batch, max_len, dim = 6, 50, 12
    lengths = [50, 1, 7, 23, 0, 38]
    hidden_BTD = torch.randn(batch, max_len, dim, generator=gen, dtype=torch.float64)
    hidden_BTD += torch.randn(batch, 1, dim, generator=gen, dtype=torch.float64)
    q_mask_BT = torch.zeros(batch, max_len, dtype=torch.bool)
    p_mask_BT = torch.zeros(batch, max_len, dtype=torch.bool)
    spans = []
    for b, length in enumerate(lengths):
        q_idx, p_idx = _random_spans(gen, length) if length else ([], [])
        spans.append((q_idx, p_idx))
        q_mask_BT[b, q_idx] = True
        p_mask_BT[b, p_idx] = True
        # Padding garbage: huge values, inf and NaN must not matter.
        hidden_BTD[b, length:] = 1e30
        if length + 1 < max_len:
            hidden_BTD[b, length + 1] = math.inf
        if length + 2 < max_len:
            hidden_BTD[b, length + 2] = math.nan
    intra_B, inter_B = segment_concentration(hidden_BTD, q_mask_BT, p_mask_BT)
    assert intra_B.shape == (batch,) and inter_B.shape == (batch,)
    for b, length in enumerate(lengths):
        q_idx, p_idx = spans[b]
        intra_ref, inter_ref = naive_concentration(hidden_BTD[b, :length], q_idx, p_idx)
        assert _close(float(intra_B[b]), intra_ref), (b, float(intra_B[b]), intra_ref)
        assert _close(float(inter_B[b]), inter_ref), (b, float(inter_B[b]), inter_ref)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_shared_prefix_equals_concatenated_rows(dtype) -> None:
    """Spec: with a prefix shared by the batch, P's sum taken once from the prefix's own rows
    gives the same intra and inter as the rows with the prefix in front (up to float64
    rounding), with padding garbage ignored and NaN where n < 2."""
    gen = torch.Generator().manual_seed(21)
    P, dim = 11, 9
    q_lens, tails = [0, 1, 2, 7, 15], [0, 3, 1, 0, 2]  # question tokens, then suffix tokens
    T = max(q + t for q, t in zip(q_lens, tails)) + 2  # + padding
    prefix_PD = (torch.randn(P, dim, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
    new_BTD = (torch.randn(len(q_lens), T, dim, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
    q_mask = torch.zeros(len(q_lens), T, dtype=torch.bool)
    for b, (q, t) in enumerate(zip(q_lens, tails)):
        q_mask[b, :q] = True
        new_BTD[b, q + t:] = math.inf  # padding
    intra_B, inter_B = segment_concentration_shared_prefix(new_BTD, q_mask, prefix_PD)
    full_BTD = torch.cat([prefix_PD.expand(len(q_lens), -1, -1), new_BTD], dim=1)
    p_mask_full = torch.zeros(len(q_lens), P + T, dtype=torch.bool)
    p_mask_full[:, :P] = True
    q_mask_full = torch.cat([torch.zeros(len(q_lens), P, dtype=torch.bool), q_mask], dim=1)
    intra_ref, inter_ref = segment_concentration(full_BTD, q_mask_full, p_mask_full)
    for b in range(len(q_lens)):
        assert _close(float(intra_B[b]), float(intra_ref[b]), 1e-12)
        assert _close(float(inter_B[b]), float(inter_ref[b]), 1e-12)
    assert math.isnan(intra_B[0]) and math.isnan(inter_B[0]) and math.isnan(intra_B[1])
    assert not math.isnan(inter_B[1]) and not math.isnan(intra_B[2])


def test_closed_form_batch_fixed_spans_several_lengths() -> None:
    """Every sample has a defined intra and inter; checks per-sample isolation."""
    gen = torch.Generator().manual_seed(12)
    lengths = [9, 30, 17, 45]
    batch, max_len, dim = len(lengths), max(lengths), 7
    hidden_BTD = torch.randn(batch, max_len, dim, generator=gen, dtype=torch.float64) + 0.7
    q_mask_BT = torch.zeros(batch, max_len, dtype=torch.bool)
    p_mask_BT = torch.zeros(batch, max_len, dtype=torch.bool)
    for b, length in enumerate(lengths):
        p_mask_BT[b, : length // 3] = True
        q_mask_BT[b, length // 3 : length - 2] = True
        hidden_BTD[b, length:] = -7e20
    intra_B, inter_B = segment_concentration(hidden_BTD, q_mask_BT, p_mask_BT)
    for b, length in enumerate(lengths):
        q_idx = list(range(length // 3, length - 2))
        p_idx = list(range(length // 3))
        intra_ref, inter_ref = naive_concentration(hidden_BTD[b, :length], q_idx, p_idx)
        assert not math.isnan(intra_ref) and not math.isnan(inter_ref)
        assert _close(float(intra_B[b]), intra_ref)
        assert _close(float(inter_B[b]), inter_ref)


def test_zero_rows_consistent_with_naive() -> None:
    gen = torch.Generator().manual_seed(5)
    hidden_LD = torch.randn(20, 6, generator=gen, dtype=torch.float64)
    hidden_LD[[2, 9, 10, 15]] = 0.0
    q_idx, p_idx = list(range(8, 18)), list(range(0, 8))
    q_mask_BT = torch.zeros(1, 20, dtype=torch.bool)
    p_mask_BT = torch.zeros(1, 20, dtype=torch.bool)
    q_mask_BT[0, q_idx] = True
    p_mask_BT[0, p_idx] = True
    intra_B, inter_B = segment_concentration(hidden_LD[None], q_mask_BT, p_mask_BT)
    intra_ref, inter_ref = naive_concentration(hidden_LD, q_idx, p_idx)
    assert not math.isnan(intra_ref)
    assert _close(float(intra_B[0]), intra_ref)
    assert _close(float(inter_B[0]), inter_ref)
    # All-zero Q: every cosine is 0, so both means are 0 (not NaN).
    hidden_LD[q_idx] = 0.0
    intra_B, inter_B = segment_concentration(hidden_LD[None], q_mask_BT, p_mask_BT)
    assert float(intra_B[0]) == 0.0 and float(inter_B[0]) == 0.0
    assert naive_concentration(hidden_LD, q_idx, p_idx) == (0.0, 0.0)


def test_identical_rows_give_one() -> None:
    hidden_BTD = torch.ones(1, 6, 4, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0, 4.0])
    q_mask_BT = torch.tensor([[False, False, True, True, True, False]])
    p_mask_BT = torch.tensor([[True, True, False, False, False, False]])
    intra_B, inter_B = segment_concentration(hidden_BTD, q_mask_BT, p_mask_BT)
    assert abs(float(intra_B[0]) - 1.0) < 1e-12
    assert abs(float(inter_B[0]) - 1.0) < 1e-12


def test_undefined_cases_are_nan() -> None:
    gen = torch.Generator().manual_seed(8)
    hidden_BTD = torch.randn(4, 10, 5, generator=gen, dtype=torch.float64)
    q_mask_BT = torch.zeros(4, 10, dtype=torch.bool)
    p_mask_BT = torch.zeros(4, 10, dtype=torch.bool)
    # b=0: n=0, m=3 -> both NaN
    p_mask_BT[0, :3] = True
    # b=1: n=1, m=3 -> intra NaN, inter defined
    q_mask_BT[1, 5] = True
    p_mask_BT[1, :3] = True
    # b=2: n=4, m=0 -> intra defined, inter NaN
    q_mask_BT[2, 3:7] = True
    # b=3: nothing -> both NaN
    intra_B, inter_B = segment_concentration(hidden_BTD, q_mask_BT, p_mask_BT)
    assert math.isnan(intra_B[0]) and math.isnan(inter_B[0])
    assert math.isnan(intra_B[1]) and not math.isnan(inter_B[1])
    assert not math.isnan(intra_B[2]) and math.isnan(inter_B[2])
    assert math.isnan(intra_B[3]) and math.isnan(inter_B[3])

    hidden_LD = hidden_BTD[0]
    assert all(math.isnan(v) for v in naive_concentration(hidden_LD, [], [0, 1]))
    intra, inter = naive_concentration(hidden_LD, [4], [0, 1])
    assert math.isnan(intra) and not math.isnan(inter)
    intra, inter = naive_concentration(hidden_LD, torch.tensor([3, 4]), torch.tensor([], dtype=torch.long))
    assert not math.isnan(intra) and math.isnan(inter)


def test_combine() -> None:
    assert combine(0.25, 0.5) == 0.75
    assert combine(0.25, 0.5, w_intra=2.0, w_inter=0.5) == 0.75
    assert math.isnan(combine(math.nan, 0.5))
    out = combine(torch.tensor([0.1, math.nan]), torch.tensor([0.2, 0.3]))
    assert abs(float(out[0]) - 0.3) < 1e-7 and math.isnan(out[1])


# ---------------------------------------------------------------------------
# gainrl-code estimator
# ---------------------------------------------------------------------------


def _python_slice_rows(length: int, p: int, s: int) -> tuple[list[int], list[int]]:
    rows_a = list(range(length))[p:-s]
    return rows_a[p:-s], rows_a[:p]


def _check_terms(hidden_LD: torch.Tensor, p: int, s: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mean of empty tensor warns
        ref = gainrl_code_reference(hidden_LD, p, s)
    fast = gainrl_code_terms(hidden_LD, p, s)
    length = hidden_LD.shape[0]
    intra_rows, inter_rows = _python_slice_rows(length, p, s)
    assert math.isnan(ref[0]) == (len(intra_rows) == 0), (length, p, s)
    assert math.isnan(ref[1]) == (len(inter_rows) == 0), (length, p, s)
    assert _close(fast[0], ref[0]), (length, p, s, fast, ref)
    assert _close(fast[1], ref[1]), (length, p, s, fast, ref)


def test_gainrl_code_every_length_default_offsets() -> None:
    gen = torch.Generator().manual_seed(21)
    dim = 4
    for length in range(0, 261):
        hidden_LD = torch.randn(length, dim, generator=gen, dtype=torch.float64) + 0.5
        _check_terms(hidden_LD, 110, 6)
        intra, inter = gainrl_code_terms(hidden_LD)
        # Documented facts: intra empty up to 232 tokens; inter empty up to 116.
        assert math.isnan(intra) == (length <= 232)
        assert math.isnan(inter) == (length <= 116)


@pytest.mark.parametrize("length", [300, 500, 1024])
def test_gainrl_code_larger_lengths(length: int) -> None:
    gen = torch.Generator().manual_seed(length)
    hidden_LD = torch.randn(length, 24, generator=gen, dtype=torch.float64)
    hidden_LD += 2.0 * torch.randn(1, 24, generator=gen, dtype=torch.float64)
    _check_terms(hidden_LD, 110, 6)
    p = int(torch.randint(0, 200, (1,), generator=gen))
    s = int(torch.randint(0, 20, (1,), generator=gen))
    _check_terms(hidden_LD, p, s)


def test_gainrl_code_random_offsets_small() -> None:
    gen = torch.Generator().manual_seed(22)
    for _ in range(300):
        length = int(torch.randint(0, 60, (1,), generator=gen))
        p = int(torch.randint(0, 25, (1,), generator=gen))
        s = int(torch.randint(0, 8, (1,), generator=gen))
        hidden_LD = torch.randn(length, 3, generator=gen, dtype=torch.float64)
        _check_terms(hidden_LD, p, s)


def test_gainrl_code_zero_suffix_is_empty() -> None:
    # Python: x[a:-0] == x[a:0] == [] -> both terms NaN, for every length.
    gen = torch.Generator().manual_seed(23)
    for length in (0, 1, 5, 50, 300):
        hidden_LD = torch.randn(length, 5, generator=gen, dtype=torch.float64)
        _check_terms(hidden_LD, 3, 0)
        _check_terms(hidden_LD, 0, 0)
        intra, inter = gainrl_code_terms(hidden_LD, 3, 0)
        assert math.isnan(intra) and math.isnan(inter)


def test_gainrl_code_zero_prefix() -> None:
    gen = torch.Generator().manual_seed(24)
    for length in range(0, 30):
        hidden_LD = torch.randn(length, 5, generator=gen, dtype=torch.float64)
        _check_terms(hidden_LD, 0, 2)
        # x[:0] is empty -> inter NaN always.
        assert math.isnan(gainrl_code_terms(hidden_LD, 0, 2)[1])


def test_gainrl_code_zero_rows() -> None:
    gen = torch.Generator().manual_seed(25)
    hidden_LD = torch.randn(260, 6, generator=gen, dtype=torch.float64)
    hidden_LD[[0, 110, 111, 200, 259]] = 0.0
    _check_terms(hidden_LD, 110, 6)


def test_gainrl_code_float32_input() -> None:
    gen = torch.Generator().manual_seed(26)
    hidden_LD = torch.randn(400, 32, generator=gen) + 1.0
    _check_terms(hidden_LD, 110, 6)


def test_gainrl_code_batch_matches_single() -> None:
    gen = torch.Generator().manual_seed(27)
    lengths = [0, 50, 117, 233, 260, 240]
    batch, max_len, dim = len(lengths), max(lengths), 8
    hidden_BTD = torch.randn(batch, max_len, dim, generator=gen, dtype=torch.float64)
    for b, length in enumerate(lengths):
        hidden_BTD[b, length:] = math.nan  # padding must be ignored
    for p, s in [(110, 6), (10, 3)]:
        intra_B, inter_B = gainrl_code_terms_batch(hidden_BTD, torch.tensor(lengths), p, s)
        assert intra_B.dtype == torch.float64 and intra_B.shape == (batch,)
        for b, length in enumerate(lengths):
            intra, inter = gainrl_code_terms(hidden_BTD[b, :length], p, s)
            assert _close(float(intra_B[b]), intra, 0.0)
            assert _close(float(inter_B[b]), inter, 0.0)
    intra_B2, _ = gainrl_code_terms_batch(hidden_BTD, lengths)
    intra_B1, _ = gainrl_code_terms_batch(hidden_BTD, torch.tensor(lengths))
    assert torch.equal(intra_B1.isnan(), intra_B2.isnan())


def test_gainrl_code_score_and_nan_first_ordering() -> None:
    assert gainrl_code_score(0.5, 0.25) == 2.5
    assert gainrl_code_score(0.5, 0.25, inter_weight=1.0) == 0.75
    assert math.isnan(gainrl_code_score(math.nan, 0.25))
    scores = gainrl_code_score(torch.tensor([0.1, math.nan, 0.3]), torch.tensor([0.0, 0.1, 0.0]))
    order = torch.argsort(scores, descending=True)
    assert order.tolist() == [1, 2, 0]  # NaN first, as documented


# ---------------------------------------------------------------------------
# Spearman
# ---------------------------------------------------------------------------


def test_rankdata_average_ties() -> None:
    np.testing.assert_array_equal(rankdata([10, 20, 20, 5, 20]), [2.0, 4.0, 4.0, 1.0, 4.0])
    np.testing.assert_array_equal(rankdata([3.0, 1.0, 2.0]), [3.0, 1.0, 2.0])
    assert rankdata([]).size == 0


def test_spearman_hand_computed() -> None:
    # ranks x: 1..5, ranks y: [2,1,4,3,5]; d = [-1,1,-1,1,0], sum d^2 = 4
    # rho = 1 - 6*4/(5*24) = 0.8
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    y = [20.0, 10.0, 40.0, 30.0, 50.0]
    assert abs(spearman(x, y) - 0.8) < 1e-12
    assert abs(spearman(x, [-v for v in y]) + 0.8) < 1e-12
    assert abs(spearman(x, x) - 1.0) < 1e-12


def test_spearman_ties() -> None:
    # x ranks [1, 2.5, 2.5, 4], y ranks [1, 2, 3, 4]
    # Pearson of ranks: cx = [-1.5, 0, 0, 1.5], cy = [-1.5, -.5, .5, 1.5]
    # cov = 4.5, |cx|^2 = 4.5, |cy|^2 = 5 -> 4.5 / sqrt(22.5) = 0.9486832980505138
    x = [1.0, 2.0, 2.0, 3.0]
    y = [1.0, 2.0, 3.0, 4.0]
    assert abs(spearman(x, y) - 4.5 / math.sqrt(22.5)) < 1e-12


def test_spearman_nan_and_degenerate() -> None:
    x = [1.0, math.nan, 2.0, 3.0, 4.0, 5.0]
    y = [20.0, 1.0, 10.0, math.nan, 40.0, 50.0]
    # valid pairs: (1,20), (2,10), (4,40), (5,50) -> ranks [1,2,3,4] vs [2,1,3,4] -> 0.8
    assert abs(spearman(x, y) - 0.8) < 1e-12
    assert math.isnan(spearman([1.0, 2.0], [2.0, 1.0]))
    assert math.isnan(spearman([1.0, math.nan, 2.0, 3.0], [1.0, 2.0, math.nan, 3.0]))
    assert math.isnan(spearman([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]))
    assert math.isnan(spearman(np.array([1.0, 2.0, 3.0]), np.array([5.0, 5.0, 5.0])))
