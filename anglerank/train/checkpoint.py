"""Run directories and checkpoints: what is saved, and how a run resumes exactly.

A checkpoint ``RUN_DIR/checkpoints/step-N/`` holds the weights (float32,
``from_pretrained``-loadable, with the tokenizer), the optimiser, the rollout
generator's state, and ``trainer_state.json``: the loop's counters (:class:`RunState`), the
current ranking and scores, the curriculum (sampler, open epoch, its
statistics) and the byte sizes of the log files. It is written to a temporary
folder and renamed, then ``LATEST`` is switched, so a crash never leaves a
half-written checkpoint as the newest, and a full disk stops the run with one
error naming the file while the previous checkpoint stays the newest.

A run directory may have been edited or planted with links since the run wrote
it: ``LATEST`` must name one of its own ``step-N`` folders, a symbolic link where
the run writes is refused, and a damaged ``trainer_state.json`` (or optimiser or
RNG file) is one error naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from anglerank.data.lock import LOCK_NAME
from anglerank.data.reader import ParquetFiles
from anglerank.errors import UserError, one_line
from anglerank.model.loading import quiet_hf_loading
from anglerank.train.config import RESUME_OVERRIDABLE, TrainConfig, dump_toml, load_toml
from anglerank.train.metrics import linked, replace_run_file, stage_run_file

__all__ = ["RunState", "EpochMetrics", "prepare_run_dir", "refuse_links", "start_run", "latest_checkpoint",
           "save_checkpoint", "load_checkpoint", "read_state", "write_failure", "share_weights", "resume_config",
           "RESUME_OVERRIDABLE", "RUN_FILES"]

STATE_VERSION = 2
_STEP = re.compile(r"step-\d{1,12}")  # a checkpoint folder's name
# how torch reports a failed write (a full disk): a RuntimeError of its C++ stream writer, without an errno
_TORCH_WRITE_ERRORS = ("PytorchStreamWriter", "inline_container", "file write failed")
RUN_FILES = ("config.toml", "inputs.json", "metrics.jsonl", "subsets.jsonl", "prompts.jsonl", "checkpoints",
             "curves.png", "prompts.png")


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
    rollouts: int = 0  # completions generated so far
    epoch_cursor: int = 0  # --filter-groups: prompts of the open epoch taken so far (its subset, then epoch_extra)
    epoch_extra: list = field(default_factory=list)  # --filter-groups: pool indices drawn beyond the epoch's subset


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Create the run directory; return the checkpoint to resume from (or None: a fresh start).

    A run that stopped before its first checkpoint kept nothing to continue from, so
    both a rerun and ``--resume`` start it afresh (never a dead end).
    """
    if resume:
        ck = latest_checkpoint(run_dir) if run_dir.exists() else None
        if ck is not None:
            read_state(ck)  # a damaged checkpoint is named now, before the model loads
            return ck
        if not (run_dir / "config.toml").exists():
            raise UserError(f"nothing to resume in {run_dir}: it holds no run (no config.toml)")
    elif os.path.lexists(run_dir / "checkpoints" / "LATEST") and not overwrite:
        raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or pass "
                        "--overwrite to start over")
    for n in RUN_FILES:
        if n != "config.toml" or not resume:  # --resume afresh reads the saved config; it is rewritten
            _remove(run_dir / n)
    run_dir.mkdir(parents=True, exist_ok=True)
    return None


def refuse_links(run_dir: Path, resume: bool) -> None:
    """Refuse symbolic links where the run would write: its lock always, and with ``resume`` the files it
    continues (a fresh start removes them instead: removing a link never touches its target)."""
    for n in (LOCK_NAME, *(RUN_FILES if resume else ())):
        if (run_dir / n).is_symlink():
            raise linked(run_dir / n)
    if resume and run_dir.is_dir():
        latest_checkpoint(run_dir)  # checks checkpoints/, LATEST and the folder it names


def start_run(run_dir: Path, cfg: TrainConfig) -> None:
    """Write a fresh run's ``config.toml`` and ``inputs.json`` before anything slow starts, so a run stopped
    at any later point is one that ``--resume`` starts afresh."""
    replace_run_file(run_dir / "config.toml", dump_toml(cfg))
    record_inputs(run_dir, cfg)


def _remove(p: Path) -> None:
    """Delete a run file or folder; a link is removed itself, never what it points to."""
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)
    elif os.path.lexists(p):
        p.unlink()


