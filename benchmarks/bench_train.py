"""Does GAIN-RL train faster than uniform GRPO? A same-budget experiment with controls.

The paper (arXiv 2506.02281) reports over 2.5x fewer GRPO steps than uniform
sampling to the same accuracy. This script tests that claim at small scale in
a regime shaped like the paper's, with the controls that say what any
difference comes from:

- ``uniform``: shuffled passes over the data (vanilla GRPO);
- ``angle``: GAIN-RL as the authors run it: the angle ranking scored once
  before training, the Gaussian window moved by accuracy and angle;
- ``random``: the same window mechanics over a seeded random ranking (the
  control that removes the signal and keeps everything else);
- ``length``: the window over prompt length, shortest first (what the
  orderings the authors ship amount to);
- ``angle-closed``: ``angle`` re-scored with the live policy (the closed loop,
  re-scoring the reachable ranks every half pass), with a staleness diagnostic.

Task: the embedded SmolLM2-135M-Instruct on generated arithmetic word problems
of four kinds (one-digit multiplication, addition, subtraction, two steps),
base greedy accuracy about 0.3; a held-out set stratified by kind, scored per
kind (``eval_by = data_source``).

Regime (``cpu``): N = 256 prompts, K = 8 per epoch, 80 epochs, G = 4. Sigma,
step and the clamp are the authors' fractions of N (2/15, 1/15, 2/15: 34, 17
and 34 ranks), so sigma / K = 4.3 as in the paper (1000 / 256 = 3.9); 80 x 8 =
640 draws is 2.5 passes over the data. ``wrap`` lets the window start a new
pass; with the target accuracy ``beta_acc`` at 0.3 (see ARMS; near the base
model's greedy accuracy of 0.25, above the sampled accuracy of about 0.17 the
window sees early on) and the angle term at about 0.64, the window moves at
least about 7 ranks per epoch even at zero accuracy, so it sweeps the ranking
at least twice (each run reports its sweeps).

The ``ordering`` configuration asks the two questions a user deciding on GAIN-RL
has: does the angle ranking agree with how hard the prompts really are, and does
an easy-first window help at all. Same task, model and per-step budget, 48 epochs,
``--wrap`` with the circular window, five seeds of five arms (seed s of every arm
starts from the same weights and the same rollout generator):

- ``uniform``, ``angle``, ``random`` as above;
- ``oracle``: the same window over the base model's measured pass rates, easiest
  first (``anglerank passrate``, G = 8 at temperature 0.9; ``--ranking
  column:pass_rate:desc``): the best order a difficulty signal could give;
- ``uniform-filter``: uniform sampling with DAPO's dynamic sampling
  (``--filter-groups``, at most 3 rollout batches a step): the practitioner's
  alternative, compared by steps and by rollouts generated.

The target is an absolute held-out accuracy fixed in the configuration before
the runs (0.50). Arms are compared on run-level AUC (over steps and over
rollouts) and final accuracy, unpaired: the difference of means with a Welch 95%
interval and an exact permutation test over every split of the 10 runs. The
Spearman correlation of the angle score with the pass rate is reported overall,
within each problem kind and with prompt length partialled out, each with a
bootstrap 95% interval. Reading rules, fixed before the runs:

- oracle minus random >= +0.05 AUC with most oracle seeds above random's mean:
  ordering can matter here, so the angle signal is what failed;
- |oracle minus random| < 0.03 AUC: no ordering rescues this window; this regime
  cannot test GAIN-RL;
- random close to uniform (|difference| < 0.03 AUC, interval covering 0) over
  five seeds each: the earlier gap was seed noise.

Each finished run keeps its metrics, draws and per-prompt records, gzipped, in
``benchmarks/results/train_CONFIG/runs/ARM-sSEED/``.

Every (arm, seed) is one ``anglerank train`` run directory under ``--work``;
a finished run leaves ``benchmarks/results/train_CONFIG/runs/ARM-sSEED.json``
and is skipped next time; an interrupted one resumes from its checkpoint.
``--part i/n`` runs every n-th job so n processes can share the list.
``--report`` (also run after the jobs) writes ``train_CONFIG.{json,md,png}`` from
the finished runs (the reading rules apply once each compared arm has five seeds).

    python benchmarks/bench_train.py                      # all CPU jobs, then the report
    python benchmarks/bench_train.py --part 0/2 &         # two processes, one core each
    python benchmarks/bench_train.py --part 1/2 &
    python benchmarks/bench_train.py --report             # table and figure from what finished
    python benchmarks/bench_train.py --config ordering --part 0/2 &   # does any ordering help?
    python benchmarks/bench_train.py --config ordering --part 1/2 &
    python benchmarks/bench_train.py --config gpu --model /path/to/model   # paper scale, one GPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import machine

ROOT = Path(__file__).resolve().parents[1]

SUFFIX = " Answer with just the number."
NAMES = ["Tom", "Anna", "Ben", "Maria", "Sam", "Lily", "Omar", "Priya", "Leo", "Mia"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "stamps", "shells"]
KINDS = ("mul", "add", "sub", "two")
MIX = {"mul": 0.4, "add": 0.2, "sub": 0.2, "two": 0.2}  # training pool; the base model solves mul best

# beta_acc: the accuracy at which the window's accuracy term is neutral. The authors' 0.5 left this model's
# window (accuracy 0.0-0.1 at the top of the angle ranking) crawling at 1.7-2.7 ranks per epoch (measured), under
# one sweep in 80 epochs; 0.3 lets it sweep. It is near the base model's greedy accuracy (0.25); the window sees
# the sampled accuracy at temperature 0.9 (about 0.17 in the first sweep), so its accuracy term starts negative.
# Same for every window arm.
_WINDOW = dict(sampler="gainrl", beta_acc=0.3)
ARMS = {
    "uniform": dict(sampler="uniform"),
    "angle": dict(_WINDOW, ranking="angle", rescore_every=0, staleness_every=16),
    "random": dict(_WINDOW, ranking="random", rescore_every=0),
    "length": dict(_WINDOW, ranking="length", rescore_every=0),
    "angle-closed": dict(_WINDOW, ranking="angle", rescore_every=0.5, rescore_scope="reachable", staleness_every=16),
    # the oracle: the same window over the measured pass rates of the base model, easiest first
    "oracle": dict(_WINDOW, ranking="column:pass_rate:desc", rescore_every=0),
    # the practitioner's alternative: uniform sampling with DAPO's dynamic sampling
    "uniform-filter": dict(sampler="uniform", filter_groups=True, max_num_gen_batches=3),
}
_COMMON = dict(prompts_per_step=8, temperature=0.9, beta=0.0, loss_type="grpo", max_grad_norm=0.1, wrap=True,
               answer_format="any", eval_by="data_source", keep_checkpoints=1)
CONFIGS = {
    # About 3 hours of a 2-core CPU in all (two processes of one thread each).
    "cpu": dict(n_train=256, eval_per_kind=48, jobs=[(a, s) for s in (0, 1, 2) for a in ("uniform", "angle", "random")]
                + [("length", 0), ("angle-closed", 0)],
                train=dict(_COMMON, epochs=80, subset_size=8, num_generations=4, max_new_tokens=32, lr=1e-5,
                           micro_batch_size=8, generation_batch_size=32, eval_batch_size=64, eval_every=8,
                           save_every=8, threads=1)),
    # Does any ordering help? Five arms, five seeds each, 48 epochs, two processes of one thread each. Measured
    # run times: 35-45 minutes in bf16 on a CPU with bf16 units (uniform-filter about twice that), 60-110 in float32
    # on one without: about 10 hours of a 2-core CPU in all with bf16 units, about 16 without. The target accuracy is fixed here, before any run: 0.50 held-out accuracy
    # (base 0.25; uniform reached 0.52-0.56 by step 32 in the earlier 80-epoch runs).
    "ordering": dict(n_train=256, eval_per_kind=48, target=0.50, passrate=dict(rollouts=8, temperature=0.9, seed=0),
                     jobs=[(a, s) for s in range(5) for a in ("uniform", "angle", "random", "oracle",
                                                              "uniform-filter")],
                     train=dict(_COMMON, epochs=48, subset_size=8, num_generations=4, max_new_tokens=32, lr=1e-5,
                                micro_batch_size=8, generation_batch_size=32, eval_batch_size=64, eval_every=8,
                                save_every=8, threads=1)),
    # Minutes: checks the pipeline, measures nothing.
    "smoke": dict(n_train=32, eval_per_kind=4, target=0.3, passrate=dict(rollouts=2, temperature=0.9, seed=0),
                  jobs=[(a, 0) for a in ARMS],
                  train=dict(_COMMON, epochs=4, subset_size=8, num_generations=2, max_new_tokens=12, lr=1e-5,
                             micro_batch_size=8, generation_batch_size=32, eval_batch_size=32, eval_every=2,
                             save_every=2, threads=1, rescore_every=8)),
    # The paper's scale on one GPU (not run here: the lent GPU machines cannot receive the embedded model):
    # N = 7,500, K = 256, 200 epochs, G = 8, the authors' lr and KL.
    "gpu": dict(n_train=7500, eval_per_kind=125, jobs=[(a, s) for s in (0, 1, 2) for a in ARMS],
                train=dict(_COMMON, epochs=200, subset_size=256, num_generations=8, max_new_tokens=128, lr=1e-6,
                           beta=0.005, prompts_per_step=64, micro_batch_size=64, generation_batch_size=512,
                           eval_batch_size=500, eval_every=10, save_every=10)),
}
READING_SEEDS = 5  # the reading rules apply once both arms of a comparison have this many seeds
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


# --------------------------------------------------------------------------- data

def problem(kind: str, r: random.Random) -> tuple[str, int]:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    if kind == "mul":
        a, b = r.randint(2, 9), r.randint(2, 9)
        return f"{n} buys {a} boxes of {it}. Each box holds {b} {it}. How many {it} does {n} buy in total?", a * b
    if kind == "add":
        a, b = r.randint(2, 20), r.randint(2, 20)
        return f"{n} has {a} {it}. {n} buys {b} more {it}. How many {it} does {n} have now?", a + b
    if kind == "sub":
        a = r.randint(10, 30)
        b = r.randint(1, a - 1)
        return f"{n} has {a} {it} and gives {b} of them to a friend. How many {it} does {n} have left?", a - b
    a, b = r.randint(2, 20), r.randint(2, 20)
    c = r.randint(1, a + b - 1)
    return f"{n} has {a} {it}, buys {b} more, then gives away {c}. How many {it} does {n} have now?", a + b - c


def make_rows(kinds: list[str], r: random.Random, seen: set) -> list[dict]:
    rows = []
    for kind in kinds:
        while True:
            q, a = problem(kind, r)
            if q not in seen:
                seen.add(q)
                rows.append({"question": q, "answer": str(a), "kind": kind})
                break
    return rows


def make_data(spec: dict, work: Path) -> dict:
    """The training pool (kinds drawn by MIX) and a disjoint held-out set with eval_per_kind of each kind."""
    r, seen = random.Random(1234), set()
    train_kinds = r.choices(list(MIX), weights=list(MIX.values()), k=spec["n_train"])
    train_rows = make_rows(train_kinds, r, seen)
    eval_rows = make_rows([k for k in KINDS for _ in range(spec["eval_per_kind"])], random.Random(5678), seen)
    paths = {"train": work / "train.parquet", "eval": work / "eval.parquet"}
    for name, rows in (("train", train_rows), ("eval", eval_rows)):
        pq.write_table(pa.table({
            "data_source": [f"arith-{x['kind']}" for x in rows],
            "prompt": [[{"role": "user", "content": x["question"] + SUFFIX}] for x in rows],
            "reward_model": [{"ground_truth": x["answer"], "style": "rule"} for x in rows],
            "extra_info": [{"index": i, "kind": x["kind"]} for i, x in enumerate(rows)],
        }), paths[name])
    return {**paths, "train_kinds": train_kinds, "eval_share": {k: 1 / len(KINDS) for k in KINDS}}


# --------------------------------------------------------------------------- pass rates and the angle

def add_pass_rates(spec: dict, data: dict, work: Path, model: str | None) -> dict:
    """The base model's pass rate of every training prompt (``anglerank passrate``): the oracle's order.

    Every arm then trains on the same rows with the ``pass_rate`` column added, so the data differ
    between arms in nothing but the ranking each one walks."""
    from anglerank.passrate import DATA_FILE, PassRateOptions, run_passrate
    from anglerank.scoring.engine import ScoreOptions

    out, pr = work / "passrate", spec["passrate"]
    opt = PassRateOptions(rollouts=pr["rollouts"], temperature=pr["temperature"], seed=pr["seed"],
                          max_new_tokens=spec["train"]["max_new_tokens"], answer_format=spec["train"]["answer_format"])
    run_passrate([str(data["train"])], out, options=opt, score_options=ScoreOptions(model=model),
                 resume=(out / "manifest.json").exists())
    return {**data, "train": out / DATA_FILE, "passrate_dir": out}


def angle_vs_pass_rate(data: dict, work: Path, model: str | None) -> dict:
    """Spearman of the angle score with the measured pass rate: overall, within each kind, and with the
    prompt length (tokens) partialled out, each with a bootstrap 95% interval."""
    from anglerank.correlation import pass_rate_agreement
    from anglerank.data.writer import load_scores
    from anglerank.scoring.engine import ScoreOptions
    from anglerank.scoring.run import run_score

    sdir = work / "scores"
    run_score([str(data["train"])], sdir, options=ScoreOptions(model=model), resume=(sdir / "manifest.json").exists())
    scores = load_scores(sdir).sort_by("row")
    rates = pq.read_table(data["train"], columns=["pass_rate"]).column("pass_rate").to_pylist()
    res = pass_rate_agreement(scores.column("score").to_pylist(), rates, groups=data["train_kinds"],
                              covariate=scores.column("n_tokens").to_pylist())
    res["pass_rate_mean"] = float(np.mean([r for r in rates if r is not None]))
    return res


# --------------------------------------------------------------------------- runs

def run_job(arm: str, seed: int, spec: dict, data: dict, work: Path, runs_out: Path, model: str | None) -> dict:
    """Train one (arm, seed) to the end (resuming a run left unfinished); its summary JSON."""
    from anglerank.train import checkpoint
    from anglerank.train.config import TrainConfig
    from anglerank.train.loop import train

    out = runs_out / f"{arm}-s{seed}.json"
    if out.exists():
        return json.loads(out.read_text())
    run_dir = work / f"{arm}-s{seed}"
    cfg = TrainConfig(train_data=[str(data["train"])], eval_data=[str(data["eval"])], output_dir=str(run_dir),
                      model=model, seed=seed, **{**spec["train"], **ARMS[arm]})
    resume = checkpoint.latest_checkpoint(run_dir) is not None
    print(f"[{arm}/s{seed}] {'resuming' if resume else 'starting'} in {run_dir}", file=sys.stderr, flush=True)
    train(cfg, resume=resume, overwrite=not resume, on_event=_printer(f"{arm}/s{seed}"))
    res = summarise_run(arm, seed, run_dir, data)
    from anglerank.model.device import cpu_description, resolve_device, resolve_dtype

    device = resolve_device(cfg.device)  # runs on different machines differ in precision: say which
    res.update(machine=cpu_description() if device == "cpu" else device, dtype=resolve_dtype(cfg.dtype, device))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    keep_logs(run_dir, runs_out / f"{arm}-s{seed}")
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # weights are 1.6 GB a run; the logs stay
    return res


def keep_logs(run_dir: Path, dest: Path) -> None:
    """A finished run's metrics, draws and per-prompt records, gzipped beside its summary, so anyone can
    re-analyse the run without rerunning it."""
    import gzip

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.jsonl", "subsets.jsonl", "prompts.jsonl", "config.toml"):
        if (run_dir / name).is_file():
            with open(run_dir / name, "rb") as src, gzip.open(dest / f"{name}.gz", "wb", compresslevel=9) as dst:
                shutil.copyfileobj(src, dst)


def _printer(tag: str):
    def show(kind, rec):
        if kind == "epoch":
            print(f"[{tag}] epoch {rec['epoch']} acc {rec['accuracy']} mu {rec['mu']} rollout {rec['rollout_s']:.0f}s "
                  f"update {rec['update_s']:.0f}s rescore {rec['rescore_s']:.0f}s", file=sys.stderr, flush=True)
        elif kind in ("eval", "score", "staleness", "log"):
            print(f"[{tag}] {kind} {json.dumps({k: v for k, v in rec.items() if k != 'type'})}", file=sys.stderr,
                  flush=True)
    return show


def summarise_run(arm: str, seed: int, run_dir: Path, data: dict) -> dict:
    """What the report needs from one run directory (its metrics and draws)."""
    from anglerank.train.metrics import read_metrics

    recs = read_metrics(run_dir)
    of = lambda kind: [r for r in recs if r["type"] == kind]  # noqa: E731
    evals, epochs, steps = of("eval"), of("epoch"), of("step")
    draws = [json.loads(x) for x in (run_dir / "subsets.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for d in draws for r in d["rows"]]
    if (run_dir / "prompts.jsonl").is_file():  # every prompt a step drew, the refills of --filter-groups too
        from anglerank.train.records import read_records

        rows = [int(r["id"]) for r in read_records(run_dir)[1]]
    kinds = data["train_kinds"]
    drawn = {k: sum(kinds[r] == k for r in rows) / max(1, len(rows)) for k in KINDS}
    n = len(kinds)
    mu = [[e["epoch"], e["mu"]] for e in epochs if e.get("mu") is not None]
    last = epochs[-1] if epochs else {}
    sweeps = None
    if mu:  # ranks the window centre travelled, in passes over the ranking
        sweeps = round((last.get("passes") or 0) + (last["mu_next"] - mu[0][1]) / n, 3)
    curve = [[e["step"], e["eval_accuracy"]] for e in evals]
    return {
        "arm": arm, "seed": seed,
        "eval": curve,
        "eval_by_kind": {k.removeprefix("arith-"): [[e["step"], e["eval_accuracy_by"][k]] for e in evals]
                         for k in (evals[0].get("eval_accuracy_by") or {})} if evals else {},
        "mu": mu, "sweeps": sweeps,
        "distinct_prompts": len(set(rows)), "draws": len(rows),
        "kind_share_drawn": {k: round(v, 4) for k, v in drawn.items()},
        "kind_share_pool": {k: round(kinds.count(k) / n, 4) for k in KINDS},
        "zero_std_fraction": float(np.mean([s["zero_std_fraction"] for s in steps])) if steps else None,
        "initial_score_s": sum(r["seconds"] for r in of("score") if r["epoch"] == 0),
        "rescore_s": round(sum(e["rescore_s"] for e in epochs), 3),
        "rescorings": sum(1 for r in of("score") if r["epoch"] > 0),
        "staleness": [[r["epoch"], r["ranked_at"], r["spearman"], r["spearman_window"]] for r in of("staleness")],
        "staleness_s": round(sum(r["seconds"] for r in of("staleness")), 3),
        "eval_s": round(sum(e["eval_s"] for e in evals), 3),
        "train_s": evals[-1]["elapsed_s"] if evals else None,
        "auc": auc(curve), "final": final(curve),
        **prompt_records(run_dir, curve, steps),
    }


def prompt_records(run_dir: Path, curve: list, steps: list[dict]) -> dict:
    """Rollouts generated by each eval, and coverage and zero-variance groups from the per-prompt records."""
    from anglerank.train.records import RECORDS_FILE, read_records, summary

    if not (run_dir / RECORDS_FILE).is_file() or not steps or "rollouts_total" not in steps[0]:
        return {}
    total = {s["step"]: s["rollouts_total"] for s in steps}
    by_rollouts = [[total.get(s, 0), a] for s, a in curve]
    s = summary(*read_records(run_dir))
    return {"eval_by_rollouts": by_rollouts, "rollouts": by_rollouts[-1][0],
            "coverage": s["coverage"], "zero_variance_split": s["zero_variance"],
            "decile_accuracy": s["decile_accuracy"]}


# --------------------------------------------------------------------------- metrics

def auc(curve) -> float | None:
    """Area under the accuracy curve over steps, divided by the step span: a mean accuracy."""
    if len(curve) < 2:
        return None
    s, a = np.array(curve, dtype=float).T
    return float(np.sum((a[1:] + a[:-1]) / 2 * np.diff(s)) / (s[-1] - s[0]))


def auc_upto(curve, budget: float) -> float | None:
    """``auc`` of a curve over [first x, ``budget``] (linearly interpolated at the budget): a mean accuracy over
    the same span for every run, so runs that generated more rollouts are not credited for their extra ones."""
    pts = [(x, a) for x, a in curve if x <= budget]
    after = [(x, a) for x, a in curve if x > budget]
    if pts and after and pts[-1][0] < budget:
        (x0, a0), (x1, a1) = pts[-1], after[0]
        pts.append((budget, a0 + (a1 - a0) * (budget - x0) / (x1 - x0)))
    return auc(pts)


def final(curve) -> float | None:
    """Mean of the last two evaluations."""
    return float(np.mean([a for _, a in curve[-2:]])) if curve else None


def steps_to(curve, target: float) -> int | None:
    """First eval step whose two-point moving average reaches ``target``; None (censored) if none does."""
    for (_, a0), (s1, a1) in zip(curve, curve[1:]):
        if (a0 + a1) / 2 >= target - 1e-12:
            return int(s1)
    return None


def t_interval(xs) -> dict:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"n": 0}
    m = float(np.mean(xs))
    if len(xs) < 2:
        return {"n": 1, "mean": m}
    half = T975.get(len(xs) - 1, 1.96) * float(np.std(xs, ddof=1)) / math.sqrt(len(xs))
    return {"n": len(xs), "mean": m, "lo": m - half, "hi": m + half}


def summarise(runs: list[dict]) -> dict:
    """Per arm: means, steps to uniform's final accuracy, paired differences to uniform (same seed)."""
    uni = {r["seed"]: r for r in runs if r["arm"] == "uniform"}
    for r in runs:
        u = uni.get(r["seed"])
        r["target"] = u["final"] if u else None
        r["steps_to_target"] = steps_to(r["eval"], u["final"]) if u else None
    out = {}
    for arm in [a for a in ARMS if any(r["arm"] == a for r in runs)]:
        rs = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
        paired = [(r, uni[r["seed"]]) for r in rs if r["seed"] in uni]
        speedups = [u["steps_to_target"] / r["steps_to_target"] for r, u in paired
                    if r["steps_to_target"] and u["steps_to_target"]]
        out[arm] = {
            "seeds": [r["seed"] for r in rs],
            **{f"{m}_mean": float(np.mean([r[m] for r in rs])) for m in ("auc", "final")},
            "steps_to_target": [r["steps_to_target"] for r in rs],
            "speedup_vs_uniform": speedups,
            "diff_auc": t_interval([r["auc"] - u["auc"] for r, u in paired]) if arm != "uniform" else None,
            "diff_final": t_interval([r["final"] - u["final"] for r, u in paired]) if arm != "uniform" else None,
            "sweeps": [r["sweeps"] for r in rs], "distinct_prompts": [r["distinct_prompts"] for r in rs],
            "kind_share_drawn": {k: float(np.mean([r["kind_share_drawn"][k] for r in rs])) for k in KINDS},
            "zero_std_fraction": float(np.mean([r["zero_std_fraction"] for r in rs])),
            "rescore_share": float(np.mean([r["rescore_s"] / r["train_s"] for r in rs])),
            "train_min": float(np.mean([r["train_s"] for r in rs]) / 60),
        }
    return out


