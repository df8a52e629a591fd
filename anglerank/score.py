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
from typing import Callable

import pyarrow as pa
import torch

from anglerank import __version__, angles, hooks
from anglerank.data.reader import InputError, ParquetSource, Record
from anglerank.data.writer import (
    MANIFEST,
    OutputError,
    ScoreWriter,
    own_files,
    prepare_output_dir,
    read_manifest,
    score_schema,
    write_json_atomic,
)
from anglerank.errors import Interrupted, UserError  # noqa: F401  (Interrupted: re-exported for callers)
from anglerank.render import Renderer

ESTIMATORS = ("paper", "gainrl-code")


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
    batch_tokens: int | None = None  # None: 16384 on GPUs, 1024 on CPUs (measured best here)
    prefix_cache: bool = True  # run a prefix shared by rows once and reuse its key/value cache

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise UserError(f"unknown estimator {self.estimator!r}; choose from {', '.join(ESTIMATORS)}")
        if self.site not in hooks.SITES:
            raise UserError(f"unknown hook site {self.site!r}; choose from {', '.join(hooks.SITES)}")
        if self.w_inter is None:
            self.w_inter = 8.0 if self.estimator == "gainrl-code" else 1.0
        for name, w in (("--w-intra", self.w_intra), ("--w-inter", self.w_inter)):
            if not math.isfinite(w):
                raise UserError(f"{name} must be a finite number, got {w}")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise UserError("--batch-tokens must be positive")
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
        raise UserError(f"--device {device} requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda") and device != "mps":
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "bfloat16" if device == "cpu" and cpu_has_bf16() else "float32"
    if dtype not in ("bfloat16", "float16", "float32"):
        raise UserError(f"unknown dtype {dtype!r}; use auto, bfloat16, float16 or float32")
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


# Model families whose cached forward is tested equal to the uncached one (tests/test_score.py);
# others always run the whole prompt.
PREFIX_CACHE_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral", "gemma2", "gpt2", "gpt_neox"})
_PREFIX_CACHE_SIZE = 8


@dataclass
class _Prefix:
    """A token prefix run once: its per-layer keys/values and its hidden states at the site."""

    length: int
    kv: list  # [(keys [1, H, P, dh], values), ...] for layers 0..deepest
    hidden: dict  # layer -> [P, D]


