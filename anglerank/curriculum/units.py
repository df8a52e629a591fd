"""Rank units: how the curriculum's window parameters scale with the data set.

The authors tuned ``sigma = 1000``, ``n = 500`` and the clamp ``[0, 1000]`` for
about 7,500 prompts. Every rank-unit setting here (window centre, width, step,
clamps, subset size in ``sample``) may therefore be given either in ranks or as
a fraction of the number of ranked rows N, and this module is the one place
that says which is which.
"""

from __future__ import annotations

import math
import numbers
import re
import warnings

import numpy as np

from anglerank.errors import UserError

__all__ = ["CurriculumWarning", "epoch_size", "resolve_rank_units", "parse_rank_value", "positive_int"]

_INT_RE = re.compile(r"^[+-]?\d+$")


def resolve_rank_units(value: float, n_items: int) -> float:
    """Convert a rank-unit value that may be given as a fraction of N.

    Rule (exact):

    - ``0`` (int or float) is 0;
    - any int (python or numpy) is absolute rank units: ``1`` is one rank;
    - a float with ``0 < |value| <= 1`` is a fraction of N: ``0.1 -> 0.1 * N``,
      ``-0.05 -> -0.05 * N``, and float ``1.0 -> N`` (an int 1 stays 1 rank);
    - any other float (``|value| > 1``, e.g. ``500.0``) is rank units.

    Booleans and non-finite values raise :class:`UserError`.
    """
    if isinstance(value, (bool, np.bool_)):
        raise UserError(f"rank-unit value must be a number, got bool {value!r}")
    positive_int("n_items", n_items)
    if isinstance(value, numbers.Integral):
        return float(value)
    if not isinstance(value, numbers.Real):
        raise UserError(f"rank-unit value must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise UserError(f"rank-unit value must be finite, got {value!r}")
    if v == 0.0:
        return 0.0
    return v * n_items if abs(v) <= 1.0 else v


def parse_rank_value(text) -> int | float:
    """Command-line text -> int (rank units) or float (fraction of N when 0 < |x| <= 1).

    An integer literal (``750``, ``1``) stays an int, so ``1`` means one rank; anything
    else is parsed as a float (``0.1``, ``1.0``, ``1e3``). See :func:`resolve_rank_units`.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return text
    s = str(text).strip()
    if _INT_RE.match(s):
        return int(s)
    try:
        v = float(s)
    except ValueError:
        raise UserError(f"not a number: {text!r} (use ranks like 750 or a fraction of N like 0.1)") from None
    if not math.isfinite(v):
        raise UserError(f"not a finite number: {text!r}")
    return v


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1, else a :class:`UserError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class CurriculumWarning(UserWarning):
    """A curriculum setting that runs but defeats the curriculum's purpose."""


def epoch_size(subset_size: int, n_items: int) -> int:
    """Rows per epoch: ``subset_size`` capped at ``n_items``.

    A subset of at least all the rows makes every epoch the whole data set, so the
    ranking and the window decide nothing; that is almost always a setting meant for a
    larger data set, so it is warned about here, once, for every consumer (``train``,
    ``sample``, TRL, verl).
    """
    if subset_size >= n_items:
        warnings.warn(f"the subset size (K = {subset_size:,}) is not below the number of rows (N = {n_items:,}): "
                      f"every epoch takes all {n_items:,} rows, so the ranking and the window play no part; "
                      f"choose a subset size below {n_items:,}", CurriculumWarning, stacklevel=3)
    return min(subset_size, n_items)
