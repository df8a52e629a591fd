"""Capture hidden states at a hook site and stop the forward pass right after it.

Scoring only needs one (or a few) layers' activations, so running the later layers,
the final norm and the LM head is wasted work: a hook on the deepest requested site
raises ``_StopForward`` once everything has been captured (and ``loading.load`` with
``keep_layers`` does not even load them).
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager

import torch

from anglerank.errors import UserError

SITES = ("mlp-input", "residual")

# attribute paths from the base model to its list of decoder blocks, by layout
_LAYER_PATHS = ("layers", "h", "decoder.layers", "blocks", "encoder.layers", "language_model.layers")


class HookError(UserError):
    """User-facing problem: unsupported layout, bad site or layer."""


class _StopForward(Exception):
    pass


def base_model(model):
    """The decoder stack without the LM head (works for any HF CausalLM)."""
    prefix = getattr(model, "base_model_prefix", None)
    if prefix and hasattr(model, prefix):
        return getattr(model, prefix)
    return model


def decoder_layers(model) -> torch.nn.ModuleList:
    base = base_model(model)
    for path in _LAYER_PATHS:
        obj = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList) and len(obj) > 0:
            return obj
    raise HookError(
        f"cannot find the decoder layers of {type(model).__name__}; supported layouts: "
        "Llama, Qwen2/3, Mistral, Gemma, GPT-2, GPT-NeoX and others with a `layers`/`h` list"
    )


def resolve_layer(model, layer: int) -> int:
    return _resolve(len(decoder_layers(model)), layer)


def _resolve(n: int, layer: int) -> int:
    idx = layer + n if layer < 0 else layer
    if not 0 <= idx < n:
        raise HookError(f"layer {layer} is out of range for a model with {n} layers (use -{n}..{n - 1})")
    return idx


def parse_layers(model, layers, num_layers: int | None = None) -> list[int]:
    """Absolute layer indices from ints (negative from the end), 'all', or 'A:B' ranges.

    ``num_layers`` is the depth of the full model when ``model`` was loaded without the
    layers after the deepest one needed: indices count from the end of the full model.
    """
    return layer_indices(num_layers or len(decoder_layers(model)), layers)


def layer_indices(n: int, layers) -> list[int]:
    """:func:`parse_layers` for a model of ``n`` decoder layers, without the model."""
    out: list[int] = []
    for spec in layers if isinstance(layers, (list, tuple)) else [layers]:
        if isinstance(spec, int):
            out.append(_resolve(n, spec))
            continue
        spec = str(spec).strip()
        if spec == "all":
            out.extend(range(n))
        elif ":" in spec:
            try:
                a, b = (int(x) if x.strip() else None for x in spec.split(":", 1))
            except ValueError:
                raise HookError(f"bad layer range {spec!r}; use A:B, e.g. 10:30") from None
            rng = list(range(n))[slice(a, b)]
            if not rng:
                raise HookError(f"layer range {spec!r} is empty for a model with {n} layers")
            out.extend(rng)
        else:
            try:
                out.append(_resolve(n, int(spec)))
            except ValueError:
                raise HookError(f"bad layer {spec!r}; use an integer, A:B or all") from None
    return sorted(set(out))


def site_module(model, layer_idx: int, site: str) -> torch.nn.Module:
    block = decoder_layers(model)[layer_idx]
    if site == "residual":
        return block
    if site == "mlp-input":
        for name in ("mlp", "feed_forward", "ffn", "block_sparse_moe"):
            mod = getattr(block, name, None)
            if isinstance(mod, torch.nn.Module):
                return mod
        raise HookError(f"{type(block).__name__} has no MLP submodule to hook; use --site residual")
    raise HookError(f"unknown hook site {site!r}; choose from {', '.join(SITES)}")


def hook_sites(model) -> list[str]:
    block = decoder_layers(model)[0]
    sites = []
    if any(isinstance(getattr(block, n, None), torch.nn.Module)
           for n in ("mlp", "feed_forward", "ffn", "block_sparse_moe")):
        sites.append("mlp-input")
    sites.append("residual")
    return sites


@contextmanager
def capture(model, layers: list[int], site: str, stop: bool = True, detach: bool = True):
    """Register hooks capturing ``site`` at each layer index into the yielded dict.

    With ``stop=True`` the deepest hook aborts the forward pass; call the model through
    :func:`run_until_captured` so the abort is swallowed.
    """
    captured: dict[int, torch.Tensor] = {}
    deepest = max(layers)
    handles = []

    def make(idx: int):
        def keep(t: torch.Tensor):
            captured[idx] = t.detach() if detach else t
            if stop and idx == deepest:
                raise _StopForward

        if site == "mlp-input":
            return lambda mod, args, kwargs: keep(args[0] if args else next(iter(kwargs.values())))
        return lambda mod, args, kwargs, out: keep(out[0] if isinstance(out, (tuple, list)) else out)

    for idx in sorted(set(layers)):
        mod = site_module(model, idx, site)
        if site == "mlp-input":
            handles.append(mod.register_forward_pre_hook(make(idx), with_kwargs=True))
        else:
            handles.append(mod.register_forward_hook(make(idx), with_kwargs=True))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


@functools.cache
def _cache_arg(cls) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.x); use what this class takes."""
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def run_until_captured(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache=None) -> None:
    """Run only the base model (no LM head) until the stop hook fires.

    With ``cache`` (a transformers Cache holding earlier tokens' keys/values) the ids
    continue those tokens, and the cache is filled in place; without it none is kept.
    """
    base = base_model(model)
    kwargs = {_cache_arg(type(base)): cache, "use_cache": True} if cache is not None else {"use_cache": False}
    try:
        base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    except _StopForward:
        pass
