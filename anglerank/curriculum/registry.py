"""The sampler protocol and the registry of samplers by name.

A sampler turns a ranking of N prompts (rank position 0 = first in the
curriculum) into each epoch's subset of rank positions, and may move after the
epoch from the epoch's accuracy and angle. Adding one is one file in
``anglerank/curriculum/samplers/`` that decorates its class with
:func:`register`; its settings are fields of
:class:`anglerank.curriculum.config.CurriculumConfig`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from anglerank.registry import Registry

if TYPE_CHECKING:
    from anglerank.curriculum.config import CurriculumConfig

__all__ = ["Sampler", "register", "make_sampler", "sampler_names", "sampler_class"]


class Sampler(Protocol):
    """What the epoch state machine needs from a sampler."""

    #: False when the sampler ignores the ranking (the trainer then skips scoring).
    uses_ranking: bool
    n_items: int
    subset_size: int

    @classmethod
    def from_config(cls, n_items: int, config: "CurriculumConfig") -> "Sampler": ...

    def draw(self) -> np.ndarray:
        """This epoch's distinct rank positions (int64), in training order."""

    def update(self, accuracy: float, angle: float) -> float:
        """Move after an epoch (accuracy in [0, 1]); return the move in ranks (0 if none)."""

    def window(self) -> dict:
        """What to report about the window: ``{"mu": ..., "sigma": ...}``, or {} when there is none."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


SAMPLERS = Registry("sampler", "anglerank.curriculum.samplers")
#: Class decorator: make a sampler available as ``CurriculumConfig(sampler=name)``.
register = SAMPLERS.register
sampler_names = SAMPLERS.names
sampler_class = SAMPLERS.get


def make_sampler(config: "CurriculumConfig", n_items: int) -> Sampler:
    """The configured sampler over ``n_items`` ranks."""
    return sampler_class(config.sampler).from_config(n_items, config)
