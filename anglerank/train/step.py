"""One GRPO step: roll out G completions per prompt, reward them, update the policy.

A step is two halves: :func:`produce_batch` asks the run's rollout engine
(``engine.py``) for completions and rewards them into a :class:`RolloutBatch`
(rollouts, rewards, advantages); :func:`update_policy` trains on that batch and
tells the engine the weights changed.

:func:`train_step` changes the model and the optimiser (that is what a step is
for) and nothing else: the counters, the curriculum and the logs are the
loop's business, fed from the returned :class:`StepResult`. With
``--filter-groups`` a step may need more prompts than its batch; the loop lends
it a :class:`Refill`, which draws them from the open epoch (and, past the
epoch's subset, from the curriculum's sampler) and can undo those draws. The
GRPO math itself is pure and lives in ``grpo.py``; the rollout groups and their
token layout in ``rollout.py``.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from anglerank import angles, rewards
from anglerank.curriculum import correct
from anglerank.model import hooks
from anglerank.rewards import ANSWER
from anglerank.train import grpo, rollout
from anglerank.train.engine import HFRolloutEngine, RolloutEngine
from anglerank.train.rollout import Groups, RolloutBatch

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

    from anglerank.curriculum import Curriculum
    from anglerank.model.generation import Rollouts
    from anglerank.train.config import TrainConfig
    from anglerank.train.pool import Pool

__all__ = ["StepContext", "StepResult", "StepAborted", "Refill", "RolloutBatch", "train_step", "produce_batch",
           "update_policy", "sequence_angles", "micro_batch_weight", "judge_rewards", "float32_head", "row_columns"]


@dataclass
class StepContext:
    """What every step needs and no step changes (except the model's and optimiser's state)."""

    cfg: TrainConfig
    model: torch.nn.Module
    ref_model: torch.nn.Module | None
    tok: PreTrainedTokenizerBase
    optimizer: torch.optim.Optimizer
    pool: Pool
    reward_funcs: list[Callable]
    layer_idx: int
    device: str
    amp_dtype: torch.dtype | None
    pad_id: int
    total_updates: int
    generator: torch.Generator  # every rollout's randomness; its state is checkpointed
    stop_requested: Callable[[], bool] = lambda: False
    peft: PeftModel | None = None  # the PeftModel around ``model`` with LoRA (saving, adapter off for the KL)
    engine: RolloutEngine | None = None  # where completions come from; None: Hugging Face generate on ``model``

    def __post_init__(self) -> None:
        if self.engine is None:
            self.engine = HFRolloutEngine(self.model, self.tok, device=self.device, autocast_dtype=self.amp_dtype)

    def amp(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=self.amp_dtype)


@dataclass
class StepResult:
    record: dict  # the step's metrics line
    judged: list[float]  # per completion: the reward that decides correctness (see judge_rewards)
    angles: list[float]  # per completion: whole-sequence angle on the live policy (NaN if not measured)
    rewards: list[float]  # per completion: total reward
    updates: int  # optimiser updates made
    rollout_s: float
    update_s: float
    prompts: list[int]  # per group, in rollout order: its pool index (G consecutive completions each)
    lengths: list[int]  # per completion: its length in tokens
    dropped: list[bool]  # per group: dropped by --filter-groups (its rewards were all equal)


class StepAborted(Exception):
    """Ctrl-C arrived during the rollouts, before any weight changed: redo this step on resume."""


def _verifier(cfg: TrainConfig):
    """The run's first built-in reward that decides "correct" by itself (its spec), or None."""
    i = rewards.decider_index(cfg.reward)
    return None if i is None else rewards.registered([cfg.reward[i]])[0]


def row_columns(pool: Pool, seq_idx: list[int]) -> dict:
    """What reward functions get besides prompts and completions, per completion of ``seq_idx``: the data's
    columns and the reference answer."""
    cols = {k: [v[i] for i in seq_idx] for k, v in pool.columns.items()}
    if pool.answers is not None:
        cols[ANSWER] = [pool.answers[i] for i in seq_idx]
    return cols


