"""What a score manifest records, and which of it must match for outputs to be joined.

A score directory is only trustworthy if every part in it was computed the same way:
``--resume`` continues an interrupted run only with the settings it started with, and
``anglerank merge`` joins shards only if they agree. This module is the one place
that builds those settings and compares them, so the two checks cannot drift apart.
It imports neither torch nor the scoring engine (merge runs without them).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict

from anglerank import __version__
from anglerank.data.writer import OutputError
from anglerank.model import loading
from anglerank.scoring.options import ScoreOptions
from anglerank.settings import result_keys

# Settings that decide the numbers (or the rows) of every part; must match between
# the parts of one run (resume) and between the shards of one run (merge): the facts of the
# model and the input, then every scoring setting declared as changing results.
SETTINGS_KEYS = (
    "weights_fingerprint", "template_fingerprint", "prompt_column", "id_column", "inputs_fingerprint", "limit",
    "window_rows", *result_keys(ScoreOptions),
)
# a resumed run must also be the same shard
RESUME_KEYS = SETTINGS_KEYS + ("num_shards", "shard_index")


def inputs_fingerprint(files: list[dict]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f['fingerprint']}:{f['rows']};".encode())
    return h.hexdigest()[:16]


def build(options, loaded, *, layers: list[int], num_layers: int, dtype: str, device: str, source,
          limit: int | None, window_rows: int, commit_every: int, rows_expected: int,
          num_shards: int, shard_index: int, row_start: int, row_stop: int) -> dict:
    """The manifest of a new run, before any part: how it was scored and which rows it covers.

    ``options`` is the scorer's (resolved) ScoreOptions, ``loaded`` a model.loading.LoadedModel,
    ``source`` the ParquetSource being scored.
    """
    files = source.fingerprints()
    return {
        "anglerank_version": __version__,
        "model": loaded.name,
        "model_path": str(loaded.path),
        "weights_fingerprint": loading.weights_fingerprint(loaded.path),
        "template_fingerprint": loading.text_fingerprint(getattr(loaded.tokenizer, "chat_template", None)),
        **{k: v for k, v in asdict(options).items() if k not in ("model", "dtype", "device", "layers")},
        "layers": layers,
        "num_layers": num_layers,
        "dtype": dtype,
        "device": device,
        "prompt_column": source.prompt_column,
        "id_column": source.id_column,
        "inputs": files,
        "inputs_fingerprint": inputs_fingerprint(files),
        "input_rows": source.total_rows,
        "limit": limit,
        "window_rows": window_rows,
        "commit_every": commit_every,
        "rows_expected": rows_expected,
        "num_shards": num_shards,
        "shard_index": shard_index,
        "row_start": row_start,
        "row_stop": row_stop,
    }


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def require_same(expected: dict, got: dict, keys, *, what: str, remedy: str) -> None:
    """Raise one OutputError naming every differing key (``expected`` value -> ``got`` value)."""
    diffs = [k for k in keys if got.get(k) != expected.get(k)]
    if diffs:
        changes = ", ".join(f"{k}: {_show(expected.get(k))} -> {_show(got.get(k))}" for k in diffs)
        raise OutputError(f"{what} ({changes}); {remedy}")


def check_resume(previous: dict, current: dict, out) -> None:
    """The interrupted run in ``out`` and this command must score the same way."""
    require_same(previous, current, RESUME_KEYS,
                 what=f"cannot resume {out}: settings differ from the interrupted run",
                 remedy="use the original settings or a new output directory")


def check_shards(manifests: list[dict]) -> None:
    """Every shard must have been scored with the settings of shard 0."""
    for i, m in enumerate(manifests[1:], 1):
        require_same(manifests[0], m, SETTINGS_KEYS,
                     what=f"shard {i} was scored with different settings than shard 0",
                     remedy=f"rescore shard {i} with the settings of the others")
