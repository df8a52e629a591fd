"""The window under ``wrap`` is a circle: over many passes every rank is drawn about equally often.

Each consumer of the curriculum (``anglerank sample --wrap``, ``anglerank train``'s
curriculum, the TRL sampler and the verl sampler) walks 64 ranks for 2,400 epochs
with a constant move of 8 ranks per epoch (``adj_min = adj_max`` pins the
feedback rule), 300 passes. A window cut off at both ends gives the first and
last ranks about three quarters of the middle's draws; the circular one gives
them the same within noise (about 2% here), so the bound is 10%. Without
``wrap`` the draws are those of the clamped window, checked draw by draw
against an independent implementation of it.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from anglerank.curriculum import Curriculum, CurriculumConfig, open_loop_schedule
from anglerank.curriculum.samplers.gainrl import GaussianRankSampler

N, K, SIGMA, MOVE, EPOCHS = 64, 8, 8, 8, 2400
BAND = 8  # ranks averaged at each end
WINDOW = dict(subset_size=K, sigma=SIGMA, step=MOVE, adj_min=MOVE, adj_max=MOVE, wrap=True)


def assert_ends_like_middle(ranks) -> None:
    """Draws per rank in the first and last BAND ranks within 10% of the middle's."""
    counts = np.bincount(np.asarray(ranks, dtype=np.int64), minlength=N).astype(np.float64)
    assert counts.size == N and counts.sum() == EPOCHS * K
    middle = counts[N // 2 - BAND: N // 2 + BAND].mean()
    first, last = counts[:BAND].mean() / middle, counts[-BAND:].mean() / middle
    assert abs(first - 1) < 0.10 and abs(last - 1) < 0.10, (round(first, 3), round(last, 3))


def ranked_columns(seed: int = 0) -> dict:
    ranks = np.random.default_rng(seed).permutation(N).astype(np.int64)
    return {"prompt": [f"What is {i} + 1?" for i in range(N)], "angle_rank": ranks, "angle_score": 0.9 - ranks / N}


# ------------------------------------------------------------ the four consumers


def test_sample_cli_wrap_draws_every_rank_equally(tmp_path):
    from typer.testing import CliRunner

    from anglerank.cli import app
    from helpers import make_data, make_scores, random_terms

    data = make_data(tmp_path / "d.parquet", N, exotic=False)
    sdir = make_scores(tmp_path / "s", [data], {-1: random_terms(N, nulls=())})
    out = tmp_path / "cur.parquet"
    res = CliRunner().invoke(app, [str(a) for a in ("sample", sdir, "--data", data, "-o", out, "--subset", K,
                                                    "--epochs", EPOCHS, "--sigma", SIGMA, "--step", MOVE,
                                                    "--wrap", "--concat", "--quiet")])
    assert res.exit_code == 0, res.output
    assert_ends_like_middle(pq.read_table(out, columns=["angle_rank"]).column("angle_rank").to_pylist())


def test_train_curriculum_wrap_draws_every_rank_equally():
    from anglerank.train.config import TrainConfig

    cfg = TrainConfig(**WINDOW, seed=2).curriculum()
    cur = Curriculum(np.arange(N), cfg)  # the angle ranking before scoring: rows in rank order
    drawn = []
    for _ in range(EPOCHS):
        drawn.append(cur.begin_epoch())
        cur.observe(np.ones(2 * K))
        cur.end_epoch()
    assert cur.sampler.passes == EPOCHS * MOVE // N
    assert_ends_like_middle(np.concatenate(drawn))


def test_trl_sampler_wrap_draws_every_rank_equally():
    from anglerank.integrations.columns import curriculum_for
    from anglerank.integrations.trl import GainRLConfig, GainRLRepeatSampler

    cols = ranked_columns()
    config = GainRLConfig(**WINDOW).curriculum_config(seed=3, shuffle=True)
    sampler = GainRLRepeatSampler(curriculum_for(cols, config, chunk=4), mini_repeat_count=2, batch_size=4,
                                  repeat_count=1)
    ranks = []
    for _ in range(EPOCHS):
        indices = list(sampler)  # what TRL's dataloader asks for in one epoch
        ranks += cols["angle_rank"][indices[::2]].tolist()
        sampler.curriculum.observe(np.ones(len(indices)))
        sampler.curriculum.end_epoch()  # GainRLCallback.on_epoch_end
    assert_ends_like_middle(ranks)


class _VerlData:
    """Map-style data holding its rows in ``dataframe``, as verl's RLHFDataset."""

    def __init__(self, cols: dict):
        self.dataframe = pa.table({"angle_rank": cols["angle_rank"], "angle_score": cols["angle_score"]})

    def __len__(self):
        return N


class _Batch:
    """The part of verl's DataProto the sampler reads: one reward per response."""

    def __init__(self, n: int):
        self.batch = None
        self.non_tensor_batch = {"acc": np.ones(n)}


def test_verl_sampler_wrap_draws_every_rank_equally():
    from anglerank.integrations.verl import GainRLSampler

    cols = ranked_columns(seed=1)
    sampler = GainRLSampler(_VerlData(cols), {"train_batch_size": 4, "seed": 4,
                                              "gainrl": {**WINDOW, "reward_key": "acc"}})
    ranks = []
    for _ in range(EPOCHS):
        rows = list(sampler)
        for start in range(0, len(rows), 4):  # one update per training step, as verl's fit() loop
            ranks += cols["angle_rank"][rows[start:start + 4]].tolist()
            sampler.update(_Batch(4 * 2))
    assert not sampler.curriculum.open
    assert_ends_like_middle(ranks)


# ------------------------------------------------------------ the circle itself


def test_wrapped_weights_use_the_circular_distance():
    s = GaussianRankSampler(N, K, mu0=2, sigma=SIGMA, wrap=True)
    d = np.abs(np.arange(N) - 2.0)
    d = np.minimum(d, N - d)
    w = np.exp(-0.5 * (d / SIGMA) ** 2)
    np.testing.assert_allclose(s.probabilities(), w / w.sum(), rtol=1e-12)
    assert s.probabilities()[N - 1] == pytest.approx(s.probabilities()[5])  # 3 ranks away either way


def test_wrap_keeps_the_centre_moving_across_the_end():
    s = GaussianRankSampler(N, K, mu0=N - 1.5, sigma=SIGMA, step=1, adj_min=1, adj_max=1, wrap=True)
    s.update(1.0, 0.0)
    assert (s.mu, s.passes) == (pytest.approx(N - 0.5), 0)  # between the last rank and rank 0: still on the circle
    s.update(1.0, 0.0)
    assert (s.mu, s.passes) == (pytest.approx(0.5), 1)
    back = GaussianRankSampler(N, K, mu0=1, sigma=SIGMA, step=3, adj_min=-3, adj_max=-3, wrap=True)
    back.update(0.0, 0.0)
    assert (back.mu, back.passes) == (0.0, 0)  # never back before the start
    s.update(1.0, 0.0)
    s.adj_min = s.adj_max = -2.0
    s.update(0.0, 0.0)
    assert (s.mu, s.passes) == (pytest.approx(N - 0.5), 0)  # back across rank 0 into the previous pass


def test_reach_covers_the_other_end_of_the_circle():
    s = GaussianRankSampler(N, K, mu0=2, sigma=4, step=2, adj_min=2, adj_max=2, wrap=True, seed=0)
    walk = s.reach(3)  # centre 2 .. 6, 3 sigma either side: -10 .. 18
    assert walk.tolist() == list(range(N - 10, N)) + list(range(0, 19))
    inside = []
    for seed in range(20):
        s = GaussianRankSampler(N, K, mu0=2, sigma=4, step=2, adj_min=2, adj_max=2, wrap=True, seed=seed)
        walk = set(s.reach(3).tolist())
        for _ in range(3):
            inside += [r in walk for r in s.draw().tolist()]
            s.update(1.0, 0.0)
    assert np.mean(inside) > 0.99
    wide = GaussianRankSampler(N, K, mu0=40, sigma=20, wrap=True)
    assert sorted(wide.reach(2).tolist()) == list(range(N))  # a window wider than the circle reaches every rank
    assert wide.reach(2)[0] == 40 - 60 + N  # in walk order, from the far side of the window


# ------------------------------------------------------------ without wrap: the clamped window as before


class ClampedWindow:
    """The clamped window written out independently: Gumbel-top-k on exp(-0.5 ((r - mu)/sigma)^2), mu kept in
    [0, N-1] after each move."""

    def __init__(self, n, k, *, mu0, sigma, step, alpha, beta_acc, adj_min, adj_max, seed):
        self.n, self.k, self.mu, self.sigma = n, k, float(mu0), float(sigma)
        self.step, self.alpha, self.beta, self.lo, self.hi = step, alpha, beta_acc, adj_min, adj_max
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def draw(self):
        keys = -0.5 * ((np.arange(self.n) - self.mu) / self.sigma) ** 2 + self.rng.gumbel(size=self.n)
        return self.rng.permutation(np.sort(np.argpartition(-keys, self.k - 1)[:self.k]))

    def update(self, acc, ang):
        raw = self.step * math.tanh(self.alpha * (acc - self.beta)) + self.step * math.tanh(self.alpha * ang)
        self.mu = min(max(self.mu + min(max(raw, self.lo), self.hi), 0.0), self.n - 1.0)


def test_without_wrap_the_draws_are_unchanged():
    params = dict(mu0=5, sigma=6, step=10, alpha=2.0, beta_acc=0.5, adj_min=-10, adj_max=10)
    ref = ClampedWindow(N, K, **params, seed=11)
    cur = Curriculum(np.arange(N), CurriculumConfig(subset_size=K, **params, seed=11))
    for t in range(300):
        acc = [0.0, 1.0, 1.0, 0.5, 1.0][t % 5] if t < 200 else 0.0  # up to the last rank, then back to the first
        assert cur.begin_epoch().tolist() == ref.draw().tolist(), t
        cur.observe([1.0] * int(acc * 4) + [0.0] * (4 - int(acc * 4)))
        cur.end_epoch()
        ref.update(int(acc * 4) / 4, 0.0)
        assert cur.mu == ref.mu
    assert {e["mu_next"] for e in cur.epochs} >= {0.0, N - 1.0}  # both clamps were exercised
    draws, mus = open_loop_schedule(N, K, 50, mu0=0, sigma=SIGMA, step=3, seed=7)
    ref = ClampedWindow(N, K, mu0=0, sigma=SIGMA, step=0, alpha=0, beta_acc=0, adj_min=3, adj_max=3, seed=7)
    for d, mu in zip(draws, mus):
        assert mu == ref.mu and d.tolist() == ref.draw().tolist()
        ref.update(0.0, 0.0)
