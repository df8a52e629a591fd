"""`anglerank validate` on a tiny in-process model: report structure, correlations that
recompute from the per-sample values, gradient norm (a) against a direct autograd
computation, determinism by seed, reader detection per family, the caller's model
left as given, column reads, CLI errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from anglerank.angles import rankdata, spearman
from anglerank.correlation import correlations, partial_spearman
from anglerank.data.reader import InputError, ParquetSource
from anglerank.errors import UserError
from anglerank.model import generation, loading
from anglerank.model.render import Renderer
from anglerank.scoring.engine import ScoreOptions
from anglerank.validate import ValidateOptions, run_validate, sample_rows, site_readers
from helpers import make_model

N_ROWS = 23


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    qs = [f"Tom has {i} apples and buys {i % 5 + 3} more. " + "How many apples does he have now? " * (1 + i % 3)
          for i in range(N_ROWS)]
    table = pa.table({
        "prompt": [[{"role": "user", "content": q}] for q in qs],
        "reward_model": [{"ground_truth": str(i + i % 5 + 3), "style": "rule"} for i in range(N_ROWS)],
        "extra_info": [{"index": 1000 + i, "answer": f"He has {i} + {i % 5 + 3} = {i + i % 5 + 3} apples.\n"
                        f"#### {i + i % 5 + 3}"} for i in range(N_ROWS)],
    })
    path = tmp_path_factory.mktemp("validate") / "q.parquet"
    pq.write_table(table, path, row_group_size=7)
    return path


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return loading.load(str(tiny_model_dir), device="cpu", dtype="float32")


def _run(data, loaded, tiny_model_dir, layers=(-1,), site="mlp-input", **kw):
    sopt = ScoreOptions(model=str(tiny_model_dir), layers=list(layers), site=site, dtype="float32", device="cpu")
    return run_validate(data, score_options=sopt, options=ValidateOptions(**kw), loaded=loaded)


@pytest.fixture(scope="module")
def report(data, loaded, tiny_model_dir):
    return _run(data, loaded, tiny_model_dir, layers=(1, -1), samples=12, max_new_tokens=8, rollouts=2,
                answer_column="reward_model.ground_truth")


def test_report_structure(report):
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN anywhere
    assert report["n_samples"] == 12 and report["layers"] == [1, 2]
    assert report["grad_a_params"] == {
        str(l): [f"model.layers.{l}.mlp.gate_proj.weight", f"model.layers.{l}.mlp.up_proj.weight"] for l in (1, 2)
    }
    ps = report["per_sample"]
    assert len(ps) == 24 and len({r["row"] for r in ps}) == 12
    for r in ps:
        for k in ("row", "id", "layer", "n_tokens", "n_question", "intra", "inter", "score", "nll", "grad_a",
                  "grad_b", "pass_rate", "n_target"):
            assert k in r
        assert r["grad_a"] > 0 and r["grad_b"] > r["grad_a"] and r["nll"] > 0
        assert 0.0 <= r["pass_rate"] <= 1.0 and 1 <= r["n_target"] <= 8
    # grad_b, nll and pass rate are per prompt; grad_a and the scores are per layer
    for row in {r["row"] for r in ps}:
        a, b = [r for r in ps if r["row"] == row]
        assert a["grad_b"] == b["grad_b"] and a["pass_rate"] == b["pass_rate"]
    keys = {(c["layer"], c["x"], c["y"]) for c in report["correlations"]}
    for layer in (1, 2):
        for x in ("score", "intra", "inter"):
            for y in ("grad_a", "grad_b", "pass_rate", "nll", "n_question", "n_tokens"):
                assert (layer, x, y) in keys


def _partial_by_residuals(x, y, z) -> float:
    """Independent partial Spearman: residuals of rank regressions on the control's ranks."""
    rx, ry, rz = rankdata(x), rankdata(y), rankdata(z)
    A = np.stack([np.ones_like(rz), rz], 1)
    ex = rx - A @ np.linalg.lstsq(A, rx, rcond=None)[0]
    ey = ry - A @ np.linalg.lstsq(A, ry, rcond=None)[0]
    return float(np.corrcoef(ex, ey)[0, 1])


