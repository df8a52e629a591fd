"""Open-loop sweep: GAIN-RL's Gaussian window moved a fixed ``step`` per epoch.

No accuracy or angle feedback, so a whole schedule can be computed ahead of
training: this is what ``anglerank sample`` writes for trainers that cannot
call back into anglerank. It is also a usable ``--sampler sweep`` in
``anglerank train``, the control that separates the feedback rule from the
window itself.
"""

from __future__ import annotations

import numbers

import numpy as np

from anglerank.curriculum.config import DEFAULTS
from anglerank.curriculum.registry import register
from anglerank.curriculum.samplers.gainrl import GaussianRankSampler
from anglerank.curriculum.units import epoch_size, resolve_rank_units
from anglerank.errors import UserError

__all__ = ["SweepSampler", "sweep_sampler", "draw_schedule", "open_loop_schedule"]


@register("sweep")
class SweepSampler(GaussianRankSampler):
    """The Gaussian window with ``mu_{t+1} = mu_t + step`` (kept on the data, or wrapped)."""

    def delta(self, accuracy: float, angle: float) -> float:
        return float(self.step)


def sweep_sampler(n_items: int, subset_size, epochs: int, *, mu0=0, sigma=None, step=None, seed: int = 0,
                  shuffle: bool = True, wrap: bool = False) -> SweepSampler:
    """The sweep for an ``epochs``-long schedule, with its rank-unit arguments resolved.

    ``subset_size``, ``mu0``, ``sigma`` and ``step`` are rank units or
    fractions of N (anglerank.curriculum.units); ``sigma=None`` is the
    curriculum default; ``step=None`` moves the centre from ``mu0`` to the
    last rank over the epochs.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 0:
        raise UserError(f"epochs must be a non-negative integer, got {epochs!r}")
    k = int(round(resolve_rank_units(subset_size, n_items)))
    if k < 1:
        raise UserError(f"the subset must resolve to at least 1 row, got {subset_size!r} of {n_items}")
    sampler = SweepSampler(n_items, epoch_size(k, n_items), mu0=mu0,
                           sigma=DEFAULTS["sigma"] if sigma is None else sigma,
                           step=0, seed=seed, shuffle=shuffle, wrap=wrap)
    if step is None:
        sampler.step = (n_items - 1 - sampler.mu) / (epochs - 1) if epochs > 1 else 0.0
    else:
        sampler.step = resolve_rank_units(step, n_items)
    return sampler


def draw_schedule(sampler: SweepSampler, epochs: int) -> tuple[list[np.ndarray], list[float]]:
    """``epochs`` draws (rank positions) of an open-loop sampler and the window centre of each."""
    draws, mus = [], []
    for _ in range(epochs):
        mus.append(float(sampler.mu))
        draws.append(sampler.draw())
        sampler.update(0.0, 0.0)
    return draws, mus


def open_loop_schedule(n_items: int, subset_size, epochs: int, **kwargs) -> tuple[list[np.ndarray], list[float]]:
    """Every epoch's draw and window centre, computed ahead of training (arguments as :func:`sweep_sampler`).

    One seeded generator serves all epochs, so the result is a deterministic
    function of the arguments.
    """
    return draw_schedule(sweep_sampler(n_items, subset_size, epochs, **kwargs), epochs)
