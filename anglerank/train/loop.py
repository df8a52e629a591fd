"""The closed GAIN-RL loop: score -> draw a subset -> GRPO on it -> move the window
-> re-score with the live policy -> evaluate -> checkpoint -> next subset.

This module exists so a whole GAIN-RL run (docs/method.md, "The training loop", with the
section-4 flaws fixed) reads top to bottom in one place: :func:`train` is the
algorithm; the helpers below it do one thing each. Which prompts an epoch
trains on is the curriculum's business (``anglerank.curriculum``), the
ranking it walks and its re-scoring ``ranking.py``, one step ``step.py``,
the files a run leaves ``checkpoint.py`` and ``metrics.py``, the training
prompts ``pool.py``.

One epoch is one sampled subset of ``subset_size`` prompts (the authors'
meaning); one step is one rollout batch of ``prompts_per_step`` prompts times
G completions, followed by ``num_iterations`` optimiser updates.

Run directory::

    RUN_DIR/config.toml           resolved config (reusable with --config)
    RUN_DIR/metrics.jsonl         one JSON object per line, "type": step|epoch|eval|score|staleness;
                                  "epoch" counts from 1 (eval/score: epochs completed, 0 = before training)
    RUN_DIR/subsets.jsonl         each epoch's drawn prompts (ranks, rows, ids)
    RUN_DIR/prompts.jsonl         one record per drawn prompt per step (see ``records.py``); with
                                  --filter-groups also the prompts drawn past an epoch's subset
    RUN_DIR/checkpoints/step-N/   model.safetensors + config + tokenizer (from_pretrained),
                                  optimizer.pt, rng.pt, trainer_state.json
    RUN_DIR/checkpoints/LATEST    name of the newest complete checkpoint

Exact resume: a checkpoint is taken at a step boundary and holds everything
the continuation depends on (see ``checkpoint.py``); ``--resume`` restores it
and truncates the logs to what the checkpoint had seen, so the continuation
draws the same prompts and samples the same completions as an uninterrupted
run. Random numbers come from the sampler's private generator and the
run's rollout generator, both seeded from ``--seed`` and checkpointed; the
caller's global RNG state is left as it was.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from anglerank import rewards
from anglerank.curriculum import Curriculum, correct
from anglerank.data.lock import output_lock
from anglerank.errors import Interrupted, UserError
from anglerank.signals import StopOnSignal
from anglerank.train import checkpoint, ranking, step, tracking
from anglerank.train.checkpoint import EpochMetrics, RunState
from anglerank.train.config import TrainConfig
from anglerank.train.metrics import Jsonl
from anglerank.train.records import RECORDS_FILE, Records, step_lines
from anglerank.train.setup import build, cpu_threads

if TYPE_CHECKING:
    from anglerank.scoring.engine import Scorer
    from anglerank.train.pool import Pool

__all__ = ["train"]

Event = Callable[[str, dict], None]
# Steps in a row whose updates were all skipped for a non-finite loss or gradient before the run stops.
_MAX_NONFINITE_STEPS = 3


@dataclass
class _Run:
    """Everything one run holds; ``ctx`` is what a step may use."""

    cfg: TrainConfig
    run_dir: Path
    ctx: step.StepContext
    curriculum: Curriculum
    scorer: Scorer
    eval_pool: Pool | None
    st: RunState
    metrics: Jsonl
    subsets: Jsonl
    emit: Event
    info: dict  # model name, device, dtype: for the start line
    t_start: float = field(default_factory=time.perf_counter)
    saved: tuple | None = None  # (epoch, step, path) of the last checkpoint
    tracker: tracking.Tracker | None = None  # --report-to
    prompt_records: Records | None = None  # prompts.jsonl

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.curriculum.subset_size / self.cfg.prompts_per_step)

    def elapsed(self) -> float:
        return round(self.st.elapsed_base + time.perf_counter() - self.t_start, 3)

    def log(self, kind: str, rec: dict) -> None:
        rec = {"type": kind, **rec, "elapsed_s": self.elapsed()}
        self.metrics.write(rec)
        if self.tracker is not None:
            self.tracker.log(kind, rec)
        self.emit(kind, rec)


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, force: bool = False,
          on_event: Event | None = None) -> dict:
    """Run (or continue, with ``resume=True``) GAIN-RL GRPO training; return a summary.

    A resume refuses data whose fingerprints changed since the run started, unless ``force``.

    ``on_event(kind, record)`` receives every metrics record (kinds ``step``,
    ``epoch``, ``eval``, ``score``) plus ``start``, ``log``, ``end`` and ``scoring``
    (``{done, total}`` prompts, after each scoring batch; not written to the metrics)
    for a live display. Ctrl-C / SIGTERM stop at the next safe point with a checkpoint and
    raise :class:`anglerank.errors.Interrupted` whose message says how to resume.
    """
    if not cfg.train_data:
        raise UserError("no training data given")
    if not cfg.output_dir:
        raise UserError("--output RUN_DIR is required")
    cfg = cfg.with_absolute_paths()
    emit = on_event or (lambda kind, rec: None)
    trackers = tracking.check_report_to(cfg.report_to)  # a missing tracker fails now, not mid-run
    run_dir = Path(cfg.output_dir)
    checkpoint.refuse_links(run_dir, resume)
    # Until the step loop takes signals over (stop after the step, save), a signal stops at once: nothing is
    # trained yet, and the way out releases the lock.
    guard = StopOnSignal(_stop_now)
    try:
        with guard, output_lock(run_dir, what="train run"):  # one process per run directory
            ckpt = checkpoint.prepare_run_dir(run_dir, resume, overwrite)
            if ckpt is not None:
                checkpoint.check_inputs(run_dir, cfg, force)
            else:
                checkpoint.start_run(run_dir, cfg)
                if resume:
                    emit("log", {"message": f"{cfg.output_dir} has no checkpoint yet: starting the run afresh with "
                                            "its saved config"})
            run = _run(cfg, ckpt, emit, trackers)
    except KeyboardInterrupt:
        if not guard.requested:  # a second Ctrl-C in the step loop: abort without saving
            raise
        raise Interrupted(guard.exit_code, f"interrupted outside the training steps, so no training was lost; "
                                           f"continue with: anglerank train --resume {run_dir}") from None
    summary = {"run_dir": str(run.run_dir), "epochs": run.st.epoch, "steps": run.st.global_step,
               "elapsed_s": run.elapsed(),
               "final_eval_accuracy": run.st.last_eval["eval_accuracy"] if run.st.last_eval else None,
               "checkpoint": str(checkpoint.latest_checkpoint(run.run_dir))}
    run.emit("end", summary)
    return summary


def _stop_now() -> None:
    """A signal before the step loop: unwind at once; later signals are ignored on the way out."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    raise KeyboardInterrupt


