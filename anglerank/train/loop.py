"""The closed GAIN-RL loop: score -> rank -> draw a subset -> GRPO on it -> move
the window -> re-score with the live policy -> next subset.

This module exists so a whole GAIN-RL run (METHOD.md section 3, with the
section-4 flaws fixed) reads top to bottom in one place: :func:`train` sets a
run up, then loops over epochs and steps; the helpers below it do one thing
each (load the prompt pool, draw, roll out, update, score, evaluate,
checkpoint). The GRPO math lives in ``grpo.py``, the window in ``sampler.py``,
rewards in ``rewards.py``, token layout in ``rollout.py``.

One epoch is one sampled subset of ``subset_size`` prompts (the authors'
meaning); one step is one rollout batch of ``prompts_per_step`` prompts times
G completions, followed by ``num_iterations`` optimiser updates.

Run directory::

    RUN_DIR/config.toml           resolved config (reusable with --config)
    RUN_DIR/metrics.jsonl         one JSON object per line, "type": step|epoch|eval|score;
                                  "epoch" counts from 1 (eval/score: epochs completed, 0 = before training)
    RUN_DIR/subsets.jsonl         each epoch's drawn prompts (ranks, rows, ids)
    RUN_DIR/checkpoints/step-N/   model.safetensors + config + tokenizer (from_pretrained),
                                  optimizer.pt, rng.pt, trainer_state.json
    RUN_DIR/checkpoints/LATEST    name of the newest complete checkpoint

Exact resume: a checkpoint holds the weights (float32), optimiser, sampler
(its own seeded generator), the current ranking, the epoch's subset and
accumulators, and every RNG state, taken at a step boundary; ``--resume``
restores all of it and truncates the logs to what the checkpoint had seen, so
the continuation draws the same prompts as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from anglerank import angles, hooks
from anglerank.train import grpo, rewards, rollout
from anglerank.train.config import TrainConfig, dump_toml, load_toml
from anglerank.train.sampler import GaussianRankSampler

__all__ = ["train", "load_pool", "make_sampler", "UniformSampler", "OrderedSampler", "sequence_angles",
           "micro_batch_weight", "resume_config",
           "latest_checkpoint", "read_metrics", "RESUME_OVERRIDABLE"]

STATE_VERSION = 1
ANSWER_COLUMNS = ("reward_model.ground_truth", "answer", "solution", "ground_truth")
# Settings a resumed run may change (they do not affect what was trained so far).
RESUME_OVERRIDABLE = ("epochs", "eval_every", "save_every", "keep_checkpoints", "eval_batch_size",
                      "generation_batch_size", "device", "threads", "gradient_checkpointing")

Event = Callable[[str, dict], None]


# =============================================================================== train

def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          on_event: Event | None = None) -> dict:
    """Run (or continue, with ``resume=True``) GAIN-RL GRPO training; return a summary.

    ``on_event(kind, record)`` receives every metrics record (kinds ``step``,
    ``epoch``, ``eval``, ``score``) plus ``start``, ``log`` and ``end`` for a live
    display. Ctrl-C / SIGTERM stop at the next safe point with a checkpoint and
    raise :class:`anglerank.score.Interrupted` whose message says how to resume.
    """
    from anglerank import models
    from anglerank.render import Renderer
    from anglerank.score import ScoreOptions, Scorer, resolve_device, resolve_dtype

    emit = on_event or (lambda kind, rec: None)
    if not cfg.train_data:
        raise ValueError("no training data given")
    if not cfg.output_dir:
        raise ValueError("--output RUN_DIR is required")
    run_dir = Path(cfg.output_dir)
    ckpt = _prepare_run_dir(run_dir, resume, overwrite)

    # --- device, precision, model -------------------------------------------------
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    compute = resolve_dtype(cfg.dtype, device)
    if compute == "float16":
        if cfg.dtype == "float16":
            raise ValueError("--dtype float16 is not supported for training (no loss scaling); use bfloat16 or float32")
        compute = "float32"
    amp_dtype = torch.bfloat16 if compute == "bfloat16" else None
    loaded = models.load(str(ckpt) if ckpt else cfg.model, device=device, dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    layer_idx = hooks.resolve_layer(model, cfg.layer)
    hooks.site_module(model, layer_idx, cfg.site)
    ref_model = None
    if cfg.beta > 0:  # frozen initial policy for the KL term
        ref_model = models.load(cfg.model, device=device, dtype="float32").model
        ref_model.requires_grad_(False).eval()

    # --- data ---------------------------------------------------------------------
    renderer = Renderer(tok, cfg.preset, cfg.system, cfg.prefix, cfg.max_prompt_length)
    pool = load_pool(cfg.train_data, cfg, renderer, limit=cfg.limit)
    if not pool.rows:
        raise ValueError("no usable training prompts (all null, unrenderable or longer than --max-prompt-length)")
    eval_pool = None
    if cfg.eval_data:
        eval_pool = load_pool(cfg.eval_data, cfg, renderer, limit=None)
        if cfg.eval_limit and cfg.eval_limit < len(eval_pool.rows):
            keep = np.sort(np.random.default_rng(cfg.seed + 1).choice(len(eval_pool.rows), cfg.eval_limit, replace=False))
            eval_pool = eval_pool.subset(keep.tolist())
    reward_funcs = [rewards.load_reward(s) for s in cfg.reward]
    if any(f is rewards.math_reward for f in reward_funcs) and pool.answers is None:
        raise ValueError("the built-in math reward needs reference answers; pass --answer-column "
                         f"(looked for {', '.join(ANSWER_COLUMNS)})")

    # --- optimiser, sampler, scorer ------------------------------------------------------
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    N = len(pool.rows)
    sampler = make_sampler(cfg, N)
    steps_per_epoch = math.ceil(sampler.subset_size / cfg.prompts_per_step)
    total_updates = max(1, cfg.epochs * steps_per_epoch * cfg.num_iterations)
    uses_scores = cfg.sampler != "uniform"
    score_opt = ScoreOptions(model=cfg.model, preset=cfg.preset, system=cfg.system, prefix=cfg.prefix,
                             site=cfg.site, layers=[cfg.layer], estimator=cfg.estimator,
                             max_length=cfg.max_prompt_length, dtype=compute, device=device,
                             batch_tokens=cfg.score_batch_tokens)
    scorer = Scorer(model, tok, renderer, score_opt, device)
    amp = (lambda: torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype)) if amp_dtype \
        else nullcontext
    ctx = _Ctx(cfg, model, ref_model, tok, optimizer, pool, reward_funcs, layer_idx, device, amp, amp_dtype,
               rollout.pad_token_id(tok), total_updates)

    # --- fresh start or resume --------------------------------------------------------
    st = _State()
    metrics_path, subsets_path = run_dir / "metrics.jsonl", run_dir / "subsets.jsonl"
    if ckpt:
        st = _load_checkpoint(ckpt, optimizer, sampler, pool, metrics_path, subsets_path)
        emit("log", {"message": f"resumed from {ckpt} at epoch {st.epoch}, step {st.global_step}"})
    else:
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        (run_dir / "config.toml").write_text(dump_toml(cfg))
        metrics_path.write_text("")
        subsets_path.write_text("")
    log = _Jsonl(metrics_path)
    subsets_log = _Jsonl(subsets_path)
    t_start = time.perf_counter()
    elapsed = lambda: round(st.elapsed_base + time.perf_counter() - t_start, 3)  # noqa: E731

    emit("start", {"run_dir": str(run_dir), "model": loaded.name, "device": device, "dtype": compute,
                   "n_prompts": N, "dropped": pool.dropped, "n_eval": len(eval_pool.rows) if eval_pool else 0,
                   "epochs": cfg.epochs, "steps_per_epoch": steps_per_epoch,
                   "total_steps": cfg.epochs * steps_per_epoch, "global_step": st.global_step,
                   "resumed": bool(ckpt)})

    if ckpt and uses_scores and cfg.rescore_every and st.subset is None and st.epoch % cfg.rescore_every == 0 \
            and st.ranked_at != st.epoch and st.epoch < cfg.epochs:
        # the run was extended (--epochs) past its last epoch, whose re-scoring was skipped
        st.ranking, st.scores = _score(ctx, scorer, st, log, emit, epoch=st.epoch, elapsed=elapsed)
        st.ranked_at = st.epoch
    if not ckpt:
        if uses_scores:
            st.ranking, st.scores = _score(ctx, scorer, st, log, emit, epoch=0, elapsed=elapsed)
        else:
            st.ranking, st.scores = np.arange(N), None
        if eval_pool is not None and cfg.eval_every:
            st.last_eval = _evaluate(ctx, eval_pool, log, emit, epoch=0, step=0, elapsed=elapsed)

    # --- the loop ------------------------------------------------------------------------
    saved, saved_at = None, None
    with _StopOnSignal(lambda: emit("log", {"message": "stopping after this step (Ctrl-C again aborts without "
                                                         "saving)"})) as stop:
        ctx.stop = stop
        try:
            while st.epoch < cfg.epochs:
                if st.subset is None:  # draw this epoch's prompts from the current ranking
                    ranks = sampler.draw()
                    st.subset = [int(st.ranking[r]) for r in ranks]
                    st.subset_info = _subset_info(ranks, st.subset, st.scores, sampler)
                    st.acc = _EpochStats()
                    subsets_log.write({"epoch": st.epoch + 1, "ranks": [int(r) for r in ranks],
                                       "rows": [pool.rows[i] for i in st.subset],
                                       "ids": [pool.ids[i] for i in st.subset]})
                while st.step_in_epoch < steps_per_epoch:
                    s = st.step_in_epoch * cfg.prompts_per_step
                    batch = st.subset[s: s + cfg.prompts_per_step]
                    rng_before = _rng_state()
                    try:
                        rec = _train_step(ctx, batch, st)
                    except _StepAborted:
                        _set_rng_state(rng_before)  # redo this step exactly on resume
                        raise _Stop from None
                    st.global_step += 1
                    st.step_in_epoch += 1
                    rec.update(type="step", epoch=st.epoch + 1, step=st.global_step, elapsed_s=elapsed())
                    log.write(rec)
                    emit("step", rec)
                    if stop.requested:
                        raise _Stop
                # -- epoch end: window update, re-score, eval, checkpoint
                acc, ang = st.acc.accuracy(), st.acc.angle()
                mu_before = getattr(sampler, "mu", None)
                delta = sampler.update(acc, ang if math.isfinite(ang) else 0.0)
                st.epoch += 1
                st.step_in_epoch = 0
                rescore_s = 0.0
                if uses_scores and cfg.rescore_every and st.epoch % cfg.rescore_every == 0 and st.epoch < cfg.epochs:
                    t0 = time.perf_counter()
                    st.ranking, st.scores = _score(ctx, scorer, st, log, emit, epoch=st.epoch, elapsed=elapsed)
                    st.ranked_at = st.epoch
                    rescore_s = time.perf_counter() - t0
                eval_acc = None
                if eval_pool is not None and cfg.eval_every and (st.epoch % cfg.eval_every == 0 or st.epoch == cfg.epochs):
                    st.last_eval = _evaluate(ctx, eval_pool, log, emit, epoch=st.epoch, step=st.global_step,
                                             elapsed=elapsed)
                    eval_acc = st.last_eval["eval_accuracy"]
                rec = {"type": "epoch", "epoch": st.epoch, "step": st.global_step, "sampler": cfg.sampler,
                       "mu": mu_before, "mu_next": getattr(sampler, "mu", None), "delta": delta,
                       "sigma": getattr(sampler, "sigma", None), **st.subset_info,
                       "accuracy": acc, "angle": ang if math.isfinite(ang) else None,
                       "reward_mean": st.acc.reward_mean(), "completions": st.acc.n,
                       "rollout_s": round(st.acc.rollout_s, 3), "update_s": round(st.acc.update_s, 3),
                       "rescore_s": round(rescore_s, 3),
                       "rescore_over_rollout": round(rescore_s / st.acc.rollout_s, 4) if st.acc.rollout_s else None,
                       "eval_accuracy": eval_acc, "elapsed_s": elapsed()}
                st.subset, st.subset_info, st.acc = None, {}, _EpochStats()
                log.write(rec)
                emit("epoch", rec)
                if st.epoch % cfg.save_every == 0 or st.epoch == cfg.epochs:
                    saved = _save_checkpoint(ctx, run_dir, st, sampler, log, subsets_log, elapsed())
                    saved_at = (st.epoch, st.global_step)
                if stop.requested:
                    raise _Stop
        except _Stop:
            if saved_at == (st.epoch, st.global_step) and st.subset is None:
                path = saved  # the epoch-end checkpoint is this very state
            else:
                path = _save_checkpoint(ctx, run_dir, st, sampler, log, subsets_log, elapsed())
            from anglerank.score import Interrupted

            code = 130 if stop.signum in (None, signal.SIGINT) else 143
            raise Interrupted(code, f"interrupted at epoch {st.epoch}, step {st.global_step}; checkpoint saved in "
                                    f"{path}. Continue with: anglerank train --resume {run_dir}") from None
    summary = {"run_dir": str(run_dir), "epochs": st.epoch, "steps": st.global_step, "elapsed_s": elapsed(),
               "final_eval_accuracy": st.last_eval["eval_accuracy"] if st.last_eval else None,
               "checkpoint": str(latest_checkpoint(run_dir))}
    emit("end", summary)
    return summary


# =========================================================================== state

@dataclass
class _EpochStats:
    n: int = 0
    correct: float = 0.0
    reward_sum: float = 0.0
    angle_sum: float = 0.0
    angle_n: int = 0
    rollout_s: float = 0.0
    update_s: float = 0.0

    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def angle(self) -> float:
        return self.angle_sum / self.angle_n if self.angle_n else math.nan

    def reward_mean(self) -> float | None:
        return self.reward_sum / self.n if self.n else None


@dataclass
class _State:
    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # completed steps of the current epoch
    global_step: int = 0
    updates: int = 0  # optimiser updates (the LR schedule's clock)
    subset: list | None = None  # pool indices of the current epoch, in training order
    subset_info: dict = field(default_factory=dict)
    acc: _EpochStats = field(default_factory=_EpochStats)
    ranking: np.ndarray | None = None  # pool indices, highest score first
    ranked_at: int = 0  # epoch whose weights produced the ranking
    scores: list | None = None  # per pool index (None: unscorable)
    last_eval: dict | None = None
    elapsed_base: float = 0.0


@dataclass
class _Ctx:
    cfg: TrainConfig
    model: object
    ref_model: object
    tok: object
    optimizer: torch.optim.Optimizer
    pool: "Pool"
    reward_funcs: list
    layer_idx: int
    device: str
    amp: Callable
    amp_dtype: torch.dtype | None
    pad_id: int
    total_updates: int
    stop: "_StopOnSignal | None" = None


class _Stop(Exception):
    """Leave the loop, save a checkpoint, report how to resume."""


class _StepAborted(Exception):
    """Ctrl-C arrived before this step changed any weights: redo it on resume."""


class _StopOnSignal:
    """First Ctrl-C / SIGTERM: stop at the next safe point. Second: abort now."""

    def __init__(self, notify: Callable[[], None]):
        self.signum = None
        self.notify = notify
        self._old = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self):
        def handler(signum, frame):
            if self.signum is not None:
                raise KeyboardInterrupt
            self.signum = signum
            self.notify()

        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class _Jsonl:
    def __init__(self, path: Path):
        self.path = path

    def write(self, rec: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec, default=_json_default) + "\n")

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def read_metrics(run_dir, kind: str | None = None) -> list[dict]:
    """Records of ``RUN_DIR/metrics.jsonl`` (optionally only one ``type``)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    out = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in out if kind is None or r.get("type") == kind]


