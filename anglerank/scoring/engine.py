"""The in-process scoring engine: records -> rendered ids -> length-bucketed batches ->
hooked forward -> angle terms -> one result row per (record, layer).

It knows nothing about files: :mod:`anglerank.scoring.run` wraps it with Parquet input,
output parts and resume, and the trainer uses it directly to re-score with live weights.
"""

from __future__ import annotations

import gc
import math
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import torch

from anglerank import angles
from anglerank.data.reader import Record
from anglerank.data.values import finite_or_none
from anglerank.errors import UserError
from anglerank.model import hooks, loading
from anglerank.model.device import cpu_description, default_batch_tokens, resolve_device, resolve_dtype
from anglerank.model.render import Renderer
from anglerank.scoring import estimators, memory
from anglerank.scoring.options import ScoreOptions

# torch < 2.5 has the class only under torch.cuda (the same class in later versions)
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _release_device_memory() -> None:
    """What a failed batch held goes back to the device (reference cycles included)."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# --- batching ---------------------------------------------------------------------------

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


# --- the shared-prefix cache ------------------------------------------------------------

# Model families whose cached forward is tested equal to the uncached one (tests/unit/scoring/test_score.py);
# others always run the whole prompt.
PREFIX_CACHE_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral", "gemma2", "gpt2", "gpt_neox"})


@dataclass
class Prefix:
    """A token prefix run once: its per-layer keys/values and its hidden states at the site."""

    length: int
    kv: list  # [(keys [1, H, P, dh], values), ...] for layers 0..deepest
    hidden: dict  # layer -> [P, D]


def _weights_version(model) -> tuple:
    """Changes whenever a parameter is modified in place (optimizer steps, load_state_dict) or replaced."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


class PrefixCache:
    """Prefixes shared by rows (system prompt, few-shot turns, template header), run once.

    At most ``size`` prefixes are kept (oldest dropped first), and all are dropped when
    the model's weights change, so a trainer re-scoring with live weights never sees
    stale keys/values.
    """

    def __init__(self, model, run_prefix: Callable[[tuple], Prefix], size: int = 8):
        self.model = model
        self.run_prefix = run_prefix
        self.size = size
        self._prefixes: dict[tuple, Prefix] = {}
        self._version = None

    def __len__(self) -> int:
        return len(self._prefixes)

    def _get(self, key: tuple) -> Prefix:
        if key not in self._prefixes:
            if len(self._prefixes) >= self.size:
                self._prefixes.pop(next(iter(self._prefixes)))
            self._prefixes[key] = self.run_prefix(key)
        return self._prefixes[key]

    def groups(self, live: list[int], rendered: list) -> list[tuple[Prefix | None, list[int]]]:
        """Split rows into groups sharing a prefix (at least two rows each) and the rest."""
        version = _weights_version(self.model)
        if version != self._version:  # new weights: cached keys/values are stale
            self._prefixes, self._version = {}, version
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
            groups.append((self._get(key), members))
        if rest:
            groups.append((None, sorted(rest)))
        return groups


# --- the engine -------------------------------------------------------------------------