def verifier_decides(pool: Pool, cfg: TrainConfig) -> bool:
    """Whether a verifier decides "correct" (the built-in math checker, say): the run uses one and the data has
    every column it reads."""
    spec = _verifier(cfg)
    return spec is not None and set(spec.columns) <= set(row_columns(pool, []))


def judge_rewards(ctx: StepContext, pool: Pool, seq_idx: list[int], texts: list[str], total: list[float] | None,
                  per_func: dict[str, list[float]] | None = None) -> list[float]:
    """The per-completion reward that decides "correct" (>= correct_threshold, the curriculum's one rule):
    the verifier's own reward when :func:`verifier_decides`, else the total reward. ``per_func`` (from
    ``combine_rewards``, in ``--reward`` order) already holds the verifier's values: they are not graded again."""
    if not verifier_decides(pool, ctx.cfg):
        return list(total)
    i = rewards.decider_index(ctx.cfg.reward)
    if per_func is not None:
        return list(list(per_func.values())[i])
    return list(ctx.reward_funcs[i]([pool.prompts[j] for j in seq_idx], texts, **row_columns(pool, seq_idx)))


def train_step(ctx: StepContext, batch: list[int], updates_done: int, refill: Refill | None = None) -> StepResult:
    """Roll out, reward, and run ``num_iterations`` GRPO updates on the prompts ``batch`` (pool indices):
    :func:`produce_batch`, then :func:`update_policy`."""
    t0 = time.perf_counter()
    rb = produce_batch(ctx, batch, refill)
    t_roll = time.perf_counter() - t0
    upd = update_policy(ctx, rb, updates_done)
    t_total = time.perf_counter() - t0
    groups, G = rb.groups, ctx.cfg.num_generations
    record = _step_record(ctx, groups.ro, torch.tensor(groups.total, dtype=torch.float32), groups.judged, upd,
                          upd["angle_B"], t_roll, t_total)
    record.update(rb.info)
    per_func = groups.per_func
    if len(per_func) > 1 or _verifier(ctx.cfg) is None:  # a lone verifier's mean would repeat reward_mean
        for name, vals in per_func.items():
            v = [x for x in vals if not math.isnan(x)]
            record[f"reward/{name}"] = float(np.mean(v)) if v else None
    dropped = [rb.filtered and u for u in groups.uniform(G)]
    return StepResult(record, list(groups.judged), upd["angle_B"].tolist(), list(groups.total), upd["updates"],
                      t_roll, t_total - t_roll, list(groups.prompts), [len(c) for c in groups.ro.completion_ids],
                      dropped)


def produce_batch(ctx: StepContext, batch: list[int], refill: Refill | None = None) -> RolloutBatch:
    """G completions of each prompt of ``batch`` (pool indices) from the engine, rewarded, with advantages.

    With ``refill`` (``--filter-groups``, DAPO's dynamic sampling) groups whose G rewards
    are all equal are dropped and further prompts are rolled out until ``refill.target``
    groups are informative, the prompts run out or ``refill.max_rounds`` rollout
    batches were made; only the informative groups are trained on.
    """
    cfg, G = ctx.cfg, ctx.cfg.num_generations
    if refill is None:
        groups, info = _roll(ctx, batch), {}
        train = list(range(len(groups.prompts)))
    else:
        groups, info = _dynamic_sampling(ctx, batch, refill)
        train = [g for g, u in enumerate(groups.uniform(G)) if not u]
        # nothing informative: the update sees the whole zero-advantage batch, as it would without filtering
        train = train or list(range(len(groups.prompts)))
    kept = groups if len(train) == len(groups.prompts) else groups.select(train, G)
    adv_N = grpo.group_advantages(torch.tensor(kept.total, dtype=torch.float32), G, cfg.scale_rewards)
    return RolloutBatch(groups, train, kept, adv_N, info, refill is not None)


