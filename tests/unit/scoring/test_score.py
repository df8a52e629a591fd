"""The scoring engine: hooks, early stop, batching invariance, outputs, CLI and bad input."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from anglerank import angles
from anglerank.cli import app
from anglerank.data.reader import ParquetSource
from anglerank.data.writer import load_scores, read_manifest
from anglerank.model import hooks
from anglerank.model.render import Renderer
from anglerank.scoring.engine import ScoreOptions, Scorer, build_scorer, make_batches
from anglerank.scoring.run import run_score
from helpers import make_model

runner = CliRunner()


def naive_scores(model, tok, question, preset="none", site="mlp-input", layer=-1, history=None):
    """Plain reference: batch size 1, full forward with output_hidden_states / a hook, L x L matrix."""
    r = Renderer(tok, preset).render(question, history)
    ids = torch.tensor([r.ids])
    idx = hooks.resolve_layer(model, layer)
    store = {}
    mod = hooks.site_module(model, idx, site)
    if site == "mlp-input":
        h = mod.register_forward_pre_hook(lambda m, a: store.__setitem__("x", a[0]))
    else:
        h = mod.register_forward_hook(lambda m, a, o: store.__setitem__("x", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(ids)
    h.remove()
    x = store["x"][0]
    return angles.naive_concentration(x, range(r.n_prefix, r.q_end), range(0, r.n_prefix))


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral", "gemma2", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("site", ["mlp-input", "residual"])
def test_scorer_matches_naive_for_each_family(kind, site, tiny_tokenizer):
    model = make_model(kind, vocab_size=len(tiny_tokenizer))
    opt = ScoreOptions(site=site, layers=[-2], batch_tokens=4096)
    scorer = Scorer(model, tiny_tokenizer, Renderer(tiny_tokenizer), opt, "cpu")
    qs = ["What is 7 times 8?", "Tom has 5 apples and buys 3 more. How many apples now?", "x"]
    from anglerank.data.reader import Record

    out = scorer.score_records([Record(i, i, q, None) for i, q in enumerate(qs)])
    for row, q in zip(out, qs):
        intra, inter = naive_scores(model, tiny_tokenizer, q, site=site, layer=-2)
        if math.isnan(intra):
            assert row["intra"] is None and "shorter than 2" in row["note"]
        else:
            assert row["intra"] == pytest.approx(intra, abs=1e-5)
        assert row["inter"] == pytest.approx(inter, abs=1e-5)


def test_forward_stops_after_hooked_layer(tiny_tokenizer):
    model = make_model("llama", vocab_size=len(tiny_tokenizer), layers=4)
    ran = []
    for i, layer in enumerate(hooks.decoder_layers(model)):
        layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
        layer.mlp.register_forward_hook(lambda m, a, o, i=i: ran.append(f"mlp{i}"))
    model.lm_head.register_forward_hook(lambda *a: ran.append("head"))
    model.model.norm.register_forward_hook(lambda *a: ran.append("norm"))
    scorer = Scorer(model, tiny_tokenizer, Renderer(tiny_tokenizer), ScoreOptions(layers=[1]), "cpu")
    scorer.forward_hidden([[5, 6, 7, 8]])
    assert 0 in ran and "mlp0" in ran  # layer 0 ran in full
    assert "head" not in ran and "norm" not in ran
    assert 2 not in ran and 3 not in ran and "mlp1" not in ran  # layer 1's MLP never runs
    ran.clear()
    Scorer(model, tiny_tokenizer, Renderer(tiny_tokenizer), ScoreOptions(layers=[1], site="residual"), "cpu").forward_hidden([[5, 6]])
    assert 1 in ran and 2 not in ran and "head" not in ran


def test_batch_invariance(tiny_tokenizer, tiny_model):
    from anglerank.data.reader import Record

    qs = [("apples " * (i % 7 + 1)) + f"question {i}?" for i in range(30)]
    recs = [Record(i, None, q, None) for i, q in enumerate(qs)]
    res = {}
    for bt in (1, 64, 100000):
        s = Scorer(tiny_model, tiny_tokenizer, Renderer(tiny_tokenizer), ScoreOptions(batch_tokens=bt), "cpu")
        res[bt] = s.score_records(recs)
    for a, b, c in zip(res[1], res[64], res[100000]):
        for k in ("intra", "inter", "score"):
            assert a[k] == pytest.approx(b[k], abs=1e-4) and a[k] == pytest.approx(c[k], abs=1e-4)


def _score_both_ways(model, tok, recs, preset="none", **kw):
    """{prefix_cache: (scorer, rows)} for the cached and the uncached forward."""
    out = {}
    for cached in (True, False):
        opt = ScoreOptions(preset=preset, prefix_cache=cached, **kw)
        renderer = Renderer(tok, preset, opt.system, opt.prefix, opt.max_length)
        s = Scorer(model, tok, renderer, opt, "cpu")
        out[cached] = (s, s.score_records(recs))
    return out


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "mistral", "gemma2", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("site", ["mlp-input", "residual"])
def test_prefix_cache_matches_full_forward(kind, site, tiny_tokenizer):
    from anglerank.data.reader import Record

    model = make_model(kind, vocab_size=len(tiny_tokenizer))
    qs = [("apples " * (i % 5 + 1)) + f"question {i}?" for i in range(9)] + ["x", ""]
    history = [{"role": "system", "content": "Count."}, {"role": "user", "content": "q"},
               {"role": "assistant", "content": "a"}]
    recs = [Record(i, None, q, history if i % 3 == 0 else None) for i, q in enumerate(qs)]
    res = _score_both_ways(model, tiny_tokenizer, recs, site=site, layers=["all"], batch_tokens=64)
    cached, full = res[True][1], res[False][1]
    assert res[True][0].use_prefix_cache and not res[False][0].use_prefix_cache
    assert len(res[True][0].prefix_cache) == 2  # the two shared prefixes (default system, given history)
    assert [(r["row"], r["layer"]) for r in cached] == [(r["row"], r["layer"]) for r in full]
    for a, b in zip(cached, full):
        assert a["note"] == b["note"] and a["n_prefix"] == b["n_prefix"]
        for k in ("intra", "inter", "score"):
            assert (a[k] is None) == (b[k] is None)
            if a[k] is not None:
                assert a[k] == pytest.approx(b[k], abs=1e-5)


def test_prefix_cache_with_gainrl_code_estimator(tiny_tokenizer, tiny_model):
    from anglerank.data.reader import Record

    recs = [Record(i, None, ("apples " * (i + 3)) + "?", None) for i in range(6)]
    res = _score_both_ways(tiny_model, tiny_tokenizer, recs, preset="gainrl", estimator="gainrl-code",
                           code_prefix_tokens=20, code_suffix_tokens=2)
    for a, b in zip(res[True][1], res[False][1]):
        assert a["score"] is not None and a["score"] == pytest.approx(b["score"], abs=1e-5)


@pytest.mark.parametrize("preset,max_length,prefix", [("gainrl", 10, None), ("none", 30, None), ("none", 4096, "Q: ")])
def test_prefix_cache_edge_rows(preset, max_length, prefix, tiny_tokenizer, tiny_model):
    """Rows cut inside the shared prefix, empty and one-token questions, plain-text prefixes."""
    from anglerank.data.reader import Record

    qs = ["apples apples?", "", " ", "x", "what is 2+2 apples", "apples apples?"]
    recs = [Record(i, None, q, None) for i, q in enumerate(qs)]
    res = _score_both_ways(tiny_model, tiny_tokenizer, recs, preset=preset, max_length=max_length, prefix=prefix)
    for a, b in zip(res[True][1], res[False][1]):
        assert (a["n_tokens"], a["n_prefix"], a["n_question"], a["note"]) == \
            (b["n_tokens"], b["n_prefix"], b["n_question"], b["note"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-5) if b["score"] is not None else a["score"] is None


def test_prefix_cache_path_does_not_depend_on_history(tiny_tokenizer, tiny_model):
    """A resumed run starts with an empty cache: every row must take the same path as before."""
    from anglerank.data.reader import Record

    first = [Record(i, None, f"apples {i} and pears?", None) for i in range(3)]
    alone = [Record(3, None, "how many apples are left over today?", None)]
    warm = Scorer(tiny_model, tiny_tokenizer, Renderer(tiny_tokenizer), ScoreOptions(), "cpu")
    warm.score_records(first)
    fresh = Scorer(tiny_model, tiny_tokenizer, Renderer(tiny_tokenizer), ScoreOptions(), "cpu")
    assert warm.score_records(alone) == fresh.score_records(alone)  # bit for bit


def test_prefix_cache_is_dropped_when_weights_change(tiny_tokenizer):
    from anglerank.data.reader import Record

    model = make_model("llama", vocab_size=len(tiny_tokenizer))
    recs = [Record(i, None, f"question {i} about apples?", None) for i in range(4)]
    s = Scorer(model, tiny_tokenizer, Renderer(tiny_tokenizer), ScoreOptions(), "cpu")
    before = s.score_records(recs)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5).add_(0.01)  # an in-place update, as an optimizer step does
    after = s.score_records(recs)
    fresh = Scorer(model, tiny_tokenizer, Renderer(tiny_tokenizer), ScoreOptions(prefix_cache=False), "cpu")
    expected = fresh.score_records(recs)
    assert any(abs(a["score"] - b["score"]) > 1e-3 for a, b in zip(before, after))
    for a, b in zip(after, expected):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    # parameters replaced by new tensors (not modified in place)
    model.load_state_dict(make_model("llama", vocab_size=len(tiny_tokenizer), seed=5).state_dict(), assign=True)
    replaced = s.score_records(recs)
    for a, b in zip(replaced, fresh.score_records(recs)):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_scorer_and_run_score_leave_the_callers_options_alone(tmp_path, tiny_tokenizer, tiny_model, tiny_model_dir,
                                                             questions_parquet):
    import copy

    opt = ScoreOptions(layers=[-1])
    before = copy.deepcopy(opt)
    s = Scorer(tiny_model, tiny_tokenizer, Renderer(tiny_tokenizer), opt, "cpu")
    assert s.opt.batch_tokens == 1024 and opt == before and opt.batch_tokens is None
    opt = ScoreOptions(model=str(tiny_model_dir), dtype="float32", device="auto")
    before = copy.deepcopy(opt)
    scorer, *_ = build_scorer(opt)
    assert opt == before and scorer.opt.batch_tokens is not None
    m = run_score([str(questions_parquet)], tmp_path / "s", options=opt, limit=3)
    assert opt == before and m["batch_tokens"] == scorer.opt.batch_tokens


def test_scorer_uses_angles_combine(tiny_tokenizer, tiny_model, monkeypatch):
    from anglerank.data.reader import Record

    calls = []
    real = angles.combine
    monkeypatch.setattr(angles, "combine", lambda *a: calls.append(a) or real(*a))
    opt = ScoreOptions(w_intra=2.0, w_inter=0.5)
    rows = Scorer(tiny_model, tiny_tokenizer, Renderer(tiny_tokenizer), opt, "cpu").score_records(
        [Record(0, None, "how many apples are there?", None)])
    assert calls and calls[0][2:] == (2.0, 0.5)
    assert rows[0]["score"] == 2.0 * rows[0]["intra"] + 0.5 * rows[0]["inter"]


def test_model_load_leaves_hf_logging_as_it_was(tiny_model_dir, tmp_path):
    from transformers.utils import logging as hf_logging

    from anglerank.model import loading

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    try:
        for level, on in ((hf_logging.INFO, True), (hf_logging.WARNING, False)):
            hf_logging.set_verbosity(level)
            (hf_logging.enable_progress_bar if on else hf_logging.disable_progress_bar)()
            loading.load(str(tiny_model_dir))
            assert hf_logging.get_verbosity() == level and hf_logging.is_progress_bar_enabled() == on
            broken = tmp_path / f"broken-{level}"
            broken.mkdir()
            (broken / "config.json").write_text("{}")
            with pytest.raises(loading.ModelError):  # a failed load restores them too
                loading.load(str(broken))
            assert hf_logging.get_verbosity() == level and hf_logging.is_progress_bar_enabled() == on
    finally:
        hf_logging.set_verbosity(verbosity)
        (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()


def test_public_python_api_score(tmp_path, tiny_model_dir, questions_parquet):
    """``anglerank.score(...)`` works, also after other modules imported the scoring code."""
    import importlib

    import anglerank

    for name in ("anglerank.cli", "anglerank.validate", "anglerank.train.setup"):
        importlib.import_module(name)
    table = anglerank.score([str(questions_parquet)], tmp_path / "s", model=str(tiny_model_dir), dtype="float32",
                            device="cpu", limit=4)
    assert anglerank.api.manifest_of(table)["complete"] and table.num_rows == 4
    assert table.equals(load_scores(tmp_path / "s"))  # the returned table is what the directory holds


def test_make_batches_respects_budget():
    lengths = [5, 100, 7, 33, 33, 2, 400, 8]
    batches = make_batches(lengths, 120)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 120


def test_parse_layers(tiny_model):
    assert hooks.parse_layers(tiny_model, [-1]) == [2]
    assert hooks.parse_layers(tiny_model, ["all"]) == [0, 1, 2]
    assert hooks.parse_layers(tiny_model, ["1:"]) == [1, 2]
    with pytest.raises(hooks.HookError, match="out of range"):
        hooks.parse_layers(tiny_model, [3])


def test_run_score_outputs_and_manifest(tmp_path, tiny_model_dir, questions_parquet):
    out = tmp_path / "s"
    m = run_score([str(questions_parquet)], out, model=str(tiny_model_dir), dtype="float32", device="cpu",
                  window_rows=8, commit_every=8)
    t = load_scores(out)
    assert t.num_rows == 23 and t.column("row").to_pylist() == list(range(23))
    assert t.column("id").to_pylist() == [1000 + i for i in range(23)]
    assert t.schema.field("row").type == pa.int64() and t.schema.field("n_tokens").type == pa.int32()
    assert m["complete"] and len(m["parts"]) == 3 and m["rows_expected"] == 23
    for key in ("weights_fingerprint", "template_fingerprint", "inputs", "tokens_per_s", "elapsed_s", "preset"):
        assert key in m
    assert sorted(p.name for p in out.iterdir()) == ["DONE", "manifest.json", "scores-00000.arrow", "scores-00001.arrow",
                                                     "scores-00002.arrow"]
    # determinism: a second run writes byte-identical Arrow files
    out2 = tmp_path / "s2"
    run_score([str(questions_parquet)], out2, model=str(tiny_model_dir), dtype="float32", device="cpu",
              window_rows=8, commit_every=8)
    for f in ("scores-00000.arrow", "scores-00002.arrow"):
        assert (out / f).read_bytes() == (out2 / f).read_bytes()


def test_multi_layer_long_format(tmp_path, tiny_model_dir, questions_parquet):
    run_score([str(questions_parquet)], tmp_path / "s", model=str(tiny_model_dir), dtype="float32",
              device="cpu", layers=["all"], limit=5)
    t = load_scores(tmp_path / "s").to_pylist()
    assert [(r["row"], r["layer"]) for r in t] == [(r, l) for r in range(5) for l in range(3)]


def test_gainrl_code_estimator_in_pipeline(tmp_path, tiny_model_dir, questions_parquet):
    run_score([str(questions_parquet)], tmp_path / "s", model=str(tiny_model_dir), dtype="float32",
              device="cpu", estimator="gainrl-code", code_prefix_tokens=4, code_suffix_tokens=2, limit=4)
    t = load_scores(tmp_path / "s").to_pylist()
    m = read_manifest(tmp_path / "s")
    assert m["estimator"] == "gainrl-code" and m["w_inter"] == 8.0
    for r in t:
        assert r["score"] == pytest.approx(r["intra"] + 8 * r["inter"])


def test_resume_continues_and_refuses_changed_settings(tmp_path, tiny_model_dir, questions_parquet):
    out = tmp_path / "s"
    kw = dict(model=str(tiny_model_dir), dtype="float32", device="cpu", window_rows=8, commit_every=8)
    run_score([str(questions_parquet)], out, limit=16, **kw)
    full = tmp_path / "full"
    run_score([str(questions_parquet)], full, **kw)
    # fake an interruption after the first part
    m = read_manifest(out)
    m["parts"], m["next_row"], m["complete"], m["limit"], m["rows_expected"] = m["parts"][:1], 8, False, None, 23
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(Exception, match="settings differ"):
        run_score([str(questions_parquet)], out, resume=True, **{**kw, "preset": "gainrl"})
    run_score([str(questions_parquet)], out, resume=True, **kw)
    assert load_scores(out).to_pylist() == load_scores(full).to_pylist()


def _cli(args):
    return runner.invoke(app, args)


def test_cli_score_and_info(tmp_path, tiny_model_dir, questions_parquet):
    r = _cli(["score", str(questions_parquet), "-o", str(tmp_path / "o"), "--model", str(tiny_model_dir),
              "--dtype", "float32", "--layer", "-1", "--layer", "0", "-q"])
    assert r.exit_code == 0, r.output
    assert set(load_scores(tmp_path / "o").column("layer").to_pylist()) == {0, 2}
    r = _cli(["info", "--model", str(tiny_model_dir), "--json"])
    d = json.loads(r.stdout)
    assert d["num_layers"] == 3 and d["chat_template"] is True and "mlp-input" in d["hook_sites"]


def test_cli_no_prefix_cache(tmp_path, tiny_model_dir, questions_parquet):
    base = ["score", str(questions_parquet), "--model", str(tiny_model_dir), "--dtype", "float32", "-q"]
    assert _cli(base + ["-o", str(tmp_path / "on")]).exit_code == 0
    r = _cli(base + ["-o", str(tmp_path / "off"), "--no-prefix-cache"])
    assert r.exit_code == 0, r.output
    assert read_manifest(tmp_path / "on")["prefix_cache"] is True
    assert read_manifest(tmp_path / "off")["prefix_cache"] is False
    on, off = load_scores(tmp_path / "on").column("score"), load_scores(tmp_path / "off").column("score")
    assert on.to_pylist() == pytest.approx(off.to_pylist(), abs=1e-5)
    r = _cli(base + ["-o", str(tmp_path / "off"), "--resume"])  # the setting must match to resume
    assert r.exit_code == 2 and "prefix_cache" in r.output


def _bad_inputs(tmp_path, questions_parquet):
    notpq = tmp_path / "x.parquet"
    notpq.write_text("hello")
    noprompt = tmp_path / "np.parquet"
    pq.write_table(pa.table({"foo": [1, 2]}), noprompt)
    wrongtype = tmp_path / "wt.parquet"
    pq.write_table(pa.table({"prompt": [1, 2]}), wrongtype)
    ambiguous = tmp_path / "amb.parquet"
    pq.write_table(pa.table({"question": ["a"], "problem": ["b"]}), ambiguous)
    return {
        "missing": ([str(tmp_path / "nope.parquet")], [], "input not found"),
        "not parquet": ([str(notpq)], [], "not a readable Parquet"),
        "no prompt column": ([str(noprompt)], [], "no prompt column"),
        "wrong type": ([str(wrongtype)], [], "expected a string"),
        "ambiguous": ([str(ambiguous)], [], "ambiguous"),
        "bad column": ([str(questions_parquet)], ["--prompt-column", "nope"], "not found"),
        "bad site": ([str(questions_parquet)], ["--site", "attn"], "unknown --site 'attn'"),
        "bad layer": ([str(questions_parquet)], ["--layer", "7"], "out of range"),
        "bad preset": ([str(questions_parquet)], ["--preset", "fancy"], "unknown --preset 'fancy'"),
        "nan weight": ([str(questions_parquet)], ["--w-inter", "nan"], "finite"),
        "commit every 0": ([str(questions_parquet)], ["--commit-every", "0"], "--commit-every must be positive"),
        "unknown model": ([str(questions_parquet)], ["--model", "/no/such/model"], "neither an existing folder"),
    }


def test_cli_bad_inputs_exit_2_one_line(tmp_path, tiny_model_dir, questions_parquet):
    for name, (inputs, extra, msg) in _bad_inputs(tmp_path, questions_parquet).items():
        out = tmp_path / f"out-{name.replace(' ', '_')}"
        args = ["score", *inputs, "-o", str(out), "-q"]
        if "--model" not in extra:
            args += ["--model", str(tiny_model_dir)]
        r = _cli(args + extra)
        assert r.exit_code == 2, (name, r.output)
        assert msg in r.output, (name, r.output)
        assert "Traceback" not in r.output
        assert not (out / "manifest.json").exists(), name


def test_cli_existing_output_refused(tmp_path, tiny_model_dir, questions_parquet):
    args = ["score", str(questions_parquet), "-o", str(tmp_path / "o"), "--model", str(tiny_model_dir), "-q",
            "--limit", "3"]
    assert _cli(args).exit_code == 0
    r = _cli(args)
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert _cli(args + ["--overwrite"]).exit_code == 0


def test_per_row_problems_are_notes(tmp_path, tiny_model_dir):
    p = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"prompt": [
        [{"role": "user", "content": "What is 1+1?"}],
        [{"role": "system", "content": "only system"}],
        [{"role": "user", "content": "   "}],
        None,
        [{"role": "user", "content": "Why?"}],
    ]}), p)
    m = run_score([str(p)], tmp_path / "o", model=str(tiny_model_dir), dtype="float32", device="cpu")
    rows = load_scores(tmp_path / "o").to_pylist()
    assert [r["row"] for r in rows] == list(range(5)) and m["complete"]
    assert rows[0]["score"] is not None
    assert rows[1]["note"] == "no user message" and rows[1]["score"] is None
    assert rows[2]["note"] == "empty question" and rows[3]["note"] == "null prompt"
    assert rows[1]["n_tokens"] == 0


def test_reader_dotted_prompt_and_id(questions_parquet):
    src = ParquetSource([str(questions_parquet)], prompt_column="reward_model.ground_truth",
                        id_column="extra_info.index")
    recs = list(src.iter_records(start_row=5, stop_row=9))
    assert [r.row for r in recs] == [5, 6, 7, 8] and recs[0].question == "13" and recs[0].id == 1005


@pytest.mark.parametrize("args, message", [
    (["score", "x.parquet", "-o", "o", "--layer", "abc"], "Invalid value for '--layer'"),
    (["score"], "Missing argument"),
    (["score", "x.parquet", "-o", "o", "--bogus"], "No such option: --bogus"),
    (["bogus"], "No such command"),
])
def test_entry_point_usage_errors_are_one_line(args, message):
    """The installed `anglerank` entry point (not Typer's test runner): malformed command lines too."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", "from anglerank.cli import main; main()", *args],
                       capture_output=True, text=True, timeout=120)
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], p.stderr
    assert "--help" in lines[0]


