"""Run directories a user can rely on (issue 13): resume from anywhere, refuse changed data, no
dead end before the first checkpoint, checkpoints without the optimiser, a torn metrics line."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from anglerank.cli import app
from helpers import HASH_REWARD as REWARD
from anglerank.train import checkpoint
from anglerank.train.config import load_toml
from anglerank.train.metrics import read_metrics

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")

# broken while the file BROKEN exists next to it (one module for the whole test: imports are cached)
FLAKY = ("import os\n" + REWARD.replace("    return", "    if os.path.exists(os.path.join(os.path.dirname(__file__), "
         "'BROKEN')):\n        raise ValueError('broken on purpose')\n    return"))


def _args(data, run, model_dir, reward, *extra):
    return ["train", str(data), "-o", str(run), "--model", str(model_dir), "--dtype", "float32", "--device", "cpu",
            "--reward", reward, "--num-generations", "2", "--max-new-tokens", "3", "--prompts-per-step", "2",
            "--subset-size", "4", "--sampler", "uniform", "--epochs", "1", "--quiet", *extra]


def _text(res) -> str:
    return " ".join(res.output.split())


def test_resume_from_another_directory(tmp_path, tiny_model_dir, questions_parquet, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "rw.py").write_text(REWARD)
    (work / "q.parquet").write_bytes(questions_parquet.read_bytes())
    monkeypatch.chdir(work)
    res = runner.invoke(app, _args("q.parquet", "run", tiny_model_dir, "rw.py:r"))
    assert res.exit_code == 0, res.output
    saved = load_toml(work / "run" / "config.toml")
    assert saved["train_data"] == [str(work / "q.parquet")] and saved["reward"] == [f"{work / 'rw.py'}:r"]
    monkeypatch.chdir(tmp_path)  # elsewhere: the relative paths given at the start no longer resolve here
    res = runner.invoke(app, ["train", "--resume", str(work / "run"), "--epochs", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert [r["epoch"] for r in read_metrics(work / "run", "epoch")] == [1, 2]


def test_resume_refuses_changed_data_unless_forced(tmp_path, tiny_model_dir, questions_parquet):
    (tmp_path / "rw.py").write_text(REWARD)
    run = tmp_path / "run"
    assert runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, f"{tmp_path / 'rw.py'}:r")).exit_code == 0
    table = pq.read_table(questions_parquet)
    pq.write_table(table.take(list(range(22, -1, -1))), questions_parquet)  # the same rows reversed: other data
    res = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2", "--quiet"])
    assert res.exit_code == 2, res.output
    assert "the data changed" in _text(res) and "questions.parquet" in _text(res) and "--force" in _text(res)
    res = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2", "--force", "--quiet"])
    assert res.exit_code == 0, res.output


def test_no_dead_end_before_the_first_checkpoint(tmp_path, tiny_model_dir, questions_parquet):
    rw, flag = tmp_path / "rw.py", tmp_path / "BROKEN"
    rw.write_text(FLAKY)
    flag.touch()
    run = tmp_path / "run"
    res = runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, f"{rw}:r"))
    assert res.exit_code == 2 and "reward function 'r' raised ValueError: broken on purpose" in _text(res)
    assert (run / "config.toml").exists() and checkpoint.latest_checkpoint(run) is None
    flag.unlink()
    res = runner.invoke(app, ["train", "--resume", str(run), "--quiet"])  # resume: starts afresh
    assert res.exit_code == 0, res.output
    assert checkpoint.latest_checkpoint(run) is not None

    flag.touch()
    run2 = tmp_path / "run2"
    assert runner.invoke(app, _args(questions_parquet, run2, tiny_model_dir, f"{rw}:r")).exit_code == 2
    flag.unlink()
    res = runner.invoke(app, _args(questions_parquet, run2, tiny_model_dir, f"{rw}:r"))  # the plain rerun works too
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, _args(questions_parquet, run2, tiny_model_dir, f"{rw}:r"))  # a finished run is kept
    assert res.exit_code == 2 and "--resume" in _text(res)


def test_save_only_model_checkpoints_resume_with_a_fresh_optimiser(tmp_path, tiny_model_dir, questions_parquet):
    (tmp_path / "rw.py").write_text(REWARD)
    full, slim = tmp_path / "full", tmp_path / "slim"
    for run, extra in ((full, ()), (slim, ("--save-only-model",))):
        res = runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, f"{tmp_path / 'rw.py'}:r", *extra))
        assert res.exit_code == 0, res.output

    def size(ck):
        return sum(p.stat().st_size for p in ck.iterdir())

    a, b = checkpoint.latest_checkpoint(full), checkpoint.latest_checkpoint(slim)
    assert (a / "optimizer.pt").exists() and not (b / "optimizer.pt").exists()
    assert size(b) < 0.6 * size(a)  # AdamW keeps two float32 moments per weight
    res = runner.invoke(app, ["train", "--resume", str(slim), "--epochs", "2"])
    assert res.exit_code == 0, res.output
    assert "fresh optimiser" in _text(res)


def test_plot_skips_a_torn_last_line(tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "r"
    run.mkdir()
    recs = [{"type": "step", "step": i + 1, "epoch": 1, "reward_mean": 0.1, "accuracy": 0.1} for i in range(3)]
    good = "".join(json.dumps(r) + "\n" for r in recs)
    (run / "metrics.jsonl").write_text(good + '{"type": "step", "st')  # killed mid-line
    res = runner.invoke(app, ["plot", str(run)])
    assert res.exit_code == 0, res.output
    assert "cut short" in _text(res) and (run / "curves.png").exists()
    (run / "metrics.jsonl").write_text('{"type": "st\n' + good)  # a bad line that is not the last one
    res = runner.invoke(app, ["plot", str(run)])
    assert res.exit_code == 2 and "line 1 is not JSON" in _text(res)


def test_answer_column_problems_are_named(tmp_path, tiny_model_dir, questions_parquet):
    import pyarrow as pa

    table = pq.read_table(questions_parquet)
    null_gt = pa.array([{"ground_truth": None, "style": "rule"}] * table.num_rows,
                       table.schema.field("reward_model").type)
    data = tmp_path / "null_answers.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("reward_model"), "reward_model", null_gt), data)
    base = ["train", str(data), "-o", str(tmp_path / "r"), "--model", str(tiny_model_dir), "--device", "cpu",
            "--quiet"]
    res = runner.invoke(app, base)  # found by default, but empty: say so rather than "pass --answer-column"
    assert res.exit_code == 2 and "every value of reward_model.ground_truth is null" in _text(res), res.output
    res = runner.invoke(app, [*base, "--answer-column", "reward_model.ground_truth"])
    assert res.exit_code == 2, res.output
    assert "23 without a reference answer in reward_model.ground_truth" in _text(res)
    res = runner.invoke(app, [*base, "--answer-column", "reward_model.nope"])
    assert res.exit_code == 2 and "reward_model.nope" in _text(res) and "not found" in _text(res)


def test_a_run_directory_has_one_trainer_at_a_time(tmp_path, tiny_model_dir, questions_parquet):
    from anglerank.data.lock import output_lock

    (tmp_path / "rw.py").write_text(REWARD)
    run = tmp_path / "run"
    with output_lock(run, what="train run"):  # as if another process were training here
        import subprocess
        import sys

        res = subprocess.run([sys.executable, "-m", "anglerank.cli", *_args(questions_parquet, run, tiny_model_dir,
                                                                          f"{tmp_path / 'rw.py'}:r")],
                             capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "in use by another process" in res.stderr, res.stderr
    assert not (run / "metrics.jsonl").exists()
