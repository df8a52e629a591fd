"""GAIN-RL's sampler: a Gaussian window over the ranks, moved by accuracy and angle.

The authors' sampler (a Gaussian over the angle ranks whose centre moves after
each epoch by a tanh of the accuracy and of the angle), with the flaws of their
released code fixed:

- no one-epoch lag: ``draw()`` for epoch t, train, ``update(acc_t, ang_t)``,
  then ``draw()`` for epoch t + 1;
- accuracy is a 0..1 fraction (checked), not a reward sum divided by 2;
- the subset is shuffled within the epoch unless ``shuffle=False``;
- a private, seeded ``np.random.Generator`` whose state is checkpointed, so a
  resumed run draws exactly what an uninterrupted run would;
- ``adj_min`` may be negative so the window can move back;
- rank-unit parameters can be fractions of N (anglerank.curriculum.units);
- the window stays on the data: ``mu`` is clamped to ``[0, N-1]`` (the
  Gaussian then keeps about 1.25 sigma ranks of mass at the end, so an epoch
  still draws K distinct rows spread over the tail), or with ``wrap`` the
  ranks form a circle: ``mu`` continues at rank 0 after the last rank (a new
  pass) and the weights use the circular distance to ``mu``, so the window
  near one end also covers the other end and over many passes every rank is
  drawn about equally often (a window cut off at both ends would under-sample
  the first and last ranks). The authors' ``mu`` grows without bound: past N
  their probabilities become 0/0, and a clamp-free window would collapse onto
  the last few ranks.
"""

from __future__ import annotations

import math

import numpy as np

from anglerank.curriculum.config import DEFAULTS, CurriculumConfig
from anglerank.curriculum.registry import register
from anglerank.curriculum.units import positive_int, resolve_rank_units
from anglerank.errors import UserError

__all__ = ["GaussianRankSampler"]

_STATE_VERSION = 2
_RANK_PARAMS = ("mu0", "sigma", "step", "adj_min", "adj_max")


def _finite(name: str, value) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise UserError(f"{name} must be finite, got {value!r}")
    return v


