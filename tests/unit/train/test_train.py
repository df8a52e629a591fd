"""`anglerank train`: config, token layout, angle term, samplers, and end-to-end runs on a
tiny in-process model (smoke run, checkpoint reload, exact resume after Ctrl-C, plot).

The loss, advantage, sampler-rule and answer-checker math is tested in tests/unit/train/test_grpo.py,
tests/unit/curriculum/test_curriculum.py and tests/unit/rewards/test_rewards.py; this file covers what the
loop adds.
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from anglerank.cli import app
from anglerank.curriculum.samplers.ordered import OrderedSampler
from anglerank.curriculum.samplers.uniform import UniformSampler
from anglerank.model import generation
from anglerank.train import checkpoint, grpo, rollout, step
from anglerank.train.config import TrainConfig, build_config, dump_toml, load_toml
from anglerank.train.metrics import read_metrics

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")

STEP_KEYS = {"loss", "reward_mean", "reward_std", "accuracy", "kl", "clip_fraction", "completion_len_mean",
             "completion_len_max", "zero_std_fraction", "lr", "grad_norm", "tokens_per_s", "angle", "epoch", "step"}
EPOCH_KEYS = {"mu", "sigma", "subset_mean_rank", "subset_mean_score", "accuracy", "angle", "rescore_s",
              "rollout_s", "eval_accuracy", "delta"}


# ------------------------------------------------------------------ config

def test_config_toml_overrides_and_round_trip(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text('[train]\nlr = 3e-6\nsigma = 1000\nstep = 0.05\nnum-generations = 4\nreward = ["math"]\n')
    cfg = build_config(p, lr=5e-6, train_data=["x.parquet"])
    assert cfg.lr == 5e-6  # the command line wins
    assert cfg.num_generations == 4  # from the file, dashes accepted
    assert cfg.sigma == 1000 and isinstance(cfg.sigma, int)  # ranks stay ints, fractions floats
    assert cfg.step == 0.05
    (tmp_path / "saved.toml").write_text(dump_toml(cfg))
    assert TrainConfig(**load_toml(tmp_path / "saved.toml")) == cfg
    p.write_text("learning_rate = 1\n")
    with pytest.raises(ValueError, match="unknown setting 'learning_rate'"):
        load_toml(p)
    with pytest.raises(ValueError, match="--reward-weight"):
        TrainConfig(reward=["math"], reward_weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="--sampler"):
        TrainConfig(sampler="random")
    with pytest.raises(ValueError, match="--num-generations must be at least 2"):
        TrainConfig(num_generations=1)


# ------------------------------------------------------------------ layout and angle

def test_packed_layout_logprobs_match_unpadded(tiny_model):
    """Left-padded prompts + explicit positions give the same log-probs as one row alone."""
    torch.manual_seed(0)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12]]
    comps = [[20, 21, 22], [23, 24, 25, 26, 27]]
    b = rollout.pack(prompts, comps, pad_id=0)
    assert b.prompt_width == 6 and b.completion_width == 5
    assert b.position_ids_BL[1].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6]
    with torch.no_grad():
        out = tiny_model(input_ids=b.input_ids_BL, attention_mask=b.attention_mask_BL,
                         position_ids=b.position_ids_BL, logits_to_keep=b.completion_width + 1)
        logp = grpo.sequence_logprobs(out.logits[:, :-1], b.completion_ids_BT)
        for i, (p, c) in enumerate(zip(prompts, comps)):
            ids = torch.tensor([p + c])
            ref = grpo.sequence_logprobs(tiny_model(ids).logits[:, len(p) - 1: -1], torch.tensor([c]))[0]
            torch.testing.assert_close(logp[i, : len(c)], ref, atol=1e-5, rtol=1e-5)
    t = rollout.trim(b.rows([0]))  # row 0 alone: no padding left
    assert t.prompt_width == 6 and t.completion_width == 3 and bool(t.attention_mask_BL.all())


def test_sequence_angle_matches_naive_pairwise_mean():
    torch.manual_seed(1)
    h = torch.randn(2, 7, 16)
    mask = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 0]])
    got = step.sequence_angles(h, mask)
    for b in range(2):
        idx = mask[b].nonzero().flatten()
        u = torch.nn.functional.normalize(h[b, idx].double(), dim=-1)
        c = u @ u.T
        n = len(idx)
        ref = (c.sum() - c.diagonal().sum()) / (n * (n - 1))
        assert float(got[b]) == pytest.approx(float(ref), abs=1e-12)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_micro_batch_weights_reproduce_full_batch_loss(loss_type):
    torch.manual_seed(2)
    B, T = 6, 5
    logp = torch.randn(B, T, requires_grad=True)
    old = logp.detach() + 0.1 * torch.randn(B, T)
    adv = torch.randn(B)
    mask = (torch.rand(B, T) > 0.3).long()
    mask[:, 0] = 1
    full, _ = grpo.grpo_loss(logp, old, adv, mask, loss_type=loss_type, max_completion_length=8)
    total = 0.0
    n_all = float(mask.sum())
    for idx in ([0, 1, 2, 3], [4, 5]):
        part, _ = grpo.grpo_loss(logp[idx], old[idx], adv[idx], mask[idx], loss_type=loss_type,
                                 max_completion_length=8)
        total = total + part * step.micro_batch_weight(loss_type, float(mask[idx].sum()), n_all, len(idx), B)
    torch.testing.assert_close(total, full)


# ------------------------------------------------------------------ samplers

def test_uniform_and_ordered_samplers_resume_exactly():
    for make in (lambda: UniformSampler(10, 4, seed=3), lambda: OrderedSampler(10, 4, seed=3)):
        a = make()
        first = [a.draw() for _ in range(2)]
        for d in first:
            assert len(set(d.tolist())) == 4
        b = make()
        b.load_state_dict(json.loads(json.dumps(a.state_dict())))
        for _ in range(5):
            assert a.draw().tolist() == b.draw().tolist()
    o = OrderedSampler(10, 4, shuffle=False)
    assert [o.draw().tolist() for _ in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]


# ------------------------------------------------------------------ end to end

# a deterministic reward that varies between completions, so every group has a gradient
REWARD = ("def length(prompts, completions, **columns):\n"
          "    return [(sum(map(ord, c)) % 7) / 7 + len(c) / 20 for c in completions]\n")


def _args(data, run, model_dir, reward_file, *extra):
    return ["train", str(data), "-o", str(run), "--model", str(model_dir), "--dtype", "float32",
            "--device", "cpu", "--reward", f"{reward_file}:length", "--reward", "math", "--num-generations", "2",
            "--max-new-tokens", "5", "--prompts-per-step", "2", "--subset-size", "4", "--micro-batch-size", "3",
            "--lr", "1e-3", "--quiet", *extra]


@pytest.fixture
def reward_file(tmp_path):
    p = tmp_path / "len_reward.py"
    p.write_text(REWARD)
    return p


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_smoke_two_epochs(tmp_path, tiny_model_dir, questions_parquet, reward_file):
    cfg = tmp_path / "run.toml"
    cfg.write_text("epochs = 2\nsigma = 0.5\nlr = 1e-9\n")
    run = tmp_path / "run"
    res = runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, reward_file, "--config", str(cfg),
                                   "--eval-data", str(questions_parquet), "--eval-limit", "3",
                                   "--rescore-every", "4"))
    assert res.exit_code == 0, res.output
    saved = load_toml(run / "config.toml")
    assert saved["lr"] == 1e-3 and saved["epochs"] == 2 and saved["sigma"] == 0.5  # file + CLI override

    recs = read_metrics(run)
    steps = [r for r in recs if r["type"] == "step"]
    epochs = [r for r in recs if r["type"] == "epoch"]
    evals = [r for r in recs if r["type"] == "eval"]
    assert len(steps) == 4 and len(epochs) == 2 and len(evals) == 3
    assert all(STEP_KEYS <= set(r) for r in steps), set(STEP_KEYS) - set(steps[0])
    assert all(EPOCH_KEYS <= set(r) for r in epochs)
    assert all(np.isfinite(r["loss"]) for r in steps) and any(r["grad_norm"] > 0 for r in steps)
    # initial + one re-score after 4 prompts trained (none after the last epoch)
    assert [r["type"] for r in recs].count("score") == 2

    from transformers import AutoModelForCausalLM, AutoTokenizer

    ck = checkpoint.latest_checkpoint(run)
    assert ck.name == "step-0000004"
    for f in ("optimizer.pt", "rng.pt", "trainer_state.json", "model.safetensors"):
        assert (ck / f).exists()
    model = AutoModelForCausalLM.from_pretrained(ck)
    AutoTokenizer.from_pretrained(ck)
    before, after = _weights(tiny_model_dir), _weights(ck)
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(before[n], after[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"

    # the run directory refuses a second fresh run; a changed setting refuses to resume
    res = runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, reward_file))
    assert res.exit_code == 2 and "--resume" in res.output
    res = runner.invoke(app, ["train", "--resume", str(run), "--lr", "0.5", "--quiet"])
    assert res.exit_code == 2 and "--lr" in res.output


def _interrupt_at(monkeypatch, target: str, call: int):
    """Send ourselves SIGINT during the given call of generation.generate (before it runs) or
    of step.train_step (after it returns, i.e. between two steps)."""
    count = {"n": 0}
    if target == "generate":
        orig = generation.generate

        def wrapped(*a, **k):
            count["n"] += 1
            if count["n"] == call:
                os.kill(os.getpid(), signal.SIGINT)
            return orig(*a, **k)

        monkeypatch.setattr(generation, "generate", wrapped)
    else:
        orig = step.train_step

        def wrapped(*a, **k):
            out = orig(*a, **k)
            count["n"] += 1
            if count["n"] == call:
                os.kill(os.getpid(), signal.SIGINT)
            return out

        monkeypatch.setattr(step, "train_step", wrapped)


@pytest.mark.parametrize("where", ["rollout", "between_steps"])
def test_ctrl_c_then_resume_matches_uninterrupted(tmp_path, tiny_model_dir, questions_parquet, reward_file,
                                                  monkeypatch, where):
    extra = ("--epochs", "3", "--sampler", "gainrl", "--sigma", "3", "--step", "4", "--adj-min", "-4")
    full = tmp_path / "full"
    assert runner.invoke(app, _args(questions_parquet, full, tiny_model_dir, reward_file, *extra)).exit_code == 0

    part = tmp_path / "part"
    with monkeypatch.context() as m:
        if where == "rollout":  # Ctrl-C while step 4 generates: the step is redone on resume
            _interrupt_at(m, "generate", 4)
        else:  # Ctrl-C right after step 3 (mid-epoch 2): the run stops there
            _interrupt_at(m, "train_step", 3)
        res = runner.invoke(app, _args(questions_parquet, part, tiny_model_dir, reward_file, *extra))
    assert res.exit_code == 130, res.output
    assert f"anglerank train --resume {part}" in " ".join(res.output.split())
    state = json.loads((checkpoint.latest_checkpoint(part) / "trainer_state.json").read_text())
    assert state["run"]["global_step"] == 3 and state["run"]["step_in_epoch"] == 1 and state["curriculum"]["open"]

    res = runner.invoke(app, ["train", "--resume", str(part), "--quiet"])
    assert res.exit_code == 0, res.output

    def lines(run, name):
        return (run / name).read_text().splitlines()

    assert lines(part, "subsets.jsonl") == lines(full, "subsets.jsonl")  # same prompts, same order
    a, b = _weights(checkpoint.latest_checkpoint(full)), _weights(checkpoint.latest_checkpoint(part))
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=1e-6)
    ma = [r["mu"] for r in read_metrics(full, "epoch")]
    mb = [r["mu"] for r in read_metrics(part, "epoch")]
    assert ma == pytest.approx(mb) and len(ma) == 3


def test_plot_writes_png_or_says_how_to_install(tmp_path, monkeypatch):
    run = tmp_path / "r"
    run.mkdir()
    recs = [{"type": "step", "step": i + 1, "epoch": 0, "reward_mean": 0.1 * i, "accuracy": 0.1 * i}
            for i in range(4)]
    recs += [{"type": "eval", "step": 4, "epoch": 1, "eval_accuracy": 0.5, "elapsed_s": 60.0},
             {"type": "epoch", "epoch": 1, "mu": 1.0, "subset_mean_rank": 2.0, "angle": 0.3}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        res = runner.invoke(app, ["plot", str(run)])
        assert res.exit_code == 2 and "pip install" in res.output
        return
    res = runner.invoke(app, ["plot", str(run)])
    assert res.exit_code == 0, res.output
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    res = runner.invoke(app, ["plot", str(run), "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "pip install" in res.output


def test_baseline_samplers_and_config_only_invocation(tmp_path, tiny_model_dir, questions_parquet, reward_file):
    """uniform never scores; ordered walks the ranking in order; TRAIN may come from --config."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'train_data = ["{questions_parquet}"]\nsampler = "ordered"\nkeep_order = true\nepochs = 2\n')
    run = tmp_path / "ordered"
    args = _args(questions_parquet, run, tiny_model_dir, reward_file, "--config", str(cfg))
    args.remove(str(questions_parquet))
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    draws = [json.loads(x) for x in (run / "subsets.jsonl").read_text().splitlines()]
    assert [d["ranks"] for d in draws] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [d["epoch"] for d in draws] == [1, 2]

    run = tmp_path / "uniform"
    res = runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, reward_file, "--sampler", "uniform",
                                   "--epochs", "2"))
    assert res.exit_code == 0, res.output
    recs = read_metrics(run)
    assert not [r for r in recs if r["type"] == "score"]
    rows = [json.loads(x)["rows"] for x in (run / "subsets.jsonl").read_text().splitlines()]
    assert len(set(rows[0]) | set(rows[1])) == 8  # one shuffled pass: no prompt twice
    assert all(r["rescore_s"] == 0 and r["mu"] is None for r in recs if r["type"] == "epoch")