# ============================================================================ data

@dataclass
class Pool:
    """Usable prompts of a data set, aligned lists (index = pool index)."""

    rows: list  # dataset row numbers
    ids: list
    records: list  # anglerank.data.reader.Record, for (re)scoring
    prompt_ids: list  # rendered prompt token ids (same rendering as scoring)
    prompts: list  # the prompt column's values, passed to reward functions as `prompts`
    answers: list | None
    columns: dict  # top-level columns for reward functions
    dropped: dict

    def subset(self, idx: list[int]) -> "Pool":
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return Pool(pick(self.rows), pick(self.ids), pick(self.records), pick(self.prompt_ids), pick(self.prompts),
                    pick(self.answers) if self.answers is not None else None,
                    {k: pick(v) for k, v in self.columns.items()}, dict(self.dropped))


def _dotted(value, parts: list[str]):
    for p in parts:
        if value is None:
            return None
        value = value.get(p) if isinstance(value, dict) else None
    return value


def load_pool(files, cfg: TrainConfig, renderer, limit: int | None = None) -> Pool:
    """Read Parquet rows, render prompts, keep those that fit ``max_prompt_length``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from anglerank.data.reader import InputError, ParquetSource

    source = ParquetSource(files, prompt_column=cfg.prompt_column, id_column=cfg.id_column)
    stop = source.total_rows if limit is None else min(limit, source.total_rows)
    table = pa.concat_tables([pq.read_table(f) for f in source.files]).slice(0, stop)
    columns = {name: table.column(name).to_pylist() for name in table.column_names
               if name not in ("prompts", "completions")}
    answers = None
    names = [cfg.answer_column] if cfg.answer_column else list(ANSWER_COLUMNS)
    for name in names:
        parts = name.split(".")
        if parts[0] in columns:
            vals = [_dotted({parts[0]: v}, parts) for v in columns[parts[0]]]
            if any(v is not None for v in vals) or cfg.answer_column:
                answers = [None if v is None else str(v) for v in vals]
                break
        elif cfg.answer_column:
            raise InputError(f"answer column {name!r} not found; columns: {', '.join(table.column_names)}")
    p_parts = source.prompt_column.split(".")
    prompt_values = [_dotted({p_parts[0]: v}, p_parts) for v in columns[p_parts[0]]]
    keep, recs, ids_list, dropped = [], [], [], {"null": 0, "too_long": 0, "no_answer": 0}
    for rec in source.iter_records(0, stop):
        r = renderer.render(rec.question, rec.history)
        if not r.ids:
            dropped["null"] += 1
        elif r.truncated:
            dropped["too_long"] += 1
        elif answers is not None and answers[rec.row] is None:
            dropped["no_answer"] += 1
        else:
            keep.append(rec.row)
            recs.append(rec)
            ids_list.append(r.ids)
    return Pool(
        rows=keep, ids=[rec.id if rec.id is not None else rec.row for rec in recs], records=recs,
        prompt_ids=ids_list, prompts=[prompt_values[i] for i in keep],
        answers=[answers[i] for i in keep] if answers is not None else None,
        columns={k: [v[i] for i in keep] for k, v in columns.items()}, dropped=dropped)


# ========================================================================= samplers

class UniformSampler:
    """Vanilla GRPO's order: shuffled passes over the data, K prompts per epoch.

    A pass's leftover (fewer than K prompts) is skipped so an epoch never holds
    a prompt twice. Returns ranks in the identity ranking (pool indices).
    """

    def __init__(self, n_items: int, subset_size: int, seed: int = 0):
        self.n_items, self.subset_size = n_items, min(subset_size, n_items)
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.perm = np.zeros(0, dtype=np.int64)
        self.pos = 0

    def draw(self) -> np.ndarray:
        if self.pos + self.subset_size > len(self.perm):
            self.perm, self.pos = self.rng.permutation(self.n_items), 0
        out = self.perm[self.pos: self.pos + self.subset_size]
        self.pos += self.subset_size
        return out.astype(np.int64)

    def update(self, accuracy: float, angle: float) -> float:
        return 0.0

    def state_dict(self) -> dict:
        return {"kind": "uniform", "n_items": self.n_items, "subset_size": self.subset_size,
                "perm": self.perm.tolist(), "pos": self.pos, "rng_state": self.rng.bit_generator.state}

    def load_state_dict(self, s: dict) -> None:
        if s["n_items"] != self.n_items:
            raise ValueError(f"checkpoint has {s['n_items']} prompts, the data has {self.n_items}")
        self.perm, self.pos = np.asarray(s["perm"], dtype=np.int64), int(s["pos"])
        self.rng.bit_generator.state = s["rng_state"]


class OrderedSampler:
    """Angle-ranked curriculum without the Gaussian or feedback: epoch t takes
    ranks ``[tK, (t+1)K)`` (wrapping), highest concentration first."""

    def __init__(self, n_items: int, subset_size: int, seed: int = 0, shuffle: bool = True):
        self.n_items, self.subset_size = n_items, min(subset_size, n_items)
        self.shuffle = shuffle
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.cursor = 0
        self.mu = 0.0

    def draw(self) -> np.ndarray:
        ranks = (self.cursor + np.arange(self.subset_size)) % self.n_items
        self.mu = float(self.cursor + (self.subset_size - 1) / 2)
        self.cursor = (self.cursor + self.subset_size) % self.n_items
        return self.rng.permutation(ranks) if self.shuffle else ranks

    def update(self, accuracy: float, angle: float) -> float:
        return float(self.subset_size)

    def state_dict(self) -> dict:
        return {"kind": "ordered", "n_items": self.n_items, "cursor": self.cursor, "mu": self.mu,
                "rng_state": self.rng.bit_generator.state}

    def load_state_dict(self, s: dict) -> None:
        if s["n_items"] != self.n_items:
            raise ValueError(f"checkpoint has {s['n_items']} prompts, the data has {self.n_items}")
        self.cursor, self.mu = int(s["cursor"]), float(s["mu"])
        self.rng.bit_generator.state = s["rng_state"]


def make_sampler(cfg: TrainConfig, n_items: int):
    if cfg.sampler == "uniform":
        return UniformSampler(n_items, cfg.subset_size, cfg.seed)
    if cfg.sampler == "ordered":
        return OrderedSampler(n_items, cfg.subset_size, cfg.seed, shuffle=not cfg.keep_order)
    return GaussianRankSampler(n_items, cfg.subset_size, mu0=cfg.mu0, sigma=cfg.sigma, step=cfg.step,
                               alpha=cfg.alpha, beta_acc=cfg.beta_acc, adj_min=cfg.adj_min,
                               adj_max=cfg.adj_max, seed=cfg.seed, shuffle=not cfg.keep_order)


def _subset_info(ranks, subset, scores, sampler) -> dict:
    info = {"subset_mean_rank": float(np.mean(ranks)) if not isinstance(sampler, UniformSampler) else None,
            "subset_mean_score": None}
    if scores is not None:
        vals = [scores[i] for i in subset if scores[i] is not None]
        info["subset_mean_score"] = float(np.mean(vals)) if vals else None
    return info


# ========================================================================= scoring

def _score(ctx: _Ctx, scorer, st: _State, log: _Jsonl, emit: Event, *, epoch: int, elapsed) -> tuple:
    """Score every pool prompt with the live weights; return (ranking, scores)."""
    t0 = time.perf_counter()
    was_training = ctx.model.training
    ctx.model.eval()
    try:
        with ctx.amp():
            rows = scorer.score_records(ctx.pool.records)
    finally:
        ctx.model.train(was_training)
    by_row = {r["row"]: r["score"] for r in rows}
    scores = [by_row.get(row) for row in ctx.pool.rows]
    keyed = [(-s if s is not None and math.isfinite(s) else math.inf, i) for i, s in enumerate(scores)]
    ranking = np.array([i for _, i in sorted(keyed)], dtype=np.int64)
    seconds = time.perf_counter() - t0
    rec = {"type": "score", "epoch": epoch, "step": st.global_step, "seconds": round(seconds, 3),
           "n": len(scores), "null": sum(s is None for s in scores), "elapsed_s": elapsed()}
    if st.scores is not None:  # how much the ranking moved since the previous scoring
        a = [math.nan if s is None else s for s in st.scores]
        b = [math.nan if s is None else s for s in scores]
        rec["spearman_prev"] = _nan_none(angles.spearman(a, b))
    log.write(rec)
    emit("score", rec)
    return ranking, scores


def _nan_none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


# ============================================================================ steps

def sequence_angles(hidden_BLD: torch.Tensor, mask_BL: torch.Tensor) -> torch.Tensor:
    """Whole-sequence mean pairwise cosine per row over real tokens (float64 ``[B]``):
    ``(||sum u||^2 - n) / (n (n - 1))``, the intra term with every real token in Q."""
    m = mask_BL.bool()
    intra_B, _ = angles.segment_concentration(hidden_BLD, m, m)
    return intra_B


def _forward_logp(ctx: _Ctx, model, b: rollout.Packed, capture: bool):
    """Completion log-probs ``[B, T]`` (float32) and, if asked, the angle per row from the same pass."""
    cm = hooks.capture(model, [ctx.layer_idx], ctx.cfg.site, stop=False, detach=True) if capture else nullcontext({})
    with cm as cap, ctx.amp():
        out = model(input_ids=b.input_ids_BL, attention_mask=b.attention_mask_BL, position_ids=b.position_ids_BL,
                    use_cache=False, logits_to_keep=b.completion_width + 1)
    logp_BT = grpo.sequence_logprobs(out.logits[:, :-1], b.completion_ids_BT)
    angle_B = sequence_angles(cap[ctx.layer_idx], b.attention_mask_BL) if capture else None
    return logp_BT, angle_B


@torch.no_grad()
def _angles_only(ctx: _Ctx, seqs: list[list[int]]) -> torch.Tensor:
    """Angle of sequences that get no gradient (zero advantage): forward up to the hook only."""
    out = []
    mbs = ctx.cfg.micro_batch_size
    for s in range(0, len(seqs), mbs):
        chunk = seqs[s: s + mbs]
        T = max(len(x) for x in chunk)
        ids = torch.full((len(chunk), T), ctx.pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        for i, x in enumerate(chunk):
            ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        with hooks.capture(ctx.model, [ctx.layer_idx], ctx.cfg.site, stop=True) as cap, ctx.amp():
            hooks.run_until_captured(ctx.model, ids.to(ctx.device), mask.to(ctx.device))
        out.append(sequence_angles(cap[ctx.layer_idx], mask.to(ctx.device)).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def micro_batch_weight(loss_type: str, n_tok: float, n_tok_all: float, n_seq: int, n_seq_all: int) -> float:
    """Factor on a micro-batch's ``grpo_loss`` so the accumulated gradient equals the
    full batch's: per-sequence means (grpo) and dr_grpo's fixed normaliser scale with
    the share of sequences, per-token means (dapo/bnpo) with the share of tokens."""
    if loss_type in ("dapo", "bnpo"):
        return n_tok / n_tok_all
    return n_seq / n_seq_all


def _correctness(ctx: _Ctx, pool: Pool, seq_idx: list[int], texts: list[str], total: list[float]) -> list[float]:
    if pool.answers is not None:
        return rewards.math_reward([pool.prompts[i] for i in seq_idx], texts,
                                   answer=[pool.answers[i] for i in seq_idx])
    return [1.0 if t >= ctx.cfg.correct_threshold else 0.0 for t in total]


def _train_step(ctx: _Ctx, batch: list[int], st: _State) -> dict:
    """Roll out G completions per prompt, reward them, run ``num_iterations`` GRPO updates."""
    cfg, model, pool = ctx.cfg, ctx.model, ctx.pool
    G = cfg.num_generations
    t0 = time.perf_counter()

    # 1. rollouts
    seq_idx = [i for i in batch for _ in range(G)]
    ro = rollout.generate(model, ctx.tok, [pool.prompt_ids[i] for i in seq_idx], max_new_tokens=cfg.max_new_tokens,
                          temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                          batch_size=cfg.generation_batch_size, device=ctx.device, autocast_dtype=ctx.amp_dtype,
                          stop_flag=lambda: ctx.stop is not None and ctx.stop.requested)
    if ctx.stop is not None and ctx.stop.requested:
        raise _StepAborted

    # 2. rewards and advantages
    cols = {k: [v[i] for i in seq_idx] for k, v in pool.columns.items()}
    if pool.answers is not None:
        cols["answer"] = [pool.answers[i] for i in seq_idx]
    total, per_func = rewards.combine_rewards(ctx.reward_funcs, cfg.reward_weight,
                                              [pool.prompts[i] for i in seq_idx], ro.texts, **cols)
    correct = _correctness(ctx, pool, seq_idx, ro.texts, total)
    rewards_N = torch.tensor(total, dtype=torch.float32)
    adv_N = grpo.group_advantages(rewards_N, G, cfg.scale_rewards)
    t_roll = time.perf_counter() - t0

    # 3. GRPO update(s). Sequences with zero advantage add exactly zero gradient when
    #    beta == 0, so only their angle is computed (forward up to the hook, no grad).
    packed = rollout.pack(ro.prompt_ids, ro.completion_ids, ctx.pad_id)
    B = len(seq_idx)
    n_tok_all = float(packed.completion_mask_BT.sum().clamp(min=1))
    active = [b for b in range(B) if cfg.beta > 0 or float(adv_N[b]) != 0.0]
    idle = [b for b in range(B) if b not in set(active)]
    angle_B = torch.full((B,), math.nan, dtype=torch.float64)
    if idle:
        angle_B[idle] = _angles_only(ctx, [ro.prompt_ids[b] + ro.completion_ids[b] for b in idle])
    mbs = [active[s: s + cfg.micro_batch_size] for s in range(0, len(active), cfg.micro_batch_size)]
    subs = [packed.rows(mb).to(ctx.device) for mb in mbs]
    model.train()
    old_logps, ref_logps = [None] * len(mbs), [None] * len(mbs)
    need_old = cfg.num_iterations > 1
    if need_old or ctx.ref_model is not None:
        with torch.no_grad():
            for k, sub in enumerate(subs):
                if need_old:
                    old_logps[k], ang = _forward_logp(ctx, model, sub, capture=True)
                    angle_B[mbs[k]] = ang.cpu()
                if ctx.ref_model is not None:
                    ref_logps[k], _ = _forward_logp(ctx, ctx.ref_model, sub, capture=False)
    loss_sum, stats, grad_norm, lr = 0.0, {"clip_fraction": 0.0, "kl": 0.0, "ratio_mean": 0.0}, 0.0, 0.0
    tok_w = 0.0
    for it in range(cfg.num_iterations):
        ctx.optimizer.zero_grad(set_to_none=True)
        it_loss = 0.0
        for k, sub in enumerate(subs):
            capture = it == 0 and not need_old
            logp_BT, ang = _forward_logp(ctx, model, sub, capture=capture)
            if capture:
                angle_B[mbs[k]] = ang.detach().cpu()
            adv_B = adv_N[mbs[k]].to(ctx.device)
            old = old_logps[k] if old_logps[k] is not None else logp_BT.detach()
            loss, m = grpo.grpo_loss(logp_BT, old, adv_B, sub.completion_mask_BT, epsilon=cfg.epsilon,
                                     epsilon_high=cfg.epsilon_high, beta=cfg.beta, ref_logp_BT=ref_logps[k],
                                     loss_type=cfg.loss_type, max_completion_length=cfg.max_new_tokens)
            # weight so the accumulated gradient equals the full-batch loss over all B sequences
            n_tok = float(sub.completion_mask_BT.sum())
            w = micro_batch_weight(cfg.loss_type, n_tok, n_tok_all, len(mbs[k]), B)
            (loss * w).backward()
            it_loss += loss.item() * w
            if it == cfg.num_iterations - 1:
                for key in stats:
                    stats[key] += m[key] * n_tok
                tok_w += n_tok
        params = [p for g in ctx.optimizer.param_groups for p in g["params"]]
        if cfg.max_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        else:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, float("inf")))
        lr = grpo.lr_at(st.updates, ctx.total_updates, cfg.lr, cfg.warmup_steps, cfg.lr_schedule, cfg.min_lr_ratio)
        for g in ctx.optimizer.param_groups:
            g["lr"] = lr
        if not subs:  # every advantage is zero: step on zero gradients, as the full batch would
            for p in params:
                p.grad = torch.zeros_like(p)
        ctx.optimizer.step()
        st.updates += 1
        loss_sum = it_loss
    ctx.optimizer.zero_grad(set_to_none=True)
    t_total = time.perf_counter() - t0

    # 4. bookkeeping
    comp_len = [len(c) for c in ro.completion_ids]
    n_groups = len(batch)
    r_PG = rewards_N.reshape(n_groups, G)
    zero_std = float((r_PG.max(dim=1).values == r_PG.min(dim=1).values).float().mean())
    ang_valid = angle_B[~torch.isnan(angle_B)]
    a = st.acc
    a.n += B
    a.correct += float(sum(correct))
    a.reward_sum += float(sum(total))
    a.angle_sum += float(ang_valid.sum())
    a.angle_n += int(ang_valid.numel())
    a.rollout_s += t_roll
    a.update_s += t_total - t_roll
    n_tokens = sum(len(p) + len(c) for p, c in zip(ro.prompt_ids, ro.completion_ids))
    rec = {"loss": loss_sum, "reward_mean": float(rewards_N.mean()),
           "reward_std": float(rewards_N.std()) if B > 1 else 0.0, "accuracy": float(np.mean(correct)),
           **{k: (v / tok_w if tok_w else 0.0) for k, v in stats.items()},
           "completion_len_mean": float(np.mean(comp_len)), "completion_len_max": int(max(comp_len)),
           "truncated_fraction": float(np.mean([not f for f in ro.finished])),
           "zero_std_fraction": zero_std, "trained_sequences": len(active),
           "angle": float(ang_valid.mean()) if ang_valid.numel() else None,
           "lr": lr, "grad_norm": grad_norm, "tokens_per_s": round(n_tokens / t_total, 1),
           "rollout_s": round(t_roll, 3), "update_s": round(t_total - t_roll, 3)}
    if len(per_func) > 1 or list(per_func) != ["math_reward"]:
        for name, vals in per_func.items():
            v = [x for x in vals if not math.isnan(x)]
            rec[f"reward/{name}"] = float(np.mean(v)) if v else None
    return rec


# ============================================================================= eval

def _evaluate(ctx: _Ctx, pool: Pool, log: _Jsonl, emit: Event, *, epoch: int, step: int, elapsed) -> dict:
    """Greedy accuracy on the eval pool (math checker, or total reward >= threshold)."""
    cfg = ctx.cfg
    t0 = time.perf_counter()
    ro = rollout.generate(ctx.model, ctx.tok, pool.prompt_ids, greedy=True,
                          max_new_tokens=cfg.eval_max_new_tokens or cfg.max_new_tokens,
                          batch_size=cfg.eval_batch_size, device=ctx.device, autocast_dtype=ctx.amp_dtype)
    idx = list(range(len(pool.rows)))
    if pool.answers is not None:
        correct = rewards.math_reward(pool.prompts, ro.texts, answer=pool.answers)
    else:
        cols = {k: list(v) for k, v in pool.columns.items()}
        total, _ = rewards.combine_rewards(ctx.reward_funcs, cfg.reward_weight, pool.prompts, ro.texts, **cols)
        correct = _correctness(ctx, pool, idx, ro.texts, total)
    rec = {"type": "eval", "epoch": epoch, "step": step, "eval_accuracy": float(np.mean(correct)),
           "eval_n": len(correct), "eval_completion_len_mean": float(np.mean([len(c) for c in ro.completion_ids])),
           "eval_s": round(time.perf_counter() - t0, 3), "elapsed_s": elapsed()}
    log.write(rec)
    emit("eval", rec)
    return rec


# ====================================================================== checkpoints

def _rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Create the run directory; return the checkpoint to resume from (or None)."""
    if resume:
        ck = latest_checkpoint(run_dir)
        if ck is None:
            raise ValueError(f"nothing to resume in {run_dir}: no complete checkpoint under {run_dir}/checkpoints")
        return ck
    ours = ("config.toml", "metrics.jsonl", "subsets.jsonl", "checkpoints", "curves.png")
    if run_dir.exists() and any((run_dir / n).exists() for n in ours):
        if not overwrite:
            raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or pass "
                             "--overwrite to start over")
        for n in ours:
            p = run_dir / n
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return None


