"""The scoring pipeline: records -> rendered ids -> length-bucketed batches -> hooked
forward -> angle scores -> committed Arrow parts.

``Scorer`` is the in-process engine (also used by the trainer to re-score with live
weights); ``run_score`` wraps it with Parquet input, output parts, manifest, resume
and progress, and is what the CLI and ``anglerank.score(...)`` call.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from anglerank import __version__, angles, hooks
from anglerank.data.reader import ParquetSource, Record
from anglerank.data.writer import (
    OutputError,
    ScoreWriter,
    prepare_output_dir,
    read_manifest,
    score_schema,
)
from anglerank.render import Renderer

ESTIMATORS = ("paper", "gainrl-code")


class Interrupted(Exception):
    """Raised after a clean stop on Ctrl-C / SIGTERM; carries the exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class ScoreOptions:
    """Everything that determines the numbers (and so must match on --resume)."""

    model: str | None = None
    preset: str = "none"
    system: str | None = None
    prefix: str | None = None
    site: str = "mlp-input"
    layers: list = field(default_factory=lambda: [-1])  # ints, 'all' or 'A:B'
    estimator: str = "paper"
    w_intra: float = 1.0
    w_inter: float | None = None  # None: 1 for paper, 8 for gainrl-code (the authors' weight)
    code_prefix_tokens: int = 110
    code_suffix_tokens: int = 6
    max_length: int = 4096
    dtype: str = "auto"
    device: str = "auto"
    batch_tokens: int = 16384

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose from {', '.join(ESTIMATORS)}")
        if self.site not in hooks.SITES:
            raise ValueError(f"unknown hook site {self.site!r}; choose from {', '.join(hooks.SITES)}")
        if self.w_inter is None:
            self.w_inter = 8.0 if self.estimator == "gainrl-code" else 1.0
        if self.batch_tokens < 1:
            raise ValueError("--batch-tokens must be positive")
        if not self.layers:
            self.layers = [-1]


# --- device / dtype ----------------------------------------------------------------

def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda") and device != "mps":
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "bfloat16" if device == "cpu" and cpu_has_bf16() else "float32"
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"unknown dtype {dtype!r}; use auto, bfloat16, float16 or float32")
    return dtype


# --- the engine -------------------------------------------------------------------------

def make_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Group item indices into length-sorted batches whose padded size fits the budget.

    Items are sorted by length so padding is small; a single item longer than the
    budget still forms its own batch (no row is ever dropped).
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, cur, cur_max = [], [], 0
    for i in order:
        new_max = max(cur_max, lengths[i])
        if cur and new_max * (len(cur) + 1) > batch_tokens:
            batches.append(cur)
            cur, cur_max = [], 0
            new_max = lengths[i]
        cur.append(i)
        cur_max = new_max
    if cur:
        batches.append(cur)
    return batches


