"""Tests for anglerank.curation (rank, sample, inspect) and the `rank` / `sample` / `inspect` commands.

Score directories are mostly written by hand (exact, chosen scores, nulls, ties,
several layers, incomplete runs); one test goes through the real `run_score` on the
tiny model. The checks: the join is right row for row, the order / rank / pct rules,
every input column survives with its exact type, the curriculum's inclusion
frequencies match the Gaussian successive-sampling probabilities, and `inspect`'s
numbers agree with an independent recomputation.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from anglerank.data.reader import InputError, ParquetFiles
from anglerank.data.writer import OutputError, load_scores
from anglerank.curation.inspect import inspect, text_histogram
from anglerank.curation.rank import rank
from anglerank.curation.sample import sample
from anglerank.curriculum import open_loop_schedule
from anglerank.curriculum.units import parse_rank_value
from anglerank.data.parquet_out import ANGLE_COLUMNS
from anglerank.errors import MissingExtra
from helpers import HF_META, make_data, make_scores, random_terms


# ---------------------------------------------------------------- helpers

@pytest.fixture
def setup30(tmp_path):
    data = make_data(tmp_path / "data.parquet", 30)
    terms = random_terms(30)
    terms[8] = (0.25, 0.25)  # a tie with row 20 on score; the input order breaks it
    terms[20] = (0.30, 0.20)
    sdir = make_scores(tmp_path / "scores", [data], {-1: terms})
    return data, sdir, terms


def same(a: pa.Table, b: pa.Table) -> bool:
    """Equal schema and values (dictionary columns may carry different dictionaries per chunk)."""
    return a.schema.equals(b.schema) and a.to_pylist() == b.to_pylist()


def _score(t):
    return None if t[0] is None or t[1] is None else t[0] + t[1]


def expected_order(terms, by="score", ascending=False):
    key = {"score": _score, "intra": lambda t: t[0], "inter": lambda t: t[1]}[by]
    valid = [r for r in range(len(terms)) if key(terms[r]) is not None]
    valid.sort(key=lambda r: (key(terms[r]) if ascending else -key(terms[r]), r))
    return valid + [r for r in range(len(terms)) if key(terms[r]) is None]


# ---------------------------------------------------------------- rank

def test_rank_order_ranks_pct_and_join(setup30, tmp_path):
    data, sdir, terms = setup30
    out = tmp_path / "ranked.parquet"
    s = rank(sdir, [str(data)], out)
    t = pq.read_table(out)
    rows = [d["index"] for d in t.column("extra_info").to_pylist()]  # index == input row here
    assert rows == expected_order(terms)
    assert t.column("angle_rank").to_pylist() == list(range(30))
    for r, sc, intra, inter in zip(rows, *(t.column(c).to_pylist() for c in ("angle_score", "angle_intra", "angle_inter"))):
        assert intra == terms[r][0] and inter == terms[r][1]
        assert sc == (None if _score(terms[r]) is None else pytest.approx(_score(terms[r])))
    pct = t.column("angle_pct").to_pylist()
    assert pct[:28] == pytest.approx([i / 27 for i in range(28)]) and pct[28:] == [None, None]
    assert rows[28:] == [3, 17]  # nulls last, in input order
    assert rows.index(8) < rows.index(20)  # the tie is broken by input row
    assert (s["rows_in"], s["rows_out"], s["scored"], s["null"], s["dropped_null"]) == (30, 30, 28, 2, 0)
    assert s["passes"] == 1 and s["input_mismatch"] == [] and not s["forced"]


@pytest.mark.parametrize("by, ascending", [("intra", True), ("inter", False), ("score", True)])
def test_rank_by_and_ascending(setup30, tmp_path, by, ascending):
    data, sdir, terms = setup30
    out = tmp_path / "r.parquet"
    s = rank(sdir, data, out, by=by, ascending=ascending, drop_null=True)
    rows = [d["index"] for d in pq.read_table(out).column("extra_info").to_pylist()]
    exp = expected_order(terms, by, ascending)
    n_valid = sum(1 for r in range(30) if {"score": _score, "intra": lambda t: t[0], "inter": lambda t: t[1]}[by](terms[r]) is not None)
    assert rows == exp[:n_valid]
    assert s["rows_out"] == n_valid and s["dropped_null"] == 30 - n_valid


def test_rank_preserves_schema_and_values(setup30, tmp_path):
    data, sdir, _ = setup30
    out = tmp_path / "ranked.parquet"
    rank(sdir, data, out)
    src, got = pq.read_table(data), pq.read_table(out)
    for f in src.schema:  # column by column: type, nesting, nullability
        g = got.schema.field(f.name)
        assert g.type == f.type, f.name
        assert g.nullable == f.nullable, f.name
    assert got.schema.names == src.schema.names + list(ANGLE_COLUMNS)
    assert [got.schema.field(c).type for c in ANGLE_COLUMNS] == [pa.float64()] * 3 + [pa.int64(), pa.float64()]
    order = [d["index"] for d in got.column("extra_info").to_pylist()]
    assert same(got.select(src.schema.names), src.take(order))  # values unchanged row for row
    hf = json.loads(got.schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["data_source"] == HF_META["info"]["features"]["data_source"] and hf["angle_rank"]["dtype"] == "int64"
    prov = json.loads(got.schema.metadata[b"anglerank"])
    assert prov["kind"] == "rank" and prov["by"] == "score"
    df = pl.read_parquet(out)  # polars reads it too
    assert df.height == 30 and df["angle_rank"].to_list() == list(range(30))


def test_rank_loads_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")  # (datasets itself cannot load Arrow map columns)
    data = make_data(tmp_path / "d.parquet", 30, exotic=False)
    sdir = make_scores(tmp_path / "s", [data], {-1: random_terms(30)})
    out = tmp_path / "ranked.parquet"
    rank(sdir, data, out)
    kw = dict(split="train", cache_dir=str(tmp_path / "hf"))
    ds = datasets.load_dataset("parquet", data_files=str(out), **kw)
    src = datasets.load_dataset("parquet", data_files=str(data), **kw)
    assert ds.num_rows == 30 and ds[0]["angle_rank"] == 0 and ds[0]["prompt"][1]["role"] == "user"
    for name, feat in src.features.items():
        assert ds.features[name] == feat, name
    assert ds.features["angle_score"].dtype == "float64"


def test_rank_real_verl_file_schema(gsm8k_test, tmp_path):
    """The shared GSM8K file: column-by-column schema and metadata survive; passes agree."""
    n = pq.ParquetFile(gsm8k_test).metadata.num_rows
    rng = np.random.default_rng(1)
    terms = [(float(a), float(b)) for a, b in zip(rng.normal(size=n), rng.normal(size=n))]
    sdir = make_scores(tmp_path / "s", [gsm8k_test], {-1: terms}, parts=3)
    one, many = tmp_path / "one.parquet", tmp_path / "many.parquet"
    rank(sdir, gsm8k_test, one)
    s = rank(sdir, gsm8k_test, many, window_rows=400)
    assert s["passes"] == math.ceil(n / 400)
    src, a, b = pq.read_schema(gsm8k_test), pq.read_table(one), pq.read_table(many)
    assert a.equals(b)
    for f in src:
        assert a.schema.field(f.name).type == f.type, f.name
    assert a.schema.metadata[b"huggingface"] != src.metadata[b"huggingface"]  # angle features added
    src_t = pq.read_table(gsm8k_test)
    order = np.argsort([-(x + y) for x, y in terms], kind="stable")
    assert a.select(src.names).equals(src_t.take(order))


def test_rank_multifile_with_real_scorer(tmp_path, questions_parquet, tiny_model_dir):
    """Two input files scored by run_score: rows are numbered across files and joined back."""
    from anglerank.scoring.run import run_score

    full = pq.read_table(questions_parquet)
    f1, f2 = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(full.slice(0, 10), f1)
    pq.write_table(full.slice(10), f2)
    sdir = tmp_path / "scores"
    run_score([str(f1), str(f2)], sdir, model=str(tiny_model_dir), dtype="float32", device="cpu")
    scores = load_scores(sdir).to_pydict()
    out = tmp_path / "ranked.parquet"
    s = rank(sdir, [str(f1), str(f2)], out)
    t = pq.read_table(out)
    by_row = dict(zip(scores["row"], scores["score"]))
    got_rows = [d["index"] - 1000 for d in t.column("extra_info").to_pylist()]
    assert sorted(got_rows) == list(range(23))
    assert t.column("angle_score").to_pylist() == [by_row[r] for r in got_rows]
    valid = [x for x in t.column("angle_score").to_pylist() if x is not None]
    assert valid == sorted(valid, reverse=True) and s["scored"] == len(valid)
    assert t.schema.field("prompt").type == full.schema.field("prompt").type
    # the same two files in the other order are recognised as such
    with pytest.raises(InputError, match="different order"):
        rank(sdir, [str(f2), str(f1)], tmp_path / "x.parquet")


def test_rank_fingerprint_mismatch_and_force(setup30, tmp_path):
    data, sdir, terms = setup30
    other = make_data(tmp_path / "other.parquet", 32, start=100)
    with pytest.raises(InputError, match="--force"):
        rank(sdir, other, tmp_path / "x.parquet")
    s = rank(sdir, other, tmp_path / "x.parquet", force=True)
    assert s["forced"] and s["input_mismatch"]
    assert (s["rows_in"], s["unscored_rows"], s["null"]) == (32, 2, 4)  # rows 30, 31 have no score
    short = make_data(tmp_path / "short.parquet", 25)
    s = rank(sdir, short, tmp_path / "y.parquet", force=True)
    assert s["scores_outside_data"] == 5 and s["rows_out"] == 25
    with pytest.raises(InputError, match="1 file.*scored but --data names 2"):
        rank(sdir, [str(data), str(other)], tmp_path / "z.parquet")


def test_rank_layers(tmp_path):
    data = make_data(tmp_path / "d.parquet", 12)
    l1 = [(float(i), 0.0) for i in range(12)]  # layer 1: row 11 highest
    l2 = [(float(-i), 0.0) for i in range(12)]  # layer 2: row 0 highest
    sdir = make_scores(tmp_path / "s", [data], {1: l1, 2: l2})
    with pytest.raises(ValueError, match="several layers.*1, 2"):
        rank(sdir, data, tmp_path / "o.parquet")
    with pytest.raises(ValueError, match="scored layers: 1, 2"):
        rank(sdir, data, tmp_path / "o.parquet", layer=5)
    s = rank(sdir, data, tmp_path / "o.parquet", layer=2)
    rows = [d["index"] for d in pq.read_table(tmp_path / "o.parquet").column("extra_info").to_pylist()]
    assert rows == list(range(12)) and s["layer"] == 2
    rank(sdir, data, tmp_path / "o1.parquet", layer=1)
    assert [d["index"] for d in pq.read_table(tmp_path / "o1.parquet").column("extra_info").to_pylist()] == list(range(11, -1, -1))


def test_parquet_files_take_gathers_exact_rows_in_any_order(tmp_path):
    """The gather behind rank and sample: global rows across files and row groups, repeats, exact types."""
    a = make_data(tmp_path / "a.parquet", 20, row_group_size=7)
    b = make_data(tmp_path / "b.parquet", 9, start=20, row_group_size=4)
    files = ParquetFiles([str(a), str(b)])
    src = pa.concat_tables([pq.read_table(a), pq.read_table(b)])
    rows = [28, 0, 13, 13, 21, 6, 7, 20]
    got = files.take(rows)
    assert got.schema.equals(files.schema)  # map, dictionary, tz timestamp, non-nullable: unchanged
    assert got.to_pylist() == src.take(rows).to_pylist()
    assert files.take(np.arange(29)).to_pylist() == src.to_pylist()
    assert files.take([]).num_rows == 0
    with pytest.raises(IndexError):
        files.take([29])
    assert files.metadata_schema.metadata[b"huggingface"] == json.dumps(HF_META).encode()


def test_rank_refuses_its_own_output_as_data(setup30, tmp_path):
    data, sdir, _ = setup30
    rank(sdir, data, tmp_path / "r.parquet")
    with pytest.raises(InputError, match="already has a column 'angle_intra'.*anglerank output"):
        rank(sdir, tmp_path / "r.parquet", tmp_path / "again.parquet")


def test_rank_incomplete_and_output_checks(setup30, tmp_path):
    data, _, terms = setup30
    sdir = make_scores(tmp_path / "inc", [data], {-1: terms[:20]}, complete=False, rows_expected=30)
    with pytest.raises(InputError, match="incomplete"):
        rank(sdir, data, tmp_path / "o.parquet")
    s = rank(sdir, data, tmp_path / "o.parquet", force=True)
    assert s["unscored_rows"] == 10 and s["null"] == 12  # 2 null scores + 10 unscored rows
    with pytest.raises(OutputError, match="--overwrite"):
        rank(sdir, data, tmp_path / "o.parquet", force=True)
    rank(sdir, data, tmp_path / "o.parquet", force=True, overwrite=True)
    with pytest.raises(OutputError, match="one of the --data"):
        rank(sdir, data, data, force=True, overwrite=True)
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(InputError, match="manifest"):
        rank(tmp_path, data, tmp_path / "p.parquet")


# ---------------------------------------------------------------- sample

def inclusion_probabilities(w, k, grid=6000):
    """P(rank i is among k drawn without replacement, successive sampling with weights w).

    Independent of the sampler: exponential races (item i finishes at E_i ~ Exp(w_i);
    the first k finishers are a successive sample), integrated numerically:
    P_i = int w_i e^{-w_i t} P(at most k-1 others finished by t) dt.
    """
    w = np.asarray(w, float) / np.max(w)
    t = np.logspace(-5, np.log10(60 / w.min()), grid)
    out = np.zeros(len(w))
    for i in range(len(w)):
        dist = np.zeros((grid, k))
        dist[:, 0] = 1.0
        for j in range(len(w)):
            if j == i:
                continue
            q = (1 - np.exp(-w[j] * t))[:, None]
            shifted = np.concatenate([np.zeros((grid, 1)), dist[:, :-1]], axis=1)
            dist = dist * (1 - q) + shifted * q
        f = w[i] * np.exp(-w[i] * t) * dist.sum(axis=1)
        out[i] = np.trapezoid(f, t) if hasattr(np, "trapezoid") else np.trapz(f, t)
    return out


def _ranked_setup(tmp_path, n=30, seed=0):
    data = make_data(tmp_path / "d.parquet", n)
    terms = random_terms(n, seed=seed, nulls=())
    return data, make_scores(tmp_path / "s", [data], {-1: terms}), terms


def test_sample_frequencies_match_gaussian(tmp_path):
    n, k, epochs, mu0, sigma = 30, 5, 1500, 10, 6
    data, sdir, _ = _ranked_setup(tmp_path, n)
    out = tmp_path / "cur.parquet"
    s = sample(sdir, data, k, epochs, out, mu0=mu0, sigma=sigma, step=0, seed=3, concat=True)
    t = pq.read_table(out, columns=["angle_rank", "epoch"])
    ranks = np.asarray(t.column("angle_rank").to_pylist())
    ep = np.asarray(t.column("epoch").to_pylist())
    assert s["rows_written"] == len(ranks) == k * epochs and (s["mu0"], s["sigma"], s["step"]) == (10.0, 6.0, 0.0)
    assert np.array_equal(np.bincount(ep), np.full(epochs, k))
    assert all(len(set(ranks[ep == e])) == k for e in range(0, epochs, 97))  # without replacement
    r = np.arange(n)
    pi = inclusion_probabilities(np.exp(-0.5 * ((r - mu0) / sigma) ** 2), k)
    assert pi.sum() == pytest.approx(k, abs=1e-3)
    counts = np.bincount(ranks, minlength=n)
    z = (counts - epochs * pi) / np.sqrt(epochs * pi * (1 - pi) + 1e-12)
    assert np.abs(z).max() < 4.5, z.round(2)
    assert 0.5 * np.abs(counts / (epochs * k) - pi / k).sum() < 0.03
    # a window centred 10 ranks lower would be rejected by the same test
    pi_wrong = inclusion_probabilities(np.exp(-0.5 * ((r - 20) / sigma) ** 2), k)
    assert 0.5 * np.abs(counts / (epochs * k) - pi_wrong / k).sum() > 0.2


def test_sample_single_draw_is_the_gaussian(tmp_path):
    """K = 1: inclusion is exactly exp(-0.5 ((r - mu)/sigma)^2) normalised, with fractions of N."""
    n, epochs = 30, 3000
    data, sdir, _ = _ranked_setup(tmp_path, n)
    out = tmp_path / "c.parquet"
    s = sample(sdir, data, 1, epochs, out, mu0=0.5, sigma=0.2, step=0, seed=7, concat=True)
    assert (s["mu0"], s["sigma"]) == (15.0, 6.0)  # 0.5 N and 0.2 N
    ranks = np.asarray(pq.read_table(out).column("angle_rank").to_pylist())
    p = np.exp(-0.5 * ((np.arange(n) - 15.0) / 6.0) ** 2)
    p /= p.sum()
    counts = np.bincount(ranks, minlength=n)
    z = (counts - epochs * p) / np.sqrt(epochs * p * (1 - p))
    assert np.abs(z).max() < 4.5


def test_sample_files_determinism_order_and_concat(tmp_path):
    data, sdir, terms = _ranked_setup(tmp_path, 30)
    kw = dict(mu0=0, sigma=0.2, step=3, seed=11)
    s = sample(sdir, data, 6, 4, tmp_path / "a", **kw)
    assert s["files"] == [f"epoch_{t:04d}.parquet" for t in range(4)]
    assert json.loads((tmp_path / "a" / "sample.json").read_text())["mu"] == [0.0, 3.0, 6.0, 9.0]
    sample(sdir, data, 6, 4, tmp_path / "b", **kw)
    sample(sdir, data, 6, 4, tmp_path / "c", **{**kw, "seed": 12})
    sample(sdir, data, 6, 4, tmp_path / "k", **kw, keep_order=True)
    sample(sdir, data, 6, 4, tmp_path / "all.parquet", **kw, concat=True)
    src = pq.read_table(data)
    expect, _ = open_loop_schedule(30, 6, 4, mu0=0, sigma=0.2, step=3, seed=11, shuffle=True)
    expect_kept, _ = open_loop_schedule(30, 6, 4, mu0=0, sigma=0.2, step=3, seed=11, shuffle=False)
    order = expected_order(terms)  # rank -> input row
    epochs_a, differs, shuffled = [], False, False
    for t in range(4):
        a = pq.read_table(tmp_path / "a" / f"epoch_{t:04d}.parquet")
        b = pq.read_table(tmp_path / "b" / f"epoch_{t:04d}.parquet")
        c = pq.read_table(tmp_path / "c" / f"epoch_{t:04d}.parquet")
        kept = pq.read_table(tmp_path / "k" / f"epoch_{t:04d}.parquet")
        assert same(a, b)  # same seed, same files
        differs |= not a.column("angle_rank").equals(c.column("angle_rank"))
        ranks = a.column("angle_rank").to_pylist()
        assert ranks == expect[t].tolist()  # the sampler's draw, in its (shuffled) order
        shuffled |= ranks != sorted(ranks)
        kept_ranks = kept.column("angle_rank").to_pylist()
        assert kept_ranks == expect_kept[t].tolist() == sorted(kept_ranks)  # rank order
        if t == 0:
            assert kept_ranks == sorted(ranks)  # same first draw (later ones differ: the shuffle uses the RNG)
        assert set(a.column("epoch").to_pylist()) == {t}
        rows = [d["index"] for d in a.column("extra_info").to_pylist()]
        assert rows == [order[r] for r in ranks]
        assert same(a.select(src.schema.names), src.take(rows))
        for f in src.schema:
            assert a.schema.field(f.name).type == f.type
        epochs_a.append(a)
    assert differs and shuffled
    assert same(pq.read_table(tmp_path / "all.parquet"), pa.concat_tables(epochs_a))
    with pytest.raises(OutputError, match="--overwrite"):
        sample(sdir, data, 6, 4, tmp_path / "a", **kw)
    # several gather windows give the same files
    sample(sdir, data, 6, 4, tmp_path / "w.parquet", **kw, concat=True, window_rows=7)
    assert same(pq.read_table(tmp_path / "w.parquet"), pq.read_table(tmp_path / "all.parquet"))


def test_sample_default_sweep_and_nulls(setup30, tmp_path):
    data, sdir, _ = setup30  # 2 null scores
    s = sample(sdir, data, "0.1", 5, tmp_path / "o", sigma=2)
    assert s["ranked"] == 28 and s["null_excluded"] == 2 and s["subset"] == 3  # 0.1 * 28 -> 3
    assert s["mu"] == pytest.approx([0, 6.75, 13.5, 20.25, 27])  # mu0 -> last rank
    s = sample(sdir, data, 40, 1, tmp_path / "p", include_null=True, step=0)
    assert s["ranked"] == 30 and s["subset"] == 30
    assert pq.read_table(tmp_path / "p" / "epoch_0000.parquet").num_rows == 30
    with pytest.raises(ValueError, match="--epochs"):
        sample(sdir, data, 3, 0, tmp_path / "q")


def test_sample_far_past_the_end_keeps_drawing_the_tail(tmp_path):
    """A step that carries the centre far past N: the window stays at the last rank, and every late
    epoch is K distinct rows spread over the tail, not the same handful (issue 10)."""
    # the tail at mu = N-1 holds about 1.25 sigma = 37 ranks of mass: 8 of them overlap ~8*8/37 ~ 2 rows
    # from one epoch to the next; an unbounded centre (mu = 725 here) would pick nearly the same 8 every time
    n, k, sigma = 300, 8, 30
    data, sdir, _ = _ranked_setup(tmp_path, n)
    res = _cli(["sample", sdir, "--data", data, "-k", k, "-e", 30, "--sigma", sigma, "--step", 25, "--mu0", 0,
                "-o", tmp_path / "far", "--seed", 3, "--quiet"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "far" / "sample.json").read_text())
    assert max(info["mu"]) == n - 1 and info["mu"][-10:] == [n - 1] * 10
    late = [pq.read_table(tmp_path / "far" / f"epoch_{t:04d}.parquet").column("angle_rank").to_pylist()
            for t in range(20, 30)]
    for ranks in late:
        assert len(ranks) == k and len(set(ranks)) == k
        assert min(ranks) >= n - 1 - 4 * sigma  # the tail ...
        assert max(ranks) - min(ranks) > sigma  # ... spread over it
    overlaps = [len(set(a) & set(b)) for a, b in zip(late, late[1:])]
    assert sum(overlaps) / len(overlaps) <= k / 2  # not the same handful every epoch
    assert len(set().union(*map(set, late))) > sigma


def test_sample_wrap_starts_a_new_pass(tmp_path):
    data, sdir, _ = _ranked_setup(tmp_path, 60)
    s = sample(sdir, data, 5, 8, tmp_path / "w", sigma=3, step=20, wrap=True)
    assert s["mu"] == pytest.approx([0, 20, 40, 0, 20, 40, 0, 20])  # 60 > 59: wraps to 60 - 60 = 0
    first = pq.read_table(tmp_path / "w" / "epoch_0003.parquet").column("angle_rank").to_pylist()
    assert max(first) < 15  # back at the top of the ranking


def test_parse_rank_value():
    assert parse_rank_value("1") == 1 and isinstance(parse_rank_value("1"), int)
    assert parse_rank_value("1.0") == 1.0 and isinstance(parse_rank_value("1.0"), float)
    assert parse_rank_value(" 750 ") == 750 and parse_rank_value("0.1") == 0.1 and parse_rank_value("1e3") == 1000.0
    with pytest.raises(ValueError, match="not a number"):
        parse_rank_value("ten")


# ---------------------------------------------------------------- inspect

def _spearman_ref(x, y):
    """Pearson correlation of average ranks (ties share the mean position), NaN pairs dropped."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = ~(np.isnan(x) | np.isnan(y))

    def avg_rank(v):
        s = np.sort(v)
        return np.array([np.flatnonzero(s == e).mean() for e in v])

    return float(np.corrcoef(avg_rank(x[ok]), avg_rank(y[ok]))[0, 1])


