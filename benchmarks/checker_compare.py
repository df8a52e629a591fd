"""The old home-made answer checker against the math-verify one, on real completions.

Why this exists: ``anglerank.rewards.grading`` replaced its own extractor/normaliser by
math-verify, the judge of TRL's ``accuracy_reward``. This script shows where the
two disagree and who is right:

1. generate completions with the embedded model (SmolLM2-135M-Instruct, CPU,
   one torch thread, T=0.7, at most 384 new tokens) for problems sampled with a
   fixed seed from the shared MATH test set (the dataset's own prompt, which asks
   for the final answer within ``\\boxed{}``); the pairs are saved to
   ``benchmarks/results/checker_pairs.jsonl`` so ``--pairs FILE`` reruns the
   comparison without the model;
2. judge every pair with the old checker (``answers_match(extract_answer(c),
   reference_answer(r))``) and the new :func:`anglerank.rewards.grading.grade` in both
   answer formats, and time both;
3. list every disagreement with the verdict read by hand (``VERDICTS`` below);
4. run a handcrafted list of hard format cases through both checkers.

The old checker is read, as it was, from the repository's history when the script
runs (``git show a8fa060:anglerank/grading.py``, the last commit before the change;
it imports only the standard library), so the script needs a git checkout with its
history.

Writes ``benchmarks/results/checker_compare.json`` and ``checker_compare.md``.

    python benchmarks/checker_compare.py                     # generate (~17 min on 1 thread) and compare
    python benchmarks/checker_compare.py --pairs benchmarks/results/checker_pairs.jsonl
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import re
import subprocess
import sys
import time
import types
from fractions import Fraction
from pathlib import Path

from common import machine, write_json

ROOT = Path(__file__).resolve().parents[1]
OLD_CHECKER = "a8fa060477dcc660e54c76dff101e9be2c2b0b07:anglerank/grading.py"  # the last version before math-verify

RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "math_test.parquet"

# --------------------------------------------------------------------------- #
# 1. pairs
# --------------------------------------------------------------------------- #


def sample_problems(n: int, seed: int) -> list[dict]:
    import pyarrow.parquet as pq

    rows = pq.read_table(DATA, columns=["prompt", "reward_model", "extra_info", "level", "type"]).to_pylist()
    picked = random.Random(seed).sample(range(len(rows)), n)
    return [{"id": rows[i]["extra_info"]["index"], "question": rows[i]["prompt"][0]["content"],
             "reference": rows[i]["reward_model"]["ground_truth"], "level": rows[i]["level"],
             "type": rows[i]["type"]} for i in picked]


def generate_pairs(problems: list[dict], max_new_tokens: int, batch: int, seed: int) -> tuple[list[dict], dict]:
    import torch

    from anglerank.model import generation, loading
    from anglerank.model.render import Renderer

    torch.set_num_threads(1)
    lm = loading.load(None, "cpu", "float32")
    renderer = Renderer(lm.tokenizer, "none", None, None, 1024)
    ids = [renderer.render(p["question"]).ids for p in problems]
    order = sorted(range(len(problems)), key=lambda i: len(ids[i]))  # similar lengths per batch: less padding
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    ro = generation.generate(lm.model, lm.tokenizer, [ids[i] for i in order], max_new_tokens=max_new_tokens,
                             temperature=0.7, top_p=1.0, batch_size=batch, generator=gen)
    seconds = time.perf_counter() - t0
    pairs = []
    for k, i in enumerate(order):
        p = problems[i]
        pairs.append({"id": p["id"], "level": p["level"], "type": p["type"], "reference": p["reference"],
                      "completion": ro.texts[k], "finished": ro.finished[k]})
    pairs.sort(key=lambda p: p["id"])
    info = {"model": "SmolLM2-135M-Instruct (embedded)", "temperature": 0.7, "max_new_tokens": max_new_tokens,
            "batch_size": batch, "seed": seed, "torch_threads": 1, "generation_s": round(seconds, 1)}
    return pairs, info


# --------------------------------------------------------------------------- #
# 2. judging
# --------------------------------------------------------------------------- #


@functools.cache
def old_checker() -> types.ModuleType:
    """The home-made checker as a module, compiled from its source in the repository's history."""
    res = subprocess.run(["git", "-C", str(ROOT), "show", OLD_CHECKER], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"error: cannot read the old checker ({OLD_CHECKER}) from git: {res.stderr.strip()}")
    module = types.ModuleType("old_grading")
    exec(compile(res.stdout, OLD_CHECKER, "exec"), module.__dict__)
    return module


