"""Tests for anglerank.curriculum: rank units, the samplers, the registry and the epoch state machine.

They pin the rank-unit rule, the sampling distribution (including without
replacement), the mu update against hand-computed numbers, the window kept on
the data (clamped, or wrapped into a new pass), exact resume from a JSON
checkpoint (the fixes listed in docs/method.md, "What the released code does"), the one definition of a
correct completion, and that a new sampler needs no file but its own.
"""

import json
import math

import numpy as np
import pytest

from anglerank.curriculum import (
    Curriculum,
    CurriculumConfig,
    correct,
    open_loop_schedule,
    rank_order,
    register,
    resolve_rank_units,
    sampler_class,
    sampler_names,
)
from anglerank.curriculum import registry
from anglerank.curriculum.samplers.gainrl import GaussianRankSampler
from anglerank.errors import UserError

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
    with pytest.raises(UserError):
        resolve_rank_units(value, n)


def test_constructor_resolves_fractions():
    s = GaussianRankSampler(1000, 10, mu0=0.05, sigma=0.1, step=0.05, adj_min=-0.02, adj_max=0.1)
    assert (s.mu0, s.sigma, s.step, s.adj_min, s.adj_max) == (50.0, 100.0, 50.0, -20.0, 100.0)
    assert s.mu == 50.0
    d = GaussianRankSampler(7500, 256)  # the default fractions are the authors' ranks at N = 7,500
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
    with pytest.raises(UserError):
        GaussianRankSampler(100, 10, **kwargs)


@pytest.mark.parametrize("n, k", [(0, 10), (10, 0), (10.0, 5)])
def test_constructor_rejects_bad_sizes(n, k):
    with pytest.raises(UserError):
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
    s.mu = 1e6  # set by hand: update() never leaves the data, but the maths must not break
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
        {"epoch": 1, "mu_before": 100.0, "accuracy": 0.75, "angle": 0.1, "delta": d}
    ]


def test_update_clamps_at_adj_max():
    s = GaussianRankSampler(1000, 10, step=500, adj_max=600)
    # Unclamped: 500 tanh(1) + 500 tanh(1) = 761.594 -> 600.
    assert s.update(1.0, 0.5) == 600.0
    assert s.mu == 600.0


def test_update_adj_min_zero_never_moves_back_but_negative_does():
    # 500 tanh(2 * (0.1 - 0.5)) + 500 tanh(0) = -332.0183851339245.
    held = GaussianRankSampler(1000, 10, mu0=400, step=500, adj_min=0)
    assert held.update(0.1, 0.0) == 0.0
    assert held.mu == 400.0
    back = GaussianRankSampler(1000, 10, mu0=400, step=500, adj_min=-1000)
    assert back.update(0.1, 0.0) == pytest.approx(-332.0183851339245, rel=1e-12)
    assert back.mu == pytest.approx(400 - 332.0183851339245)


@pytest.mark.parametrize("acc", [1.5, 2.0, -0.1, 50.0, float("nan")])
def test_update_rejects_accuracy_off_scale(acc):
    s = GaussianRankSampler(100, 10)
    with pytest.raises(ValueError):
        s.update(acc, 0.0)
    assert s.mu == 0.0 and s.epoch == 0 and s.history == []


# ---------------------------------------------------------------- the window stays on the data


def test_mu_is_clamped_to_the_last_rank():
    s = GaussianRankSampler(200, 20, mu0=150, sigma=10, step=50, adj_max=100, seed=0)
    for _ in range(5):  # +50 tanh(1) + 50 tanh(2) = 86.3 a time: past N after one update
        s.update(1.0, 1.0)
        assert 0.0 <= s.mu <= 199.0
    assert s.mu == 199.0 and s.passes == 0
    assert s.history[-1]["delta"] == pytest.approx(50 * math.tanh(1.0) + 50 * math.tanh(2.0))  # delta as computed
    back = GaussianRankSampler(200, 20, mu0=10, sigma=10, step=50, adj_min=-100, seed=0)
    back.update(0.0, -1.0)
    assert back.mu == 0.0  # and never below the first rank


def _tail_draws_are_spread(draws, n, k, sigma):
    for d in draws:
        assert len(d) == k and len(set(d.tolist())) == k  # K distinct rows
        assert d.max() <= n - 1 and d.min() >= n - 1 - 6 * sigma  # in the tail
        assert d.max() - d.min() > sigma  # spread over it, not a handful at the very end
    sets = [frozenset(d.tolist()) for d in draws]
    assert all(a != b for a, b in zip(sets, sets[1:]))  # consecutive epochs differ


