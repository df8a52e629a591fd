"""Reward functions with TRL's signature, the public ``anglerank.rewards`` module.

A reward function is called as ``f(prompts, completions, **columns)`` and
returns one float per completion (TRL's ``reward_funcs`` convention), so the
same function serves ``anglerank train``, TRL's ``GRPOTrainer`` and verl. This
module holds the built-in ``math`` rewards (answer checking itself lives in
:mod:`anglerank.grading`, on math-verify), the loader for user reward functions
(``"module:function"`` or ``"file.py:function"``) and the helper that combines
several reward functions into one weighted reward. No torch.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import math
import os
import re
import sys
from typing import Any, Callable, Sequence

from anglerank.errors import UserError, one_line
from anglerank.grading import ANSWER_FORMATS, DEFAULT_ANSWER_FORMAT, grade

__all__ = ["code_reward", "code_reward_all", "RewardError", "NonFiniteReward", "math_reward", "math_reward_any", "load_reward", "combine_rewards"]


class RewardError(UserError):
    """A reward spec that cannot be loaded, or a reward function or its data that does not fit."""


class NonFiniteReward(RewardError):
    """A reward function returned NaN or an infinity; ``index`` is the completion's position."""

    def __init__(self, func: str, index: int, value: float):
        super().__init__(f"reward function {func!r} returned {value} for completion {index}; rewards must be "
                         "finite numbers (return None for 'no reward')")
        self.func, self.index, self.value = func, index, value


# --------------------------------------------------------------------------- #
# TRL reward function
# --------------------------------------------------------------------------- #


def _completion_text(c: Any) -> str:
    """Text of a TRL completion: a string, or a conversational message list
    (last message's content; content may be a list of ``{"type": "text"}``)."""
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, dict):
        content = c.get("content", "")
    elif isinstance(c, (list, tuple)):
        if not c:
            return ""
        last = c[-1]
        content = last.get("content", "") if isinstance(last, dict) else last
    else:
        return str(c)
    if isinstance(content, (list, tuple)):
        return "".join(
            p.get("text", "") if isinstance(p, dict) else str(p) for p in content
        )
    return "" if content is None else str(content)


def _judge(prompts, completions, answer, kwargs, answer_format: str, name: str) -> list[float]:
    if answer is None:
        answer = kwargs.get("solution")
    if answer is None:
        raise RewardError(f"{name} needs an 'answer' (or 'solution') column aligned with completions")
    if isinstance(answer, (str, bytes)):
        raise RewardError(f"{name}: 'answer' must be a list aligned with completions, got a string")
    answer = list(answer)
    if len(answer) != len(completions):
        raise RewardError(f"{name}: got {len(answer)} answers for {len(completions)} completions")
    return [1.0 if grade(_completion_text(c), ref, answer_format) else 0.0 for c, ref in zip(completions, answer)]


def math_reward(prompts, completions, answer=None, **kwargs) -> list[float]:
    """1.0 when the completion's marked final answer equals the reference, else 0.0.

    TRL reward-function signature. The reference comes from the ``answer``
    column (falls back to a ``solution`` column): a bare answer, a MATH solution
    with ``\\boxed{}`` or a GSM8K solution ending in ``#### N``. Judged by
    :func:`anglerank.grading.grade` with ``answer_format="boxed"``: math-verify,
    reading the completion as TRL's ``accuracy_reward`` does (``\\boxed{}``, or
    LaTeX after "answer"), plus GSM8K's ``#### N``; an unmarked answer scores 0.
    """
    return _judge(prompts, completions, answer, kwargs, "boxed", "math_reward")


def math_reward_any(prompts, completions, answer=None, **kwargs) -> list[float]:
    """:func:`math_reward`, except that a completion without an answer marker is
    judged by its last number or LaTeX expression (``answer_format="any"``)."""
    return _judge(prompts, completions, answer, kwargs, "any", "math_reward_any")


# --------------------------------------------------------------------------- #
# Loading and combining reward functions
# --------------------------------------------------------------------------- #

