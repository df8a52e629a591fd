"""Rollouts: G completions per prompt with Hugging Face ``generate``, and the
tensor layout the GRPO update trains on.

This module exists to keep the two token-layout details that silently break
GRPO in one tested place:

- generation runs on left-padded prompts (so every row's next token is the
  last column) with the KV cache, and each completion is cut at its first EOS
  (EOS kept: the policy is trained to stop), because ``generate`` pads
  finished rows with ``pad_token_id``, which is often the EOS id itself;
- the training forward uses the same layout, left-padded prompt then
  right-padded completion, with explicit ``position_ids`` counted over real
  tokens, so a left-padded row sees the same positions it was generated with
  (``generate`` derives positions from the attention mask, a plain forward
  does not).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["Rollouts", "Packed", "eos_token_ids", "generate", "pack", "trim"]


@dataclass
class Rollouts:
    prompt_ids: list[list[int]]  # one per sequence (prompts repeated G times)
    completion_ids: list[list[int]]  # cut after the first EOS (kept), no padding
    texts: list[str]  # decoded completions without special tokens
    finished: list[bool]  # ended with EOS (False: hit max_new_tokens or was stopped)
    seconds: float = 0.0


@dataclass
class Packed:
    """One batch of sequences laid out for the training forward."""

    input_ids_BL: torch.Tensor  # [B, P + T]: left-padded prompts, right-padded completions
    attention_mask_BL: torch.Tensor  # 1 on real tokens
    position_ids_BL: torch.Tensor  # positions counted over real tokens (0 on padding)
    completion_ids_BT: torch.Tensor  # [B, T] the completion block of input_ids
    completion_mask_BT: torch.Tensor  # 1 on real completion tokens
    prompt_width: int  # P

    @property
    def completion_width(self) -> int:
        return self.completion_ids_BT.shape[1]

    def to(self, device) -> "Packed":
        return Packed(*(t.to(device) for t in (self.input_ids_BL, self.attention_mask_BL, self.position_ids_BL,
                                                 self.completion_ids_BT, self.completion_mask_BT)),
                      self.prompt_width)

    def rows(self, idx) -> "Packed":
        return trim(Packed(self.input_ids_BL[idx], self.attention_mask_BL[idx], self.position_ids_BL[idx],
                           self.completion_ids_BT[idx], self.completion_mask_BT[idx], self.prompt_width))


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS and the generation config's."""
    ids = []
    for src in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if src is None:
            continue
        ids.extend(src if isinstance(src, (list, tuple)) else [src])
    out = sorted({int(i) for i in ids})
    if not out:
        raise ValueError("the tokenizer has no EOS token; completions could never stop")
    return out


def pad_token_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    return 0


def _cut(row: list[int], eos: set[int]) -> tuple[list[int], bool]:
    for j, t in enumerate(row):
        if t in eos:
            return row[: j + 1], True
    return row, False


def _left_pad(id_lists: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(len(x) for x in id_lists)
    ids = torch.full((len(id_lists), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(id_lists), P), dtype=torch.long)
    for b, x in enumerate(id_lists):
        if x:
            ids[b, P - len(x):] = torch.tensor(x, dtype=torch.long)
            mask[b, P - len(x):] = 1
    return ids, mask


class _StopWhen:
    """A ``StoppingCriteria`` that ends generation early when ``flag()`` turns true (Ctrl-C)."""

    def __init__(self, flag: Callable[[], bool]):
        self.flag = flag

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), bool(self.flag()), dtype=torch.bool, device=input_ids.device)


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
) -> Rollouts:
    """One completion per entry of ``prompt_ids`` (repeat a prompt G times for a group).

    Sampling uses the global torch RNG (seed it, and checkpoint its state, for
    reproducible rollouts). Batches of ``batch_size`` sequences, left-padded.
    """
    import time

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
        for s in range(0, len(prompt_ids), batch_size):
            chunk = prompt_ids[s: s + batch_size]
            ids, mask = _left_pad(chunk, pad_id)
            with amp:
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     generation_config=gen_cfg, stopping_criteria=stopping)
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


def pack(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int) -> Packed:
    """Left-pad prompts, right-pad completions, and count positions over real tokens."""
    B = len(prompt_ids)
    if B != len(completion_ids) or B == 0:
        raise ValueError(f"{B} prompts for {len(completion_ids)} completions")
    p_ids, p_mask = _left_pad(prompt_ids, pad_id)
    T = max(1, max(len(c) for c in completion_ids))
    c_ids = torch.full((B, T), pad_id, dtype=torch.long)
    c_mask = torch.zeros((B, T), dtype=torch.long)
    for b, c in enumerate(completion_ids):
        if c:
            c_ids[b, : len(c)] = torch.tensor(c, dtype=torch.long)
            c_mask[b, : len(c)] = 1
    ids = torch.cat([p_ids, c_ids], dim=1)
    mask = torch.cat([p_mask, c_mask], dim=1)
    pos = (mask.cumsum(dim=1) - 1).clamp(min=0) * mask
    return Packed(ids, mask, pos, c_ids, c_mask, p_ids.shape[1])


def trim(b: Packed) -> Packed:
    """Drop prompt columns that are padding in every row and completion columns likewise."""
    P, T = b.prompt_width, b.completion_width
    used_p = b.attention_mask_BL[:, :P].any(dim=0).nonzero()
    lead = int(used_p[0]) if len(used_p) else P
    used_c = b.completion_mask_BT.any(dim=0).nonzero()
    keep_t = int(used_c[-1]) + 1 if len(used_c) else 1
    cols = torch.cat([torch.arange(lead, P), torch.arange(P, P + keep_t)])
    return Packed(b.input_ids_BL[:, cols], b.attention_mask_BL[:, cols], b.position_ids_BL[:, cols],
                  b.completion_ids_BT[:, :keep_t], b.completion_mask_BT[:, :keep_t], P - lead)
