"""The curriculum's settings and their ONE set of defaults.

Every consumer of the curriculum (``anglerank train``, ``anglerank sample``,
the TRL trainer and the verl sampler) builds a :class:`CurriculumConfig`; the
defaults here are the only ones. They are the authors' values (``sigma =
1000``, ``n = 500``, clamp ``[0, 1000]`` for about 7,500 prompts) written as
fractions of N so they scale with the data set; see
:mod:`anglerank.curriculum.units` for the rank-unit rule.

One definition of a correct completion, used everywhere: a completion is
correct when its reward is at least ``correct_threshold`` (default 1.0, the
full reward of a 0/1 verifier such as ``anglerank.rewards.math_reward`` or
TRL's accuracy reward). The epoch accuracy fed to the window update is the
share of correct completions among those with a finite reward (a NaN / None
reward, "could not be judged", is left out, as TRL does).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, fields

import numpy as np

from anglerank.curriculum.rankings import RANKING_HELP, Ranking
from anglerank.curriculum.registry import sampler_names
from anglerank.curriculum.units import parse_rank_value, positive_int
from anglerank.errors import UserError
from anglerank.settings import setting

__all__ = ["CurriculumConfig", "CurriculumSettings", "DEFAULTS", "HELP", "RANK_FIELDS", "correct"]

RANK_FIELDS = ("mu0", "sigma", "step", "adj_min", "adj_max")


GAINRL = "GAIN-RL"  # the help panel (of `anglerank train`)


def _f(default, help: str, *, valid: str = "any", rank_units: bool = False, **meta):
    if rank_units:
        meta.update(parse=parse_rank_value, cli_type=str)
        help += " Ranks (an integer) or a fraction of N (0 < x <= 1)."
    return setting(default, help, panel=GAINRL, valid=valid, **meta)


def _sampler_names() -> list[str]:
    return sampler_names()


@dataclass
class CurriculumSettings:
    """How each epoch's prompts are drawn from the ranking and how the window moves: the settings that
    ``anglerank train`` and ``anglerank sample`` offer as they are."""

    sampler: str = setting("gainrl", "gainrl: Gaussian window over the ranking, moved after each epoch by accuracy "
                           "and angle; uniform: shuffled passes over the data; ordered: consecutive windows of the "
                           "ranking; sweep: Gaussian window moved a fixed step per epoch (open loop).", panel=GAINRL,
                           choices=_sampler_names)
    ranking: str = setting("angle", RANKING_HELP, panel=GAINRL)
    subset_size: int = _f(256, "Prompts per epoch (K).", valid=">= 1")
    mu0: float = _f(0.0, "Initial window centre.", rank_units=True)
    sigma: float = _f(2 / 15, "Window width (authors: 1000 of 7,500).", valid="> 0", rank_units=True)
    step: float = _f(1 / 15, "Update step n (authors: 500 of 7,500).", rank_units=True)
    alpha: float = _f(2.0, "Update sharpness alpha.")
    beta_acc: float = _f(0.5, "Target accuracy: the window moves on faster above it.", valid="[0, 1]")
    adj_min: float = _f(0.0, "Lower clamp of the per-epoch move (negative lets the window move back).",
                        rank_units=True)
    adj_max: float = _f(2 / 15, "Upper clamp of the per-epoch move (authors: 1000 of 7,500).", rank_units=True)
    wrap: bool = setting(False, "Treat the ranking as a circle: when the window centre passes the last rank it "
                         "continues at rank 0 (a new pass), and a window near one end also covers the other, so over "
                         "many passes every prompt is drawn about equally often (default: the centre stays at the "
                         "last rank).", panel=GAINRL)
    correct_threshold: float = _f(1.0, "A completion counts as correct when its reward is >= this (1.0: the full "
                                  "reward of a 0/1 verifier); the epoch accuracy is the share of correct ones. In "
                                  "`anglerank train` the reward that decides is the built-in math checker's when "
                                  "the data has reference answers, else the total reward.")


@dataclass
class CurriculumConfig(CurriculumSettings):
    """The curriculum's settings with the two its callers set for it: the order within an epoch and the seed."""

    shuffle: bool = setting(True, "Train an epoch's prompts in random order (else in rank order).")
    seed: int = setting(0, "Seed of the sampler's private generator.")

    def __post_init__(self):
        if self.sampler not in _sampler_names():
            raise UserError(f"unknown sampler {self.sampler!r}; choose from {', '.join(_sampler_names())}")
        positive_int("subset_size", self.subset_size)
        self.ranking = str(Ranking.parse(self.ranking))
        for name in (*RANK_FIELDS, "alpha", "beta_acc", "correct_threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise UserError(f"{name} must be a finite number, got {v!r}")
        if not 0.0 <= self.beta_acc <= 1.0:
            raise UserError(f"beta_acc is a target accuracy in [0, 1], got {self.beta_acc}")

    def replace(self, **changes) -> "CurriculumConfig":
        return dataclasses.replace(self, **changes)


DEFAULTS: dict = {f.name: f.default for f in fields(CurriculumConfig)}
HELP: dict = {f.name: f.metadata["help"] for f in fields(CurriculumConfig)}


def correct(rewards, threshold: float) -> np.ndarray:
    """Per-completion correctness (1.0 / 0.0) of the finite ``rewards``; NaN / None are dropped."""
    r = np.asarray([np.nan if x is None else x for x in np.asarray(rewards, dtype=object).reshape(-1)],
                   dtype=np.float64)
    r = r[~np.isnan(r)]
    return (r >= float(threshold)).astype(np.float64)
