"""The README's science numbers: does the angle score mean anything for the embedded model?

Stages (each writes benchmarks/results/science_<stage>.json, so they can run as
separate, niced processes and be rerun one at a time; `report` merges them into
science.json and the markdown table science.md):

- lengths:         the gainrl preset on N seeded prompts of GSM8K and MATH (train
                   splits), all 30 layers hooked in one forward pass. Spearman of the
                   `paper` and `gainrl-code` scores (and their terms) with question
                   length and total token count; the authors' ordering (descending
                   sort, NaN first) against token count; stability across layers
                   (Spearman of the last layer's score with other layers').
- validate-gsm8k:  `anglerank validate` (library call) on GSM8K with the reference
                   solution (extra_info.answer) as target; gradient norms w.r.t. the
                   hooked MLP's input projections at several layers and all weights.
                   The gainrl-code score of the same prompts is correlated too.
- validate-math:   the same on MATH, target = the model's own greedy completion
                   (MATH rows carry no worked solution).
- passrate-gsm8k:  pass rates from G sampled completions on a few GSM8K prompts.

Usage:  nice -n 10 .venv/bin/python benchmarks/science.py --stage all
        .venv/bin/python benchmarks/science.py --stage report
Ends stdout with one JSON line (the summary).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from anglerank import angles
from anglerank.angles import spearman
from anglerank.correlation import correlations, partial_spearman
from anglerank.data.reader import ParquetSource
from anglerank.model import loading
from anglerank.model.render import Renderer
from anglerank.scoring.engine import ScoreOptions, Scorer, make_batches
from anglerank.validate import ValidateOptions, run_validate, sample_rows
from common import write_json

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
DATASETS = {"gsm8k": DATA / "gsm8k_train.parquet", "math": DATA / "math_train.parquet"}
STAGES = ("lengths", "validate-gsm8k", "validate-math", "passrate-gsm8k")
STABILITY_LAYERS = (0, 5, 10, 15, 20, 25, 27, 28)
GRAD_LAYERS = [5, 15, 25, 29]


def _num(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def _rho(x, y):
    return _num(spearman(np.asarray([np.nan if v is None else v for v in x], float),
                         np.asarray([np.nan if v is None else v for v in y], float)))


def _write(name: str, obj: dict) -> Path:
    return write_json(RESULTS / f"science_{name}.json", obj, allow_nan=False)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- stage: lengths + layer stability -----------------------------------------------------

def authors_order_position(scores: list[float | None]) -> list[int]:
    """Position in the authors' ordering: descending sort with NaN first (torch.argsort)."""
    order = sorted(range(len(scores)), key=lambda i: (0, i) if scores[i] is None else (1, -scores[i], i))
    pos = [0] * len(scores)
    for p, i in enumerate(order):
        pos[i] = p
    return pos


