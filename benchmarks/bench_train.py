"""GAIN-RL against uniform and ordered sampling: one honest, same-budget experiment.

Why this exists: the paper claims GAIN-RL reaches vanilla GRPO's accuracy in far
fewer epochs. This script checks that claim at small scale with the embedded
SmolLM2-135M-Instruct on generated arithmetic word problems, with every sampler
given the same model, data, seeds, hyper-parameters and number of steps:

1. generate a training pool and a disjoint held-out set of word problems of four
   kinds (one-digit multiplication, addition, subtraction, two-step);
2. probe: the base model's greedy accuracy per kind (this is how the task mix was
   chosen: the kinds are weighted so the base model solves 20-60% of the mix), and
   the initial angle ranking's relation to kind and prompt length;
3. train once per sampler and seed with `anglerank.train.loop.train`, in this
   process, one after another (same machine conditions as far as possible);
4. report held-out greedy accuracy against steps and wall-clock, the steps each
   sampler needs to reach uniform's final accuracy, and the per-epoch cost of
   re-scoring relative to rollouts; write curves (PNG), JSON and a markdown table
   to benchmarks/results/.

    python benchmarks/bench_train.py                 # short CPU config (< 45 min on 2 cores)
    python benchmarks/bench_train.py --config gpu    # longer config for one GPU (not run here)

Ends stdout with one JSON line (the summary).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from anglerank.train.config import TrainConfig  # noqa: E402
from anglerank.train.loop import train  # noqa: E402
from anglerank.train.metrics import read_metrics  # noqa: E402

SUFFIX = " Answer with just the number."
NAMES = ["Tom", "Anna", "Ben", "Maria", "Sam", "Lily", "Omar", "Priya", "Leo", "Mia"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "stamps", "shells"]
# kind -> share of the mix; chosen from the probe so the base model lands in 20-60%
MIX = {"mul": 0.4, "add": 0.2, "sub": 0.2, "two": 0.2}

CONFIGS = {
    # ~35-45 min on 2 shared CPU cores (1 torch thread, bf16 autocast): 6 epochs x 4 steps per sampler.
    "cpu": dict(n_train=256, n_eval=64, seeds=[0], train=dict(
        epochs=6, subset_size=32, prompts_per_step=8, num_generations=4, max_new_tokens=32,
        eval_max_new_tokens=32, temperature=0.9, lr=1e-5, beta=0.0, loss_type="grpo", micro_batch_size=8,
        generation_batch_size=32, eval_batch_size=32, rescore_every=1, eval_every=1, save_every=6,
        keep_checkpoints=1, max_grad_norm=0.1, threads=1)),
    # A minutes-long check that the pipeline works (not a measurement).
    "smoke": dict(n_train=32, n_eval=8, seeds=[0], train=dict(
        epochs=2, subset_size=8, prompts_per_step=4, num_generations=2, max_new_tokens=16,
        eval_max_new_tokens=16, temperature=0.9, lr=1e-5, micro_batch_size=8, generation_batch_size=32,
        eval_batch_size=32, rescore_every=1, eval_every=1, save_every=2, keep_checkpoints=1, threads=1)),
    # For one GPU (not run here): more data, longer completions, 30 epochs, three seeds.
    "gpu": dict(n_train=2000, n_eval=500, seeds=[0, 1, 2], train=dict(
        epochs=30, subset_size=128, prompts_per_step=16, num_generations=8, max_new_tokens=96,
        eval_max_new_tokens=96, temperature=0.9, lr=5e-6, beta=0.0, loss_type="grpo", micro_batch_size=32,
        generation_batch_size=128, eval_batch_size=128, rescore_every=1, eval_every=2, save_every=30,
        keep_checkpoints=1, max_grad_norm=0.1)),
}


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


def make_split(n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    r = random.Random(seed)
    kinds = list(MIX)
    rows, seen = [], set(exclude)
    while len(rows) < n:
        kind = r.choices(kinds, weights=[MIX[k] for k in kinds])[0]
        q, a = problem(kind, r)
        if q in seen:
            continue
        seen.add(q)
        rows.append({"question": q, "answer": str(a), "kind": kind})
    return rows


def write_parquet(rows: list[dict], path: Path) -> None:
    table = pa.table({
        "data_source": ["arith"] * len(rows),
        "prompt": [[{"role": "user", "content": r["question"] + SUFFIX}] for r in rows],
        "reward_model": [{"ground_truth": r["answer"], "style": "rule"} for r in rows],
        "extra_info": [{"index": i, "kind": r["kind"]} for i, r in enumerate(rows)],
        "kind": [r["kind"] for r in rows],
    })
    pq.write_table(table, path)


# -------------------------------------------------------------------------- probe

def probe(train_rows, eval_rows, per_kind: int, threads: int, max_new_tokens: int) -> dict:
    """Base model: greedy accuracy per kind, and what the initial angle ranking follows."""
    from anglerank import angles, models
    from anglerank.data.reader import Record
    from anglerank.render import Renderer
    from anglerank.scoring.engine import ScoreOptions, Scorer, resolve_dtype
    from anglerank import generation, rewards

    torch.set_num_threads(threads)
    dtype = resolve_dtype("auto", "cpu")
    amp = torch.bfloat16 if dtype == "bfloat16" else None
    lm = models.load(None, "cpu", "float32")
    renderer = Renderer(lm.tokenizer, "none", None, None, 512)
    out = {"per_kind": {}, "dtype": dtype}
    r = random.Random(7)
    t0 = time.perf_counter()
    for kind in MIX:
        qs = []
        while len(qs) < per_kind:
            q, a = problem(kind, r)
            qs.append((q, str(a)))
        ids = [renderer.render(q + SUFFIX).ids for q, _ in qs]
        ro = generation.generate(lm.model, lm.tokenizer, ids, greedy=True, max_new_tokens=max_new_tokens,
                              batch_size=32, autocast_dtype=amp)
        acc = float(np.mean(rewards.math_reward(None, ro.texts, answer=[a for _, a in qs])))
        out["per_kind"][kind] = {"accuracy": acc, "n": per_kind, "example": ro.texts[0][:160]}
    out["mix_accuracy_expected"] = sum(MIX[k] * out["per_kind"][k]["accuracy"] for k in MIX)
    out["probe_s"] = round(time.perf_counter() - t0, 1)

    # the initial ranking of the training pool (what gainrl/ordered start from)
    t0 = time.perf_counter()
    scorer = Scorer(lm.model, lm.tokenizer, renderer, ScoreOptions(), "cpu")
    recs = [Record(i, i, row["question"] + SUFFIX, None) for i, row in enumerate(train_rows)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None):
        scored = scorer.score_records(recs)
    out["initial_score_s"] = round(time.perf_counter() - t0, 1)
    scores = np.array([s["score"] for s in scored], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    kinds = np.array([row["kind"] for row in train_rows])
    out["mean_rank_by_kind"] = {k: float(rank[kinds == k].mean()) for k in MIX}
    out["spearman_score_vs_tokens"] = float(angles.spearman(scores, [s["n_tokens"] for s in scored]))
    base_acc = np.array([out["per_kind"][k]["accuracy"] for k in kinds])
    out["spearman_score_vs_kind_base_accuracy"] = float(angles.spearman(scores, base_acc))
    return out


# --------------------------------------------------------------------------- runs

def run_one(sampler: str, seed: int, spec: dict, data: dict, work: Path) -> dict:
    run_dir = work / f"{sampler}-s{seed}"
    cfg = TrainConfig(train_data=[str(data["train"])], eval_data=[str(data["eval"])], output_dir=str(run_dir),
                      sampler=sampler, seed=seed, **spec["train"])
    t0 = time.perf_counter()
    summary = train(cfg, overwrite=True, on_event=_printer(f"{sampler}/s{seed}"))
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    return {"sampler": sampler, "seed": seed, "run_dir": str(run_dir), **summary}


def _printer(tag: str):
    def show(kind, rec):
        if kind == "step":
            print(f"[{tag}] step {rec['step']} reward {rec['reward_mean']:.3f} acc {rec['accuracy']:.3f} "
                  f"len {rec['completion_len_mean']:.1f} rollout {rec['rollout_s']:.0f}s update {rec['update_s']:.0f}s",
                  file=sys.stderr, flush=True)
        elif kind in ("epoch", "eval", "score"):
            keep = {k: rec.get(k) for k in ("epoch", "eval_accuracy", "accuracy", "angle", "mu", "mu_next",
                                             "subset_mean_rank", "rescore_s", "rollout_s", "seconds")
                    if rec.get(k) is not None}
            print(f"[{tag}] {kind} {json.dumps(keep)}", file=sys.stderr, flush=True)
    return show


def trained_mix(run_dir) -> dict:
    """Distinct prompts drawn over the run and the share of each problem kind among all draws."""
    run_dir = Path(run_dir)
    draws = [json.loads(x) for x in (run_dir / "subsets.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for d in draws for r in d["rows"]]
    kinds = pq.read_table(run_dir.parent / "train.parquet", columns=["kind"]).column("kind").to_pylist()
    counts = {k: 0 for k in MIX}
    for r in rows:
        counts[kinds[r]] += 1
    return {"distinct_prompts": len(set(rows)), "draws": len(rows),
            "kind_share": {k: round(v / max(1, len(rows)), 3) for k, v in counts.items()}}


def analyse(runs: list[dict]) -> dict:
    out = {}
    for r in runs:
        recs = read_metrics(r["run_dir"])
        evals = [x for x in recs if x["type"] == "eval"]
        epochs = [x for x in recs if x["type"] == "epoch"]
        scores = [x for x in recs if x["type"] == "score"]
        rescore = [e["rescore_s"] for e in epochs if e["rescore_s"]]
        rollout = [e["rollout_s"] for e in epochs]
        update = [e["update_s"] for e in epochs]
        out[f"{r['sampler']}-s{r['seed']}"] = {
            "sampler": r["sampler"], "seed": r["seed"], "run_dir": r["run_dir"],
            "eval_curve": [(e["step"], round(e["elapsed_s"], 1), e["eval_accuracy"]) for e in evals],
            "base_eval_accuracy": evals[0]["eval_accuracy"] if evals else None,
            "final_eval_accuracy": evals[-1]["eval_accuracy"] if evals else None,
            "best_eval_accuracy": max(e["eval_accuracy"] for e in evals) if evals else None,
            "train_accuracy_by_epoch": [round(e["accuracy"], 4) for e in epochs],
            "mu_by_epoch": [e["mu"] for e in epochs],
            "subset_mean_rank_by_epoch": [e["subset_mean_rank"] for e in epochs],
            "angle_by_epoch": [e["angle"] for e in epochs],
            "steps": r["steps"], "wall_s": r["wall_s"], **trained_mix(r["run_dir"]),
            "initial_score_s": scores[0]["seconds"] if scores else 0.0,
            "rescore_s_mean": float(np.mean(rescore)) if rescore else 0.0,
            "rollout_s_mean": float(np.mean(rollout)), "update_s_mean": float(np.mean(update)),
            "rescore_over_rollout": float(np.mean(rescore) / np.mean(rollout)) if rescore else 0.0,
            "rescore_over_epoch": float(np.mean(rescore) / (np.mean(rollout) + np.mean(update) + np.mean(rescore)))
            if rescore else 0.0,
        }
    # steps (and minutes) to reach uniform's final accuracy, per seed
    for key, r in out.items():
        uni = out.get(f"uniform-s{r['seed']}")
        if uni is None or uni["final_eval_accuracy"] is None:
            continue
        target = uni["final_eval_accuracy"]
        hit = next(((s, t) for s, t, a in r["eval_curve"] if a >= target and s > 0), None)
        r["target_uniform_final"] = target
        r["steps_to_uniform_final"] = hit[0] if hit else None
        r["minutes_to_uniform_final"] = round(hit[1] / 60, 2) if hit else None
    return out


def markdown(spec_name: str, spec: dict, probe_res: dict | None, res: dict, machine: str) -> str:
    lines = [f"# bench_train ({spec_name} config)", "", f"Machine: {machine}", "",
             "Embedded SmolLM2-135M-Instruct, generated arithmetic word problems "
             f"({spec['n_train']} training prompts, {spec['n_eval']} held-out), same seeds and budget for every "
             "sampler. Settings: " + ", ".join(f"{k}={v}" for k, v in spec["train"].items()) + ".", ""]
    if probe_res:
        pk = probe_res["per_kind"]
        lines += ["Base model, greedy, per kind: " + ", ".join(f"{k} {v['accuracy']:.2f}" for k, v in pk.items())
                  + f" (mix weights {MIX}, expected {probe_res['mix_accuracy_expected']:.2f}). Initial angle rank "
                  "by kind (0 = highest score, first trained by gainrl/ordered): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in probe_res["mean_rank_by_kind"].items())
                  + f"; Spearman(score, prompt tokens) = {probe_res['spearman_score_vs_tokens']:.2f}, "
                  f"Spearman(score, kind's base accuracy) = {probe_res['spearman_score_vs_kind_base_accuracy']:.2f}.", ""]
    lines += ["| run | base eval acc | final eval acc | best | steps | wall min | steps to uniform's final | "
              "rescore s / epoch | rollout s / epoch | rescore / rollout |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in res.items():
        st = r.get("steps_to_uniform_final")
        lines.append(f"| {key} | {r['base_eval_accuracy']:.3f} | {r['final_eval_accuracy']:.3f} | "
                     f"{r['best_eval_accuracy']:.3f} | {r['steps']} | {r['wall_s'] / 60:.1f} | "
                     f"{'-' if st is None else st} | {r['rescore_s_mean']:.1f} | {r['rollout_s_mean']:.1f} | "
                     f"{r['rescore_over_rollout']:.2f} |")
    return "\n".join(lines) + "\n"


def machine_name(threads: int | None) -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu} CPU, {os.cpu_count()} cores shared with other jobs, torch {torch.__version__}, "
            f"{threads or torch.get_num_threads()} thread(s), bf16 autocast")


SAMPLER_COLORS = {"gainrl": "C0", "uniform": "C1", "ordered": "C2"}


def _find_run(work: Path, key: str) -> str | None:
    for cand in [work / key, *sorted(work.glob(f"*/{key}"))]:
        if (cand / "subsets.jsonl").exists():
            return str(cand)
    return None


def combine(paths: list[str], out: Path, stem: str, work: Path) -> dict:
    """Merge result JSONs of several invocations (e.g. different seeds) into one table and plot."""
    out.mkdir(parents=True, exist_ok=True)
    results = [json.loads(Path(p).read_text()) for p in paths]
    runs = {k: v for r in results for k, v in r["runs"].items()}
    dirs = {k: v.get("run_dir") for r in results for k, v in r["runs"].items()}
    for k, v in runs.items():
        dirs[k] = v["run_dir"] = dirs[k] or _find_run(work, k)
    by_sampler: dict[str, list] = {}
    for key, r in runs.items():
        by_sampler.setdefault(r["sampler"], []).append(r)
    table = {}
    for s, rs in by_sampler.items():
        fin = [r["final_eval_accuracy"] for r in rs]
        table[s] = {"seeds": sorted(r["seed"] for r in rs), "final_mean": float(np.mean(fin)),
                    "final_sd": float(np.std(fin, ddof=1)) if len(fin) > 1 else 0.0,
                    "finals": fin, "base_mean": float(np.mean([r["base_eval_accuracy"] for r in rs])),
                    "best_mean": float(np.mean([r["best_eval_accuracy"] for r in rs])),
                    "steps_to_uniform_final": [r.get("steps_to_uniform_final") for r in rs],
                    "wall_min_mean": float(np.mean([r["wall_s"] for r in rs]) / 60),
                    "rescore_over_rollout": float(np.mean([r["rescore_over_rollout"] for r in rs])),
                    "rescore_over_epoch": float(np.mean([r["rescore_over_epoch"] for r in rs])),
                    "distinct_prompts": [trained_mix(r["run_dir"])["distinct_prompts"] for r in rs],
                    "kind_share": {k: round(float(np.mean([trained_mix(r["run_dir"])["kind_share"][k] for r in rs])), 3)
                                   for k in MIX}}
    first = results[0]
    lines = [f"# bench_train: {first['config']} config, seeds {sorted({r['seed'] for r in runs.values()})}", "",
             f"Machine: {first['machine']}", "",
             "| sampler | seeds | base eval acc | final eval acc, mean ± sd (per seed) | best (mean) | "
             "steps to uniform's final (per seed; - = not reached) | wall min / run | rescore / rollout | "
             "rescore / epoch | distinct prompts trained | kinds trained (share of draws) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s, t in table.items():
        lines.append(f"| {s} | {len(t['seeds'])} | {t['base_mean']:.3f} | {t['final_mean']:.3f} ± {t['final_sd']:.3f} "
                     f"({', '.join(f'{x:.3f}' for x in t['finals'])}) | {t['best_mean']:.3f} | "
                     f"{', '.join('-' if x is None else str(x) for x in t['steps_to_uniform_final'])} | "
                     f"{t['wall_min_mean']:.1f} | {t['rescore_over_rollout']:.2f} | {t['rescore_over_epoch']:.2f} | "
                     f"{', '.join(map(str, t['distinct_prompts']))} | "
                     f"{', '.join(f'{k} {v:.2f}' for k, v in t['kind_share'].items())} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}.json").write_text(json.dumps({"inputs": paths, "by_sampler": table}, indent=2))
    keys = [k for k in runs if dirs[k] and Path(dirs[k]).exists()]
    if keys:
        from anglerank.plots import plot_runs

        plot_runs([dirs[k] for k in keys], out / f"{stem}.png", labels=keys,
                  colors=[SAMPLER_COLORS.get(runs[k]["sampler"], "C3") for k in keys],
                  title=f"GAIN-RL vs uniform vs ordered ({first['config']} config, all seeds)")
    return table


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    ap.add_argument("--samplers", default="gainrl,uniform,ordered")
    ap.add_argument("--seeds", default=None, help="comma-separated; default from the config")
    ap.add_argument("--work", default="/tmp/anglerank-bench-train", help="data and run directories (large)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--skip-probe", action="store_true")
    ap.add_argument("--probe-per-kind", type=int, default=24)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (cpu config default: 1)")
    ap.add_argument("--tag", default="", help="suffix of the result files (train_<config><tag>.*)")
    ap.add_argument("--combine", nargs="+", metavar="RESULT_JSON",
                    help="only merge earlier result JSONs (several seeds) into train_<config><tag>.md/.json/.png")
    args = ap.parse_args()
    if args.combine:
        table = combine(args.combine, Path(args.out), f"train_{args.config}{args.tag}", Path(args.work))
        print(json.dumps({k: {"final_mean": round(v["final_mean"], 4), "final_sd": round(v["final_sd"], 4),
                              "steps_to_uniform_final": v["steps_to_uniform_final"]} for k, v in table.items()}))
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    spec = json.loads(json.dumps(CONFIGS[args.config]))
    if args.threads is not None:
        spec["train"]["threads"] = args.threads
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else spec["seeds"]
    work, out = Path(args.work) / f"{args.config}{args.tag}", Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    train_rows = make_split(spec["n_train"], seed=1234)
    eval_rows = make_split(spec["n_eval"], seed=5678, exclude={r["question"] for r in train_rows})
    data = {"train": work / "train.parquet", "eval": work / "eval.parquet"}
    write_parquet(train_rows, data["train"])
    write_parquet(eval_rows, data["eval"])

    machine = machine_name(spec["train"].get("threads"))
    t_all = time.perf_counter()
    probe_res = None
    if not args.skip_probe:
        probe_res = probe(train_rows, eval_rows, args.probe_per_kind, spec["train"].get("threads") or 1,
                          spec["train"]["max_new_tokens"])
        print(f"[probe] {json.dumps(probe_res)}", file=sys.stderr, flush=True)
    runs = []
    for seed in seeds:
        for sampler in args.samplers.split(","):
            runs.append(run_one(sampler, seed, spec, data, work))
    res = analyse(runs)
    result = {"config": args.config, "spec": spec, "machine": machine, "seeds": seeds, "mix": MIX,
              "probe": probe_res, "runs": res, "total_s": round(time.perf_counter() - t_all, 1)}
    stem = f"train_{args.config}{args.tag}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out / f"{stem}.md").write_text(markdown(args.config, spec, probe_res, res, machine))
    try:
        from anglerank.plots import plot_runs

        plot_runs([r["run_dir"] for r in runs], out / f"{stem}.png",
                  labels=[f"{r['sampler']} s{r['seed']}" for r in runs],
                  colors=[SAMPLER_COLORS.get(r["sampler"], "C3") for r in runs] if len(seeds) > 1 else None,
                  title=f"GAIN-RL vs uniform vs ordered ({args.config} config, {machine})")
    except ValueError as exc:  # matplotlib missing
        print(f"no plot: {exc}", file=sys.stderr)
    summary = {"config": args.config, "total_s": result["total_s"],
               **{k: {"final": v["final_eval_accuracy"], "base": v["base_eval_accuracy"],
                      "steps_to_uniform_final": v.get("steps_to_uniform_final"),
                      "rescore_over_rollout": round(v["rescore_over_rollout"], 3)} for k, v in res.items()}}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
