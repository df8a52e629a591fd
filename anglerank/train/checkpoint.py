"""Run directories and checkpoints: what is saved, and how a run resumes exactly.

A checkpoint ``RUN_DIR/checkpoints/step-N/`` holds the weights (float32,
``from_pretrained``-loadable, with the tokenizer), the optimiser, the rollout
generator's state, and ``trainer_state.json``: the loop's counters (:class:`RunState`), the
current ranking and scores, the curriculum (sampler, open epoch, its
statistics) and the byte sizes of the log files. It is written to a temporary
folder and renamed, then ``LATEST`` is switched, so a crash never leaves a
half-written checkpoint as the newest.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from anglerank.errors import UserError
from anglerank.train.config import TrainConfig, load_toml

__all__ = ["RunState", "EpochMetrics", "prepare_run_dir", "latest_checkpoint", "save_checkpoint",
           "load_checkpoint", "resume_config", "RESUME_OVERRIDABLE", "RUN_FILES"]

STATE_VERSION = 2
RUN_FILES = ("config.toml", "inputs.json", "metrics.jsonl", "subsets.jsonl", "checkpoints", "curves.png")
# Settings a resumed run may change (they do not affect what was trained so far).
RESUME_OVERRIDABLE = ("epochs", "eval_every", "save_every", "keep_checkpoints", "eval_batch_size",
                      "generation_batch_size", "device", "threads", "gradient_checkpointing", "staleness_every",
                      "save_only_model", "report_to")


@dataclass
class EpochMetrics:
    """Sums over the open epoch's steps, for its metrics line."""

    completions: int = 0
    reward_sum: float = 0.0
    rollout_s: float = 0.0
    update_s: float = 0.0


@dataclass
class RunState:
    """The loop's counters and what it knows besides the weights, optimiser and curriculum."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # completed steps of the open epoch
    global_step: int = 0
    updates: int = 0  # optimiser updates (the LR schedule's clock)
    lr_horizon: int = 0  # the LR schedule's length in updates, fixed when the run starts (0: not recorded)
    scores: list | None = None  # per pool index (None: unscorable); None before the first scoring
    ranked_at: int = 0  # the epoch whose weights produced the ranking
    last_eval: dict | None = None
    nonfinite_streak: int = 0  # consecutive steps whose updates were skipped (non-finite loss or gradient)
    subset_info: dict = field(default_factory=dict)
    epoch_metrics: EpochMetrics = field(default_factory=EpochMetrics)
    elapsed_base: float = 0.0


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Create the run directory; return the checkpoint to resume from (or None: a fresh start).

    A run that stopped before its first checkpoint kept nothing to continue from, so
    both a rerun and ``--resume`` start it afresh (never a dead end).
    """
    ck = latest_checkpoint(run_dir) if run_dir.exists() else None
    if resume:
        if ck is not None:
            return ck
        if not (run_dir / "config.toml").exists():
            raise UserError(f"nothing to resume in {run_dir}: it holds no run (no config.toml)")
    elif ck is not None and not overwrite:
        raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or pass "
                        "--overwrite to start over")
    for n in RUN_FILES:
        p = run_dir / n
        if n != "config.toml" or not resume:  # --resume afresh reads the saved config; it is rewritten
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return None


def latest_checkpoint(run_dir) -> Path | None:
    marker = Path(run_dir) / "checkpoints" / "LATEST"
    if not marker.exists():
        return None
    p = marker.parent / marker.read_text().strip()
    return p if (p / "trainer_state.json").exists() else None