class Scorer:
    """Scores records with a loaded model; independent of files and CLI.

    ``options`` is copied, never changed: the copy in :attr:`opt` has ``batch_tokens``
    resolved for ``device`` (:attr:`budget_basis` says how). A batch that runs out of
    device memory is scored again in smaller batches, and the smaller budget
    (:attr:`batch_tokens`) stays; :attr:`backoffs` records each step and ``warn`` is told
    once. ``num_layers`` is the checkpoint's depth when ``model`` holds fewer layers
    (negative layer indices count from its end).
    """

    def __init__(self, model, tokenizer, renderer: Renderer, options: ScoreOptions, device: str,
                 num_layers: int | None = None, warn: Callable[[str], None] | None = None):
        self.model = model
        self.tok = tokenizer
        self.renderer = renderer
        self.device = device
        self.num_layers = num_layers or len(hooks.decoder_layers(model))
        self.layer_idx = hooks.parse_layers(model, options.layers, self.num_layers)
        for idx in self.layer_idx:
            hooks.site_module(model, idx, options.site)  # fail early on unsupported layouts
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self.tokens_seen = 0
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        use_cache = options.prefix_cache and model_type in PREFIX_CACHE_TYPES
        self.prefix_cache = PrefixCache(model, self._run_prefix) if use_cache else None
        budget, self.budget_basis = self._budget(options)
        self.opt = replace(options, batch_tokens=budget)
        self.estimator = estimators.get(options.estimator).from_options(self.opt)
        self.batch_tokens = budget
        self.backoffs: list[dict] = []
        self.warn = warn or (lambda msg: warnings.warn(msg, RuntimeWarning, stacklevel=2))
        self._warned = False

    def _budget(self, options: ScoreOptions) -> tuple[int, dict]:
        """The batch budget and why it was chosen (recorded in the manifest)."""
        if options.batch_tokens is not None:
            return options.batch_tokens, {"source": "given"}
        if str(self.device).startswith("cuda"):
            budget = memory.cuda_budget(self.model, self.layer_idx, options.max_length, self.prefix_cache is not None)
            unknown = {"source": "GPU default (model shape or free memory unknown)"}
            return budget or (default_batch_tokens(self.device), unknown)
        if self.device == "cpu":
            return default_batch_tokens("cpu"), {"source": "CPU default", "cpu": cpu_description()}
        return default_batch_tokens(self.device), {"source": "default"}

    def continue_backoffs(self, backoffs: list[dict]) -> None:
        """Go on from an earlier run's back-offs (a resumed run): their smallest budget, their record."""
        self.backoffs = [dict(b) for b in backoffs]
        if self.backoffs:
            self.batch_tokens = min(self.batch_tokens, min(b["to"] for b in self.backoffs))

    @property
    def use_prefix_cache(self) -> bool:
        return self.prefix_cache is not None

    def _terms(self, hidden_BTD: torch.Tensor, items, prefix: Prefix | None = None,
               layer: int | None = None) -> tuple[list[float], list[float]]:
        """Angle terms of a batch; with ``prefix`` (a ``prefix_as_sum`` estimator) ``hidden_BTD`` holds only
        the tokens after it, and the prefix's own hidden states at ``layer`` stand for P."""
        return self.estimator.terms(hidden_BTD, items, prefix.hidden[layer] if prefix else None)

    def _note(self, r, intra: float, inter: float) -> str | None:
        notes = [r.note] if r.note else []
        own = self.estimator.note(r, intra, inter)
        if own:
            notes.append(own)
        return "; ".join(notes) or None

    def _row(self, rec: Record, r, layer: int, intra: float, inter: float) -> dict:
        intra_v, inter_v = finite_or_none(intra), finite_or_none(inter)
        score = None
        if intra_v is not None and inter_v is not None:
            score = angles.combine(intra_v, inter_v, self.opt.w_intra, self.opt.w_inter)
        return {
            "row": rec.row, "id": rec.id, "layer": layer,
            "n_tokens": len(r.ids), "n_prefix": r.n_prefix, "n_question": r.n_question,
            "intra": intra_v, "inter": inter_v, "score": score,
            "truncated": r.truncated, "note": self._note(r, intra, inter) if r.ids else r.note,
        }

    @torch.inference_mode()
    def forward_hidden(self, id_lists: list[list[int]], prefix: Prefix | None = None) -> dict[int, torch.Tensor]:
        """Hidden states [B, T, D] at every requested layer for right-padded ids.

        With ``prefix`` (every list starts with its tokens) only the rest of each list
        runs, on top of the prefix's cached keys/values; the prefix's hidden states are
        prepended, so the result is the same as without it.
        """
        captured = self._forward_new(id_lists, prefix)
        if prefix:
            B = len(id_lists)
            return {l: torch.cat([prefix.hidden[l].expand(B, -1, -1), h], dim=1) for l, h in captured.items()}
        return captured

    @torch.inference_mode()
    def _forward_new(self, id_lists: list[list[int]], prefix: Prefix | None) -> dict[int, torch.Tensor]:
        """:meth:`forward_hidden` without prepending the prefix: only the tokens after it."""
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
        return dict(captured)

    @torch.inference_mode()
    def _run_prefix(self, ids: tuple) -> Prefix:
        from transformers import DynamicCache

        cache = DynamicCache()
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        with hooks.capture(self.model, self.layer_idx, self.opt.site) as captured:
            hooks.run_until_captured(self.model, x, torch.ones_like(x), cache)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        return Prefix(len(ids), kv, {l: h[0] for l, h in captured.items()})

    def _render(self, records: list[Record]) -> list:
        rendered = []
        for rec in records:
            if rec.question is None and rec.note:  # the reader already knows why there is no question
                rendered.append(self.renderer.render(None))
                rendered[-1].note = rec.note
            else:
                rendered.append(self.renderer.render(rec.question, rec.history))
        return rendered

    def score_records(self, records: list[Record], on_batch: Callable[[int], None] | None = None) -> list[dict]:
        """One result row per (record, layer), sorted by (row, layer).

        ``on_batch(n_rows)`` runs after each forward batch (progress, or raising to stop).
        """
        rendered = self._render(records)
        out = []
        live = [i for i, r in enumerate(rendered) if r.ids]
        for i, r in enumerate(rendered):
            if not r.ids:
                out.extend(self._row(records[i], r, l, math.nan, math.nan) for l in self.layer_idx)
        for prefix, members in self._groups(live, rendered):
            self._score_group(prefix, members, records, rendered, out, on_batch)
        out.sort(key=lambda d: (d["row"], d["layer"]))
        return out

    def _groups(self, live: list[int], rendered: list) -> list[tuple[Prefix | None, list[int]]]:
        if self.prefix_cache is None:
            return [(None, live)]
        try:
            return self.prefix_cache.groups(live, rendered)
        except OUT_OF_MEMORY:
            pass  # out of the handler: the traceback and the activations it holds are gone
        _release_device_memory()
        raise UserError(f"out of memory running a prompt prefix shared by rows on {self.device}; lower "
                        f"--max-length (now {self.opt.max_length}) or score with --no-prefix-cache")

    def _score_group(self, prefix: Prefix | None, members: list[int], records: list[Record], rendered: list,
                     out: list[dict], on_batch: Callable[[int], None] | None) -> None:
        """Score rows sharing ``prefix`` batch by batch; after a back-off the rows not yet scored are
        batched again under the smaller budget."""
        # an estimator that needs P only as a sum gets it once from the prefix's own hidden
        # states; others read whole rows, prefix included
        split = prefix is not None and self.estimator.prefix_as_sum
        left = list(members)
        while left:
            done = set()
            # the budget counts the prefix too: each row attends to (and holds a copy of) its keys/values
            for batch in make_batches([len(rendered[i].ids) for i in left], self.batch_tokens):
                idx = [left[j] for j in batch]
                items = [rendered[i] for i in idx]
                terms = self._batch_terms(items, prefix, split)
                if terms is None:
                    self._back_off(items, [records[i] for i in idx])
                    break
                self.tokens_seen += sum(len(r.ids) for r in items)
                for layer, (intra, inter) in terms.items():
                    for k, i in enumerate(idx):
                        out.append(self._row(records[i], items[k], layer, intra[k], inter[k]))
                done.update(idx)
                if on_batch:
                    on_batch(len(idx))
            left = [i for i in left if i not in done]

    def _batch_terms(self, items: list, prefix: Prefix | None, split: bool) -> dict | None:
        """{layer: (intra, inter)} of one batch, or None when the device ran out of memory."""
        try:
            ids = [r.ids for r in items]
            hidden = self._forward_new(ids, prefix) if split else self.forward_hidden(ids, prefix)
            return {l: self._terms(hidden[l], items, prefix if split else None, l) for l in self.layer_idx}
        except OUT_OF_MEMORY:
            return None  # out of the handler: the traceback and the activations it holds are gone

    def _back_off(self, items: list, recs: list[Record]) -> None:
        """After a batch ran out of memory: free what it held and halve the budget below its size; a
        single row that does not fit is the user's to fix."""
        _release_device_memory()
        padded = max(len(r.ids) for r in items) * len(items)
        if len(items) == 1:
            raise UserError(f"out of memory scoring row {recs[0].row} ({padded} tokens) on its own on {self.device}; "
                            f"lower --max-length (now {self.opt.max_length}) or spread the model over more GPUs "
                            "with --device-map auto")
        smaller = max(1, min(self.batch_tokens, padded) // 2)
        self.backoffs.append({"from": self.batch_tokens, "to": smaller, "rows": len(items),
                              "first_row": min(r.row for r in recs), "padded_tokens": padded})
        if not self._warned:
            self._warned = True
            self.warn(f"out of memory on a batch of {len(items)} rows ({padded} tokens with padding) at "
                      f"{self.batch_tokens} tokens per batch; scoring on with {smaller} (the manifest records "
                      "each step as batch_tokens_backoff)")
        self.batch_tokens = smaller


def build_scorer(opt: ScoreOptions, loaded=None, *, truncate: bool = False,
                 warn: Callable[[str], None] | None = None):
    """Resolve device and dtype, load the model unless given, and build its Scorer.

    With ``truncate`` a model loaded here holds only the decoder layers up to the deepest
    hooked one and no LM head (for callers that only score). ``warn`` hears about
    out-of-memory back-offs. Returns ``(scorer, loaded, device, dtype)``; ``opt`` is left
    as it was given.
    """
    device = resolve_device(opt.device)
    dtype = resolve_dtype(opt.dtype, device)
    if loaded is None:
        keep = (lambda depth: max(hooks.layer_indices(depth, opt.layers)) + 1) if truncate else None
        loaded = loading.load(opt.model, device=device, dtype=dtype, keep_layers=keep, device_map=opt.device_map)
    if opt.device_map is not None:  # the ids go where the embedding is; accelerate moves the rest
        device = str(loaded.model.get_input_embeddings().weight.device)
    renderer = Renderer(loaded.tokenizer, opt.preset, opt.system, opt.prefix, opt.max_length)
    scorer = Scorer(loaded.model, loaded.tokenizer, renderer, opt, device, num_layers=loaded.num_layers, warn=warn)
    return scorer, loaded, device, dtype
