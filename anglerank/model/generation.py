"""Completions from Hugging Face ``generate``: the one generation path of
``anglerank train`` (rollouts, greedy eval) and ``anglerank validate`` (greedy
targets, pass-rate rollouts).

It keeps in one tested place the details that silently break RL data:

- prompts are left-padded (so every row's next token is the last column) and
  generated with the KV cache;
- each completion is cut at its first EOS (EOS kept: the policy is trained to
  stop), because ``generate`` pads finished rows with ``pad_token_id``, which
  is often the EOS id itself;
- a prompt repeated in a batch (a GRPO group, pass-rate rollouts) is read
  once: the repeats share its KV cache, copied before decoding starts, which
  removes most of the prompt compute at G = 4-16 and leaves the completions
  unchanged (the decoding steps are the same; the prompt's keys and values
  are computed in a smaller batch);
- sampling draws from an explicit ``torch.Generator`` when one is given.
  ``generate`` itself only samples from torch's global RNG, so the global RNG
  of the sampling device is forked, seeded from the generator, and restored
  afterwards: the caller's global state is left as it was and the completions
  depend only on the generator.
"""

from __future__ import annotations

import inspect
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from anglerank.model.loading import ModelError

__all__ = ["Rollouts", "eos_token_ids", "pad_token_id", "left_pad", "shared_prompt_cache", "generate"]


@dataclass
class Rollouts:
    prompt_ids: list[list[int]]  # one per sequence (prompts repeated G times)
    completion_ids: list[list[int]]  # cut after the first EOS (kept), no padding
    texts: list[str]  # decoded completions without special tokens
    finished: list[bool]  # ended with EOS (False: hit max_new_tokens or was stopped)
    seconds: float = 0.0


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS and the generation config's."""
    ids = []
    for src in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if src is None:
            continue
        ids.extend(src if isinstance(src, (list, tuple)) else [src])
    out = sorted({int(i) for i in ids})
    if not out:
        raise ModelError("the tokenizer has no EOS token; completions could never stop")
    return out


def pad_token_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    return 0


def left_pad(id_lists: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids_BP, mask_BP)``: the sequences right-aligned in a ``[B, P]`` block, mask 1 on real tokens."""
    P = max(len(x) for x in id_lists)
    ids = torch.full((len(id_lists), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(id_lists), P), dtype=torch.long)
    for b, x in enumerate(id_lists):
        if x:
            ids[b, P - len(x):] = torch.tensor(x, dtype=torch.long)
            mask[b, P - len(x):] = 1
    return ids, mask


def _cut(row: list[int], eos: set[int]) -> tuple[list[int], bool]:
    for j, t in enumerate(row):
        if t in eos:
            return row[: j + 1], True
    return row, False


class _StopWhen:
    """A ``StoppingCriteria`` that ends generation early when ``flag()`` turns true (Ctrl-C)."""

    def __init__(self, flag: Callable[[], bool]):
        self.flag = flag

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), bool(self.flag()), dtype=torch.bool, device=input_ids.device)


@contextmanager
def _global_rng_from(generator: torch.Generator | None, device) -> Iterator[None]:
    """Within the block, the global RNGs of the CPU and of ``device`` are seeded from ``generator``;
    their previous states come back afterwards. Nothing changes when ``generator`` is None."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    dev = torch.device(device)
    if dev.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield
        return
    mod = torch.get_device_module(dev.type)
    index = dev.index if dev.index is not None else getattr(mod, "current_device", lambda: 0)()
    with torch.random.fork_rng(devices=[index], device_type=dev.type):
        torch.random.default_generator.manual_seed(seed)
        gens = getattr(mod, "default_generators", None)
        if gens:
            gens[index].manual_seed(seed)
        else:  # one-device backends (mps)
            mod.manual_seed(seed)
        yield