def test_correlations_recompute_from_per_sample(report):
    checked = 0
    for c in report["correlations"]:
        rows = [r for r in report["per_sample"] if r["layer"] == c["layer"]]
        trip = [(r[c["x"]], r[c["y"]], r["n_question"]) for r in rows
                if r[c["x"]] is not None and r[c["y"]] is not None]
        x, y, z = (np.array(v, dtype=float) for v in zip(*trip))
        assert c["n"] == len(trip)
        rho = spearman(x, y)
        if c["spearman"] is None:
            assert math.isnan(rho)
            continue
        assert c["spearman"] == pytest.approx(rho, abs=1e-12)
        if c["partial_spearman"] is not None:
            assert c["partial_spearman"] == pytest.approx(_partial_by_residuals(x, y, z), abs=1e-9)
            checked += 1
    assert checked >= 12


def test_partial_spearman_known_values():
    rng = np.random.default_rng(0)
    z = rng.normal(size=200)
    x = z + 0.1 * rng.normal(size=200)
    y = z + 0.1 * rng.normal(size=200)
    assert spearman(x, y) > 0.9  # both driven by z
    assert abs(partial_spearman(x, y, z)) < 0.2  # nothing left once z is controlled
    assert partial_spearman(x, y, z) == pytest.approx(_partial_by_residuals(x, y, z), abs=1e-12)
    assert math.isnan(partial_spearman([1, 2, 3], [1, 2, 3], [3, 2, 1]))
    assert math.isnan(partial_spearman(x, y, x))  # x fully explained by the control


def test_grad_a_matches_direct_autograd(data, loaded, tiny_model_dir):
    rep = _run(data, loaded, tiny_model_dir, samples=3, target_column="extra_info.answer", max_new_tokens=12)
    r = rep["per_sample"][0]
    tab = pq.read_table(data).to_pylist()[r["row"]]
    model = make_model("llama", vocab_size=len(loaded.tokenizer))  # same seed as the saved tiny model
    model.load_state_dict(loaded.model.state_dict())
    tok = loaded.tokenizer
    prompt = Renderer(tok, "none").render(tab["prompt"][0]["content"]).ids
    target = tok(tab["extra_info"]["answer"], add_special_tokens=False)["input_ids"][:12]
    assert r["n_target"] == len(target)
    ids = torch.tensor([prompt + target])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1: -1]
    loss = torch.nn.functional.cross_entropy(logits, ids[0, len(prompt):])
    mlp = model.model.layers[-1].mlp
    ws = [mlp.gate_proj.weight, mlp.up_proj.weight]
    grads = torch.autograd.grad(loss, ws, retain_graph=True)
    direct = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
    all_grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    direct_b = math.sqrt(sum(float(g.double().pow(2).sum()) for g in all_grads if g is not None))
    assert r["nll"] == pytest.approx(float(loss.detach()), rel=1e-5)
    assert r["grad_a"] == pytest.approx(direct, rel=1e-4)
    assert r["grad_b"] == pytest.approx(direct_b, rel=1e-4)
    # the loaded model is handed back unchanged: no grads left, same dtype
    assert all(p.grad is None for p in loaded.model.parameters())


def test_deterministic_by_seed(data, loaded, tiny_model_dir, report):
    again = _run(data, loaded, tiny_model_dir, layers=(1, -1), samples=12, max_new_tokens=8, rollouts=2,
                 answer_column="reward_model.ground_truth")
    assert again["per_sample"] == report["per_sample"]
    assert again["correlations"] == report["correlations"]
    other = _run(data, loaded, tiny_model_dir, samples=12, max_new_tokens=4, seed=1)
    assert [r["row"] for r in other["per_sample"]] != [r["row"] for r in report["per_sample"] if r["layer"] == 2]
    assert sample_rows(100, 10, 3) == sample_rows(100, 10, 3) and sample_rows(5, 10, 0) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("kind,site,expect", [
    ("gpt2", "mlp-input", ["transformer.h.1.mlp.c_fc.weight"]),
    ("gpt_neox", "mlp-input", ["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"]),
    ("llama", "residual", ["model.layers.2.self_attn.q_proj.weight", "model.layers.2.self_attn.k_proj.weight",
                           "model.layers.2.self_attn.v_proj.weight"]),
    ("gpt2", "residual", ["transformer.h.2.attn.c_attn.weight"]),
])
def test_site_readers_by_family(kind, site, expect):
    model = make_model(kind, vocab_size=64)
    readers = site_readers(model, [1], site, list(range(3, 20)))
    assert list(readers[1]) == expect


