"""The rollout seam: the trainer gets its completions from a ``RolloutEngine``.

- A seeded tiny run (with eval, angle re-scoring, two updates per step and a KL term; and one with
  --filter-groups) leaves the same metrics (timings aside), prompts.jsonl, subsets.jsonl and final
  weights as the trainer from before the seam, run from ``git archive`` of that commit in a fresh process.
- Any object with the engine's two methods drives a step: no Hugging Face ``generate`` call is made,
  the policy trains on the engine's completions, and the engine is told of the new weights.
- The eval asks the same engine, for greedy completions.
"""

from __future__ import annotations

import copy
import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from anglerank.model import generation
from anglerank.model.generation import Rollouts
from anglerank.train import step
from anglerank.train.config import TrainConfig
from anglerank.train.engine import HFRolloutEngine, RolloutEngine
from helpers import HASH_REWARD, ROOT, package_at

# The trainer before the rollout seam: generation called from inside the step and the eval.
REFERENCE_COMMIT = "694b5b254a1f325a4be660bb70ef3b8b1d2317ec"
TIMES = ("elapsed_s", "rollout_s", "update_s", "tokens_per_s", "eval_s", "seconds", "rescore_s",
         "rescore_over_rollout")
# case -> (reward function of rw.py, options); the coarse reward makes whole groups agree, so --filter-groups drops
# and refills
CASES = {"plain": ("r", ["--ranking", "angle", "--rescore-every", "4", "--num-iterations", "2", "--beta", "0.01"]),
         "filter": ("coarse", ["--sampler", "uniform", "--filter-groups", "--max-num-gen-batches", "3"])}
REWARDS = HASH_REWARD + ("def coarse(prompts, completions, **k):\n"
                         "    return [sum(map(ord, c)) % 2 for c in completions]\n")

_RUN = """
import json, sys
from typer.testing import CliRunner
from anglerank.cli import app
data, model, out, reward, cases = sys.argv[1:]
base = ["train", data, "--model", model, "--dtype", "float32", "--device", "cpu",
        "--num-generations", "2", "--max-new-tokens", "4", "--prompts-per-step", "2", "--subset-size", "4",
        "--epochs", "2", "--threads", "1", "--seed", "3", "--quiet", "--eval-data", data, "--eval-limit", "4"]
for name, (func, extra) in json.loads(cases).items():
    res = CliRunner().invoke(app, [*base, "-o", f"{out}/{name}", "--reward", f"{reward}:{func}", *extra])
    assert res.exit_code == 0, res.output
"""


def _train(package: Path, data: Path, model: Path, out: Path, reward: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(package), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _RUN, str(data), str(model), str(out), reward, json.dumps(CASES)],
                         cwd=package, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """The cases run by the reference commit's package and by this checkout's, each in a fresh process."""
    base = tmp_path_factory.mktemp("seam")
    pkg = package_at(REFERENCE_COMMIT, base / "reference")
    import pyarrow as pa
    import pyarrow.parquet as pq

    qs = [f"Tom has {i} apples and buys {i + 3} more. How many apples does he have?" for i in range(12)]
    data = base / "q.parquet"
    pq.write_table(pa.table({"prompt": [[{"role": "user", "content": q}] for q in qs],
                             "reward_model": [{"ground_truth": str(2 * i + 3)} for i in range(len(qs))]}), data)
    (base / "rw.py").write_text(REWARDS)
    reward = str(base / "rw.py")
    _train(pkg, data, tiny_model_dir, base / "ref", reward)
    _train(ROOT, data, tiny_model_dir, base / "new", reward)
    return base / "ref", base / "new"


def _metrics(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in rec.items() if k not in TIMES} for rec in lines]


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_seeded_run_is_byte_identical_through_the_seam(runs, case):
    ref, new = (r / case for r in runs)
    assert _metrics(new) == _metrics(ref)
    assert any(r["type"] == "eval" for r in _metrics(ref)) and any(r["type"] == "step" for r in _metrics(ref))
    for name in ("prompts.jsonl", "subsets.jsonl"):
        assert filecmp.cmp(ref / name, new / name, shallow=False), name
    last = (ref / "checkpoints" / "LATEST").read_text().strip()
    assert last == (new / "checkpoints" / "LATEST").read_text().strip()
    assert filecmp.cmp(ref / "checkpoints" / last / "model.safetensors",
                       new / "checkpoints" / last / "model.safetensors", shallow=False)


