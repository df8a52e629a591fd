"""Scoring prompts by angle concentration.

``engine`` holds the in-process :class:`~anglerank.scoring.engine.Scorer` (options,
batching, the shared-prefix cache); ``run`` turns it into a resumable run over Parquet
files (plan, resume, windows, finish); ``distributed`` holds the row grid, shards,
torchrun and merge. Import the submodule you need: this package imports nothing, so
``anglerank merge`` runs without torch.
"""
