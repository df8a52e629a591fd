"""The epoch state machine shared by every trainer: draw, observe, move the window.

``anglerank train``, the TRL trainer, the verl sampler and (through the open-loop
sweep) ``anglerank sample`` all drive one :class:`Curriculum`::

    rows = cur.begin_epoch()          # closes an epoch still open, then draws this one's rows
    cur.observe(rewards, angles)      # any number of times: per-completion rewards, optional angles
    record = cur.end_epoch()          # accuracy and angle of the epoch -> sampler.update -> next window

The accuracy is the share of correct completions (one definition, in
:mod:`anglerank.curriculum.config`). The angle is the mean of the angles
observed during the epoch (the own trainer measures them on the live policy);
when none were observed, the mean of the per-row ``angles`` given at
construction (the ranked data's ``angle_score``) over the epoch's rows; else
``angle_default``.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from anglerank.curriculum.config import CurriculumConfig, correct
from anglerank.curriculum.rankings import order_by
from anglerank.curriculum.registry import make_sampler
from anglerank.curriculum.units import epoch_size
from anglerank.errors import UserError

__all__ = ["Curriculum", "rank_order"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 2


def rank_order(ranks) -> np.ndarray:
    """Row indices sorted by rank: ``order[r]`` is the row at rank position r.

    For a proper rank column (a permutation of ``0 .. N-1``) this is the inverse
    permutation. Ranks only order rows, so gaps (rows filtered after ranking),
    duplicates (stable by row index) and nulls (placed last) are tolerated; all nulls are an error.
    """
    r = np.asarray(ranks, dtype=np.float64)
    if r.ndim != 1:
        raise UserError(f"ranks must be 1-D, got shape {r.shape}")
    if r.size and np.isnan(r).all():
        raise UserError("the rank column has no values (all null)")
    return order_by(r)


def _digest(order: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(order, dtype=np.int64).tobytes()).hexdigest()[:16]


class Curriculum:
    """Epoch bookkeeping of a curriculum over the rows of one ranked data set.

    ``order`` maps rank positions to rows (see :func:`rank_order`). The epoch
    size is ``config.subset_size`` capped by N and rounded down to a multiple
    of ``chunk`` (a trainer's distinct prompts per batch) so an epoch is whole
    batches.
    """

    def __init__(self, order, config: CurriculumConfig, *, angles=None, angle_default: float = 0.0,
                 chunk: int = 1) -> None:
        order = np.asarray(order, dtype=np.int64)
        n = int(order.shape[0])
        if n == 0:
            raise UserError("the ranked data set is empty")
        if int(chunk) < 1:
            raise UserError(f"chunk must be >= 1, got {chunk}")
        k = epoch_size(int(config.subset_size), n)
        k -= k % int(chunk)
        if k < 1:
            raise UserError(f"an epoch must hold at least one batch of {chunk} distinct prompts, but subset_size="
                            f"{config.subset_size} with {n} rows gives none; raise subset_size (>= {chunk}) or "
                            "lower the batch size")
        if angles is not None:
            angles = np.asarray(angles, dtype=np.float64)
            if angles.shape != (n,):
                raise UserError(f"angles must have one value per row ({n}), got shape {angles.shape}")
        self.config, self.chunk = config, int(chunk)
        self.angles, self.angle_default = angles, float(angle_default)
        self.sampler = make_sampler(config.replace(subset_size=k), n)
        self.set_order(order)
        self.positions: np.ndarray | None = None  # rank positions of the current / last epoch, in training order
        self.rows: np.ndarray | None = None  # the rows at those positions
        self.open = False  # drawn, window not yet moved
        self._stats = np.zeros(4)  # correct, judged, angle sum, angle count
        self.epochs: list[dict] = []

    @classmethod
    def from_ranks(cls, ranks, config: CurriculumConfig, **kwargs) -> "Curriculum":
        """A curriculum over a data set's rank column (e.g. ``angle_rank``)."""
        return cls(rank_order(ranks), config, **kwargs)

    # -- the ranking
    @property
    def n_items(self) -> int:
        return self.sampler.n_items

    @property
    def subset_size(self) -> int:
        return self.sampler.subset_size

    @property
    def mu(self) -> float | None:
        return self.sampler.window().get("mu")

    def set_order(self, order) -> None:
        """Replace the ranking (the trainer re-scores with the live policy); rows must stay the same set."""
        order = np.asarray(order, dtype=np.int64)
        if order.shape != (self.n_items,) or not np.array_equal(np.sort(order), np.arange(self.n_items)):
            raise ValueError(f"a ranking must be a permutation of the {self.n_items} rows")
        self.order, self.order_digest = order, _digest(order)

    def reachable(self, epochs: int) -> np.ndarray:
        """Rank positions the next ``epochs`` draws can take, in walk order (all, if the sampler cannot say).

        With ``wrap`` the window is a circle, so near either end this includes ranks at the other end."""
        reach = getattr(self.sampler, "reach", None)
        return reach(epochs) if reach is not None else np.arange(self.n_items, dtype=np.int64)

    def reorder(self, positions, keys) -> None:
        """Re-rank only the rows at ``positions`` (``keys``: one per position, in the given order): they
        take those positions in ascending ``keys`` order (NaN last), lowest position first, whatever
        order the positions came in (``reachable`` lists them in walk order, which wraps); every
        other row keeps its place."""
        positions = np.asarray(positions, dtype=np.int64)
        order = self.order.copy()
        order[np.sort(positions)] = self.order[positions][order_by(keys)]
        self.set_order(order)

    # -- the epoch
    def begin_epoch(self) -> np.ndarray:
        """Close the previous epoch if still open, then draw this epoch's rows."""
        if self.open:
            self.end_epoch()
        self.positions = self.sampler.draw()
        self.rows = self.order[self.positions]
        self.open = True
        self._stats[:] = 0.0
        return self.rows.copy()

    def observe(self, rewards, angles=None) -> None:
        """Add per-completion rewards (and optionally measured angles) to the open epoch."""
        c = correct(rewards, self.config.correct_threshold)
        a = np.asarray([] if angles is None else angles, dtype=np.float64).reshape(-1)
        a = a[np.isfinite(a)]
        if not self.open:
            if c.size or a.size:
                logger.debug("curriculum: %d rewards arrived outside an epoch; ignored", c.size)
            return
        self._stats += (c.sum(), c.size, a.sum(), a.size)

    def epoch_angle(self) -> float:
        if self._stats[3]:
            return float(self._stats[2] / self._stats[3])
        if self.angles is None or self.rows is None:
            return self.angle_default
        a = self.angles[self.rows]
        a = a[np.isfinite(a)]
        return float(a.mean()) if a.size else self.angle_default

    def end_epoch(self) -> dict | None:
        """Move the window with the open epoch's accuracy and angle; None if no epoch is open.

        With no judged completion the move is skipped (recorded with ``delta = 0``):
        an accuracy of 0 would move the window for no reason. The record's ``epoch``
        counts from 1, as ``anglerank train``'s logs do.
        """
        if not self.open:
            return None
        n_correct, judged = self._stats[0], int(self._stats[1])
        record = {"epoch": len(self.epochs) + 1, "mu": self.mu, "completions": judged, "angle": self.epoch_angle()}
        if judged == 0:
            logger.warning("curriculum: no rewards observed this epoch; the window stays")
            record.update(accuracy=None, delta=0.0, skipped=True)
        else:
            accuracy = float(n_correct / judged)
            record.update(accuracy=accuracy, delta=float(self.sampler.update(accuracy, record["angle"])),
                          skipped=False)
        record.update(mu_next=self.mu, **{k: v for k, v in self.sampler.window().items() if k != "mu"})
        self.epochs.append(record)
        self.open = False
        return record

    # -- checkpoints
    def state_dict(self) -> dict:
        """JSON-serialisable state (plain python types only)."""
        return {"version": _STATE_VERSION, "n_items": self.n_items, "chunk": self.chunk,
                "order_digest": self.order_digest, "angle_default": self.angle_default,
                "sampler": self.sampler.state_dict(),
                "positions": None if self.rows is None else [int(x) for x in self.positions],
                "open": bool(self.open), "stats": [float(x) for x in self._stats],
                "epochs": [dict(e) for e in self.epochs]}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`; a state made on other data (rows or ranking) is refused."""
        if state.get("version") != _STATE_VERSION:
            raise UserError(f"unsupported curriculum state version {state.get('version')!r}")
        if int(state["n_items"]) != self.n_items or state["order_digest"] != self.order_digest:
            raise UserError("the curriculum checkpoint was made on a different ranked data set (rows "
                            f"{state['n_items']} vs {self.n_items}, order digest {state['order_digest']} vs "
                            f"{self.order_digest})")
        self.sampler.load_state_dict(state["sampler"])
        self.chunk, self.angle_default = int(state["chunk"]), float(state["angle_default"])
        pos = state["positions"]
        self.positions = None if pos is None else np.asarray(pos, dtype=np.int64)
        self.rows = None if pos is None else self.order[self.positions]
        self.open = bool(state["open"]) and self.rows is not None
        self._stats = np.asarray(state["stats"], dtype=np.float64)
        self.epochs = [dict(e) for e in state["epochs"]]
