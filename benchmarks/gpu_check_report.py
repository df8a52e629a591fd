"""gpu_check's results: rates, speed-ups and rank agreement derived from the raw sections, the
targets, and the markdown summary written next to the JSON."""

from __future__ import annotations

from gpu_check_measure import rates

TARGET_SPEEDUP = 30.0
TARGET_MFU_SHAPE, TARGET_MFU = "1.5b", 0.30


# --- derived numbers -----------------------------------------------------------------------------

def compare(a, b) -> dict | None:
    """Spearman and max |difference| over the rows both have (nulls dropped)."""
    from anglerank.angles import spearman

    if not a or not b:
        return None
    k = min(len(a), len(b))
    pairs = [(x, y) for x, y in zip(a[:k], b[:k]) if x is not None and y is not None]
    if len(pairs) < 3:
        return None
    xs, ys = zip(*pairs)
    return {"n": len(pairs), "spearman": round(spearman(xs, ys), 5),
            "max_abs_diff": float(max(abs(x - y) for x, y in pairs))}


def summarise(res: dict, scores: dict, env: dict) -> None:
    """Rates, MFU, speed-ups and rank agreement of one shape from its raw sections."""
    model = res.get("model", {})
    if "flops_per_token" not in model:
        return
    fl, peak = model["flops_per_token"], env["peak_tflops_used"] * 1e12
    cli, authors = res.get("cli", {}), res.get("authors", {})
    if "loop_s" in cli:
        cli["loop"] = rates(cli["tokens"], cli["ran_tokens_estimate"], cli["loop_s"], fl["scorer"], peak)
        cli["wall"] = rates(cli["tokens"], cli["ran_tokens_estimate"], cli["wall_s"], fl["scorer"], peak)
    sweep = [p for p in (res.get("sweep") or {}).values() if isinstance(p, dict) and "loop_s" in p]
    for point in sweep:
        point["loop"] = rates(point["tokens"], point["ran_tokens"], point["loop_s"], fl["scorer"], peak)
    fp32 = res.get("float32", {})
    if "loop_s" in fp32:
        fp32["loop"] = rates(fp32["tokens"], fp32["ran_tokens"], fp32["loop_s"], fl["scorer"], peak)
    if authors.get("seconds"):
        authors["rates"] = rates(authors["tokens"], authors["tokens"], authors["seconds"], fl["authors"], peak)
        base = authors["tokens_per_s"]
        best = max((p["loop"]["tokens_per_s"] / base for p in sweep), default=None)
        res["speedup_vs_authors"] = {
            "cli_loop": round(cli["loop"]["tokens_per_s"] / base, 2) if "loop" in cli else None,
            "cli_wall": round(cli["wall"]["tokens_per_s"] / base, 2) if "wall" in cli else None,
            "best_sweep_loop": round(best, 2) if best else None,
        }
    res["agreement"] = {
        "default_vs_float32": compare(scores.get("cli"), scores.get("float32")),
        "default_vs_authors": compare(scores.get("cli"), scores.get("authors")),
        "float32_vs_authors": compare(scores.get("float32"), scores.get("authors")),
    }


def targets(data: dict) -> dict:
    """The issue's targets, reported (not asserted)."""
    out = {}
    for shape, res in data["shapes"].items():
        sp = (res.get("speedup_vs_authors") or {}).get("cli_loop")
        out[f"{shape} speed-up >= {TARGET_SPEEDUP:g}x (scoring loop)"] = None if sp is None else sp >= TARGET_SPEEDUP
    mfu = ((data["shapes"].get(TARGET_MFU_SHAPE) or {}).get("cli", {}).get("loop") or {}).get("mfu")
    key = f"{TARGET_MFU_SHAPE} MFU >= {TARGET_MFU:.0%} (anglerank score defaults)"
    out[key] = None if mfu is None else mfu >= TARGET_MFU
    return out