def update_policy(ctx: StepContext, rb: RolloutBatch, updates_done: int) -> dict:
    """``num_iterations`` GRPO updates on the batch's trained groups, then the engine gets the new weights.

    Returns the update's metrics; its ``angle_B`` holds the angle of every rolled-out sequence (the dropped
    groups' measured apart, so the curriculum's epoch angle covers every draw as it does without filtering).
    """
    upd = _policy_update(ctx, rb.trained.ro, rb.advantages, updates_done)
    upd["angle_B"] = _angles_of_all(ctx, rb.groups, rb.train, upd["angle_B"])
    ctx.engine.update_weights(ctx.model)
    return upd


def _roll(ctx: StepContext, batch: list[int]) -> Groups:
    """G completions of each prompt of ``batch``, rewarded and judged."""
    cfg, pool, G = ctx.cfg, ctx.pool, ctx.cfg.num_generations
    seq_idx = [i for i in batch for _ in range(G)]
    ro = ctx.engine.generate([pool.prompt_ids[i] for i in seq_idx], max_new_tokens=cfg.max_new_tokens,
                             temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                             batch_size=cfg.generation_batch_size, stop_flag=ctx.stop_requested,
                             generator=ctx.generator)
    if ctx.stop_requested():
        raise StepAborted
    try:
        total, per_func = rewards.combine_rewards(ctx.reward_funcs, cfg.reward_weight,
                                                  [pool.prompts[i] for i in seq_idx], ro.texts,
                                                  **row_columns(pool, seq_idx))
    except rewards.NonFiniteReward as exc:
        raise rewards.RewardError(f"reward function {exc.func!r} returned {exc.value} for a completion of data row "
                                  f"{pool.rows[seq_idx[exc.index]]}; rewards must be finite numbers "
                                  "(return None for 'no reward')") from None
    judged = judge_rewards(ctx, pool, seq_idx, ro.texts, total, per_func)
    return Groups(list(batch), ro, list(total), list(judged), {k: list(v) for k, v in per_func.items()})


def _dynamic_sampling(ctx: StepContext, batch: list[int], refill: Refill) -> tuple[Groups, dict]:
    """Roll out ``batch``, then further prompts from ``refill`` while fewer than ``refill.target`` groups are
    informative; returns every group rolled out and the step's filter metrics."""
    G = ctx.cfg.num_generations
    groups, rounds, cap_hit, exhausted = _roll(ctx, batch), 1, False, False
    while (kept := groups.uniform(G).count(False)) < refill.target:
        if refill.max_rounds and rounds >= refill.max_rounds:
            cap_hit = True
            break
        more = refill.take(refill.target - kept)
        if not more:
            exhausted = True
            break
        groups, rounds = groups + _roll(ctx, more), rounds + 1
    n_uniform = groups.uniform(G).count(True)
    return groups, {"groups_kept": len(groups.prompts) - n_uniform, "groups_dropped": n_uniform,
                    "gen_batches": rounds, "filter_cap_hit": cap_hit, "filter_exhausted": exhausted}


def _angles_of_all(ctx: StepContext, groups: Groups, train: list[int], angle_trained: torch.Tensor) -> torch.Tensor:
    """Angles of every rolled-out sequence: those of the trained groups from the update, the dropped groups'
    measured apart, so the curriculum's epoch angle covers every draw as it does without filtering."""
    G, B = ctx.cfg.num_generations, len(groups.total)
    if len(train) * G == B:
        return angle_trained
    trained = [g * G + k for g in train for k in range(G)]
    rest = sorted(set(range(B)) - set(trained))
    angle_B = torch.full((B,), math.nan, dtype=torch.float64)
    angle_B[trained] = angle_trained
    ro = groups.ro
    angle_B[rest] = _angles_only(ctx, [ro.prompt_ids[b] + ro.completion_ids[b] for b in rest])
    return angle_B


# A random window (gainrl, sweep) can repeat a draw by chance: only this many draws in a row without a new
# prompt mean the window has no more for this epoch.
_EMPTY_DRAWS = 4


