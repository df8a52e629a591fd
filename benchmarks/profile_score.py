"""Profile `anglerank score` on the CPU: where the time goes, against the bf16 matmul peak.

Runs the real scoring engine (``Scorer.score_records``: length-bucketed batches under
the default batch budget, shared-prefix cache on, forward stopped after the hooked
site) on GSM8K or MATH prompts in the dtype ``--dtype auto`` picks (bf16 on CPUs with
AVX512-BF16 or AMX), unprofiled before and after one run under ``torch.profiler``, and splits the
profiled self CPU time into:

- linear: the projection matmuls (aten::linear/matmul/mm/addmm/bmm and oneDNN kernels);
- attention: ``scaled_dot_product_attention`` and the kernels under it;
- elementwise: everything else inside the forward, itself split into the attention
  glue transformers adds around SDPA (causal/padding mask, GQA ``repeat_kv``, the
  key/value cache concatenation, RoPE) and norms/activations/residual adds/embedding;
- anglerank: our own work outside the model (batch tensors, prefix concat, hooks'
  captures, angle math, result rows), and rendering + tokenising the prompts;
- framework overhead: wall time in no op (Python in nn.Module/transformers/our loop).

Labels come from ``record_function`` wrappers this script installs around the engine's
and transformers' functions for the profiled run only (nothing in the package changes).

FLOPs are counted analytically from each forward's shapes (batch B, new tokens T
including padding, cached prefix P): per run layer, linear = 2 B T (D*Hq*dh + 2 D*Hkv*dh
+ Hq*dh*D + 3 D I), attention = 4 B Hq T (P + T) dh (QK^T and AV over the whole
rectangle, which is what SDPA computes with an explicit mask); the deepest hooked
layer at ``mlp-input`` runs its attention but not its MLP. The linear count is checked
against the profiler's own count from the recorded matmul shapes (``with_flops``).

The peak is the best of several large square bf16 matmuls on the same thread count;
the same is measured for the forward's own linear shapes in isolation.

Usage: python benchmarks/profile_score.py [--n 384] [--data ../shared/data/gsm8k_test.parquet]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch.autograd.profiler import record_function

from anglerank.data.reader import ParquetSource
from anglerank.model import hooks, loading
from anglerank.model.device import cpu_description, cpu_flags, resolve_dtype
from anglerank.scoring.engine import ScoreOptions, build_scorer
from common import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

LINEAR_OPS = {"aten::linear", "aten::matmul", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
              "aten::_mkldnn_linear", "aten::mkldnn_linear", "mkldnn::_linear_pointwise"}
CATEGORIES = ("linear", "attention (SDPA)", "elementwise: attention glue", "elementwise: norm/act/other",
              "anglerank: batching, hooks, angles, rows", "anglerank: render + tokenize", "framework overhead")
# label -> category of the Python time spent directly in it (not in an op)
LABEL_SELF = {"anglerank::angles": CATEGORIES[4], "anglerank::rows": CATEGORIES[4],
              "anglerank::forward_hidden": CATEGORIES[4], "anglerank::render": CATEGORIES[5]}
GLUE_LABELS = ("hf::mask", "hf::sdpa_wrapper", "hf::kv_cache", "hf::rope")


# --- machine and peak -------------------------------------------------------------------------

def machine_info() -> dict:
    flags = cpu_flags()
    return {"cpu": cpu_description(), "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else [None] * 3}


def best_flops(fn, flops: float, repeats: int, min_s: float = 0.05) -> float:
    """Best FLOP/s over ``repeats`` timings of ``fn`` (each looped until it lasts ``min_s``)."""
    fn()  # warm-up (oneDNN primitive creation)
    best = 0.0
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_s:
                break
        best = max(best, n * flops / dt)
    return best


@torch.inference_mode()
def matmul_peak(dtype: torch.dtype, sizes=(1024, 2048, 3072), repeats: int = 5) -> dict:
    """Best FLOP/s of square ``N x N @ N x N`` matmuls (the machine's practical peak)."""
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        out[str(n)] = best_flops(lambda: torch.mm(a, b), 2.0 * n ** 3, repeats)
    return {"by_size": out, "peak": max(out.values())}


@torch.inference_mode()
def linear_shapes_isolated(model, dtype: torch.dtype, rows: int, repeats: int = 5) -> dict:
    """FLOP/s of one decoder layer's projections on ``rows`` tokens, each run alone."""
    layer = hooks.decoder_layers(model)[0]
    out = {}
    for name, mod in layer.named_modules():
        if isinstance(mod, torch.nn.Linear):
            x = torch.randn(rows, mod.in_features, dtype=dtype)
            out[name] = best_flops(lambda: mod(x), 2.0 * rows * mod.in_features * mod.out_features, repeats)
    flops = {n: 2.0 * rows * m.in_features * m.out_features for n, m in layer.named_modules()
             if isinstance(m, torch.nn.Linear)}
    total_s = sum(flops[n] / out[n] for n in out)
    return {"rows": rows, "by_module": out, "combined": sum(flops.values()) / total_s}


# --- FLOPs ------------------------------------------------------------------------------------

def forward_flops(cfg, n_full: int, n_attn_only: int, B: int, T: int, P: int) -> dict:
    """Analytic FLOPs of one stopped forward (see the module docstring)."""
    D, I = cfg.hidden_size, cfg.intermediate_size
    Hq = cfg.num_attention_heads
    Hkv = getattr(cfg, "num_key_value_heads", None) or Hq
    dh = getattr(cfg, "head_dim", None) or D // Hq
    attn_proj = D * Hq * dh + 2 * D * Hkv * dh + Hq * dh * D
    mlp = 3 * D * I
    layers = n_full + n_attn_only
    linear = 2.0 * B * T * (layers * attn_proj + n_full * mlp)
    attention = 4.0 * B * Hq * T * (P + T) * dh * layers
    return {"linear": linear, "attention": attention}


def layers_run(scorer) -> tuple[int, int]:
    """(layers run whole, layers whose attention runs but not their MLP) for the scorer's stop."""
    deepest = max(scorer.layer_idx)
    if scorer.opt.site == "mlp-input":
        return deepest, 1
    return deepest + 1, 0


# --- instrumentation --------------------------------------------------------------------------

@contextmanager
def patched(obj, name: str, label: str, on_call=None):
    """Replace ``obj.name`` (module, class or instance) by a wrapper under ``record_function(label)``."""
    orig = getattr(obj, name)  # bound when obj is an instance
    saved = vars(obj).get(name, None)
    had = name in vars(obj)

    def wrapper(*args, **kwargs):
        if on_call:
            on_call(*args, **kwargs)
        with record_function(label):
            return orig(*args, **kwargs)

    setattr(obj, name, wrapper)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, saved)
        else:
            delattr(obj, name)  # the instance attribute shadowing the class's method