def old_judge(completion: str, reference) -> bool:
    old = old_checker()
    return old.answers_match(old.extract_answer(completion), old.reference_answer(reference))


def new_judge(completion: str, reference, fmt: str) -> bool:
    from anglerank.rewards.grading import grade

    return grade(completion, reference, fmt)


def final_answer(completion: str) -> str | None:
    """What a reader would call the completion's final answer (the old extractor's
    pick: last box, else ``####``, else last number), for the report only."""
    return old_checker().extract_answer(completion)


def timed(fn, pairs, repeats: int = 3) -> tuple[list[bool], float]:
    """Verdicts and the best of ``repeats`` timings (ms per pair): the machine is shared."""
    fn(pairs[0]["completion"], pairs[0]["reference"])  # warm-up: imports, regex compilation
    best = float("inf")
    from anglerank.rewards import grading

    for _ in range(repeats):
        grading._parse_reference.cache_clear()  # each repeat parses every reference afresh
        t0 = time.perf_counter()
        out = [bool(fn(p["completion"], p["reference"])) for p in pairs]
        best = min(best, time.perf_counter() - t0)
    return out, 1000 * best / len(pairs)


# --------------------------------------------------------------------------- #
# 3. verdicts on the disagreements, read by hand: id -> (who is right, why)
# --------------------------------------------------------------------------- #

VERDICTS: dict[tuple[int, str], tuple[str, str]] = {
    (316, "boxed"): ("by design", "'So the answer is 18.' is right but unmarked (no \\boxed, no ####): 0 under "
                                  "boxed (TRL's rule), 1 under answer_format=any, which agrees with the old checker"),
    (3904, "boxed"): ("by design", "'The answer is 8.' is right but unmarked: 0 under boxed, 1 under any"),
    (1990, "boxed"): ("new", "the completion is cut off before any answer; the old checker took the last number in "
                             "the text (the cone's height, 5 inches), which happens to be the reference"),
    (809, "boxed"): ("old", "the model's answer is 100 (wrong); the completion echoes the prompt, 'output the final "
                            "answer within \\boxed{}. Expand $(x+5)^2$', and TRL's marker (LaTeX within 50 characters "
                            "after 'answer') takes $(x+5)^2$, which equals the reference: TRL's accuracy_reward "
                            "gives 1.0 here too"),
    (809, "any"): ("old", "as under boxed: the echoed problem expression after 'answer' is taken as the answer"),
    (322, "any"): ("old", "the completion never answers; it restates the problem's $\\sqrt{5^5+5^5+5^5+5^5+5^5}$, "
                          "the last LaTeX span, and math-verify evaluates it to the reference 125"),
    (1544, "any"): ("new", "'express this probability as 1 / 6, which is the answer': the stated answer is the "
                           "reference 1/6; the old extractor did not read '1 / 6' with spaces and took 6"),
}

# --------------------------------------------------------------------------- #
# 3b. rewrites of every real MATH test reference: equivalent forms and near misses
# --------------------------------------------------------------------------- #

_INT = re.compile(r"-?\d+")
_FRAC = re.compile(r"(-?)\\[dt]?frac\{(-?\d+)\}\{(\d+)\}")
_DEC = re.compile(r"-?\d+\.\d+")


def _terminates(f: Fraction) -> bool:
    d = f.denominator
    for q in (2, 5):
        while d % q == 0:
            d //= q
    return d == 1


