"""gpu_check's memory section: the batch budget `anglerank score` picks from the free memory against
the peak it measures, a forced out-of-memory back-off, truncated loading (parameters and memory of
a load up to a middle layer against a full one) and --device-map auto.

On a GPU the back-off is forced for real: ``torch.cuda.set_per_process_memory_fraction`` caps the
process a little above the weights, and a 64k-token budget cannot fit. On a CPU (--smoke) the
model's forward raises ``torch.OutOfMemoryError`` above a token count instead, so the same code
path runs. Only the standard library at the top (see gpu_check_measure).
"""

from __future__ import annotations

import time
from pathlib import Path

from gpu_check_measure import free_memory, peak_mib

MIB = 2**20
CAP_ABOVE_WEIGHTS = 512 * MIB  # the forced back-off's room for activations
BACKOFF_START = 65536  # its first budget: far more than the room holds
SMOKE_OOM_TOKENS = 256  # --smoke: a forward above this many ids "runs out of memory"


def _cuda(device: str) -> bool:
    return device.startswith("cuda")


def _allocated(device: str) -> int | None:
    import torch

    if not _cuda(device):
        return None
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def _records(prompts: Path, n: int):
    from anglerank.data.reader import ParquetSource

    return list(ParquetSource([str(prompts)]).iter_records(stop_row=n))


def _score(loaded, records, layer: int, dtype: str, device: str, **opt) -> list:
    from anglerank.scoring.engine import ScoreOptions, build_scorer

    options = ScoreOptions(model=str(loaded.path), preset="gainrl", layers=[layer], dtype=dtype, device=device, **opt)
    scorer = build_scorer(options, loaded)[0]
    return [r["score"] for r in scorer.score_records(records)]


def _load(path: str, device: str, dtype: str, keep: int | None, device_map=None):
    from anglerank.model import loading

    free_memory()
    before = _allocated(device) or 0
    t0 = time.perf_counter()
    loaded = loading.load(path, device, dtype, keep_layers=(lambda depth: keep) if keep else None,
                         device_map=device_map)
    seconds = time.perf_counter() - t0
    after = _allocated(device)
    stats = {"class": type(loaded.model).__name__, "load_s": round(seconds, 2),
             "params": sum(p.numel() for p in loaded.model.parameters()),
             "gpu_mib": round((after - before) / MIB, 1) if after is not None else None}
    return loaded, stats


def _diff(a: list, b: list) -> float | None:
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    return max((abs(x - y) for x, y in pairs), default=None)


# --- sections ---------------------------------------------------------------------------------------

def truncated_loading(path: str, prompts: Path, n: int, dtype: str, device: str) -> dict:
    """Full load against one up to a middle layer: parameters, GPU memory, load time, identical scores;
    then --device-map auto (every visible GPU) with the truncation, identical scores again."""
    from anglerank.model import loading
    from anglerank.scoring import memory

    cfg = loading.load_config(path).to_dict()
    layer = cfg["num_hidden_layers"] // 2 - 1
    records = _records(prompts, n)
    out = {"layer": layer, "num_layers": cfg["num_hidden_layers"], "prompts": len(records),
           "expected_params": memory.decoder_params(cfg, layer + 1, qkv_bias=True)}
    scores = {}
    for name, keep, device_map in (("full", None, None), ("truncated", layer + 1, None),
                                   ("device_map_auto", layer + 1, "auto")):
        loaded, stats = _load(path, device, dtype, keep, device_map)
        scores[name] = _score(loaded, records, layer, dtype, device)
        if device_map:
            stats["devices"] = sorted({str(p.device) for p in loaded.model.parameters()})
        out[name] = stats
        del loaded
    free_memory()
    out["params_ratio"] = round(out["truncated"]["params"] / out["full"]["params"], 4)
    out["params_match"] = out["truncated"]["params"] == out["expected_params"]["truncated"]
    out["max_abs_diff_truncated"] = _diff(scores["full"], scores["truncated"])
    out["max_abs_diff_device_map"] = _diff(scores["truncated"], scores["device_map_auto"])
    return out