@contextmanager
def instrumented(scorer, shapes: list):
    """Label the engine's and transformers' parts; record each forward's (B, T, P) into ``shapes``."""
    import importlib

    from transformers import cache_utils
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    modeling = importlib.import_module(type(scorer.model).__module__)

    def note_shape(model, input_ids, attention_mask, cache=None):
        P = cache.get_seq_length() if cache is not None else 0
        shapes.append((int(input_ids.shape[0]), int(input_ids.shape[1]), int(P)))

    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    with ExitStack() as stack:
        stack.enter_context(patched(hooks, "run_until_captured", "anglerank::forward", note_shape))
        for meth, label in (("_terms", "anglerank::angles"), ("_row", "anglerank::rows"),
                            ("_render", "anglerank::render"), ("forward_hidden", "anglerank::forward_hidden"),
                            ("_forward_new", "anglerank::forward_hidden")):
            if hasattr(scorer, meth):
                stack.enter_context(patched(scorer, meth, label))
        for fn, label in (("create_causal_mask", "hf::mask"), ("apply_rotary_pos_emb", "hf::rope")):
            if hasattr(modeling, fn):
                stack.enter_context(patched(modeling, fn, label))
        stack.enter_context(patched(cache_utils.DynamicCache, "update", "hf::kv_cache"))

        def sdpa_labelled(*a, **k):
            with record_function("hf::sdpa_wrapper"):
                return sdpa(*a, **k)

        ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa_labelled
        stack.callback(ALL_ATTENTION_FUNCTIONS.__setitem__, "sdpa", sdpa)
        yield


def _labels(e) -> list[str]:
    out = []
    while e is not None:
        if e.name.startswith(("anglerank::", "hf::")):
            out.append(e.name)
        e = e.cpu_parent
    return out


def op_category(e) -> str:
    """The category of an op's self time, from its name and the labels above it."""
    labels = _labels(e.cpu_parent)
    if any(x in ("anglerank::angles", "anglerank::rows") for x in labels):
        return CATEGORIES[4]
    if "anglerank::render" in labels:
        return CATEGORIES[5]
    if e.name in LINEAR_OPS:
        return CATEGORIES[0]
    if "scaled_dot_product" in e.name or "flash_attention" in e.name or any(
            "scaled_dot_product" in p.name for p in _ancestors(e)):
        return CATEGORIES[1]
    if any(x in GLUE_LABELS for x in labels):
        return CATEGORIES[2]
    if "anglerank::forward" in labels:
        return CATEGORIES[3]
    return CATEGORIES[4] if "anglerank::forward_hidden" in labels else CATEGORIES[6]