def _run(cfg: TrainConfig, ckpt: Path | None, emit: Event, trackers: list[str]) -> _Run:
    """Set up and run the loop with the caller's torch threads and RNG state left as they were."""
    threads, run = torch.get_num_threads(), None
    try:
        # Rollouts draw from the run's own generator; dropout (LoRA's, or a model's own) and LoRA's initial
        # weights from torch's global one: fork it so the caller's state survives the run, seed it from
        # --seed, and checkpoint it with the rest.
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
            torch.manual_seed(cfg.seed)
            chosen = cpu_threads(cfg.threads)  # the free cores, unless --threads says
            torch.set_num_threads(chosen.n)
            emit("log", {"message": chosen.message()})
            run = _setup(cfg, ckpt, emit)
            run.tracker = tracking.Tracker(trackers, run.run_dir, cfg.to_dict(), resumed_at=run.st.global_step)
            _loop(run)
    finally:
        torch.set_num_threads(threads)
        if run is not None and run.tracker is not None:
            run.tracker.close()
    return run


def _loop(run: _Run) -> None:
    """The algorithm: score, then per epoch draw, step, move the window, re-score, evaluate, checkpoint."""
    cfg, st, cur = run.cfg, run.st, run.curriculum
    run.emit("start", _start_record(run))
    if st.global_step == 0 and st.epoch == 0 and not cur.open:  # a fresh run
        if ranking.follows_policy(run):
            ranking.score(run)
        _evaluate_if_due(run, first=True)
    elif ranking.rescore_due(run):  # extended (--epochs) past a re-scoring skipped at the old last epoch
        ranking.rescore(run)
    notice = lambda: run.emit("log", {"message": "stopping after this step (Ctrl-C again aborts without saving)"})
    with StopOnSignal(notice) as stop:
        run.ctx.stop_requested = lambda: stop.requested
        try:
            while st.epoch < cfg.epochs:
                rows = cur.rows if cur.open else _draw(run)
                while st.step_in_epoch < run.steps_per_epoch:
                    s = st.step_in_epoch * cfg.prompts_per_step
                    _step(run, [int(i) for i in rows[s: s + cfg.prompts_per_step]], rows)
                    if stop.requested:
                        raise _Stop
                window = cur.end_epoch()
                st.epoch, st.step_in_epoch = st.epoch + 1, 0
                if cfg.staleness_every and st.epoch % cfg.staleness_every == 0:
                    ranking.staleness(run)
                rescore_s = ranking.rescore_if_due(run)
                eval_acc = _evaluate_if_due(run)
                run.log("epoch", _epoch_record(run, window, rescore_s, eval_acc))
                st.subset_info, st.epoch_metrics = {}, EpochMetrics()
                if st.epoch % cfg.save_every == 0 or st.epoch == cfg.epochs:
                    _checkpoint(run)
                if stop.requested:
                    raise _Stop
        except _Stop:
            saved = run.saved if run.saved and run.saved[:2] == (st.epoch, st.global_step) and not cur.open \
                else None
            path = saved[2] if saved else _checkpoint(run)
            raise Interrupted(stop.exit_code, f"interrupted at epoch {st.epoch}, step {st.global_step}; checkpoint "
                                              f"saved in {path}. Continue with: anglerank train --resume "
                                              f"{run.run_dir}") from None


