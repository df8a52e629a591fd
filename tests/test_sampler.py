"""Tests for anglerank.train.sampler: the GAIN-RL Gaussian rank window.

They pin the rank-unit rule, the sampling distribution (including without
replacement), the mu update against hand-computed numbers, and exact resume
from a JSON checkpoint, i.e. the fixes listed in METHOD.md section 4.
"""

import json
import math

import numpy as np
import pytest

from anglerank.train.sampler import GaussianRankSampler, gaussian_subsets, resolve_rank_units

# ---------------------------------------------------------------- rank units


@pytest.mark.parametrize(
    "value, n, expected",
    [
        (0, 200, 0.0),
        (0.0, 200, 0.0),
        (0.1, 200, 20.0),  # fraction of N
        (-0.05, 200, -10.0),
        (0.5, 7, 3.5),
        (1.0, 200, 200.0),  # float 1.0 is the fraction: all of N
        (-1.0, 200, -200.0),
        (1, 200, 1.0),  # int 1 is one rank
        (-1, 200, -1.0),
        (2.0, 200, 2.0),  # floats above 1 are rank units
        (500.0, 200, 500.0),
        (500, 200, 500.0),
        (np.int64(3), 200, 3.0),
        (np.float64(0.25), 200, 50.0),
    ],
)
def test_resolve_rank_units(value, n, expected):
    assert resolve_rank_units(value, n) == expected


@pytest.mark.parametrize("value, n", [(True, 10), (float("nan"), 10), (float("inf"), 10), (0.1, 0)])
def test_resolve_rank_units_errors(value, n):
    with pytest.raises(ValueError):
        resolve_rank_units(value, n)


def test_constructor_resolves_fractions():
    s = GaussianRankSampler(1000, 10, mu0=0.05, sigma=0.1, step=0.05, adj_min=-0.02, adj_max=0.1)
    assert (s.mu0, s.sigma, s.step, s.adj_min, s.adj_max) == (50.0, 100.0, 50.0, -20.0, 100.0)
    assert s.mu == 50.0
    d = GaussianRankSampler(7500, 256)  # authors' defaults stay in rank units
    assert (d.mu0, d.sigma, d.step, d.adj_min, d.adj_max) == (0.0, 1000.0, 500.0, 0.0, 1000.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sigma": 0},
        {"sigma": -5},
        {"adj_min": 10, "adj_max": 5},
        {"beta_acc": 1.5},
        {"alpha": float("nan")},
    ],
)
def test_constructor_errors(kwargs):
    with pytest.raises(ValueError):
        GaussianRankSampler(100, 10, **kwargs)


@pytest.mark.parametrize("n, k", [(0, 10), (10, 0), (10.0, 5)])
def test_constructor_rejects_bad_sizes(n, k):
    with pytest.raises(ValueError):
        GaussianRankSampler(n, k)


# ---------------------------------------------------------------- probabilities


def test_probabilities_match_formula():
    s = GaussianRankSampler(10, 3, mu0=3, sigma=2)
    w = [math.exp(-0.5 * ((r - 3) / 2) ** 2) for r in range(10)]
    expected = [x / sum(w) for x in w]
    np.testing.assert_allclose(s.probabilities(), expected, rtol=1e-12)
    s.mu = -4.5  # centre outside the range: still truncated-normalised
    w = [math.exp(-0.5 * ((r + 4.5) / 2) ** 2) for r in range(10)]
    np.testing.assert_allclose(s.probabilities(), [x / sum(w) for x in w], rtol=1e-12)


def test_probabilities_far_outside_do_not_underflow():
    s = GaussianRankSampler(100, 5, sigma=1)
    s.mu = 1e6
    p = s.probabilities()
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0)
    assert p[-1] == pytest.approx(1.0)
    # choice(p=...) would fail here (one non-zero entry, 5 wanted); we get the end.
    assert sorted(s.draw().tolist()) == [95, 96, 97, 98, 99]
    s.shuffle = False
    assert s.draw().tolist() == [95, 96, 97, 98, 99]
    s.mu = -1e6
    assert s.draw().tolist() == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- draws


def test_single_draw_frequencies_match_gaussian():
    n, draws = 200, 20000
    s = GaussianRankSampler(n, 1, mu0=50, sigma=20, seed=1)
    counts = np.zeros(n)
    for _ in range(draws):
        counts[s.draw()[0]] += 1
    p = s.probabilities()
    assert np.abs(counts / draws - p).max() < 0.005  # peak p ~ 0.02, sd ~ 0.001
    # Pearson chi-square over ranks with enough expected mass.
    expected = p * draws
    keep = expected >= 5
    chi2 = (((counts - expected) ** 2) / expected)[keep].sum()
    dof = keep.sum() - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof)


def test_pair_draws_follow_successive_sampling():
    # N = 3, K = 2: P({i, j}) = p_i p_j / (1 - p_i) + p_j p_i / (1 - p_j), the
    # law of numpy's choice(replace=False, p=...) that the authors used.
    s = GaussianRankSampler(3, 2, mu0=0, sigma=1, seed=7, shuffle=False)
    p = s.probabilities()
    draws = 20000
    freq = {}
    for _ in range(draws):
        key = tuple(s.draw().tolist())
        freq[key] = freq.get(key, 0) + 1
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        exact = p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j])
        assert freq.get((i, j), 0) / draws == pytest.approx(exact, abs=0.015)


def test_draw_without_replacement_and_clamp():
    s = GaussianRankSampler(50, 45, mu0=10, sigma=2, seed=3)  # narrow window, big subset
    for _ in range(20):
        d = s.draw()
        assert d.dtype == np.int64 and len(d) == 45 and len(set(d.tolist())) == 45
        assert d.min() >= 0 and d.max() < 50
    full = GaussianRankSampler(20, 100, seed=0, shuffle=False)
    assert full.subset_size == 20
    assert full.draw().tolist() == list(range(20))