def test_draws_with_mu_at_the_end_are_spread_over_the_tail():
    n, k, sigma = 300, 20, 20  # K about sigma: the tail holds many more than K likely ranks
    s = GaussianRankSampler(n, k, mu0=n - 1, sigma=sigma, step=40, adj_max=80, seed=4)
    draws = []
    for _ in range(30):
        draws.append(s.draw())
        s.update(1.0, 1.0)
        assert s.mu == n - 1
    _tail_draws_are_spread(draws, n, k, sigma)


def test_paper_scale_run_past_the_end_keeps_drawing_the_tail():
    """N = 7,500 and 200 epochs of full accuracy with the default settings: mu stops at N - 1."""
    n, k = 7500, 256
    cur = Curriculum(np.arange(n), CurriculumConfig(subset_size=k, seed=1), angles=np.full(n, 1.4))
    for _ in range(200):
        cur.begin_epoch()
        cur.observe(np.ones(2 * k))
        cur.end_epoch()
    assert cur.mu == n - 1 and max(e["mu_next"] for e in cur.epochs) == n - 1
    last = []
    for _ in range(3):
        last.append(cur.begin_epoch())
        cur.observe(np.ones(k))
        cur.end_epoch()
    _tail_draws_are_spread(last, n, k, cur.sampler.sigma)


def test_wrap_starts_a_new_pass():
    s = GaussianRankSampler(100, 10, mu0=90, sigma=5, step=20, adj_max=20, wrap=True, seed=0)
    s.update(1.0, 1.0)  # 20 tanh(1) + 20 tanh(2) = 34.5 -> 20: 110 wraps to 10
    assert s.mu == pytest.approx(10.0) and s.passes == 1
    assert s.window() == {"mu": pytest.approx(10.0), "sigma": 5.0, "passes": 1}
    assert np.median(s.draw()) < 30  # drawing from the start again
    for _ in range(5):
        s.update(1.0, 1.0)
    assert s.passes == 2 and s.mu == pytest.approx(10.0)  # 10 + 5 * 20 = 110 -> 10 again
    state = json.loads(json.dumps(s.state_dict()))
    again = GaussianRankSampler(100, 10, sigma=5, wrap=False)
    again.load_state_dict(state)
    assert again.wrap and again.passes == 2


def test_wrap_through_the_curriculum_reports_passes():
    cfg = CurriculumConfig(subset_size=4, mu0=15, sigma=2, step=6, adj_max=6, wrap=True, seed=0)
    cur = Curriculum(np.arange(20), cfg, angle_default=1.0)
    mus = []
    for _ in range(3):
        cur.begin_epoch()
        cur.observe([1.0] * 8)
        mus.append(cur.end_epoch()["mu_next"])
    assert mus == pytest.approx([0.0 + 1.0, 7.0, 13.0])  # 21 -> 1, then on through the second pass
    assert [e["passes"] for e in cur.epochs] == [1, 1, 1]


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
    with pytest.raises(UserError):
        GaussianRankSampler(101, 10).load_state_dict(state)


# ---------------------------------------------------------------- open loop (sweep)


def test_open_loop_schedule_mu_progression():
    # mu0 = 0.05 * 1000 = 50, step 100 ranks, sigma 2 ranks: epoch t centres on
    # 50 + 100 t (a 6-sigma miss has probability ~1e-9).
    subsets, mus = open_loop_schedule(1000, 1, 5, mu0=0.05, sigma=2, step=100, seed=0, shuffle=False)
    assert len(subsets) == 5 and mus == [50.0 + 100 * t for t in range(5)]
    for t, sub in enumerate(subsets):
        assert abs(int(sub[0]) - (50 + 100 * t)) <= 12


def test_open_loop_schedule_equals_manual_sampler():
    subsets, _ = open_loop_schedule(300, 20, 4, mu0=10, sigma=30, step=40, seed=5, shuffle=True)
    s = GaussianRankSampler(300, 20, mu0=10, sigma=30, step=40, seed=5, shuffle=True)
    for t, sub in enumerate(subsets):
        s.mu = 10 + 40 * t
        assert np.array_equal(sub, s.draw())
        assert len(set(sub.tolist())) == 20
    assert open_loop_schedule(300, 20, 0) == ([], [])