class _Stop(Exception):
    """Leave the loop, save a checkpoint, report how to resume."""


# ======================================================================== the steps

def _draw(run: _Run) -> np.ndarray:
    """Open the next epoch: draw its prompts and log them."""
    cur, st, pool = run.curriculum, run.st, run.ctx.pool
    rows = cur.begin_epoch()
    st.epoch_cursor, st.epoch_extra = 0, []
    scores = [st.scores[i] for i in rows if st.scores[i] is not None] if st.scores is not None else []
    st.subset_info = {"subset_mean_rank": float(np.mean(cur.positions)) if cur.sampler.uses_ranking else None,
                      "subset_mean_score": float(np.mean(scores)) if scores else None}
    run.subsets.write({"epoch": st.epoch + 1, "ranks": [int(r) for r in cur.positions],
                       "rows": [pool.rows[i] for i in rows], "ids": [pool.ids[i] for i in rows]})
    return rows


def _step(run: _Run, batch: list[int], rows) -> None:
    """One training step; its rewards and angles go to the curriculum, its metrics and per-prompt records to
    the logs.

    With --filter-groups the step takes its prompts from the epoch's cursor instead (refills of earlier steps
    may have used part of the subset) and may take more, past the subset from further draws of the sampler
    (``step.Refill``). The curriculum observes every group, dropped ones too: the window then moves on the
    accuracy and angle of everything drawn, not of the informative groups alone (whose accuracy is never 0 or 1).
    """
    st, cfg = run.st, run.cfg
    rng_before = run.ctx.generator.get_state()
    refill = None
    if cfg.filter_groups:
        refill = step.Refill(run.curriculum, rows, st.epoch_cursor, st.epoch_extra, len(batch),
                             cfg.max_num_gen_batches)
        batch = refill.take(len(batch)) or batch  # every prompt of the pool used this epoch: the subset again
    try:
        res = step.train_step(run.ctx, batch, st.updates, refill)
    except step.StepAborted:
        run.ctx.generator.set_state(rng_before)  # redo this very step on resume
        if refill is not None:
            refill.rollback()
        raise _Stop from None
    if refill is not None:
        st.epoch_cursor, st.epoch_extra = refill.cursor, refill.extra
    st.nonfinite_streak = st.nonfinite_streak + 1 if res.record["skipped_updates"] else 0
    if st.nonfinite_streak >= _MAX_NONFINITE_STEPS:
        raise UserError(f"training diverged: {st.nonfinite_streak} steps in a row had a non-finite loss or gradient "
                        f"norm, so their updates were skipped (step {st.global_step + 1}); the checkpoints hold finite "
                        "weights. Lower --lr or --max-grad-norm, or check the reward functions")
    run.curriculum.observe(res.judged, res.angles)
    st.global_step, st.step_in_epoch, st.updates = st.global_step + 1, st.step_in_epoch + 1, st.updates + res.updates
    m = st.epoch_metrics
    m.completions += len(res.rewards)
    m.reward_sum += float(sum(res.rewards))
    m.rollout_s += res.rollout_s
    m.update_s += res.update_s
    st.rollouts += len(res.rewards)
    run.prompt_records.write_lines(step_lines(res, step=st.global_step, epoch=st.epoch + 1, ids=run.ctx.pool.ids,
                                              order=run.curriculum.order, num_generations=cfg.num_generations,
                                              threshold=cfg.correct_threshold))
    if res.record.get("filter_cap_hit"):
        run.emit("log", {"message": f"step {st.global_step}: --max-num-gen-batches {cfg.max_num_gen_batches} "
                                    f"reached with {res.record['groups_kept']} of {len(batch)} groups informative; "
                                    "trained on those"})
    run.log("step", {**res.record, "epoch": st.epoch + 1, "step": st.global_step, "rollouts_total": st.rollouts,
                     "optimizer_steps": st.updates})