def permutation_test(a: list[float], b: list[float]) -> float:
    """Two-sided exact permutation p-value for a difference in means between two independent groups of
    runs (every split of the pooled runs into groups of the same sizes; no pairing assumed)."""
    from itertools import combinations

    pooled, k = np.asarray(a + b, dtype=float), len(a)
    observed = abs(np.mean(a) - np.mean(b))
    splits = list(combinations(range(len(pooled)), k))
    hits = sum(abs(pooled[list(c)].mean() - np.delete(pooled, list(c)).mean()) >= observed - 1e-12 for c in splits)
    return hits / len(splits)


def welch_interval(a: list[float], b: list[float]) -> dict:
    """Mean of a minus mean of b with a Welch 95% interval (unpaired, unequal variances)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return {"diff": d}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / ((va ** 2 / (len(a) - 1)) + (vb ** 2 / (len(b) - 1))) if se > 0 else len(a) + len(b) - 2
    half = T975.get(max(1, int(dof)), 1.96) * se  # the floor of Welch's degrees of freedom: conservative
    return {"diff": d, "lo": d - half, "hi": d + half, "dof": round(float(dof), 1)}


COMPARISONS = (("angle", "uniform"), ("random", "uniform"), ("oracle", "uniform"), ("uniform-filter", "uniform"),
               ("angle", "random"), ("oracle", "random"), ("oracle", "angle"))


def compare(runs: list[dict], metric: str = "auc") -> list[dict]:
    """Each pair of arms: difference of run-level means, Welch interval, exact permutation p, and how many
    seeds of the first arm beat the second arm's mean."""
    by = {a: [r[metric] for r in runs if r["arm"] == a and r.get(metric) is not None] for a in ARMS}
    out = []
    for x, y in COMPARISONS:
        if len(by[x]) and len(by[y]):
            out.append({"arms": [x, y], "metric": metric, "n": [len(by[x]), len(by[y])], **welch_interval(by[x], by[y]),
                        "p_permutation": permutation_test(by[x], by[y]),
                        "above": sum(v > float(np.mean(by[y])) for v in by[x])})
    return out


