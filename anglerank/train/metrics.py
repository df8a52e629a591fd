"""The run's log files: ``metrics.jsonl`` and ``subsets.jsonl``, one JSON object a line.

Append-only, so a crash loses at most the line being written; a checkpoint
records each file's size and a resume truncates them back to it, so the logs
always describe exactly the training the weights have seen.
"""

from __future__ import annotations

import json
import warnings
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
    """Records of ``RUN_DIR/metrics.jsonl`` (optionally only one ``type``).

    A last line cut short (the process was killed while writing it) is skipped with a
    warning; a bad line anywhere else means the file is not a run's log: an error.
    """
    from anglerank.errors import UserError

    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise UserError(f"no metrics.jsonl in {run_dir}")
    lines = path.read_text(errors="replace").splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                warnings.warn(f"{path}: skipped its last line, cut short (the run was killed while writing it)",
                              stacklevel=2)
                break
            raise UserError(f"{path}: line {i + 1} is not JSON; is this a run's metrics.jsonl?") from None
    return [r for r in out if kind is None or r.get("type") == kind]