def _ancestors(e):
    e = e.cpu_parent
    while e is not None:
        yield e
        e = e.cpu_parent


def split_profile(prof, wall_s: float) -> tuple[dict, dict, dict]:
    """Seconds per category, seconds per op name within each category, and profiler FLOPs by op."""
    secs = dict.fromkeys(CATEGORIES, 0.0)
    by_op: dict[str, dict[str, float]] = {c: {} for c in CATEGORIES}
    flops: dict[str, float] = {}
    covered = 0.0
    for e in prof.events():
        self_s = e.self_cpu_time_total / 1e6
        if e.cpu_parent is None:
            covered += e.cpu_time_total / 1e6
        if e.name.startswith(("anglerank::", "hf::")):
            cat = LABEL_SELF.get(e.name, CATEGORIES[6])  # Python directly in the labelled function
        else:
            cat = op_category(e)
            if getattr(e, "flops", 0):
                flops[e.name] = flops.get(e.name, 0.0) + e.flops
        secs[cat] += self_s
        by_op[cat][e.name] = by_op[cat].get(e.name, 0.0) + self_s
    secs[CATEGORIES[6]] += max(0.0, wall_s - covered)  # Python time outside every profiled event
    by_op[CATEGORIES[6]]["(outside any event)"] = max(0.0, wall_s - covered)
    return secs, by_op, flops


# --- the run ----------------------------------------------------------------------------------

def windows(records: list, size: int) -> list[list]:
    """The read-ahead windows a scoring run forms (rows bucketed together)."""
    return [records[i:i + size] for i in range(0, len(records), size)]


def score_all(scorer, wins) -> tuple[float, float, list]:
    """Score every window; (wall s, s inside forwards, scores) -- the engine as `anglerank score` runs it."""
    fwd_s = [0.0]
    orig = hooks.run_until_captured

    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            fwd_s[0] += time.perf_counter() - t0

    hooks.run_until_captured = timed
    try:
        t0 = time.perf_counter()
        rows = [r for w in wins for r in scorer.score_records(w)]
        wall = time.perf_counter() - t0
    finally:
        hooks.run_until_captured = orig
    return wall, fwd_s[0], [r["score"] for r in rows]


def profile_run(scorer, wins) -> tuple[float, list, object]:
    """Score under torch.profiler with labels; (wall s, forward shapes, profiler)."""
    from torch.profiler import ProfilerActivity, profile

    shapes: list = []
    with instrumented(scorer, shapes), profile(activities=[ProfilerActivity.CPU], record_shapes=True,
                                               with_flops=True) as prof:
        t0 = time.perf_counter()
        for w in wins:
            scorer.score_records(w)
        wall = time.perf_counter() - t0
    return wall, shapes, prof


def gflops(x: float) -> float:
    return round(x / 1e9, 2)


