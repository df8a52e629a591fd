"""A generated set of small function-writing problems with tests, for `anglerank train --reward code`.

    python examples/code_tasks.py -o code_tasks.parquet -n 200
    anglerank train code_tasks.parquet --reward code -o runs/code --epochs 5 --subset-size 32

Each row: ``prompt`` (one user message asking for a function in a fenced Python
block), ``tests`` (assert statements), ``data_source`` (the task family), and
``extra_info.index``. Seeded; no network, no files besides the output.
"""

from __future__ import annotations

import argparse
import random

def scale(r):
    k, x = r.randint(2, 9), r.randint(2, 50)
    return (f"Write a Python function `scale(x)` that returns x multiplied by {k}.",
            [f"assert scale(0) == 0", f"assert scale({x}) == {x * k}", f"assert scale(-1) == {-k}"])


def total(r):
    a, b = r.randint(1, 9), r.randint(1, 9)
    return ("Write a Python function `total(xs)` that returns the sum of the numbers in the list xs (0 for an "
            "empty list).", ["assert total([]) == 0", "assert total([1, 2, 3]) == 6", f"assert total([{a}, -{b}]) == {a - b}"])


def rev(r):
    w = r.choice(["apple", "banana", "cherry", "grape", "lemon"])
    return ("Write a Python function `rev(s)` that returns the string s reversed.",
            [f"assert rev({w!r}) == {w[::-1]!r}", "assert rev('') == ''", "assert rev('ab') == 'ba'"])


def vowels(r):
    w = r.choice(["education", "rhythm", "queue", "python", "aeiou"])
    return ("Write a Python function `vowels(s)` that counts the vowels (a, e, i, o, u) in the lower-case string s.",
            [f"assert vowels({w!r}) == {sum(c in 'aeiou' for c in w)}", "assert vowels('') == 0"])


def clamp(r):
    hi = r.randint(5, 20)
    return (f"Write a Python function `clamp(x)` that returns x limited to the range 0 to {hi} inclusive.",
            ["assert clamp(-3) == 0", f"assert clamp({hi + 7}) == {hi}", f"assert clamp({hi // 2}) == {hi // 2}"])


FAMILIES = {f.__name__: f for f in (scale, total, rev, vowels, clamp)}
SUFFIX = " Answer with the function in one ```python code block."


def make_rows(n: int, seed: int = 0) -> list[dict]:
    r = random.Random(seed)
    rows = []
    for i in range(n):
        family = r.choice(sorted(FAMILIES))
        question, tests = FAMILIES[family](r)
        rows.append({"data_source": f"code-{family}", "prompt": [{"role": "user", "content": question + SUFFIX}],
                     "tests": tests, "extra_info": {"index": i}})
    return rows


def main():
    import pyarrow as pa
    import pyarrow.parquet as pq

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    pq.write_table(pa.Table.from_pylist(make_rows(args.n, args.seed)), args.output)
    print(f"wrote {args.n} problems to {args.output}")


if __name__ == "__main__":
    main()