@register("gainrl")
class GaussianRankSampler:
    """Draws epoch subsets of ranks around a moving centre ``mu``.

    Rank ``r`` in ``0 .. N-1`` has weight ``exp(-0.5 (d / sigma)^2)`` with
    ``d = |r - mu|``, or with ``wrap`` the circular distance ``d = min(|r - mu|
    mod N, N - (|r - mu| mod N))``; each epoch draws ``subset_size`` distinct
    ranks by successive sampling proportional to those weights (the law of ``numpy.random.choice(
    replace=False, p=...)``, the released code's call). After the epoch,
    ``update(accuracy, angle)`` moves ``mu`` by ``clamp(step tanh(alpha
    (accuracy - beta_acc)) + step tanh(alpha angle), adj_min, adj_max)`` and
    keeps it on the data (see the module doc).
    """

    uses_ranking = True

    def __init__(self, n_items: int, subset_size: int, *, mu0: float = DEFAULTS["mu0"],
                 sigma: float = DEFAULTS["sigma"], step: float = DEFAULTS["step"], alpha: float = DEFAULTS["alpha"],
                 beta_acc: float = DEFAULTS["beta_acc"], adj_min: float = DEFAULTS["adj_min"],
                 adj_max: float = DEFAULTS["adj_max"], wrap: bool = DEFAULTS["wrap"], seed: int = DEFAULTS["seed"],
                 shuffle: bool = DEFAULTS["shuffle"]) -> None:
        self.n_items = positive_int("n_items", n_items)
        self.subset_size = min(positive_int("subset_size", subset_size), self.n_items)
        for name, value in zip(_RANK_PARAMS, (mu0, sigma, step, adj_min, adj_max)):
            setattr(self, name, resolve_rank_units(value, self.n_items))
        self.alpha = _finite("alpha", alpha)
        self.beta_acc = _finite("beta_acc", beta_acc)
        self.wrap = bool(wrap)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self._validate()
        self.mu = self._on_data(self.mu0)
        self.epoch = 0  # completed update() calls
        self.passes = 0  # times the window wrapped to rank 0
        self.history: list[dict] = []
        self.last_draw: np.ndarray | None = None
        self.rng = np.random.Generator(np.random.PCG64(self.seed))

    @classmethod
    def from_config(cls, n_items: int, config: CurriculumConfig) -> "GaussianRankSampler":
        return cls(n_items, config.subset_size, mu0=config.mu0, sigma=config.sigma, step=config.step,
                   alpha=config.alpha, beta_acc=config.beta_acc, adj_min=config.adj_min, adj_max=config.adj_max,
                   wrap=config.wrap, seed=config.seed, shuffle=config.shuffle)

    def _validate(self) -> None:
        if not self.sigma > 0:
            raise UserError(f"sigma must resolve to > 0 ranks, got {self.sigma}")
        if self.adj_min > self.adj_max:
            raise UserError(f"adj_min ({self.adj_min}) > adj_max ({self.adj_max})")
        if not 0.0 <= self.beta_acc <= 1.0:
            raise UserError(f"beta_acc is an accuracy threshold in [0, 1], got {self.beta_acc}")

    # -- the window
    def _on_data(self, mu: float) -> float:
        return min(max(float(mu), 0.0), float(self.n_items - 1))

    def _move(self, delta: float) -> None:
        if not self.wrap:
            self.mu = self._on_data(self.mu + delta)
            return
        # On the circle the centre's progress is passes * N + mu; it never goes back before the start.
        passes, mu = divmod(max(self.passes * self.n_items + self.mu + delta, 0.0), self.n_items)
        self.passes, self.mu = int(passes), float(mu)

    def window(self) -> dict:
        return {"mu": float(self.mu), "sigma": float(self.sigma), "passes": self.passes}

    def reach(self, epochs: int, margin: float = 3.0) -> np.ndarray:
        """Rank positions the next ``epochs`` draws can take (beyond ``margin`` sigma the mass is
        negligible), in the order the window walks them: the window moves at most ``adj_max`` per
        epoch (back at most ``adj_min``). With ``wrap`` the window is a circle: it reaches past
        either end onto the other, and the walk continues at rank 0 after the last rank."""
        moves = max(0, int(epochs) - 1)
        back = self.mu + min(0.0, moves * self.adj_min)
        if self.wrap and self.passes == 0:
            back = max(back, 0.0)  # the centre never moves back before the start
        lo = math.floor(back - margin * self.sigma)
        hi = math.ceil(self.mu + max(0.0, moves * self.adj_max) + margin * self.sigma)
        if not self.wrap:
            walk = np.arange(max(lo, 0), hi + 1, dtype=np.int64)
            return walk[walk < self.n_items]
        return np.arange(lo, lo + min(hi - lo + 1, self.n_items), dtype=np.int64) % self.n_items

    def _log_weights(self) -> np.ndarray:
        r_N = np.arange(self.n_items, dtype=np.float64)
        if not self.wrap:
            return -0.5 * ((r_N - self.mu) / self.sigma) ** 2
        d_N = np.abs(r_N - self.mu) % self.n_items
        d_N = np.minimum(d_N, self.n_items - d_N)
        return -0.5 * (d_N / self.sigma) ** 2

    def probabilities(self) -> np.ndarray:
        """Normalised Gaussian probabilities of ranks ``0 .. N-1``: cut off at both ends, or wrapped
        around the circle with ``wrap`` (log space, max subtracted)."""
        logw_N = self._log_weights()
        w_N = np.exp(logw_N - logw_N.max())
        return w_N / w_N.sum()

    def draw(self) -> np.ndarray:
        """This epoch's ``subset_size`` distinct ranks (int64).

        Gumbel-top-k on the log-weights: adding independent Gumbel noise and
        keeping the k largest is exactly successive sampling without
        replacement, and unlike ``choice(p=...)`` it cannot fail when fewer
        than k probabilities are representable. Sorted ascending if
        ``shuffle=False``, else in a uniformly random order.
        """
        k = self.subset_size
        keys_N = self._log_weights() + self.rng.gumbel(size=self.n_items)
        top_K = np.argpartition(-keys_N, k - 1)[:k] if k < self.n_items else np.arange(self.n_items)
        top_K = np.sort(top_K).astype(np.int64)
        if self.shuffle:
            top_K = self.rng.permutation(top_K)
        self.last_draw = top_K
        return top_K.copy()

    def delta(self, accuracy: float, angle: float) -> float:
        """The clamped ``mu`` adjustment for an epoch, without applying it."""
        acc = float(accuracy)
        if not 0.0 <= acc <= 1.0:  # catches the released code's reward-sum/2 and percent scales
            raise ValueError(f"accuracy must be a fraction in [0, 1], got {accuracy!r}")
        ang = _finite("angle", angle)
        raw = self.step * math.tanh(self.alpha * (acc - self.beta_acc)) + self.step * math.tanh(self.alpha * ang)
        return min(max(raw, self.adj_min), self.adj_max)

    def update(self, accuracy: float, angle: float) -> float:
        """Move ``mu`` after an epoch; returns the applied delta (before keeping ``mu`` on the data)."""
        d = self.delta(accuracy, angle)
        self.history.append({"epoch": self.epoch + 1, "mu_before": float(self.mu), "accuracy": float(accuracy),
                             "angle": float(angle), "delta": float(d)})
        self._move(d)
        self.epoch += 1
        return d

    # -- checkpoints
    def state_dict(self) -> dict:
        """JSON-serialisable state; rank-unit parameters are stored resolved and restored verbatim."""
        return {
            "version": _STATE_VERSION, "kind": self.name, "n_items": self.n_items, "subset_size": self.subset_size,
            **{k: getattr(self, k) for k in (*_RANK_PARAMS, "alpha", "beta_acc")},
            "wrap": self.wrap, "seed": self.seed, "shuffle": self.shuffle, "mu": float(self.mu),
            "epoch": self.epoch, "passes": self.passes, "history": [dict(h) for h in self.history],
            "last_draw": None if self.last_draw is None else [int(x) for x in self.last_draw],
            # PCG64 state is a dict of python ints (128-bit); json keeps them exact.
            "rng_state": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` (the checkpoint's values win); another N is an error."""
        if state.get("version") != _STATE_VERSION:
            raise UserError(f"unsupported sampler state version {state.get('version')!r}")
        if int(state["n_items"]) != self.n_items:
            raise UserError(f"checkpoint has n_items={state['n_items']}, sampler has {self.n_items}")
        self.subset_size = int(state["subset_size"])
        for key in (*_RANK_PARAMS, "alpha", "beta_acc"):
            setattr(self, key, _finite(key, state[key]))
        self.wrap, self.seed, self.shuffle = bool(state["wrap"]), int(state["seed"]), bool(state["shuffle"])
        self._validate()
        self.mu = _finite("mu", state["mu"])
        self.epoch, self.passes = int(state["epoch"]), int(state["passes"])
        self.history = [dict(h) for h in state["history"]]
        last = state.get("last_draw")
        self.last_draw = None if last is None else np.asarray(last, dtype=np.int64)
        self.rng = np.random.Generator(np.random.PCG64())
        self.rng.bit_generator.state = state["rng_state"]

    @classmethod
    def from_state_dict(cls, state: dict) -> "GaussianRankSampler":
        sampler = cls(int(state["n_items"]), int(state["subset_size"]), seed=int(state["seed"]))
        sampler.load_state_dict(state)
        return sampler