def latest_checkpoint(run_dir) -> Path | None:
    marker = Path(run_dir) / "checkpoints" / "LATEST"
    if not marker.exists():
        return None
    p = marker.parent / marker.read_text().strip()
    return p if (p / "trainer_state.json").exists() else None


def _save_checkpoint(ctx: _Ctx, run_dir: Path, st: _State, sampler, log: _Jsonl, subsets_log: _Jsonl,
                     elapsed: float) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{st.global_step:07d}"
    final, tmp = root / name, root / f".tmp-{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        ctx.model.save_pretrained(tmp, safe_serialization=True)
        ctx.tok.save_pretrained(tmp)
    finally:
        hf_logging.enable_progress_bar()
    torch.save(ctx.optimizer.state_dict(), tmp / "optimizer.pt")
    rng = _rng_state()
    torch.save({"torch": rng["torch"], **({"cuda": rng["cuda"]} if "cuda" in rng else {})}, tmp / "rng.pt")
    np_state = rng["numpy"]
    state = {
        "version": STATE_VERSION, "epoch": st.epoch, "step_in_epoch": st.step_in_epoch,
        "global_step": st.global_step, "updates": st.updates, "subset": st.subset, "subset_info": st.subset_info,
        "epoch_stats": st.acc.__dict__, "ranking": None if st.ranking is None else [int(x) for x in st.ranking],
        "scores": st.scores, "ranked_at": st.ranked_at, "last_eval": st.last_eval, "elapsed_s": elapsed,
        "sampler": sampler.state_dict(), "pool_rows": ctx.pool.rows,
        "metrics_bytes": log.size(), "subsets_bytes": subsets_log.size(),
        "python_rng": _tuples_to_lists(rng["python"]),
        "numpy_rng": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    (tmp / "trainer_state.json").write_text(json.dumps(state, default=_json_default))
    if final.exists():  # same step saved again (epoch end, then Ctrl-C): swap, then delete the old copy
        stale = root / f".old-{name}"
        os.replace(final, stale)
        os.replace(tmp, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(tmp, final)
    marker_tmp = root / "LATEST.tmp"
    marker_tmp.write_text(name)
    os.replace(marker_tmp, root / "LATEST")
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in done[: max(0, len(done) - ctx.cfg.keep_checkpoints)]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _tuples_to_lists(x):
    return [_tuples_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _lists_to_tuples(x):
    return tuple(_lists_to_tuples(v) for v in x) if isinstance(x, list) else x


def _load_checkpoint(path: Path, optimizer, sampler, pool: Pool, metrics_path: Path, subsets_path: Path) -> _State:
    state = json.loads((path / "trainer_state.json").read_text())
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint version {state.get('version')!r}")
    if state["pool_rows"] != pool.rows:
        raise ValueError(f"{path}: the training prompts differ from the checkpoint's ({len(state['pool_rows'])} "
                         f"vs {len(pool.rows)} usable rows); resume with the same data and prompt settings")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    sampler.load_state_dict(state["sampler"])
    st = _State(epoch=state["epoch"], step_in_epoch=state["step_in_epoch"], global_step=state["global_step"],
                updates=state["updates"], subset=state["subset"], subset_info=state["subset_info"] or {},
                acc=_EpochStats(**state["epoch_stats"]),
                ranking=None if state["ranking"] is None else np.asarray(state["ranking"], dtype=np.int64),
                scores=state["scores"], ranked_at=state["ranked_at"], last_eval=state["last_eval"], elapsed_base=float(state["elapsed_s"]))
    # forget log lines written after this checkpoint (a run killed later than its last checkpoint)
    for p, n in ((metrics_path, state["metrics_bytes"]), (subsets_path, state["subsets_bytes"])):
        with open(p, "r+b" if p.exists() else "w+b") as fh:
            fh.truncate(n)
    rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
    np_s = state["numpy_rng"]
    _set_rng_state({"torch": rng["torch"], **({"cuda": rng["cuda"]} if "cuda" in rng else {}),
                    "python": _lists_to_tuples(state["python_rng"]),
                    "numpy": (np_s[0], np.asarray(np_s[1], dtype=np.uint32), np_s[2], np_s[3], np_s[4])})
    return st


def resume_config(run_dir, overrides: dict) -> TrainConfig:
    """The saved config of ``run_dir`` with the allowed ``overrides`` applied.

    Any other setting given again must equal the saved value (a changed setting
    would make the continuation a different run).
    """
    path = Path(run_dir) / "config.toml"
    if not path.exists():
        raise ValueError(f"{run_dir} has no config.toml; is it a run directory?")
    saved = load_toml(path)
    base = TrainConfig(**saved)
    values = dict(saved)
    conflicts = []
    for k, v in overrides.items():
        if v is None:
            continue
        if k in RESUME_OVERRIDABLE:
            values[k] = v
        elif k == "output_dir":
            continue
        elif getattr(base, k) != v and not (k in ("train_data", "eval_data") and
                                             [str(x) for x in v] == getattr(base, k)):
            conflicts.append(f"--{k.replace('_', '-')} ({getattr(base, k)!r} in the run, {v!r} given)")
    if conflicts:
        raise ValueError("cannot resume with changed settings: " + "; ".join(conflicts) +
                         f". Only {', '.join('--' + k.replace('_', '-') for k in RESUME_OVERRIDABLE)} may change")
    values["output_dir"] = str(run_dir)
    return TrainConfig(**values)