def stage_lengths(loaded, n: int, seed: int) -> dict:
    out = {"n": n, "seed": seed, "preset": "gainrl", "site": "mlp-input", "datasets": {}}
    for name, path in DATASETS.items():
        t0 = time.perf_counter()
        source = ParquetSource(path)
        rows = set(sample_rows(source.total_rows, n, seed))
        records = [r for r in source.iter_records() if r.row in rows]
        opt = ScoreOptions(preset="gainrl", layers=["all"], dtype="float32", device="cpu", batch_tokens=4096)
        renderer = Renderer(loaded.tokenizer, "gainrl", None, None, opt.max_length)
        scorer = Scorer(loaded.model, loaded.tokenizer, renderer, opt, "cpu")
        layers = scorer.layer_idx
        rendered = [renderer.render(r.question, r.history) for r in records]
        vals = {est: {l: {"intra": [None] * len(records), "inter": [None] * len(records)} for l in layers}
                for est in ("paper", "gainrl-code")}
        # one forward pass per batch serves both estimators and all layers
        batches = make_batches([len(r.ids) for r in rendered], opt.batch_tokens)
        for bi, batch in enumerate(batches):
            if bi % 5 == 0:
                _log(f"lengths {name}: batch {bi}/{len(batches)} ({time.perf_counter() - t0:.0f} s)")
            items = [rendered[i] for i in batch]
            hidden = scorer.forward_hidden([r.ids for r in items])
            B, T = len(items), max(len(r.ids) for r in items)
            q_mask = torch.zeros(B, T, dtype=torch.bool)
            p_mask = torch.zeros(B, T, dtype=torch.bool)
            for b, r in enumerate(items):
                p_mask[b, : r.n_prefix] = True
                q_mask[b, r.n_prefix: r.q_end] = True
            for l in layers:
                h = hidden[l]
                terms = {"paper": angles.segment_concentration(h, q_mask, p_mask),
                         "gainrl-code": angles.gainrl_code_terms_batch(h, [len(r.ids) for r in items], 110, 6)}
                for est, (intra, inter) in terms.items():
                    for k, i in enumerate(batch):
                        a, b = float(intra[k]), float(inter[k])
                        vals[est][l]["intra"][i] = None if math.isnan(a) else a
                        vals[est][l]["inter"][i] = None if math.isnan(b) else b
        # cross-check against the scoring engine (the path `anglerank score` takes), last layer, 8 rows
        ref = Scorer(loaded.model, loaded.tokenizer, renderer,
                     ScoreOptions(preset="gainrl", layers=[-1], dtype="float32", device="cpu"), "cpu")
        for d in ref.score_records(records[:8]):
            i = next(k for k, r in enumerate(records) if r.row == d["row"])
            assert abs(d["intra"] - vals["paper"][layers[-1]]["intra"][i]) < 1e-3, "engine mismatch"
        # exact (unrounded) scores for the correlations
        n_q = [r.n_question for r in rendered]
        n_tok = [len(r.ids) for r in rendered]
        ds = {"rows": len(records), "n_question_median": float(np.median(n_q)), "n_tokens_median": float(np.median(n_tok)),
              "n_tokens_min": int(min(n_tok)), "n_tokens_max": int(max(n_tok)), "estimators": {}}
        for est, w_inter in (("paper", 1.0), ("gainrl-code", 8.0)):
            per_layer_score = {}
            for l in layers:
                it, ie = vals[est][l]["intra"], vals[est][l]["inter"]
                per_layer_score[l] = [None if a is None or b is None else a + w_inter * b for a, b in zip(it, ie)]
            last = layers[-1]
            s, it, ie = per_layer_score[last], vals[est][last]["intra"], vals[est][last]["inter"]
            pos = authors_order_position(s)
            e = {
                "w_inter": w_inter,
                "null_scores": sum(v is None for v in s),
                "rho_score_question_len": _rho(s, n_q),
                "rho_score_total_tokens": _rho(s, n_tok),
                "rho_intra_question_len": _rho(it, n_q),
                "rho_inter_question_len": _rho(ie, n_q),
                "rho_inter_total_tokens": _rho(ie, n_tok),
                "stability_inter_vs_last_layer": {str(l): _rho(ie, vals[est][l]["inter"]) for l in layers},
                # all-null scores leave only the tie order (row order): nothing to measure
                "rho_authors_order_position_total_tokens": _rho(pos, n_tok) if any(v is not None for v in s) else None,
                "stability_vs_last_layer": {str(l): _rho(s, per_layer_score[l]) for l in layers},
                "rho_score_question_len_by_layer": {str(l): _rho(per_layer_score[l], n_q) for l in layers},
            }
            ds["estimators"][est] = e
        ds["per_sample"] = [{"row": r.row, "n_question": q, "n_tokens": t,
                             **{f"{est}_score_L{l}": (None if vals[est][l]["intra"][i] is None or vals[est][l]["inter"][i] is None
                                                      else round(vals[est][l]["intra"][i] + (8.0 if est != "paper" else 1.0)
                                                                 * vals[est][l]["inter"][i], 6))
                                for est in ("paper", "gainrl-code") for l in (layers[-1],)}}
                            for i, (r, q, t) in enumerate(zip(records, n_q, n_tok))]
        ds["elapsed_s"] = round(time.perf_counter() - t0, 1)
        out["datasets"][name] = ds
        _log(f"lengths {name}: {ds['elapsed_s']} s")
    return out


# --- stages: validate ------------------------------------------------------------------------