def test_open_loop_schedule_clamps_at_the_last_rank():
    draws, mus = open_loop_schedule(200, 16, 12, mu0=20, sigma=16, step=30, seed=2)
    assert mus == [min(20.0 + 30 * t, 199.0) for t in range(12)]
    tail = [d for d, mu in zip(draws, mus) if mu == 199.0]
    assert len(tail) == 6
    _tail_draws_are_spread(tail, 200, 16, 16)


def test_open_loop_schedule_default_step_reaches_the_last_rank_at_the_last_epoch():
    _, mus = open_loop_schedule(1000, 10, 11, mu0=100, sigma=20)
    assert mus[0] == 100.0 and mus[-1] == pytest.approx(999.0)
    np.testing.assert_allclose(np.diff(mus), 89.9)
    _, one = open_loop_schedule(1000, 10, 1, mu0=100)
    assert one == [100.0]


def test_sweep_sampler_ignores_feedback():
    cfg = CurriculumConfig(sampler="sweep", subset_size=5, mu0=0, sigma=3, step=7, seed=0)
    cur = Curriculum(np.arange(50), cfg)
    for acc in (1.0, 0.0):
        cur.begin_epoch()
        cur.observe([acc] * 5)
        assert cur.end_epoch()["delta"] == 7.0
    assert cur.mu == 14.0


# ---------------------------------------------------------------- registry


def test_registry_has_the_builtin_samplers():
    assert {"gainrl", "uniform", "ordered", "sweep"} <= set(sampler_names())
    assert sampler_class("gainrl") is GaussianRankSampler
    assert sampler_class("uniform").uses_ranking is False
    with pytest.raises(UserError, match="unknown sampler 'nope'"):
        CurriculumConfig(sampler="nope")


class HardestFirst:
    """A trivial sampler defined here only: consecutive windows from the end of the ranking."""

    uses_ranking = True

    def __init__(self, n_items: int, subset_size: int):
        self.n_items, self.subset_size, self.cursor = n_items, min(subset_size, n_items), 0

    @classmethod
    def from_config(cls, n_items, config):
        return cls(n_items, config.subset_size)

    def draw(self):
        positions = (self.cursor + np.arange(self.subset_size)) % self.n_items
        self.cursor = (self.cursor + self.subset_size) % self.n_items
        return (self.n_items - 1 - positions).astype(np.int64)

    def update(self, accuracy, angle):
        return 0.0

    def window(self):
        return {}

    def state_dict(self):
        return {"cursor": self.cursor}

    def load_state_dict(self, state):
        self.cursor = int(state["cursor"])


def test_a_new_sampler_needs_only_its_class(monkeypatch):
    monkeypatch.setattr(registry.SAMPLERS, "classes", dict(registry.SAMPLERS.classes))  # leave the real registry as it was
    register("hardest_first")(HardestFirst)
    assert "hardest_first" in sampler_names()
    ranks = np.array([3, 0, 5, 1, 4, 2])  # row -> rank
    cur = Curriculum.from_ranks(ranks, CurriculumConfig(sampler="hardest_first", subset_size=2))
    assert ranks[cur.begin_epoch()].tolist() == [5, 4]
    cur.observe([1.0, 0.0])
    rec = cur.end_epoch()
    assert rec["accuracy"] == 0.5 and rec["delta"] == 0.0 and rec["mu"] is None
    state = json.loads(json.dumps(cur.state_dict()))
    assert ranks[cur.begin_epoch()].tolist() == [3, 2]
    other = Curriculum.from_ranks(ranks, CurriculumConfig(sampler="hardest_first", subset_size=2))
    other.load_state_dict(state)
    assert ranks[other.begin_epoch()].tolist() == [3, 2]


@pytest.mark.parametrize("name", ["gainrl", "uniform", "ordered", "sweep"])
def test_every_builtin_sampler_resumes_exactly(name):
    cfg = CurriculumConfig(sampler=name, subset_size=6, sigma=5, step=4, seed=3)
    cur = Curriculum(np.random.default_rng(0).permutation(40), cfg)
    for _ in range(3):
        rows = cur.begin_epoch()
        assert len(set(rows.tolist())) == 6
        cur.observe([1.0, 0.0, 1.0])
        cur.end_epoch()
    state = json.loads(json.dumps(cur.state_dict()))
    other = Curriculum(cur.order, cfg.replace(seed=99))
    other.load_state_dict(state)
    for _ in range(3):
        assert other.begin_epoch().tolist() == cur.begin_epoch().tolist()
        for c in (cur, other):
            c.observe([0.0, 1.0])
            c.end_epoch()
    assert other.epochs == cur.epochs


