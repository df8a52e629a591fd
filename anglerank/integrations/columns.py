"""Columns of the data set a foreign trainer holds, read without importing that trainer.

TRL keeps a ``datasets.Dataset``, verl an ``RLHFDataset`` whose rows live in
``.dataframe``; users hand in pandas, polars, pyarrow or plain Python
containers. The curriculum needs two columns of it (the rank and, optionally,
the angle term), and this module is the one place that knows how to find them
and build the :class:`~anglerank.curriculum.Curriculum` over them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anglerank.curriculum import Curriculum, CurriculumConfig, Ranking, rank_order, sampler_class
from anglerank.data.values import finite_or_none, get_dotted
from anglerank.errors import UserError

__all__ = ["column_values", "curriculum_for", "ranking_order", "read_ranks", "resolve_angle", "row_count"]

_FRAME_MODULES = ("datasets", "pandas", "polars", "pyarrow")


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
    values = _raw_column(data, name)
    return None if values is None else _as_array(values)


def _raw_column(data: Any, name: str) -> Any:
    """The column in the holder's own type, or None if absent."""
    module = type(data).__module__.split(".")[0]
    if module in ("datasets", "pyarrow") and hasattr(data, "column_names"):
        if name not in data.column_names:
            return None
        return data.with_format("arrow")[name] if module == "datasets" else data.column(name)
    if module in ("pandas", "polars") and hasattr(data, "columns"):
        if name not in data.columns:
            return None
        return data[name].to_numpy() if module == "pandas" else data.get_column(name).to_numpy()
    if _is_column_dict(data):
        return data[name] if name in data.keys() else None
    n = len(data)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    first = data[0]
    if not hasattr(first, "keys") or name not in first.keys():
        return None
    return [data[i][name] for i in range(n)]


def _is_column_dict(data: Any) -> bool:
    """A mapping of column name -> values (a list or tuple is a sequence of rows, though it has __getitem__)."""
    return (hasattr(data, "keys") and hasattr(data, "__getitem__") and not isinstance(data, (list, tuple))
            and type(data).__module__.split(".")[0] not in _FRAME_MODULES)


def row_count(data: Any) -> int:
    """Rows of ``data`` (``len`` of a dict of columns is its number of columns)."""
    if _is_column_dict(data) and getattr(data, "dataframe", None) is None:
        return len(next(iter(data.values()), ()))
    return len(data)


def _as_array(values: Any) -> np.ndarray:
    if hasattr(values, "to_numpy"):  # pyarrow (Chunked)Array: nulls become NaN for numbers
        values = values.to_numpy(zero_copy_only=False)
    arr = np.asarray(values)
    if arr.dtype == object:
        try:
            arr = np.array([np.nan if v is None else v for v in arr], dtype=np.float64)
        except (TypeError, ValueError):
            return arr
    return arr.astype(np.float64) if arr.dtype.kind in "biuf" else arr


def _numeric_column(data: Any, column: str, what: str, missing: str) -> np.ndarray:
    """``column_values`` that must exist (else ``missing``) and be numeric."""
    values = column_values(data, column)
    if values is None:
        raise UserError(missing)
    if values.dtype.kind != "f":
        raise UserError(f"{what} column {column!r} is not numeric (dtype {values.dtype})")
    return values


def read_ranks(data: Any, column: str = "angle_rank") -> np.ndarray:
    """The rank column of ``data`` as float64 (nulls NaN), with a clear error if absent."""
    return _numeric_column(
        data, column, "rank",
        f"the training data has no {column!r} column; train on the ranked Parquet "
        "written by `anglerank rank` (or name the rank column)",
    )


def resolve_angle(data: Any, angle: Any) -> tuple[np.ndarray | None, float]:
    """Interpret an ``angle`` option: a column name, a number, or None (= 0).

    Returns ``(per_row_angles_or_None, default)`` for
    :class:`anglerank.curriculum.Curriculum`. A named column that the data
    lacks is an error (pass ``angle=0.0`` to drop the angle term).
    """
    if angle is None:
        return None, 0.0
    if isinstance(angle, str):
        values = _numeric_column(
            data, angle, "angle",
            f"the training data has no {angle!r} column for the GAIN-RL angle term; "
            "pass the ranked Parquet from `anglerank rank`, another column name, or a number (e.g. 0.0)",
        )
        return values, 0.0
    v = finite_or_none(angle)
    if v is None:
        raise UserError(f"angle must be a column name, a finite number or None, got {angle!r}")
    return None, v


def curriculum_for(data: Any, config: CurriculumConfig, *, rank_column: str = "angle_rank",
                   angle: Any = "angle_score", chunk: int = 1, prompt_column: str = "prompt") -> Curriculum:
    """The curriculum over the rows of ``data`` (one epoch = whole batches of ``chunk`` prompts).

    A sampler that ignores the ranking (``uniform``) needs neither the rank nor
    the angle column, so it also runs on data that was never ranked.
    """
    n = row_count(data)
    if not sampler_class(config.sampler).uses_ranking:
        return Curriculum(np.arange(n, dtype=np.int64), config, chunk=chunk)
    order = ranking_order(data, config, rank_column=rank_column, prompt_column=prompt_column)
    angles, angle_default = resolve_angle(data, angle)
    return Curriculum(order, config, angles=angles, angle_default=angle_default, chunk=chunk)


def ranking_order(data: Any, config: CurriculumConfig, *, rank_column: str = "angle_rank",
                  prompt_column: str = "prompt") -> np.ndarray:
    """Rows by rank position under ``config.ranking`` (see :mod:`anglerank.curriculum.rankings`): the
    angle ranking from ``rank_column``; ``length`` counts the characters of ``prompt_column`` (no
    tokenizer is needed); ``column:NAME`` reads NAME (dotted paths reach into structs)."""
    ranking = Ranking.parse(config.ranking)
    n = row_count(data)
    if ranking.kind == "angle":
        ranks = read_ranks(data, rank_column)
        if len(ranks) != n:
            raise UserError(f"the rank column {rank_column!r} has {len(ranks)} values for {n} rows")
        return rank_order(ranks)
    if ranking.kind == "random":
        return ranking.order(n, seed=config.seed)
    if ranking.kind == "length":
        return ranking.order(n, lengths=[_text_length(v) for v in _required(data, prompt_column, ranking)])
    top, _, rest = ranking.column.partition(".")
    values = _required(data, top, ranking)
    return ranking.order(n, values=[get_dotted(v, rest) if rest else v for v in values])


def _required(data: Any, name: str, ranking) -> list:
    frame = getattr(data, "dataframe", None)  # verl's RLHFDataset
    values = _raw_column(frame if frame is not None and frame is not data else data, name)
    if values is None:
        raise UserError(f"ranking {ranking}: the training data has no column {name!r}")
    return values.to_pylist() if hasattr(values, "to_pylist") else list(values)


def _text_length(prompt: Any) -> float:
    """Characters of a prompt: a string, or the contents of a list of chat messages."""
    if prompt is None:
        return float("nan")
    if isinstance(prompt, str):
        return float(len(prompt))
    if hasattr(prompt, "tolist"):
        prompt = prompt.tolist()
    return float(sum(len(str(m.get("content", "") if isinstance(m, dict) else m)) for m in prompt))