def reading(comparisons: list[dict]) -> list[str]:
    """The reading rules of the module documentation, applied to the AUC comparisons."""
    get = {tuple(c["arms"]): c for c in comparisons if c["metric"] == "auc"}
    out = []
    o_r, r_u = get.get(("oracle", "random")), get.get(("random", "uniform"))
    for c in (o_r, r_u):  # the rules were fixed for five seeds an arm: fewer give no reading at all
        if c and min(c["n"]) < READING_SEEDS:
            out.append(f"{c['arms'][0]} - {c['arms'][1]} = {c['diff']:+.3f} AUC from {c['n'][0]} and {c['n'][1]} "
                       f"runs: no reading before {READING_SEEDS} seeds an arm")
    if out:
        return out
    if o_r:
        if o_r["diff"] >= 0.05 and o_r["above"] > o_r["n"][0] / 2:
            out.append("oracle - random >= +0.05 AUC with most seeds positive: ordering can matter here, so the "
                       "angle signal is what failed")
        elif abs(o_r["diff"]) < 0.03:
            out.append("|oracle - random| < 0.03 AUC: no ordering rescues this window; this regime cannot test GAIN-RL")
        else:
            out.append(f"oracle - random = {o_r['diff']:+.3f} AUC: between the rules' thresholds, no conclusion")
    if r_u and r_u.get("lo") is None:
        out.append(f"random - uniform = {r_u['diff']:+.3f} AUC from too few runs for an interval: no conclusion")
    elif r_u and r_u["lo"] <= 0 <= r_u["hi"] and abs(r_u["diff"]) < 0.03:
        out.append("random is close to uniform over these seeds: the earlier gap was seed noise")
    elif r_u:
        side = ("the window itself costs accuracy" if r_u["hi"] < 0 else "the window itself helps" if r_u["lo"] > 0
                else "not close enough to uniform to call the earlier gap noise, nor clearly apart")
        out.append(f"random - uniform = {r_u['diff']:+.3f} AUC (95% CI {r_u['lo']:+.3f} to {r_u['hi']:+.3f}): {side}")
    return out