# ---------------------------------------------------------------- the epoch state machine


def test_rank_order_inverts_permutation_and_tolerates_gaps_and_nulls():
    ranks = np.array([2, 0, 3, 1])
    order = rank_order(ranks)
    assert order.tolist() == [1, 3, 0, 2]
    assert (ranks[order] == np.arange(4)).all()
    # rows filtered after ranking (gaps), a duplicate and a null: still a total order
    assert rank_order(np.array([7.0, np.nan, 2.0, 7.0, 5.0])).tolist() == [2, 4, 0, 3, 1]


def test_correct_is_reward_at_least_threshold_and_drops_unjudged():
    r = [0.0, 1.0, 2.0, np.nan, -1.0, None, 0.999]
    assert correct(r, 1.0).tolist() == [0, 1, 1, 0, 0]
    assert correct(r, 0.0).tolist() == [1, 1, 1, 0, 1]  # >=, not >
    assert correct(r, 1.5).tolist() == [0, 0, 1, 0, 0]
    assert correct([], 1.0).size == 0


def test_epoch_accuracy_uses_the_threshold_and_leaves_out_nan_and_none():
    cur = Curriculum(np.arange(10), CurriculumConfig(subset_size=2, seed=0))
    cur.begin_epoch()
    cur.observe([1.0, 0.5, None, np.nan])
    cur.observe(np.array([[2.0], [0.0]]))  # any shape: one reward per completion
    rec = cur.end_epoch()
    assert rec["completions"] == 4 and rec["accuracy"] == 0.5
    half = Curriculum(np.arange(10), CurriculumConfig(subset_size=2, correct_threshold=0.5, seed=0))
    half.begin_epoch()
    half.observe([1.0, 0.5, 0.49, None])
    assert half.end_epoch()["accuracy"] == pytest.approx(2 / 3)


def test_state_machine_begin_observe_end():
    cur = Curriculum(np.arange(30)[::-1], CurriculumConfig(subset_size=5, sigma=3, step=4, seed=0))
    assert cur.end_epoch() is None and not cur.open  # nothing open yet
    cur.observe([1.0])  # outside an epoch: ignored
    rows = cur.begin_epoch()
    assert cur.open and rows.tolist() == cur.order[cur.positions].tolist() == cur.rows.tolist()
    cur.observe([1.0, 1.0])
    first = cur.begin_epoch()  # closes the open epoch first (its update applied)
    assert len(cur.epochs) == 1 and cur.epochs[0]["accuracy"] == 1.0 and cur.open
    assert cur.epochs[0]["mu"] == 0.0 and cur.epochs[0]["mu_next"] == cur.mu > 0
    rec = cur.end_epoch()
    assert rec["skipped"] and rec["accuracy"] is None and rec["delta"] == 0.0  # no rewards: the window stays
    assert rec["mu_next"] == rec["mu"] == cur.epochs[0]["mu_next"]
    assert cur.end_epoch() is None and len(cur.epochs) == 2
    assert len(first) == 5


def test_nan_only_epoch_is_skipped():
    cur = Curriculum(np.arange(10), CurriculumConfig(subset_size=2, seed=0))
    cur.begin_epoch()
    cur.observe([np.nan, None])
    rec = cur.end_epoch()
    assert rec["skipped"] and rec["completions"] == 0 and cur.mu == 0.0


def test_angle_precedence_observed_then_column_then_default():
    order = np.arange(20)
    column = np.linspace(0.0, 0.95, 20)
    cfg = CurriculumConfig(subset_size=4, sigma=3, seed=0)
    cur = Curriculum(order, cfg, angles=column, angle_default=0.3)
    rows = cur.begin_epoch()
    cur.observe([1.0] * 4, angles=[0.7, np.nan, 0.5])  # measured on the policy: wins
    assert cur.end_epoch()["angle"] == pytest.approx(0.6)
    rows = cur.begin_epoch()
    cur.observe([1.0] * 4)  # none measured: the column's mean over the epoch's rows
    assert cur.end_epoch()["angle"] == pytest.approx(column[rows].mean())
    nan_column = Curriculum(order, cfg, angles=np.full(20, np.nan), angle_default=0.3)
    nan_column.begin_epoch()
    nan_column.observe([1.0])
    assert nan_column.end_epoch()["angle"] == 0.3  # no finite value: the default
    no_column = Curriculum(order, cfg, angle_default=0.3)
    no_column.begin_epoch()
    no_column.observe([1.0])
    assert no_column.end_epoch()["angle"] == 0.3


