"""Rankings as a choice (angle, random, length, column:NAME): parsing, the orders they give,
the window's reachable ranks, and the same choice in `sample` and the TRL / verl integrations.
The trainer's use of them is in tests/unit/train/test_train.py."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from anglerank.curriculum import Curriculum, CurriculumConfig, Ranking
from anglerank.curriculum.samplers.gainrl import GaussianRankSampler
from anglerank.errors import UserError
from anglerank.integrations.columns import curriculum_for, ranking_order
from helpers import make_data, make_scores, random_terms


@pytest.mark.parametrize("spec, kind, column, desc", [
    ("angle", "angle", None, False), ("random", "random", None, False), ("length", "length", None, False),
    ("column:level", "column", "level", False), ("column:level:desc", "column", "level", True),
    ("column:extra_info.pass_rate:asc", "column", "extra_info.pass_rate", False),
    ("column:a:b", "column", "a:b", False),  # a colon inside a name that is not a direction
])
def test_parse_round_trips(spec, kind, column, desc):
    r = Ranking.parse(spec)
    assert (r.kind, r.column, r.descending) == (kind, column, desc)
    assert Ranking.parse(str(r)) == r


@pytest.mark.parametrize("bad", ["", "angles", "column", "column:", "length:x", 3, None])
def test_parse_rejects_unknown(bad):
    with pytest.raises(UserError):
        Ranking.parse(bad)
    with pytest.raises(UserError):
        CurriculumConfig(ranking=bad)


def test_random_is_a_seeded_permutation():
    a = Ranking.parse("random").order(50, seed=1)
    assert sorted(a.tolist()) == list(range(50))
    assert np.array_equal(a, Ranking.parse("random").order(50, seed=1))
    assert not np.array_equal(a, Ranking.parse("random").order(50, seed=2))
    assert not np.array_equal(a, np.arange(50))


def test_length_and_column_orders_ties_and_nulls():
    lengths = [30, 10, 20, 10, None, 5]
    # shortest first; the tie (rows 1 and 3) keeps data order; the missing length goes last
    assert Ranking.parse("length").order(6, lengths=lengths).tolist() == [5, 1, 3, 2, 0, 4]
    values = [0.5, None, 0.9, 0.1, float("nan"), 0.9]
    assert Ranking.parse("column:p").order(6, values=values).tolist() == [3, 0, 2, 5, 1, 4]
    assert Ranking.parse("column:p:desc").order(6, values=values).tolist() == [2, 5, 0, 3, 1, 4]
    with pytest.raises(UserError, match="not numeric"):
        Ranking.parse("column:p").order(2, values=["easy", "hard"])
    with pytest.raises(UserError, match="all null"):
        Ranking.parse("column:p").order(2, values=[None, None])
    with pytest.raises(UserError, match="3 values for 2 rows"):
        Ranking.parse("length").order(2, lengths=[1, 2, 3])
    with pytest.raises(UserError, match="needs"):
        Ranking.parse("angle").order(2)


def test_reorder_moves_only_the_given_positions():
    cur = Curriculum(np.array([4, 3, 2, 1, 0]), CurriculumConfig(subset_size=2))
    cur.reorder([1, 2, 3], [0.5, np.nan, 0.1])  # keys of rows 3, 2, 1
    assert cur.order.tolist() == [4, 1, 3, 2, 0]


def test_reorder_ranks_wrapped_positions_from_the_lowest():
    # reachable() lists positions in walk order: past the last rank it continues at 0. Re-ranking them
    # must still put the best key at the lowest of those positions, not where the walk starts.
    cur = Curriculum(np.arange(6), CurriculumConfig(subset_size=2))
    cur.reorder([4, 5, 0, 1], [0.3, 0.1, 0.4, 0.2])  # keys of rows 4, 5, 0, 1
    assert cur.order.tolist() == [5, 1, 2, 3, 4, 0]
    cur = Curriculum(np.arange(6), CurriculumConfig(subset_size=2))
    cur.reorder([3, 4, 5, 0, 1, 2], [3.0, 4.0, 5.0, 0.0, 1.0, 2.0])  # the whole ranking, walk from 3
    assert cur.order.tolist() == [0, 1, 2, 3, 4, 5]  # same keys as its ranks: nothing moves


def test_reach_covers_the_next_draws_and_wraps():
    s = GaussianRankSampler(200, 8, mu0=150, sigma=10, step=0.1, adj_min=0, adj_max=12, seed=0)
    walk = s.reach(3)  # mu 150, moves of at most 12 per epoch, 3 sigma either side
    assert walk.tolist() == list(range(120, 200))  # clipped at the last rank without wrap
    s = GaussianRankSampler(200, 8, mu0=150, sigma=10, step=0.1, adj_min=0, adj_max=12, wrap=True, seed=0)
    walk = s.reach(3)
    assert walk.tolist() == list(range(120, 200)) + list(range(0, 5))  # mu can reach 174; 174 + 30 = 204 -> 4
    # every draw of the next 3 epochs, at the fastest move, lands inside the reach (beyond 3 sigma: rare)
    inside = []
    for seed in range(30):
        s = GaussianRankSampler(200, 8, mu0=100, sigma=10, step=20, adj_min=0, adj_max=12, seed=seed)
        walk = set(s.reach(3).tolist())
        for _ in range(3):
            inside += [r in walk for r in s.draw().tolist()]
            s.update(1.0, 1.0)
    assert np.mean(inside) > 0.99


def test_curriculum_reachable_falls_back_to_all_rows():
    cur = Curriculum(np.arange(10), CurriculumConfig(sampler="ordered", subset_size=2))
    assert cur.reachable(3).tolist() == list(range(10))


# ---------------------------------------------------------------- integrations

def _rows():
    return {"prompt": [[{"role": "user", "content": "x" * n}] for n in (9, 3, 6, 1)],
            "angle_rank": [2, 0, 3, 1], "angle_score": [0.1, 0.3, 0.0, 0.2],
            "extra_info": [{"pass_rate": p} for p in (0.2, 0.9, 0.5, None)]}


@pytest.mark.parametrize("ranking, expected", [
    ("angle", [1, 3, 0, 2]), ("length", [3, 1, 2, 0]), ("column:extra_info.pass_rate", [0, 2, 1, 3]),
    ("column:extra_info.pass_rate:desc", [1, 2, 0, 3]),
])
def test_integrations_read_the_ranking(ranking, expected):
    import pandas as pd

    for data in (_rows(), pd.DataFrame(_rows())):
        cfg = CurriculumConfig(ranking=ranking, subset_size=2, seed=4)
        assert ranking_order(data, cfg).tolist() == expected
        assert curriculum_for(data, cfg).order.tolist() == expected


def test_integrations_random_and_missing_column():
    cfg = CurriculumConfig(ranking="random", subset_size=2, seed=4)
    assert ranking_order(_rows(), cfg).tolist() == Ranking.parse("random").order(4, seed=4).tolist()
    with pytest.raises(UserError, match="no column 'level'"):
        ranking_order(_rows(), CurriculumConfig(ranking="column:level", subset_size=2))


def test_trl_config_and_verl_options_take_a_ranking():
    from anglerank.integrations.trl import GainRLConfig
    from anglerank.integrations.verl import curriculum_config, read_options

    assert GainRLConfig(ranking="length").ranking == "length"
    with pytest.raises(UserError):
        GainRLConfig(ranking="shortest")
    opts = read_options({"gainrl": {"ranking": "column:level:desc"}})
    assert curriculum_config(opts, None).ranking == "column:level:desc"


# ---------------------------------------------------------------- sample

def test_sample_walks_the_chosen_ranking(tmp_path):
    from anglerank.curation.sample import sample

    n = 40
    data = make_data(tmp_path / "d.parquet", n)
    sdir = make_scores(tmp_path / "s", [data], {-1: random_terms(n, nulls=())})  # n_tokens = 40 + row
    kw = dict(mu0=0, sigma=1, step=0, seed=0, concat=True)  # epoch 0 draws the first ranks only
    sample(sdir, data, 4, 1, tmp_path / "len.parquet", ranking="length", **kw)
    rows = [d["index"] for d in pq.read_table(tmp_path / "len.parquet").column("extra_info").to_pylist()]
    assert max(rows) <= 6  # the shortest prompts (rows 0, 1, 2, ...) come first
    s = sample(sdir, data, 4, 1, tmp_path / "lvl.parquet", ranking="column:level:desc", **kw)
    levels = pq.read_table(tmp_path / "lvl.parquet").column("level").to_pylist()
    assert s["ranking"] == "column:level:desc" and set(levels) == {4}  # level = row % 5: the top level first
    a = sample(sdir, data, 4, 3, tmp_path / "r1.parquet", ranking="random", **{**kw, "step": 5})
    sample(sdir, data, 4, 3, tmp_path / "r2.parquet", ranking="random", **{**kw, "step": 5})
    assert a["ranking"] == "random"
    assert pq.read_table(tmp_path / "r1.parquet").equals(pq.read_table(tmp_path / "r2.parquet"))
