"""Adapters that plug the GAIN-RL curriculum into other trainers (TRL, verl).

This package exists so a user training with TRL's ``GRPOTrainer`` or verl's PPO
trainer gets GAIN-RL sampling (METHOD.md section 3) from an angle-ranked data
set with no glue code. The trainer-specific modules are thin:

- ``anglerank.integrations.trl``: ``GainRLGRPOTrainer`` (a ``GRPOTrainer``
  subclass) and ``GainRLConfig``;
- ``anglerank.integrations.verl``: ``GainRLSampler``, a curriculum sampler for
  verl's ``data.sampler.class_path`` / ``class_name``.

What they share lives here and imports neither TRL nor verl:

- :func:`column_values` reads one column from whatever the trainer holds
  (``datasets.Dataset``, verl's ``RLHFDataset.dataframe``, pandas, polars,
  pyarrow, a dict of lists or a list of row dicts);
- :func:`rank_order` turns an ``angle_rank`` column into "rank position ->
  row index" (gaps, duplicates and nulls are tolerated: ranks only order rows);
- :func:`completion_scores` maps per-completion rewards to 0..1 "correctness";
- :class:`GainRLCurriculum` is the epoch state machine around
  :class:`anglerank.train.sampler.GaussianRankSampler`: draw the epoch's rows,
  accumulate the epoch's correctness, apply the ``mu`` update when the epoch
  ends (before the next draw: no one-epoch lag), checkpoint all of it as JSON.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any

import numpy as np

from anglerank.train.sampler import GaussianRankSampler

__all__ = [
    "DEFAULTS",
    "GainRLCurriculum",
    "column_values",
    "completion_scores",
    "rank_order",
]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1

# The authors' hyper-parameters (METHOD.md section 3), with the rank-unit ones
# written as fractions of N so they scale with the data set: at N = 7,500 they
# are exactly the authors' sigma = 1000, step n = 500, adj_max = 1000. Pass an
# int (or a float > 1) for absolute rank units, see resolve_rank_units.
DEFAULTS: dict[str, Any] = {
    "subset_size": 256,
    "mu0": 0.0,
    "sigma": 2 / 15,
    "step": 1 / 15,
    "alpha": 2.0,
    "beta_acc": 0.5,
    "adj_min": 0.0,
    "adj_max": 2 / 15,
}


# ---------------------------------------------------------------- data access


def column_values(data: Any, name: str) -> np.ndarray | None:
    """Column ``name`` of ``data`` as a 1-D numpy array, or None if absent.

    Numeric columns come back as float64 with nulls as NaN. Supported holders,
    tried in this order: an object with a ``dataframe`` attribute (verl's
    ``RLHFDataset``), ``datasets.Dataset`` (row selections/shuffles honoured),
    pandas / polars DataFrames, ``pyarrow.Table``, a mapping of columns, and
    finally any sized sequence of row mappings (``data[i][name]``).
    """
    frame = getattr(data, "dataframe", None)
    if frame is not None and frame is not data:
        return column_values(frame, name)

    values: Any
    module = type(data).__module__.split(".")[0]
    if module == "datasets" and hasattr(data, "column_names"):
        if name not in data.column_names:
            return None
        values = data.with_format("arrow")[name]
    elif module == "pandas" and hasattr(data, "columns"):
        if name not in data.columns:
            return None
        values = data[name].to_numpy()
    elif module == "polars" and hasattr(data, "columns"):
        if name not in data.columns:
            return None
        values = data.get_column(name).to_numpy()
    elif module == "pyarrow" and hasattr(data, "column_names"):
        if name not in data.column_names:
            return None
        values = data.column(name)
    elif hasattr(data, "keys") and hasattr(data, "__getitem__") and not _is_row_sequence(data):
        if name not in data.keys():
            return None
        values = data[name]
    else:
        n = len(data)
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        first = data[0]
        if not hasattr(first, "keys") or name not in first.keys():
            return None
        values = [data[i][name] for i in range(n)]

    if hasattr(values, "to_numpy"):  # pyarrow (Chunked)Array: nulls become NaN for numbers
        values = values.to_numpy(zero_copy_only=False)
    arr = np.asarray(values)
    if arr.dtype == object:
        try:
            arr = np.array([np.nan if v is None else v for v in arr], dtype=np.float64)
        except (TypeError, ValueError):
            return arr
    if arr.dtype.kind in "biuf":
        arr = arr.astype(np.float64)
    return arr


def _is_row_sequence(data: Any) -> bool:
    """True for list-like containers of rows (a dict of columns is not one)."""
    return isinstance(data, (list, tuple))


def rank_order(ranks: np.ndarray) -> np.ndarray:
    """Row indices sorted by rank: ``order[r]`` is the row at rank position r.

    For a proper ``angle_rank`` column (a permutation of ``0 .. N-1``) this is
    the inverse permutation. Ranks are only used to order rows, so a data set
    whose ranks have gaps (rows filtered after ranking), duplicates (stable by
    row index) or nulls (placed last) still gives positions ``0 .. N-1``.
    """
    r = np.asarray(ranks, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"ranks must be 1-D, got shape {r.shape}")
    keys = np.where(np.isnan(r), np.inf, r)
    return np.argsort(keys, kind="stable").astype(np.int64)


def completion_scores(
    rewards: Any,
    *,
    mode: str = "threshold",
    threshold: float = 0.0,
    reward_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Per-completion correctness in [0, 1] from rewards; NaN rewards dropped.

    - ``mode="threshold"``: 1.0 if ``reward > threshold`` else 0.0 (with the
      usual 1/0 correctness reward and ``threshold=0`` this is "correct");
    - ``mode="mean"``: ``clip((reward - lo) / (hi - lo), 0, 1)`` with
      ``reward_range=(lo, hi)``, so the epoch accuracy is the mean reward
      mapped linearly to 0..1.
    """
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    r = r[~np.isnan(r)]
    if mode == "threshold":
        return (r > float(threshold)).astype(np.float64)
    if mode == "mean":
        lo, hi = (float(x) for x in reward_range)
        if not hi > lo:
            raise ValueError(f"reward_range must be (lo, hi) with hi > lo, got {reward_range!r}")
        return np.clip((r - lo) / (hi - lo), 0.0, 1.0)
    raise ValueError(f"accuracy mode must be 'threshold' or 'mean', got {mode!r}")


