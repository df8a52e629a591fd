"""How many tokens a forward batch may hold on a GPU: activation bytes per token from the
model's shape, and the budget that the free memory allows. Pure arithmetic, but for the two
functions at the end that read a loaded model and its device's free memory.

What one token costs while a batch runs
---------------------------------------
The scorer runs the base model under ``torch.inference_mode`` and stops at the deepest
hooked site, so nothing is kept for a backward pass, no layer after that site runs, and
no logits exist (a full forward would add ``vocab x 4`` bytes per token for float32
logits: 608 KB for Qwen2.5's 152,064 tokens, more than everything below together).
Each layer's temporaries are freed before the next layer starts, so the forward's peak
is the peak inside one decoder layer plus what lives for the whole forward. With ``b``
bytes per element (2 for bf16/fp16, 4 for float32), hidden size ``D``, MLP size ``I``,
``H`` query heads, ``K`` key/value heads of size ``d``:

* one decoder layer (elements per token). Inside the gated MLP
  ``down(act(gate(x)) * up(x))`` three ``I``-wide tensors are alive at the product
  (``act(gate(x))``, ``up(x)`` and their product), next to the layer's input (still held
  by the caller), the residual and the normed input ``x``: ``3D + 3I``. Attention holds
  the same three ``D``-wide tensors, the queries (``H d``), keys and values (``2 K d``),
  keys and values repeated to ``H`` heads for grouped-query attention (``2 H d``) and
  the output (``H d``): ``3D + 4 H d + 2 K d``. Attention runs as a fused kernel
  (PyTorch's scaled_dot_product_attention on CUDA), so no ``T x T`` score matrix exists.
  The layer peak is the larger of the two, times ``b``.
* for the whole forward: the boolean attention mask ``[B, 1, T, T]`` and its conversion
  to the compute dtype inside the kernel, ``T (1 + b)`` bytes per token for a padded
  length ``T`` (bounded by ``--max-length``); the rotary cos/sin tables, ``2 d b``; the
  ids and mask (int64), 16 bytes; with the shared-prefix cache, the keys and values of
  every layer run (``layers x 2 K d b``), since each layer's cache grows by the batch's
  tokens and is kept until the forward ends.
* the captured hidden states, ``D b`` per hooked layer, live until the angles are
  computed. The angle step itself (float64: the cast, unit rows, masked rows and their
  square, ``4 x 8 D`` bytes) runs after the forward's temporaries are gone, so it
  competes with the forward's peak rather than adding to it.

    per_token = max(forward, angles) + captured

The budget
----------
``budget = (available - reserve) x fraction / per_token``, with ``reserve`` (1 GiB) for
the CUDA context's workspaces and kernels' scratch space and ``fraction`` (0.8) for what
the caching allocator loses to rounding and to fragmentation between batches of
different shapes. It is rounded down to a power of two, so identical cards in one
``torchrun`` pick the same budget (shards must agree on it to merge), and clamped to
[256, 65536]: below 256 the GPU idles, and 65536 is the largest budget that
``benchmarks/gpu_check.py`` sweeps (a read-ahead window of 256 short prompts holds about
51k tokens anyway). When the estimate is wrong the scorer backs off on out-of-memory.
"""

from __future__ import annotations

from dataclasses import dataclass

RESERVE_BYTES = 2**30
FRACTION = 0.8
MIN_BUDGET, MAX_BUDGET = 256, 65536
ANGLE_BYTES_PER_DIM = 4 * 8  # four float64 [T, D] tensors at the angle step's peak


@dataclass(frozen=True)
class Shape:
    """The sizes that decide activation memory (from a transformers config)."""

    hidden: int  # D
    intermediate: int  # I
    heads: int  # H
    kv_heads: int  # K
    head_dim: int  # d


def shape_of(cfg: dict) -> Shape | None:
    """The shape of a config dict (Llama/Qwen/Mistral/Gemma names, GPT-2 and GPT-NeoX aliases);
    None when the config does not say."""
    hidden = cfg.get("hidden_size") or cfg.get("n_embd") or cfg.get("d_model")
    heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    if not hidden or not heads:
        return None
    inter = cfg.get("intermediate_size") or cfg.get("n_inner") or cfg.get("ffn_dim") or 4 * hidden
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    return Shape(int(hidden), int(inter), int(heads), int(kv), int(head_dim))


