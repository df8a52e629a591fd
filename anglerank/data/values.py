"""Small value helpers shared by every reader and writer.

``get_dotted`` is the one way to follow a dotted column path (``extra_info.question``)
into nested struct values; ``finite_or_none`` is the one way to turn a number
that may be NaN, infinite or missing into something JSON and Arrow accept as null.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["get_dotted", "finite_or_none"]


def get_dotted(value: Any, path: str | list[str]) -> Any:
    """Follow ``path`` ("a.b.c", or its parts after the top-level column) into dicts; None if absent."""
    parts = path.split(".") if isinstance(path, str) else path
    for p in parts:
        if not isinstance(value, dict):
            return None
        value = value.get(p)
    return value


def finite_or_none(value: Any) -> float | None:
    """``float(value)`` when it is a finite number, else None (NaN, inf, None, non-numbers)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
