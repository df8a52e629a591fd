"""Does the angle signal mean anything for *this* model and data? (`anglerank validate`)

GAIN-RL's argument (METHOD.md section 2) is that prompts whose hidden states are
more concentrated in angle produce larger gradients, so they are learned first. This
module measures that on a seeded sample of a dataset instead of taking it on faith:

1. angle scores (``intra``, ``inter``, ``score``) and token counts, computed by the
   same :class:`anglerank.score.Scorer` as ``anglerank score`` (identical numbers);
2. per-prompt gradient norms of the mean token negative log-likelihood of a target
   completion (a reference-solution column, else the model's own greedy completion)
   with respect to (a) the weight matrices that read the hooked site at each
   requested layer and (b) all parameters; one prompt per backward pass, float32;
3. optionally pass rates from G sampled completions judged by the math checker;
4. Spearman rank correlations of ``score``/``intra``/``inter`` with all of the
   above and with question length, raw and with question length partialled out.

Which weights "read the site" is found from the model's own dataflow, not from a
table of module names: one probe forward records the input tensor of every leaf
module with a 2-D weight, and the readers are the modules whose input *is* the
hooked tensor (mlp-input: the MLP input projections, e.g. Llama ``gate_proj`` and
``up_proj``, GPT-2 ``c_fc``, GPT-NeoX ``dense_h_to_4h``). When no 2-D-weight module
reads the site directly (the residual site: the decoder-layer output is first
normalised), the readers are the 2-D-weight modules fed by a module that does read
it: for layer k < last, the next layer's input-norm-fed projections (Llama q/k/v,
GPT-2 ``c_attn``); for the last layer, the final norm-fed LM head (tied to the input
embeddings in many small models, whose gradient then includes the embedding's).

Partial Spearman: ranks of x, y and the control z (question length in tokens) over the
complete cases, Pearson correlations of the ranks, then the first-order partial
correlation ``(r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))``. The 95% intervals
use Fisher's z with the Spearman variance ``1.06 / (n - 3 - k)`` (Fieller, Hartley and
Pearson 1957; k = number of controls), an approximation good for moderate n.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch

from anglerank import __version__, hooks
from anglerank.angles import rankdata, spearman
from anglerank.data.reader import InputError, ParquetSource, Record
from anglerank.score import ScoreOptions, build_scorer

X_VARS = ("score", "intra", "inter")
Y_VARS = ("grad_a", "grad_b", "pass_rate", "nll", "n_question", "n_tokens")
CONTROL = "n_question"

Progress = Callable[[str, int, int], None]


# --- options ---------------------------------------------------------------------------

@dataclass
class ValidateOptions:
    """What `anglerank validate` measures besides the scoring options."""

    samples: int = 64  # prompts drawn without replacement (all rows if fewer)
    seed: int = 0  # row sample and rollout sampling
    target_column: str | None = None  # reference completion; None: the model's greedy completion
    max_new_tokens: int = 256  # greedy/rollout length; also caps reference targets
    rollouts: int = 0  # G sampled completions per prompt for pass rates (0: none)
    answer_column: str | None = None  # reference final answer for the pass rates
    temperature: float = 0.9  # rollout sampling temperature (the authors' GRPO setting)
    top_p: float = 1.0
    gen_batch: int = 8  # prompts per greedy-generation batch (left-padded)

    def __post_init__(self):
        if self.samples < 1:
            raise ValueError("--samples must be at least 1")
        if self.max_new_tokens < 1:
            raise ValueError("--max-new-tokens must be at least 1")
        if self.rollouts < 0:
            raise ValueError("--rollouts must be >= 0")
        if self.rollouts > 0 and not self.answer_column:
            raise ValueError("--rollouts needs --answer-column (the reference final answer)")
        if self.rollouts == 0 and self.answer_column:
            raise ValueError("--answer-column is only used with --rollouts G (G >= 1)")
        if self.temperature <= 0:
            raise ValueError("--temperature must be positive")
        if not 0 < self.top_p <= 1:
            raise ValueError("--top-p must be in (0, 1]")
        if self.gen_batch < 1:
            raise ValueError("--gen-batch must be at least 1")


# --- statistics --------------------------------------------------------------------------

def _complete(*cols) -> list[np.ndarray]:
    arrs = [np.asarray([np.nan if v is None else v for v in c], dtype=np.float64) for c in cols]
    ok = np.ones(arrs[0].shape, dtype=bool)
    for a in arrs:
        ok &= ~np.isnan(a)
    return [a[ok] for a in arrs]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else math.nan


def partial_spearman(x, y, z) -> float:
    """Spearman correlation of x and y with z partialled out (see the module docstring).

    Triples with any NaN/None are dropped; NaN with fewer than 4 complete triples, a
    constant variable, or |r_xz| or |r_yz| equal to 1.
    """
    xa, ya, za = _complete(x, y, z)
    if xa.size < 4:
        return math.nan
    rx, ry, rz = rankdata(xa), rankdata(ya), rankdata(za)
    rxy, rxz, ryz = _pearson(rx, ry), _pearson(rx, rz), _pearson(ry, rz)
    den = (1.0 - rxz * rxz) * (1.0 - ryz * ryz)
    if any(math.isnan(v) for v in (rxy, rxz, ryz)) or den <= 1e-12:
        return math.nan
    return max(-1.0, min(1.0, (rxy - rxz * ryz) / math.sqrt(den)))


def fisher_ci(r: float, n: int, controls: int = 0) -> list[float] | None:
    """Approximate 95% interval for a (partial) Spearman r from n pairs."""
    dof = n - 3 - controls
    if r is None or math.isnan(r) or dof <= 0:
        return None
    if abs(r) >= 1.0:
        return [r, r]
    z, se = math.atanh(r), math.sqrt(1.06 / dof)
    return [math.tanh(z - 1.96 * se), math.tanh(z + 1.96 * se)]


def _num(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def correlations(per_sample: list[dict], layers: list[int], control: str = CONTROL) -> list[dict]:
    """Spearman (raw and partial on ``control``) of X_VARS (and length) with Y_VARS, per layer.

    Rows of ``per_sample`` are long format (one per sample and layer); y variables that
    are missing for every sample (e.g. pass_rate without --rollouts) are skipped.
    """
    out = []
    for layer in layers:
        rows = [r for r in per_sample if r["layer"] == layer]
        ys = [y for y in Y_VARS if any(r.get(y) is not None for r in rows)]
        for x in (*X_VARS, control):
            for y in ys:
                if y == x or (x == control and y in ("n_tokens",)):
                    continue
                xv, yv, zv = [r[x] for r in rows], [r.get(y) for r in rows], [r[control] for r in rows]
                n = len(_complete(xv, yv)[0])
                rho = spearman(*_complete(xv, yv)) if n else math.nan
                entry = {"layer": layer, "x": x, "y": y, "n": n, "spearman": _num(rho),
                         "ci95": fisher_ci(rho, n)}
                if x != control and y != control:
                    n_p = len(_complete(xv, yv, zv)[0])
                    pr = partial_spearman(xv, yv, zv)
                    entry.update(partial_spearman=_num(pr), partial_n=n_p, partial_ci95=fisher_ci(pr, n_p, 1))
                else:
                    entry.update(partial_spearman=None, partial_n=None, partial_ci95=None)
                out.append(entry)
    return out


# --- data ----------------------------------------------------------------------------

def sample_rows(total: int, samples: int, seed: int) -> list[int]:
    """A seeded sample of row numbers without replacement, in ascending order."""
    if total <= samples:
        return list(range(total))
    rng = np.random.default_rng(seed)
    return sorted(int(r) for r in rng.choice(total, size=samples, replace=False))


def check_column(source: ParquetSource, column: str, what: str, numeric_ok: bool) -> None:
    import pyarrow as pa

    from anglerank.data.reader import field_type

    t = field_type(source.schema, column)
    if t is None:
        names = [f.name for f in source.schema]
        raise InputError(f"{what} column {column!r} not found; top-level columns: {', '.join(names)} "
                         "(use a dotted path such as extra_info.answer for struct fields)")
    ok = pa.types.is_string(t) or pa.types.is_large_string(t)
    if numeric_ok:
        ok = ok or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
    if not ok:
        raise InputError(f"{what} column {column!r} has type {t}; expected a string{' or a number' if numeric_ok else ''}")


def column_values(source: ParquetSource, column: str, rows: list[int]) -> dict[int, Any]:
    """Values of a (dotted) column at the given global row numbers."""
    import pyarrow.parquet as pq

    parts = column.split(".")
    out: dict[int, Any] = {}
    base = 0
    for path, n in zip(source.files, source.rows_per_file):
        local = [r - base for r in rows if base <= r < base + n]
        if local:
            values = pq.read_table(path, columns=[parts[0]]).column(parts[0]).take(local).to_pylist()
            for r, v in zip(local, values):
                for p in parts[1:]:
                    v = v.get(p) if isinstance(v, dict) else None
                out[base + r] = v
        base += n
    return out


def reference_answer(ref: Any) -> str | None:
    """The final answer in a reference: ``\\boxed{}``/``####`` extracted, else the text itself."""
    from anglerank.train.rewards import extract_answer

    if ref is None:
        return None
    ref = str(ref)
    if "\\boxed" in ref or "\\fbox" in ref or "####" in ref:
        return extract_answer(ref)
    return ref.strip() or None