def test_kl_reference_and_several_iterations(tmp_path, tiny_model_dir, questions_parquet, reward_file):
    """beta > 0 loads a frozen reference; num_iterations > 1 trains on stored old log-probs."""
    run = tmp_path / "kl"
    res = runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, reward_file, "--epochs", "1",
                                   "--beta", "0.05", "--num-iterations", "2", "--loss-type", "dapo",
                                   "--epsilon-high", "0.28", "--lr-schedule", "cosine", "--warmup-steps", "1"))
    assert res.exit_code == 0, res.output
    steps = read_metrics(run, "step")
    assert len(steps) == 2
    # updates 0..3: lr 0 (warm-up), then cosine from 1e-3 at update 1 down to update 3
    assert steps[0]["lr"] == pytest.approx(1e-3)
    assert steps[1]["lr"] == pytest.approx(grpo.lr_at(3, 4, 1e-3, 1, "cosine"))
    # step 1's second pass follows an lr-0 update: nothing moved yet; step 2's follows a real one
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-7) and steps[0]["ratio_mean"] == pytest.approx(1.0)
    assert steps[1]["kl"] > 0 and steps[1]["ratio_mean"] != 1.0


def test_rescoring_counts_prompts_and_covers_the_reachable_ranks(tmp_path, tiny_model_dir, questions_parquet,
                                                                 reward_file):
    run = tmp_path / "r"
    res = runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, reward_file, "--epochs", "4",
                                   "--sigma", "1", "--step", "1", "--adj-max", "1", "--rescore-every", "8",
                                   "--staleness-every", "2"))
    assert res.exit_code == 0, res.output
    scores = read_metrics(run, "score")
    # 4 prompts per epoch, one re-scoring per 8 prompts: after epoch 2 (not after the last, epoch 4)
    assert [r["epoch"] for r in scores] == [0, 2]
    # the window (3 sigma either side, at most 1 rank of move before the next re-scoring) holds < 23 ranks
    assert scores[0]["n"] == 23 and 0 < scores[1]["n"] <= 8
    stale = read_metrics(run, "staleness")
    assert [r["epoch"] for r in stale] == [2, 4] and [r["ranked_at"] for r in stale] == [0, 2]
    assert all(-1 <= r["spearman"] <= 1 and r["window_n"] <= 8 for r in stale)
    epochs = read_metrics(run, "epoch")
    assert [e["rescore_s"] > 0 for e in epochs] == [False, True, False, False]


