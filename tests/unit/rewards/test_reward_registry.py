"""The registry of built-in rewards: a reward registered here, in this file alone, is usable by name in
``load_reward`` and ``anglerank train``, and the trainer reads what it needs from its spec (the columns it
reads, whether it decides "correct"), never from its name."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from anglerank.cli import app
from anglerank.rewards import ANSWER, REGISTRY, RewardError, load_reward, register, registered
from anglerank.rewards.code import CodeAllReward, CodeReward, code_reward
from anglerank.rewards.math import MathReward
from anglerank.train.config import TrainConfig
from anglerank.train.metrics import read_metrics
from anglerank.train.records import read_records
from helpers import one_error_line

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")
N, G = 8, 2


def length(prompts, completions, **columns):
    """Short completions earn more."""
    return [1 / (1 + len(c)) for c in completions]


def verdict(prompts, completions, label=None, **columns):
    """A verifier that needs no completion: 'yes' rows are right, the rest wrong."""
    return [float(x == "yes") for x in label]


def answered(prompts, completions, answer=None, **columns):
    return [0.5] * len(completions)


class LengthReward:
    columns: dict = {}
    decides_correct = False

    @classmethod
    def from_settings(cls, settings):
        return length


class VerdictReward:
    columns = {"label": "per row, 'yes' or 'no'"}
    decides_correct = True

    @classmethod
    def from_settings(cls, settings):
        return verdict


class AnsweredReward:
    columns = {ANSWER: "the reference answer"}
    decides_correct = False

    @classmethod
    def from_settings(cls, settings):
        return answered


@pytest.fixture
def registered_here():
    """The three rewards of this file, registered for one test and gone after it."""
    names = {"length": LengthReward, "verdict": VerdictReward, "answered": AnsweredReward}
    for name, cls in names.items():
        register(name)(cls)
    try:
        yield
    finally:
        for name in names:
            REGISTRY.classes.pop(name, None)


def _data(path, **columns):
    """N prompts (ids 1000..) with the given extra columns; no answer column unless given."""
    qs = [f"Tom has {i} apples and buys {i + 3} more. How many apples does he have?" for i in range(N)]
    pq.write_table(pa.table({"prompt": [[{"role": "user", "content": q}] for q in qs],
                             "extra_info": [{"index": 1000 + i} for i in range(N)], **columns}), path)
    return path


def _train(data, run, model_dir, *rewards, extra=()):
    args = ["train", str(data), "-o", str(run), "--model", str(model_dir), "--dtype", "float32", "--device", "cpu",
            "--num-generations", str(G), "--max-new-tokens", "3", "--prompts-per-step", "2", "--subset-size", "4",
            "--sampler", "uniform", "--epochs", "1", "--quiet", *extra]
    for r in rewards:
        args += ["--reward", r]
    return runner.invoke(app, args)


def test_builtin_rewards_declare_what_they_need():
    assert REGISTRY.names() == ["code", "code_all", "math"]
    assert set(MathReward.columns) == {ANSWER} and MathReward.decides_correct
    for cls in (CodeReward, CodeAllReward):
        assert set(cls.columns) == {"tests"} and not cls.decides_correct
    with pytest.raises(RewardError) as ei:  # what code_reward says without tests is what its spec declares
        code_reward(None, ["x"])
    assert str(ei.value) == f"the code reward needs a 'tests' column: {CodeReward.columns['tests']}"
    assert registered(["math", " builtin:code_all ", "my_rewards.py:f", "pkg.mod:math"]) == [MathReward,
                                                                                          CodeAllReward]
    assert TrainConfig(reward=["x.py:f", "code"]).reward_specs == [CodeReward]


def test_a_name_is_registered_once():
    with pytest.raises(RuntimeError, match="two rewards registered as 'math'"):
        register("math")(type("Other", (), {}))


def test_a_reward_registered_here_loads_by_name(registered_here):
    assert load_reward("length") is length and load_reward("builtin:length", answer_format="any") is length
    assert "length" in REGISTRY.names()
    with pytest.raises(RewardError, match="available: answered, code, code_all, length, math, verdict"):
        load_reward("builtin:nope")
    assert TrainConfig(reward=["length", "math"]).reward_specs == [LengthReward, MathReward]


def test_the_registry_is_left_as_it_was():
    assert "length" not in REGISTRY.names()
    with pytest.raises(RewardError, match="unknown built-in reward 'length'"):
        load_reward("builtin:length")


def test_a_reward_that_needs_nothing_trains_on_data_without_answers(registered_here, tmp_path, tiny_model_dir):
    data = _data(tmp_path / "q.parquet")  # no answer column: the math reward would refuse this data
    run = tmp_path / "run"
    res = _train(data, run, tiny_model_dir, "length", extra=("--correct-threshold", "0.25"))
    assert res.exit_code == 0, res.output
    _, recs = read_records(run)
    assert len(recs) == 4
    for r in recs:  # not a verifier: the total reward decides
        assert all(0 < x <= 1 for x in r["rewards"]) and r["correct"] == sum(x >= 0.25 for x in r["rewards"])
    assert all("reward/length" in s for s in read_metrics(run, "step"))  # a lone non-verifier keeps its own line


def test_a_verifier_needs_its_column_and_decides_correct(registered_here, tmp_path, tiny_model_dir):
    (tmp_path / "one.py").write_text("def one(prompts, completions, **k):\n    return [1.0] * len(completions)\n")
    one = f"{tmp_path / 'one.py'}:one"
    res = _train(_data(tmp_path / "bare.parquet"), tmp_path / "bare", tiny_model_dir, "verdict", one)
    one_error_line(res, f"the verdict reward needs a 'label' column: {VerdictReward.columns['label']}")

    labels = ["yes" if i % 2 == 0 else "no" for i in range(N)]
    run = tmp_path / "run"
    res = _train(_data(tmp_path / "q.parquet", label=labels), run, tiny_model_dir, "verdict", one)
    assert res.exit_code == 0, res.output
    _, recs = read_records(run)
    assert {labels[r["id"] - 1000] for r in recs} == {"yes", "no"}
    for r in recs:
        right = labels[r["id"] - 1000] == "yes"
        assert r["rewards"] == [2.0 if right else 1.0] * G  # a total of 1.0 alone would count as correct
        assert r["correct"] == (G if right else 0)  # but the verifier's own verdict decides
    steps = read_metrics(run, "step")
    assert all("reward/verdict" in s and "reward/one" in s for s in steps)


def test_a_reward_reading_the_answer_keeps_rows_that_have_one(registered_here, tmp_path, tiny_model_dir):
    answers = [str(i) if i % 2 == 0 else None for i in range(N)]
    run = tmp_path / "run"
    res = _train(_data(tmp_path / "q.parquet", answer=answers), run, tiny_model_dir, "answered")
    assert res.exit_code == 0, res.output
    _, recs = read_records(run)
    assert recs and all(r["id"] % 2 == 0 for r in recs)  # rows without a reference answer were left out

    res = _train(_data(tmp_path / "null.parquet", answer=pa.array([None] * N, pa.string())), tmp_path / "null",
                 tiny_model_dir, "answered")
    one_error_line(res, "the built-in answered reward needs reference answers", "every value of answer is null")


GRADED: list[int] = []


def counted_verdict(prompts, completions, label=None, **columns):
    GRADED.append(len(completions))
    return verdict(prompts, completions, label=label)


class CountedVerdictReward(VerdictReward):
    @classmethod
    def from_settings(cls, settings):
        return counted_verdict


def test_a_verifier_grades_each_completion_once(registered_here, tmp_path, tiny_model_dir):
    """The verifier's reward both enters the total and decides "correct": one grading serves both (a sandboxed
    code check or math-verify costs real time per call)."""
    register("counted")(CountedVerdictReward)
    try:
        labels = ["yes" if i % 2 == 0 else "no" for i in range(N)]
        data = _data(tmp_path / "q.parquet", label=labels)
        (tmp_path / "one.py").write_text("def one(prompts, completions, **k):\n    return [1.0] * len(completions)\n")
        GRADED.clear()
        run = tmp_path / "run"  # the verifier second among the rewards: its position is found, not assumed
        res = _train(data, run, tiny_model_dir, f"{tmp_path / 'one.py'}:one", "counted",
                     extra=("--eval-data", str(data), "--eval-every", "1"))
        assert res.exit_code == 0, res.output
        _, recs = read_records(run)
        assert sum(GRADED) == len(recs) * G + 2 * N  # every rollout once, plus the eval before and after
        for r in recs:
            assert r["correct"] == (G if labels[r["id"] - 1000] == "yes" else 0)
    finally:
        REGISTRY.classes.pop("counted", None)
