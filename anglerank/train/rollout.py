"""The rollouts a step trains on: rewarded groups of completions, the batch a step's update takes, and
their tensor layout.

The training forward uses the layout generation used (see
:mod:`anglerank.model.generation`): left-padded prompt then right-padded completion,
with explicit ``position_ids`` counted over real tokens, so a left-padded row
sees the same positions it was generated with (``generate`` derives positions
from the attention mask, a plain forward does not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from anglerank.model.generation import Rollouts, left_pad

__all__ = ["Groups", "RolloutBatch", "Packed", "pack", "trim"]


@dataclass
class Groups:
    """Rewarded rollouts of some prompts: G consecutive completions per prompt."""

    prompts: list[int]  # pool index of each group
    ro: Rollouts
    total: list[float]  # per completion: total reward
    judged: list[float]  # per completion: the reward that decides correctness
    per_func: dict  # reward function name -> per-completion rewards

    def uniform(self, G: int) -> list[bool]:
        """Per group: all G rewards equal (zero advantage, so no gradient)."""
        r = np.asarray(self.total, dtype=np.float64).reshape(-1, G)
        return [bool(x) for x in np.ptp(r, axis=1) == 0] if r.size else []

    def select(self, groups: list[int], G: int) -> Groups:
        seqs = [g * G + k for g in groups for k in range(G)]
        pick = lambda xs: [xs[b] for b in seqs]  # noqa: E731
        ro = Rollouts(pick(self.ro.prompt_ids), pick(self.ro.completion_ids), pick(self.ro.texts),
                      pick(self.ro.finished), self.ro.seconds)
        return Groups([self.prompts[g] for g in groups], ro, pick(self.total), pick(self.judged),
                      {k: pick(v) for k, v in self.per_func.items()})

    def __add__(self, other: Groups) -> Groups:
        a, b = self.ro, other.ro
        ro = Rollouts(a.prompt_ids + b.prompt_ids, a.completion_ids + b.completion_ids, a.texts + b.texts,
                      a.finished + b.finished, a.seconds + b.seconds)
        return Groups(self.prompts + other.prompts, ro, self.total + other.total, self.judged + other.judged,
                      {k: v + other.per_func[k] for k, v in self.per_func.items()})


@dataclass
class RolloutBatch:
    """What a step trains on: every group rolled out, and the advantages of those it trains."""

    groups: Groups  # every rolled-out group (with --filter-groups, the dropped ones too)
    train: list[int]  # the groups trained on (indices into ``groups``)
    trained: Groups  # those groups
    advantages: torch.Tensor  # [N] per completion of the trained groups
    info: dict  # --filter-groups metrics for the step's record (empty without)
    filtered: bool = False  # --filter-groups: groups with equal rewards are dropped


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


def pack(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int) -> Packed:
    """Left-pad prompts, right-pad completions, and count positions over real tokens."""
    B = len(prompt_ids)
    if B != len(completion_ids) or B == 0:
        raise ValueError(f"{B} prompts for {len(completion_ids)} completions")
    p_ids, p_mask = left_pad(prompt_ids, pad_id)
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
    P = b.prompt_width
    used_p = b.attention_mask_BL[:, :P].any(dim=0).nonzero()
    lead = int(used_p[0]) if len(used_p) else P
    used_c = b.completion_mask_BT.any(dim=0).nonzero()
    keep_t = int(used_c[-1]) + 1 if len(used_c) else 1
    cols = torch.cat([torch.arange(lead, P), torch.arange(P, P + keep_t)])
    return Packed(b.input_ids_BL[:, cols], b.attention_mask_BL[:, cols], b.position_ids_BL[:, cols],
                  b.completion_ids_BT[:, :keep_t], b.completion_mask_BT[:, :keep_t], P - lead)
