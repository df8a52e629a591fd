"""Scoring on the GPUs users have, tested without one: the memory-aware batch budget, the
out-of-memory back-off, truncated loading, --device-map, and the torchrun GPU share."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from anglerank.cli import app
from anglerank.data.writer import load_scores, read_manifest
from anglerank.model import hooks, loading
from anglerank.model.render import Renderer
from anglerank.scoring import memory
from anglerank.scoring.distributed import gpu_share
from anglerank.scoring.engine import ScoreOptions, Scorer, build_scorer
from anglerank.scoring.run import run_score
from helpers import one_error_line

runner = CliRunner()

QWEN25_7B = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
                 num_hidden_layers=28, vocab_size=152064, tie_word_embeddings=False)
LLAMA3_70B = dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8,
                  num_hidden_layers=80, vocab_size=128256, tie_word_embeddings=False)
GIB = 2**30


# --- the estimate ------------------------------------------------------------------------------

def test_bytes_per_token_qwen25_7b_by_hand():
    shape = memory.shape_of(QWEN25_7B)
    assert shape == memory.Shape(hidden=3584, intermediate=18944, heads=28, kv_heads=4, head_dim=128)
    p = memory.bytes_per_token(shape, dtype_bytes=2, layers_run=28, captured=1, max_length=4096, kv_cache=True)
    # layer: MLP 3*3584 + 3*18944 = 67584 elements > attention 3*3584 + 4*28*128 + 2*4*128 = 26112; x 2 bytes
    assert p["layer"] == 135168
    assert p["mask"] == 4096 * 3 == 12288  # bool mask + its bf16 copy
    assert p["rotary"] == 2 * 128 * 2 == 512
    assert p["kv_cache"] == 28 * 2 * 4 * 128 * 2 == 57344
    assert p["captured"] == 3584 * 2 == 7168
    assert p["angles"] == 32 * 3584 == 114688
    # forward 135168 + 12288 + 512 + 16 + 57344 = 205328 > angles 114688; + captured 7168
    assert p["total"] == 212496
    # 8 GiB free: (8 - 1) GiB * 0.8 / 212496 = 28296.8 tokens -> the power of two below: 16384
    assert memory.choose_budget(8 * GIB, p["total"]) == 16384
    # an 80 GB card after 15.2 GB of weights: far more than the cap
    assert memory.choose_budget(60 * GIB, p["total"]) == 65536


def test_bytes_per_token_llama3_70b_by_hand():
    shape = memory.shape_of(LLAMA3_70B)
    p = memory.bytes_per_token(shape, dtype_bytes=2, layers_run=80, captured=1, max_length=4096, kv_cache=True)
    # MLP 3*8192 + 3*28672 = 110592 elements, x 2 = 221184; KV 80 layers * 2 * 8 heads * 128 * 2 bytes = 327680
    assert p["layer"] == 221184 and p["kv_cache"] == 327680
    # forward 221184 + 12288 + 512 + 16 + 327680 = 561680; + captured 8192 * 2
    assert p["total"] == 561680 + 16384 == 578064
    # 40 GiB free: 39 GiB * 0.8 / 578064 = 57953 tokens -> 32768
    assert memory.choose_budget(40 * GIB, p["total"]) == 32768
    # without the prefix cache no keys/values are kept: forward 234000 < the float64 angle step 32 * 8192
    q = memory.bytes_per_token(shape, dtype_bytes=2, layers_run=80, captured=1, max_length=4096, kv_cache=False)
    assert q["total"] == 262144 + 16384
    # a middle layer (39) runs 40 layers: KV 40 * 4096
    m = memory.bytes_per_token(shape, dtype_bytes=2, layers_run=40, captured=1, max_length=4096, kv_cache=True)
    assert m["total"] == 221184 + 12288 + 512 + 16 + 163840 + 16384 == 414224


def test_budget_bounds_and_params_by_hand():
    assert memory.choose_budget(0, 1000) == memory.MIN_BUDGET  # nothing free: the smallest, then back-offs
    assert memory.choose_budget(GIB + 1000 * 300, 1000) == 256  # 240 tokens usable -> the floor
    assert memory.choose_budget(2 * GIB, 10_000) == 65536  # 85899 tokens -> 65536 (also the cap)
    assert memory.choose_budget(2 * GIB, 20_000) == 32768  # 42949 -> 32768
    p = memory.decoder_params(QWEN25_7B, 14, qkv_bias=True)
    # attention 3584*3584*2 + 2*3584*512 + (28 + 8)*128 bias = 29364736; MLP 3*3584*18944 = 203685888; norms 7168
    assert p["layer"] == 233057792
    assert p["full"] == 7_615_616_512  # Qwen2.5-7B's 7.62B
    assert p["truncated"] == 152064 * 3584 + 14 * 233057792 + 3584 == 3_807_810_048
    big = memory.decoder_params(LLAMA3_70B, 40)
    # embedding 128256*8192 = 1050673152 (and as much for the untied LM head); a layer 855654400; norm 8192
    assert big["full"] == 2 * 1050673152 + 80 * 855654400 + 8192 == 70_553_706_496
    assert big["truncated"] == 1050673152 + 40 * 855654400 + 8192 == 35_276_857_344


def test_scorer_on_cuda_picks_the_budget_from_free_memory(tiny_model, tiny_tokenizer, monkeypatch):
    """Device "cuda" without --batch-tokens: the budget comes from the shape and the (here faked) free memory."""
    monkeypatch.setattr(memory, "cuda_available_bytes", lambda model: 2 * GIB)
    s = Scorer(tiny_model, tiny_tokenizer, Renderer(tiny_tokenizer), ScoreOptions(), "cuda")
    # tiny llama (D 32, I 64, 4 heads of 8, 2 KV heads, 3 layers, float32), layer -1, prefix cache on:
    # layer 4 * max(3*32 + 3*64, 3*32 + 4*4*8 + 2*2*8) = 1152; mask 4096 * 5; rotary 64; ids 16; KV 3*2*2*8*4 = 384
    # -> forward 22096 > angles 1024; + captured 128 = 22224; 1 GiB * 0.8 / 22224 = 38651 -> 32768
    assert s.opt.batch_tokens == s.batch_tokens == 32768
    assert s.budget_basis["bytes_per_token"] == 22224 and s.budget_basis["free_bytes"] == 2 * GIB
    assert Scorer(tiny_model, tiny_tokenizer, Renderer(tiny_tokenizer), ScoreOptions(batch_tokens=512),
                  "cuda").batch_tokens == 512


def test_gpu_share_under_torchrun():
    assert [gpu_share(r, 2, 8) for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [gpu_share(r, 3, 8) for r in range(3)] == [[0, 1], [2, 3, 4], [5, 6, 7]]
    assert [gpu_share(r, 8, 8) for r in range(8)] == [[r] for r in range(8)]
    assert [gpu_share(r, 4, 2) for r in range(4)] == [[0], [0], [1], [1]]
    assert gpu_share(0, 1, 8) == list(range(8))


# --- out of memory ----------------------------------------------------------------------------

def _oom_above(monkeypatch, model, max_tokens: int) -> list[int]:
    """The model's forward raises torch.OutOfMemoryError above ``max_tokens`` ids; returns the sizes it ran."""
    base = hooks.base_model(model)
    forward, ran = base.forward, []

    def limited(*args, **kwargs):
        ids = kwargs["input_ids"]
        if ids.numel() > max_tokens:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        ran.append(ids.numel())
        return forward(*args, **kwargs)

    monkeypatch.setattr(base, "forward", limited)
    return ran