def test_inspect_values(setup30, tmp_path):
    data, sdir, terms = setup30
    r = inspect(sdir, [str(data)], k=3, bins=5)
    sc = np.array([np.nan if _score(t) is None else _score(t) for t in terms])
    intra = np.array([np.nan if t[0] is None else t[0] for t in terms])
    nq = np.array([20 + (i * 7) % 13 for i in range(30)], float)
    v = sc[~np.isnan(sc)]
    assert r["count"] == 30 and r["null"] == {"intra": 2, "inter": 0, "score": 2} and r["truncated"] == 1
    st = r["stats"]["score"]
    assert st["count"] == 28 and st["mean"] == pytest.approx(v.mean()) and st["std"] == pytest.approx(np.std(v, ddof=1))
    assert st["median"] == pytest.approx(np.median(v)) and st["min"] == v.min() and st["max"] == v.max()
    srt = np.sort(v)
    pos = 0.25 * 27
    assert st["p25"] == pytest.approx(srt[int(pos)] + (pos - int(pos)) * (srt[int(pos) + 1] - srt[int(pos)]))
    assert r["spearman"]["n_question"]["score"] == pytest.approx(_spearman_ref(sc, nq))
    assert r["spearman"]["n_question"]["intra"] == pytest.approx(_spearman_ref(intra, nq))
    assert sum(r["histogram"]["counts"]) == 28 and len(r["histogram"]["edges"]) == 6
    assert r["histogram"]["edges"][0] == v.min() and r["histogram"]["edges"][-1] == pytest.approx(v.max())
    order = expected_order(terms)
    assert [d["row"] for d in r["top"]] == order[:3]
    assert [d["row"] for d in r["bottom"]] == order[:28][::-1][:3]
    assert r["top"][0]["question"] == f"Question {order[0]}: what is {order[0]} + {order[0]}?"
    assert r["notes"] == {"too short": 2}
    lines = text_histogram(r["histogram"]["edges"], r["histogram"]["counts"], width=10)
    top = int(np.argmax(r["histogram"]["counts"]))
    assert len(lines) == 5 and lines[top].count("█") == 10  # the fullest bin spans the width
    assert all(line.endswith(f" {c}") for line, c in zip(lines, r["histogram"]["counts"]))


