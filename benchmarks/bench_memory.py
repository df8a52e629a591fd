"""Peak resident memory of `anglerank score` must not grow with the dataset size.

Scores a synthetic dataset (GSM8K questions repeated) of 1,000 and of 20,000 rows with a
tiny random model (the embedded SmolLM2 tokenizer, 2 layers of width 64), each in a fresh
process, and compares the peak RSS of the two. Target: within 10%.

Usage: python benchmarks/bench_memory.py [--small 1000] [--large 20000]
Ends with one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_json

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import resource, sys
from anglerank.cli import _tune_allocator, app
_tune_allocator()  # what the `anglerank` entry point does
try:
    app(sys.argv[1:], standalone_mode=False)
except SystemExit as e:
    if e.code:
        raise
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_data(src: Path, n: int, out: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    qs = pq.read_table(src, columns=["extra_info"]).column("extra_info").to_pylist()
    questions = [q["question"] for q in qs]
    rows = [f"{questions[i % len(questions)]} (variant {i})" for i in range(n)]
    pq.write_table(pa.table({"question": rows, "id": list(range(n))}), out, row_group_size=1000)
    return out


def make_tiny_model(folder: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from anglerank.model import loading

    tok = AutoTokenizer.from_pretrained(loading.prepare_embedded())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def run(data: Path, model: Path, out: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", CHILD, "score", str(data), "-o", str(out), "--model", str(model), "-q",
         "--dtype", "float32"],
        capture_output=True, text=True, check=True,
    )
    kb = int(next(line.split()[1] for line in p.stdout.splitlines() if line.startswith("MAXRSS_KB")))
    return kb, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=20000)
    ap.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "data" / "gsm8k_train.parquet")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_memory.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_tiny_model(tmp / "tiny")
        res = {}
        for n in (args.small, args.large):
            data = make_data(args.src, n, tmp / f"d{n}.parquet")
            kb, secs = run(data, model, tmp / f"o{n}")
            res[n] = {"rows": n, "peak_rss_mib": round(kb / 1024, 1), "seconds": round(secs, 1)}
            print(f"{n:>7} rows: peak RSS {kb / 1024:.1f} MiB, {secs:.1f} s", file=sys.stderr)
    ratio = res[args.large]["peak_rss_mib"] / res[args.small]["peak_rss_mib"]
    result = {"machine": machine(), "runs": list(res.values()), "rss_ratio_large_vs_small": round(ratio, 3),
              "within_10_percent": abs(ratio - 1) <= 0.10}
    write_json(args.out, result, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
