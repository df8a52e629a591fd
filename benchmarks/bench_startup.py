"""Start-up of a one-row `anglerank score`, against plain transformers scripts in the same run.

    python benchmarks/bench_startup.py [--rounds 7] [--out benchmarks/results/startup.json]

Each round starts these fresh processes in turn (interleaved, so a noisy machine slows them
all alike), on one prompt with the embedded model and the dtype `anglerank score` picks:

- `anglerank --help`;
- `anglerank score one.parquet -o DIR --overwrite`;
- the plain reference: what any tool built on transformers pays at the least: import torch
  and transformers, load the tokenizer and the model (`from_pretrained`), one forward pass of
  the chat-templated prompt, exit;
- the same reference with the garbage collector paused during start-up and frozen at exit, as
  anglerank's entry point does (the floor for this machine and these libraries).

One more process times the reference's steps one by one (the collector paused), and how long
the interpreter takes to exit after its last line. Writes JSON and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import write_json

QUESTION = "What is 2 + 3?"

# The reference, as a user would write it. {pause} turns the collector off for start-up.
REFERENCE = """
import time, sys
t = {{"start": time.time()}}
{pause}
import torch
t["import torch"] = time.time()
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
t["import transformers and the Auto classes"] = time.time()
cfg = AutoConfig.from_pretrained({path!r})
t["the config class (its module imports the weight-loading code)"] = time.time()
MODEL_FOR_CAUSAL_LM_MAPPING[type(cfg)]
t["the model's module"] = time.time()
tok = AutoTokenizer.from_pretrained({path!r})
t["the tokenizer"] = time.time()
model = AutoModelForCausalLM.from_pretrained({path!r}, dtype=getattr(torch, {dtype!r})).eval()
t["from_pretrained"] = time.time()
ids = tok.apply_chat_template([{{"role": "user", "content": {question!r}}}], add_generation_prompt=True,
                              return_tensors="pt", return_dict=True)["input_ids"]
with torch.inference_mode():
    model(ids)
t["one forward pass"] = time.time()
{freeze}
print("STEPS " + __import__("json").dumps(t), flush=True)
"""


def reference_code(path: Path, dtype: str, pause: bool) -> str:
    return REFERENCE.format(path=str(path), dtype=dtype, question=QUESTION,
                            pause="import gc; gc.disable()" if pause else "",
                            freeze="gc.freeze()" if pause else "")


# What the runs need to know, asked of a child process: this one imports neither torch nor a model,
# because on the VM measured here a parent holding a loaded model made its children's page
# faults 6x dearer (README, "Start-up"), and one that had imported torch slowed them too.
SETUP = """
import json, os, sys, torch, transformers
from anglerank.model import loading
from anglerank.model.device import cpu_description, resolve_dtype
path = loading.resolve_model_path(None)  # converts the embedded model once, before any timing
print(json.dumps({"path": str(path), "dtype": resolve_dtype("auto", "cpu"),
                  "machine": f"{cpu_description()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                             f"transformers {transformers.__version__}, Python {sys.version.split()[0]}"}))
"""


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({res.returncode}): {res.stderr[-2000:]}")
    return wall, res.stdout


def step_table(code: str) -> dict:
    """Seconds per step of the reference, and the exit: from its last line to the process's end."""
    t0 = time.time()
    wall, out = timed([sys.executable, "-c", code])
    end = t0 + wall
    marks = json.loads(next(x for x in out.splitlines() if x.startswith("STEPS "))[6:])
    names, steps, prev = list(marks), {}, marks["start"]
    steps["interpreter start"] = round(marks["start"] - t0, 3)
    for name in names[1:]:
        steps[name] = round(marks[name] - prev, 3)
        prev = marks[name]
    steps["interpreter exit"] = round(end - prev, 3)
    return steps


def summary(times: list[float]) -> dict:
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "runs_s": [round(t, 3) for t in times]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "startup.json")
    args = ap.parse_args()

    setup = json.loads(subprocess.run([sys.executable, "-c", SETUP], capture_output=True, text=True,
                                      check=True).stdout.splitlines()[-1])
    path, dtype = Path(setup["path"]), setup["dtype"]
    cli = str(Path(sys.executable).with_name("anglerank"))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "one.parquet"
        pq.write_table(pa.table({"prompt": [QUESTION]}), data)
        variants = {
            "anglerank --help": [cli, "--help"],
            "anglerank score (one row)": [cli, "score", str(data), "-o", str(Path(tmp) / "out"), "--overwrite"],
            "plain transformers script": [sys.executable, "-c", reference_code(path, dtype, pause=False)],
            "the same, collector paused (floor)": [sys.executable, "-c", reference_code(path, dtype, pause=True)],
        }
        for cmd in variants.values():  # warm the file cache and the bytecode caches
            timed(cmd)
        times: dict[str, list[float]] = {k: [] for k in variants}
        load = []
        for r in range(args.rounds):
            load.append(round(os.getloadavg()[0], 2))
            for name, cmd in variants.items():
                times[name].append(timed(cmd)[0])
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                  flush=True)
        steps = step_table(reference_code(path, dtype, pause=True))

    score, plain, floor = (statistics.median(times[k]) for k in list(variants)[1:])
    result = {
        "machine": setup["machine"],
        "dtype": dtype, "rounds": args.rounds, "load_avg_1min_per_round": load,
        "variants": {k: summary(v) for k, v in times.items()},
        "score_over_plain": round(score / plain, 3), "score_over_floor": round(score / floor, 3),
        "floor_steps_s": steps,
    }
    write_json(args.out, result)
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    lines = ["# Start-up of a one-row `anglerank score`", "", f"Machine: {r['machine']}; dtype {r['dtype']}; "
             f"{r['rounds']} interleaved rounds (1-min load average {min(r['load_avg_1min_per_round'])} to "
             f"{max(r['load_avg_1min_per_round'])}).", "",
             "| process | median s | min s |", "|---|---|---|"]
    lines += [f"| {k} | {v['median_s']:.2f} | {v['min_s']:.2f} |" for k, v in r["variants"].items()]
    lines += ["", f"`anglerank score` / plain script: {r['score_over_plain']:.2f}x; / floor: "
              f"{r['score_over_floor']:.2f}x.", "", "The floor's steps (one process):", "",
              "| step | s |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in r["floor_steps_s"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
