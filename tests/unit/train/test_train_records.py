"""Per-prompt training records (prompts.jsonl), their plot and inspect summary, and dynamic sampling
(--filter-groups) on a tiny in-process model with deterministic rewards."""

from __future__ import annotations

import json
import os
import signal
import statistics
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from anglerank.cli import app
from anglerank.errors import UserError
from anglerank.model import generation
from anglerank.train import checkpoint
from anglerank.train.config import TrainConfig, load_toml
from anglerank.train.metrics import read_metrics
from anglerank.train.records import RECORDS_FILE, read_records

runner = CliRunner()
N, G, P = 23, 2, 2
IDS = set(range(1000, 1000 + N))

# Rewards 0, 0.5 or 1 from the completion's text (1 counts as correct); every call's rewards are logged next
# to the file, so the records can be compared with what the reward function returned.
LOGGED = """import json, os
def r(prompts, completions, extra_info=None, **k):
    out = [(sum(map(ord, c)) % 3) / 2 for c in completions]
    with open(os.path.join(os.path.dirname(__file__), "returned.jsonl"), "a") as fh:
        fh.write(json.dumps({"ids": [e["index"] for e in extra_info], "rewards": out}) + "\\n")
    return out
"""
# Two of three prompts get the same reward for every completion (a zero-variance group, all correct); the
# others alternate 0, 1 within each group (groups are consecutive, G even), so they always carry signal.
FILTER = """def r(prompts, completions, extra_info=None, **k):
    return [1.0 if extra_info[j]["index"] % 3 else float(j % 2) for j in range(len(completions))]
"""


def _args(data, run, model_dir, reward, *extra, sampler="uniform"):
    return ["train", str(data), "-o", str(run), "--model", str(model_dir), "--dtype", "float32", "--device", "cpu",
            "--reward", reward, "--num-generations", str(G), "--max-new-tokens", "3", "--prompts-per-step", str(P),
            "--sampler", sampler, *extra]


PLAIN = ("--subset-size", "4", "--quiet")
FILTERED = ("--subset-size", "6", "--filter-groups", "--max-num-gen-batches", "3")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    qs = [f"Tom has {i} apples and buys {i + 3} more. How many apples does he have?" for i in range(N)]
    path = tmp_path_factory.mktemp("data") / "q.parquet"
    pq.write_table(pa.table({"prompt": [[{"role": "user", "content": q}] for q in qs],
                             "extra_info": [{"index": 1000 + i} for i in range(N)]}), path)
    return path