def budget_vs_peak(path: str, prompts: Path, n: int, dtype: str, device: str, work: Path) -> dict:
    """`anglerank score`'s own budget (no --batch-tokens) against the peak memory measured: the
    estimate times the largest batch that ran, against the peak less the weights."""
    import torch

    from anglerank.model import hooks, loading
    from anglerank.scoring.run import run_score

    loaded = loading.load(path, device, dtype, keep_layers=lambda depth: depth)  # as `score` loads for layer -1
    largest = {"tokens": 0}

    def on_forward(module, args, kwargs):  # the budget counts a cached prefix too: the mask's width
        largest["tokens"] = max(largest["tokens"], kwargs["attention_mask"].numel())

    handle = hooks.base_model(loaded.model).register_forward_pre_hook(on_forward, with_kwargs=True)
    free_memory()
    weights = _allocated(device)
    if _cuda(device):
        torch.cuda.reset_peak_memory_stats()
    try:
        m = run_score([str(prompts)], work / "budget", loaded=loaded, limit=n, overwrite=True, preset="gainrl",
                      dtype=dtype, device=device)
    finally:
        handle.remove()
    out = {"batch_tokens": m["batch_tokens"], "basis": m.get("batch_tokens_basis"),
           "backoff": m.get("batch_tokens_backoff"), "largest_batch_tokens": largest["tokens"],
           "weights_mib": round(weights / MIB, 1) if weights is not None else None, "peak_gpu_mib": peak_mib(device)}
    per_token = (out["basis"] or {}).get("bytes_per_token")
    if per_token and weights is not None:
        predicted = per_token * largest["tokens"]
        measured = torch.cuda.max_memory_allocated() - weights
        out.update(predicted_activation_mib=round(predicted / MIB, 1), measured_activation_mib=round(measured / MIB, 1),
                   measured_over_predicted=round(measured / predicted, 3) if predicted else None)
    del loaded
    free_memory()
    return out


def forced_backoff(path: str, prompts: Path, n: int, dtype: str, device: str) -> dict:
    """A budget that cannot fit: the scorer halves it until it does, and scores like an unconstrained run."""
    import torch

    from anglerank.model import hooks, loading
    from anglerank.scoring.engine import ScoreOptions, build_scorer

    loaded = loading.load(path, device, dtype, keep_layers=lambda depth: depth)
    records = _records(prompts, n)
    layer = len(hooks.decoder_layers(loaded.model)) - 1
    want = _score(loaded, records, layer, dtype, device, batch_tokens=BACKOFF_START)
    free_memory()
    out = {"prompts": len(records), "start_batch_tokens": BACKOFF_START}
    base = hooks.base_model(loaded.model)
    if _cuda(device):
        total = torch.cuda.get_device_properties(device).total_memory
        out["cap_mib"] = round((_allocated(device) + CAP_ABOVE_WEIGHTS) / MIB, 1)
        torch.cuda.set_per_process_memory_fraction((_allocated(device) + CAP_ABOVE_WEIGHTS) / total)
    else:
        out["simulated_above_tokens"] = SMOKE_OOM_TOKENS
        forward = base.forward

        def limited(*args, **kwargs):
            if kwargs["input_ids"].numel() > SMOKE_OOM_TOKENS:
                raise torch.OutOfMemoryError("simulated: out of memory")
            return forward(*args, **kwargs)

        base.forward = limited
    warned = []
    try:
        opt = ScoreOptions(model=path, preset="gainrl", layers=[layer], dtype=dtype, device=device,
                           batch_tokens=BACKOFF_START)
        scorer = build_scorer(opt, loaded, warn=warned.append)[0]
        got = [r["score"] for r in scorer.score_records(records)]
    finally:
        if _cuda(device):
            torch.cuda.set_per_process_memory_fraction(1.0)
        else:
            del base.forward
    out.update(backoff=scorer.backoffs, final_batch_tokens=scorer.batch_tokens, warnings=warned,
               max_abs_diff=_diff(want, got), rows_equal=len(got) == len(want))
    del loaded
    free_memory()
    return out


def run_memory(res: dict, path: str, ctx, dtype: str, guarded) -> None:
    """The memory sections of one shape (each recorded on its own; a failure does not stop the others)."""
    args, budget = ctx.args, ctx.budget
    mem = res.setdefault("memory", {})
    sections = (("budget_vs_peak", budget_vs_peak, (path, ctx.prompts, args.n_memory, dtype, ctx.device, ctx.work)),
                ("forced_backoff", forced_backoff, (path, ctx.prompts, args.n_memory, dtype, ctx.device)),
                ("truncated_loading", truncated_loading, (path, ctx.prompts, args.n_memory, dtype, ctx.device)))
    for name, fn, fargs in sections:
        if budget.left() < args.min_section_s + args.reserve_s:
            mem[name] = {"skipped": "time budget"}
            continue
        guarded(mem, name, ctx.report, fn, *fargs)
