"""The training prompts: the usable rows of the data, rendered once.

A row is usable when its prompt renders, fits ``--max-prompt-length`` and, when
a reward reads the reference answer, has one; the rest are counted by reason. The
pool keeps everything a step needs per prompt: token ids for rollouts, the
record for re-scoring, the prompt value and the other columns for reward
functions (TRL's calling convention), and the reference answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from anglerank.data.reader import ParquetSource, field_type
from anglerank.rewards.base import ANSWER

if TYPE_CHECKING:
    from anglerank.model.render import Renderer
    from anglerank.train.config import TrainConfig

__all__ = ["Pool", "load_pool", "ANSWER_COLUMNS"]

ANSWER_COLUMNS = ("reward_model.ground_truth", "answer", "solution", "ground_truth")
# Names TRL passes to reward functions itself; a data column of that name would clash.
_RESERVED = ("prompts", "completions")


@dataclass
class Pool:
    """Usable prompts of a data set, aligned lists (index = pool index)."""

    rows: list  # data set row numbers
    ids: list
    records: list  # anglerank.data.reader.Record, for (re)scoring
    prompt_ids: list  # rendered prompt token ids (the same rendering as scoring)
    prompts: list  # the prompt column's values, passed to reward functions as `prompts`
    answers: list | None
    columns: dict  # top-level columns for reward functions
    dropped: dict  # rows left out, by reason: null, too_long, no_answer
    answer_column: str | None = None  # where the answers came from
    empty_answer_columns: list = field(default_factory=list)  # answer columns present but entirely null
    total_rows: int = 0  # rows read (before leaving any out)

    def subset(self, idx: list[int]) -> "Pool":
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return Pool(pick(self.rows), pick(self.ids), pick(self.records), pick(self.prompt_ids), pick(self.prompts),
                    pick(self.answers) if self.answers is not None else None,
                    {k: pick(v) for k, v in self.columns.items()}, dict(self.dropped), self.answer_column,
                    list(self.empty_answer_columns), self.total_rows)


def _answers(source: ParquetSource, answer_column: str | None, stop: int) -> tuple[str | None, list | None, list]:
    """(column, reference answers as strings with None where missing, columns found empty); (None, None, ...)
    when the data has no answer column with a value."""
    empty = []
    for name in [answer_column] if answer_column else ANSWER_COLUMNS:
        if not answer_column and field_type(source.schema, name) is None:
            continue
        values = source.column(name)[:stop]  # a named column that is missing: an error naming it
        if answer_column or any(v is not None for v in values):
            return name, [None if v is None else str(v) for v in values], empty
        empty.append(name)
    return None, None, empty


def load_pool(files: list[str], cfg: TrainConfig, renderer: Renderer, limit: int | None = None) -> Pool:
    """Read Parquet rows, render prompts, keep those that fit ``max_prompt_length``."""
    source = ParquetSource(files, prompt_column=cfg.prompt_column, id_column=cfg.id_column)
    stop = source.total_rows if limit is None else min(limit, source.total_rows)
    answer_column, answers, empty = _answers(source, cfg.answer_column, stop)
    needs_answer = any(ANSWER in spec.columns for spec in cfg.reward_specs)
    keep, recs, ids, dropped = [], [], [], {"null": 0, "too_long": 0, "no_answer": 0}
    for rec in source.iter_records(0, stop):
        r = renderer.render(rec.question, rec.history)
        if not r.ids:
            dropped["null"] += 1
        elif r.truncated:
            dropped["too_long"] += 1
        elif answers is not None and answers[rec.row] is None and needs_answer:
            dropped["no_answer"] += 1
        else:
            keep.append(rec.row)
            recs.append(rec)
            ids.append(r.ids)
    pick = lambda values: [values[i] for i in keep]  # noqa: E731
    prompts = source.column(source.prompt_column)
    columns = {name: pick(source.column(name)) for name in source.schema.names if name not in _RESERVED}
    return Pool(rows=keep, ids=[rec.id if rec.id is not None else rec.row for rec in recs], records=recs,
                prompt_ids=ids, prompts=pick(prompts), answers=pick(answers) if answers is not None else None,
                columns=columns, dropped=dropped, answer_column=answer_column, empty_answer_columns=empty,
                total_rows=stop)
