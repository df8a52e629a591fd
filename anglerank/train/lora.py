"""LoRA through peft: adapters on the policy, the base model as the KL reference.

peft injects its LoRA layers into the model's own modules, so the loop keeps
using the plain ``...ForCausalLM`` (``PeftModel.get_base_model()``): rollouts,
the angle hooks on the decoder layers and the in-process re-scoring all see the
adapted model, and nothing else in the trainer needs to know. The ``PeftModel``
wrapper is kept for three things: saving the adapter (``adapter_model.safetensors``
+ ``adapter_config.json``, what ``PeftModel.from_pretrained`` loads), switching
the adapter off for the reference log-probabilities (the KL term then needs no
second copy of the model), and merging it into full weights
(:func:`export_merged`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from anglerank.errors import MissingExtra, UserError
from anglerank.model import loading
from anglerank.train.config import load_toml

__all__ = ["attach", "is_adapter_checkpoint", "export_run", "export_merged", "DEFAULT_TARGETS"]

# peft's shorthand for every linear layer but the output head: the attention and MLP projections
DEFAULT_TARGETS = "all-linear"
# checkpoint files an export does not need (the optimiser is the biggest of all)
_NOT_EXPORTED = ("optimizer.pt", "rng.pt")


def _peft():
    try:
        import peft
    except ImportError:
        raise MissingExtra("LoRA (--lora-r) needs peft: pip install peft (or pip install 'anglerank[lora]')") from None
    return peft


def attach(model, cfg, checkpoint: Path | None = None):
    """Wrap ``model`` with a trainable LoRA adapter: a new one from ``cfg``, or the one saved in ``checkpoint``."""
    peft = _peft()
    if checkpoint is not None:
        return peft.PeftModel.from_pretrained(model, str(checkpoint), is_trainable=True)
    targets = cfg.lora_target_modules or DEFAULT_TARGETS
    config = peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=targets, task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config)


def is_adapter_checkpoint(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def export_run(run: Path, output: Path, overwrite: bool = False) -> Path:
    """Export ``run`` (a run directory's latest checkpoint, or one checkpoint folder) with :func:`export_merged`.

    A run still training may delete its latest checkpoint while it is read (it keeps only
    ``--keep-checkpoints``): the export then starts again once from the checkpoint that replaced it.
    """
    run = Path(run)
    one_checkpoint = (run / "trainer_state.json").exists()
    try:
        return _export_one(run, output, overwrite)
    except CheckpointGone:
        if one_checkpoint:  # that very checkpoint was asked for
            raise
        return _export_one(run, output, overwrite)


def _export_one(run: Path, output: Path, overwrite: bool) -> Path:
    from anglerank.train.checkpoint import latest_checkpoint

    ck = run if (run / "trainer_state.json").exists() else latest_checkpoint(run)
    if ck is None:
        raise UserError(f"{run} is neither a checkpoint nor a run directory with one")
    config = ck.parent.parent / "config.toml"
    base = load_toml(config).get("model") if config.exists() else None
    return export_merged(ck, output, base, overwrite=overwrite)


class CheckpointGone(UserError):
    """The checkpoint being exported was deleted while it was read."""


def export_merged(checkpoint: Path, output: Path, base_model: str | None, overwrite: bool = False) -> Path:
    """Full weights loadable with ``from_pretrained``: the adapter merged into its base (or the checkpoint's
    weights as they are, for a full fine-tune), with the tokenizer.

    The folder is built aside (``.NAME.<pid>.tmp`` next to ``output``) and renamed into place, so an
    interrupted or failed export leaves no half-written folder; a non-empty ``output`` is replaced only
    with ``overwrite``.
    """
    from anglerank.data.lock import lock_path, output_lock, stale_temps

    output = Path(output)
    if lock_path(output, directory=False).is_symlink():
        raise UserError(f"{lock_path(output, directory=False)} is a symbolic link; export locks a file of its own "
                        "there (remove the link)")
    with output_lock(output, what="export output", directory=False):
        _check_output(output, overwrite)
        for old in stale_temps(output):  # what a killed export left
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        tmp = output.parent / f".{output.name}.{os.getpid()}.tmp"
        try:
            tmp.mkdir()
            _build(Path(checkpoint), tmp, base_model, output)
            _place(tmp, output)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return output


def _check_output(output: Path, overwrite: bool) -> None:
    if output.is_symlink():
        raise UserError(f"{output} is a symbolic link; export writes a folder of its own there, never through a "
                        "link (remove the link, or choose another --output)")
    if output.exists() and not output.is_dir():
        raise UserError(f"{output} exists and is not a folder")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise UserError(f"{output} is not empty; pass --overwrite to replace it, or choose another --output")


def _build(checkpoint: Path, tmp: Path, base_model: str | None, output: Path) -> None:
    """The merged weights and the tokenizer into ``tmp``, read from a snapshot of ``checkpoint``."""
    from anglerank.train.checkpoint import share_weights, write_failure

    snap = tmp / ".checkpoint"
    _snapshot(checkpoint, snap)
    try:
        if is_adapter_checkpoint(snap):
            loaded = loading.load(base_model, "cpu", "float32")
            merged = _peft().PeftModel.from_pretrained(loaded.model, str(snap)).merge_and_unload()
        else:
            merged = loading.load(str(snap), "cpu", "float32").model
        tok = loading.load_tokenizer(snap)
    except UserError as exc:  # name the checkpoint, not its snapshot
        raise UserError(str(exc).replace(str(snap), str(checkpoint))) from None
    shutil.rmtree(snap)
    with loading.quiet_hf_loading():
        for name, write in (("model.safetensors", lambda: merged.save_pretrained(tmp, safe_serialization=True)),
                            ("tokenizer.json", lambda: tok.save_pretrained(tmp))):
            try:
                write()
            except Exception as exc:
                reason = write_failure(exc, output / name, tmp)
                if reason is None:
                    raise
                raise UserError(f"cannot write export file {reason}; {output} was left as it was") from None
    share_weights(tmp, tmp / "config.json")


def _snapshot(checkpoint: Path, snap: Path) -> None:
    """Hard links (else copies) of the checkpoint's files: a run still training may delete the checkpoint
    while it is read, and the links keep every file whole; a file already gone is one error."""
    snap.mkdir()
    gone = CheckpointGone(f"checkpoint {checkpoint} was deleted while it was read (a run still training keeps "
                          "only its newest --keep-checkpoints); export again")
    try:
        names = sorted(p.name for p in checkpoint.iterdir() if p.name not in _NOT_EXPORTED)
        for name in names:
            src = checkpoint / name
            if src.is_symlink():
                raise UserError(f"{src} is a symbolic link; a checkpoint holds its own files")
            try:
                os.link(src, snap / name)
            except FileNotFoundError:
                raise
            except OSError:  # another file system, or links not allowed
                shutil.copyfile(src, snap / name)
        if sorted(p.name for p in checkpoint.iterdir() if p.name not in _NOT_EXPORTED) != names:
            raise gone
    except FileNotFoundError:
        raise gone from None
    if "trainer_state.json" not in names:
        raise UserError(f"{checkpoint} is not a complete checkpoint (no trainer_state.json)")


def _place(tmp: Path, output: Path) -> None:
    """Rename the finished folder into place; an existing one (empty, or replaced with --overwrite) is
    moved aside first and deleted after."""
    if not output.exists():
        os.rename(tmp, output)
        return
    old = output.parent / f".{output.name}.{os.getpid()}.old.tmp"
    os.rename(output, old)
    os.rename(tmp, output)
    shutil.rmtree(old, ignore_errors=True)