def save_checkpoint(run_dir: Path, model, tok, optimizer, generator: torch.Generator, st: RunState, curriculum,
                    pool_rows: list, log_sizes: dict, keep: int) -> Path:
    """Write ``checkpoints/step-N`` atomically, point ``LATEST`` at it, keep the newest ``keep``."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{st.global_step:07d}"
    final, tmp = root / name, root / f".tmp-{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:  # the step guard keeps them finite; this is the last line of defence
        raise RuntimeError(f"internal error: refusing to checkpoint non-finite weights ({len(bad)} tensors, e.g. "
                           f"{bad[0]})")
    _save_pretrained(model, tok, tmp)
    if optimizer is not None:  # None: --save-only-model
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    # torch's global generator drives dropout (LoRA's, or a model's own); the run seeds it, so it is saved too
    rng = {"rollouts": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    state = {"version": STATE_VERSION, "run": asdict(st), "order": [int(x) for x in curriculum.order],
             "curriculum": curriculum.state_dict(), "pool_rows": pool_rows, "log_sizes": log_sizes}
    (tmp / "trainer_state.json").write_text(json.dumps(state))
    if final.exists():  # the same step saved again (epoch end, then Ctrl-C): swap, then delete the old copy
        stale = root / f".old-{name}"
        os.replace(final, stale)
        os.replace(tmp, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(tmp, final)
    marker_tmp = root / "LATEST.tmp"
    marker_tmp.write_text(name)
    os.replace(marker_tmp, root / "LATEST")
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in done[: max(0, len(done) - keep)]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _save_pretrained(model, tok, folder: Path) -> None:
    from anglerank.models import quiet_hf_loading

    with quiet_hf_loading():  # no progress bars; the caller's logging settings come back
        model.save_pretrained(folder, safe_serialization=True)
        tok.save_pretrained(folder)


def load_checkpoint(path: Path, optimizer, generator: torch.Generator, curriculum,
                    pool_rows: list) -> tuple[RunState, dict]:
    """Restore the optimiser, rollout generator and curriculum from ``path``; return the run state and log sizes."""
    state = json.loads((path / "trainer_state.json").read_text())
    if state.get("version") != STATE_VERSION:
        raise UserError(f"{path}: unsupported checkpoint version {state.get('version')!r}")
    if state["pool_rows"] != pool_rows:
        raise UserError(f"{path}: the training prompts differ from the checkpoint's ({len(state['pool_rows'])} "
                        f"vs {len(pool_rows)} usable rows); resume with the same data and prompt settings")
    if (path / "optimizer.pt").exists():  # absent: saved with --save-only-model, so AdamW starts afresh
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    curriculum.set_order(state["order"])
    curriculum.load_state_dict(state["curriculum"])
    run = dict(state["run"])
    run["epoch_metrics"] = EpochMetrics(**run["epoch_metrics"])
    rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
    generator.set_state(rng["rollouts"])
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return RunState(**run), state["log_sizes"]


def record_inputs(run_dir: Path, cfg: TrainConfig) -> None:
    """Fingerprint the run's data (``inputs.json``) so a resume can tell when it changed."""
    (run_dir / "inputs.json").write_text(json.dumps(_fingerprints(cfg), indent=1))


def check_inputs(run_dir: Path, cfg: TrainConfig, force: bool) -> None:
    """Refuse to resume on data other than the run's (unless ``force``), naming what changed."""
    path = run_dir / "inputs.json"
    if not path.exists():  # runs from before inputs.json
        return
    saved, now = json.loads(path.read_text()), _fingerprints(cfg)
    changed = [f"{kind}: {', '.join(_names(saved.get(kind)))} then, {', '.join(_names(now[kind]))} now"
               for kind in now if [f["fingerprint"] for f in saved.get(kind) or []] !=
               [f["fingerprint"] for f in now[kind] or []]]
    if changed and not force:
        raise UserError(f"the data changed since {run_dir} started ({'; '.join(changed)}): a resumed run would "
                        "draw other prompts. Resume on the same files, or pass --force to continue anyway")


def _fingerprints(cfg: TrainConfig) -> dict:
    from anglerank.data.reader import ParquetFiles

    return {"train": ParquetFiles(cfg.train_data).fingerprints(),
            "eval": ParquetFiles(cfg.eval_data).fingerprints() if cfg.eval_data else None}


def _names(files) -> list[str]:
    return [f"{Path(f['path']).name} ({f['rows']} rows, {f['fingerprint'][:8]})" for f in files or []] or ["none"]


def resume_config(run_dir, overrides: dict) -> TrainConfig:
    """The saved config of ``run_dir`` with the allowed ``overrides`` applied.

    Any other setting given again must equal the saved value (a changed setting
    would make the continuation a different run).
    """
    path = Path(run_dir) / "config.toml"
    if not path.exists():
        raise UserError(f"{run_dir} has no config.toml; is it a run directory?")
    saved = load_toml(path)
    base = TrainConfig(**saved)
    values, conflicts = dict(saved), []
    for k, v in overrides.items():
        if v is None or k == "output_dir":
            continue
        if k in RESUME_OVERRIDABLE:
            values[k] = v
        elif getattr(base, k) != v and not (k in ("train_data", "eval_data") and
                                             [str(x) for x in v] == getattr(base, k)):
            conflicts.append(f"--{k.replace('_', '-')} ({getattr(base, k)!r} in the run, {v!r} given)")
    if conflicts:
        raise UserError("cannot resume with changed settings: " + "; ".join(conflicts) +
                        f". Only {', '.join('--' + k.replace('_', '-') for k in RESUME_OVERRIDABLE)} may change")
    values["output_dir"] = str(run_dir)
    return TrainConfig(**values)