# --- model-side measurements -------------------------------------------------------------------

def _same_tensor(a, b) -> bool:
    if a is b:
        return True
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and a.stride() == b.stride() and a.data_ptr() == b.data_ptr() and a.numel() > 0)


def site_readers(model, layers: list[int], site: str, probe_ids: list[int]) -> dict[int, dict[str, torch.nn.Parameter]]:
    """{layer: {parameter name: weight}} of the 2-D weights that read the hooked site."""
    calls: list[tuple[str, torch.nn.Module, Any, Any]] = []
    handles = []

    def make(name):
        def hook(mod, args, kwargs, out):
            x = args[0] if args else next(iter(kwargs.values()), None)
            calls.append((name, mod, x, out))
        return hook

    for name, mod in model.named_modules():
        if next(mod.children(), None) is None and isinstance(getattr(mod, "weight", None), torch.Tensor):
            handles.append(mod.register_forward_hook(make(name), with_kwargs=True))
    ids = torch.tensor([probe_ids], dtype=torch.long, device=next(model.parameters()).device)
    try:
        with hooks.capture(model, layers, site, stop=False, detach=False) as cap, torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        for h in handles:
            h.remove()

    def is_matrix(mod):
        return mod.weight.ndim == 2 and not isinstance(mod, torch.nn.Embedding)

    out = {}
    for layer in layers:
        s = cap[layer]
        direct = [(n, m) for n, m, x, _ in calls if _same_tensor(x, s) and is_matrix(m)]
        if not direct:
            fed = [o for _, m, x, o in calls if _same_tensor(x, s) and not is_matrix(m)]
            direct = [(n, m) for n, m, x, _ in calls if is_matrix(m) and any(_same_tensor(x, o) for o in fed)]
        if not direct:
            raise hooks.HookError(f"could not find the weight matrices that read the {site} site of layer {layer}")
        readers = {}
        for n, m in direct:
            readers.setdefault(f"{n}.weight" if n else "weight", m.weight)
        out[layer] = readers
    return out