class Refill:
    """Where a ``--filter-groups`` step finds further prompts: the open epoch's subset from the epoch's
    cursor on, then further draws of the curriculum's sampler (rows the epoch already holds are skipped, so
    an epoch never trains a prompt twice), until every prompt of the pool is in the epoch or the sampler's
    draws bring no new one (a narrow window holds no more).

    ``cursor`` and ``extra`` (the rows drawn beyond the subset) are the epoch's position, for the loop
    to keep after the step; a step that is aborted calls :meth:`rollback` to undo its sampler draws.
    """

    def __init__(self, curriculum: Curriculum, rows, cursor: int, extra: list[int], target: int, max_rounds: int):
        self.curriculum, self.target, self.max_rounds = curriculum, target, max_rounds
        self.queue = [int(r) for r in rows] + [int(r) for r in extra]
        self.n_subset, self.cursor = len(rows), cursor
        self._sampler_state = None

    @property
    def extra(self) -> list[int]:
        return self.queue[self.n_subset:]

    def take(self, n: int) -> list[int]:
        """The epoch's next ``n`` prompts (fewer when the pool has no more for this epoch)."""
        self._extend(n)
        out = self.queue[self.cursor: self.cursor + n]
        self.cursor += len(out)
        return out

    def _extend(self, n: int) -> None:
        cur, seen, misses = self.curriculum, set(self.queue), 0
        while len(self.queue) - self.cursor < n and len(seen) < cur.n_items and misses < _EMPTY_DRAWS:
            if self._sampler_state is None:
                self._sampler_state = cur.sampler.state_dict()
            new = [r for r in dict.fromkeys(int(x) for x in cur.order[cur.sampler.draw()]) if r not in seen]
            misses = 0 if new else misses + 1
            self.queue += new
            seen.update(new)

    def rollback(self) -> None:
        if self._sampler_state is not None:
            self.curriculum.sampler.load_state_dict(self._sampler_state)


def _policy_update(ctx: StepContext, ro: Rollouts, adv_N: torch.Tensor, updates_done: int) -> dict:
    """``num_iterations`` optimiser updates on the rollouts; also measures every sequence's angle.

    Sequences with zero advantage add exactly zero gradient when ``beta == 0``,
    so only their angle is computed (a forward up to the hook, no grad).
    """
    cfg = ctx.cfg
    ctx.model.train()  # every forward of the update sees the same mode, whatever ran before (a resume loads eval)
    packed = rollout.pack(ro.prompt_ids, ro.completion_ids, ctx.pad_id)
    B = len(ro.completion_ids)
    n_tok_all = float(packed.completion_mask_BT.sum().clamp(min=1))
    active = [b for b in range(B) if cfg.beta > 0 or float(adv_N[b]) != 0.0]
    idle = sorted(set(range(B)) - set(active))
    angle_B = torch.full((B,), math.nan, dtype=torch.float64)
    if idle:
        angle_B[idle] = _angles_only(ctx, [ro.prompt_ids[b] + ro.completion_ids[b] for b in idle])
    mbs = [active[s: s + cfg.micro_batch_size] for s in range(0, len(active), cfg.micro_batch_size)]
    subs = [packed.rows(mb).to(ctx.device) for mb in mbs]
    old_logps, ref_logps = _frozen_logps(ctx, subs, mbs, angle_B)
    stats = {"clip_fraction": 0.0, "kl": 0.0, "ratio_mean": 0.0}
    loss, tok_w, grad_norm, lr, skipped = 0.0, 0.0, 0.0, 0.0, 0
    for it in range(cfg.num_iterations):
        last = it == cfg.num_iterations - 1
        ctx.optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for k, sub in enumerate(subs):
            capture = it == 0 and old_logps[k] is None
            logp_BT, ang = _forward_logp(ctx, ctx.model, sub, capture=capture)
            if capture:
                angle_B[mbs[k]] = ang.detach().cpu()
            old = old_logps[k] if old_logps[k] is not None else logp_BT.detach()
            l_k, m = grpo.grpo_loss(logp_BT, old, adv_N[mbs[k]].to(ctx.device), sub.completion_mask_BT,
                                    epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, beta=cfg.beta,
                                    ref_logp_BT=ref_logps[k], loss_type=cfg.loss_type,
                                    max_completion_length=cfg.max_new_tokens)
            # weight so the accumulated gradient equals the full-batch loss over all B sequences
            n_tok = float(sub.completion_mask_BT.sum())
            w = micro_batch_weight(cfg.loss_type, n_tok, n_tok_all, len(mbs[k]), B)
            (l_k * w).backward()
            loss += l_k.item() * w
            if last:
                for key in stats:
                    stats[key] += m[key] * n_tok
                tok_w += n_tok
        grad_norm, lr, stepped = _optimizer_step(ctx, updates_done + it, bool(subs), math.isfinite(loss))
        skipped += not stepped
    ctx.optimizer.zero_grad(set_to_none=True)
    return {"loss": loss, "stats": {k: (v / tok_w if tok_w else 0.0) for k, v in stats.items()},
            "grad_norm": grad_norm, "lr": lr, "updates": cfg.num_iterations, "skipped_updates": skipped,
            "angle_B": angle_B,
            "trained_sequences": len(active)}