def problems(node, path: str = "") -> list[str]:
    """Every section that failed or was skipped, as 'path: why'."""
    if not isinstance(node, dict):
        return []
    why = _problem(node)
    if why:
        return [f"{path}: {why}"]
    return [p for k, v in node.items() for p in problems(v, f"{path}/{k}" if path else k)]


def _problem(section) -> str | None:
    if not isinstance(section, dict):
        return None
    return section.get("error") or section.get("skipped")


# --- markdown ------------------------------------------------------------------------------------

def _f(value, fmt: str = "{:,.0f}", missing: str = "-") -> str:
    return missing if value is None else fmt.format(value)


def markdown_main(data: dict) -> list[str]:
    lines = ["| shape | run | prompts | tokens | seconds | tokens/s | MFU (tokens run) | MFU (all tokens) "
             "| peak GPU MiB | speed-up vs authors |", "|---|---|---|---|---|---|---|---|---|---|"]
    for shape, res in data["shapes"].items():
        if _problem(res) or _problem(res.get("model")):
            lines.append(f"| {shape} | model | {_problem(res) or _problem(res.get('model'))} |||||||")
            continue
        cli, authors = res.get("cli") or {}, res.get("authors") or {}
        speed = res.get("speedup_vs_authors") or {}
        if _problem(cli):
            lines.append(f"| {shape} | `anglerank score` | {_problem(cli)} |||||||")
        else:
            peak = _f(cli.get("peak_gpu_mib")) if cli.get("peak_gpu_mib") else f"(RSS {_f(cli.get('max_rss_mib'))})"
            for label, part, sp in (("`anglerank score`, wall (start-up included)", "wall", "cli_wall"),
                                    ("`anglerank score`, scoring loop", "loop", "cli_loop")):
                r = cli.get(part) or {}
                lines.append(f"| {shape} | {label} | {_f(cli.get('rows'))} | {_f(cli.get('tokens'))} "
                             f"| {_f(r.get('seconds'), '{:.2f}')} | {_f(r.get('tokens_per_s'))} "
                             f"| {_f(r.get('mfu'), '{:.1%}')} | {_f(r.get('mfu_all_tokens'), '{:.1%}')} | {peak} "
                             f"| {_f(speed.get(sp), '{:.1f}x')} |")
        if _problem(authors):
            lines.append(f"| {shape} | authors' loop | {_problem(authors)} |||||||")
        elif authors:
            r = authors.get("rates") or {}
            lines.append(f"| {shape} | authors' loop (bs1, fp32, full model, L x L) | {_f(authors.get('rows'))} "
                         f"| {_f(authors.get('tokens'))} | {_f(authors.get('seconds'), '{:.2f}')} "
                         f"| {_f(authors.get('tokens_per_s'))} | {_f(r.get('mfu'), '{:.1%}')} | "
                         f"| {_f(authors.get('peak_gpu_mib'))} | 1.0x |")
    return lines


def markdown_sweep(data: dict) -> list[str]:
    lines = ["| shape | --batch-tokens | prompts | tokens/s | MFU (tokens run) | rows per forward | padding "
             "| peak GPU MiB |", "|---|---|---|---|---|---|---|---|"]
    for shape, res in data["shapes"].items():
        for name, p in (res.get("sweep") or {}).items():
            if not isinstance(p, dict):
                continue
            if _problem(p):
                lines.append(f"| {shape} | {name} | {_problem(p)} ||||||")
                continue
            r = p.get("loop") or {}
            lines.append(f"| {shape} | {name} | {_f(p.get('rows'))} | {_f(r.get('tokens_per_s'))} "
                         f"| {_f(r.get('mfu'), '{:.1%}')} | {_f(p.get('rows_per_forward'), '{:.1f}')} "
                         f"| {_f(p.get('padding_fraction'), '{:.1%}')} | {_f(p.get('peak_gpu_mib'))} |")
    return lines