def _eos_ids(model, tok) -> list[int]:
    ids = set()
    for src in (tok.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(i) for i in src)
    return sorted(ids)


def _generate(model, prompts: list[list[int]], pad_id: int, eos: list[int], max_new_tokens: int,
              do_sample: bool, temperature: float = 1.0, top_p: float = 1.0, num_return: int = 1) -> list[list[int]]:
    """Completion token ids (cut after the first EOS) for left-padded prompts."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[b, T - len(p):] = 1
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, num_return_sequences=num_return,
                           pad_token_id=pad_id, eos_token_id=eos or None, top_k=0,
                           **({"temperature": temperature, "top_p": top_p} if do_sample else {}))
    with torch.no_grad():
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=cfg)
    out = []
    for row in gen[:, T:].tolist():
        comp = []
        for t in row:
            comp.append(t)
            if t in eos:
                break
        out.append(comp)
    return out


def _supports_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def target_nll_grads(model, prompt_ids: list[int], target_ids: list[int],
                     readers: dict[int, dict[str, torch.nn.Parameter]]) -> tuple[float, dict[int, float], float]:
    """Mean token NLL of ``target_ids`` after ``prompt_ids`` and the gradient norms of it.

    Returns ``(nll, {layer: ||grad of that layer's reader weights||_F}, ||grad of all parameters||)``;
    norms over several matrices are the square root of the summed squares, in float64.
    The model must be in float32 with ``requires_grad`` parameters.
    """
    device = next(model.parameters()).device
    P, C = len(prompt_ids), len(target_ids)
    ids = torch.tensor([prompt_ids + target_ids], dtype=torch.long, device=device)
    kwargs = {"logits_to_keep": C + 1} if _supports_logits_to_keep(model) else {}
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **kwargs).logits[0]
        logits_CV = logits[-(C + 1):-1].float()
        loss = torch.nn.functional.cross_entropy(logits_CV, ids[0, P:], reduction="mean")
        loss.backward()

    def norm(params) -> float:
        total = 0.0
        for p in params:
            if p.grad is not None:
                total += float(p.grad.detach().double().pow(2).sum())
        return math.sqrt(total)

    grad_a = {layer: norm(ps.values()) for layer, ps in readers.items()}
    grad_b = norm(model.parameters())
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grad_a, grad_b


# --- the run -----------------------------------------------------------------------------

def run_validate(
    inputs,
    *,
    score_options: ScoreOptions | None = None,
    options: ValidateOptions | None = None,
    prompt_column: str | None = None,
    id_column: str | None = None,
    loaded=None,
    progress: Progress | None = None,
) -> dict:
    """Measure the angle signal against gradient norms (and pass rates) on a sample.

    Returns a JSON-ready report: settings, ``per_sample`` (one row per sample and
    layer, with every value the correlations use) and ``correlations``.
    ``progress(stage, done, total)`` is called as work completes. Pass ``loaded`` (a
    models.LoadedModel) to reuse a model; it is temporarily cast to float32 for the
    generation and gradient stages and cast back afterwards.
    """
    from anglerank.train.rewards import answers_match, extract_answer

    sopt = score_options or ScoreOptions()
    vopt = options or ValidateOptions()
    t0 = time.perf_counter()
    source = ParquetSource(inputs, prompt_column=prompt_column, id_column=id_column)
    if vopt.target_column:
        check_column(source, vopt.target_column, "target", numeric_ok=False)
    if vopt.answer_column:
        check_column(source, vopt.answer_column, "answer", numeric_ok=True)
    if source.total_rows == 0:
        raise InputError("the input has no rows")
    scorer, loaded, device, dtype = build_scorer(sopt, loaded)
    model, tok = loaded.model, loaded.tokenizer
    renderer = scorer.renderer
    layers = scorer.layer_idx
    tick = progress or (lambda stage, done, total: None)

    # 1. sample, read, render, score
    rows = sample_rows(source.total_rows, vopt.samples, vopt.seed)
    wanted = set(rows)
    records: list[Record] = [r for r in source.iter_records() if r.row in wanted]
    targets = column_values(source, vopt.target_column, rows) if vopt.target_column else {}
    answers = column_values(source, vopt.answer_column, rows) if vopt.answer_column else {}
    tick("score", 0, len(records))
    scored = scorer.score_records(records)
    tick("score", len(records), len(records))
    by_row: dict[int, list[dict]] = {}
    for d in scored:
        by_row.setdefault(d["row"], []).append(d)
    rendered = {rec.row: renderer.render(rec.question, rec.history) for rec in records}
    live = [rec for rec in records if rendered[rec.row].ids]
    notes: dict[int, list[str]] = {rec.row: [] for rec in records}

    orig_dtype = next(model.parameters()).dtype
    req_grad = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.float().eval()
    for p in model.parameters():
        p.requires_grad_(True)
    pad_id, eos = scorer.pad_id, _eos_ids(model, tok)
    try:
        readers = site_readers(model, layers, sopt.site, rendered[live[0].row].ids) if live else {l: {} for l in layers}

        # 2. targets: the reference column (capped at max_new_tokens) or the greedy completion
        target_ids: dict[int, list[int]] = {}
        if vopt.target_column:
            for rec in live:
                text = targets.get(rec.row)
                if text is None or not str(text).strip():
                    notes[rec.row].append("empty target")
                    continue
                ids = tok(str(text), add_special_tokens=False)["input_ids"]
                if len(ids) > vopt.max_new_tokens:
                    notes[rec.row].append(f"target cut to {vopt.max_new_tokens} tokens")
                target_ids[rec.row] = ids[: vopt.max_new_tokens]
        else:
            order = sorted(live, key=lambda r: (len(rendered[r.row].ids), r.row))
            done = 0
            tick("greedy", 0, len(order))
            for i in range(0, len(order), vopt.gen_batch):
                chunk = order[i: i + vopt.gen_batch]
                comps = _generate(model, [rendered[r.row].ids for r in chunk], pad_id, eos, vopt.max_new_tokens, False)
                for r, c in zip(chunk, comps):
                    target_ids[r.row] = c
                done += len(chunk)
                tick("greedy", done, len(order))

        # 3. gradient norms, one prompt per backward
        grads: dict[int, tuple[float, dict[int, float], float]] = {}
        todo = [rec for rec in live if target_ids.get(rec.row)]
        tick("gradients", 0, len(todo))
        for k, rec in enumerate(todo):
            nll, ga, gb = target_nll_grads(model, rendered[rec.row].ids, target_ids[rec.row], readers)
            if all(math.isfinite(v) for v in (nll, gb, *ga.values())):
                grads[rec.row] = (nll, ga, gb)
            else:
                notes[rec.row].append("non-finite loss or gradient")
            tick("gradients", k + 1, len(todo))

        # 4. pass rates from G sampled completions per prompt (seeded per row)
        passes: dict[int, float] = {}
        if vopt.rollouts:
            tick("rollouts", 0, len(live))
            for k, rec in enumerate(live):
                ref = reference_answer(answers.get(rec.row))
                if ref is None:
                    notes[rec.row].append("no reference answer")
                    tick("rollouts", k + 1, len(live))
                    continue
                with torch.random.fork_rng(devices=[] if device == "cpu" else None):
                    torch.manual_seed(vopt.seed * 1_000_003 + rec.row)
                    comps = _generate(model, [rendered[rec.row].ids], pad_id, eos, vopt.max_new_tokens, True,
                                      vopt.temperature, vopt.top_p, vopt.rollouts)
                correct = sum(
                    answers_match(extract_answer(tok.decode(c, skip_special_tokens=True)), ref) for c in comps
                )
                passes[rec.row] = correct / len(comps)
                tick("rollouts", k + 1, len(live))
    finally:
        model.zero_grad(set_to_none=True)
        for p, rg in zip(model.parameters(), req_grad):
            p.requires_grad_(rg)
        model.to(orig_dtype)
        model.train(was_training)

    # 5. per-sample table (long format) and correlations
    per_sample = []
    for rec in records:
        g = grads.get(rec.row)
        for d in by_row[rec.row]:
            note = "; ".join([x for x in [d.get("note"), *notes[rec.row]] if x]) or None
            per_sample.append({
                "row": rec.row, "id": rec.id, "layer": d["layer"],
                "n_tokens": d["n_tokens"], "n_prefix": d["n_prefix"], "n_question": d["n_question"],
                "n_target": len(target_ids.get(rec.row, [])) if rec.row in target_ids else None,
                "intra": d["intra"], "inter": d["inter"], "score": d["score"],
                "nll": g[0] if g else None,
                "grad_a": g[1][d["layer"]] if g else None,
                "grad_b": g[2] if g else None,
                "pass_rate": passes.get(rec.row) if vopt.rollouts else None,
                "note": note,
            })
    per_sample.sort(key=lambda r: (r["row"], r["layer"]))
    report = {
        "anglerank_version": __version__,
        "model": loaded.name,
        "model_path": str(loaded.path),
        "dtype": dtype,
        "grad_dtype": "float32",
        "device": device,
        **{k: v for k, v in asdict(sopt).items() if k not in ("model", "dtype", "device", "layers", "batch_tokens")},
        "layers": layers,
        "inputs": [str(f) for f in source.files],
        "input_rows": source.total_rows,
        "prompt_column": source.prompt_column,
        "id_column": source.id_column,
        **asdict(vopt),
        "target": f"column {vopt.target_column}" if vopt.target_column else f"greedy completion (<= {vopt.max_new_tokens} tokens)",
        "grad_a_params": {str(l): list(ps) for l, ps in readers.items()},
        "control": CONTROL,
        "n_samples": len(records),
        "n_with_gradients": len(grads),
        "elapsed_s": round(time.perf_counter() - t0, 2),
        "correlations": correlations(per_sample, layers),
        "per_sample": per_sample,
    }
    return report


# --- plot ----------------------------------------------------------------------------

def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'anglerank[plot]' (or pip install matplotlib)") from None


def plot_report(report: dict, path, layer: int | None = None) -> None:
    """Scatter plots of score/intra/inter against each measured quantity for one layer."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layer = max(report["layers"]) if layer is None else layer
    rows = [r for r in report["per_sample"] if r["layer"] == layer]
    ys = [y for y in ("grad_a", "grad_b", "pass_rate", "n_question") if any(r.get(y) is not None for r in rows)]
    corr = {(c["x"], c["y"]): c for c in report["correlations"] if c["layer"] == layer}
    fig, axes = plt.subplots(len(X_VARS), len(ys), figsize=(3.3 * len(ys), 2.9 * len(X_VARS)), squeeze=False)
    for i, x in enumerate(X_VARS):
        for j, y in enumerate(ys):
            ax = axes[i][j]
            pts = [(r[x], r[y]) for r in rows if r.get(x) is not None and r.get(y) is not None]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=9, alpha=0.6)
            if y.startswith("grad") and pts and min(p[1] for p in pts) > 0 and \
                    max(p[1] for p in pts) > 20 * min(p[1] for p in pts):
                ax.set_yscale("log")
            c = corr.get((x, y), {})
            rho, prho = c.get("spearman"), c.get("partial_spearman")
            title = f"ρ={rho:+.2f}" if rho is not None else "ρ=n/a"
            if prho is not None:
                title += f"  partial ρ={prho:+.2f}"
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(x, fontsize=8)
            ax.set_ylabel(y, fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(f"anglerank validate: {report['model']}, layer {layer}, {report['site']}, "
                 f"{report['estimator']}, n={report['n_samples']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