class FixedEngine:
    """An engine that is not Hugging Face: fixed completions, and a record of what it was asked."""

    def __init__(self, completions: list[list[int]]):
        self.completions, self.calls, self.weights = completions, [], []

    def generate(self, prompt_ids, *, max_new_tokens, greedy=False, temperature=1.0, top_p=1.0, top_k=0,
                 batch_size=64, generator=None, stop_flag=None) -> Rollouts:
        self.calls.append({"n": len(prompt_ids), "greedy": greedy, "max_new_tokens": max_new_tokens})
        comps = [list(self.completions[i % len(self.completions)]) for i in range(len(prompt_ids))]
        return Rollouts([list(p) for p in prompt_ids], comps, [str(len(c)) for c in comps], [True] * len(comps))

    def update_weights(self, model) -> None:
        self.weights.append(model)


def test_any_engine_drives_a_step_without_hugging_face_generate(tiny_model, tiny_tokenizer, monkeypatch):
    def no_hf(*a, **k):
        raise AssertionError("Hugging Face generate was called")

    monkeypatch.setattr(generation, "generate", no_hf)
    comps = [[20, 21], [22, 23, 24], [25], [26, 27, 28, 29]]
    engine = FixedEngine(comps)
    assert isinstance(engine, RolloutEngine) and isinstance(HFRolloutEngine(tiny_model, tiny_tokenizer), RolloutEngine)
    cfg = TrainConfig(num_generations=2, prompts_per_step=2, micro_batch_size=4, max_new_tokens=4, lr=1e-2,
                      max_grad_norm=0.0, beta=0.0, reward=["x.py:f"])
    model = copy.deepcopy(tiny_model).float()
    before = [p.detach().clone() for p in model.parameters()]
    pool = SimpleNamespace(rows=[0, 1], prompt_ids=[[5, 6, 7], [8, 9]], prompts=["p0", "p1"], answers=None,
                           columns={})
    reward = lambda prompts, completions, **kw: [float(c) for c in completions]  # noqa: E731
    ctx = step.StepContext(cfg, model, None, tiny_tokenizer, torch.optim.AdamW(model.parameters(), lr=1e-2), pool,
                           [reward], model.config.num_hidden_layers - 1, "cpu", None, 0, total_updates=1,
                           generator=torch.Generator().manual_seed(0), engine=engine)

    batch = step.produce_batch(ctx, [0, 1])
    assert batch.groups.ro.completion_ids == comps
    assert batch.groups.total == [2.0, 3.0, 1.0, 4.0]
    assert batch.advantages.tolist() == pytest.approx([-0.7071, 0.7071, -0.7071, 0.7071], abs=1e-3)
    upd = step.update_policy(ctx, batch, 0)
    assert upd["trained_sequences"] == 4 and engine.weights == [model]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

    res = step.train_step(ctx, [1, 0], 1)  # the whole step goes through the same engine
    assert res.lengths == [len(c) for c in comps] and res.prompts == [1, 0]
    assert [c["n"] for c in engine.calls] == [4, 4] and not any(c["greedy"] for c in engine.calls)
    assert len(engine.weights) == 2


def test_the_eval_asks_the_same_engine_for_greedy_completions(monkeypatch):
    from anglerank.train import loop
    from anglerank.train.checkpoint import RunState

    monkeypatch.setattr(generation, "generate", lambda *a, **k: pytest.fail("Hugging Face generate was called"))
    engine = FixedEngine([[7], [8, 9]])
    cfg = TrainConfig(reward=["x.py:f"], eval_every=1, eval_max_new_tokens=5, eval_batch_size=3)
    pool = SimpleNamespace(rows=[0, 1, 2], prompt_ids=[[1], [2], [3]], prompts=["a", "b", "c"], answers=None,
                           columns={})
    reward = lambda prompts, completions, **kw: [float(c == "2") for c in completions]  # noqa: E731
    logged = []
    run = SimpleNamespace(cfg=cfg, st=RunState(), eval_pool=pool, log=lambda kind, rec: logged.append((kind, rec)),
                          ctx=SimpleNamespace(cfg=cfg, engine=engine, reward_funcs=[reward]))
    assert loop._evaluate_if_due(run, first=True) == pytest.approx(1 / 3)
    assert engine.calls == [{"n": 3, "greedy": True, "max_new_tokens": 5}]
    assert logged[0][0] == "eval" and logged[0][1]["eval_completion_len_mean"] == pytest.approx(4 / 3)
