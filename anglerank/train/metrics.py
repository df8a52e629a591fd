"""The run's log files: ``metrics.jsonl`` and ``subsets.jsonl``, one JSON object a line.

Append-only, so a crash loses at most the line being written; a checkpoint
records each file's size and a resume truncates them back to it, so the logs
always describe exactly the training the weights have seen.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["Jsonl", "read_metrics"]


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


class Jsonl:
    """An append-only JSON-lines file."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def write(self, rec: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec, default=_json_default) + "\n")

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, size: int) -> None:
        """Forget lines written after a checkpoint (a run killed later than its last checkpoint)."""
        with open(self.path, "r+b" if self.path.exists() else "w+b") as fh:
            fh.truncate(size)

    def reset(self) -> None:
        self.path.write_text("")


def read_metrics(run_dir, kind: str | None = None) -> list[dict]:
    """Records of ``RUN_DIR/metrics.jsonl`` (optionally only one ``type``)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        from anglerank.errors import UserError

        raise UserError(f"no metrics.jsonl in {run_dir}")
    out = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in out if kind is None or r.get("type") == kind]
