"""The ranking without the Gaussian or the feedback: consecutive windows of K ranks.

Epoch t takes ranks ``[tK, (t+1)K)``, wrapping to rank 0 after the last one;
the control that asks whether GAIN-RL's window and update add anything to the
order itself.
"""

from __future__ import annotations

import numpy as np

from anglerank.curriculum.config import CurriculumConfig
from anglerank.curriculum.registry import register
from anglerank.curriculum.units import positive_int
from anglerank.errors import UserError

__all__ = ["OrderedSampler"]


@register("ordered")
class OrderedSampler:
    uses_ranking = True

    def __init__(self, n_items: int, subset_size: int, seed: int = 0, shuffle: bool = True):
        self.n_items = positive_int("n_items", n_items)
        self.subset_size = min(positive_int("subset_size", subset_size), self.n_items)
        self.shuffle = shuffle
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.cursor = 0
        self.mu = 0.0

    @classmethod
    def from_config(cls, n_items: int, config: CurriculumConfig) -> "OrderedSampler":
        return cls(n_items, config.subset_size, config.seed, shuffle=config.shuffle)

    def draw(self) -> np.ndarray:
        ranks = (self.cursor + np.arange(self.subset_size)) % self.n_items
        self.mu = float(self.cursor + (self.subset_size - 1) / 2)
        self.cursor = (self.cursor + self.subset_size) % self.n_items
        return self.rng.permutation(ranks) if self.shuffle else ranks

    def update(self, accuracy: float, angle: float) -> float:
        return float(self.subset_size)

    def window(self) -> dict:
        return {"mu": self.mu}

    def state_dict(self) -> dict:
        return {"kind": self.name, "n_items": self.n_items, "cursor": self.cursor, "mu": self.mu,
                "rng_state": self.rng.bit_generator.state}

    def load_state_dict(self, s: dict) -> None:
        if s["n_items"] != self.n_items:
            raise UserError(f"checkpoint has {s['n_items']} prompts, the data has {self.n_items}")
        self.cursor, self.mu = int(s["cursor"]), float(s["mu"])
        self.rng.bit_generator.state = s["rng_state"]