def summarise(args, scorer, plain, prof_out, peak, iso) -> dict:
    """Everything the JSON holds: time split, FLOPs, achieved and peak FLOP/s."""
    wall, fwd_s, _, walls = plain
    prof_wall, shapes, prof = prof_out
    secs, by_op, prof_flops = split_profile(prof, prof_wall)
    n_full, n_attn = layers_run(scorer)
    cfg = scorer.model.config
    fl = {"linear": 0.0, "attention": 0.0}
    for B, T, P in shapes:
        for k, v in forward_flops(cfg, n_full, n_attn, B, T, P).items():
            fl[k] += v
    total = fl["linear"] + fl["attention"]
    lin_s, att_s = secs[CATEGORIES[0]], secs[CATEGORIES[1]]
    prof_mm = sum(v for k, v in prof_flops.items() if k in LINEAR_OPS)
    n_tokens = sum(B * T for B, T, _ in shapes)
    return {
        "n_prompts": args.n, "window_rows": args.window, "data": args.data.name, "preset": args.preset,
        "dtype": str(next(scorer.model.parameters()).dtype).removeprefix("torch."),
        "batch_tokens": scorer.opt.batch_tokens, "prefix_cache": scorer.use_prefix_cache,
        "forwards": len(shapes), "tokens_run_incl_padding": n_tokens,
        "prefix_tokens_cached": sum(P for _, _, P in shapes if P) // max(1, sum(1 for s in shapes if s[2])),
        "unprofiled": {"wall_s": round(wall, 3), "forward_s": round(fwd_s, 3), "wall_s_each": [round(w, 3) for w in walls],
                       "prompts_per_s": round(args.n / wall, 2)},
        "profiled_wall_s": round(prof_wall, 3),
        "split_s": {k: round(v, 3) for k, v in secs.items()},
        "split_pct": {k: round(100 * v / prof_wall, 1) for k, v in secs.items()},
        "top_ops": {c: {k: round(v, 3) for k, v in sorted(d.items(), key=lambda x: -x[1])[:8]}
                    for c, d in by_op.items()},
        "flops": {"linear": fl["linear"], "attention": fl["attention"],
                  "linear_by_profiler": prof_mm,
                  "how": "analytic from each forward's (B, T incl. padding, cached prefix P); see docstring"},
        "gflop_s": {
            "peak_bf16_square_matmul": gflops(peak["peak"]),
            "peak_by_size": {k: gflops(v) for k, v in peak["by_size"].items()},
            "linear_shapes_in_isolation": gflops(iso["combined"]),
            "linear_in_forward": gflops(fl["linear"] / lin_s) if lin_s else None,
            "attention_sdpa_in_forward": gflops(fl["attention"] / att_s) if att_s else None,
            # the profiled share applied to unprofiled forward time: removes most profiler overhead,
            # assuming it inflates every category alike (an estimate, not a measurement)
            "linear_in_forward_share_scaled": gflops(fl["linear"] / (lin_s / prof_wall * fwd_s)) if lin_s else None,
            "attention_sdpa_share_scaled": gflops(fl["attention"] / (att_s / prof_wall * fwd_s)) if att_s else None,
            "whole_forward": gflops(total / fwd_s),
            "whole_scoring": gflops(total / wall),
        },
        "isolated_linear_rows": iso["rows"],
    }


# --- outputs ----------------------------------------------------------------------------------