@pytest.fixture
def fresh_tiny(tiny_model_dir):
    return loading.load(str(tiny_model_dir), "cpu", "float32", keep_layers=lambda depth: depth)


def test_backoff_scores_like_an_unconstrained_run_and_is_recorded(tmp_path, fresh_tiny, questions_parquet,
                                                                   monkeypatch):
    kw = dict(model=str(fresh_tiny.path), dtype="float32", device="cpu", batch_tokens=4096, layers=[0, -1])
    want = run_score([str(questions_parquet)], tmp_path / "free", loaded=fresh_tiny, **kw)
    ran = _oom_above(monkeypatch, fresh_tiny.model, 200)
    warned = []
    m = run_score([str(questions_parquet)], tmp_path / "tight", loaded=fresh_tiny, warn=warned.append, **kw)
    assert ran and max(ran) <= 200
    steps = m["batch_tokens_backoff"]
    assert steps[0]["from"] == 4096 and all(s["to"] < s["from"] for s in steps)
    assert all(s["rows"] > 1 for s in steps)
    assert m["batch_tokens"] == want["batch_tokens"] == 4096  # the setting that resume and merge compare
    assert len([w for w in warned if "out of memory" in w]) == 1
    got, ref = load_scores(tmp_path / "tight").to_pylist(), load_scores(tmp_path / "free").to_pylist()
    assert [(r["row"], r["layer"]) for r in got] == [(r["row"], r["layer"]) for r in ref]
    for a, b in zip(got, ref):
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)
        assert a["intra"] == pytest.approx(b["intra"], abs=1e-6)