@torch.no_grad()
def shared_prompt_cache(model, chunk: list[list[int]], ids_BP: torch.Tensor, mask_BP: torch.Tensor) -> dict:
    """``generate`` keyword arguments that start it from a KV cache of every prompt but its last token, each
    distinct prompt of ``chunk`` computed once and copied to its repeats; ``{}`` when nothing repeats or the
    model has no standard cache (then ``generate`` reads the prompts itself)."""
    from transformers import DynamicCache

    first: dict[tuple, int] = {}
    copy_of = [first.setdefault(tuple(x), b) for b, x in enumerate(chunk)]
    if len(first) == len(chunk) or ids_BP.shape[1] < 2 or not _standard_cache(model):
        return {}
    rows = sorted(first.values())
    u_ids, u_mask = ids_BP[rows, :-1], mask_BP[rows, :-1]
    # the positions generate gives left-padded rows: count real tokens only
    pos = (u_mask.cumsum(-1) - 1).masked_fill(u_mask == 0, 1)
    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # transformers before the config argument
        cache = DynamicCache()
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    model(input_ids=u_ids, attention_mask=u_mask, position_ids=pos, use_cache=True, **{name: cache})
    index = {b: i for i, b in enumerate(rows)}
    cache.reorder_cache(torch.tensor([index[c] for c in copy_of], device=ids_BP.device))
    return {name: cache}


def _standard_cache(model) -> bool:
    supports = getattr(model, "_supports_default_dynamic_cache", None)
    return bool(supports()) if callable(supports) else False


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    *,
    max_new_tokens: int,
    greedy: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    batch_size: int = 64,
    device: str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    stop_flag: Callable[[], bool] | None = None,
    generator: torch.Generator | None = None,
    share_prompts: bool = True,
) -> Rollouts:
    """One completion per entry of ``prompt_ids`` (repeat a prompt G times for a group).

    Batches of ``batch_size`` sequences, left-padded. Sampling draws from
    ``generator`` (one seed per call, see the module docstring); without one it
    uses torch's global RNG (seed it, and checkpoint its state, for reproducible
    rollouts). Greedy decoding draws nothing. ``stop_flag()`` turning true ends
    the current batch early and skips the rest: fewer completions come back.
    ``share_prompts=False`` reads every repeat of a prompt again (the plain path, for comparison).
    """
    from transformers import GenerationConfig, StoppingCriteriaList

    t0 = time.perf_counter()
    pad_id = pad_token_id(tokenizer)
    eos = eos_token_ids(model, tokenizer)
    gen_cfg = GenerationConfig(
        do_sample=not greedy, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad_id,
        temperature=None if greedy else temperature, top_p=None if greedy else top_p,
        top_k=None if greedy or not top_k else top_k, use_cache=True,
    )
    if not greedy and not top_k:
        gen_cfg.top_k = 0  # transformers' default is 50; 0 switches top-k off
    stopping = StoppingCriteriaList([_StopWhen(stop_flag)]) if stop_flag else None
    was_training = model.training
    model.eval()
    amp = (torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype)
           if autocast_dtype is not None else nullcontext())
    completions: list[list[int]] = []
    finished: list[bool] = []
    eos_set = set(eos)
    try:
        with _global_rng_from(None if greedy else generator, device):
            for s in range(0, len(prompt_ids), batch_size):
                chunk = prompt_ids[s: s + batch_size]
                ids, mask = left_pad(chunk, pad_id)
                ids, mask = ids.to(device), mask.to(device)
                with amp:
                    shared = shared_prompt_cache(model, chunk, ids, mask) if share_prompts else {}
                    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg,
                                         stopping_criteria=stopping, **shared)
                for row in out[:, ids.shape[1]:].tolist():
                    c, done = _cut(row, eos_set)
                    if not done:  # stopped early (Ctrl-C) or hit the limit: drop trailing padding only
                        while c and c[-1] == pad_id and pad_id not in eos_set:
                            c.pop()
                    completions.append(c)
                    finished.append(done)
                if stop_flag is not None and stop_flag():
                    break
    finally:
        model.train(was_training)
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return Rollouts([list(p) for p in prompt_ids[: len(completions)]], completions, texts, finished,
                    time.perf_counter() - t0)
