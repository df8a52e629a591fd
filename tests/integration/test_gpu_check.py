"""benchmarks/gpu_check_measure.py: the FLOP and token counts behind gpu_check's MFU, checked by hand;
benchmarks/gpu_check_memory.py: its memory sections, run as --smoke runs them."""

from __future__ import annotations

import importlib.util
import json

import pytest

from helpers import ROOT

# benchmarks/ is not a package; this module imports only the standard library at its top
_PATH = ROOT / "benchmarks" / "gpu_check_measure.py"
_spec = importlib.util.spec_from_file_location("gpu_check_measure", _PATH)
measure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(measure)

# hidden 8, 2 heads of 4, 1 key/value head, MLP 16, vocabulary 32
TINY = dict(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=16, vocab_size=32, tie_word_embeddings=True)


def test_param_and_flop_counts_by_hand():
    # one layer: q 8x8 + 8 bias, k and v 8x4 + 4 bias each, o 8x8, MLP 3 x 8x16, two norms of 8
    layer = (64 + 8) + 2 * (32 + 4) + 64 + 3 * 128 + 16
    assert layer == 608
    p = measure.qwen2_params(TINY)
    assert p["non_embedding"] == 2 * 608 + 8  # + final norm
    assert p["scorer"] == 2 * 608 + 8 - 3 * 128 - 8  # stops at the last MLP's input
    assert p["embedding"] == p["lm_head"] == 32 * 8
    assert p["total"] == 2 * 608 + 8 + 256  # tied: the LM head is the embedding
    assert measure.qwen2_params({**TINY, "tie_word_embeddings": False})["total"] == 2 * 608 + 8 + 512
    # (the smoke run checks these counts against the built model: `params_match` in its JSON)
    f = measure.flops_per_token(p)
    assert f == {"scorer": 2 * 832, "authors": 2 * (1224 + 256)}


def test_executed_tokens_runs_a_shared_prefix_once():
    # three rows of 10, 12, 9 tokens sharing a 6-token prefix: 4 + 6 + 3 own tokens, the prefix once
    assert measure.executed_tokens([10, 12, 9], [6, 6, 6]) == 13 + 6
    assert measure.executed_tokens([10, 12, 9], [6, 6, 6], prefix_cache=False) == 31
    # a row cut inside its prefix (n_prefix == n_tokens) has nothing to share; one sharing row runs alone
    assert measure.executed_tokens([10, 6], [6, 6]) == 16


def test_rates_and_mfu():
    r = measure.rates(prompt_tokens=1000, ran_tokens=400, seconds=2.0, flops_tok=1e9, peak_flops=1e12)
    assert r["tokens_per_s"] == 500 and r["ran_tokens_per_s"] == 200
    assert r["mfu"] == 0.2 and r["mfu_all_tokens"] == 0.5


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H200", 989.0), ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.0), ("NVIDIA L4", 121.0),
    ("NVIDIA GH200 480GB", 989.0), ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", None), ("Tesla T4", None),
])
def test_peak_table(name, peak):
    assert measure.table_peak_tflops(name) == peak


def _sibling(name: str):
    """A module of benchmarks/ as its scripts import it: by name, from their own folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(_PATH.parent))
        return importlib.import_module(name)


def test_authors_reference_is_the_full_matrix_by_hand(tiny_model, tiny_tokenizer, questions_parquet, one_thread):
    """The authors' loop the benchmarks time (benchmarks/common.py) scores each prompt like the full
    float32 L x L cosine matrix of the last MLP's input, averaged over the question's spans by hand."""
    import torch

    from anglerank.data.reader import ParquetSource
    from anglerank.model.render import Renderer

    records = list(ParquetSource([str(questions_parquet)]).iter_records(stop_row=3))
    scores, tokens = _sibling("common").authors_reference(tiny_model, tiny_tokenizer, records, "gainrl")
    renderer = Renderer(tiny_tokenizer, "gainrl")
    seen = {}
    hook = tiny_model.model.layers[-1].mlp.up_proj.register_forward_hook(
        lambda m, a, o: seen.__setitem__("x", a[0][0].float()))
    expected, n_tokens = [], 0
    try:
        for rec in records:
            r = renderer.render(rec.question, rec.history)
            with torch.no_grad():
                tiny_model(input_ids=torch.tensor([r.ids]))
            u = torch.nn.functional.normalize(seen["x"], dim=1)
            cos = u @ u.T
            p, q = r.n_prefix, r.q_end
            n = q - p
            intra = (cos[p:q, p:q].sum() - cos[p:q, p:q].diagonal().sum()) / (n * (n - 1))
            expected.append(float(intra + cos[p:q, :p].mean()))
            n_tokens += len(r.ids)
    finally:
        hook.remove()
    assert tokens == n_tokens and len(scores) == len(records) == 3
    assert scores == pytest.approx(expected, abs=1e-5)


def test_memory_sections_run_on_cpu(tmp_path, tiny_tokenizer, questions_parquet, one_thread):
    """The memory sections as --smoke runs them: the back-off forced (simulated on a CPU), the
    truncated load and --device-map auto scoring like a full load, and their markdown rows."""
    import shutil

    memory_check, report = _sibling("gpu_check_memory"), _sibling("gpu_check_report")
    bundle = tmp_path / "bundle"
    tiny_tokenizer.save_pretrained(bundle)
    config = json.loads((bundle / "tokenizer_config.json").read_text())  # as `prepare` writes it: the template
    config["chat_template"] = tiny_tokenizer.chat_template                # inside, the bundle copies only this file
    (bundle / "tokenizer_config.json").write_text(json.dumps(config))
    shutil.copy(questions_parquet, bundle / "gsm8k_prompts.parquet")
    built = measure.build_model("tiny2", bundle, tmp_path, "cpu", 0)
    prompts = bundle / "gsm8k_prompts.parquet"
    budget = memory_check.budget_vs_peak(built["path"], prompts, 16, "float32", "cpu", tmp_path)
    assert budget["batch_tokens"] in (1024, 4096)  # the CPU default, recorded with its reason
    assert budget["basis"]["source"] == "CPU default" and budget["largest_batch_tokens"] > 0
    backoff = memory_check.forced_backoff(built["path"], prompts, 16, "float32", "cpu")
    assert backoff["backoff"][0]["from"] == memory_check.BACKOFF_START and len(backoff["warnings"]) == 1
    assert backoff["rows_equal"] and backoff["max_abs_diff"] < 1e-6
    loading = memory_check.truncated_loading(built["path"], prompts, 16, "float32", "cpu")
    # tiny2: 3 layers, the middle one is layer 0: one layer of three and no LM head (tied) are loaded
    assert loading["layer"] == 0 and loading["params_match"]
    assert loading["truncated"]["params"] < loading["full"]["params"]
    assert loading["max_abs_diff_truncated"] == 0.0 and loading["max_abs_diff_device_map"] == 0.0
    data = {"shapes": {"tiny2": {"memory": {"budget_vs_peak": budget, "forced_backoff": backoff,
                                            "truncated_loading": loading}}}}
    rows = report.markdown_memory(data)
    assert any("forced back-off" in r for r in rows) and any("truncated loading (layer 0 of 3)" in r for r in rows)