def _reward(folder, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rw.py").write_text(text)
    return f"{folder / 'rw.py'}:r"


@pytest.fixture(scope="module")
def plain(tmp_path_factory, tiny_model_dir, data, one_thread):
    """A two-epoch run without filtering; its reward function's returned values logged."""
    d = tmp_path_factory.mktemp("plain")
    res = runner.invoke(app, _args(data, d / "run", tiny_model_dir, _reward(d / "rw", LOGGED), "--epochs", "2",
                                   *PLAIN))
    assert res.exit_code == 0, res.output
    return d


@pytest.fixture(scope="module")
def filtered(tmp_path_factory, tiny_model_dir, data, one_thread):
    """A two-epoch --filter-groups run (its output kept: the cap is logged there)."""
    d = tmp_path_factory.mktemp("filtered")
    res = runner.invoke(app, _args(data, d / "run", tiny_model_dir, _reward(d / "rw", FILTER), "--epochs", "2",
                                   *FILTERED))
    assert res.exit_code == 0, res.output
    return d, res.output


def _by_step(recs):
    out = {}
    for r in recs:
        out.setdefault(r["step"], []).append(r)
    return out


def test_records_hold_one_line_per_drawn_prompt_per_step(plain):
    run = plain / "run"
    header, recs = read_records(run)
    assert header["n_prompts"] == N and header["num_generations"] == G and header["filter_groups"] is False
    # every draw of subsets.jsonl, step by step, at its rank; epochs counted from 1 as in metrics.jsonl
    subsets = [json.loads(x) for x in (run / "subsets.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs] == [i for s in subsets for i in s["ids"]]
    assert [r["rank"] for r in recs] == [k for s in subsets for k in s["ranks"]]
    assert {r["id"] for r in recs} <= IDS
    steps = read_metrics(run, "step")
    assert sorted(_by_step(recs)) == [s["step"] for s in steps] == [1, 2, 3, 4]
    assert all(len(v) == P and {r["epoch"] for r in v} == {s["epoch"]} for s, v in zip(steps, _by_step(recs).values()))
    # the rewards are those the reward function returned, prompt by prompt
    calls = [json.loads(x) for x in (plain / "rw" / "returned.jsonl").read_text().splitlines()]
    assert [r for c in calls for r in c["rewards"]] == [x for r in recs for x in r["rewards"]]
    assert [i for c in calls for i in c["ids"][::G]] == [r["id"] for r in recs]
    for r in recs:
        assert len(r["rewards"]) == len(r["lengths"]) == G and all(0 <= n <= 3 for n in r["lengths"])
        assert r["correct"] == sum(x >= 1.0 for x in r["rewards"])  # the curriculum's rule, threshold 1
        assert isinstance(r["angle"], float) and r["dropped"] is False
    # the epoch accuracy the curriculum used is the records' share of correct completions
    for e in read_metrics(run, "epoch"):
        mine = [r for r in recs if r["epoch"] == e["epoch"]]
        assert e["accuracy"] == pytest.approx(sum(r["correct"] for r in mine) / (G * len(mine)))
    # rollouts and optimiser steps are counted for every run
    assert [s["rollouts"] for s in steps] == [P * G] * 4
    assert [s["rollouts_total"] for s in steps] == [4, 8, 12, 16]
    assert [s["optimizer_steps"] for s in steps] == [1, 2, 3, 4]


def test_torn_last_line_is_skipped_and_resume_continues_exactly(plain, tmp_path, tiny_model_dir, data):
    run = tmp_path / "run"
    rw = _reward(tmp_path / "rw", LOGGED)
    assert runner.invoke(app, _args(data, run, tiny_model_dir, rw, "--epochs", "1", *PLAIN)).exit_code == 0
    with open(run / RECORDS_FILE, "a") as fh:  # a kill while a line was written
        fh.write('{"step": 3, "epoch": 2, "id": 10')
    with pytest.warns(UserWarning, match="cut short"):
        _, recs = read_records(run)
    assert len(recs) == 4
    res = runner.invoke(app, ["inspect", str(run)])
    assert res.exit_code == 0 and "cut short" in res.output
    res = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (run / RECORDS_FILE).read_text() == (plain / "run" / RECORDS_FILE).read_text()


def test_plot_draws_the_per_prompt_figures(plain, tmp_path):
    res = runner.invoke(app, ["plot", str(plain / "run")])
    assert res.exit_code == 0, res.output
    for name in ("curves.png", "prompts.png"):
        assert (plain / "run" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "fig.png"
    assert runner.invoke(app, ["plot", str(plain / "run"), "-o", str(out)]).exit_code == 0
    assert out.exists() and (tmp_path / "fig-prompts.png").exists()


def test_inspect_summarises_a_run(plain):
    run = plain / "run"
    res = runner.invoke(app, ["inspect", str(run)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for label in ("prompts drawn", "prompts never drawn", "draws per prompt", "re-draws within 3 epochs",
                  "zero-variance groups", "all correct", "all wrong", "accuracy by rank decile", "first 1/3",
                  "last 1/3"):
        assert label in text, label
    res = runner.invoke(app, ["inspect", str(run), "--json"])
    s = json.loads(res.stdout)
    _, recs = read_records(run)
    counts = Counter(r["id"] for r in recs)
    c = s["coverage"]
    assert (c["drawn"], c["never_drawn"]) == (len(counts), N - len(counts))
    assert (c["draws_min"], c["draws_median"], c["draws_max"]) == (min(counts.values()),
                                                                    statistics.median(counts.values()),
                                                                    max(counts.values()))
    epochs_of = {}
    soon = 0
    for r in recs:  # a draw whose prompt was drawn 1 to 3 epochs before
        soon += any(1 <= r["epoch"] - e <= 3 for e in epochs_of.get(r["id"], []))
        epochs_of.setdefault(r["id"], []).append(r["epoch"])
    assert c["redraw_share"] == pytest.approx(soon / len(recs))
    flat = [r for r in recs if len(set(r["rewards"])) == 1]
    z = s["zero_variance"]
    assert z["zero_variance"] == pytest.approx(len(flat) / len(recs))
    assert z["all_correct"] == pytest.approx(sum(r["correct"] == G for r in flat) / len(recs))
    assert z["all_wrong"] == pytest.approx(sum(r["correct"] == 0 for r in flat) / len(recs))
    first = [r for r in recs if r["step"] <= 4 / 3]
    for d in range(10):
        mine = [r for r in first if r["rank"] * 10 // N == d]
        want = sum(r["correct"] for r in mine) / (G * len(mine)) if mine else None
        assert s["decile_accuracy"]["first_third"][d] == (pytest.approx(want) if mine else None)


def test_filter_groups_drops_zero_variance_groups_and_refills(filtered):
    d, output = filtered
    run = d / "run"
    header, recs = read_records(run)
    assert header["filter_groups"] is True
    steps, per_step = read_metrics(run, "step"), _by_step(recs)
    assert len(steps) == 6  # 2 epochs of 6 prompts in steps of 2: the step count stays
    total = 0
    for s in steps:
        mine = per_step[s["step"]]
        kept = [r for r in mine if not r["dropped"]]
        # a group is dropped exactly when its rewards were all equal
        assert all(r["dropped"] == (r["id"] % 3 != 0) == (len(set(r["rewards"])) == 1) for r in mine)
        assert (s["groups_kept"], s["groups_dropped"]) == (len(kept), len(mine) - len(kept))
        assert s["rollouts"] == G * len(mine) and s["trained_sequences"] == G * len(kept)
        total += s["rollouts"]
        assert s["rollouts_total"] == total
        assert 1 <= s["gen_batches"] <= 3  # the cap
        if len(kept) < P:  # short only when the cap was hit (and then logged)
            assert s["filter_cap_hit"] and s["gen_batches"] == 3
        else:
            assert len(kept) == P and not s["filter_cap_hit"]
    assert any(s["filter_cap_hit"] for s in steps) and any(s["gen_batches"] > 1 and s["groups_kept"] == P
                                                           for s in steps)
    assert "--max-num-gen-batches 3 reached" in " ".join(output.split())
    # an epoch starts with its subset and never trains a prompt twice; the refills are the extra rollouts
    subsets = [json.loads(x) for x in (run / "subsets.jsonl").read_text().splitlines()]
    for e, sub in enumerate(subsets, start=1):
        ids = [r["id"] for r in recs if r["epoch"] == e]
        assert ids[: len(sub["ids"])] == sub["ids"] and len(set(ids)) == len(ids) > len(sub["ids"])
    assert sum(s["rollouts"] for s in steps) > 6 * P * G
    # the curriculum's accuracy covers every group drawn, dropped ones included
    for e in read_metrics(run, "epoch"):
        mine = [r for r in recs if r["epoch"] == e["epoch"]]
        assert e["accuracy"] == pytest.approx(sum(r["correct"] for r in mine) / (G * len(mine)))


def test_filter_groups_resume_after_ctrl_c_in_a_refill_equals_uninterrupted(filtered, tmp_path, tiny_model_dir,
                                                                           data, monkeypatch):
    d, _ = filtered
    steps = read_metrics(d / "run", "step")
    assert steps[1]["gen_batches"] >= 2
    call, count = steps[0]["gen_batches"] + 2, {"n": 0}  # the second rollout batch of step 2
    orig = generation.generate

    def interrupting(*a, **k):
        count["n"] += 1
        if count["n"] == call:
            os.kill(os.getpid(), signal.SIGINT)
        return orig(*a, **k)

    run = tmp_path / "run"
    rw = _reward(tmp_path / "rw", FILTER)
    with monkeypatch.context() as m:
        m.setattr(generation, "generate", interrupting)
        res = runner.invoke(app, _args(data, run, tiny_model_dir, rw, "--epochs", "2", *FILTERED, "--quiet"))
    assert res.exit_code == 130, res.output
    state = json.loads((checkpoint.latest_checkpoint(run) / "trainer_state.json").read_text())
    assert state["run"]["global_step"] == 1 and state["run"]["epoch_cursor"] > P
    res = runner.invoke(app, ["train", "--resume", str(run), "--quiet"])
    assert res.exit_code == 0, res.output
    assert (run / RECORDS_FILE).read_text() == (d / "run" / RECORDS_FILE).read_text()
    assert [s["rollouts_total"] for s in read_metrics(run, "step")] == [s["rollouts_total"] for s in steps]


def test_max_num_gen_batches_must_be_a_count():
    with pytest.raises(UserError, match="--max-num-gen-batches"):
        TrainConfig(max_num_gen_batches=-1)


@pytest.mark.parametrize("sampler", ["gainrl", "ordered"])
def test_filter_groups_with_ranked_samplers(sampler, tmp_path, tiny_model_dir, data):
    run = tmp_path / "run"
    res = runner.invoke(app, _args(data, run, tiny_model_dir, _reward(tmp_path / "rw", FILTER), "--epochs", "1",
                                   "--subset-size", "6", "--filter-groups", "--quiet", sampler=sampler))
    assert res.exit_code == 0, res.output
    assert load_toml(run / "config.toml")["sampler"] == sampler
    _, recs = read_records(run)
    assert all(0 <= r["rank"] < N and r["dropped"] == (len(set(r["rewards"])) == 1) for r in recs)
    assert len({r["id"] for r in recs}) == len(recs)  # one epoch: no prompt twice
    for s in read_metrics(run, "step"):
        assert s["groups_kept"] == P or s["filter_cap_hit"] or s["filter_exhausted"]
        assert s["rollouts"] == G * sum(r["step"] == s["step"] for r in recs)
