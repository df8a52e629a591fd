"""Pass rates as a column (`anglerank passrate`) and the angle score against them (the verdict).

The column is checked against n_correct / G worked out by hand for a mocked
generator whose answers depend only on the question; an interrupted run
continued with --resume must give byte-for-byte the same tables as an
uninterrupted one (real sampling on the tiny model, a deterministic checker);
the output must serve as a ranking column for `anglerank train` and as data for
`anglerank score` / `rank`. The verdict's correlation and bootstrap interval are
checked on constructed data (agreeing, reversed, symmetric, random) against
values computed here independently.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from anglerank import passrate
from anglerank.correlation import MIN_INTERVAL_N, bootstrap_spearman, pass_rate_agreement, verdict
from anglerank.errors import Interrupted
from anglerank.model import generation
from anglerank.scoring.engine import ScoreOptions

pytestmark = pytest.mark.usefixtures("one_thread")

N_ROWS, G = 23, 3
QUESTION = re.compile(r"Tom has (\d+) apples")


def hand_n_correct(row: int) -> int:
    """The mocked model below: question i answered right by its first i % 4 samples (of G); row 5 asks
    something else and is always wrong."""
    return 0 if row == 5 else min(row % 4, G)


def fake_generate(seeds: list):
    def generate(model, tokenizer, prompt_ids, **kw):
        assert len(prompt_ids) == G and kw["batch_size"] == G and not kw.get("greedy")
        seeds.append(kw["generator"].initial_seed())
        m = QUESTION.search(tokenizer.decode(prompt_ids[0]))
        i = int(m.group(1)) if m else -1
        texts = [f"so the answer is \\boxed{{{2 * i + 3 if m and j < i % 4 else 56}}}" for j in range(G)]
        return generation.Rollouts(list(prompt_ids), [[7]] * G, texts, [True] * G)

    return generate


def cli(*args):
    from anglerank.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def model_args(tiny_model_dir):
    return ["--model", tiny_model_dir, "--dtype", "float32", "--device", "cpu"]


@pytest.fixture
def measured(tmp_path, tiny_model_dir, questions_parquet):
    """`anglerank passrate` on the questions with the mocked generator: the output directory."""
    seeds: list = []
    out = tmp_path / "pr"
    with pytest.MonkeyPatch.context() as mp:  # the real generator afterwards, for training on the output
        mp.setattr(generation, "generate", fake_generate(seeds))
        res = cli("passrate", questions_parquet, "-o", out, "--rollouts", G, "--commit-every", 5, "--quiet",
                  *model_args(tiny_model_dir))
    assert res.exit_code == 0, res.output
    assert len(set(seeds)) == N_ROWS  # one seeded generator per prompt
    return out


# ------------------------------------------------------------------ the column


def test_pass_rate_is_n_correct_over_g(measured, questions_parquet):
    rates = pq.read_table(measured / passrate.RATES_FILE)
    assert rates.column_names == ["row", "id", "n_rollouts", "n_correct", "pass_rate", "note"]
    assert rates.column("row").to_pylist() == list(range(N_ROWS))
    assert rates.column("id").to_pylist() == [1000 + i for i in range(N_ROWS)]  # extra_info.index
    assert rates.column("n_rollouts").to_pylist() == [G] * N_ROWS
    assert rates.column("n_correct").to_pylist() == [hand_n_correct(i) for i in range(N_ROWS)]
    assert rates.column("pass_rate").to_pylist() == [hand_n_correct(i) / G for i in range(N_ROWS)]
    data, original = pq.read_table(measured / passrate.DATA_FILE), pq.read_table(questions_parquet)
    assert data.column_names == original.column_names + ["pass_rate", "n_correct", "n_rollouts"]
    assert data.select(original.column_names).equals(original)  # the input rows, unchanged, in order
    assert data.column("pass_rate").to_pylist() == rates.column("pass_rate").to_pylist()
    manifest = json.loads((measured / "manifest.json").read_text())
    assert manifest["complete"] and manifest["answer_column"] == "reward_model.ground_truth"
    assert (manifest["rollouts"], manifest["seed"], manifest["temperature"]) == (G, 0, 0.9)


def test_the_output_ranks_train_and_rank(measured, tmp_path, tiny_model_dir):
    data = measured / passrate.DATA_FILE
    run = tmp_path / "run"
    res = cli("train", data, "-o", run, *model_args(tiny_model_dir), "--reward", "math", "--num-generations", 2,
              "--max-new-tokens", 2, "--prompts-per-step", 2, "--subset-size", 4, "--epochs", 1,
              "--sampler", "ordered", "--keep-order", "--ranking", "column:pass_rate:desc", "--quiet")
    assert res.exit_code == 0, res.output
    oracle = sorted(range(N_ROWS), key=lambda i: (-hand_n_correct(i), i))  # easiest first, ties in data order
    first = json.loads((run / "subsets.jsonl").read_text().splitlines()[0])
    assert first["rows"] == oracle[:4] == [3, 7, 11, 15]
    scores = tmp_path / "scores"
    assert cli("score", data, "-o", scores, *model_args(tiny_model_dir), "--quiet").exit_code == 0
    res = cli("rank", scores, "--data", data, "-o", tmp_path / "ranked.parquet", "--quiet")
    assert res.exit_code == 0, res.output
    ranked = pq.read_table(tmp_path / "ranked.parquet")
    assert {"pass_rate", "angle_rank"} <= set(ranked.column_names)
    rows = [x["index"] - 1000 for x in ranked.column("extra_info").to_pylist()]  # ranked: in angle order
    assert ranked.column("pass_rate").to_pylist() == [hand_n_correct(i) / G for i in rows]


def test_resume_after_interruption_gives_identical_output(tmp_path, tiny_model_dir, questions_parquet,
                                                          monkeypatch):
    from anglerank.model import loading

    monkeypatch.setattr(passrate, "grade", lambda text, ref, fmt: len(text) % 2 == 0)  # varies with sampling
    loaded = loading.load(str(tiny_model_dir), device="cpu", dtype="float32")
    sopt = ScoreOptions(model=str(tiny_model_dir), dtype="float32", device="cpu")
    opt = passrate.PassRateOptions(rollouts=4, max_new_tokens=6, seed=3)

    def run(out, **kw):
        return passrate.run_passrate(questions_parquet, out, options=opt, score_options=sopt, limit=10,
                                     commit_every=2, loaded=loaded, **kw)

    run(tmp_path / "whole")
    real, calls = generation.generate, []

    def stop_at_fifth(*a, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # Ctrl-C while the fifth prompt is sampled
        return real(*a, **kw)

    monkeypatch.setattr(generation, "generate", stop_at_fifth)
    with pytest.raises(Interrupted, match="--resume"):
        run(tmp_path / "cut")
    manifest = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert not manifest["complete"] and manifest["next_row"] == 4 and len(manifest["parts"]) == 2
    monkeypatch.setattr(generation, "generate", real)
    with pytest.raises(ValueError, match="temperature"):
        passrate.run_passrate(questions_parquet, tmp_path / "cut", options=passrate.PassRateOptions(
            rollouts=4, max_new_tokens=6, seed=3, temperature=0.5), score_options=sopt, limit=10,
            commit_every=2, loaded=loaded, resume=True)
    run(tmp_path / "cut", resume=True)
    for name in (passrate.RATES_FILE, passrate.DATA_FILE):
        whole, cut = (pq.read_table(tmp_path / d / name) for d in ("whole", "cut"))
        assert cut.equals(whole), name
    rates = pq.read_table(tmp_path / "whole" / passrate.RATES_FILE)
    assert len(set(rates.column("n_correct").to_pylist())) > 1  # the check above compares real numbers
    assert pq.read_table(tmp_path / "whole" / passrate.DATA_FILE).column("pass_rate").null_count == N_ROWS - 10


def test_passrate_mistakes_are_one_line_errors(tmp_path, tiny_model_dir, questions_parquet):
    from helpers import one_error_line

    base = ["passrate", questions_parquet, "-o", tmp_path / "o", *model_args(tiny_model_dir)]
    one_error_line(cli(*base, "--rollouts", 0), "--rollouts")
    one_error_line(cli(*base, "--answer-column", "nope"), "--answer-column", "nope")
    one_error_line(cli(*base, "--temperature", 0), "--temperature")
    (tmp_path / "s").mkdir()
    one_error_line(cli("validate", questions_parquet, "--pass-rates", tmp_path / "s", *model_args(tiny_model_dir)),
                   "--pass-rates", "not an `anglerank passrate` output")


# ------------------------------------------------------------------ the verdict in validate


def test_validate_prints_the_verdict_from_a_pass_rate_output(measured, questions_parquet, tiny_model_dir,
                                                             tmp_path):
    out = tmp_path / "v.json"
    res = cli("validate", questions_parquet, "--pass-rates", measured, "--samples", N_ROWS, "--max-new-tokens", 2,
              "--group-column", "data_source", "--json", out, *model_args(tiny_model_dir))
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert [r["pass_rate"] for r in report["per_sample"]] == [hand_n_correct(i) / G for i in range(N_ROWS)]
    (agreement,) = report["pass_rate_agreement"]
    scores = [r["score"] for r in report["per_sample"]]
    expect = bootstrap_spearman(scores, [hand_n_correct(i) / G for i in range(N_ROWS)], seed=0)
    assert agreement["overall"] == expect and expect["n"] == N_ROWS
    assert agreement["verdict"] in res.stderr
    assert agreement["verdict"].startswith("on this sample the angle ranking ")
    assert set(agreement["groups"]) == {"demo"} and agreement["partial"]["n"] == N_ROWS
    other = tmp_path / "other.parquet"
    pq.write_table(pq.read_table(questions_parquet).slice(0, 20), other)
    from helpers import one_error_line

    one_error_line(cli("validate", other, "--pass-rates", measured, *model_args(tiny_model_dir)),
                   "--pass-rates", "measured on other data")


# ------------------------------------------------------------------ the verdict on constructed data


def ranks(a):
    return np.argsort(np.argsort(a)).astype(float)  # no ties in the data below


def spearman_by_hand(x, y):
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float(rx @ ry / np.sqrt((rx @ rx) * (ry @ ry)))


def test_verdict_agreeing_and_reversed():
    score = np.linspace(-1.0, 1.0, 30)
    agree = pass_rate_agreement(score, (score + 1) / 2)
    assert agree["overall"]["n"] == 30 and agree["overall"]["spearman"] == pytest.approx(1.0)
    assert agree["overall"]["ci95"] == pytest.approx([1.0, 1.0])
    assert agree["verdict"] == ("on this sample the angle ranking agrees with measured difficulty: "
                                "rho = +1.00, 95% CI [+1.00, +1.00], n = 30")
    rev = pass_rate_agreement(score, (1 - score) / 2)
    assert rev["overall"]["spearman"] == pytest.approx(-1.0) and rev["overall"]["ci95"] == pytest.approx([-1, -1])
    assert rev["verdict"].startswith("on this sample the angle ranking runs against measured difficulty")


def test_verdict_unrelated_orders_are_indistinguishable_from_random():
    score = np.arange(21.0)
    symmetric = pass_rate_agreement(score, (score - 10) ** 2 / 100)  # rho exactly 0 by symmetry
    assert symmetric["overall"]["spearman"] == pytest.approx(0.0, abs=1e-12)
    lo, hi = symmetric["overall"]["ci95"]
    assert lo < 0 < hi
    assert "indistinguishable from a random order: rho = +0.00" in symmetric["verdict"]

    rng = np.random.default_rng(7)
    x, y = rng.normal(size=40), rng.permutation(40) / 40
    got = bootstrap_spearman(x, y, n_boot=500, seed=11)
    idx = np.random.default_rng(11).integers(0, 40, size=(500, 40))
    boot = [_spearman_ties(x[i], y[i]) for i in idx]  # resamples repeat rows: average ranks for the ties
    assert got["spearman"] == pytest.approx(spearman_by_hand(x, y))
    assert got["ci95"] == pytest.approx(list(np.percentile(boot, [2.5, 97.5])))
    v = verdict(got)
    assert ("indistinguishable" in v) == (got["ci95"][0] <= 0 <= got["ci95"][1])


def _spearman_ties(x, y):
    def avg_ranks(a):
        order = np.argsort(a, kind="mergesort")
        r = np.empty(len(a))
        r[order] = np.arange(1, len(a) + 1)
        for v in np.unique(a):  # ties share their mean rank
            r[a == v] = r[a == v].mean()
        return r

    rx, ry = avg_ranks(x), avg_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float(rx @ ry / np.sqrt((rx @ rx) * (ry @ ry)))


def test_verdict_small_or_constant_samples_give_no_interval():
    few = pass_rate_agreement(np.arange(MIN_INTERVAL_N - 1.0), np.arange(MIN_INTERVAL_N - 1.0))
    assert few["overall"]["ci95"] is None and few["overall"]["spearman"] == pytest.approx(1.0)
    assert "too few for a meaningful 95% interval" in few["verdict"] and "CI" not in few["verdict"]
    flat = pass_rate_agreement(np.arange(20.0), [0.0] * 20)
    assert flat["overall"]["spearman"] is None
    assert flat["verdict"].endswith("every prompt has the same pass rate (0.00)")


def test_agreement_within_groups_and_with_a_covariate_partialled_out():
    score = np.arange(24.0)
    kind = ["algebra" if i % 2 else "geometry" for i in range(24)]
    rate = np.where(np.arange(24) % 2 == 1, score, -score) / 24  # agrees within algebra, reversed in geometry
    a = pass_rate_agreement(score, rate, groups=kind)
    assert a["groups"]["algebra"]["spearman"] == pytest.approx(1.0)
    assert a["groups"]["geometry"]["spearman"] == pytest.approx(-1.0)
    assert a["groups"]["algebra"]["n"] == a["groups"]["geometry"]["n"] == 12
    # a covariate that explains the score: length = score + small noise; partial rho by hand from residual ranks
    rng = np.random.default_rng(3)
    length = score + rng.normal(scale=3, size=24)
    rate = rng.permutation(24) / 24
    p = pass_rate_agreement(score, rate, covariate=length)["partial"]
    rx, ry, rz = ranks(score), ranks(rate), ranks(length)

    def resid(a, b):
        b1 = np.c_[np.ones_like(b), b]
        return a - b1 @ np.linalg.lstsq(b1, a, rcond=None)[0]

    ex, ey = resid(rx, rz), resid(ry, rz)
    assert p["spearman"] == pytest.approx(float(ex @ ey / np.sqrt((ex @ ex) * (ey @ ey))))
    assert p["n"] == 24 and p["ci95"][0] < p["spearman"] < p["ci95"][1]


# ------------------------------------------------------------------ our files only


def test_resume_removes_only_our_own_files(tmp_path, tiny_model_dir, questions_parquet, monkeypatch):
    """An interrupted output holding a user's files: --resume continues and leaves them byte-identical."""
    sopt = ScoreOptions(model=str(tiny_model_dir), dtype="float32", device="cpu")
    opt = passrate.PassRateOptions(rollouts=2, max_new_tokens=4, seed=1)
    out = tmp_path / "pr"
    real, calls = generation.generate, []

    def stop_at_third(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(generation, "generate", stop_at_third)
    with pytest.raises(Interrupted):
        passrate.run_passrate(questions_parquet, out, options=opt, score_options=sopt, limit=6, commit_every=2)
    monkeypatch.setattr(generation, "generate", real)
    foreign = {"scores-final.arrow": b"mine", ".draft.tmp": b"draft", "notes.txt": b"keep"}
    for name, data in foreign.items():
        (out / name).write_bytes(data)
    passrate.run_passrate(questions_parquet, out, options=opt, score_options=sopt, limit=6, commit_every=2,
                          resume=True)
    assert {n: (out / n).read_bytes() for n in foreign} == foreign
    assert (out / passrate.RATES_FILE).is_file()


def test_a_foreign_data_file_is_never_replaced(tmp_path, tiny_model_dir, questions_parquet):
    from helpers import one_error_line

    out = tmp_path / "pr"
    out.mkdir()
    (out / passrate.DATA_FILE).write_bytes(b"the user's own data")
    res = cli("passrate", questions_parquet, "-o", out, "--rollouts", 1, "--max-new-tokens", 2, "--limit", 2,
              *model_args(tiny_model_dir))
    one_error_line(res, "data.parquet", "did not write")
    assert (out / passrate.DATA_FILE).read_bytes() == b"the user's own data"


def test_rank_refuses_a_pass_rate_directory_in_one_line(measured, questions_parquet):
    from helpers import one_error_line

    res = cli("rank", measured, "--data", questions_parquet, "-o", measured.parent / "r.parquet")
    one_error_line(res, "not angle scores")