@torch.no_grad()
def _frozen_logps(ctx: StepContext, subs: list, mbs: list, angle_B: torch.Tensor) -> tuple[list, list]:
    """Old-policy log-probs (only needed for ``num_iterations > 1``) and reference log-probs (``beta > 0``)."""
    old, ref = [None] * len(subs), [None] * len(subs)
    for k, sub in enumerate(subs):
        if ctx.cfg.num_iterations > 1:
            old[k], ang = _forward_logp(ctx, ctx.model, sub, capture=True)
            angle_B[mbs[k]] = ang.cpu()
        if ctx.ref_model is not None:
            ref[k], _ = _forward_logp(ctx, ctx.ref_model, sub, capture=False)
        elif ctx.peft is not None and ctx.cfg.beta > 0:  # LoRA: the reference is the base, adapter off
            with ctx.peft.disable_adapter():
                ref[k], _ = _forward_logp(ctx, ctx.model, sub, capture=False)
    return old, ref


def _optimizer_step(ctx: StepContext, update_index: int, has_grads: bool,
                    finite_loss: bool) -> tuple[float, float, bool]:
    """Clip, set the scheduled learning rate, step; returns (grad norm before clipping, lr, stepped).

    A non-finite gradient norm (a NaN or infinite loss, an overflow) never reaches the
    weights: the update is skipped (the learning-rate clock still advances) and the
    caller counts it.
    """
    cfg = ctx.cfg
    params = [p for g in ctx.optimizer.param_groups for p in g["params"]]
    if not has_grads:  # every advantage is zero: step on zero gradients, as the full batch would
        for p in params:
            p.grad = torch.zeros_like(p)
    limit = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
    lr = grpo.lr_at(update_index, ctx.total_updates, cfg.lr, cfg.warmup_steps, cfg.lr_schedule, cfg.min_lr_ratio)
    if not (finite_loss and math.isfinite(grad_norm)):
        ctx.optimizer.zero_grad(set_to_none=True)
        return grad_norm, lr, False
    for g in ctx.optimizer.param_groups:
        g["lr"] = lr
    ctx.optimizer.step()
    return grad_norm, lr, True