def _draws(run):
    return [json.loads(x) for x in (run / "subsets.jsonl").read_text().splitlines()]


def test_rankings_other_than_angle_need_no_scoring(tmp_path, tiny_model_dir, questions_parquet, reward_file):
    from anglerank.curriculum import Ranking

    run = tmp_path / "random"
    res = runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, reward_file, "--epochs", "2",
                                   "--ranking", "random", "--seed", "5"))
    assert res.exit_code == 0, res.output
    assert not read_metrics(run, "score")
    order = Ranking.parse("random").order(23, seed=5)
    assert all(d["rows"] == order[d["ranks"]].tolist() for d in _draws(run))

    run = tmp_path / "column"
    res = runner.invoke(app, _args(questions_parquet, run, tiny_model_dir, reward_file, "--epochs", "1",
                                   "--sampler", "ordered", "--keep-order", "--ranking", "column:extra_info.index:desc"))
    assert res.exit_code == 0, res.output
    assert _draws(run)[0]["rows"] == [22, 21, 20, 19]  # extra_info.index = 1000 + row, highest first

    res = runner.invoke(app, _args(questions_parquet, tmp_path / "bad", tiny_model_dir, reward_file,
                                   "--ranking", "column:difficulty"))
    assert res.exit_code == 2 and "no column 'difficulty'" in res.output


def test_scoring_reports_progress_to_the_live_view(tmp_path, tiny_model_dir, questions_parquet, reward_file):
    """Scoring a large pool takes minutes before the first step: the live view is told how far it is."""
    import io

    from rich.console import Console

    from anglerank.train.display import Display
    from anglerank.train.loop import train

    cfg = TrainConfig(train_data=[str(questions_parquet)], output_dir=str(tmp_path / "r"), model=str(tiny_model_dir),
                      dtype="float32", device="cpu", reward=[f"{reward_file}:length", "math"], num_generations=2,
                      max_new_tokens=5, prompts_per_step=2, subset_size=4, micro_batch_size=3, epochs=1)
    events = []
    out = io.StringIO()
    with Display(quiet=False, console=Console(file=out, width=200)) as view:
        train(cfg, on_event=lambda kind, rec: (events.append((kind, dict(rec))), view(kind, rec)))
    scoring = [rec for kind, rec in events if kind == "scoring"]
    assert scoring and scoring[-1] == {"done": 23, "total": 23}  # the 23 prompts of questions_parquet
    assert [r["done"] for r in scoring] == sorted(r["done"] for r in scoring)
    assert "scoring" not in {r["type"] for r in read_metrics(tmp_path / "r")}
