"""Vanilla GRPO's order, the baseline: shuffled passes over the data, K prompts an epoch.

It ignores the ranking, so a run with it needs no scoring at all.
"""

from __future__ import annotations

import numpy as np

from anglerank.curriculum.config import CurriculumConfig
from anglerank.curriculum.registry import register
from anglerank.curriculum.units import positive_int
from anglerank.errors import UserError

__all__ = ["UniformSampler"]


@register("uniform")
class UniformSampler:
    """Each epoch takes the next K of a seeded permutation; a pass's leftover (< K) is skipped,
    so an epoch never holds a prompt twice."""

    uses_ranking = False

    def __init__(self, n_items: int, subset_size: int, seed: int = 0):
        self.n_items = positive_int("n_items", n_items)
        self.subset_size = min(positive_int("subset_size", subset_size), self.n_items)
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.perm = np.zeros(0, dtype=np.int64)
        self.pos = 0

    @classmethod
    def from_config(cls, n_items: int, config: CurriculumConfig) -> "UniformSampler":
        return cls(n_items, config.subset_size, config.seed)

    def draw(self) -> np.ndarray:
        if self.pos + self.subset_size > len(self.perm):
            self.perm, self.pos = self.rng.permutation(self.n_items), 0
        out = self.perm[self.pos: self.pos + self.subset_size]
        self.pos += self.subset_size
        return out.astype(np.int64)

    def update(self, accuracy: float, angle: float) -> float:
        return 0.0

    def window(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {"kind": self.name, "n_items": self.n_items, "subset_size": self.subset_size,
                "perm": self.perm.tolist(), "pos": self.pos, "rng_state": self.rng.bit_generator.state}

    def load_state_dict(self, s: dict) -> None:
        if s["n_items"] != self.n_items:
            raise UserError(f"checkpoint has {s['n_items']} prompts, the data has {self.n_items}")
        self.perm, self.pos = np.asarray(s["perm"], dtype=np.int64), int(s["pos"])
        self.rng.bit_generator.state = s["rng_state"]