def test_correlations_skip_missing_measurements():
    ps = [{"row": i, "layer": 0, "score": float(i), "intra": float(-i), "inter": 0.5 * i, "n_question": 10 + i % 3,
           "n_tokens": 20 + i % 3, "grad_a": float(i * i), "grad_b": 1.0 + i, "nll": 2.0, "pass_rate": None}
          for i in range(8)]
    cs = correlations(ps, [0])
    assert not any(c["y"] == "pass_rate" for c in cs)
    c = next(c for c in cs if c["x"] == "score" and c["y"] == "grad_a")
    assert c["spearman"] == pytest.approx(1.0) and c["n"] == 8
    assert next(c for c in cs if c["y"] == "nll")["spearman"] is None  # constant


def test_cli_json_and_errors(data, tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from anglerank.cli import app

    runner = CliRunner()
    base = ["validate", str(data), "--model", str(tiny_model_dir), "--dtype", "float32", "--device", "cpu"]
    out = tmp_path / "v.json"
    res = runner.invoke(app, [*base, "--samples", "4", "--max-new-tokens", "4", "--json", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["n_samples"] == 4 and rep["samples"] == 4
    res = runner.invoke(app, [*base, "--samples", "3", "--max-new-tokens", "4", "--quiet"])
    assert res.exit_code == 0 and json.loads(res.stdout)["n_samples"] == 3
    bad = [
        ["validate", str(tmp_path / "missing.parquet"), "--model", str(tiny_model_dir)],
        [*base, "--target-column", "extra_info.nope"],
        [*base, "--rollouts", "2"],
        [*base, "--answer-column", "reward_model.ground_truth"],
        [*base, "--samples", "0"],
        [*base, "--layer", "7"],
        [*base, "--site", "attention"],
        [*base, "--target-column", "reward_model"],
    ]
    for args in bad:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert "error:" in res.output and "Traceback" not in res.output


def test_pass_rates_use_the_math_checker(data, loaded, tiny_model_dir, monkeypatch):
    seeds = []

    def fake(model, tokenizer, prompt_ids, **kw):
        assert not kw.get("greedy") and len(prompt_ids) == 2
        seeds.append(kw["generator"].initial_seed())  # an explicit generator, one per row
        texts = ["so the answer is \\boxed{7}", "#### 8.0"]
        return generation.Rollouts(list(prompt_ids), [[5], [6]], texts, [True, True])

    monkeypatch.setattr(generation, "generate", fake)
    rep = _run(data, loaded, tiny_model_dir, samples=N_ROWS, max_new_tokens=2, rollouts=2,
               answer_column="reward_model.ground_truth", target_column="extra_info.answer")
    truth = {i: i + i % 5 + 3 for i in range(N_ROWS)}
    rates = {r["row"]: r["pass_rate"] for r in rep["per_sample"]}
    assert rates == {i: (0.5 if truth[i] in (7, 8) else 0.0) for i in range(N_ROWS)}
    assert any(c["y"] == "pass_rate" and c["spearman"] is not None for c in rep["correlations"])
    assert len(set(seeds)) == N_ROWS


def test_callers_model_is_left_as_given(data, tiny_model_dir):
    lm = loading.load(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    lm.model.train()
    lm.model.model.embed_tokens.weight.requires_grad_(False)
    flags = [p.requires_grad for p in lm.model.parameters()]
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    rep = _run(data, lm, tiny_model_dir, samples=3, max_new_tokens=4, rollouts=2,
               answer_column="reward_model.ground_truth")
    assert rep["grad_dtype"] == "float32" and rep["n_with_gradients"] == 3
    assert all(p.dtype == torch.bfloat16 for p in lm.model.parameters())
    assert [p.requires_grad for p in lm.model.parameters()] == flags and lm.model.training
    assert all(p.grad is None for p in lm.model.parameters())
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_gradients_of_a_bf16_model_are_taken_in_float32(data, loaded, tiny_model_dir):
    """The float32 copy of a bf16 model gives the gradients of the bf16 weights read in float32."""
    lm = loading.load(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    ref = loading.LoadedModel(make_model("llama", vocab_size=len(loaded.tokenizer)), lm.tokenizer, lm.path, lm.name)
    ref.model.load_state_dict({k: v.float() for k, v in lm.model.state_dict().items()})
    kw = dict(samples=3, target_column="extra_info.answer", max_new_tokens=12)
    got, want = _run(data, lm, tiny_model_dir, **kw), _run(data, ref, tiny_model_dir, **kw)
    for g, w in zip(got["per_sample"], want["per_sample"]):
        assert g["grad_a"] == pytest.approx(w["grad_a"], rel=1e-5) and g["nll"] == pytest.approx(w["nll"], rel=1e-5)


def test_parquet_source_column(tmp_path):
    rows = [{"a": i, "s": {"x": f"v{i}", "y": None}} for i in range(10)]
    pq.write_table(pa.Table.from_pylist(rows[:4]), tmp_path / "0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[4:]), tmp_path / "1.parquet", row_group_size=3)
    src = ParquetSource([str(tmp_path / "0.parquet"), str(tmp_path / "1.parquet")], prompt_column="s.x")
    assert src.column("a") == list(range(10))
    assert src.column("s.x", [9, 0, 5, 3]) == ["v9", "v0", "v5", "v3"]
    assert src.column("s.y", [1]) == [None] and src.column("s", [2]) == [{"x": "v2", "y": None}]
    with pytest.raises(InputError, match="column 's.z' not found"):
        src.column("s.z")
    with pytest.raises(IndexError):
        src.column("a", [10])


def test_options_are_user_errors():
    for bad in (dict(samples=0), dict(rollouts=2), dict(answer_column="a"), dict(temperature=0.0),
                dict(top_p=1.5), dict(gen_batch=0), dict(max_new_tokens=0), dict(rollouts=-1)):
        with pytest.raises(UserError):
            ValidateOptions(**bad)


def test_plot_without_matplotlib_is_one_clear_error(data, tiny_model_dir, tmp_path, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from anglerank.cli import app

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    res = CliRunner().invoke(app, ["validate", str(data), "--model", str(tiny_model_dir), "--plot",
                                   str(tmp_path / "p.png")])
    assert res.exit_code == 2 and "--plot needs matplotlib" in res.output


def test_plot_writes_png(report, tmp_path):
    pytest.importorskip("matplotlib")
    from anglerank.plots import plot_report

    plot_report(report, tmp_path / "v.png")
    assert (tmp_path / "v.png").read_bytes()[:4] == b"\x89PNG"


def test_an_out_of_memory_backoff_is_one_warning_line(data, tiny_model_dir, tmp_path, monkeypatch):
    """The scorer halving its batch after an out-of-memory is news for the user: a ``warning:`` line on the
    console, not a Python RuntimeWarning with a source path."""
    import warnings

    from typer.testing import CliRunner

    from anglerank.cli import app
    from anglerank.model import hooks

    run, tokens = hooks.run_until_captured, []

    def limited(model, ids, mask, *a, **k):
        if ids.numel() > 120:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        tokens.append(ids.numel())
        return run(model, ids, mask, *a, **k)

    monkeypatch.setattr(hooks, "run_until_captured", limited)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a RuntimeWarning would fail the command
        res = CliRunner().invoke(app, ["validate", str(data), "--model", str(tiny_model_dir), "--dtype", "float32",
                                       "--device", "cpu", "--samples", "12", "--max-new-tokens", "4",
                                       "--batch-tokens", "4096", "--json", str(tmp_path / "v.json")])
    assert res.exit_code == 0, res.output
    assert tokens and max(tokens) <= 120
    lines = [ln for ln in res.output.splitlines() if "out of memory" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: out of memory"), res.output