def bytes_per_token(shape: Shape, *, dtype_bytes: int, layers_run: int, captured: int, max_length: int,
                    kv_cache: bool) -> dict:
    """Activation bytes per batch token, by part (see the module docstring); ``total`` is what counts."""
    D, I, H, K, d, b = shape.hidden, shape.intermediate, shape.heads, shape.kv_heads, shape.head_dim, dtype_bytes
    mlp = 3 * D + 3 * I
    attention = 3 * D + 4 * H * d + 2 * K * d
    parts = {
        "layer": b * max(mlp, attention),
        "mask": max_length * (1 + b),
        "rotary": 2 * d * b,
        "ids": 16,
        "kv_cache": layers_run * 2 * K * d * b if kv_cache else 0,
        "captured": captured * D * b,
        "angles": ANGLE_BYTES_PER_DIM * D,
    }
    forward = parts["layer"] + parts["mask"] + parts["rotary"] + parts["ids"] + parts["kv_cache"]
    parts["total"] = max(forward, parts["angles"]) + parts["captured"]
    return parts


def choose_budget(available_bytes: int, per_token: int) -> int:
    """The batch budget in tokens for ``available_bytes`` of free memory (see the module docstring)."""
    usable = max(0.0, (available_bytes - RESERVE_BYTES) * FRACTION)
    tokens = int(usable // max(1, per_token))
    if tokens < MIN_BUDGET:
        return MIN_BUDGET
    return min(MAX_BUDGET, 1 << (tokens.bit_length() - 1))


def budget_basis(available_bytes: int, per_token: dict, budget: int) -> dict:
    """What the manifest records about a chosen budget: the inputs of :func:`choose_budget`."""
    return {"source": "free GPU memory", "free_bytes": int(available_bytes), "bytes_per_token": per_token["total"],
            "reserve_bytes": RESERVE_BYTES, "fraction": FRACTION, "batch_tokens": budget,
            "bytes_per_token_parts": {k: v for k, v in per_token.items() if k != "total"}}


def decoder_params(cfg: dict, layers: int, *, qkv_bias: bool = False) -> dict:
    """Parameters of a Llama-style model (gated MLP, RMSNorm) by part: ``full`` for the whole
    CausalLM, ``truncated`` for its base model with only ``layers`` decoder layers (its final norm
    is loaded, though it never runs)."""
    s = shape_of(cfg)
    D, I, H, K, d = s.hidden, s.intermediate, s.heads, s.kv_heads, s.head_dim
    attention = D * H * d + 2 * D * K * d + H * d * D + ((H + 2 * K) * d if qkv_bias else 0)
    layer = attention + 3 * D * I + 2 * D
    embedding = cfg["vocab_size"] * D
    head = 0 if cfg.get("tie_word_embeddings") else embedding
    return {"embedding": embedding, "layer": layer, "layers": layers * layer, "final_norm": D, "lm_head": head,
            "full": embedding + cfg["num_hidden_layers"] * layer + D + head,
            "truncated": embedding + layers * layer + D}


# --- applied to a loaded model (torch imported here only) ---------------------------------------

def cuda_available_bytes(model) -> int | None:
    """Free memory on the fullest CUDA device holding ``model``: what the driver reports free plus
    what this process's caching allocator holds without using it (None off CUDA)."""
    import torch

    devices = {p.device for p in model.parameters() if p.device.type == "cuda"}
    free = [torch.cuda.mem_get_info(d)[0] + torch.cuda.memory_reserved(d) - torch.cuda.memory_allocated(d)
            for d in devices]
    return min(free) if free else None


def cuda_budget(model, layer_idx: list[int], max_length: int, kv_cache: bool) -> tuple[int, dict] | None:
    """(batch_tokens, why) for a model on CUDA; None when its config does not give its shape."""
    shape = shape_of(model.config.to_dict())
    available = cuda_available_bytes(model)
    if shape is None or available is None:
        return None
    per_token = bytes_per_token(shape, dtype_bytes=next(model.parameters()).element_size(),
                                layers_run=max(layer_idx) + 1, captured=len(layer_idx), max_length=max_length,
                                kv_cache=kv_cache)
    budget = choose_budget(available, per_token["total"])
    return budget, budget_basis(available, per_token, budget)
