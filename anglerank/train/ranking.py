"""The ranking a run walks, kept fresh: initial scoring, re-scoring, staleness.

Only the angle ranking follows the policy (``--ranking angle``); the others are
fixed when the run starts (``setup.py``). Re-scoring is counted in prompts
trained (``--rescore-every``, a number of prompts or a fraction of the pool) and
by default covers only the ranks the window can reach before the next one,
re-ordered among themselves (``--rescore-scope reachable``); the other rows keep
their places, and the scores of the re-scored rows replace theirs in
``RunState.scores``. ``--staleness-every`` measures what that saves and costs:
the Spearman correlation between the ranking in use and a full fresh scoring.

Every function takes a :class:`RankedRun` (the loop's run is one) and logs
``score`` and ``staleness`` records through it.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from anglerank import angles
from anglerank.curriculum import Ranking, resolve_rank_units
from anglerank.data.values import finite_or_none

if TYPE_CHECKING:
    from anglerank.curriculum import Curriculum
    from anglerank.scoring.engine import Scorer
    from anglerank.train.checkpoint import RunState
    from anglerank.train.config import TrainConfig
    from anglerank.train.step import StepContext

__all__ = ["RankedRun", "follows_policy", "reach_epochs", "rescore", "rescore_due", "rescore_if_due", "score",
           "staleness"]


class RankedRun(Protocol):
    """What ranking needs of a run: its settings, the live policy and pool (``ctx``), the curriculum whose
    ranking it keeps, the scorer, the run's state (scores, when last ranked) and its logs."""

    cfg: TrainConfig
    ctx: StepContext
    curriculum: Curriculum
    scorer: Scorer
    st: RunState
    emit: Callable[[str, dict], None]

    def log(self, kind: str, rec: dict) -> None: ...


def follows_policy(run: RankedRun) -> bool:
    """Whether the curriculum walks the angle ranking, the one that changes with the policy."""
    return run.curriculum.sampler.uses_ranking and Ranking.parse(run.cfg.ranking).follows_policy


def _interval(run: RankedRun) -> int:
    """Prompts trained between re-scorings (0: never); ``rescore_every`` in prompt units of the pool."""
    if not run.cfg.rescore_every:
        return 0
    return max(1, round(resolve_rank_units(run.cfg.rescore_every, len(run.ctx.pool.rows))))


def reach_epochs(run: RankedRun) -> int:
    """Epochs from one re-scoring to the next."""
    return max(1, math.ceil(_interval(run) / run.curriculum.subset_size))


def rescore_due(run: RankedRun) -> bool:
    st, every = run.st, _interval(run)
    return (follows_policy(run) and every > 0 and st.epoch < run.cfg.epochs and not run.curriculum.open
            and (st.epoch - st.ranked_at) * run.curriculum.subset_size >= every)


def rescore_if_due(run: RankedRun) -> float:
    """Re-score when due; returns the seconds taken (0 if not due)."""
    return rescore(run) if rescore_due(run) else 0.0


def rescore(run: RankedRun) -> float:
    """Re-score with the live policy: every prompt, or (``reachable``) the ranks the window can reach
    before the next re-scoring. Returns the seconds taken."""
    reach = run.curriculum.reachable(reach_epochs(run)) if run.cfg.rescore_scope == "reachable" else None
    return score(run, reach)


def _fresh_scores(run: RankedRun, idx) -> list:
    """Angle scores of the pool prompts ``idx`` under the live weights (None: unscorable)."""
    ctx = run.ctx
    idx = list(idx)
    done = 0

    def progress(n: int) -> None:  # scoring a large pool takes minutes before the first step: show it
        nonlocal done
        done += n
        run.emit("scoring", {"done": done, "total": len(idx)})

    was_training = ctx.model.training
    ctx.model.eval()
    try:
        with ctx.amp():
            rows = run.scorer.score_records([ctx.pool.records[i] for i in idx], on_batch=progress)
    finally:
        ctx.model.train(was_training)
    by_row = {r["row"]: r["score"] for r in rows}
    return [finite_or_none(by_row.get(ctx.pool.rows[i])) for i in idx]


def _neg(scores) -> np.ndarray:
    """Sort keys of scores: highest first, unscorable (None) last."""
    return np.asarray([math.nan if s is None else -s for s in scores], dtype=np.float64)


def score(run: RankedRun, positions=None) -> float:
    """Score the pool prompts at rank ``positions`` (all if None) with the live weights and re-rank them
    among those positions; returns the seconds taken."""
    st, cur = run.st, run.curriculum
    t0 = time.perf_counter()
    positions = np.arange(cur.n_items) if positions is None or st.scores is None else np.asarray(positions)
    idx = cur.order[positions]
    fresh = _fresh_scores(run, idx)
    before = None if st.scores is None else [st.scores[i] for i in idx]
    cur.reorder(positions, _neg(fresh))
    scores = list(st.scores) if st.scores is not None else [None] * cur.n_items
    for i, s in zip(idx, fresh):
        scores[int(i)] = s
    seconds = time.perf_counter() - t0
    rec = {"epoch": st.epoch, "step": st.global_step, "seconds": round(seconds, 3), "n": len(idx),
           "null": sum(s is None for s in fresh)}
    if before is not None:  # how much the re-scored ranking moved
        rec["spearman_prev"] = finite_or_none(angles.spearman(_neg(before), _neg(fresh)))
    st.scores, st.ranked_at = scores, st.epoch
    run.log("score", rec)
    return seconds


def staleness(run: RankedRun) -> None:
    """Diagnostic: Spearman between the ranking in use and a fresh score of every prompt (not used)."""
    st, cur = run.st, run.curriculum
    t0 = time.perf_counter()
    fresh = _neg(_fresh_scores(run, range(cur.n_items)))
    rank_in_use = np.empty(cur.n_items)
    rank_in_use[cur.order] = np.arange(cur.n_items)
    window = cur.reachable(reach_epochs(run)) if follows_policy(run) else np.arange(cur.n_items)
    rows = cur.order[window]
    run.log("staleness", {"epoch": st.epoch, "step": st.global_step, "ranked_at": st.ranked_at,
                          "spearman": finite_or_none(angles.spearman(rank_in_use, fresh)),
                          "spearman_window": finite_or_none(angles.spearman(rank_in_use[rows], fresh[rows])),
                          "window_n": len(rows), "seconds": round(time.perf_counter() - t0, 3)})
