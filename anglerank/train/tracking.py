"""Experiment tracking: TensorBoard, Weights & Biases and Trackio, as TRL's ``--report-to``.

Every record the loop writes to ``metrics.jsonl`` also goes to the trackers the
run asked for, under TRL's metric names where the meaning is the same
(``reward``, ``reward_std``, ``completions/mean_length``, ``kl``,
``clip_ratio/region_mean``, ``learning_rate``, ``grad_norm``, ...) and under
``gainrl/...`` and ``eval/...`` for the curriculum and the evaluations (the
table is :data:`NAMES`). ``metrics.jsonl`` stays the run's own record.

Offline by default: TensorBoard writes ``RUN_DIR/tensorboard``; wandb runs in
offline mode under ``RUN_DIR/wandb`` unless ``WANDB_MODE`` says otherwise
(``wandb sync`` uploads it later); Trackio writes its local database
(``TRACKIO_DIR``; ``anglerank train`` points it at ``RUN_DIR/trackio`` unless
set). A tracker that is not installed is one error at start-up, before any
training, never a failure mid-run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
from pathlib import Path

from anglerank.errors import MissingExtra

__all__ = ["REPORT_TO", "NAMES", "Tracker", "check_report_to", "scalars"]

REPORT_TO = ("none", "tensorboard", "wandb", "trackio")
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}

# metrics.jsonl record type -> {field: tracker name}; TRL's names where TRL has the metric.
NAMES = {
    "step": {"reward_mean": "reward", "reward_std": "reward_std", "loss": "loss", "kl": "kl",
             "clip_fraction": "clip_ratio/region_mean", "completion_len_mean": "completions/mean_length",
             "completion_len_max": "completions/max_length", "truncated_fraction": "completions/clipped_ratio",
             "zero_std_fraction": "frac_reward_zero_std", "lr": "learning_rate", "grad_norm": "grad_norm",
             "accuracy": "train/accuracy", "angle": "gainrl/step_angle", "skipped_updates": "train/skipped_updates",
             "tokens_per_s": "perf/tokens_per_s"},
    "epoch": {"mu": "gainrl/mu", "mu_next": "gainrl/mu_next", "delta": "gainrl/delta", "accuracy": "gainrl/accuracy",
              "angle": "gainrl/angle", "passes": "gainrl/passes", "subset_mean_rank": "gainrl/subset_mean_rank",
              "rescore_s": "gainrl/rescore_s", "epoch": "epoch"},
    "eval": {"eval_accuracy": "eval/accuracy", "eval_completion_len_mean": "eval/completions/mean_length"},
    "score": {"seconds": "gainrl/score_s", "spearman_prev": "gainrl/score_spearman_prev"},
    "staleness": {"spearman": "gainrl/staleness_spearman", "spearman_window": "gainrl/staleness_spearman_window"},
}


def check_report_to(names) -> list[str]:
    """The trackers asked for ("none" means none), from names TrainConfig has checked; an uninstalled
    one is an error now, before anything runs."""
    chosen = [n for n in dict.fromkeys(names) if n != "none"]
    missing = [n for n in chosen if importlib.util.find_spec(_PACKAGE[n]) is None]
    if missing:
        raise MissingExtra(f"--report-to {' '.join(missing)} needs {', '.join(_PACKAGE[n] for n in missing)}: "
                           f"pip install {' '.join(_PACKAGE[n] for n in missing)} (or pip install 'anglerank[track]')")
    return chosen


def scalars(kind: str, rec: dict) -> dict[str, float]:
    """The tracker scalars of one metrics record (finite numbers only)."""
    out = {name: rec.get(key) for key, name in NAMES.get(kind, {}).items()}
    if kind == "step":
        out.update({f"rewards/{k.split('/', 1)[1]}/mean": v for k, v in rec.items() if k.startswith("reward/")})
    if kind == "eval":
        out.update({f"eval/accuracy/{k}": v for k, v in (rec.get("eval_accuracy_by") or {}).items()})
    return {k: float(v) for k, v in out.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class Tracker:
    """Sends every metrics record to the chosen trackers; ``close()`` flushes them."""

    def __init__(self, names: list[str], run_dir: Path, config: dict, resumed_at: int = 0):
        self.backends = [_BACKENDS[n](Path(run_dir), config, resumed_at) for n in names]

    def log(self, kind: str, rec: dict) -> None:
        values = scalars(kind, rec)
        if values and self.backends:
            step = int(rec.get("step") or 0)
            for b in self.backends:
                b.log(values, step)

    def close(self) -> None:
        for b in self.backends:
            b.close()


class _TensorBoard:
    def __init__(self, run_dir: Path, config: dict, resumed_at: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run drops the events logged after its checkpoint, as metrics.jsonl does
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=resumed_at or None)
        if not resumed_at:
            self.writer.add_text("config", "\n".join(f"    {k} = {v!r}" for k, v in config.items()))

    def log(self, values: dict, step: int) -> None:
        for name, v in values.items():
            self.writer.add_scalar(name, v, step)

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, run_dir: Path, config: dict, resumed_at: int):
        import wandb

        # one id per run directory, so a resume continues the same wandb run
        run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "anglerank"), name=run_dir.name, id=run_id,
                              dir=str(run_dir), config=config, resume="allow",
                              mode=os.environ.get("WANDB_MODE", "offline"))

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _Trackio:
    def __init__(self, run_dir: Path, config: dict, resumed_at: int):
        import trackio

        self.trackio = trackio
        trackio.init(project=os.environ.get("TRACKIO_PROJECT", "anglerank"), name=run_dir.name, config=config,
                     resume="allow")

    def log(self, values: dict, step: int) -> None:
        self.trackio.log(values, step=step)

    def close(self) -> None:
        self.trackio.finish()


_BACKENDS = {"tensorboard": _TensorBoard, "wandb": _Wandb, "trackio": _Trackio}