def test_every_command_option_has_help():
    from typer.main import get_command

    missing = [f"{name} {p.name}" for name, sub in get_command(app).commands.items()
               for p in sub.params if not getattr(p, "help", None)]
    assert not missing, missing


@pytest.mark.parametrize("flags, device, expected", [
    ({"avx512_bf16", "amx_bf16", "amx_tile"}, "cpu", 4096), ({"avx512_bf16", "avx512f"}, "cpu", 1024),
    (set(), "cpu", 1024), ({"amx_bf16"}, "cuda", 16384)])
def test_default_batch_budget_follows_the_cpu(flags, device, expected, monkeypatch):
    from anglerank.model import device as machine

    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset(flags))
    assert machine.default_batch_tokens(device) == expected


def test_resume_keeps_the_recorded_batch_budget(tmp_path, tiny_model_dir, questions_parquet, monkeypatch):
    """A run started on one CPU and resumed on another (other default) continues with its own budget."""
    from anglerank.model import device

    out = tmp_path / "s"
    kw = dict(model=str(tiny_model_dir), dtype="float32", device="cpu", window_rows=8, commit_every=8)
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    run_score([str(questions_parquet)], out, **kw)
    full = load_scores(out).to_pylist()
    assert read_manifest(out)["batch_tokens"] == 1024
    m = read_manifest(out)
    m["parts"], m["next_row"], m["complete"] = m["parts"][:1], 8, False
    (out / "manifest.json").write_text(json.dumps(m))
    (out / "DONE").unlink(missing_ok=True)
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset({"amx_bf16"}))  # "another machine": default 4096
    assert run_score([str(questions_parquet)], out, resume=True, **kw)["batch_tokens"] == 1024
    assert load_scores(out).to_pylist() == full