def test_backoff_survives_resume(tmp_path, fresh_tiny, questions_parquet, monkeypatch):
    kw = dict(model=str(fresh_tiny.path), dtype="float32", device="cpu", batch_tokens=4096, window_rows=8,
              commit_every=8)
    _oom_above(monkeypatch, fresh_tiny.model, 200)
    out = tmp_path / "s"
    run_score([str(questions_parquet)], out, loaded=fresh_tiny, warn=lambda msg: None, **kw)
    full, done = load_scores(out).to_pylist(), read_manifest(out)
    m = dict(done, parts=done["parts"][:1], next_row=8, complete=False)  # as if stopped after the first part
    (out / "manifest.json").write_text(json.dumps(m))
    (out / "DONE").unlink(missing_ok=True)
    resumed = run_score([str(questions_parquet)], out, loaded=fresh_tiny, resume=True, **kw)
    assert resumed["complete"] and resumed["batch_tokens"] == 4096
    # the resumed run starts at the smaller budget: no step is repeated
    assert resumed["batch_tokens_backoff"] == done["batch_tokens_backoff"]
    assert resumed["batch_tokens_basis"] == {"source": "given"}
    assert load_scores(out).to_pylist() == full


def test_backoff_in_the_scorer_serves_every_caller(tiny_model, tiny_tokenizer, monkeypatch):
    """validate and the trainer's re-scoring call Scorer.score_records: the back-off lives there."""
    from anglerank.data.reader import Record

    records = [Record(i, i, q, None) for i, q in enumerate(["What is 7 times 8?", "How many apples now?"] * 6)]
    opt = ScoreOptions(batch_tokens=4096, layers=[1])
    want = Scorer(tiny_model, tiny_tokenizer, Renderer(tiny_tokenizer), opt, "cpu").score_records(records)
    _oom_above(monkeypatch, tiny_model, 40)
    warned = []
    s = Scorer(tiny_model, tiny_tokenizer, Renderer(tiny_tokenizer), opt, "cpu", warn=warned.append)
    got = s.score_records(records)
    assert s.backoffs and s.batch_tokens < 4096 and len(warned) == 1
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-6)


def test_a_single_row_that_does_not_fit_is_one_error_line(tmp_path, tiny_model_dir, questions_parquet, monkeypatch):
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(hooks, "run_until_captured", no_memory)
    r = runner.invoke(app, ["score", str(questions_parquet), "-o", str(tmp_path / "o"), "--model",
                            str(tiny_model_dir), "--device", "cpu", "--dtype", "float32", "--batch-tokens", "64",
                            "--no-prefix-cache", "-q"])
    one_error_line(r, "out of memory scoring row", "on its own", "--max-length")


# --- truncated loading ---------------------------------------------------------------------------

def _score(records, loaded, **opt):
    scorer, *_ = build_scorer(ScoreOptions(model=str(loaded.path), dtype="float32", device="cpu", **opt), loaded)
    return scorer, scorer.score_records(records)


def _records():
    from anglerank.data.reader import Record

    qs = [f"Tom has {i} apples and buys {i + 3} more. How many apples does he have?" * (1 + i % 3) for i in range(6)]
    return [Record(i, 1000 + i, q, None) for i, q in enumerate(qs)]


@pytest.mark.parametrize("layers", [[-2], [1], [0, -1], ["0:2"]])
def test_truncated_loading_tiny_model(tiny_model_dir, layers, one_thread):
    full = loading.load(str(tiny_model_dir), "cpu", "float32")
    keep = max(hooks.layer_indices(3, layers)) + 1
    part = loading.load(str(tiny_model_dir), "cpu", "float32", keep_layers=lambda depth: keep)
    assert len(hooks.decoder_layers(part.model)) == keep and part.num_layers == 3
    assert not hasattr(part.model, "lm_head")
    assert sum(p.numel() for p in part.model.parameters()) < sum(p.numel() for p in full.model.parameters())
    s_full, want = _score(_records(), full, layers=layers)
    s_part, got = _score(_records(), part, layers=layers)
    assert s_part.layer_idx == s_full.layer_idx  # -2 is layer 1 of the full model's 3, not of the 2 loaded
    assert got == want