def _null(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


class Scorer:
    """Scores records with a loaded model; independent of files and CLI."""

    def __init__(self, model, tokenizer, renderer: Renderer, options: ScoreOptions, device: str):
        self.model = model
        self.tok = tokenizer
        self.renderer = renderer
        self.opt = options
        self.device = device
        self.layer_idx = hooks.parse_layers(model, options.layers)
        for idx in self.layer_idx:
            hooks.site_module(model, idx, options.site)  # fail early on unsupported layouts
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self.tokens_seen = 0

    def _terms(self, hidden_BTD: torch.Tensor, items) -> tuple[list[float], list[float]]:
        if self.opt.estimator == "gainrl-code":
            lengths = [len(r.ids) for r in items]
            intra, inter = angles.gainrl_code_terms_batch(
                hidden_BTD, lengths, self.opt.code_prefix_tokens, self.opt.code_suffix_tokens
            )
        else:
            B, T = hidden_BTD.shape[:2]
            q_mask = torch.zeros(B, T, dtype=torch.bool, device=hidden_BTD.device)
            p_mask = torch.zeros_like(q_mask)
            for b, r in enumerate(items):
                p_mask[b, : r.n_prefix] = True
                q_mask[b, r.n_prefix: r.q_end] = True
            intra, inter = angles.segment_concentration(hidden_BTD, q_mask, p_mask)
        return intra.tolist(), inter.tolist()

    def _note(self, r, intra: float, inter: float) -> str | None:
        notes = [r.note] if r.note else []
        if self.opt.estimator == "gainrl-code":
            if math.isnan(intra) or math.isnan(inter):
                notes.append(f"gainrl-code slice empty ({len(r.ids)} tokens)")
        else:
            if r.n_question < 2:
                notes.append("question shorter than 2 tokens")
            if r.n_prefix == 0:
                notes.append("empty prefix")
        return "; ".join(notes) or None

    def _row(self, rec: Record, r, layer: int, intra: float, inter: float) -> dict:
        intra_v, inter_v = _null(intra), _null(inter)
        score = None
        if intra_v is not None and inter_v is not None:
            score = self.opt.w_intra * intra_v + self.opt.w_inter * inter_v
        return {
            "row": rec.row, "id": rec.id, "layer": layer,
            "n_tokens": len(r.ids), "n_prefix": r.n_prefix, "n_question": r.n_question,
            "intra": intra_v, "inter": inter_v, "score": score,
            "truncated": r.truncated, "note": self._note(r, intra, inter) if r.ids else r.note,
        }

    @torch.inference_mode()
    def forward_hidden(self, id_lists: list[list[int]]) -> dict[int, torch.Tensor]:
        """Hidden states [B, T, D] at every requested layer for right-padded ids."""
        T = max(len(x) for x in id_lists)
        ids = torch.full((len(id_lists), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(id_lists), T), dtype=torch.long)
        for b, x in enumerate(id_lists):
            ids[b, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[b, : len(x)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with hooks.capture(self.model, self.layer_idx, self.opt.site) as captured:
            hooks.run_until_captured(self.model, ids, mask)
        return dict(captured)

    def score_records(self, records: list[Record]) -> list[dict]:
        """One result row per (record, layer), sorted by (row, layer)."""
        rendered = []
        for rec in records:
            if rec.question is None and rec.note:
                rendered.append(self.renderer.render(None))
                rendered[-1].note = rec.note
            else:
                rendered.append(self.renderer.render(rec.question, rec.history))
        out = []
        live = [i for i, r in enumerate(rendered) if r.ids]
        for i, r in enumerate(rendered):
            if not r.ids:
                out.extend(self._row(records[i], r, l, math.nan, math.nan) for l in self.layer_idx)
        for batch in make_batches([len(rendered[i].ids) for i in live], self.opt.batch_tokens):
            idx = [live[j] for j in batch]
            items = [rendered[i] for i in idx]
            hidden = self.forward_hidden([r.ids for r in items])
            self.tokens_seen += sum(len(r.ids) for r in items)
            for layer in self.layer_idx:
                intra, inter = self._terms(hidden[layer], items)
                for k, i in enumerate(idx):
                    out.append(self._row(records[i], items[k], layer, intra[k], inter[k]))
        out.sort(key=lambda d: (d["row"], d["layer"]))
        return out


# --- file-level run --------------------------------------------------------------------

SETTINGS_KEYS = (
    "weights_fingerprint", "template_fingerprint", "preset", "system", "prefix", "site", "layers",
    "estimator", "w_intra", "w_inter", "code_prefix_tokens", "code_suffix_tokens", "max_length",
    "dtype", "prompt_column", "id_column", "inputs_fingerprint", "limit", "window_rows", "batch_tokens",
)


def _inputs_fingerprint(files: list[dict]) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in files:
        h.update(f"{f['fingerprint']}:{f['rows']};".encode())
    return h.hexdigest()[:16]


class _SignalGuard:
    """Turn SIGTERM into a clean stop at the next window boundary (Ctrl-C likewise)."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        def handler(signum, frame):
            if self.signum is not None:  # a second signal: stop now
                raise KeyboardInterrupt
            self.signum = signum

        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, handler)
            except ValueError:  # not in the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def run_score(
    inputs,
    output,
    *,
    options: ScoreOptions | None = None,
    prompt_column: str | None = None,
    id_column: str | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    window_rows: int = 512,
    commit_every: int = 4096,
    progress: Callable[[int, int, int], None] | None = None,
    loaded=None,
    **option_kwargs,
) -> dict:
    """Score Parquet ``inputs`` into the directory ``output``; return the manifest.

    ``options`` (or keyword arguments of :class:`ScoreOptions`) select model, preset,
    site, layers, estimator and performance settings. ``progress(done, total, tokens)``
    is called after each window. Pass ``loaded`` (a models.LoadedModel) to reuse a model.
    """
    from anglerank import models

    opt = options or ScoreOptions(**option_kwargs)
    if limit is not None and limit < 0:
        raise ValueError("--limit must be >= 0")
    commit_every = max(window_rows, (commit_every // window_rows) * window_rows)
    source = ParquetSource(inputs, prompt_column=prompt_column, id_column=id_column)
    device = resolve_device(opt.device)
    dtype = resolve_dtype(opt.dtype, device)
    if loaded is None:
        loaded = models.load(opt.model, device=device, dtype=dtype)
    model, tok = loaded.model, loaded.tokenizer
    renderer = Renderer(tok, opt.preset, opt.system, opt.prefix, opt.max_length)
    scorer = Scorer(model, tok, renderer, opt, device)
    stop_row = source.total_rows if limit is None else min(limit, source.total_rows)
    files = source.fingerprints()

    manifest = {
        "anglerank_version": __version__,
        "model": loaded.name,
        "model_path": str(loaded.path),
        "weights_fingerprint": models.weights_fingerprint(loaded.path),
        "template_fingerprint": models.text_fingerprint(getattr(tok, "chat_template", None)),
        **{k: v for k, v in asdict(opt).items() if k not in ("model", "dtype", "device", "layers")},
        "layers": scorer.layer_idx,
        "dtype": dtype,
        "device": device,
        "prompt_column": source.prompt_column,
        "id_column": source.id_column,
        "inputs": files,
        "inputs_fingerprint": _inputs_fingerprint(files),
        "input_rows": source.total_rows,
        "limit": limit,
        "window_rows": window_rows,
        "commit_every": commit_every,
        "rows_expected": stop_row,
    }
    out = Path(output)
    start_row, prev = 0, None
    if resume and read_manifest(out) is not None:
        prev = read_manifest(out)
        diffs = [k for k in SETTINGS_KEYS if prev.get(k) != manifest.get(k)]
        if diffs:
            raise OutputError(
                f"cannot resume {out}: settings differ from the interrupted run ({', '.join(diffs)}); "
                "use the original settings or a new output directory"
            )
        start_row = int(prev.get("next_row", 0))
        # drop any part file not recorded in the manifest (written but never committed)
        recorded = {p["file"] for p in prev["parts"]}
        for f in out.glob("scores-*.arrow"):
            if f.name not in recorded:
                f.unlink()
        manifest["parts"] = prev["parts"]
        manifest["started_at"] = prev.get("started_at", time.time())
        manifest["elapsed_s"] = prev.get("elapsed_s", 0.0)
        manifest["tokens"] = prev.get("tokens", 0)
    else:
        prepare_output_dir(out, overwrite)
        manifest["started_at"] = time.time()
        manifest["elapsed_s"] = 0.0
        manifest["tokens"] = 0
    writer = ScoreWriter(out, score_schema(source.id_type, with_layer=True), manifest)
    if prev is not None and prev.get("complete"):
        writer.manifest["complete"] = True
        return writer.finish(stop_row)

    t0, base_elapsed, base_tokens = time.perf_counter(), manifest["elapsed_s"], manifest["tokens"]

    def stats() -> dict:
        el = base_elapsed + time.perf_counter() - t0
        tokens = base_tokens + scorer.tokens_seen
        return {"elapsed_s": round(el, 3), "tokens": tokens,
                "tokens_per_s": round(tokens / el, 1) if el > 0 else None}

    done = start_row
    window: list[Record] = []
    with _SignalGuard() as guard:
        def flush_window():
            nonlocal done, window
            writer.add(scorer.score_records(window))
            done = window[-1].row + 1
            window = []
            if progress:
                progress(done, stop_row, base_tokens + scorer.tokens_seen)
            if done % commit_every == 0 or writer.buffered >= commit_every:
                writer.commit(done, **stats())

        try:
            for rec in source.iter_records(start_row, stop_row):
                window.append(rec)
                if len(window) == window_rows:
                    flush_window()
                    if guard.signum is not None:
                        break
            if guard.signum is None and window:
                flush_window()
        except KeyboardInterrupt:
            guard.signum = signal.SIGINT
        if guard.signum is not None:
            writer.commit(done, **stats())
            code = 130 if guard.signum == signal.SIGINT else 143
            raise Interrupted(
                code,
                f"interrupted after {done} of {stop_row} rows; committed output is in {out}. "
                "Continue with the same command plus --resume",
            )
    return writer.finish(done, **stats(), finished_at=time.time())
