"""The embedded SmolLM2 model on real GSM8K rows against a plain batch-size-1 computation."""

from __future__ import annotations

import math

import pytest
import torch

from anglerank import angles
from anglerank.data.reader import ParquetSource
from anglerank.data.writer import load_scores
from anglerank.render import Renderer
from anglerank.score import run_score

pytestmark = pytest.mark.integration


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