def summarise_fixed_target(runs: list[dict], target: float) -> dict:
    """Per arm, against an absolute target fixed before the runs: means, steps and rollouts to it, coverage,
    zero-variance split; then the unpaired comparisons and the reading."""
    out = {}
    budget = min((r["rollouts"] for r in runs if r.get("rollouts")), default=None)
    for r in runs:
        r["auc_rollouts"] = auc_upto(r["eval_by_rollouts"], budget) if budget and r.get("eval_by_rollouts") else None
        r["target"] = target
        r["steps_to_target"] = steps_to(r["eval"], target)
        r["rollouts_to_target"] = steps_to(r.get("eval_by_rollouts", []), target)
    for arm in [a for a in ARMS if any(r["arm"] == a for r in runs)]:
        rs = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
        mean = lambda key: float(np.mean([r[key] for r in rs if r.get(key) is not None])) if any(  # noqa: E731
            r.get(key) is not None for r in rs) else None
        cov = [r["coverage"] for r in rs if r.get("coverage")]
        zv = [r["zero_variance_split"] for r in rs if r.get("zero_variance_split")]
        out[arm] = {"seeds": [r["seed"] for r in rs], "auc_mean": mean("auc"), "final_mean": mean("final"),
                    "auc_rollouts_mean": mean("auc_rollouts"), "rollouts_mean": mean("rollouts"),
                    "steps_to_target": [r["steps_to_target"] for r in rs],
                    "rollouts_to_target": [r["rollouts_to_target"] for r in rs],
                    "train_min": float(np.mean([r["train_s"] for r in rs]) / 60),
                    **({k: float(np.mean([c[k] for c in cov])) for k in ("never_drawn", "draws_min", "draws_median",
                                                                        "draws_max", "redraw_share")} if cov else {}),
                    **({f"zv_{k}": float(np.mean([z[k] for z in zv])) for k in ("zero_variance", "all_correct",
                                                                               "all_wrong", "dropped")} if zv else {})}
    comparisons = compare(runs, "auc") + compare(runs, "final") + compare(runs, "auc_rollouts")
    return {"arms": out, "rollout_budget": budget, "comparisons": comparisons, "reading": reading(comparisons)}