def latest_checkpoint(run_dir) -> Path | None:
    """The checkpoint ``checkpoints/LATEST`` names, or None before the first one.

    LATEST must name a ``step-N`` folder of this run's ``checkpoints/``: a path that leads
    elsewhere (absolute, ``..``, a link) would resume another run's training as this one's.
    """
    root = Path(run_dir) / "checkpoints"
    marker = root / "LATEST"
    for p in (root, marker):
        if p.is_symlink():
            raise linked(p)
    if not marker.exists():
        return None
    name = _read_marker(marker)
    for _ in range(3):  # a run still training may switch LATEST and delete the folder it named meanwhile
        ck = root / name
        if ck.is_symlink():
            raise linked(ck)
        if (ck / "trainer_state.json").is_file():
            return ck
        name, before = _read_marker(marker), name
        if name == before:
            break
    raise UserError(f"{marker} names {name}, but {root / name} is missing or incomplete; write the name of an "
                    "intact checkpoint into it, or start over with --overwrite")


def _read_marker(marker: Path) -> str:
    with open(marker, "rb") as fh:
        name = fh.read(256).decode(errors="replace").strip()
    if not _STEP.fullmatch(name):
        raise UserError(f"{marker} names {name[:80]!r}, not a checkpoint of this run (a step-N folder in "
                        f"{marker.parent}); write the name of one into it, or start over with --overwrite")
    return name


