"""Calling several reward functions TRL-style and adding them into one weighted reward."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

from anglerank.errors import one_line
from anglerank.rewards.base import NonFiniteReward, RewardError

__all__ = ["combine_rewards"]


def _func_name(f: Any) -> str:
    if isinstance(f, functools.partial):
        return _func_name(f.func)
    return getattr(f, "__name__", None) or type(f).__name__


def combine_rewards(
    funcs: Sequence[Callable],
    weights: Sequence[float] | None,
    prompts,
    completions,
    **columns,
) -> tuple[list[float], dict[str, list[float]]]:
    """Call every reward function TRL-style and return the weighted sum.

    Each function is called as ``f(prompts=prompts, completions=completions,
    **columns)`` and must return one value per completion (RewardError naming
    the function otherwise). ``None`` means "no reward" (TRL's convention for a
    function that does not apply): it becomes ``nan`` in the per-function list
    and counts as 0 in the weighted sum. A returned NaN or infinity is an error
    (:class:`NonFiniteReward`): it would turn the advantages, the loss and then
    the weights into NaN. Returns
    ``(total, {name: values})``; duplicate names get ``_2``, ``_3`` suffixes.
    """
    funcs = list(funcs)
    if not funcs:
        raise RewardError("combine_rewards: no reward functions given")
    if weights is None:
        weights = [1.0] * len(funcs)
    weights = [float(w) for w in weights]
    if len(weights) != len(funcs):
        raise RewardError(f"combine_rewards: {len(weights)} weights for {len(funcs)} reward functions")
    n = len(completions)
    total = [0.0] * n
    per: dict[str, list[float]] = {}
    for f, w in zip(funcs, weights):
        name = _func_name(f)
        try:
            out = f(prompts=prompts, completions=completions, **columns)
        except RewardError:
            raise
        except Exception as exc:  # the user's code failed, not anglerank: say whose (ANGLERANK_DEBUG=1: traceback)
            raise RewardError(f"reward function {name!r} raised {one_line(exc)}") from exc
        if out is None or isinstance(out, (str, bytes)) or not hasattr(out, "__len__"):
            raise RewardError(f"reward function {name!r} must return a list of {n} floats, got {type(out).__name__}")
        if len(out) != n:
            raise RewardError(f"reward function {name!r} returned {len(out)} values for {n} completions")
        vals: list[float] = []
        for i, v in enumerate(out):
            if v is None:
                vals.append(math.nan)
                continue
            try:
                vals.append(float(v))
            except (TypeError, ValueError):
                raise RewardError(f"reward function {name!r} returned a non-numeric value {v!r}") from None
            if not math.isfinite(vals[-1]):
                raise NonFiniteReward(name, i, vals[-1])
        key, k = name, 2
        while key in per:
            key, k = f"{name}_{k}", k + 1
        per[key] = vals
        for i, v in enumerate(vals):
            if not math.isnan(v):
                total[i] += w * v
    return total, per