# --------------------------------------------------------------------------- report

def machine_name(threads: int | None) -> str:
    """The machine the report ran on (each run records its own CPU and compute dtype)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return f"{machine(device)}, torch {torch.__version__}, {threads or 'default'} thread(s) per run"


def plot(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_rollouts = all(r.get("eval_by_rollouts") for r in runs)
    fig, axes = plt.subplots(1, 3 if by_rollouts else 2, figsize=(19 if by_rollouts else 13, 4.8))
    a1, a2 = axes[0], axes[-1]
    for i, arm in enumerate(a for a in ARMS if any(r["arm"] == a for r in runs)):
        rs = [r for r in runs if r["arm"] == arm]
        steps = [s for s, _ in rs[0]["eval"]]
        acc = np.array([[a for _, a in r["eval"]] for r in rs if len(r["eval"]) == len(steps)])
        a1.plot(steps, acc.mean(0), color=f"C{i}", label=f"{arm} (n={len(acc)})")
        if len(acc) > 1:
            a1.fill_between(steps, acc.min(0), acc.max(0), color=f"C{i}", alpha=0.15)
        for j, r in enumerate(rs if by_rollouts else []):
            x, y = np.array(r["eval_by_rollouts"], dtype=float).T
            axes[1].plot(x, y, color=f"C{i}", alpha=0.6, lw=1, label=arm if j == 0 else None)
        if rs[0]["mu"]:
            e, m = np.array(rs[0]["mu"], dtype=float).T
            a2.plot(e, m, color=f"C{i}", label=f"{arm} seed {rs[0]['seed']}")
    a1.set(xlabel="step", ylabel="held-out greedy accuracy", title="mean over seeds, band = min..max")
    a2.set(xlabel="epoch", ylabel="window centre mu (rank)", title="the window (wraps to rank 0 after N-1)")
    if by_rollouts:
        axes[1].set(xlabel="rollouts generated", ylabel="held-out greedy accuracy", title="each run, against rollouts")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ci(d) -> str:
    if not d or not d.get("n"):
        return "-"
    if "lo" not in d:
        return f"{d['mean']:+.3f} (n=1)"
    return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


def machines_line(result: dict) -> str:
    """Where the report and its runs ran: runs may come from several machines, each in its own precision."""
    where = {}
    for r in result["runs"]:
        key = f"{r.get('machine', 'unrecorded')}, {r.get('dtype', 'unrecorded')}"
        where[key] = where.get(key, 0) + 1
    return (f"Report written on: {result['machine']}. Runs: "
            + "; ".join(f"{n} on {k}" for k, n in where.items()) + ".")


def markdown(result: dict) -> str:
    """The README table: per arm, and per problem kind."""
    summ, runs = result["summary"], result["runs"]
    lines = [machines_line(result), "",
             "| arm | seeds | AUC (mean acc.) | final acc. | steps to uniform's final, per seed | speed-up vs "
             "uniform | AUC - uniform [95% CI] | final - uniform [95% CI] | window sweeps | distinct prompts | "
             "zero-variance groups | re-scoring share of wall time |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, a in summ.items():
        steps = ", ".join("-" if x is None else str(x) for x in a["steps_to_target"])
        speed = ", ".join(f"{x:.2f}x" for x in a["speedup_vs_uniform"]) or "-"
        sweeps = ", ".join("-" if x is None else f"{x:.1f}" for x in a["sweeps"])
        lines.append(f"| {arm} | {len(a['seeds'])} | {a['auc_mean']:.3f} | {a['final_mean']:.3f} | {steps} | {speed} | "
                     f"{_ci(a['diff_auc'])} | {_ci(a['diff_final'])} | {sweeps} | "
                     f"{', '.join(map(str, a['distinct_prompts']))} | {a['zero_std_fraction']:.2f} | "
                     f"{a['rescore_share']:.3f} |")
    lines += ["", "| arm | " + " | ".join(f"{k}: final acc. (share drawn)" for k in KINDS) + " |",
              "|---|" + "---|" * len(KINDS)]
    for arm, a in summ.items():
        rs = [r for r in runs if r["arm"] == arm]
        cells = []
        for k in KINDS:
            fin = [final(r["eval_by_kind"].get(k, [])) for r in rs]
            fin = [x for x in fin if x is not None]
            cells.append(f"{np.mean(fin):.3f} ({a['kind_share_drawn'][k]:.2f})" if fin else "-")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    stale = [(r["arm"], r["seed"], r["staleness"]) for r in runs if r["staleness"]]
    if stale:
        lines += ["", "Staleness (Spearman of the ranking in use against a fresh full scoring; over all prompts / "
                      "over the reachable window), at epoch: "]
        for arm, seed, st in stale:
            lines.append(f"- {arm} seed {seed}: " + "; ".join(
                f"{e}: {sp:.3f} / {w:.3f}" for e, _, sp, w in st if sp is not None and w is not None))
    return "\n".join(lines) + "\n"


def markdown_fixed_target(result: dict) -> str:
    """The results page's tables for a configuration with a fixed target."""
    s, target = result["summary"], result["config"]["target"]
    lines = [machines_line(result), "",
             f"| arm | seeds | AUC over steps | AUC over the first {s['rollout_budget']} rollouts | final acc. | rollouts | steps to {target:.2f} | "
             f"rollouts to {target:.2f} | never drawn | draws per prompt (min / median / max) | re-drawn within 3 "
             "epochs | zero-variance groups (all correct / all wrong) |", "|---|" * 1 + "---|" * 11]
    f = lambda v, spec=".3f": "-" if v is None else format(v, spec)  # noqa: E731
    for arm, a in s["arms"].items():
        steps = ", ".join("-" if x is None else str(x) for x in a["steps_to_target"])
        rolls = ", ".join("-" if x is None else str(x) for x in a["rollouts_to_target"])
        lines.append(f"| {arm} | {len(a['seeds'])} | {f(a['auc_mean'])} | {f(a['auc_rollouts_mean'])} | "
                     f"{f(a['final_mean'])} | {f(a['rollouts_mean'], '.0f')} | {steps} | {rolls} | "
                     f"{f(a.get('never_drawn'), '.1f')} | {f(a.get('draws_min'), '.1f')} / "
                     f"{f(a.get('draws_median'), '.1f')} / {f(a.get('draws_max'), '.1f')} | "
                     f"{f(a.get('redraw_share'), '.2f')} | {f(a.get('zv_zero_variance'), '.2f')} "
                     f"({f(a.get('zv_all_correct'), '.2f')} / {f(a.get('zv_all_wrong'), '.2f')}) |")
    lines += ["", "| comparison | metric | difference [95% Welch CI] | exact permutation p | seeds above the other's "
              "mean |", "|---|---|---|---|---|"]
    for c in s["comparisons"]:
        ci = f" [{c['lo']:+.3f}, {c['hi']:+.3f}]" if "lo" in c else ""
        lines.append(f"| {c['arms'][0]} - {c['arms'][1]} | {c['metric']} | {c['diff']:+.3f}{ci} | "
                     f"{c['p_permutation']:.3f} | {c['above']} of {c['n'][0]} |")
    corr = result.get("angle_vs_pass_rate")
    if corr:
        cell = lambda e: f"{f(e['spearman'], '+.3f')} [{', '.join(f(x, '+.3f') for x in e['ci95'] or [])}], n = {e['n']}"  # noqa: E731,E501
        lines += ["", "Angle score against the base model's pass rate (Spearman, bootstrap 95% interval):", "",
                  f"- overall: {cell(corr['overall'])}", f"- prompt length partialled out: {cell(corr['partial'])}"]
        lines += [f"- within {g}: {cell(e)}" for g, e in corr["groups"].items()]
        lines += [f"- verdict: {corr['verdict']}"]
    lines += ["", "Reading (rules fixed in `benchmarks/bench_train.py` before the runs):", ""]
    lines += [f"- {x}" for x in s["reading"]]
    return "\n".join(lines) + "\n"


