"""`anglerank train` on a small, shared machine: threads chosen from the free cores, the --smoke preset,
--save-total-limit (TRL's name; --keep-checkpoints still works) and the start-up line giving a checkpoint's
size, computed from the model."""

from __future__ import annotations

import re

import pytest
import torch
from typer.testing import CliRunner

from anglerank.cli import app
from anglerank.train import setup
from anglerank.train.config import SMOKE, TrainConfig, load_toml
from helpers import HASH_REWARD, one_error_line

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ threads

def test_threads_are_the_free_cores_not_every_core(monkeypatch):
    monkeypatch.setattr(setup, "usable_cores", lambda: 4)
    monkeypatch.setattr(setup, "busy_cores", lambda cores: 3)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)  # torch's default: every core
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    chosen = setup.cpu_threads(None)
    assert chosen.n == 1 and chosen.message() == "using 1 thread (of 4 cores; 3 busy)"
    monkeypatch.setattr(setup, "busy_cores", lambda cores: 0)
    assert setup.cpu_threads(None).message() == "using 4 threads (of 4 cores; 0 busy)"
    given = setup.cpu_threads(3)  # --threads wins, busy or not
    assert given.n == 3 and given.message() == "using 3 threads (of 4 cores; 0 busy; --threads)"


def test_a_lower_thread_setting_of_the_caller_is_kept(monkeypatch):
    monkeypatch.setattr(setup, "usable_cores", lambda: 4)
    monkeypatch.setattr(setup, "busy_cores", lambda cores: 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    chosen = setup.cpu_threads(None)
    assert chosen.n == 2 and chosen.message() == "using 2 threads (of 4 cores; 1 busy; OMP_NUM_THREADS=2)"


def test_busy_cores_counts_other_processes_cpu_time(monkeypatch):
    """Machine-wide busy ticks over the window, as a number of cores (here 2 CPUs, one fully busy)."""
    samples = iter([(1000, 4000, 2), (1030, 4060, 2)])  # 30 of 60 ticks busy on 2 CPUs: 1 core
    monkeypatch.setattr(setup, "_cpu_times", lambda: next(samples))
    assert setup.busy_cores(2, window=0.01) == 1
    samples = iter([(1000, 4000, 4), (1058, 4060, 4)])  # 58 of 60 on 4 CPUs: 3.9 cores, at most the usable 2
    monkeypatch.setattr(setup, "_cpu_times", lambda: next(samples))
    assert setup.busy_cores(2, window=0.01) == 2
    monkeypatch.undo()
    assert 0 <= setup.busy_cores(setup.usable_cores(), window=0.05) <= setup.usable_cores()  # the real /proc/stat


# ------------------------------------------------------------ checkpoint size

def test_checkpoint_size_is_parameters_times_bytes_plus_adamw_moments(tiny_model):
    n = sum(p.numel() for p in tiny_model.parameters())
    opt = torch.optim.AdamW(tiny_model.parameters())
    assert setup.checkpoint_bytes(tiny_model, opt) == (n, 4 * n, 8 * n + 4 * len(list(tiny_model.parameters())))
    assert setup.checkpoint_bytes(tiny_model, None) == (n, 4 * n, 0)  # --save-only-model


# ----------------------------------------------------- names, aliases, smoke

def test_save_total_limit_is_the_name_and_keep_checkpoints_an_alias(tmp_path):
    assert TrainConfig().save_total_limit == 2
    assert TrainConfig(keep_checkpoints=5).save_total_limit == 5
    old = tmp_path / "config.toml"  # a run saved under the earlier name still resumes
    old.write_text("keep_checkpoints = 3\n")
    assert load_toml(old) == {"save_total_limit": 3}


def _run(data, run, model_dir, reward, *extra):
    return runner.invoke(app, ["train", str(data), "-o", str(run), "--model", str(model_dir), "--dtype", "float32",
                               "--device", "cpu", "--reward", f"{reward}:r", "--eval-data", str(data),
                               "--smoke", *extra])


@pytest.fixture
def reward(tmp_path):
    p = tmp_path / "hash_reward.py"
    p.write_text(HASH_REWARD)
    return p


def test_smoke_run_is_small_keeps_one_checkpoint_and_says_how_large(tmp_path, tiny_model_dir, questions_parquet,
                                                                   reward):
    run = tmp_path / "smoke"
    res = _run(questions_parquet, run, tiny_model_dir, reward)
    assert res.exit_code == 0, res.output
    saved = load_toml(run / "config.toml")
    assert {k: saved[k] for k in SMOKE} == SMOKE
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")] == ["step-0000004"]
    out = " ".join(res.output.split())
    assert re.search(r"using \d+ threads? \(of \d+ cores; \d+ busy", out), out
    size = re.search(r"each checkpoint: about ([\d.]+) (kB|MB|GB)", out)
    assert size and "the newest 1 kept (--save-total-limit)" in out, out
    ck = run / "checkpoints" / "step-0000004"
    real = (ck / "model.safetensors").stat().st_size + (ck / "optimizer.pt").stat().st_size
    predicted = float(size[1]) * {"kB": 1e3, "MB": 1e6, "GB": 1e9}[size[2]]
    assert abs(predicted - real) < 0.05 * real + 20_000, (predicted, real)  # file headers and pickling


def test_flags_override_smoke_and_keep_checkpoints_still_works(tmp_path, tiny_model_dir, questions_parquet, reward):
    run = tmp_path / "smoke2"
    res = _run(questions_parquet, run, tiny_model_dir, reward, "--keep-checkpoints", "2", "--num-generations", "3",
               "--quiet")
    assert res.exit_code == 0, res.output
    saved = load_toml(run / "config.toml")
    assert saved["save_total_limit"] == 2 and saved["num_generations"] == 3 and saved["epochs"] == SMOKE["epochs"]
    kept = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert kept == ["step-0000002", "step-0000004"]
    one_error_line(runner.invoke(app, ["train", "--resume", str(run), "--smoke"]), "--smoke")
