"""Estimators as a registry: a new one is one class registered by name, and the engine, the
``score`` command and the train config take it by that name alone; the built-in ones score
byte-identically to the engine that chose them by name."""

from __future__ import annotations

import filecmp
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from anglerank.cli import app
from anglerank.data.writer import load_scores, read_manifest
from anglerank.errors import UserError
from anglerank.scoring import estimators
from anglerank.scoring.engine import ScoreOptions
from anglerank.scoring.run import run_score
from helpers import one_error_line, package_at

# the last engine that chose its estimator by name; the built-in estimators must match it byte for byte
REFERENCE_COMMIT = "cf2e9a2c04029815f043a82d89cc06e8790f2590"
runner = CliRunner()


# --- a third estimator, registered here only ------------------------------------------------

class ConstantEstimator:
    """Constant terms; rows with a short question get no intra term (and a note)."""

    help = "constant terms, for tests"
    default_w_inter = 2.0
    prefix_as_sum = True
    calls: list = []

    def __init__(self, min_question: int):
        self.min_question = min_question

    @classmethod
    def from_options(cls, options):
        return cls(min_question=20)

    def terms(self, hidden_BTD, rows, prefix_PD=None):
        # with the prefix cache a prefix_as_sum estimator sees only the tokens after the prefix
        after = prefix_PD.shape[0] if prefix_PD is not None else 0
        longest = max(len(r.ids) for r in rows)
        ConstantEstimator.calls.append((prefix_PD is not None, hidden_BTD.shape[1] == longest - after))
        intra = [0.25 if r.n_question >= self.min_question else math.nan for r in rows]
        return intra, [0.5] * len(rows)

    def note(self, row, intra, inter):
        return f"question too short for constant ({row.n_question} tokens)" if math.isnan(intra) else None


@pytest.fixture
def constant():
    estimators.register("constant")(ConstantEstimator)
    ConstantEstimator.calls = []
    try:
        yield ConstantEstimator
    finally:
        estimators.REGISTRY.classes.pop("constant", None)


def _check_constant(out: Path) -> None:
    m = read_manifest(out)
    assert m["estimator"] == "constant" and m["w_inter"] == 2.0  # the estimator's own default weight
    rows = load_scores(out).to_pylist()
    assert len(rows) == 23
    short = [r for r in rows if r["n_question"] < 20]
    assert [r["row"] for r in short] == [5]  # "What is 7 times 8?"
    assert short[0]["score"] is None and short[0]["intra"] is None and short[0]["inter"] == 0.5
    assert short[0]["note"] == f"question too short for constant ({short[0]['n_question']} tokens)"
    for r in rows:
        if r["row"] != 5:
            assert (r["intra"], r["inter"], r["score"], r["note"]) == (0.25, 0.5, 1.25, None)


def test_registry_lists_builtins_default_first():
    assert estimators.names()[:1] == ["paper"] and "gainrl-code" in estimators.names()
    assert estimators.get("paper").default_w_inter == 1.0 and estimators.get("paper").prefix_as_sum
    assert estimators.get("gainrl-code").default_w_inter == 8.0 and not estimators.get("gainrl-code").prefix_as_sum
    with pytest.raises(UserError, match="unknown estimator 'nope'; choose from paper, gainrl-code"):
        estimators.get("nope")


def test_register_refuses_a_second_class_under_a_taken_name():
    with pytest.raises(RuntimeError, match="two estimators registered as 'paper'"):
        estimators.register("paper")(type("Other", (), {}))


def test_registered_estimator_is_an_option_everywhere(constant):
    assert "constant" in estimators.names()
    opt = ScoreOptions(estimator="constant")
    assert opt.w_inter == 2.0
    assert ScoreOptions(estimator="constant", w_inter=3.0).w_inter == 3.0
    from anglerank.train.config import TrainConfig

    assert TrainConfig(train_data=["x.parquet"], reward=["math"], estimator="constant").estimator == "constant"


def test_registered_estimator_through_run_score(constant, tmp_path, tiny_model_dir, questions_parquet, one_thread):
    out = tmp_path / "s"
    run_score([str(questions_parquet)], out, model=str(tiny_model_dir), dtype="float32", device="cpu",
              estimator="constant")
    _check_constant(out)
    # the tiny llama shares its chat template's system turn: the prefix came as a sum, the rest of each row alone
    assert constant.calls and all(with_prefix and after for with_prefix, after in constant.calls)