def _evaluate_if_due(run: _Run, first: bool = False) -> float | None:
    """Greedy accuracy on the eval data: before training, every ``eval_every`` epochs, and after the last."""
    cfg, st, ctx, pool = run.cfg, run.st, run.ctx, run.eval_pool
    if pool is None or not cfg.eval_every or not (first or st.epoch % cfg.eval_every == 0 or st.epoch == cfg.epochs):
        return None
    t0 = time.perf_counter()
    ro = ctx.engine.generate(pool.prompt_ids, greedy=True,
                             max_new_tokens=cfg.eval_max_new_tokens or cfg.max_new_tokens,
                             batch_size=cfg.eval_batch_size)
    idx = list(range(len(pool.rows)))
    total = None
    if not step.verifier_decides(pool, cfg):
        total, _ = rewards.combine_rewards(ctx.reward_funcs, cfg.reward_weight, pool.prompts, ro.texts,
                                           **step.row_columns(pool, idx))
    judged = step.judge_rewards(ctx, pool, idx, ro.texts, total)
    st.last_eval = {"epoch": st.epoch, "step": st.global_step,
                    "eval_accuracy": _accuracy(judged, cfg.correct_threshold), "eval_n": len(idx),
                    "eval_completion_len_mean": float(np.mean([len(c) for c in ro.completion_ids])),
                    "eval_s": round(time.perf_counter() - t0, 3)}
    if cfg.eval_by in pool.columns:
        keys = [str(g) for g in pool.columns[cfg.eval_by]]
        st.last_eval["eval_accuracy_by"] = {
            k: _accuracy([j for j, g in zip(judged, keys) if g == k], cfg.correct_threshold) for k in sorted(set(keys))}
    run.log("eval", st.last_eval)
    return st.last_eval["eval_accuracy"]


def _accuracy(judged, threshold: float) -> float | None:
    ok = correct(judged, threshold)
    return float(ok.mean()) if ok.size else None


def _epoch_record(run: _Run, window: dict, rescore_s: float, eval_acc: float | None) -> dict:
    st, m = run.st, run.st.epoch_metrics
    return {"epoch": st.epoch, "step": st.global_step, "sampler": run.cfg.sampler, "mu": window.get("mu"),
            "mu_next": window.get("mu_next"), "delta": window.get("delta"), "sigma": window.get("sigma"),
            "passes": window.get("passes"), **st.subset_info, "accuracy": window.get("accuracy"),
            "angle": window.get("angle"), "reward_mean": m.reward_sum / m.completions if m.completions else None,
            "completions": m.completions, "rollout_s": round(m.rollout_s, 3), "update_s": round(m.update_s, 3),
            "rescore_s": round(rescore_s, 3),
            "rescore_over_rollout": round(rescore_s / m.rollout_s, 4) if m.rollout_s else None,
            "eval_accuracy": eval_acc}


