"""Rollouts with a repeated prompt read once against read for every sequence, on the embedded model.

A GRPO batch repeats each prompt G times. ``generation.generate`` computes a
prompt's keys and values once and copies them to its repeats; the plain path
(``share_prompts=False``, what ``model.generate`` does alone) reads every copy.
Both paths sample the same batches from the same generators, alternating, one
thread; the script reports the time of each, their ratio, and whether every
completion is the same token for token.

Prediction: the training prompts are about 60 tokens with the chat template and
completions at most 32, so at G = 4 the prompt is about two thirds of a batch's
compute and sharing it should take a third to a half off the rollout time.

    python benchmarks/bench_rollouts.py        # writes benchmarks/results/bench_rollouts.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from common import machine, write_json

ROOT = Path(__file__).resolve().parents[1]


def prompts(tok, n: int) -> list[list[int]]:
    import random

    import bench_train as bt

    r = random.Random(0)
    questions = [bt.problem(bt.KINDS[i % len(bt.KINDS)], r)[0] + bt.SUFFIX for i in range(n)]
    ids = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True) for q in questions]
    return [x if isinstance(x, list) else list(x["input_ids"]) for x in ids]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4, help="G: completions per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3, help="batches per path")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_rollouts.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from anglerank.model.generation import generate
    from anglerank.model.loading import load

    lm = load(None, "cpu", "float32")
    batch = [p for p in prompts(lm.tokenizer, args.prompts) for _ in range(args.group)]
    times = {False: [], True: []}
    same = True
    for rep in range(args.reps):
        out = {}
        for share in (False, True) if rep % 2 == 0 else (True, False):
            t0 = time.perf_counter()
            out[share] = generate(lm.model, lm.tokenizer, batch, max_new_tokens=args.max_new_tokens,
                                  temperature=0.9, batch_size=len(batch), share_prompts=share,
                                  generator=torch.Generator().manual_seed(rep))
            times[share].append(time.perf_counter() - t0)
        same &= out[True].completion_ids == out[False].completion_ids
    plain, shared = statistics.median(times[False]), statistics.median(times[True])
    result = {"machine": machine(), "threads": 1, "dtype": "float32", "prompts": args.prompts, "group": args.group,
              "max_new_tokens": args.max_new_tokens, "prompt_tokens_mean": sum(map(len, batch)) / len(batch),
              "plain_s": times[False], "shared_s": times[True], "plain_median_s": plain, "shared_median_s": shared,
              "speedup": plain / shared, "identical_completions": same,
              "load_average": os.getloadavg()[0]}
    write_json(Path(args.out), result)
    print(f"plain {plain:.1f}s  shared {shared:.1f}s  speedup x{plain / shared:.2f}  identical: {same}")


if __name__ == "__main__":
    main()