def test_registered_estimator_through_the_cli(constant, tmp_path, tiny_model_dir, questions_parquet, one_thread):
    out = tmp_path / "o"
    r = runner.invoke(app, ["score", str(questions_parquet), "-o", str(out), "--model", str(tiny_model_dir),
                            "--dtype", "float32", "--device", "cpu", "--estimator", "constant", "--no-prefix-cache",
                            "-q"])
    assert r.exit_code == 0, r.output
    _check_constant(out)
    assert constant.calls and not any(with_prefix for with_prefix, _ in constant.calls)


def test_unknown_estimator_is_one_line_naming_the_choices(tmp_path, tiny_model_dir, questions_parquet):
    r = runner.invoke(app, ["score", str(questions_parquet), "-o", str(tmp_path / "o"), "--model",
                            str(tiny_model_dir), "--estimator", "nope", "-q"])
    one_error_line(r, "unknown --estimator 'nope'", "paper, gainrl-code")
    with pytest.raises(UserError, match="unknown --estimator 'nope'; choose from paper, gainrl-code"):
        from anglerank.train.config import TrainConfig

        TrainConfig(train_data=["x.parquet"], reward=["math"], estimator="nope")


def test_help_lists_every_estimator_from_the_registry():
    import typer

    group = typer.main.get_command(app)
    for command in ("score", "validate", "train"):
        helps = {p.opts[0]: p.help for p in group.commands[command].params}
        assert helps["--estimator"] == ("paper: exact segment means (closed form); "
                                        "gainrl-code: the number the authors' released script computes.")
        if command != "train":  # train scores with the estimator's default weights
            assert helps["--w-inter"] == "Weight of C_inter in score. Default 1 (paper) or 8 (gainrl-code)."


# --- the built-in estimators against the engine that chose them by name ----------------------

CASES = [(est, cache, dtype) for est in ("paper", "gainrl-code") for cache in (True, False)
         for dtype in ("float32", "bfloat16")]
# volatile by nature: when and how fast the run went
TIMES = ("started_at", "elapsed_s", "updated_at", "tokens_per_s", "finished_at")
_RUN = """
import json, sys
from anglerank.scoring.run import run_score
data, model, out, cases = sys.argv[1:]
for name, kw in json.loads(cases).items():
    run_score([data], f"{out}/{name}", model=model, **kw)
"""


def _case(est: str, cache: bool, dtype: str) -> tuple[str, dict]:
    # --preset none: the chat template's system turn is a prefix every row shares (so the cache is used);
    # 20 + 2 code tokens leave the shortest question without an intra term (a note) and score the rest
    kw = dict(device="cpu", dtype=dtype, estimator=est, prefix_cache=cache, layers=["all"], preset="none")
    if est == "gainrl-code":
        kw.update(code_prefix_tokens=20, code_suffix_tokens=2)
    return f"{est}-{'cache' if cache else 'nocache'}-{dtype}", kw


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    """Every case scored by the reference commit's package, in a fresh process."""
    base = tmp_path_factory.mktemp("estimators")
    pkg = package_at(REFERENCE_COMMIT, base / "reference")
    qs = [f"Tom has {i} apples and buys {i + 3} more. How many apples does he have?" for i in range(23)]
    qs[5] = "What is 7 times 8?"
    data = base / "questions.parquet"
    pq.write_table(pa.table({"prompt": [[{"role": "user", "content": q}] for q in qs]}), data, row_group_size=7)
    cases = dict(_case(*c) for c in CASES)
    env = {**os.environ, "PYTHONPATH": str(pkg), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _RUN, str(data), str(tiny_model_dir), str(base / "ref"),
                          json.dumps(cases)], cwd=pkg, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return data, base / "ref"


def _settings(out: Path) -> dict:
    m = read_manifest(out)
    return {k: v for k, v in m.items() if k not in TIMES}


@pytest.mark.parametrize("est,cache,dtype", CASES)
def test_builtin_estimators_score_byte_identically(reference, tmp_path, tiny_model_dir, one_thread, est, cache, dtype):
    data, ref_root = reference
    name, kw = _case(est, cache, dtype)
    out, ref = tmp_path / name, ref_root / name
    run_score([str(data)], out, model=str(tiny_model_dir), **kw)
    assert _settings(out) == _settings(ref)
    parts = [p["file"] for p in read_manifest(ref)["parts"]]
    assert parts and all(filecmp.cmp(ref / p, out / p, shallow=False) for p in parts)
    rows = load_scores(out).to_pylist()
    assert any(r["score"] is not None for r in rows)  # numbers, not only missing terms, were compared
    if est == "gainrl-code":
        assert any((r["note"] or "").startswith("gainrl-code slice empty") for r in rows)