def _code_correlations(loaded, report: dict, path) -> list[dict]:
    """Correlations of the gainrl-code score of the same sampled prompts with validate's measurements."""
    source = ParquetSource(path)
    rows = {r["row"] for r in report["per_sample"]}
    records = [r for r in source.iter_records() if r.row in rows]
    opt = ScoreOptions(preset="gainrl", layers=report["layers"], estimator="gainrl-code", dtype="float32", device="cpu")
    scorer = Scorer(loaded.model, loaded.tokenizer, Renderer(loaded.tokenizer, "gainrl"), opt, "cpu")
    code = {(d["row"], d["layer"]): d for d in scorer.score_records(records)}
    ps = [{**r, **{k: code[(r["row"], r["layer"])][k] for k in ("intra", "inter", "score")}} for r in report["per_sample"]]
    return correlations(ps, report["layers"])


def stage_validate(loaded, dataset: str, n: int, seed: int, target_column: str | None, max_new_tokens: int,
                   rollouts: int = 0, answer_column: str | None = None, layers=None) -> dict:
    path = DATASETS[dataset]
    last = {"stage": None, "t": time.perf_counter()}

    def progress(stage, done, total):
        if stage != last["stage"] or done == total or done % 16 == 0:
            _log(f"{dataset} {stage} {done}/{total} ({time.perf_counter() - last['t']:.0f} s)")
            last["stage"] = stage

    sopt = ScoreOptions(preset="gainrl", layers=layers or GRAD_LAYERS, dtype="float32", device="cpu")
    vopt = ValidateOptions(samples=n, seed=seed, target_column=target_column, max_new_tokens=max_new_tokens,
                           rollouts=rollouts, answer_column=answer_column)
    report = run_validate(path, score_options=sopt, options=vopt, loaded=loaded, progress=progress)
    report["correlations_gainrl_code"] = _code_correlations(loaded, report, path)
    return report


# --- report ------------------------------------------------------------------------------------

def _f(x) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def _c(report: dict, x: str, y: str, layer: int | None = None, key: str = "correlations") -> dict:
    layer = max(report["layers"]) if layer is None else layer
    return next((c for c in report.get(key, []) if c["layer"] == layer and c["x"] == x and c["y"] == y), {})


def _cell(c: dict) -> str:
    if not c or c.get("spearman") is None:
        return "n/a"
    s = _f(c["spearman"])
    if c.get("partial_spearman") is not None:
        s += f" ({_f(c['partial_spearman'])})"
    return s


