"""The trainer against the algorithm written out by hand (issue 10, "tests as the spec").

- one GRPO step reproduced from first principles: rewards, group advantages
  (TRL: (r - mean) / (unbiased std + 1e-4)), log-probabilities at the sampling
  temperature, the loss (ratio 1 on the first pass), its gradient and one AdamW update, computed with plain torch and no
  anglerank code, compared with what ``train_step`` did to the weights;
- the window of a real ``anglerank train`` run checked against the GAIN-RL
  formula (docs/method.md, "The training loop") from the accuracy and angle the run logged,
  with the window kept on the data.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from anglerank.cli import app
from anglerank.model import generation
from anglerank.model.generation import Rollouts
from anglerank.train import step
from anglerank.train.config import TrainConfig
from anglerank.train.metrics import read_metrics

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


def _hand_logp(model, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    """log p(completion tokens | prefix) at the sampling temperature, one row at a time, no padding."""
    ids = torch.tensor([prompt + completion])
    logits = model(ids).logits[0, len(prompt) - 1: -1].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(completion)[:, None])[:, 0]


def test_one_step_matches_the_algorithm_by_hand(tiny_model, tiny_tokenizer, monkeypatch):
    # eps = 1 keeps Adam's first update lr g / (|g| + eps) linear in the gradient, so the weights check the
    # gradient itself (with eps = 1e-8 the update is ~lr sign(g), ill-conditioned where |g| ~ eps)
    lr, wd, eps = 1e-2, 0.1, 1.0
    cfg = TrainConfig(num_generations=3, prompts_per_step=2, micro_batch_size=4, max_new_tokens=4, lr=lr,
                      weight_decay=wd, adam_eps=eps, max_grad_norm=0.0, beta=0.0, num_iterations=1,
                      reward=["x.py:f"])
    prompts = [[5, 6, 7], [8, 9, 10, 11]]
    comps = [[20, 21], [22, 23, 24], [25], [26, 27, 28, 29], [30, 31], [32]]
    texts = ["a", "bb", "ccc", "dddd", "e", "ff"]
    reward = lambda prompts, completions, **kw: [float(len(c)) for c in completions]  # noqa: E731
    seq_prompts = [prompts[0]] * 3 + [prompts[1]] * 3
    monkeypatch.setattr(generation, "generate", lambda *a, **k: Rollouts(seq_prompts, comps, texts, [True] * 6))

    model = copy.deepcopy(tiny_model).float()
    ref = copy.deepcopy(model)
    pool = SimpleNamespace(rows=[0, 1], prompt_ids=prompts, prompts=["p0", "p1"], answers=None, columns={})
    opt = torch.optim.AdamW([{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": wd},
                             {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.99), eps=eps)
    ctx = step.StepContext(cfg, model, None, tiny_tokenizer, opt, pool, [reward], model.config.num_hidden_layers - 1,
                           "cpu", None, 0, total_updates=1, generator=torch.Generator().manual_seed(0))
    res = step.train_step(ctx, [0, 1], 0)

    # by hand: rewards, advantages, loss and gradient
    r = torch.tensor([float(len(t)) for t in texts]).reshape(2, 3)
    adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).reshape(-1)
    assert res.rewards == pytest.approx(r.reshape(-1).tolist())
    per_seq = []
    for i in range(6):
        logp = _hand_logp(ref, seq_prompts[i], comps[i], cfg.temperature)
        ratio = torch.exp(logp - logp.detach())  # 1, with the policy's gradient
        per_seq.append((-(ratio * adv[i])).mean())  # clipping is inactive at ratio 1
    loss = torch.stack(per_seq).mean()  # "grpo": mean over tokens, then over sequences
    loss.backward()
    assert res.record["loss"] == pytest.approx(loss.item(), abs=1e-6)
    # one AdamW step from zero state: p <- p (1 - lr wd) - lr g / (|g| + eps) (bias corrections cancel)
    for (name, p_ref), p_new in zip(ref.named_parameters(), model.parameters()):
        decay = wd if p_ref.dim() >= 2 else 0.0
        g = p_ref.grad
        expect = p_ref.detach() * (1 - lr * decay) - lr * g / (g.abs() + eps)
        torch.testing.assert_close(p_new.detach(), expect, rtol=1e-5, atol=1e-7, msg=name)
    assert res.updates == 1 and res.record["lr"] == lr


REWARD = ("def length(prompts, completions, **columns):\n"
          "    return [(sum(map(ord, c)) % 7) / 7 + len(c) / 20 for c in completions]\n")


def test_window_moves_by_the_formula_from_the_logged_accuracy_and_angle(tmp_path, tiny_model_dir,
                                                                          questions_parquet):
    rf = tmp_path / "r.py"
    rf.write_text(REWARD)
    run = tmp_path / "run"
    # N = 23 prompts; step 9 ranks and a wide clamp so several epochs reach the end of the data
    args = ["train", str(questions_parquet), "-o", str(run), "--model", str(tiny_model_dir), "--dtype", "float32",
            "--device", "cpu", "--reward", f"{rf}:length", "--num-generations", "2", "--max-new-tokens", "4",
            "--prompts-per-step", "2", "--subset-size", "4", "--epochs", "5", "--sampler", "gainrl",
            "--mu0", "3", "--sigma", "4", "--step", "9", "--adj-min", "-20", "--adj-max", "20",
            "--correct-threshold", "0.5", "--quiet"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    n, mu = 23, 3.0
    steps, epochs = read_metrics(run, "step"), read_metrics(run, "epoch")
    assert len(epochs) == 5
    for e in epochs:
        mine = [s for s in steps if s["epoch"] == e["epoch"]]
        # equal-sized steps: the epoch accuracy is the mean of the steps' accuracies
        assert e["accuracy"] == pytest.approx(sum(s["accuracy"] for s in mine) / len(mine))
        assert e["mu"] == pytest.approx(mu)
        raw = 9 * math.tanh(2 * (e["accuracy"] - 0.5)) + 9 * math.tanh(2 * e["angle"])
        delta = min(max(raw, -20), 20)
        assert e["delta"] == pytest.approx(delta)
        mu = min(max(mu + delta, 0.0), n - 1.0)  # the window stays on the data
        assert e["mu_next"] == pytest.approx(mu)
        assert 0 <= e["mu_next"] <= n - 1