# ----------------------------------------------------------------- curriculum


class GainRLCurriculum:
    """Epoch bookkeeping of GAIN-RL over the rows of one ranked data set.

    Life cycle, driven by a trainer adapter::

        rows = cur.begin_epoch()        # closes (updates mu for) an open epoch, draws
        cur.observe(scores)             # per-completion correctness, any number of times
        cur.end_epoch()                 # mu += clamp(...) with acc = mean(scores), ang = mean angle

    ``ranks`` is the data set's ``angle_rank`` column (row i has rank
    ``ranks[i]``, 0 = highest score), ``angles`` an optional per-row angle
    signal (e.g. ``angle_score``) whose mean over the epoch's rows is the
    ``ang_t`` of the update; rows with a NaN angle are skipped, and
    ``angle_default`` is used when there is no finite value (or no column).

    ``subset_size`` is rounded down to a multiple of ``chunk`` (the trainer's
    number of distinct prompts per batch) so that an epoch is whole batches;
    it is capped by N. Rank-unit hyper-parameters follow
    :func:`anglerank.train.sampler.resolve_rank_units`.
    """

    def __init__(
        self,
        ranks: Any,
        subset_size: int = DEFAULTS["subset_size"],
        *,
        angles: Any = None,
        angle_default: float = 0.0,
        chunk: int = 1,
        mu0: float = DEFAULTS["mu0"],
        sigma: float = DEFAULTS["sigma"],
        step: float = DEFAULTS["step"],
        alpha: float = DEFAULTS["alpha"],
        beta_acc: float = DEFAULTS["beta_acc"],
        adj_min: float = DEFAULTS["adj_min"],
        adj_max: float = DEFAULTS["adj_max"],
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        ranks = np.asarray(ranks, dtype=np.float64)
        n = int(ranks.shape[0])
        if n == 0:
            raise ValueError("the ranked data set is empty")
        if np.isnan(ranks).all():
            raise ValueError("the rank column has no values (all null)")
        chunk = int(chunk)
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        k = min(int(subset_size), n)
        k -= k % chunk
        if k < 1:
            raise ValueError(
                f"an epoch must hold at least one batch of {chunk} distinct prompts, but "
                f"subset_size={subset_size} with {n} rows gives none; raise subset_size "
                f"(>= {chunk}) or lower the batch size"
            )
        self.n_items = n
        self.chunk = chunk
        self.order = rank_order(ranks)
        self.order_digest = hashlib.sha1(self.order.tobytes()).hexdigest()[:16]
        if angles is not None:
            angles = np.asarray(angles, dtype=np.float64)
            if angles.shape != (n,):
                raise ValueError(f"angles must have one value per row ({n}), got shape {angles.shape}")
        self.angles = angles
        self.angle_default = float(angle_default)
        self.sampler = GaussianRankSampler(
            n, k, mu0=mu0, sigma=sigma, step=step, alpha=alpha, beta_acc=beta_acc,
            adj_min=adj_min, adj_max=adj_max, seed=seed, shuffle=shuffle,
        )
        # epoch state
        self.rows: np.ndarray | None = None  # rows of the current/last epoch, in yield order
        self.open = False  # rows drawn, mu update not yet applied
        self.score_sum = 0.0
        self.score_count = 0
        self.epochs: list[dict] = []  # one record per applied (or skipped) update

    # -- properties
    @property
    def subset_size(self) -> int:
        return self.sampler.subset_size

    @property
    def mu(self) -> float:
        return self.sampler.mu

    def probabilities(self) -> np.ndarray:
        """Per-rank-position sampling probabilities at the current ``mu``."""
        return self.sampler.probabilities()

    def positions_of(self, rows: Any) -> np.ndarray:
        """Rank positions (0 .. N-1) of the given row indices."""
        inv = np.empty(self.n_items, dtype=np.int64)
        inv[self.order] = np.arange(self.n_items, dtype=np.int64)
        return inv[np.asarray(rows, dtype=np.int64)]

    # -- life cycle
    def begin_epoch(self) -> np.ndarray:
        """Close the previous epoch if still open, then draw this epoch's rows."""
        if self.open:
            self.end_epoch()
        positions = self.sampler.draw()
        self.rows = self.order[positions]
        self.open = True
        self.score_sum = 0.0
        self.score_count = 0
        return self.rows.copy()

    def observe(self, scores: Any) -> None:
        """Add per-completion correctness values (0..1) to the open epoch."""
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        s = s[~np.isnan(s)]
        if s.size == 0:
            return
        if not self.open:
            logger.debug("GAIN-RL: %d completion scores arrived outside an epoch; ignored", s.size)
            return
        if (s < 0).any() or (s > 1).any():
            raise ValueError("completion scores must lie in [0, 1]; map rewards with completion_scores()")
        self.score_sum += float(s.sum())
        self.score_count += int(s.size)

    def epoch_angle(self) -> float:
        """Mean angle over the current epoch's rows (``angle_default`` if none)."""
        if self.angles is None or self.rows is None:
            return self.angle_default
        a = self.angles[self.rows]
        a = a[np.isfinite(a)]
        return float(a.mean()) if a.size else self.angle_default

    def end_epoch(self) -> dict | None:
        """Apply the ``mu`` update for the open epoch; None if no epoch is open.

        With no observed completion the update is skipped (logged, recorded
        with ``delta = 0``): an accuracy of 0 would move the window for no
        reason.
        """
        if not self.open:
            return None
        angle = self.epoch_angle()
        mu_before = self.sampler.mu
        record = {
            "epoch": len(self.epochs),
            "mu_before": float(mu_before),
            "completions": int(self.score_count),
            "angle": float(angle),
        }
        if self.score_count == 0:
            logger.warning("GAIN-RL: no rewards observed this epoch; mu stays at %.3f", mu_before)
            record.update(accuracy=None, delta=0.0, mu=float(mu_before), skipped=True)
        else:
            accuracy = min(max(self.score_sum / self.score_count, 0.0), 1.0)
            delta = self.sampler.update(accuracy, angle)
            record.update(accuracy=float(accuracy), delta=float(delta), mu=float(self.sampler.mu), skipped=False)
            logger.info(
                "GAIN-RL epoch %d: accuracy %.4f over %d completions, angle %.4f, mu %.2f -> %.2f",
                record["epoch"], accuracy, self.score_count, angle, mu_before, self.sampler.mu,
            )
        self.epochs.append(record)
        self.open = False
        return record

    # -- checkpointing
    def state_dict(self) -> dict:
        """JSON-serialisable state (plain python types only)."""
        return {
            "version": _STATE_VERSION,
            "n_items": self.n_items,
            "chunk": self.chunk,
            "order_digest": self.order_digest,
            "angle_default": self.angle_default,
            "sampler": self.sampler.state_dict(),
            "rows": None if self.rows is None else [int(x) for x in self.rows],
            "open": bool(self.open),
            "score_sum": float(self.score_sum),
            "score_count": int(self.score_count),
            "epochs": [dict(e) for e in self.epochs],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`.

        Raises ``ValueError`` when the state belongs to another data set (row
        count or rank order differ): the ranks would point at other rows.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported GAIN-RL state version {state.get('version')!r}")
        if int(state["n_items"]) != self.n_items or state["order_digest"] != self.order_digest:
            raise ValueError(
                "the GAIN-RL checkpoint was made on a different ranked data set "
                f"(rows {state['n_items']} vs {self.n_items}, order digest "
                f"{state['order_digest']} vs {self.order_digest})"
            )
        self.sampler.load_state_dict(state["sampler"])
        self.chunk = int(state["chunk"])
        self.angle_default = float(state["angle_default"])
        rows = state["rows"]
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.open = bool(state["open"]) and self.rows is not None
        self.score_sum = float(state["score_sum"])
        self.score_count = int(state["score_count"])
        self.epochs = [dict(e) for e in state["epochs"]]


def _finite_or_none(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def resolve_angle(data: Any, angle: Any) -> tuple[np.ndarray | None, float]:
    """Interpret an ``angle`` option: a column name, a number, or None (= 0).

    Returns ``(per_row_angles_or_None, default)``. A named column that the data
    lacks is an error (pass ``angle=0.0`` to drop the angle term).
    """
    if angle is None:
        return None, 0.0
    if isinstance(angle, str):
        values = _float_column(
            data, angle, "angle",
            f"the training data has no {angle!r} column for the GAIN-RL angle term; "
            "pass the ranked Parquet from `anglerank rank`, another column name, or a number (e.g. 0.0)",
        )
        return values, 0.0
    v = _finite_or_none(angle)
    if v is None:
        raise ValueError(f"angle must be a column name, a finite number or None, got {angle!r}")
    return None, v


def _float_column(data: Any, column: str, what: str, missing: str) -> np.ndarray:
    """``column_values`` that must exist (else ``missing``) and be numeric."""
    values = column_values(data, column)
    if values is None:
        raise ValueError(missing)
    if values.dtype.kind != "f":
        raise ValueError(f"{what} column {column!r} is not numeric (dtype {values.dtype})")
    return values


def read_ranks(data: Any, column: str = "angle_rank") -> np.ndarray:
    """The rank column of ``data`` as float64 (nulls NaN), with a clear error if absent."""
    return _float_column(
        data, column, "rank",
        f"the training data has no {column!r} column; train on the ranked Parquet "
        "written by `anglerank rank` (or name the rank column)",
    )
