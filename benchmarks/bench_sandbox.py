"""Cost of the code reward per completion: the judge with its private root against the earlier design.

    python benchmarks/bench_sandbox.py [--rounds 15] [--old-rev c1d274f] [--out benchmarks/results/sandbox.json]

The earlier design (every test its own program, the asserts appended to it, exit status 0 = pass) is
taken from git at ``--old-rev`` (``git archive`` into a temporary directory, put first on the path of
its worker process); the current one is this checkout. Each round runs one worker process per design,
alternating which goes first, so a busy machine slows both alike. A worker times
``anglerank.rewards.coding.pass_fractions`` on one completion at a time, one worker thread, after one untimed
call (imports, and the current design's one-off isolation check):

- ``asserts``: a correct function against a list of 5 assert statements;
- ``stdin/stdout``: a correct program against 3 stdin/stdout cases;
- ``8 completions``: 8 completions x 5 asserts through the default pool (one worker per core).

Writes JSON and a Markdown table (median and minimum wall seconds per completion).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from common import machine, write_json

ROOT = Path(__file__).resolve().parents[1]
ADD = "```python\ndef add(a, b):\n    return a + b\n```"
ASSERTS = [f"assert add({a}, {b}) == {a + b}" for a, b in ((1, 2), (0, 0), (-5, 5), (10, 20), (7, 8))]
IO_PROGRAM = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
IO_TESTS = [{"input": f"{a} {b}\n", "output": f"{a + b}\n"} for a, b in ((1, 2), (3, 4), (-1, 1))]

WORKER = r"""
import json, sys, time
import anglerank
from anglerank.rewards.coding import pass_fractions
cases = json.loads(sys.argv[1])
out = {"module": anglerank.__file__}
pass_fractions(*cases["asserts"][:2])  # warm-up: imports, and the one-off isolation check of the new design
for name, (comps, tests, workers) in cases.items():
    t0 = time.perf_counter()
    got = pass_fractions(comps, tests, workers=workers)
    assert got == [1.0] * len(comps), (name, got)
    out[name] = (time.perf_counter() - t0) / len(comps)
print(json.dumps(out))
"""


def old_tree(rev: str, dest: Path) -> None:
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "anglerank"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest)


def run_worker(path: Path, cases: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(path), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", WORKER, json.dumps(cases)], env=env, capture_output=True,
                         text=True, cwd=path)
    if res.returncode != 0:
        raise SystemExit(f"worker for {path} failed:\n{res.stderr}")
    return json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--old-rev", default="c1d274f", help="git revision of the earlier design")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sandbox.json")
    args = ap.parse_args()
    from anglerank.rewards.sandbox import isolation

    cases = {"asserts": ([ADD], [ASSERTS], 1), "stdin/stdout": ([IO_PROGRAM], [IO_TESTS], 1),
             "8 completions": ([ADD] * 8, [ASSERTS] * 8, None)}
    times = {"old": {k: [] for k in cases}, "new": {k: [] for k in cases}}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        old_tree(args.old_rev, Path(tmp))
        paths = {"old": Path(tmp), "new": ROOT}
        for r in range(args.rounds):
            for design in (("old", "new") if r % 2 == 0 else ("new", "old")):
                got = run_worker(paths[design], cases)
                assert got["module"].startswith(str(paths[design])), got["module"]
                for k in cases:
                    times[design][k].append(got[k])
            loads.append(os.getloadavg()[0])
    result = {"machine": f"{machine()}, Python {sys.version.split()[0]}",
              "old_rev": args.old_rev, "rounds": args.rounds, "load_1min": [min(loads), max(loads)],
              "isolation_new": isolation(),
              "seconds_per_completion": {d: {k: {"median": statistics.median(v), "min": min(v)} for k, v in t.items()}
                                         for d, t in times.items()},
              "raw": times}
    write_json(args.out, result)
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(res: dict) -> str:
    s = res["seconds_per_completion"]
    rows = [f"| {k} | {s['old'][k]['median']:.3f} | {s['old'][k]['min']:.3f} | {s['new'][k]['median']:.3f} | "
            f"{s['new'][k]['min']:.3f} | {s['new'][k]['median'] / s['old'][k]['median']:.2f}x |" for k in s["old"]]
    return "\n".join([
        "# Code reward: wall seconds per completion, earlier design vs judge with a private root", "",
        f"Machine: {res['machine']}; {res['rounds']} interleaved rounds (1-min load average "
        f"{res['load_1min'][0]:.2f} to {res['load_1min'][1]:.2f}); earlier design: git {res['old_rev']}.", "",
        "- asserts: 1 completion, 5 assert statements (earlier: 5 programs; now: 1 judge, 1 program);",
        "- stdin/stdout: 1 completion, 3 cases (earlier: 3 programs; now: 1 judge, 3 programs);",
        "- 8 completions: 8 x 5 asserts through the default pool (one worker per core), per completion.", "",
        "| case | earlier median s | earlier min s | now median s | now min s | now / earlier |",
        "|---|---|---|---|---|---|", *rows, "",
        f"Isolation in effect now: {res['isolation_new']}.", ""])


if __name__ == "__main__":
    main()
