"""--report-to: TRL's metric names, TensorBoard events read back with TensorBoard's own reader,
a wandb offline run directory, and a missing tracker refused at start-up."""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from anglerank.cli import app
from helpers import HASH_REWARD as REWARD
from anglerank.train import tracking
from anglerank.train.metrics import read_metrics

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")



def _args(data, run, model_dir, reward, *extra):
    return ["train", str(data), "-o", str(run), "--model", str(model_dir), "--dtype", "float32", "--device", "cpu",
            "--reward", reward, "--num-generations", "2", "--max-new-tokens", "3", "--prompts-per-step", "2",
            "--subset-size", "4", "--epochs", "2", "--sigma", "2", "--quiet", *extra]


def test_scalars_use_trl_names_and_drop_non_numbers():
    step = {"type": "step", "step": 3, "reward_mean": 0.5, "reward_std": 0.1, "completion_len_mean": 12.0,
            "clip_fraction": 0.0, "kl": None, "lr": 1e-6, "grad_norm": float("nan"), "reward/correct": 1.0}
    assert tracking.scalars("step", step) == {"reward": 0.5, "reward_std": 0.1, "completions/mean_length": 12.0,
                                              "clip_ratio/region_mean": 0.0, "learning_rate": 1e-6,
                                              "rewards/correct/mean": 1.0}
    epoch = {"type": "epoch", "epoch": 2, "mu": 10.5, "accuracy": 0.25, "angle": 0.6, "rescore_s": 1.5,
             "sampler": "gainrl"}
    assert tracking.scalars("epoch", epoch) == {"gainrl/mu": 10.5, "gainrl/accuracy": 0.25, "gainrl/angle": 0.6,
                                                "gainrl/rescore_s": 1.5, "epoch": 2.0}
    ev = {"type": "eval", "eval_accuracy": 0.5, "eval_accuracy_by": {"gsm8k": 0.75, "math": None}}
    assert tracking.scalars("eval", ev) == {"eval/accuracy": 0.5, "eval/accuracy/gsm8k": 0.75}


def test_unknown_or_missing_tracker_fails_at_start_up(tmp_path, tiny_model_dir, questions_parquet, monkeypatch):
    (tmp_path / "rw.py").write_text(REWARD)
    res = runner.invoke(app, _args(questions_parquet, tmp_path / "a", tiny_model_dir, f"{tmp_path / 'rw.py'}:r",
                                   "--report-to", "mlflow"))
    assert res.exit_code == 2 and "unknown --report-to 'mlflow'" in res.output
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else real(name, *a))
    res = runner.invoke(app, _args(questions_parquet, tmp_path / "b", tiny_model_dir, f"{tmp_path / 'rw.py'}:r",
                                   "--report-to", "trackio"))
    assert res.exit_code == 2 and "pip install trackio" in " ".join(res.output.split())
    assert not (tmp_path / "b" / "metrics.jsonl").exists()  # refused before anything ran


def test_tensorboard_events_hold_the_metrics(tmp_path, tiny_model_dir, questions_parquet):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "rw.py").write_text(REWARD)
    run = tmp_path / "run"
    res = runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, f"{tmp_path / 'rw.py'}:r",
                                   "--report-to", "tensorboard"))
    assert res.exit_code == 0, res.output
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"reward", "reward_std", "learning_rate", "grad_norm", "completions/mean_length", "gainrl/mu",
            "gainrl/accuracy", "gainrl/angle"} <= tags
    steps = read_metrics(run, "step")
    got = [(e.step, e.value) for e in acc.Scalars("reward")]
    assert [s for s, _ in got] == [r["step"] for r in steps]
    assert [v for _, v in got] == pytest.approx([r["reward_mean"] for r in steps], rel=1e-6)
    mus = [(e.step, e.value) for e in acc.Scalars("gainrl/mu")]
    assert [v for _, v in mus] == pytest.approx([r["mu"] for r in read_metrics(run, "epoch")], rel=1e-6)


def test_wandb_offline_run_directory(tmp_path, tiny_model_dir, questions_parquet, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    (tmp_path / "rw.py").write_text(REWARD)
    run = tmp_path / "run"
    res = runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, f"{tmp_path / 'rw.py'}:r",
                                   "--report-to", "wandb", "--epochs", "1"))
    assert res.exit_code == 0, res.output
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb")), list((run / "wandb").iterdir())