def variants(gt: str) -> list[tuple[str, str, bool]]:
    """(kind, answer written another way, is it the same answer?) for one reference."""
    g, out = gt.strip(), []
    if _INT.fullmatch(g):
        n = int(g)
        out += [("near: integer + 1", str(n + 1), False), ("same: x = n", f"x = {n}", True),
                ("same: with a unit", f"{n} \\text{{ units}}", True)]
        out += [("near: integer x 10", str(n * 10), False)] if n else []
        out += [("same: thousands commas", f"{n:,}", True)] if abs(n) >= 1000 else []
    m = _FRAC.fullmatch(g)
    if m:
        sign, a, b = m.group(1), int(m.group(2)), int(m.group(3))
        f = Fraction(a, b) * (-1 if sign else 1)
        out += [("same: \\dfrac", g.replace("\\frac", "\\dfrac"), True), ("same: a/b", f"{sign}{a}/{b}", True),
                ("near: denominator + 1", f"{sign}\\frac{{{a}}}{{{b + 1}}}", False)]
        if _terminates(f):
            out.append(("same: exact decimal", str(float(f)), True))
        else:
            out += [("same: 6-decimal rounding", f"{float(f):.6f}", True),
                    ("near: 4-decimal rounding", f"{float(f):.4f}", False)]
    if _DEC.fullmatch(g):
        out.append(("near: extra digit", g + "1", False))
    if "\\pi" in g and "(" not in g:
        out.append(("near: pi as 3.14", g.replace("\\pi", "(3.14)"), False))
    sq = re.search(r"\\sqrt\{(\d+)\}", g)
    if sq:
        out.append(("near: sqrt argument + 1", g[:sq.start()] + f"\\sqrt{{{int(sq.group(1)) + 1}}}" + g[sq.end():],
                    False))
    if re.fullmatch(r"[\[(][^\[\]()]*,[^\[\]()]*[\])]", g):
        out += [("near: other left bracket", {"[": "(", "(": "["}[g[0]] + g[1:], False),
                ("same: \\left( \\right)", "\\left" + g[0] + " " + g[1:-1] + " \\right" + g[-1], True)]
    if g.startswith("\\{") and g.endswith("\\}") and "," in g and g.count("\\{") == 1:
        items = [x.strip() for x in g[2:-2].split(",")]
        out.append(("same: set reordered", "\\{" + ", ".join(reversed(items)) + "\\}", True))
    return out


def _variant_verdict(kind: str, comp: str, ref: str, old: bool, new: bool) -> tuple[str, str]:
    """Who is right where the checkers disagree on a rewrite (read by hand, one rule per kind)."""
    if kind == "same: 6-decimal rounding":
        return ("debatable", "a decimal rounded to 6 places: math-verify (and TRL) accept it; the old rule wanted "
                             "6 significant digits, which a small value like this does not have")
    if kind == "near: 4-decimal rounding" and new:
        return ("debatable", "this 4-decimal value is also the value rounded to 6 places (trailing zeros), so "
                             "math-verify's 6-place rule accepts it")
    if kind == "near: 4-decimal rounding":
        return ("new", "4 decimals of a non-terminating fraction: the issue's near miss (0.3333 is not 1/3); "
                       "the old rule accepted 6 significant digits")
    if kind == "near: other left bracket" and "infty" in ref:
        return ("old", "the bracket at the infinite end is wrong; sympy makes every infinite endpoint open, "
                       "so math-verify cannot see it")
    if kind == "same: set reordered":
        return ("new", "sets are unordered; the old checker compared set strings")
    return ("unreviewed", "")


def variant_study() -> dict:
    import pyarrow.parquet as pq

    gts = [r["reward_model"]["ground_truth"] for r in pq.read_table(DATA, columns=["reward_model"]).to_pylist()]
    rows = [(k, c, g, t) for g in gts for k, c, t in variants(g)]
    kinds: dict[str, dict] = {}
    dis = []
    t_old = t_new = 0.0
    for kind, ans, ref, truth in rows:
        comp = f"The final answer is $\\boxed{{{ans}}}$."
        t0 = time.perf_counter()
        o = old_judge(comp, ref)
        t1 = time.perf_counter()
        n = new_judge(comp, ref, "boxed")
        t_old, t_new = t_old + t1 - t0, t_new + time.perf_counter() - t1
        k = kinds.setdefault(kind, {"n": 0, "old_right": 0, "new_right": 0, "correct": truth})
        k["n"] += 1
        k["old_right"] += o == truth
        k["new_right"] += n == truth
        if o != n:
            verdict, reason = _variant_verdict(kind, ans, ref, o, n)
            dis.append({"kind": kind, "answer": ans, "reference": ref, "old": o, "new": n, "verdict": verdict,
                        "reason": reason})
    return {"n_references": len(gts), "n_pairs": len(rows), "kinds": kinds, "disagreements": dis,
            "right": {w: sum(d["verdict"] == w for d in dis) for w in ("old", "new", "debatable", "unreviewed")},
            "ms_per_pair": {"old": round(1000 * t_old / len(rows), 2), "new_boxed": round(1000 * t_new / len(rows), 2)}}


# --------------------------------------------------------------------------- #
# 4. handcrafted hard cases: (completion, reference, correct?)
# --------------------------------------------------------------------------- #