def test_open_epoch_round_trip_resumes_exactly():
    ranks = np.random.default_rng(1).permutation(50)
    cfg = CurriculumConfig(subset_size=6, sigma=5, step=6, seed=7)
    a = Curriculum.from_ranks(ranks, cfg, angles=np.linspace(0, 1, 50))
    a.begin_epoch()
    a.observe([1.0, 0.0, 1.0], angles=[0.2])
    a.end_epoch()
    a.begin_epoch()
    a.observe([1.0, 1.0, 0.0])  # the epoch is open when the checkpoint is taken
    state = json.loads(json.dumps(a.state_dict()))
    b = Curriculum.from_ranks(ranks, cfg.replace(seed=123), angles=np.linspace(0, 1, 50))
    b.load_state_dict(state)
    assert b.open and b.rows.tolist() == a.rows.tolist() and b.positions.tolist() == a.positions.tolist()
    for c in (a, b):
        c.observe([0.0, 1.0])
    assert b.end_epoch() == a.end_epoch()
    assert b.begin_epoch().tolist() == a.begin_epoch().tolist()
    assert b.state_dict() == a.state_dict()


def test_state_from_another_ranking_is_refused():
    ranks = np.random.default_rng(1).permutation(30)
    cfg = CurriculumConfig(subset_size=4, seed=0)
    state = Curriculum.from_ranks(ranks, cfg).state_dict()
    with pytest.raises(UserError, match="different ranked data set"):
        Curriculum.from_ranks(np.roll(ranks, 1), cfg).load_state_dict(state)
    with pytest.raises(UserError, match="different ranked data set"):
        Curriculum.from_ranks(np.arange(31), cfg).load_state_dict(state)


def test_curriculum_draws_follow_the_gaussian():
    """One prompt per epoch, mu held still: frequencies match the truncated Gaussian."""
    ranks = np.random.default_rng(0).permutation(40)
    cur = Curriculum.from_ranks(ranks, CurriculumConfig(subset_size=1, mu0=12, sigma=5, seed=1))
    counts = np.zeros(40)
    for _ in range(6000):
        rows = cur.begin_epoch()
        counts[ranks[rows[0]]] += 1
        cur.open = False  # skip the update: keep mu fixed
    p = cur.sampler.probabilities()
    assert 0.5 * np.abs(counts / counts.sum() - p).sum() < 0.04  # total variation
    assert abs(np.average(np.arange(40), weights=counts) - np.dot(np.arange(40), p)) < 0.5


def test_curriculum_update_rule_matches_the_sampler():
    ranks = np.random.default_rng(0).permutation(40)
    angles = 0.9 - ranks / 40
    gain = dict(mu0=0, sigma=4, step=8, alpha=2.0, beta_acc=0.5, adj_min=-16, adj_max=16)
    cur = Curriculum.from_ranks(ranks, CurriculumConfig(subset_size=8, seed=3, **gain), angles=angles)
    ref = GaussianRankSampler(40, 8, seed=3, **gain)
    rows = cur.begin_epoch()
    assert ranks[rows].tolist() == ref.draw().tolist()
    cur.observe([1, 0, 1, 1])
    rec = cur.end_epoch()
    ang = float(np.mean(angles[rows]))
    raw = 8 * math.tanh(2 * 0.25) + 8 * math.tanh(2 * ang)
    assert rec["accuracy"] == 0.75 and rec["angle"] == pytest.approx(ang)
    assert rec["delta"] == pytest.approx(min(max(raw, -16), 16)) == ref.update(0.75, ang)
    assert cur.mu == pytest.approx(ref.mu) == pytest.approx(rec["mu_next"])


def test_curriculum_rounds_subset_to_whole_batches():
    cur = Curriculum(np.arange(40), CurriculumConfig(subset_size=10), chunk=4)
    assert cur.subset_size == 8
    with pytest.raises(UserError, match="at least one batch"):
        Curriculum(np.arange(40), CurriculumConfig(subset_size=3), chunk=4)
    with pytest.raises(UserError, match="empty"):
        Curriculum(np.zeros(0), CurriculumConfig())
    with pytest.raises(UserError, match="all null"):
        Curriculum.from_ranks([np.nan, np.nan], CurriculumConfig())