def save_checkpoint(run_dir: Path, model, tok, optimizer, generator: torch.Generator, st: RunState, curriculum,
                    pool_rows: list, log_sizes: dict, keep: int) -> Path:
    """Write ``checkpoints/step-N`` atomically, point ``LATEST`` at it, keep the newest ``keep``.

    A file that cannot be written (a full disk) stops the run with one error naming it;
    the previous checkpoint and ``LATEST`` stay as they were.
    """
    root = run_dir / "checkpoints"
    if root.is_symlink():
        raise linked(root)
    name = f"step-{st.global_step:07d}"
    final, tmp = root / name, root / f".tmp-{name}"
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:  # the step guard keeps them finite; this is the last line of defence
        raise RuntimeError(f"internal error: refusing to checkpoint non-finite weights ({len(bad)} tensors, e.g. "
                           f"{bad[0]})")
    # torch's global generator drives dropout (LoRA's, or a model's own); the run seeds it, so it is saved too
    rng = {"rollouts": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = {"version": STATE_VERSION, "run": asdict(st), "order": [int(x) for x in curriculum.order],
             "curriculum": curriculum.state_dict(), "pool_rows": pool_rows, "log_sizes": log_sizes}
    try:
        marker = _write_checkpoint(tmp, final, model, tok, optimizer, rng, state)
    except UserError as exc:
        prev = latest_checkpoint(run_dir)
        raise UserError(f"{exc}; the previous checkpoint ({prev.name if prev else 'none yet'}) and LATEST are kept: "
                        f"make room, then continue with: anglerank train --resume {run_dir}") from None
    if final.exists():  # the same step saved again (epoch end, then Ctrl-C): swap, then delete the old copy
        stale = root / f".old-{name}"
        os.replace(final, stale)
        os.replace(tmp, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(tmp, final)
    os.replace(marker, root / "LATEST")
    done = sorted(p for p in root.iterdir() if _STEP.fullmatch(p.name) and p.is_dir() and not p.is_symlink())
    for old in done[: max(0, len(done) - keep)]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _write_checkpoint(tmp: Path, final: Path, model, tok, optimizer, rng: dict, state: dict) -> Path:
    """Every file of the checkpoint into the new folder ``tmp``, then LATEST's next content staged beside it
    (returned). A failed write removes ``tmp`` and raises one error naming the file (as in ``final``)."""
    weights = "adapter_model.safetensors" if hasattr(model, "peft_config") else "model.safetensors"
    parts = [(weights, lambda: model.save_pretrained(tmp, safe_serialization=True)),
             ("tokenizer.json", lambda: tok.save_pretrained(tmp)),
             ("rng.pt", lambda: torch.save(rng, tmp / "rng.pt")),
             ("trainer_state.json", lambda: (tmp / "trainer_state.json").write_text(json.dumps(state)))]
    if optimizer is not None:  # None: --save-only-model
        parts.insert(2, ("optimizer.pt", lambda: torch.save(optimizer.state_dict(), tmp / "optimizer.pt")))
    file = final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove(tmp)  # what a killed save left
        tmp.mkdir()
        with quiet_hf_loading():  # no progress bars; the caller's logging settings come back
            for file_name, write in parts:
                file = final / file_name
                write()
        share_weights(tmp, tmp / "trainer_state.json")
        return stage_run_file(final.parent / "LATEST", final.name)
    except Exception as exc:
        reason = write_failure(exc, file, final.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, UserError) or reason is None:
            raise
        raise UserError(f"cannot write checkpoint file {reason}") from None


def write_failure(exc: BaseException, file: Path, folder: Path) -> str | None:
    """``"FILE: reason"`` when ``exc`` is a failed write (a full disk, a vanished or read-only folder), else
    None (a bug). torch and safetensors report a failed write as exceptions of their own without an errno;
    the reason then comes from their message or from the free space in ``folder``."""
    if isinstance(exc, OSError):
        shown = file.parent / Path(exc.filename).name if isinstance(exc.filename, str) else file
        return f"{shown}: {exc.strerror or exc}"
    text = str(exc)
    if not (type(exc).__name__ == "SafetensorError" or any(s in text for s in _TORCH_WRITE_ERRORS)):
        return None
    said = re.search(r'message: "([^"]+)"|I/O error: (.+?) \(os error', text)  # safetensors' wordings
    if said:
        return f"{file}: {said.group(1) or said.group(2)}"
    try:
        full = shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        full = False
    return f"{file}: {'No space left on device' if full else one_line(exc)}"


def share_weights(folder: Path, like: Path) -> None:
    """Give the ``.safetensors`` files in ``folder`` the mode of ``like``, a file created the usual way
    (0666 less the umask): safetensors creates its files 0600, unreadable to the user's group."""
    mode = like.stat().st_mode & 0o777
    for f in folder.glob("*.safetensors"):
        os.chmod(f, mode)


def read_state(path: Path) -> dict:
    """``trainer_state.json`` of checkpoint ``path``, checked to be one (else one error naming it)."""
    file = path / "trainer_state.json"
    try:
        state = json.loads(file.read_bytes())
    except OSError as exc:
        raise UserError(f"cannot read {file}: {exc.strerror or exc}") from None
    except ValueError as exc:  # not UTF-8, or not JSON
        raise _damaged(file, f"not JSON: {exc}") from None
    if not isinstance(state, dict):
        raise _damaged(file, "not a JSON object")
    if state.get("version") != STATE_VERSION:
        raise UserError(f"{path}: unsupported checkpoint version {state.get('version')!r}")
    for key, kind in (("run", dict), ("order", list), ("curriculum", dict), ("pool_rows", list), ("log_sizes", dict)):
        if not isinstance(state.get(key), kind):
            raise _damaged(file, f"{key!r} is missing or not a JSON {'object' if kind is dict else 'array'}")
    sizes = state["log_sizes"]
    for k in {"metrics", "subsets"} | sizes.keys():
        v = sizes.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _damaged(file, f"log_sizes.{k} is {v!r}, not a size in bytes")
    return state


def _damaged(file: Path, why: str) -> UserError:
    return UserError(f"{file} is damaged ({why}); resume from an intact checkpoint by writing its folder name "
                     "into checkpoints/LATEST, or start over with --overwrite")


@contextlib.contextmanager
def _reading(file: Path):
    """A malformed checkpoint file makes its loader raise whatever it raises: report the file as damaged."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        raise _damaged(file, one_line(exc)) from None


def _run_state(saved: dict) -> RunState:
    run = dict(saved)
    run["epoch_metrics"] = EpochMetrics(**run["epoch_metrics"])
    st = RunState(**run)
    for name in ("epoch", "step_in_epoch", "global_step", "updates", "lr_horizon", "rollouts", "epoch_cursor"):
        v = getattr(st, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"run.{name} is {v!r}, not a count")
    return st


def load_checkpoint(path: Path, optimizer, generator: torch.Generator, curriculum,
                    pool_rows: list) -> tuple[RunState, dict]:
    """Restore the optimiser, rollout generator and curriculum from ``path``; return the run state and log sizes."""
    state = read_state(path)
    if state["pool_rows"] != pool_rows:
        raise UserError(f"{path}: the training prompts differ from the checkpoint's ({len(state['pool_rows'])} "
                        f"vs {len(pool_rows)} usable rows); resume with the same data and prompt settings")
    with _reading(path / "trainer_state.json"):
        curriculum.set_order(state["order"])
        curriculum.load_state_dict(state["curriculum"])
        st = _run_state(state["run"])
        if not isinstance(st.epoch_extra, list) or any(isinstance(i, bool) or not isinstance(i, int)
                                                       or not 0 <= i < len(pool_rows) for i in st.epoch_extra):
            raise ValueError("run.epoch_extra is not a list of training prompt indices")
    if (path / "optimizer.pt").exists():  # absent: saved with --save-only-model, so AdamW starts afresh
        with _reading(path / "optimizer.pt"):
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    with _reading(path / "rng.pt"):
        rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
        generator.set_state(rng["rollouts"])
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return st, state["log_sizes"]


def record_inputs(run_dir: Path, cfg: TrainConfig) -> None:
    """Fingerprint the run's data (``inputs.json``) so a resume can tell when it changed."""
    replace_run_file(run_dir / "inputs.json", json.dumps(_fingerprints(cfg), indent=1))


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