def test_truncated_loading_cuts_per_layer_types(tmp_path, tiny_tokenizer, one_thread):
    """A config whose layers differ (sliding-window attention on some): the kept ones keep their type."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tiny_tokenizer), use_sliding_window=True,
                         sliding_window=4, max_window_layers=1)
    assert cfg.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "sliding_attention"]
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    part = loading.load(str(tmp_path), "cpu", "float32", keep_layers=lambda depth: 2)
    assert part.model.config.layer_types == ["full_attention", "sliding_attention"]
    full = loading.load(str(tmp_path), "cpu", "float32")
    assert _score(_records(), part, layers=[1])[1] == _score(_records(), full, layers=[1])[1]


def test_score_loads_only_what_it_hooks(tmp_path, tiny_model_dir, questions_parquet):
    m = run_score([str(questions_parquet)], tmp_path / "o", model=str(tiny_model_dir), dtype="float32",
                  device="cpu", layers=[-3])
    assert m["layers"] == [0] and m["num_layers"] == 3
    assert m["batch_tokens_basis"]["source"] == "CPU default"


@pytest.mark.integration
def test_truncated_loading_embedded_model(embedded_model_dir):
    """SmolLM2-135M, layer 15 of 30: 16 layers and no LM head loaded, the same scores."""
    full = loading.load(str(embedded_model_dir), "cpu", "float32")
    part = loading.load(str(embedded_model_dir), "cpu", "float32", keep_layers=lambda depth: 16)
    n_full = sum(p.numel() for p in full.model.parameters())
    n_part = sum(p.numel() for p in part.model.parameters())
    # embedding 49152 * 576 = 28311552 (tied: also the LM head); a layer 2*576*576 + 2*576*192 + 3*576*1536
    # + 2*576 = 3540096; final norm 576
    assert n_full == 28311552 + 30 * 3540096 + 576 == 134_515_008
    assert n_part == 28311552 + 16 * 3540096 + 576 == 84_953_664
    for layers in ([15], [-15]):
        assert _score(_records()[:3], part, layers=layers)[1] == _score(_records()[:3], full, layers=layers)[1]


# --- --device-map --------------------------------------------------------------------------------

def _cpu_map(n_layers: int) -> dict:
    """A map written for the whole CausalLM, as users write them (LM head and final norm included)."""
    return {"model.embed_tokens": "cpu", **{f"model.layers.{i}": "cpu" for i in range(n_layers)},
            "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


def test_explicit_device_map_on_cpu(tmp_path, tiny_model_dir, questions_parquet):
    base = ["score", str(questions_parquet), "--model", str(tiny_model_dir), "--device", "cpu", "--dtype", "float32",
            "--layer", "1", "-q"]
    assert runner.invoke(app, base + ["-o", str(tmp_path / "plain")]).exit_code == 0
    file = tmp_path / "map.json"
    file.write_text(json.dumps(_cpu_map(3)))
    for spec in (str(file), json.dumps(_cpu_map(3))):
        out = tmp_path / f"m{len(spec)}"
        r = runner.invoke(app, base + ["-o", str(out), "--device-map", spec])
        assert r.exit_code == 0, r.output
        assert load_scores(out).to_pylist() == load_scores(tmp_path / "plain").to_pylist()
        assert read_manifest(out)["device_map"] == spec


def test_fit_device_map_keeps_the_loaded_modules(tiny_model_dir):
    from transformers import AutoModel

    cfg = loading.load_config(tiny_model_dir)
    loading.truncate_config(cfg, 2)
    fitted = loading.fit_device_map(_cpu_map(3), AutoModel, cfg)
    assert fitted == {"embed_tokens": "cpu", "layers.0": "cpu", "layers.1": "cpu", "norm": "cpu", "rotary_emb": "cpu"}


@pytest.mark.parametrize("spec,fragment", [
    ("{not json", "not valid JSON"),
    ("no-such-map.json", "neither a strategy nor a JSON file"),
    ('{"model.layers.0": true}', "module name -> device"),
    ('{"lm_head": "cpu"}', "names none of the model's modules"),
])
def test_bad_device_map_is_one_error_line(tmp_path, tiny_model_dir, questions_parquet, spec, fragment):
    r = runner.invoke(app, ["score", str(questions_parquet), "-o", str(tmp_path / "o"), "--model",
                            str(tiny_model_dir), "--device", "cpu", "--device-map", spec, "-q"])
    one_error_line(r, fragment)


# --- info ------------------------------------------------------------------------------------------

def test_info_refuses_custom_code_in_one_line(tmp_path, tiny_model_dir):
    import shutil

    folder = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="my_custom_lm", auto_map={"AutoConfig": "configuration_my.MyConfig",
                                                    "AutoModelForCausalLM": "modeling_my.MyForCausalLM"})
    (folder / "config.json").write_text(json.dumps(cfg))
    for command in (["info", "--model", str(folder)],
                    ["score", str(tmp_path / "x.parquet"), "-o", str(tmp_path / "o"), "--model", str(folder)]):
        if command[0] == "score":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"prompt": ["What is 2+2?"]}), tmp_path / "x.parquet")
        one_error_line(runner.invoke(app, command), str(folder), "custom model code")


def test_info_names_a_missing_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_error_line(runner.invoke(app, ["info", "--model", "./my-model"]), "model folder ./my-model does not exist")
