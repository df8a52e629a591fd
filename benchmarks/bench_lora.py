"""LoRA against full fine-tuning on the embedded model: trainable parameters, peak memory, step time.

Each configuration trains a few GRPO steps (8 prompts x 4 completions of at most
32 tokens, one thread, bf16 autocast where the CPU has it) in its own process, so
peak resident memory (``ru_maxrss``) belongs to it alone; step times are medians
over the steps after the first. Both run back to back on the same machine.

    python benchmarks/bench_lora.py            # writes benchmarks/results/bench_lora.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import write_json

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {"full": {}, "lora-r16": {"lora_r": 16}}


def one(name: str, work: Path) -> dict:
    """Runs in a child process: train, then report parameters, memory and times."""
    import bench_train as bt

    from anglerank.train.config import TrainConfig
    from anglerank.train.loop import train
    from anglerank.train.metrics import read_metrics

    spec = dict(bt.CONFIGS["cpu"], n_train=64, eval_per_kind=1)
    data = bt.make_data(spec, work)
    run = work / name
    train_cfg = {k: v for k, v in spec["train"].items() if k not in ("eval_every", "save_every")}
    cfg = TrainConfig(train_data=[str(data["train"])], output_dir=str(run), sampler="uniform", eval_every=0,
                      save_every=100, **{**train_cfg, "epochs": 5}, **CONFIGS[name])
    train(cfg, overwrite=True)
    steps = read_metrics(run, "step")[1:]
    from anglerank.model import loading

    model = loading.load(None, "cpu", "float32").model
    if cfg.lora_r:
        from anglerank.train import lora

        model = lora.attach(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    ckpt = next((run / "checkpoints").glob("step-*"))
    return {"config": name, "trainable_params": trainable, "total_params": total,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "update_s_median": statistics.median(s["update_s"] for s in steps),
            "rollout_s_median": statistics.median(s["rollout_s"] for s in steps),
            "checkpoint_mb": round(sum(f.stat().st_size for f in ckpt.iterdir()) / 2**20, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", choices=list(CONFIGS),
                    help="train this configuration alone in this process and print its JSON line (each run uses it)")
    args = ap.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(one(args.one, Path(d))))
        return
    from bench_train import machine_name

    rows = []
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    full = rows[0]
    for r in rows:
        r["update_vs_full"] = round(r["update_s_median"] / full["update_s_median"], 3)
        r["peak_rss_vs_full"] = round(r["peak_rss_mb"] / full["peak_rss_mb"], 3)
    res = {"machine": machine_name(1), "runs": rows}
    write_json(ROOT / "benchmarks" / "results" / "bench_lora.json", res)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
