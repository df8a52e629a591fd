"""`make demo`: generate a seeded math word-problem set, score it with the embedded
model, and show the highest- and lowest-scored questions.

Idempotent: the dataset and the scores are reused when they already exist.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

NAMES = ["Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jamal", "Kira", "Liam"]
ITEMS = ["apples", "marbles", "stickers", "books", "cookies", "pencils", "shells", "cards"]


def _problem(rng: random.Random) -> tuple[str, str]:
    n, m = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    a, b, c = rng.randint(2, 60), rng.randint(2, 30), rng.randint(2, 9)
    kind = rng.randrange(8)
    if kind == 0:
        return f"{n} has {a} {item}. {m} gives {n} {b} more. How many {item} does {n} have now?", str(a + b)
    if kind == 1:
        a = a + b
        return f"{n} had {a} {item} and gave {b} of them to {m}. How many {item} does {n} have left?", str(a - b)
    if kind == 2:
        return f"Each box holds {c} {item}. {n} fills {b} boxes. How many {item} are there in total?", str(b * c)
    if kind == 3:
        return (f"{n} shares {b * c} {item} equally among {c} friends. How many {item} does each friend get?",
                str(b))
    if kind == 4:
        return (f"{n} buys {c} packs of {item} at ${b} each and pays with a ${b * c + a} bill. "
                f"How much change does {n} get?", str(a))
    if kind == 5:
        return (f"{n} reads {b} pages on Monday and twice as many on Tuesday. On Wednesday {n} reads {c} fewer "
                f"pages than on Tuesday. How many pages did {n} read in the three days?", str(b + 2 * b + 2 * b - c))
    if kind == 6:
        pct = rng.choice([10, 20, 25, 50])
        price = rng.choice([20, 40, 80, 120, 200])
        return (f"A jacket costs ${price}. It is on sale for {pct}% off. What is the sale price in dollars?",
                str(price - price * pct // 100))
    return (f"{n} walks {c} kilometres every day for {b} days, and {m} walks {a} kilometres in total. "
            f"How many more kilometres did {n} walk than {m}?", str(c * b - a))


def make_dataset(path: Path, n: int = 240, seed: int = 0) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    rows = [_problem(rng) for _ in range(n)]
    table = pa.table({
        "id": list(range(n)),
        "question": [q for q, _ in rows],
        "answer": [a for _, a in rows],
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, row_group_size=64)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from anglerank.data.reader import ParquetSource
    from anglerank.data.writer import load_scores, read_manifest

    console = Console(stderr=True)
    root = Path(".demo")
    data = root / "problems.parquet"
    out = root / "scores"
    if not data.exists():
        make_dataset(data)
        console.print(f"wrote demo dataset {data} (240 seeded word problems)")
    else:
        console.print(f"reusing demo dataset {data}")
    manifest = read_manifest(out)
    if manifest and manifest.get("complete"):
        console.print(f"reusing scores in {out} (delete .demo/ to recompute)")
    else:
        from anglerank.cli import app

        args = ["score", str(data), "-o", str(out), "--preset", "gainrl"]
        args += ["--resume"] if manifest else []
        console.print("$ anglerank " + " ".join(args))
        try:
            app(args, standalone_mode=False)
        except SystemExit as exc:
            if exc.code:
                return int(exc.code)
        manifest = read_manifest(out)
        if not manifest or not manifest.get("complete"):
            return 1
    scores = load_scores(out).to_pylist()
    questions = {}
    for rec in ParquetSource([str(data)]).iter_records():
        questions[rec.row] = rec.question
    valid = sorted((r for r in scores if r["score"] is not None), key=lambda r: -r["score"])
    for title, chunk in (("5 highest-scored", valid[:5]), ("5 lowest-scored", valid[-5:])):
        tab = Table(title=title, title_justify="left")
        tab.add_column("row", justify="right")
        tab.add_column("score", justify="right")
        tab.add_column("tokens", justify="right")
        tab.add_column("question")
        for r in chunk:
            tab.add_row(str(r["row"]), f"{r['score']:.4f}", str(r["n_question"]), questions[r["row"]])
        Console().print(tab)
    import statistics

    vals = [r["score"] for r in valid]
    lens = [r["n_question"] for r in valid]
    from anglerank.angles import spearman

    stats = Table(title="summary", show_header=False, title_justify="left")
    stats.add_row("rows scored", f"{len(vals)} of {len(scores)}")
    stats.add_row("score mean ± std", f"{statistics.mean(vals):.4f} ± {statistics.pstdev(vals):.4f}")
    stats.add_row("score min / median / max", f"{min(vals):.4f} / {statistics.median(vals):.4f} / {max(vals):.4f}")
    stats.add_row("Spearman(score, question tokens)", f"{spearman(vals, lens):+.3f}")
    stats.add_row("model / dtype", f"{manifest['model']} / {manifest['dtype']}")
    stats.add_row("throughput", f"{manifest.get('tokens_per_s') or 0:,.0f} tokens/s")
    Console().print(stats)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
