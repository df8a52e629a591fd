# TEMPORARY shim (lead removes): superseded by anglerank.curriculum; kept only because anglerank/rank.py
# (sample) and tests/test_rank.py still import it. Replace with anglerank.curriculum.open_loop_schedule.
"""Gaussian rank-window sampler for the GAIN-RL curriculum (METHOD.md section 3).

This module exists to draw each epoch's training subset from the angle-ranked
data and to move the window after the epoch, with the flaws of the released
code (METHOD.md section 4) fixed:

- no one-epoch lag: the intended loop is ``draw()`` for epoch t, train,
  ``update(acc_t, ang_t)``, then ``draw()`` for epoch t + 1;
- accuracy is a 0..1 fraction (checked), not a reward sum divided by 2;
- the subset is shuffled within the epoch unless ``shuffle=False``;
- a private, seeded ``np.random.Generator`` whose state is checkpointed, so a
  resumed run draws exactly what an uninterrupted run would;
- ``adj_min`` may be negative so the window can move back;
- rank-unit parameters can be fractions of N, so the authors' defaults (tuned
  for ~7,500 prompts) can be scaled to any data set size.

Ranks are positions in the score order (0 = highest concentration); mapping
ranks back to rows of the data set is the caller's job.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["resolve_rank_units", "GaussianRankSampler", "gaussian_subsets"]

_STATE_VERSION = 1


def resolve_rank_units(value: float, n_items: int) -> float:
    """Convert a rank-unit parameter that may be given as a fraction of N.

    Rule (exact):

    - ``0`` (int or float) is 0;
    - any int (python or numpy) is absolute rank units: ``1`` is one rank;
    - a float with ``0 < |value| <= 1`` is a fraction of N: ``0.1 -> 0.1 * N``,
      ``-0.05 -> -0.05 * N``, and float ``1.0 -> N`` (an int 1 stays 1 rank);
    - any other float (``|value| > 1``, e.g. ``500.0``) is rank units.

    Booleans and non-finite values raise ``ValueError``.
    """
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"rank-unit value must be a number, got bool {value!r}")
    if not isinstance(n_items, numbers.Integral) or n_items < 1:
        raise ValueError(f"n_items must be a positive int, got {n_items!r}")
    if isinstance(value, numbers.Integral):
        return float(value)
    if not isinstance(value, numbers.Real):
        raise ValueError(f"rank-unit value must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"rank-unit value must be finite, got {value!r}")
    if v == 0.0:
        return 0.0
    if abs(v) <= 1.0:
        return v * n_items
    return v


def _finite(name: str, value) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


class GaussianRankSampler:
    """Draws epoch subsets of ranks around a moving centre ``mu``.

    Rank ``r`` in ``0 .. N-1`` has weight ``exp(-0.5 ((r - mu) / sigma)^2)``;
    each epoch draws ``subset_size`` distinct ranks by successive sampling
    proportional to those weights (the same distribution as
    ``numpy.random.choice(replace=False, p=...)``, the released code's call).
    After the epoch, ``update(accuracy, angle)`` moves ``mu`` by
    ``clamp(step tanh(alpha (accuracy - beta_acc)) + step tanh(alpha angle),
    adj_min, adj_max)``.

    ``mu0``, ``sigma``, ``step``, ``adj_min`` and ``adj_max`` are rank units or
    fractions of N, see :func:`resolve_rank_units`; the resolved values are the
    attributes of the same names. ``mu`` is left unclamped (a window past
    either end simply concentrates on that end).
    """

    def __init__(
        self,
        n_items: int,
        subset_size: int,
        *,
        mu0: float = 0.0,
        sigma: float = 1000.0,
        step: float = 500.0,
        alpha: float = 2.0,
        beta_acc: float = 0.5,
        adj_min: float = 0.0,
        adj_max: float = 1000.0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if not isinstance(n_items, numbers.Integral) or n_items < 1:
            raise ValueError(f"n_items must be a positive int, got {n_items!r}")
        if not isinstance(subset_size, numbers.Integral) or subset_size < 1:
            raise ValueError(f"subset_size must be a positive int, got {subset_size!r}")
        self.n_items = int(n_items)
        self.subset_size = min(int(subset_size), self.n_items)
        self.mu0 = resolve_rank_units(mu0, self.n_items)
        self.sigma = resolve_rank_units(sigma, self.n_items)
        self.step = resolve_rank_units(step, self.n_items)
        self.adj_min = resolve_rank_units(adj_min, self.n_items)
        self.adj_max = resolve_rank_units(adj_max, self.n_items)
        self.alpha = _finite("alpha", alpha)
        self.beta_acc = _finite("beta_acc", beta_acc)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self._validate()

        self.mu = self.mu0
        self.epoch = 0  # number of completed update() calls
        self.history: list[dict] = []
        self.last_draw: np.ndarray | None = None
        self.rng = np.random.Generator(np.random.PCG64(self.seed))

    def _validate(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"sigma must resolve to > 0 ranks, got {self.sigma}")
        if self.adj_min > self.adj_max:
            raise ValueError(f"adj_min ({self.adj_min}) > adj_max ({self.adj_max})")
        if not 0.0 <= self.beta_acc <= 1.0:
            raise ValueError(f"beta_acc is an accuracy threshold in [0, 1], got {self.beta_acc}")

    def _log_weights(self) -> np.ndarray:
        r_N = np.arange(self.n_items, dtype=np.float64)
        return -0.5 * ((r_N - self.mu) / self.sigma) ** 2

    def probabilities(self) -> np.ndarray:
        """Normalised truncated-Gaussian probabilities of ranks ``0 .. N-1``.

        Computed in log space with the maximum subtracted, so a ``mu`` far
        outside ``[0, N)`` puts the mass on the nearest end instead of
        underflowing to 0/0.
        """
        logw_N = self._log_weights()
        w_N = np.exp(logw_N - logw_N.max())
        return w_N / w_N.sum()

    def draw(self) -> np.ndarray:
        """Draw this epoch's ``subset_size`` distinct ranks (int64).

        Uses Gumbel-top-k on the log-weights: adding independent Gumbel noise
        and keeping the k largest is exactly successive sampling without
        replacement, and unlike ``choice(p=...)`` it cannot fail when fewer
        than k probabilities are representable (mu far past an end then
        yields the k ranks nearest that end). Returned sorted ascending if
        ``shuffle=False``, else in a uniformly random order.
        """
        k = self.subset_size
        keys_N = self._log_weights() + self.rng.gumbel(size=self.n_items)
        if k < self.n_items:
            top_K = np.argpartition(-keys_N, k - 1)[:k]
        else:
            top_K = np.arange(self.n_items)
        top_K = np.sort(top_K).astype(np.int64)
        if self.shuffle:
            top_K = self.rng.permutation(top_K)
        self.last_draw = top_K
        return top_K.copy()

    def delta(self, accuracy: float, angle: float) -> float:
        """The clamped ``mu`` adjustment for an epoch, without applying it."""
        acc = float(accuracy)
        if not (0.0 <= acc <= 1.0):
            # Catches the released code's reward-sum/2 and percent scales.
            raise ValueError(f"accuracy must be a fraction in [0, 1], got {accuracy!r}")
        ang = _finite("angle", angle)
        raw = self.step * math.tanh(self.alpha * (acc - self.beta_acc)) + self.step * math.tanh(
            self.alpha * ang
        )
        return min(max(raw, self.adj_min), self.adj_max)

    def update(self, accuracy: float, angle: float) -> float:
        """Move ``mu`` after an epoch; returns the applied delta.

        ``accuracy`` is the epoch's fraction of correct completions (0..1),
        ``angle`` the epoch's mean angle signal.
        """
        d = self.delta(accuracy, angle)
        self.history.append(
            {
                "epoch": self.epoch,
                "mu_before": float(self.mu),
                "accuracy": float(accuracy),
                "angle": float(angle),
                "delta": float(d),
            }
        )
        self.mu = float(self.mu + d)
        self.epoch += 1
        return d

    def state_dict(self) -> dict:
        """JSON-serialisable state: parameters, ``mu``, epoch, history, RNG.

        Rank-unit parameters are stored resolved (rank units), and restored
        verbatim, never re-resolved.
        """
        return {
            "version": _STATE_VERSION,
            "n_items": self.n_items,
            "subset_size": self.subset_size,
            "mu0": self.mu0,
            "sigma": self.sigma,
            "step": self.step,
            "alpha": self.alpha,
            "beta_acc": self.beta_acc,
            "adj_min": self.adj_min,
            "adj_max": self.adj_max,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "mu": float(self.mu),
            "epoch": self.epoch,
            "history": [dict(h) for h in self.history],
            "last_draw": None if self.last_draw is None else [int(x) for x in self.last_draw],
            # PCG64 state is a dict of python ints (128-bit); json keeps them exact.
            "rng_state": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` (the checkpoint's values win).

        Raises ``ValueError`` if ``n_items`` differs: ranks would then refer to
        a different data set and the resume would be silently wrong.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported sampler state version {state.get('version')!r}")
        if int(state["n_items"]) != self.n_items:
            raise ValueError(
                f"checkpoint has n_items={state['n_items']}, sampler has {self.n_items}"
            )
        self.subset_size = int(state["subset_size"])
        for key in ("mu0", "sigma", "step", "alpha", "beta_acc", "adj_min", "adj_max"):
            setattr(self, key, _finite(key, state[key]))
        self.seed = int(state["seed"])
        self.shuffle = bool(state["shuffle"])
        self._validate()
        self.mu = _finite("mu", state["mu"])
        self.epoch = int(state["epoch"])
        self.history = [dict(h) for h in state["history"]]
        last = state.get("last_draw")
        self.last_draw = None if last is None else np.asarray(last, dtype=np.int64)
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = state["rng_state"]
        self.rng = rng

    @classmethod
    def from_state_dict(cls, state: dict) -> "GaussianRankSampler":
        """Build a sampler directly from a checkpointed state."""
        sampler = cls(int(state["n_items"]), int(state["subset_size"]), seed=int(state["seed"]))
        sampler.load_state_dict(state)
        return sampler


def gaussian_subsets(
    n_items: int,
    subset_size: int,
    epochs: int,
    mu0: float = 0.0,
    sigma: float = 1000.0,
    step: float = 500.0,
    seed: int = 0,
    shuffle: bool = True,
) -> list[np.ndarray]:
    """Open-loop curriculum: one draw per epoch with ``mu_t = mu0 + t * step``.

    No accuracy/angle feedback, so the whole schedule can be precomputed (the
    ``anglerank sample`` command). Rank units follow
    :func:`resolve_rank_units`; one seeded generator serves all epochs, so the
    output is a deterministic function of the arguments.
    """
    if not isinstance(epochs, numbers.Integral) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    sampler = GaussianRankSampler(
        n_items, subset_size, mu0=mu0, sigma=sigma, step=step, seed=seed, shuffle=shuffle
    )
    subsets = []
    for t in range(int(epochs)):
        sampler.mu = sampler.mu0 + t * sampler.step
        subsets.append(sampler.draw())
    return subsets