def report(config: str, spec: dict, runs_out: Path, out: Path, extra: dict | None = None) -> dict:
    runs = [json.loads(p.read_text()) for p in sorted(runs_out.glob("*.json"))]
    missing = [f"{a}-s{s}" for a, s in spec["jobs"] if not (runs_out / f"{a}-s{s}.json").exists()]
    result = {"machine": machine_name(spec["train"].get("threads")), "config": {"name": config, **spec,
              "arms": {a: ARMS[a] for a in ARMS}}, "runs": runs, "missing": missing, **(extra or {})}
    fixed = spec.get("target") is not None
    result["summary"] = ((summarise_fixed_target(runs, spec["target"]) if fixed else summarise(runs)) if runs
                         else {})
    (out / f"train_{config}.json").write_text(json.dumps(result, indent=1))
    if runs:
        (out / f"train_{config}.md").write_text(markdown_fixed_target(result) if fixed else markdown(result))
        plot(runs, out / f"train_{config}.png", f"GAIN-RL vs uniform and controls ({config}): {result['machine']}")
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="cpu", help="which experiment (default: cpu)")
    ap.add_argument("--part", default="0/1", help="i/n: run every n-th job starting at i")
    ap.add_argument("--model", default=None, help="policy (default: the embedded model)")
    ap.add_argument("--work", default=str(ROOT.parent / "anglerank-bench-train"), help="run directories (large)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--report", action="store_true", help="only write the report from the finished runs")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    spec = CONFIGS[args.config]
    out, work = Path(args.out), Path(args.work) / args.config
    runs_out = out / f"train_{args.config}" / "runs"
    work.mkdir(parents=True, exist_ok=True)
    data = make_data(spec, work)
    extra = None
    if spec.get("passrate"):
        data = add_pass_rates(spec, data, work, args.model)
        extra = {"angle_vs_pass_rate": angle_vs_pass_rate(data, work, args.model)}
    if not args.report:
        i, n = (int(x) for x in args.part.split("/"))
        for arm, seed in spec["jobs"][i::n]:
            t0 = time.perf_counter()
            run_job(arm, seed, spec, data, work, runs_out, args.model)
            print(f"[{arm}/s{seed}] done in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    res = report(args.config, spec, runs_out, out, extra)
    arms = res["summary"].get("arms", res["summary"])
    print(json.dumps({"missing": res["missing"], **{a: {k: v for k, v in s.items() if k in (
        "auc_mean", "final_mean", "steps_to_target", "diff_auc", "diff_final")} for a, s in arms.items()}}))


if __name__ == "__main__":
    main()
