"""Nothing non-finite reaches the weights (issue 13, item 1).

A reward of inf / -inf / NaN is an error naming the reward function and the data
row; a non-finite loss or gradient norm skips the update (counted), several in a row
stop the run, and no checkpoint is ever written with non-finite weights.
"""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from anglerank.cli import app
from anglerank.rewards import NonFiniteReward, combine_rewards
from anglerank.train import checkpoint, grpo
from anglerank.train.metrics import read_metrics

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_combine_rewards_refuses_non_finite_values(bad):
    def shaky(prompts, completions, **kw):
        return [1.0, bad, None]

    with pytest.raises(NonFiniteReward, match="'shaky' returned .* for completion 1") as info:
        combine_rewards([shaky], None, None, ["a", "b", "c"])
    assert info.value.index == 1 and info.value.func == "shaky"


def _args(data, run, model_dir, reward, *extra):
    return ["train", str(data), "-o", str(run), "--model", str(model_dir), "--dtype", "float32", "--device", "cpu",
            "--reward", reward, "--num-generations", "2", "--max-new-tokens", "4", "--prompts-per-step", "2",
            "--subset-size", "4", "--lr", "1e-3", "--quiet", *extra]


def test_infinite_reward_stops_the_run_naming_function_and_row(tmp_path, tiny_model_dir, questions_parquet):
    rf = tmp_path / "r.py"
    rf.write_text("def boom(prompts, completions, **kw):\n"
                  "    return [float('inf') if i == 3 else 0.5 * i for i in range(len(completions))]\n")
    run = tmp_path / "run"
    res = runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, f"{rf}:boom", "--epochs", "1"))
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert "'boom' returned inf" in out and "data row" in out
    assert checkpoint.latest_checkpoint(run) is None  # nothing was trained, nothing saved


def test_non_finite_loss_skips_the_update_and_repeated_ones_stop_the_run(tmp_path, tiny_model_dir,
                                                                          questions_parquet, monkeypatch):
    rf = tmp_path / "r.py"
    rf.write_text("def varied(prompts, completions, **kw):\n    return [float(i % 2) for i in range(len(completions))]\n")
    real = grpo.grpo_loss

    def nan_loss(*a, **k):
        loss, m = real(*a, **k)
        return loss * math.nan, m

    monkeypatch.setattr(grpo, "grpo_loss", nan_loss)
    run = tmp_path / "two"
    res = runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, f"{rf}:varied", "--epochs", "1"))
    assert res.exit_code == 0, res.output  # two bad steps: skipped, under the limit of three in a row
    steps = read_metrics(run, "step")
    assert [s["skipped_updates"] for s in steps] == [1, 1]
    from safetensors.torch import load_file

    before, after = load_file(str(tiny_model_dir / "model.safetensors")), \
        load_file(str(checkpoint.latest_checkpoint(run) / "model.safetensors"))
    for name, t in after.items():  # no update reached the weights, and they are finite
        assert torch.isfinite(t).all() and torch.equal(t, before[name]), name

    res = runner.invoke(app, _args(questions_parquet, tmp_path / "three", tiny_model_dir, f"{rf}:varied",
                                   "--epochs", "2"))
    assert res.exit_code == 2 and "training diverged" in res.output, res.output


def test_an_out_of_memory_backoff_while_scoring_is_a_warning_line(questions_parquet, tiny_model_dir, tmp_path,
                                                                  monkeypatch):
    """The angle scoring before training runs out of memory on its big batches: it halves them, finishes, and the
    run says so in one ``warning:`` line (not a Python RuntimeWarning)."""
    import warnings

    from anglerank.model import hooks
    from helpers import HASH_REWARD

    run_until, rows = hooks.run_until_captured, []

    def limited(model, ids, mask, *a, **k):
        if ids.shape[0] > 4:  # the scorer's batches; training's micro-batches are 2 sequences
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        rows.append(ids.shape[0])
        return run_until(model, ids, mask, *a, **k)

    monkeypatch.setattr(hooks, "run_until_captured", limited)
    (tmp_path / "r.py").write_text(HASH_REWARD)
    args = [a for a in _args(questions_parquet, tmp_path / "run", tiny_model_dir, f"{tmp_path / 'r.py'}:r",
                             "--epochs", "1", "--micro-batch-size", "2", "--score-batch-tokens", "4096")
            if a != "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert rows and max(rows) <= 4
    lines = [ln.strip() for ln in res.output.splitlines() if "out of memory" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: out of memory"), res.output