def test_inspect_layers_and_plot(tmp_path, monkeypatch):
    data = make_data(tmp_path / "d.parquet", 12)
    sdir = make_scores(tmp_path / "s", [data], {3: random_terms(12, 1, ()), 5: random_terms(12, 2, ())})
    r = inspect(sdir, k=2, plot=tmp_path / "p.png")
    assert r["layer"] == 5 and [d["layer"] for d in r["layers"]] == [3, 5]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtra, match=r"pip install 'anglerank\[plot\]'"):
        inspect(sdir, plot=tmp_path / "q.png")


def test_plots_leave_matplotlib_global_state_alone(tmp_path):
    """No backend switch, no pyplot: drawing a figure from library code changes nothing global (issue 10)."""
    pytest.importorskip("matplotlib")
    import subprocess

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"type": "step", "step": 1, "reward_mean": 0.5, "accuracy": 0.5}) + "\n")
    code = f"""
import sys, numpy as np, matplotlib
from anglerank.plots import plot_runs, plot_scores
from anglerank.train.metrics import read_metrics
before = dict.__getitem__(matplotlib.rcParams, "backend")
v = np.array([0.1, 0.2, np.nan, 0.4])
plot_scores({{"intra": v, "inter": v, "score": v, "n_question": np.arange(4.0)}}, {str(tmp_path / "s.png")!r})
plot_runs([("run", read_metrics({str(run)!r}))], {str(run / "curves.png")!r})
print(dict.__getitem__(matplotlib.rcParams, "backend") == before, "matplotlib.pyplot" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"]
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG" and (run / "curves.png").exists()


# ---------------------------------------------------------------- CLI

def _cli(args):
    from anglerank.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_rank_sample_inspect(setup30, tmp_path):
    data, sdir, terms = setup30
    out = tmp_path / "r.parquet"
    res = _cli(["rank", sdir, "--data", data, "-o", out, "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["rows_out"] == 30 and out.exists()
    res = _cli(["rank", sdir, "--data", data, "-o", tmp_path / "d.parquet", "--drop-null", "--by", "intra"])
    assert res.exit_code == 0 and "2 null dropped" in res.stderr and res.stdout == ""
    res = _cli(["sample", sdir, "--data", data, "--subset", "1", "--epochs", "3", "--sigma", "1", "--step", "0",
                "-o", tmp_path / "cur", "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["subset"] == 1 and s["sigma"] == 1.0  # integer text "1" is one rank, not N
    res = _cli(["sample", sdir, "--data", data, "-k", "2", "-e", "2", "--sigma", "1.0", "--concat", "-o", tmp_path / "c.parquet", "--json", "-q"])
    assert res.exit_code == 0 and json.loads(res.stdout)["sigma"] == 28.0  # "1.0" is all of N
    res = _cli(["inspect", sdir, "--data", data, "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["stats"]["score"]["count"] == 28
    res = _cli(["inspect", sdir, "--data", data, "-k", "2"])
    assert res.exit_code == 0 and "score histogram" in res.stderr and "Question" in res.stderr


@pytest.mark.parametrize("args, message", [
    (["rank", "{tmp}/other_scores", "-o", "{tmp}/o.parquet"], "no longer exists"),
    (["rank", "{tmp}/nope", "--data", "{data}", "-o", "{tmp}/o.parquet"], "score directory not found"),
    (["rank", "{sdir}", "--data", "{tmp}/missing.parquet", "-o", "{tmp}/o.parquet"], "input not found"),
    (["rank", "{sdir}", "--data", "{other}", "-o", "{tmp}/o.parquet"], "does not match the scored inputs"),
    (["rank", "{sdir}", "--data", "{data}", "-o", "{tmp}/o.parquet", "--by", "length"], "--by must be one of"),
    (["rank", "{sdir}", "--data", "{data}", "-o", "{data}", "--overwrite"], "one of the --data files"),
    (["sample", "{sdir}", "--data", "{data}", "-k", "3", "-e", "2", "--sigma", "wide", "-o", "{tmp}/s"], "not a number"),
    (["sample", "{sdir}", "--data", "{data}", "-k", "0", "-e", "2", "-o", "{tmp}/s"], "at least 1 row"),
    (["inspect", "{sdir}", "--layer", "7"], "scored layers: -1"),
])
def test_cli_errors_are_one_line(setup30, tmp_path, args, message):
    data, sdir, terms = setup30
    other = make_data(tmp_path / "other.parquet", 30, start=5)
    gone = make_data(tmp_path / "gone.parquet", 30)
    make_scores(tmp_path / "other_scores", [gone], {-1: terms})
    gone.unlink()
    fill = {"sdir": sdir, "data": data, "tmp": tmp_path, "other": other}
    res = _cli([a.format(**fill) for a in args])
    assert res.exit_code == 2, res.output
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr


def test_cli_data_defaults_to_the_scored_inputs(setup30, tmp_path):
    data, sdir, _ = setup30
    explicit, default = tmp_path / "explicit.parquet", tmp_path / "default.parquet"
    assert _cli(["rank", sdir, "--data", data, "-o", explicit, "-q"]).exit_code == 0
    res = _cli(["rank", sdir, "-o", default, "-q"])
    assert res.exit_code == 0, res.output
    assert same(pq.read_table(default), pq.read_table(explicit))
    res = _cli(["sample", sdir, "-k", "3", "-e", "2", "-o", tmp_path / "cur", "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cur" / "epoch_0001.parquet").exists()


def test_cli_plot_missing_matplotlib(setup30, tmp_path, monkeypatch):
    _, sdir, _ = setup30
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    res = _cli(["inspect", sdir, "--plot", tmp_path / "p.png"])
    assert res.exit_code == 2 and "pip install 'anglerank[plot]'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_inspect_reads_the_recorded_inputs_without_data(setup30, tmp_path):
    import json as _json

    from typer.testing import CliRunner

    from anglerank.cli import app

    data, sdir, terms = setup30
    res = CliRunner().invoke(app, ["inspect", str(sdir), "-k", "2", "--json"])
    assert res.exit_code == 0, res.output
    top = _json.loads(res.output)["top"]
    order = expected_order(terms)
    assert top[0]["question"] == f"Question {order[0]}: what is {order[0]} + {order[0]}?"
    data.unlink()  # the recorded input is gone: inspect still works, without the text
    res = CliRunner().invoke(app, ["inspect", str(sdir), "-k", "2", "--json", "--force"])
    assert res.exit_code == 0, res.output
    assert "question" not in _json.loads(res.output)["top"][0] or _json.loads(res.output)["top"][0]["question"] is None