HARD_CASES: list[tuple[str, str, bool]] = [  # correct under answer_format=boxed (see ANY_DIFFERS)
    (r"\boxed{\{3, 1, 2\}}", r"\{1,2,3\}", True),  # sets are unordered
    (r"\boxed{(3, 1, 2)}", "(1,2,3)", False),  # tuples are ordered
    (r"\boxed{[2, 5)}", "[2,5)", True),
    (r"\boxed{(2, 5]}", "[2,5)", False),  # wrong brackets
    (r"\boxed{(-\infty, -1) \cup (1, \infty)}", r"(-\infty,-1)\cup(1,\infty)", True),
    (r"\boxed{\begin{pmatrix} 2 \\ -1 \end{pmatrix}}", r"\begin{pmatrix}2\\-1\end{pmatrix}", True),
    (r"\boxed{\begin{pmatrix} 2 \\ 1 \end{pmatrix}}", r"\begin{pmatrix}2\\-1\end{pmatrix}", False),
    (r"\boxed{45^\circ}", "45", True),
    (r"\boxed{45^{\circ}}", r"45^\circ", True),
    (r"\boxed{25\%}", "25", False),  # math-verify: 25% is 1/4 (the old checker dropped the sign)
    (r"\boxed{0.25}", r"25\%", True),
    (r"\boxed{12 \text{ cm}^2}", "12", True),
    (r"\boxed{\$1,250.50}", "1250.5", True),
    (r"\boxed{2\pi}", r"2\pi", True),
    (r"\boxed{6.28}", r"2\pi", False),
    (r"\boxed{3.14}", r"\pi", False),
    (r"\boxed{\frac{\sqrt{3}}{3}}", r"\frac{1}{\sqrt{3}}", True),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", True),
    (r"\boxed{2\sqrt{3}}", r"\sqrt{8}", False),
    (r"\boxed{1.5 \times 10^{4}}", "15000", True),
    (r"\boxed{1.5 \times 10^{5}}", "15000", False),
    (r"\boxed{1000001}", "1000000", False),
    (r"\boxed{0.3333}", r"\frac{1}{3}", False),
    (r"\boxed{0.333333}", r"\frac{1}{3}", True),
    (r"\boxed{\dfrac{7}{2}}", "3.5", True),
    (r"\boxed{x = -2}", "-2", True),
    (r"\boxed{y = 2x + 3}", "y=2x+3", True),
    (r"\boxed{2x + 3}", "3+2x", True),  # symbolic equivalence
    (r"\boxed{(x+1)^2}", "x^2+2x+1", True),
    (r"\boxed{\text{(C)}}", r"\text{(C)}", True),
    (r"\boxed{10\,000}", "10000", True),  # TeX thin space as thousands separator (fixed before math-verify)
    (r"\boxed{1.5e3}", "1500", True),  # lower-case e (fixed before math-verify, which reads Euler's e)
    (r"\boxed{1.5e4}", "1500", False),
    (r"\boxed{[-\infty, 0)}", r"(-\infty,0)", False),  # math-verify misses it: sympy opens infinite ends
    (r"\boxed{3.0000001}", "3", False),
    (r"\boxed{0.5000001}", r"\frac{1}{2}", False),  # math-verify accepts it: 6-decimal rounding
    (r"\boxed{3.14159}", r"\pi", False),
    (r"\boxed{1,000,001}", "1000000", False),
    (r"\boxed{\frac{3}{2}}", r"1\frac{1}{2}", True),  # mixed number
    (r"The answer is 12.", "12", False),  # no marker: False under boxed, True under any (ANY_DIFFERS)
    ("She has 72 in total.\n#### 72", "72", True),
]
ANY_DIFFERS = {r"The answer is 12.": True}  # completion -> correct under answer_format=any


def hard_cases() -> list[dict]:
    rows = []
    for comp, ref, truth in HARD_CASES:
        o, nb, na = old_judge(comp, ref), new_judge(comp, ref, "boxed"), new_judge(comp, ref, "any")
        rows.append({"completion": comp, "reference": ref, "correct": truth,
                     "correct_any": ANY_DIFFERS.get(comp, truth), "old": o, "new_boxed": nb, "new_any": na})
    return rows


# --------------------------------------------------------------------------- #
# report
# --------------------------------------------------------------------------- #


