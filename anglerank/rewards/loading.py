"""From a ``--reward`` value to a reward function: a built-in reward by name, or the user's own.

A name (``"math"``, or ``"builtin:math"``) is looked up in the registry of built-in rewards;
anything else is ``"module:function"`` or ``"path/to/file.py:function"``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from typing import Any, Callable, Iterable, Sequence

from anglerank.errors import one_line
from anglerank.rewards.base import REGISTRY, RewardError, RewardSettings, RewardSpec
from anglerank.rewards.grading import ANSWER_FORMATS, DEFAULT_ANSWER_FORMAT

__all__ = ["load_reward", "registered"]

_PREFIX = "builtin:"


def registered(specs: Iterable[str]) -> list[type[RewardSpec]]:
    """The built-in rewards among ``specs`` (``--reward`` values), in order; the user's own functions have none."""
    names = REGISTRY.names()
    found = [s.strip().removeprefix(_PREFIX) for s in specs]
    return [REGISTRY.get(n) for n in found if n in names]


def decider_index(specs: Sequence[str]) -> int | None:
    """The position among ``specs`` (``--reward`` values) of the first built-in reward that decides "correct" by
    itself (a verifier), or None."""
    names = REGISTRY.names()
    for i, s in enumerate(specs):
        name = s.strip().removeprefix(_PREFIX)
        if name in names and REGISTRY.get(name).decides_correct:
            return i
    return None


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


def _user_reward(spec: str) -> Callable:
    """The function ``"module:function"`` or ``"file.py:function"`` names."""
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


def load_reward(spec: str, answer_format: str = DEFAULT_ANSWER_FORMAT) -> Callable:
    """Resolve a built-in reward's name (``"math"``, ``"builtin:math"``, ``"code"``, ...),
    ``"module:function"`` or ``"path/to/file.py:function"`` to a callable.

    A built-in reward is built from the settings: ``answer_format`` picks the
    built-in math reward, ``"boxed"`` gives :func:`math_reward`, ``"any"``
    :func:`math_reward_any` (see :mod:`anglerank.rewards.grading`); it does not affect
    the user's functions. Raises a one-line RewardError when the module, file or
    function cannot be found or the attribute is not callable, or the answer
    format is unknown.
    """
    if answer_format not in ANSWER_FORMATS:
        raise RewardError(f"unknown answer format {answer_format!r}; choose one of {', '.join(ANSWER_FORMATS)}")
    if not isinstance(spec, str) or not spec.strip():
        raise RewardError(f"invalid reward spec {spec!r}: expected 'module:function' or 'file.py:function'")
    spec = spec.strip()
    name, names = spec.removeprefix(_PREFIX), REGISTRY.names()
    if name in names:
        return REGISTRY.get(name).from_settings(RewardSettings(answer_format=answer_format))
    if spec.startswith(_PREFIX):
        raise RewardError(f"unknown built-in reward {name!r} (available: {', '.join(names)})")
    return _user_reward(spec)
