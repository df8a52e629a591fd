"""What the trainer's numbers rest on: float32 log-probabilities at the sampling temperature
under bf16 autocast, and a learning-rate schedule that a longer resumed run does not stretch."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from anglerank.cli import app
from helpers import HASH_REWARD as REWARD
from anglerank.train import grpo, rollout, step
from anglerank.train.config import TrainConfig
from anglerank.train.metrics import read_metrics

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def _ctx(model, temperature):
    cfg = TrainConfig(temperature=temperature, dtype="bfloat16")
    return step.StepContext(cfg, model, None, None, None, None, [], 1, "cpu", torch.bfloat16, 0, 1,
                            torch.Generator())


def _reference_logp(model, b, temperature):
    """The spec: hidden states from the bf16 forward, the head in float32, softmax of logits / T."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.model(input_ids=b.input_ids_BL, attention_mask=b.attention_mask_BL,
                        position_ids=b.position_ids_BL).last_hidden_state
    h = h[:, -(b.completion_width + 1):-1].float()
    logits = h @ model.lm_head.weight.float().T / temperature
    return torch.log_softmax(logits.double(), -1).gather(-1, b.completion_ids_BT.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_float32_head_at_temperature(tiny_model, temperature):
    b = rollout.pack([[5, 6, 7, 8], [9, 10]], [[20, 21, 22], [23, 24, 25, 26]], pad_id=0)
    mask = b.completion_mask_BT.bool()
    with torch.no_grad():
        got, _ = step._forward_logp(_ctx(tiny_model, temperature), tiny_model, b, capture=False)
        ref = _reference_logp(tiny_model, b, temperature)
        # what the old code did: logits straight out of autocast (bf16), at T = 1
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = tiny_model(input_ids=b.input_ids_BL, attention_mask=b.attention_mask_BL,
                             position_ids=b.position_ids_BL, logits_to_keep=b.completion_width + 1)
        assert out.logits.dtype == torch.bfloat16
        old = grpo.sequence_logprobs(out.logits[:, :-1], b.completion_ids_BT)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got[mask].double(), ref[mask], atol=2e-5, rtol=0)
    assert (old[mask].double() - ref[mask]).abs().max() > 1e-4  # the bf16-rounded logits were measurably off
    assert tiny_model.lm_head.forward.__func__ is torch.nn.Linear.forward  # the head is restored


def test_sequence_logprobs_temperature_is_softmax_of_scaled_logits():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11)
    labels = torch.randint(0, 11, (2, 3))
    ref = torch.log_softmax(logits / 0.5, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(grpo.sequence_logprobs(logits, labels, temperature=0.5), ref)
    with pytest.raises(ValueError):
        grpo.sequence_logprobs(logits, labels, temperature=0.0)




def test_resume_with_more_epochs_keeps_the_cosine_schedule(tmp_path, tiny_model_dir, questions_parquet):
    (tmp_path / "rw.py").write_text(REWARD)
    run = tmp_path / "run"
    args = ["train", str(questions_parquet), "-o", str(run), "--model", str(tiny_model_dir), "--dtype", "float32",
            "--device", "cpu", "--reward", f"{tmp_path / 'rw.py'}:r", "--num-generations", "2",
            "--max-new-tokens", "3", "--prompts-per-step", "2", "--subset-size", "4", "--sampler", "uniform",
            "--lr", "1e-3", "--lr-schedule", "cosine", "--min-lr-ratio", "0.1", "--epochs", "2", "--quiet"]
    assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "3"])
    assert res.exit_code == 0, res.output
    assert "keeps its length of 4 updates" in " ".join(res.output.split())
    lrs = [r["lr"] for r in read_metrics(run, "step")]
    # the first run's 4 updates follow a 4-update cosine; the added ones stay at its final value
    assert lrs[:4] == pytest.approx([grpo.lr_at(u, 4, 1e-3, 0, "cosine", 0.1) for u in range(4)])
    assert lrs[4:] == pytest.approx([1e-4, 1e-4])