def markdown_agreement(data: dict) -> list[str]:
    lines = ["| shape | comparison | prompts | Spearman | max abs diff |", "|---|---|---|---|---|"]
    labels = {"default_vs_float32": "default dtype vs float32 (ours)",
              "default_vs_authors": "default dtype vs authors' loop (fp32)",
              "float32_vs_authors": "float32 (ours) vs authors' loop"}
    for shape, res in data["shapes"].items():
        for key, label in labels.items():
            c = (res.get("agreement") or {}).get(key)
            if c:
                lines.append(f"| {shape} | {label} | {c['n']} | {c['spearman']:.4f} | {c['max_abs_diff']:.1e} |")
    return lines


def markdown_memory(data: dict) -> list[str]:
    lines = ["| shape | check | result |", "|---|---|---|"]
    for shape, res in data["shapes"].items():
        mem = res.get("memory") or {}
        lines += [f"| {shape} | {name} | {_problem(sec)} |" for name, sec in mem.items() if _problem(sec)]
        b, f, t = (mem.get(k) or {} for k in ("budget_vs_peak", "forced_backoff", "truncated_loading"))
        if "batch_tokens" in b:
            lines.append(
                f"| {shape} | chosen budget | {b['batch_tokens']:,} tokens ({(b.get('basis') or {}).get('source')}); "
                f"largest batch {b['largest_batch_tokens']:,}; activations predicted "
                f"{_f(b.get('predicted_activation_mib'))} MiB, measured {_f(b.get('measured_activation_mib'))} MiB "
                f"(x{_f(b.get('measured_over_predicted'), '{:.2f}')}); peak {_f(b.get('peak_gpu_mib'))} MiB |")
        if "backoff" in f:
            steps = " -> ".join(f"{s['to']:,}" for s in f["backoff"]) or "none"
            lines.append(f"| {shape} | forced back-off | {f['start_batch_tokens']:,} -> {steps}; max abs diff "
                         f"{_f(f.get('max_abs_diff'), '{:.1e}')} against an unconstrained run |")
        if "full" in t:
            part, full = t["truncated"], t["full"]
            lines.append(
                f"| {shape} | truncated loading (layer {t['layer']} of {t['num_layers']}) | {part['params']:,} of "
                f"{full['params']:,} parameters ({t['params_ratio']:.0%}), GPU {_f(part.get('gpu_mib'))} of "
                f"{_f(full.get('gpu_mib'))} MiB; max abs diff {_f(t.get('max_abs_diff_truncated'), '{:.1e}')}, "
                f"with --device-map auto {_f(t.get('max_abs_diff_device_map'), '{:.1e}')} |")
    return lines


def markdown(data: dict) -> str:
    env = data.get("environment") or {}
    head = [f"# anglerank GPU check{' (smoke)' if data['settings'].get('smoke') else ''}", "",
            f"{env.get('device_name', '?')}, torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}; "
            f"peak {env.get('peak_tflops_used', '?')} TFLOPS bf16 ({env.get('peak_source', '?')}; measured matmul "
            f"{env.get('bf16_matmul_tflops_measured', '?')}). Random-weight Qwen2 shapes, GSM8K prompts, "
            "`--preset gainrl`.", ""]
    body = markdown_main(data) + ["", "`--batch-tokens` sweep (in process, library API, scoring loop):", ""]
    body += markdown_sweep(data) + ["", "Memory:", ""] + markdown_memory(data)
    body += ["", "Rank agreement (random weights):", ""] + markdown_agreement(data)
    goals = (data.get("targets") or {}).items()
    body += ["", "Targets: " + ", ".join(f"{k}: {_f(v, '{}', 'n/a')}" for k, v in goals),
             "", f"Elapsed {data.get('elapsed_s', '?')} s, complete: {data.get('complete', False)}."]
    body += [f"- {p}" for p in problems(data["shapes"])]
    body += ["", "Imports (blocked, and who asked for a watched module):", ""]
    for where, rec in (data.get("imports") or {}).items():
        if rec:
            asked = "; ".join(f"{k} via {v}" for k, v in rec.get("asked_for", {}).items()) or "none asked for"
            body.append(f"- {where}: blocked {', '.join(rec.get('blocked', [])) or 'nothing'}; {asked}")
    body.append("")
    return "\n".join(head + body)