def compare(pairs: list[dict]) -> dict:
    old, old_ms = timed(old_judge, pairs)
    nb, nb_ms = timed(lambda c, r: new_judge(c, r, "boxed"), pairs)
    na, na_ms = timed(lambda c, r: new_judge(c, r, "any"), pairs)
    out: dict = {"n_pairs": len(pairs), "ms_per_pair": {"old": round(old_ms, 2), "new_boxed": round(nb_ms, 2),
                                                        "new_any": round(na_ms, 2)},
                 "accuracy": {"old": sum(old) / len(pairs), "new_boxed": sum(nb) / len(pairs),
                              "new_any": sum(na) / len(pairs)},
                 "with_boxed_answer": sum(bool(re.search(r"\\boxed\{[^}]", p["completion"])) for p in pairs),
                 "finished": sum(bool(p.get("finished")) for p in pairs)}
    for name, new in (("boxed", nb), ("any", na)):
        both_ok = sum(o and n for o, n in zip(old, new))
        both_no = sum(not o and not n for o, n in zip(old, new))
        dis = []
        for p, o, n in zip(pairs, old, new):
            if o == n:
                continue
            verdict, reason = VERDICTS.get((p["id"], name), ("unreviewed", ""))
            dis.append({"id": p["id"], "final_answer": final_answer(p["completion"]),
                        "completion_tail": p["completion"][-240:], "reference": p["reference"],
                        "old": o, "new": n, "verdict": verdict, "reason": reason})
        out[f"new_{name}"] = {"both_correct": both_ok, "both_wrong": both_no,
                              "old_true_new_false": sum(o and not n for o, n in zip(old, new)),
                              "old_false_new_true": sum(n and not o for o, n in zip(old, new)),
                              "right": {w: sum(d["verdict"] == w for d in dis)
                                        for w in ("old", "new", "by design", "unreviewed")},
                              "disagreements": dis}
    return out


