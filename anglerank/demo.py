"""`make demo`: generate a seeded math word-problem set, score it with the embedded
model, and show the highest- and lowest-scored questions.

The problems are written in the verl layout that every recipe reads (``prompt`` =
chat messages, ``reward_model.ground_truth``, ``data_source`` ``openai/gsm8k`` so
verl's built-in GSM8K checker rewards them, ``extra_info.question`` / ``answer``),
so the ranked output goes straight into ``anglerank train``, ``sample``, the TRL
example and the verl recipe. The scores are taken of the plain question
(``extra_info.question``) in the authors' prompt (``--preset gainrl``).

Idempotent: the dataset and the scores are reused when they already exist.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from anglerank.cli import app
from anglerank.data.reader import ParquetSource
from anglerank.data.writer import load_scores, read_manifest

# verl's GSM8K preprocessing asks for the answer after "####": its checker, the built-in
# math reward and the TRL example's reward all read that form
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
DATA_SOURCE = "openai/gsm8k"
ROWS, TEST_ROWS = 240, 48

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


def make_dataset(path: Path, n: int = ROWS, seed: int = 0, split: str = "train") -> Path:
    """``n`` seeded word problems in the verl layout, written to ``path`` (atomically)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    rows = [_problem(rng) for _ in range(n)]
    table = pa.table({
        "data_source": [DATA_SOURCE] * n,
        "prompt": [[{"role": "user", "content": f"{q} {INSTRUCTION}"}] for q, _ in rows],
        "ability": ["math"] * n,
        "reward_model": [{"style": "rule", "ground_truth": a} for _, a in rows],
        "extra_info": [{"split": split, "index": i, "question": q, "answer": a} for i, (q, a) in enumerate(rows)],
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, row_group_size=64)
    tmp.replace(path)
    return path


def _current_layout(path: Path) -> bool:
    import pyarrow.parquet as pq

    return {"prompt", "reward_model", "extra_info"} <= set(pq.read_schema(path).names)


def _prepare_data(console, root: Path, rows: int) -> tuple[Path, bool]:
    """(the training set, whether it was (re)written); a set from before the verl layout is replaced."""
    data, test = root / "problems.parquet", root / "test.parquet"
    fresh = not data.exists() or not _current_layout(data)
    if fresh:
        make_dataset(data, rows)
        console.print(f"wrote demo dataset {data} ({rows} seeded word problems, verl layout)")
    else:
        console.print(f"reusing demo dataset {data}")
    if fresh or not test.exists():
        make_dataset(test, TEST_ROWS, seed=1, split="test")
    return data, fresh


def _score(console, data: Path, out: Path, fresh: bool) -> dict | None:
    """Score ``data`` into ``out`` unless a complete run is there; the manifest, or None on failure."""
    manifest = None if fresh else read_manifest(out)
    if manifest and manifest.get("complete"):
        console.print(f"reusing scores in {out} (delete {out.parent}/ to recompute)")
        return manifest
    args = ["score", str(data), "-o", str(out), "--prompt-column", "extra_info.question", "--preset", "gainrl"]
    args += ["--resume"] if manifest else ["--overwrite"] if fresh and out.exists() else []
    console.print("$ anglerank " + " ".join(args))
    try:
        app(args, standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            return None
    manifest = read_manifest(out)
    return manifest if manifest and manifest.get("complete") else None


def _show(data: Path, out: Path, manifest: dict) -> None:
    """The highest- and lowest-scored questions and the summary statistics, on stdout."""
    import statistics

    from rich.console import Console
    from rich.table import Table

    from anglerank.angles import spearman  # imports torch

    scores = load_scores(out).to_pylist()
    questions = {rec.row: rec.question
                 for rec in ParquetSource([str(data)], prompt_column="extra_info.question").iter_records()}
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
    vals = [r["score"] for r in valid]
    lens = [r["n_question"] for r in valid]
    stats = Table(title="summary", show_header=False, title_justify="left")
    stats.add_row("rows scored", f"{len(vals)} of {len(scores)}")
    if vals:
        stats.add_row("score mean ± std", f"{statistics.mean(vals):.4f} ± {statistics.pstdev(vals):.4f}")
        stats.add_row("score min / median / max",
                      f"{min(vals):.4f} / {statistics.median(vals):.4f} / {max(vals):.4f}")
        stats.add_row("Spearman(score, question tokens)", f"{spearman(vals, lens):+.3f}")
    stats.add_row("model / dtype", f"{manifest['model']} / {manifest['dtype']}")
    stats.add_row("throughput", f"{manifest.get('tokens_per_s') or 0:,.0f} tokens/s")
    Console().print(stats)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    p = argparse.ArgumentParser(prog="python -m anglerank.demo", description="Generate and score the demo set.")
    p.add_argument("--dir", type=Path, default=Path(".demo"), help="where the data and scores go (default .demo)")
    p.add_argument("--rows", type=int, default=ROWS, help=f"problems to generate (default {ROWS})")
    a = p.parse_args(argv)
    console = Console(stderr=True)
    data, fresh = _prepare_data(console, a.dir, a.rows)
    out = a.dir / "scores"
    manifest = _score(console, data, out, fresh)
    if manifest is None:
        return 1
    _show(data, out, manifest)
    console.print(f"next: anglerank rank {out} -o {a.dir / 'ranked.parquet'}   (then the recipes in README.md)",
                  highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