def _step_record(ctx: StepContext, ro: Rollouts, rewards_N: torch.Tensor, judged: list, upd: dict,
                 angle_B: torch.Tensor, t_roll: float, t_total: float) -> dict:
    B, G = len(ro.completion_ids), ctx.cfg.num_generations
    r_PG = rewards_N.reshape(B // G, G)
    ang = angle_B[~torch.isnan(angle_B)]
    comp_len = [len(c) for c in ro.completion_ids]
    n_tokens = sum(len(p) + len(c) for p, c in zip(ro.prompt_ids, ro.completion_ids))
    acc = correct(judged, ctx.cfg.correct_threshold)
    return {"loss": upd["loss"], "reward_mean": float(rewards_N.mean()),
            "reward_std": float(rewards_N.std()) if B > 1 else 0.0,
            "accuracy": float(acc.mean()) if acc.size else None, **upd["stats"],
            "completion_len_mean": float(np.mean(comp_len)), "completion_len_max": int(max(comp_len)),
            "truncated_fraction": float(np.mean([not f for f in ro.finished])),
            "zero_std_fraction": float((r_PG.max(dim=1).values == r_PG.min(dim=1).values).float().mean()),
            "trained_sequences": upd["trained_sequences"], "skipped_updates": upd["skipped_updates"],
            "angle": float(ang.mean()) if ang.numel() else None, "lr": upd["lr"], "grad_norm": upd["grad_norm"],
            "tokens_per_s": round(n_tokens / t_total, 1), "rollout_s": round(t_roll, 3),
            "update_s": round(t_total - t_roll, 3), "rollouts": B}


def sequence_angles(hidden_BLD: torch.Tensor, mask_BL: torch.Tensor) -> torch.Tensor:
    """Whole-sequence mean pairwise cosine per row over real tokens (float64 ``[B]``):
    ``(||sum u||^2 - n) / (n (n - 1))``, the intra term with every real token in Q."""
    m = mask_BL.bool()
    intra_B, _ = angles.segment_concentration(hidden_BLD, m, m)
    return intra_B


def _forward_logp(ctx: StepContext, model, b: rollout.Packed, capture: bool):
    """Completion log-probs ``[B, T]`` (float32) and, if asked, the angle per row from the same pass."""
    cm = hooks.capture(model, [ctx.layer_idx], ctx.cfg.site, stop=False, detach=True) if capture else nullcontext({})
    with cm as cap, ctx.amp(), float32_head(model):
        out = model(input_ids=b.input_ids_BL, attention_mask=b.attention_mask_BL, position_ids=b.position_ids_BL,
                    use_cache=False, logits_to_keep=b.completion_width + 1)
    logp_BT = grpo.sequence_logprobs(out.logits[:, :-1], b.completion_ids_BT, temperature=ctx.cfg.temperature)
    angle_B = sequence_angles(cap[ctx.layer_idx], b.attention_mask_BL) if capture else None
    return logp_BT, angle_B


@contextmanager
def float32_head(model):
    """Run the output projection in float32, even under bf16 autocast.

    The log-probabilities feed the policy ratio and the KL; logits rounded to bf16
    (8 significant bits) put an error of about 1e-2 into every log-probability.
    The head is the model's ``get_output_embeddings()`` (its weights are float32
    already; only the matmul is kept out of autocast).
    """
    head = model.get_output_embeddings()
    if head is None or not isinstance(head, torch.nn.Linear):
        yield
        return

    def forward(x_BTD: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x_BTD.device.type, enabled=False):
            bias = None if head.bias is None else head.bias.float()
            return torch.nn.functional.linear(x_BTD.float(), head.weight.float(), bias)

    head.forward = forward
    try:
        yield
    finally:
        del head.forward


@torch.no_grad()
def _angles_only(ctx: StepContext, seqs: list[list[int]]) -> torch.Tensor:
    """Angle of sequences that get no gradient (zero advantage): forward up to the hook only, a measurement,
    so without dropout."""
    ctx.model.eval()
    try:
        return _angles_forward(ctx, seqs)
    finally:
        ctx.model.train()


def _angles_forward(ctx: StepContext, seqs: list[list[int]]) -> torch.Tensor:
    out = []
    for s in range(0, len(seqs), ctx.cfg.micro_batch_size):
        chunk = seqs[s: s + ctx.cfg.micro_batch_size]
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