def write_md(report: dict, path: Path) -> None:
    L = ["# Answer checker: old (home-made) vs new (math-verify)", ""]
    g = report.get("generation", {})
    L.append(f"{report['n_pairs']} (completion, reference) pairs: {g.get('model', '?')} on problems sampled "
             f"(seed {report['seed']}) from the MATH test set, T={g.get('temperature')}, "
             f"≤{g.get('max_new_tokens')} new tokens. Machine: {report['machine']}.")
    L.append("")
    L.append(f"The model is tiny: {report['finished']} completions end before the token limit and "
             f"{report['with_boxed_answer']} contain a non-empty `\\boxed{{}}` (most echo the instruction's empty "
             "one), so few are right and the checkers rarely disagree here; the rewrites of real references below "
             "test the answer formats at scale.")
    L.append("")
    L.append("| | old | new, boxed | new, any |")
    L.append("| --- | --- | --- | --- |")
    a, ms = report["accuracy"], report["ms_per_pair"]
    L.append(f"| judged correct | {a['old']:.1%} | {a['new_boxed']:.1%} | {a['new_any']:.1%} |")
    L.append(f"| ms per pair | {ms['old']} | {ms['new_boxed']} | {ms['new_any']} |")
    L.append("")
    for name in ("boxed", "any"):
        r = report[f"new_{name}"]
        L.append(f"## new checker, answer_format={name}")
        L.append("")
        L.append(f"both correct {r['both_correct']}, both wrong {r['both_wrong']}; old True/new False "
                 f"{r['old_true_new_false']}, old False/new True {r['old_false_new_true']}; right: "
                 f"old {r['right']['old']}, new {r['right']['new']}, by design (the boxed|any rule) "
                 f"{r['right']['by design']}, unreviewed {r['right']['unreviewed']}.")
        L.append("")
        if r["disagreements"]:
            L.append("| id | old extractor's answer | reference | old | new | right | why |")
            L.append("| --- | --- | --- | --- | --- | --- | --- |")
            for d in r["disagreements"]:
                fa = str(d["final_answer"]).replace("|", "\\|")[:60]
                ref = str(d["reference"]).replace("|", "\\|")
                L.append(f"| {d['id']} | `{fa}` | `{ref}` | {d['old']} | {d['new']} | {d['verdict']} | {d['reason']} |")
            L.append("")
    v = report["variants"]
    L.append("## Rewrites of real MATH references")
    L.append("")
    L.append(f"Every one of the {v['n_references']} MATH test references, rewritten into an equivalent form or a near "
             f"miss where its shape allows ({v['n_pairs']} pairs; completion `The final answer is $\\boxed{{...}}$.`).")
    L.append("")
    L.append("'same answer?' is by construction; three 4-decimal roundings are in fact the value rounded to 6 places "
             "(`0.2902` for `1904/6561`), which both checkers accept.")
    L.append("")
    L.append("| rewrite | same answer? | n | old right | new right |")
    L.append("| --- | --- | --- | --- | --- |")
    for kind, k in sorted(v["kinds"].items()):
        L.append(f"| {kind.split(': ', 1)[1]} | {k['correct']} | {k['n']} | {k['old_right']} | {k['new_right']} |")
    L.append("")
    r = v["right"]
    L.append(f"{len(v['disagreements'])} disagreements: new right {r['new']}, old right {r['old']}, debatable "
             f"{r['debatable']}, unreviewed {r['unreviewed']} (all listed in checker_compare.json). ms per pair: "
             f"old {v['ms_per_pair']['old']}, new {v['ms_per_pair']['new_boxed']}.")
    L.append("")
    seen = set()
    L.append("| rewrite | answer | reference | old | new | right | why |")
    L.append("| --- | --- | --- | --- | --- | --- | --- |")
    for d in v["disagreements"]:  # one example per (kind, verdict)
        if (d["kind"], d["verdict"]) in seen:
            continue
        seen.add((d["kind"], d["verdict"]))
        n = sum(1 for e in v["disagreements"] if (e["kind"], e["verdict"]) == (d["kind"], d["verdict"]))
        L.append(f"| {d['kind']} (x{n}) | `{d['answer']}` | `{d['reference']}` | {d['old']} | {d['new']} | "
                 f"{d['verdict']} | {d['reason']} |")
    L.append("")
    L.append("## Handcrafted hard cases")
    L.append("")
    L.append("| completion | reference | correct | old | new boxed | new any |")
    L.append("| --- | --- | --- | --- | --- | --- |")
    for h in report["hard_cases"]:
        c = h["completion"].replace("\n", " ").replace("|", "\\|")
        ref = h["reference"].replace("|", "\\|")
        truth = str(h["correct"]) + ("" if h["correct_any"] == h["correct"] else f" (any: {h['correct_any']})")
        L.append(f"| `{c}` | `{ref}` | {truth} | "
                 f"{'✓' if h['old'] == h['correct'] else '✗'} | {'✓' if h['new_boxed'] == h['correct'] else '✗'} | "
                 f"{'✓' if h['new_any'] == h['correct_any'] else '✗'} |")
    hs = report["hard_cases_right"]
    L.append("")
    L.append(f"Right on the hard cases: old {hs['old']}, new boxed {hs['new_boxed']}, new any {hs['new_any']} "
             f"of {len(report['hard_cases'])}.")
    path.write_text("\n".join(L) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=Path, help="judge these saved pairs instead of generating")
    ap.add_argument("-n", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    pairs_path = RESULTS / "checker_pairs.jsonl"
    if args.pairs:
        lines = args.pairs.read_text().splitlines()
        meta, pairs = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    else:
        problems = sample_problems(args.n, args.seed)
        pairs, meta = generate_pairs(problems, args.max_new_tokens, args.batch, args.seed)
        meta["seed"] = args.seed
        pairs_path.write_text("\n".join(json.dumps(x) for x in [meta, *pairs]) + "\n")
        print(f"generated {len(pairs)} completions in {meta['generation_s']} s -> {pairs_path}", file=sys.stderr)
    import torch

    torch.set_num_threads(1)
    report = {"machine": f"{machine()}, shared with another benchmark", "seed": meta.get("seed"), "generation": meta,
              **compare(pairs)}
    report["variants"] = variant_study()
    report["hard_cases"] = hard_cases()
    report["hard_cases_right"] = {k: sum(h[k] == h["correct_any" if k == "new_any" else "correct"]
                                         for h in report["hard_cases"]) for k in ("old", "new_boxed", "new_any")}
    write_json(RESULTS / "checker_compare.json", report, ensure_ascii=False)
    write_md(report, RESULTS / "checker_compare.md")
    summary = {k: report[k] for k in ("n_pairs", "accuracy", "ms_per_pair", "hard_cases_right")}
    summary["variants_right"] = {w: sum(k[w] for k in report["variants"]["kinds"].values())
                                 for w in ("n", "old_right", "new_right")}
    summary.update({f"{k}_disagreements": report[k]["old_true_new_false"] + report[k]["old_false_new_true"]
                    for k in ("new_boxed", "new_any")})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