def test_shuffle_false_is_sorted_and_same_set():
    kwargs = dict(mu0=300, sigma=200, seed=11)
    sorted_s = GaussianRankSampler(1000, 100, shuffle=False, **kwargs)
    shuffled_s = GaussianRankSampler(1000, 100, shuffle=True, **kwargs)
    a, b = sorted_s.draw(), shuffled_s.draw()
    assert a.tolist() == sorted(a.tolist())
    assert b.tolist() != sorted(b.tolist())
    assert sorted(b.tolist()) == a.tolist()  # same generator stream, same set
    assert sorted_s.last_draw.tolist() == a.tolist()


def test_determinism_by_seed():
    def run(seed):
        s = GaussianRankSampler(500, 20, sigma=0.1, seed=seed)
        out = [s.draw()]
        s.update(0.9, 0.2)
        out.append(s.draw())
        return out

    a, b, c = run(5), run(5), run(6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


# ---------------------------------------------------------------- update


def test_update_formula_and_history():
    s = GaussianRankSampler(1000, 10, mu0=100, step=500.0, alpha=2.0, beta_acc=0.5, adj_max=1000)
    # 500 tanh(2 * 0.25) + 500 tanh(2 * 0.1) = 500 (0.46211716 + 0.19737532).
    d = s.update(0.75, 0.1)
    assert d == pytest.approx(329.7462387424525, rel=1e-12)
    assert s.mu == pytest.approx(100 + 329.7462387424525)
    assert s.epoch == 1
    assert s.history == [
        {"epoch": 0, "mu_before": 100.0, "accuracy": 0.75, "angle": 0.1, "delta": d}
    ]


def test_update_clamps_at_adj_max():
    s = GaussianRankSampler(1000, 10, step=500, adj_max=600)
    # Unclamped: 500 tanh(1) + 500 tanh(1) = 761.594 -> 600.
    assert s.update(1.0, 0.5) == 600.0
    assert s.mu == 600.0


def test_update_adj_min_zero_never_moves_back_but_negative_does():
    # 500 tanh(2 * (0.1 - 0.5)) + 500 tanh(0) = -332.0183851339245.
    held = GaussianRankSampler(1000, 10, mu0=400, adj_min=0)
    assert held.update(0.1, 0.0) == 0.0
    assert held.mu == 400.0
    back = GaussianRankSampler(1000, 10, mu0=400, adj_min=-1000)
    assert back.update(0.1, 0.0) == pytest.approx(-332.0183851339245, rel=1e-12)
    assert back.mu == pytest.approx(400 - 332.0183851339245)


@pytest.mark.parametrize("acc", [1.5, 2.0, -0.1, 50.0, float("nan")])
def test_update_rejects_accuracy_off_scale(acc):
    s = GaussianRankSampler(100, 10)
    with pytest.raises(ValueError):
        s.update(acc, 0.0)
    assert s.mu == 0.0 and s.epoch == 0 and s.history == []


# ---------------------------------------------------------------- state


def test_state_dict_json_round_trip_resumes_exactly():
    kwargs = dict(mu0=0.02, sigma=0.1, step=0.05, adj_min=-0.01, adj_max=0.2, seed=42)
    uninterrupted = GaussianRankSampler(800, 32, **kwargs)
    uninterrupted.draw()
    uninterrupted.update(0.8, 0.1)
    uninterrupted.draw()

    state = json.loads(json.dumps(uninterrupted.state_dict()))
    resumed = GaussianRankSampler(800, 5, seed=999)  # config differs; checkpoint wins
    resumed.load_state_dict(state)
    rebuilt = GaussianRankSampler.from_state_dict(state)

    for acc, ang in [(0.3, 0.05), (0.9, -0.2), (0.6, 0.0)]:
        ref = uninterrupted.draw()
        assert np.array_equal(resumed.draw(), ref)
        assert np.array_equal(rebuilt.draw(), ref)
        d = uninterrupted.update(acc, ang)
        assert resumed.update(acc, ang) == d == rebuilt.update(acc, ang)
    assert resumed.state_dict() == uninterrupted.state_dict() == rebuilt.state_dict()
    assert resumed.sigma == 80.0  # restored resolved, not re-resolved as a fraction


def test_load_state_dict_rejects_other_dataset_size():
    state = GaussianRankSampler(100, 10).state_dict()
    with pytest.raises(ValueError):
        GaussianRankSampler(101, 10).load_state_dict(state)


# ---------------------------------------------------------------- open loop


def test_gaussian_subsets_mu_progression():
    # mu0 = 0.05 * 1000 = 50, step 100 ranks, sigma 2 ranks: epoch t centres on
    # 50 + 100 t (a 6-sigma miss has probability ~1e-9).
    subsets = gaussian_subsets(1000, 1, 5, mu0=0.05, sigma=2, step=100, seed=0, shuffle=False)
    assert len(subsets) == 5
    for t, sub in enumerate(subsets):
        assert abs(int(sub[0]) - (50 + 100 * t)) <= 12


def test_gaussian_subsets_equals_manual_sampler():
    subsets = gaussian_subsets(300, 20, 4, 10, 30, 40, 5, True)
    s = GaussianRankSampler(300, 20, mu0=10, sigma=30, step=40, seed=5, shuffle=True)
    for t, sub in enumerate(subsets):
        s.mu = 10 + 40 * t
        assert np.array_equal(sub, s.draw())
        assert len(set(sub.tolist())) == 20
    assert gaussian_subsets(300, 20, 0) == []