def build_report() -> tuple[dict, str]:
    parts = {}
    for st in STAGES:
        p = RESULTS / f"science_{st}.json"
        if p.exists():
            parts[st] = json.loads(p.read_text())
    md = ["<!-- generated by benchmarks/science.py --stage report; do not edit by hand -->", ""]
    model = "embedded SmolLM2-135M-Instruct (float32, CPU)"
    if "lengths" in parts:
        L = parts["lengths"]
        md += [f"**Score vs. length** ({model}, `--preset gainrl`, `mlp-input` site, last layer; "
               f"{L['n']} seeded prompts per train split; Spearman ρ)", "",
               "| dataset | estimator | null scores | ρ(score, question tokens) | ρ(score, total tokens) "
               "| ρ(intra, question tokens) | ρ(inter, question tokens) | ρ(inter, total tokens) "
               "| ρ(authors' order position, total tokens) |",
               "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for ds, d in L["datasets"].items():
            for est, e in d["estimators"].items():
                md.append(f"| {ds} (total tokens: median {d['n_tokens_median']:.0f}, range {d['n_tokens_min']}-{d['n_tokens_max']}) "
                          f"| `{est}` | {e['null_scores']}/{d['rows']} | {_f(e['rho_score_question_len'])} | "
                          f"{_f(e['rho_score_total_tokens'])} | {_f(e['rho_intra_question_len'])} | "
                          f"{_f(e['rho_inter_question_len'])} | {_f(e.get('rho_inter_total_tokens'))} | "
                          f"{_f(None if e['null_scores'] == d['rows'] else e['rho_authors_order_position_total_tokens'])} |")
        md += ["", "Authors' order position: the score sorted descending with null (NaN) scores first, as the "
               "released script's `torch.argsort(descending=True)` does (null scores kept in row order among "
               "themselves); position 0 comes first, so a positive ρ with total tokens means shorter prompts first. "
               "Null `gainrl-code` scores: the hard-coded 110-token prefix and 6-token suffix leave no intra rows "
               "for prompts of 232 tokens or fewer (docs/method.md, section \"What the released code does\").", ""]
        md += ["**Stability across layers**: Spearman ρ between the last layer's (29) score and layer k's, same prompts.",
               "", "| dataset | estimator | " + " | ".join(f"k={k}" for k in STABILITY_LAYERS) + " |",
               "| --- | --- | " + " | ".join("---" for _ in STABILITY_LAYERS) + " |"]
        for ds, d in L["datasets"].items():
            for est, e in d["estimators"].items():
                nn = f" ({d['rows'] - e['null_scores']} non-null)" if e["null_scores"] else ""
                md.append(f"| {ds} | `{est}` score{nn} | " + " | ".join(_f(e["stability_vs_last_layer"].get(str(k)))
                                                                     for k in STABILITY_LAYERS) + " |")
                md.append(f"| {ds} | `{est}` inter term | " + " | ".join(
                    _f(e.get("stability_inter_vs_last_layer", {}).get(str(k))) for k in STABILITY_LAYERS) + " |")
        md.append("")
    vals = [(k, parts[k]) for k in ("validate-gsm8k", "validate-math", "passrate-gsm8k") if k in parts]
    if vals:
        md += [f"**`anglerank validate`** ({model}, `--preset gainrl`, `mlp-input`, layer 29). Spearman ρ, in "
               "parentheses the partial ρ with question length (tokens) controlled. ‖∇W‖: gradient norm of the mean "
               "target-token NLL w.r.t. the layer's MLP input projections (gate_proj, up_proj); ‖∇θ‖: w.r.t. all "
               "weights.", "",
               "| run | n | score | ρ with ‖∇W‖ | ρ with ‖∇θ‖ | ρ with pass rate | ρ with target NLL | ρ with question tokens |",
               "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for k, r in vals:
            what = {"validate-gsm8k": "GSM8K, target = reference solution",
                    "validate-math": f"MATH, target = greedy completion (≤{parts['validate-math']['max_new_tokens'] if 'validate-math' in parts else ''} tokens)",
                    "passrate-gsm8k": f"GSM8K, pass rate from G={r.get('rollouts')} samples (T={r.get('temperature')}, ≤{r.get('max_new_tokens')} tokens)"}[k]
            labels = (("correlations", "`paper` score"), ("correlations", "`paper` intra"),
                      ("correlations", "`paper` inter"), ("correlations_gainrl_code", "`gainrl-code` score"),
                      ("correlations_gainrl_code", "`gainrl-code` inter term"), ("correlations", "question tokens"))
            if k == "passrate-gsm8k":
                labels = (labels[0], labels[4], labels[5])
            for key, label in labels:
                x = {"`paper` score": "score", "`paper` intra": "intra", "`paper` inter": "inter",
                     "`gainrl-code` score": "score", "`gainrl-code` inter term": "inter",
                     "question tokens": "n_question"}[label]
                cells = [_cell(_c(r, x, y, key=key)) if y != x else "—"
                         for y in ("grad_a", "grad_b", "pass_rate", "nll", "n_question")]
                n_x = _c(r, x, "grad_b", key=key).get("n", r["n_with_gradients"])
                md.append(f"| {what} | {n_x} | {label} | " + " | ".join(cells) + " |")
            last_rows = [p for p in r["per_sample"] if p["layer"] == max(r["layers"])]
            nt = [p["n_target"] for p in last_rows]
            cells = [_f(_rho(nt, [p[y] for p in last_rows])) if any(p[y] is not None for p in last_rows) else "n/a"
                     for y in ("grad_a", "grad_b", "pass_rate", "nll", "n_question")]
            md.append(f"| {what} | {r['n_with_gradients']} | target tokens | " + " | ".join(cells) + " |")
        md.append("")
        ctl = []
        for k, r in vals:
            rows = [p for p in r["per_sample"] if p["layer"] == max(r["layers"])]
            pr = partial_spearman([p["score"] for p in rows], [p["grad_a"] for p in rows], [p["n_target"] for p in rows])
            pb = partial_spearman([p["score"] for p in rows], [p["grad_b"] for p in rows], [p["n_target"] for p in rows])
            ctl.append(f"{k}: ‖∇W‖ {_f(_num(pr))}, ‖∇θ‖ {_f(_num(pb))}")
        md += ["Partial ρ of the `paper` score with the gradient norms controlling *target* length instead: "
               + "; ".join(ctl) + ".", ""]
        layer_rows = []
        for k, r in vals:
            if k == "passrate-gsm8k":
                continue
            for layer in r["layers"]:
                layer_rows.append(f"| {k.split('-')[1].upper() if k != 'validate-math' else 'MATH'} | {layer} | "
                                  f"{_cell(_c(r, 'score', 'grad_a', layer))} | {_cell(_c(r, 'n_question', 'grad_a', layer))} |")
        if layer_rows:
            md += ["Per hooked layer (`paper` score; ‖∇W‖ of that layer's MLP input projections):", "",
                   "| data | layer | ρ(score, ‖∇W‖) (partial) | ρ(question tokens, ‖∇W‖) |", "| --- | --- | --- | --- |",
                   *layer_rows, ""]
        n_note = ", ".join(f"{k}: n={r['n_with_gradients']}, 95% CI ≈ ±{1.96 * math.sqrt(1.06 / max(1, r['n_with_gradients'] - 3)):.2f}"
                           for k, r in vals)
        md += [f"Sampling noise: {n_note} (Fisher z; per-correlation intervals in science.json).", ""]
        if "passrate-gsm8k" in parts:
            pr = [s["pass_rate"] for s in parts["passrate-gsm8k"]["per_sample"] if s["pass_rate"] is not None
                  and s["layer"] == max(parts["passrate-gsm8k"]["layers"])]
            pk = parts["passrate-gsm8k"]
            md += [f"Pass-rate run ({len(pr)} other seeded GSM8K prompts, G={pk['rollouts']}, T={pk['temperature']}, "
                   f"≤{pk['max_new_tokens']} new tokens, judged by `anglerank.rewards.grading.grade(completion, "
                   f"reward_model.ground_truth, {pk.get('answer_format', 'boxed')!r})`): mean pass rate {np.mean(pr):.3f}; "
                   f"{sum(p > 0 for p in pr)} prompts with at least one correct sample"
                   + (", so every correlation with pass rate is undefined (n/a)." if not any(pr) else "."), ""]
    summary = {"stages": sorted(parts)}
    for k, r in vals:
        summary[k] = {"n": r["n_with_gradients"], "rho_score_grad_a": _c(r, "score", "grad_a").get("spearman"),
                      "rho_score_grad_b": _c(r, "score", "grad_b").get("spearman")}
    if "lengths" in parts:
        for ds, d in parts["lengths"]["datasets"].items():
            for est, e in d["estimators"].items():
                summary[f"{ds}/{est}/rho_score_question_len"] = e["rho_score_question_len"]
    full = {"summary": summary, **{k: v for k, v in parts.items()}}
    return full, "\n".join(md)


def main() -> None:
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", default="all", choices=[*STAGES, "report", "all"])
    ap.add_argument("--n", type=int, default=300, help="prompts per dataset for the lengths stage")
    ap.add_argument("--n-grad", type=int, default=128, help="prompts for validate-gsm8k")
    ap.add_argument("--n-math", type=int, default=64, help="prompts for validate-math (greedy completions)")
    ap.add_argument("--n-pass", type=int, default=32, help="prompts for passrate-gsm8k")
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=RESULTS, help="output folder")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("SCIENCE_THREADS", "1")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS = args.results
    todo = list(STAGES) if args.stage == "all" else ([] if args.stage == "report" else [args.stage])
    loaded = loading.load(None, device="cpu", dtype="float32") if todo else None
    for st in todo:
        t0 = time.perf_counter()
        _log(f"stage {st} ...")
        if st == "lengths":
            res = stage_lengths(loaded, args.n, args.seed)
        elif st == "validate-gsm8k":
            res = stage_validate(loaded, "gsm8k", args.n_grad, args.seed, "extra_info.answer", 256)
        elif st == "validate-math":
            res = stage_validate(loaded, "math", args.n_math, args.seed, None, 128)
        else:
            res = stage_validate(loaded, "gsm8k", args.n_pass, args.seed + 1, "extra_info.answer", 256,
                                 rollouts=args.rollouts, answer_column="reward_model.ground_truth", layers=[-1])
        res["stage_elapsed_s"] = round(time.perf_counter() - t0, 1)
        res["threads"] = args.threads
        _log(f"stage {st} done in {res['stage_elapsed_s']} s -> {_write(st, res)}")
    full, md = build_report()
    write_json(RESULTS / "science.json", full, allow_nan=False)
    (RESULTS / "science.md").write_text(md + "\n")
    print(md, file=sys.stderr)
    print(json.dumps(full["summary"]))


if __name__ == "__main__":
    main()