def _weights_version(model) -> tuple:
    """Changes whenever a parameter is modified in place (optimizer steps, load_state_dict) or replaced."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


class Scorer:
    """Scores records with a loaded model; independent of files and CLI."""

    def __init__(self, model, tokenizer, renderer: Renderer, options: ScoreOptions, device: str):
        self.model = model
        self.tok = tokenizer
        self.renderer = renderer
        self.opt = options
        self.device = device
        if options.batch_tokens is None:
            options.batch_tokens = 1024 if str(device) == "cpu" else 16384
        self.layer_idx = hooks.parse_layers(model, options.layers)
        for idx in self.layer_idx:
            hooks.site_module(model, idx, options.site)  # fail early on unsupported layouts
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self.tokens_seen = 0
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        self.use_prefix_cache = options.prefix_cache and model_type in PREFIX_CACHE_TYPES
        self._prefixes: dict[tuple, _Prefix] = {}
        self._prefixes_version = None

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
    def forward_hidden(self, id_lists: list[list[int]], prefix: _Prefix | None = None) -> dict[int, torch.Tensor]:
        """Hidden states [B, T, D] at every requested layer for right-padded ids.

        With ``prefix`` (every list starts with its tokens) only the rest of each list
        runs, on top of the prefix's cached keys/values; the prefix's hidden states are
        prepended, so the result is the same as without it.
        """
        P = prefix.length if prefix else 0
        T = max(len(x) for x in id_lists) - P
        B = len(id_lists)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, P + T), dtype=torch.long)
        mask[:, :P] = 1
        for b, x in enumerate(id_lists):
            ids[b, : len(x) - P] = torch.tensor(x[P:], dtype=torch.long)
            mask[b, : len(x)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = None
        if prefix:
            from transformers import DynamicCache

            cache = DynamicCache([(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in prefix.kv])
        with hooks.capture(self.model, self.layer_idx, self.opt.site) as captured:
            hooks.run_until_captured(self.model, ids, mask, cache)
        if prefix:
            return {l: torch.cat([prefix.hidden[l].expand(B, -1, -1), h], dim=1) for l, h in captured.items()}
        return dict(captured)

    @torch.inference_mode()
    def _run_prefix(self, ids: tuple) -> _Prefix:
        from transformers import DynamicCache

        cache = DynamicCache()
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        with hooks.capture(self.model, self.layer_idx, self.opt.site) as captured:
            hooks.run_until_captured(self.model, x, torch.ones_like(x), cache)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        return _Prefix(len(ids), kv, {l: h[0] for l, h in captured.items()})

    def _prefix_groups(self, live: list[int], rendered: list) -> list[tuple[_Prefix | None, list[int]]]:
        """Split rows into groups sharing a prefix (at least two rows each) and the rest."""
        if not self.use_prefix_cache:
            return [(None, live)]
        version = _weights_version(self.model)
        if version != self._prefixes_version:  # new weights: cached keys/values are stale
            self._prefixes, self._prefixes_version = {}, version
        by_key: dict[tuple, list[int]] = {}
        for i in live:
            r = rendered[i]
            shareable = 0 < r.n_prefix < len(r.ids)  # a row cut inside its prefix has no tokens of its own
            by_key.setdefault(tuple(r.ids[: r.n_prefix]) if shareable else (), []).append(i)
        groups, rest = [], []
        for key, members in by_key.items():
            # decided by this call's rows alone (not by what is cached), so resumed and
            # sharded runs take the same path for every row and stay bit-identical
            if not key or len(members) < 2:
                rest.extend(members)
                continue
            if key not in self._prefixes:
                if len(self._prefixes) >= _PREFIX_CACHE_SIZE:
                    self._prefixes.pop(next(iter(self._prefixes)))
                self._prefixes[key] = self._run_prefix(key)
            groups.append((self._prefixes[key], members))
        if rest:
            groups.append((None, sorted(rest)))
        return groups

    def score_records(self, records: list[Record], on_batch: Callable[[int], None] | None = None) -> list[dict]:
        """One result row per (record, layer), sorted by (row, layer).

        ``on_batch(n_rows)`` runs after each forward batch (progress, or raising to stop).
        """
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
        for prefix, members in self._prefix_groups(live, rendered):
            # the budget counts the prefix too: each row attends to (and holds a copy of) its keys/values
            for batch in make_batches([len(rendered[i].ids) for i in members], self.opt.batch_tokens):
                idx = [members[j] for j in batch]
                items = [rendered[i] for i in idx]
                hidden = self.forward_hidden([r.ids for r in items], prefix)
                self.tokens_seen += sum(len(r.ids) for r in items)
                for layer in self.layer_idx:
                    intra, inter = self._terms(hidden[layer], items)
                    for k, i in enumerate(idx):
                        out.append(self._row(records[i], items[k], layer, intra[k], inter[k]))
                if on_batch:
                    on_batch(len(idx))
        out.sort(key=lambda d: (d["row"], d["layer"]))
        return out


def build_scorer(opt: ScoreOptions, loaded=None):
    """Resolve device and dtype, load the model unless given, and build its Scorer.

    Returns ``(scorer, loaded, device, dtype)``.
    """
    from anglerank import models

    device = resolve_device(opt.device)
    dtype = resolve_dtype(opt.dtype, device)
    if loaded is None:
        loaded = models.load(opt.model, device=device, dtype=dtype)
    renderer = Renderer(loaded.tokenizer, opt.preset, opt.system, opt.prefix, opt.max_length)
    return Scorer(loaded.model, loaded.tokenizer, renderer, opt, device), loaded, device, dtype


# --- file-level run --------------------------------------------------------------------

SETTINGS_KEYS = (
    "weights_fingerprint", "template_fingerprint", "preset", "system", "prefix", "site", "layers",
    "estimator", "w_intra", "w_inter", "code_prefix_tokens", "code_suffix_tokens", "max_length",
    "dtype", "prompt_column", "id_column", "inputs_fingerprint", "limit", "window_rows", "batch_tokens",
    "prefix_cache",
)


class _Abort(Exception):
    """Drop the window in flight (a stop was requested between two batches)."""


def _inputs_fingerprint(files: list[dict]) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in files:
        h.update(f"{f['fingerprint']}:{f['rows']};".encode())
    return h.hexdigest()[:16]


def auto_window_rows(total: int) -> int:
    """Read-ahead window (rows bucketed together): a function of the row count only.

    Windows sit on a global grid of this size and shard boundaries fall on it too, so
    a sharded or resumed run forms exactly the batches of a single uninterrupted run
    and its output is bit-identical. It reaches its cap at 1,024 rows, so memory use
    is the same for any dataset beyond that (inputs under 1,024 rows have at most
    about four windows, hence at most four non-empty shards).
    """
    return min(256, max(8, -(-total // 4)))


def shard_range(total: int, num_shards: int, shard_index: int, window_rows: int) -> tuple[int, int]:
    """Rows [start, stop) of one shard: contiguous whole windows, deterministic, every row once."""
    if not 0 <= shard_index < num_shards:
        raise UserError(f"--shard-index must be in 0..{num_shards - 1}")
    units = -(-total // window_rows)
    lo = (units * shard_index) // num_shards
    hi = (units * (shard_index + 1)) // num_shards
    return min(total, lo * window_rows), min(total, hi * window_rows)


def shard_dir(output: Path, shard_index: int, num_shards: int) -> Path:
    return Path(output) / f"shard-{shard_index:05d}-of-{num_shards:05d}"


def distributed_env() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) under torchrun, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return None


class _SignalGuard:
    """Turn Ctrl-C / SIGTERM into a clean stop between batches; a second signal stops at once."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        def handler(signum, frame):
            if self.signum is not None:
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
    window_rows: int | None = None,
    commit_every: int = 4096,
    num_shards: int | None = None,
    shard_index: int | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    loaded=None,
    warn: Callable[[str], None] | None = None,
    **option_kwargs,
) -> dict:
    """Score Parquet ``inputs`` into the directory ``output``; return the manifest.

    ``options`` (or keyword arguments of :class:`ScoreOptions`) select model, preset,
    site, layers, estimator and performance settings. ``progress(done, total, tokens)``
    is called after each batch. Pass ``loaded`` (a models.LoadedModel) to reuse a model.
    With ``num_shards``/``shard_index`` (or under torchrun) this process scores one
    shard into ``output/shard-IIIII-of-NNNNN``; :func:`anglerank.merge.merge` joins them.
    """
    from anglerank import models

    opt = options or ScoreOptions(**option_kwargs)
    if limit is not None and limit < 0:
        raise UserError("--limit must be >= 0")
    dist_env = distributed_env()
    if num_shards is None and dist_env is not None:
        shard_index, num_shards = dist_env[0], dist_env[1]
        if opt.device == "auto" and torch.cuda.is_available():
            opt.device = f"cuda:{dist_env[2]}"
    num_shards = num_shards or 1
    shard_index = shard_index or 0
    if num_shards < 1:
        raise UserError("--num-shards must be >= 1")

    source = ParquetSource(inputs, prompt_column=prompt_column, id_column=id_column)
    total = source.total_rows if limit is None else min(limit, source.total_rows)
    if source.total_rows == 0:
        raise InputError("the input has no rows")
    window_rows = window_rows or auto_window_rows(total)
    if window_rows < 1:
        raise ValueError("window_rows must be positive")
    if commit_every < 1:
        raise UserError("--commit-every must be positive")
    commit_every = max(window_rows, (commit_every // window_rows) * window_rows)
    row_start, row_stop = shard_range(total, num_shards, shard_index, window_rows)
    scorer, loaded, device, dtype = build_scorer(opt, loaded)
    model, tok = loaded.model, loaded.tokenizer
    files = source.fingerprints()
    out = Path(output) if num_shards == 1 else shard_dir(output, shard_index, num_shards)

    manifest = {
        "anglerank_version": __version__,
        "model": loaded.name,
        "model_path": str(loaded.path),
        "weights_fingerprint": models.weights_fingerprint(loaded.path),
        "template_fingerprint": models.text_fingerprint(getattr(tok, "chat_template", None)),
        **{k: v for k, v in asdict(opt).items() if k not in ("model", "dtype", "device", "layers")},
        "layers": scorer.layer_idx,
        "num_layers": len(hooks.decoder_layers(model)),
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
        "rows_expected": total,
        "num_shards": num_shards,
        "shard_index": shard_index,
        "row_start": row_start,
        "row_stop": row_stop,
    }
    start_row, prev, fresh = row_start, None, True
    if resume and read_manifest(out) is not None:
        prev = read_manifest(out)
        diffs = [k for k in SETTINGS_KEYS + ("num_shards", "shard_index") if prev.get(k) != manifest.get(k)]
        if diffs:
            raise OutputError(
                f"cannot resume {out}: settings differ from the interrupted run ({', '.join(diffs)}); "
                "use the original settings or a new output directory"
            )
        fresh = False
        start_row = int(prev.get("next_row", row_start))
        recorded = {p["file"] for p in prev["parts"]}
        for f in out.glob("scores-*.arrow"):  # written but never committed (killed mid-rename)
            if f.name not in recorded:
                f.unlink()
        for f in out.glob(".*.tmp"):
            f.unlink()
        manifest["parts"] = prev["parts"]
        for k in ("started_at", "elapsed_s", "tokens"):
            manifest[k] = prev.get(k, 0)
    else:
        prepare_output_dir(out, overwrite)
        manifest.update(started_at=time.time(), elapsed_s=0.0, tokens=0)
    writer = ScoreWriter(out, score_schema(source.id_type, with_layer=True), manifest)
    if prev is not None and prev.get("complete"):
        return writer.finish(row_stop, finished_at=prev.get("finished_at"))

    t0, base_elapsed, base_tokens = time.perf_counter(), manifest["elapsed_s"], manifest["tokens"]

    def stats() -> dict:
        el = base_elapsed + time.perf_counter() - t0
        tokens = base_tokens + scorer.tokens_seen
        return {"elapsed_s": round(el, 3), "tokens": tokens,
                "tokens_per_s": round(tokens / el, 1) if el > 0 else None}

    done = start_row
    window: list[Record] = []
    with _SignalGuard() as guard:
        def on_batch(rows_in_batch: int):
            if progress:
                on_batch.partial += rows_in_batch
                progress(min(done + on_batch.partial, row_stop) - row_start, row_stop - row_start,
                         base_tokens + scorer.tokens_seen)
            if guard.signum is not None:
                raise _Abort

        def flush_window():
            nonlocal done, window
            on_batch.partial = 0
            writer.add(scorer.score_records(window, on_batch=on_batch))
            done = window[-1].row + 1
            window = []
            if progress:
                progress(done - row_start, row_stop - row_start, base_tokens + scorer.tokens_seen)
            if done % commit_every == 0:
                writer.commit(done, **stats())
            _release_free_memory()

        on_batch.partial = 0
        if progress:
            progress(done - row_start, row_stop - row_start, base_tokens)
        try:
            try:
                for rec in source.iter_records(start_row, row_stop):
                    window.append(rec)
                    if (rec.row + 1) % window_rows == 0:  # a global grid: shards form the same windows
                        flush_window()
                        if guard.signum is not None:
                            break
                if guard.signum is None and window:
                    flush_window()
            except (_Abort, KeyboardInterrupt):
                guard.signum = guard.signum or signal.SIGINT
            except InputError:
                raise
            except (OSError, pa.ArrowException) as exc:
                if isinstance(exc, OSError) and exc.errno is not None:
                    raise  # a real I/O error (disk full, permissions): handled below
                raise InputError(f"cannot read the input after row {done}: {str(exc).splitlines()[0][:200]}") from None
            if guard.signum is not None:
                writer.commit(done, **stats())
                code = 130 if guard.signum == signal.SIGINT else 143
                raise Interrupted(
                    code,
                    f"interrupted after {done - row_start} of {row_stop - row_start} rows; committed output "
                    f"is in {out}. Continue with the same command plus --resume",
                )
            manifest = writer.finish(done, **stats(), finished_at=time.time())
        except InputError:
            if fresh:  # unreadable input: leave nothing half-written behind
                _remove_output(out)
            raise
        except OSError as exc:
            raise OutputError(
                f"writing {out} failed ({exc.strerror or exc}); committed parts are intact: free space or fix "
                "the problem, then rerun with --resume"
            ) from None
    dup = _duplicate_ids(out, manifest)
    if dup:
        manifest["duplicate_ids"] = dup
        write_json_atomic(out / MANIFEST, manifest)
        if warn:
            warn(f"{dup} duplicate id value(s) in column {source.id_column!r}; all rows were kept")
    return manifest


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS after each window.

    Batches of varying shapes fragment glibc's heap, so without this the resident
    size creeps up with the number of rows scored even though nothing is retained.
    """
    try:
        import ctypes

        _release_free_memory.libc = getattr(_release_free_memory, "libc", None) or ctypes.CDLL("libc.so.6")
        _release_free_memory.libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _remove_output(out: Path) -> None:
    for f in own_files(out):
        f.unlink(missing_ok=True)
    try:
        out.rmdir()
    except OSError:
        pass


def _duplicate_ids(out: Path, manifest: dict) -> int:
    """Number of id values that occur on more than one row (checked once, at the end)."""
    if not manifest.get("id_column"):
        return 0
    import pyarrow.compute as pc
    import pyarrow.ipc as ipc

    cols = []
    for part in manifest["parts"]:
        with ipc.open_file(out / part["file"]) as r:
            t = r.read_all().select(["id", "layer"])
        cols.append(t.filter(pc.equal(t["layer"], manifest["layers"][0]))["id"])
    if not cols:
        return 0
    ids = pa.chunked_array([c for col in cols for c in col.chunks], type=cols[0].type)
    ids = pc.drop_null(ids)
    return int(len(ids) - pc.count_distinct(ids).as_py())
