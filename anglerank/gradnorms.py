"""Per-prompt gradient norms for `anglerank validate`, and the weights they are taken over.

Which weights "read the site" is found from the model's own dataflow, not from a
table of module names: one probe forward records the input tensor of every leaf
module with a 2-D weight, and the readers are the modules whose input *is* the
hooked tensor (mlp-input: the MLP input projections, e.g. Llama ``gate_proj`` and
``up_proj``, GPT-2 ``c_fc``, GPT-NeoX ``dense_h_to_4h``). When no 2-D-weight module
reads the site directly (the residual site: the decoder-layer output is first
normalised), the readers are the 2-D-weight modules fed by a module that does read
it: for layer k < last, the next layer's input-norm-fed projections (Llama q/k/v,
GPT-2 ``c_attn``); for the last layer, the final norm-fed LM head (tied to the input
embeddings in many small models, whose gradient then includes the embedding's).
"""

from __future__ import annotations

import copy
import inspect
import math
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from anglerank.model import hooks

__all__ = ["site_readers", "target_nll_grads", "float32_model"]


def _same_tensor(a, b) -> bool:
    if a is b:
        return True
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and a.stride() == b.stride() and a.data_ptr() == b.data_ptr() and a.numel() > 0)


def site_readers(model, layers: list[int], site: str, probe_ids: list[int]) -> dict[int, dict[str, torch.nn.Parameter]]:
    """{layer: {parameter name: weight}} of the 2-D weights that read the hooked site."""
    calls: list[tuple[str, torch.nn.Module, Any, Any]] = []
    handles = []

    def make(name):
        def hook(mod, args, kwargs, out):
            x = args[0] if args else next(iter(kwargs.values()), None)
            calls.append((name, mod, x, out))
        return hook

    for name, mod in model.named_modules():
        if next(mod.children(), None) is None and isinstance(getattr(mod, "weight", None), torch.Tensor):
            handles.append(mod.register_forward_hook(make(name), with_kwargs=True))
    ids = torch.tensor([probe_ids], dtype=torch.long, device=next(model.parameters()).device)
    try:
        with hooks.capture(model, layers, site, stop=False, detach=False) as cap, torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        for h in handles:
            h.remove()

    def is_matrix(mod):
        return mod.weight.ndim == 2 and not isinstance(mod, torch.nn.Embedding)

    out = {}
    for layer in layers:
        s = cap[layer]
        direct = [(n, m) for n, m, x, _ in calls if _same_tensor(x, s) and is_matrix(m)]
        if not direct:
            fed = [o for _, m, x, o in calls if _same_tensor(x, s) and not is_matrix(m)]
            direct = [(n, m) for n, m, x, _ in calls if is_matrix(m) and any(_same_tensor(x, o) for o in fed)]
        if not direct:
            raise hooks.HookError(f"could not find the weight matrices that read the {site} site of layer {layer}")
        readers = {}
        for n, m in direct:
            readers.setdefault(f"{n}.weight" if n else "weight", m.weight)
        out[layer] = readers
    return out


def _supports_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def target_nll_grads(model, prompt_ids: list[int], target_ids: list[int],
                     readers: dict[int, dict[str, torch.nn.Parameter]]) -> tuple[float, dict[int, float], float]:
    """Mean token NLL of ``target_ids`` after ``prompt_ids`` and the gradient norms of it.

    Returns ``(nll, {layer: ||grad of that layer's reader weights||_F}, ||grad of all parameters||)``;
    norms over several matrices are the square root of the summed squares, in float64.
    The model must be in float32 with ``requires_grad`` parameters.
    """
    device = next(model.parameters()).device
    P, C = len(prompt_ids), len(target_ids)
    ids = torch.tensor([prompt_ids + target_ids], dtype=torch.long, device=device)
    kwargs = {"logits_to_keep": C + 1} if _supports_logits_to_keep(model) else {}
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **kwargs).logits[0]
        logits_CV = logits[-(C + 1):-1].float()
        loss = torch.nn.functional.cross_entropy(logits_CV, ids[0, P:], reduction="mean")
        loss.backward()

    def norm(params) -> float:
        total = 0.0
        for p in params:
            if p.grad is not None:
                total += float(p.grad.detach().double().pow(2).sum())
        return math.sqrt(total)

    grad_a = {layer: norm(ps.values()) for layer, ps in readers.items()}
    grad_b = norm(model.parameters())
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grad_a, grad_b


@contextmanager
def float32_model(model, in_place: bool) -> Iterator[torch.nn.Module]:
    """The model to take float32 gradients on, every parameter requiring grad.

    A caller's model is left as it was given: it is used directly only when it is
    already float32 and holds no gradients (its ``requires_grad`` flags and training
    mode are restored afterwards); otherwise the work happens on a float32 copy,
    which costs the memory of one more float32 model. A model that run_validate
    loaded itself (``in_place``) is cast in place instead.
    """
    params = list(model.parameters())
    if not in_place and any(p.dtype != torch.float32 or p.grad is not None for p in params):
        model = copy.deepcopy(model)
        model.zero_grad(set_to_none=True)
    was_training = model.training
    requires = [p.requires_grad for p in model.parameters()]
    model.float().eval()
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    try:
        yield model
    finally:
        model.zero_grad(set_to_none=True)
        for p, rg in zip(params, requires):
            p.requires_grad_(rg)
        model.train(was_training)