def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = res["gflop_s"]
    names = ["linear shapes\nin isolation", "linear layers\nin the forward", "attention\n(SDPA)",
             "whole stopped\nforward", "whole scoring\n(wall)"]
    vals = [g["linear_shapes_in_isolation"], g["linear_in_forward"] or 0, g["attention_sdpa_in_forward"] or 0,
            g["whole_forward"], g["whole_scoring"]]
    peak = g["peak_bf16_square_matmul"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    bars = ax.bar(names, vals, color=["#999", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"])
    ax.axhline(peak, color="k", ls="--", lw=1)
    ax.text(len(vals) - 0.55, peak, f"measured bf16 matmul peak: {peak:.0f} GFLOP/s", ha="right", va="bottom",
            fontsize=9)
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.0f}\n({100 * v / peak:.0f}%)", ha="center", va="bottom")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_ylim(0, max(vals + [peak]) * 1.3)
    m = res["machine"]
    ax.set_title(f"{m['cpu']}, {m['threads']} thread(s), {res['dtype']}, load average {m['load_avg_at_start'][0]}", fontsize=9)
    pct = res["split_pct"]
    left = 0.0
    colors = ["#1f77b4", "#ff7f0e", "#ffbb78", "#d62728", "#2ca02c", "#98df8a", "#7f7f7f"]
    for (k, v), c in zip(pct.items(), colors):
        ax2.barh([0.85], [v], left=left, height=0.2, color=c, label=f"{k} {v:.0f}%")
        left += v
    ax2.set_xlim(0, 100)
    ax2.set_ylim(0, 1)
    ax2.set_yticks([])
    ax2.set_xlabel("% of profiled wall time")
    ax2.legend(loc="lower center", fontsize=8, ncol=1, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(res: dict) -> str:
    m, g, s, p = res["machine"], res["gflop_s"], res["split_s"], res["split_pct"]
    peak = g["peak_bf16_square_matmul"]
    lines = [
        f"Machine: {m['cpu']} ({'AMX' if m['amx_bf16'] else 'no AMX'}, "
        f"{'AVX512-BF16' if m['avx512_bf16'] else 'no AVX512-BF16'}), {m['threads']} threads, torch {m['torch']}; "
        f"load average at start {m['load_avg_at_start'][0]}. {res['n_prompts']} "
        f"{res['data']} prompts, preset {res['preset']}, {res['dtype']}, batch budget {res['batch_tokens']} "
        f"tokens, prefix cache on ({res['prefix_tokens_cached']} cached tokens), {res['forwards']} forwards.",
        "",
        "| where the time goes | seconds | % of profiled wall |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {s[k]:.2f} | {p[k]:.1f} |" for k in s]
    load, cores = m["load_avg_at_start"][0], os.cpu_count() or 1
    if load is not None and load > 0.5 * cores:
        lines.insert(1, f"\nThe machine was loaded (load average {load:.1f} on {cores} cores) while this ran: "
                        "absolute times and FLOP/s are low and noisy; read the shares and ratios.")
    lines += [f"| total (profiled) | {res['profiled_wall_s']:.2f} | 100 |", "",
              f"Unprofiled (mean of a run before and after the profiled one): {res['unprofiled']['wall_s']:.2f} s "
              f"wall, {res['unprofiled']['forward_s']:.2f} s in forwards ({res['unprofiled']['prompts_per_s']} "
              f"prompts/s). The profiled run took {res['profiled_wall_s'] / res['unprofiled']['wall_s']:.2f}x as "
              "long (profiler overhead and load changes), so the per-category FLOP/s below that divide by "
              "profiled op times are lower bounds; the share-scaled rows estimate them from unprofiled time, and "
              "the whole-forward and whole-scoring rows use unprofiled time.",
              "",
              "| achieved | GFLOP/s | % of peak |", "|---|---|---|",
              f"| bf16 matmul peak (best square matmul) | {peak:.0f} | 100 |"]
    for key, label in (("linear_shapes_in_isolation", f"linear shapes in isolation ({res['isolated_linear_rows']} rows)"),
                       ("linear_in_forward", "linear layers in the forward"),
                       ("linear_in_forward_share_scaled", "linear layers, profiled share x unprofiled forward time"),
                       ("attention_sdpa_in_forward", "attention (SDPA kernel)"),
                       ("attention_sdpa_share_scaled", "attention, profiled share x unprofiled forward time"),
                       ("whole_forward", "whole stopped forward"), ("whole_scoring", "whole scoring (wall)")):
        v = g[key] or 0
        lines.append(f"| {label} | {v:.0f} | {100 * v / peak:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Writes OUT.json, OUT.md and OUT.png; takes about 2 minutes on 2 cores.")
    ap.add_argument("--n", type=int, default=384, help="number of prompts (default 384)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "gsm8k_test.parquet",
                    help="Parquet prompts, verl layout (default: GSM8K test)")
    ap.add_argument("--preset", default="gainrl", help="prompt preset (default gainrl: few-shot turns, a long shared prefix)")
    ap.add_argument("--window", type=int, default=256,
                    help="rows bucketed together (the read-ahead window of a run over >= 1024 rows)")
    ap.add_argument("--out", type=Path, default=RESULTS / "profile_score", help="output path without suffix")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads (default: torch's, one per core); 1 avoids OpenMP barrier stalls "
                         "when other jobs share the cores")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    machine = machine_info()
    opt = ScoreOptions(preset=args.preset, device="cpu")  # dtype auto, default batch budget, cache on
    dtype = resolve_dtype("auto", "cpu")  # what `anglerank score` uses here: bf16 with AVX512-BF16/AMX
    scorer = build_scorer(opt, loading.load(None, "cpu", dtype))[0]
    records = list(ParquetSource([str(args.data)]).iter_records(stop_row=args.n))
    args.n = len(records)
    wins = windows(records, args.window)
    scorer.score_records(records[:32])  # warm-up: oneDNN primitives, allocator
    print(f"[{time.perf_counter() - t_start:.0f}s] scoring {args.n} prompts unprofiled", file=sys.stderr)
    plain = score_all(scorer, wins)
    print(f"[{time.perf_counter() - t_start:.0f}s] profiled run", file=sys.stderr)
    prof_out = profile_run(scorer, wins)
    print(f"[{time.perf_counter() - t_start:.0f}s] unprofiled again (load drifts: the mean of both is used)",
          file=sys.stderr)
    again = score_all(scorer, wins)
    assert again[2] == plain[2], "scores changed between two runs of the same batches"
    plain = ((plain[0] + again[0]) / 2, (plain[1] + again[1]) / 2, plain[2], (plain[0], again[0]))
    print(f"[{time.perf_counter() - t_start:.0f}s] matmul peak", file=sys.stderr)
    tdtype = getattr(torch, dtype)
    peak = matmul_peak(tdtype)
    rows = int(sorted(B * T for B, T, _ in prof_out[1])[len(prof_out[1]) // 2])  # the median batch's tokens
    iso = linear_shapes_isolated(scorer.model, tdtype, rows)
    res = {"machine": machine, **summarise(args, scorer, plain, prof_out, peak, iso)}
    res["script_s"] = round(time.perf_counter() - t_start, 1)
    write_json(args.out.with_suffix(".json"), res, indent=2)
    args.out.with_suffix(".md").write_text(markdown(res))
    plot(res, args.out.with_suffix(".png"))
    print(markdown(res))


if __name__ == "__main__":
    main()
