"""Which order the window walks: the ranking, as a choice.

GAIN-RL's claim is about one ranking (the angle score); the others exist to test
it and for users who have a better one:

- ``angle`` (default): highest angle score first. ``anglerank train`` scores the
  prompts itself (and re-scores them with the live policy); ``sample`` and the
  TRL / verl integrations read the ranked data's ``angle_rank``.
- ``random``: a seeded shuffle, the control that keeps the curriculum's
  mechanics (window, accuracy feedback) and removes the signal.
- ``length``: shortest prompt first, what the orderings shipped with the
  authors' released code amount to. Prompt tokens in ``train`` and ``sample``; the
  integrations, which have no tokenizer at hand, count the prompt's characters.
- ``column:NAME`` / ``column:NAME:desc``: any numeric column of the data (dotted
  paths reach into structs), ascending, or descending with ``:desc``; for
  example a difficulty level or a measured pass rate.

Ties keep data order; rows without a value (null, NaN) go last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anglerank.errors import UserError

__all__ = ["Ranking", "RANKING_HELP", "order_by"]

RANKING_HELP = ("Order the window walks: angle (highest angle score first), random (seeded shuffle: the "
                "control), length (shortest prompt first), column:NAME or column:NAME:desc (a numeric column, "
                "ascending or descending).")
_KINDS = ("angle", "random", "length", "column")


@dataclass(frozen=True)
class Ranking:
    kind: str
    column: str | None = None
    descending: bool = False

    @classmethod
    def parse(cls, spec) -> "Ranking":
        """``angle`` | ``random`` | ``length`` | ``column:NAME`` | ``column:NAME:asc`` | ``column:NAME:desc``."""
        if isinstance(spec, Ranking):
            return spec
        if not isinstance(spec, str) or not spec.strip():
            raise UserError(f"a ranking must be one of angle, random, length, column:NAME; got {spec!r}")
        kind, _, rest = spec.strip().partition(":")
        if kind in ("angle", "random", "length") and not rest:
            return cls(kind)
        if kind != "column" or not rest:
            raise UserError(f"unknown ranking {spec!r}; choose from angle, random, length, column:NAME, "
                            "column:NAME:desc")
        name, _, direction = rest.rpartition(":")
        if not name or direction not in ("asc", "desc"):
            name, direction = rest, "asc"
        return cls("column", name, direction == "desc")

    def __str__(self) -> str:
        if self.kind != "column":
            return self.kind
        return f"column:{self.column}" + (":desc" if self.descending else "")

    @property
    def follows_policy(self) -> bool:
        """Only the angle ranking changes when the policy changes (re-scoring is worth it)."""
        return self.kind == "angle"

    def order(self, n: int, *, seed: int = 0, angle_rank=None, lengths=None, values=None) -> np.ndarray:
        """Rows by rank position (``order[r]`` is the row at rank r) for ``n`` rows.

        ``angle_rank``: any per-row key that sorts ascending into the angle ranking
        (``angle_rank``, or the negated score); ``lengths``: per-row prompt lengths;
        ``values``: the named column's per-row values. Only the one the ranking uses
        is needed.
        """
        if self.kind == "random":
            return np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED])).permutation(n).astype(np.int64)
        key = {"angle": angle_rank, "length": lengths, "column": values}[self.kind]
        if key is None:
            raise UserError(f"the {self} ranking needs {self._needs()}")
        return order_by(_numeric(key, str(self), n), descending=self.descending)

    def _needs(self) -> str:
        return {"angle": "angle scores (score the data, or use the ranked Parquet from `anglerank rank`)",
                "length": "prompt lengths", "column": f"the column {self.column!r}"}[self.kind]


def _numeric(values, what: str, n: int) -> np.ndarray:
    try:
        arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"the {what} ranking needs numbers, but the values are not numeric "
                        f"(first: {next(iter(values), None)!r})") from None
    if arr.shape != (n,):
        raise UserError(f"the {what} ranking has {arr.size} values for {n} rows")
    if n and np.isnan(arr).all():
        raise UserError(f"the {what} ranking has no values (all null)")
    return arr


def order_by(key, descending: bool = False) -> np.ndarray:
    """Row indices sorted by ``key`` (stable; NaN last in either direction)."""
    k = np.asarray(key, dtype=np.float64)
    k = -k if descending else k
    return np.argsort(np.where(np.isnan(k), np.inf, k), kind="stable").astype(np.int64)