def _checkpoint(run: _Run) -> Path:
    st, ctx = run.st, run.ctx
    st.elapsed_base, run.t_start = run.elapsed(), time.perf_counter()
    sizes = {"metrics": run.metrics.size(), "subsets": run.subsets.size(), "records": run.prompt_records.size()}
    optimizer = None if run.cfg.save_only_model else ctx.optimizer
    path = checkpoint.save_checkpoint(run.run_dir, ctx.peft or ctx.model, ctx.tok, optimizer, ctx.generator, st,
                                      run.curriculum, ctx.pool.rows, sizes, run.cfg.save_total_limit)
    run.saved = (st.epoch, st.global_step, path)
    return path


def _start_record(run: _Run) -> dict:
    st, pool = run.st, run.ctx.pool
    return {"run_dir": str(run.run_dir), **run.info, "n_prompts": len(pool.rows), "dropped": pool.dropped,
            "n_eval": len(run.eval_pool.rows) if run.eval_pool else 0, "epochs": run.cfg.epochs,
            "steps_per_epoch": run.steps_per_epoch, "total_steps": run.cfg.epochs * run.steps_per_epoch,
            "global_step": st.global_step, "resumed": bool(st.global_step or st.epoch)}


# ========================================================================= set-up

def _setup(cfg: TrainConfig, ckpt: Path | None, emit: Event) -> _Run:
    """Models, data, optimiser, curriculum and scorer; the state restored from ``ckpt`` when resuming."""
    parts = build(cfg, ckpt, warn=lambda m: emit("log", {"message": f"warning: {m}"}))
    for note in parts.notes:
        emit("log", {"message": note})
    run_dir = Path(cfg.output_dir)
    metrics, subsets = Jsonl(run_dir / "metrics.jsonl"), Jsonl(run_dir / "subsets.jsonl")
    prompt_records = Records(run_dir / RECORDS_FILE)
    n_prompts = len(parts.ctx.pool.rows)
    st = RunState()
    if ckpt:
        st, sizes = checkpoint.load_checkpoint(ckpt, parts.ctx.optimizer, parts.ctx.generator, parts.curriculum,
                                               parts.ctx.pool.rows)
        for log, size in ((metrics, sizes["metrics"]), (subsets, sizes["subsets"]),
                          (prompt_records, sizes.get("records", 0))):
            cut = log.truncate(size)  # back to what the checkpoint had seen; never padded
            if cut:
                emit("log", {"message": f"warning: {cut}"})
        if not prompt_records.size():  # a run from before per-prompt records: they start here
            prompt_records.start(n_prompts, cfg.num_generations, cfg.filter_groups)
        fresh_adam = ("" if (ckpt / "optimizer.pt").exists()
                      else " with a fresh optimiser (saved with --save-only-model)")
        emit("log", {"message": f"resumed from {ckpt} at epoch {st.epoch}, step {st.global_step}{fresh_adam}"})
        # A longer run (--epochs raised on resume) keeps the schedule it started with: a cosine under way
        # is not stretched; past its end the LR stays at its final value.
        longer = parts.ctx.total_updates
        parts.ctx.total_updates = st.lr_horizon or longer
        if cfg.lr_schedule == "cosine" and longer > parts.ctx.total_updates:
            emit("log", {"message": f"the cosine schedule keeps its length of {parts.ctx.total_updates} updates; "
                                    f"the added epochs train at its final LR ({cfg.min_lr_ratio:g} x --lr)"})
    else:
        st.lr_horizon = parts.ctx.total_updates
        metrics.reset()
        subsets.reset()
        prompt_records.start(n_prompts, cfg.num_generations, cfg.filter_groups)
    return _Run(cfg, run_dir, parts.ctx, parts.curriculum, parts.scorer, parts.eval_pool, st, metrics, subsets,
                emit, parts.info, prompt_records=prompt_records)