# built-in reward name -> {answer_format: function}
def code_reward(prompts, completions, tests=None, **kwargs) -> list[float]:
    """The share of the row's tests that the completion's last fenced Python block passes.

    TRL reward-function signature; ``tests`` is the data column (a list of
    ``assert`` statements, or of ``{"input", "output"}`` stdin/stdout pairs, per
    row; see :mod:`anglerank.coding`). The program runs in :mod:`anglerank.sandbox`
    (a private root with nothing of the machine but the Python installation, no
    network, limits); the tests run outside it and count only plain results, so
    exiting early or returning an object that equals anything earns nothing.
    :class:`anglerank.sandbox.SandboxUnavailable` (a RewardError here) where
    programs cannot be isolated; see ``docs/rewards.md``.
    """
    from anglerank.coding import pass_fractions

    if tests is None:
        raise RewardError("the code reward needs a 'tests' column: per row, a list of assert statements or of "
                          "{input, output} pairs")
    if len(tests) != len(completions):
        raise RewardError(f"code_reward: {len(tests)} test lists for {len(completions)} completions")
    try:
        return pass_fractions([_completion_text(c) for c in completions], list(tests))
    except ValueError as exc:
        raise RewardError(f"code_reward: {exc}") from None


def code_reward_all(prompts, completions, tests=None, **kwargs) -> list[float]:
    """1.0 when the completion passes every test of its row, else 0.0 (all or nothing)."""
    return [float(x == 1.0) for x in code_reward(prompts, completions, tests=tests, **kwargs)]


_BUILTINS: dict[str, dict[str, Callable]] = {
    "math": {"boxed": math_reward, "any": math_reward_any},
    "code": {"boxed": code_reward, "any": code_reward},
    "code_all": {"boxed": code_reward_all, "any": code_reward_all},
}


def _import_file(path: str):
    if not os.path.isfile(path):
        raise RewardError(f"reward file not found: {path}")
    abspath = os.path.abspath(path)
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(abspath))[0])
    digest = hashlib.sha1(abspath.encode()).hexdigest()[:10]
    modname = f"_anglerank_reward_{stem}_{digest}"
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, abspath)
    if spec is None or spec.loader is None:
        raise RewardError(f"cannot load reward file: {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - reported as a one-line RewardError
        sys.modules.pop(modname, None)
        raise RewardError(f"error importing reward file {path}: {one_line(e)}") from e
    return module


def load_reward(spec: str, answer_format: str = DEFAULT_ANSWER_FORMAT) -> Callable:
    """Resolve ``"module:function"``, ``"path/to/file.py:function"``, or the
    built-in ``"math"`` / ``"builtin:math"`` to a callable.

    ``answer_format`` picks the built-in math reward: ``"boxed"`` gives
    :func:`math_reward`, ``"any"`` :func:`math_reward_any` (see
    :mod:`anglerank.grading`); it does not affect other specs. Raises a one-line
    RewardError when the module, file or function cannot be found or the
    attribute is not callable, or the answer format is unknown.
    """
    if answer_format not in ANSWER_FORMATS:
        raise RewardError(f"unknown answer format {answer_format!r}; choose one of {', '.join(ANSWER_FORMATS)}")
    if not isinstance(spec, str) or not spec.strip():
        raise RewardError(f"invalid reward spec {spec!r}: expected 'module:function' or 'file.py:function'")
    spec = spec.strip()
    name = spec[len("builtin:"):] if spec.startswith("builtin:") else spec
    if name in _BUILTINS:
        return _BUILTINS[name][answer_format]
    if spec.startswith("builtin:"):
        raise RewardError(f"unknown built-in reward {name!r} (available: {', '.join(sorted(_BUILTINS))})")
    mod, sep, attr = spec.rpartition(":")
    if not sep or not mod or not attr:
        raise RewardError(f"invalid reward spec {spec!r}: expected 'module:function' or 'file.py:function'")
    if mod.endswith(".py") or "/" in mod or os.sep in mod:
        module = _import_file(mod)
    else:
        try:
            module = importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001
            raise RewardError(f"cannot import reward module {mod!r}: {one_line(e)}") from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RewardError(f"reward function {attr!r} not found in {mod!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardError(f"reward {attr!r} in {mod!r} is not callable (got {type(obj).__name__})")
    return obj


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
