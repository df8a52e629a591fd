"""The embedded SmolLM2 model on real GSM8K rows against a plain batch-size-1 computation."""

from __future__ import annotations

import math

import pytest
import torch

from anglerank import angles
from anglerank.data.reader import ParquetSource
from anglerank.data.writer import load_scores
from anglerank.model.render import Renderer
from anglerank.scoring.run import run_score

pytestmark = pytest.mark.integration


def test_embedded_model_converts_from_scratch_into_temporary_cache(embedded_conversion, anglerank_cache):
    """The GGUF -> safetensors conversion ran in this session, into an empty temporary cache."""
    import json
    import os
    from pathlib import Path

    from anglerank.model import loading

    folder, was_empty = embedded_conversion
    assert was_empty  # nothing reused from an earlier run or from the user's cache
    assert os.environ["ANGLERANK_CACHE"] == str(anglerank_cache)
    assert Path(folder).parent.parent == anglerank_cache  # $ANGLERANK_CACHE/models/<name>
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".convert-")]  # no half-written temp dirs
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config  # saved as a plain float checkpoint
    # a second call (and the default --model) reuse the conversion instead of redoing it
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert loading.prepare_embedded() == folder
    assert loading.resolve_model_path(None) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("preset,site,layer", [("gainrl", "mlp-input", -1), ("none", "residual", 20)])
def test_embedded_model_matches_naive_reference(tmp_path, embedded_model_dir, gsm8k_test, preset, site, layer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    n = 50 if preset == "gainrl" else 8
    run_score([str(gsm8k_test)], tmp_path / "s", model=str(embedded_model_dir), dtype="float32", device="cpu",
              preset=preset, site=site, layers=[layer], limit=n)
    got = load_scores(tmp_path / "s").to_pylist()
    assert len(got) == n

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()
    target = model.model.layers[layer]
    store = {}
    if site == "mlp-input":
        target.mlp.up_proj.register_forward_hook(lambda m, a, o: store.__setitem__("x", a[0]))
    else:
        target.register_forward_hook(lambda m, a, o: store.__setitem__("x", o[0] if isinstance(o, tuple) else o))
    renderer = Renderer(tok, preset)
    for rec, row in zip(ParquetSource([str(gsm8k_test)]).iter_records(stop_row=n), got):
        r = renderer.render(rec.question, rec.history)
        with torch.no_grad():
            model(torch.tensor([r.ids]))  # full model, LM head included, one prompt at a time
        x = store["x"][0]
        intra, inter = angles.naive_concentration(x, range(r.n_prefix, r.q_end), range(r.n_prefix))
        assert row["n_tokens"] == len(r.ids) and row["n_prefix"] == r.n_prefix
        assert not math.isnan(intra)
        assert row["intra"] == pytest.approx(intra, abs=1e-4)
        assert row["inter"] == pytest.approx(inter, abs=1e-4)
        assert row["score"] == pytest.approx(intra + inter, abs=2e-4)
