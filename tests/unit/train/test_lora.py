"""LoRA through peft: only the adapter trains, checkpoints load with peft, the merged export loads with
transformers, the KL reference is the base with the adapter off, and scores see the adapter."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from anglerank.cli import app
from helpers import HASH_REWARD as REWARD
from anglerank.train import checkpoint
from anglerank.train.metrics import read_metrics

peft = pytest.importorskip("peft")
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")



def _args(data, run, model_dir, reward, *extra):
    return ["train", str(data), "-o", str(run), "--model", str(model_dir), "--dtype", "float32", "--device", "cpu",
            "--reward", reward, "--num-generations", "2", "--max-new-tokens", "4", "--prompts-per-step", "2",
            "--subset-size", "4", "--epochs", "1", "--lr", "5e-2", "--lora-r", "4", "--quiet", *extra]


def _ids():
    return torch.tensor([[5, 6, 7, 8, 9, 10, 11]])


def test_lora_run_checkpoint_and_merged_export(tmp_path, tiny_model_dir, questions_parquet):
    from transformers import AutoModelForCausalLM

    (tmp_path / "rw.py").write_text(REWARD)
    run = tmp_path / "run"
    res = runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, f"{tmp_path / 'rw.py'}:r",
                                   "--beta", "0.1"))
    assert res.exit_code == 0, res.output
    ck = checkpoint.latest_checkpoint(run)
    assert (ck / "adapter_config.json").exists() and (ck / "adapter_model.safetensors").exists()
    assert not (ck / "model.safetensors").exists()  # the adapter only
    cfg = json.loads((ck / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and {"q_proj", "v_proj", "down_proj"} <= set(cfg["target_modules"])

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        base_logits = base(_ids()).logits
        tuned = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(ck))
        tuned_logits = tuned(_ids()).logits
    assert not torch.allclose(base_logits, tuned_logits, atol=1e-4)  # the adapter learned something

    out = tmp_path / "merged"
    res = runner.invoke(app, ["export", str(run), "-o", str(out)])
    assert res.exit_code == 0, res.output
    merged = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        torch.testing.assert_close(merged(_ids()).logits, tuned_logits, atol=1e-4, rtol=1e-4)

    steps = read_metrics(run, "step")
    # the reference is the base with the adapter off: step 1 starts from the base (LoRA's B = 0), so no KL yet
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6) and steps[-1]["kl"] > 0


def test_lora_resume_is_exact(tmp_path, tiny_model_dir, questions_parquet):
    from safetensors.torch import load_file

    (tmp_path / "rw.py").write_text(REWARD)
    rw = f"{tmp_path / 'rw.py'}:r"
    full, part = tmp_path / "full", tmp_path / "part"
    assert runner.invoke(app, _args(questions_parquet, full, tiny_model_dir, rw, "--epochs", "2")).exit_code == 0
    assert runner.invoke(app, _args(questions_parquet, part, tiny_model_dir, rw, "--epochs", "1")).exit_code == 0
    res = runner.invoke(app, ["train", "--resume", str(part), "--epochs", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    a = load_file(str(checkpoint.latest_checkpoint(full) / "adapter_model.safetensors"))
    b = load_file(str(checkpoint.latest_checkpoint(part) / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_scores_see_the_adapter(tiny_model, tiny_tokenizer):
    import copy

    from anglerank.data.reader import Record
    from anglerank.model.render import Renderer
    from anglerank.scoring.engine import ScoreOptions, Scorer
    from anglerank.train import lora
    from anglerank.train.config import TrainConfig

    model = copy.deepcopy(tiny_model)
    wrapped = lora.attach(model, TrainConfig(lora_r=4))
    inner = wrapped.get_base_model()
    recs = [Record(i, i, f"What is {i} plus {i + 1}? Think.", None) for i in range(4)]

    def scores():
        scorer = Scorer(inner, tiny_tokenizer, Renderer(tiny_tokenizer, "none", None, None, 64),
                        ScoreOptions(prefix_cache=False), "cpu")
        return [r["score"] for r in scorer.score_records(recs)]

    before = scores()  # B = 0: the adapter is the identity
    with torch.no_grad():
        for name, p in inner.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    after = scores()
    assert max(abs(x - y) for x, y in zip(before, after)) > 1e-4
    with wrapped.disable_adapter():
        assert scores() == pytest.approx(before, abs=1e-6)
