"""GRPO objective as pure tensor functions.

This module exists so the pieces of the GRPO update (group-relative advantages,
the clipped surrogate, the k3 KL penalty, token log-probs and the LR schedule)
can be tested against hand-worked numbers without a model, a tokenizer or a
particular TRL release. The formulas follow TRL's ``GRPOTrainer`` (the variant
the GAIN-RL authors trained with, docs/method.md, "The training loop") so results stay
comparable; nothing here does I/O or knows about models.

Shape suffixes: ``B`` sequences (prompt x generation rows), ``T`` completion
tokens, ``V`` vocabulary, ``N`` flat rewards, ``G`` generations per prompt,
``P`` prompts.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "LOSS_TYPES",
    "group_advantages",
    "per_token_kl",
    "grpo_loss",
    "sequence_logprobs",
    "lr_at",
]

# "bnpo" is TRL's older name for what it now calls "dapo" on a single process
# (token-level normalisation over the whole batch).
LOSS_TYPES = ("grpo", "dapo", "bnpo", "dr_grpo")
_SCALES = ("group", "none")
_SCHEDULES = ("constant", "cosine")


def group_advantages(
    rewards_N: Tensor, num_generations: int, scale: str = "group", eps: float = 1e-4
) -> Tensor:
    """Group-relative advantages for rewards laid out as consecutive groups.

    ``rewards_N`` holds ``N = P * G`` rewards where rows ``[p*G, (p+1)*G)`` are
    the G completions of prompt ``p`` (the order TRL's sampler produces).
    Advantage = reward - group mean; with ``scale="group"`` it is further
    divided by (unbiased group std + eps), as TRL does; ``scale="none"`` is
    Dr. GRPO's unscaled variant. A group whose rewards are all equal gets zero
    advantage either way.
    """
    if rewards_N.dim() != 1:
        raise ValueError(f"rewards_N must be 1-D, got shape {tuple(rewards_N.shape)}")
    if not isinstance(num_generations, int) or num_generations < 1:
        raise ValueError(f"num_generations must be a positive int, got {num_generations!r}")
    if scale not in _SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {_SCALES}")
    n = rewards_N.numel()
    if n % num_generations != 0:
        raise ValueError(
            f"{n} rewards do not split into groups of num_generations={num_generations}"
        )
    if not torch.is_floating_point(rewards_N):
        # Integer/bool rewards (0/1 correctness) would make mean/std fail.
        rewards_N = rewards_N.to(torch.float32)

    rewards_PG = rewards_N.reshape(-1, num_generations)
    adv_PG = rewards_PG - rewards_PG.mean(dim=1, keepdim=True)
    if scale == "group":
        if num_generations > 1:
            std_P1 = rewards_PG.std(dim=1, keepdim=True)  # unbiased, as TRL
        else:
            # Unbiased std of one sample is NaN; the advantage is 0 anyway, so
            # keep it 0 instead of propagating NaN into the loss.
            std_P1 = torch.zeros_like(adv_PG)
        adv_PG = adv_PG / (std_P1 + eps)
    return adv_PG.reshape(-1)


def per_token_kl(logp_BT: Tensor, ref_logp_BT: Tensor) -> Tensor:
    """k3 estimator of KL(policy || reference) per token (TRL's choice).

    ``exp(ref - logp) - (ref - logp) - 1`` is non-negative and unbiased for
    samples drawn from the policy, and has lower variance than ``logp - ref``.
    """
    if logp_BT.shape != ref_logp_BT.shape:
        raise ValueError(
            f"logp_BT {tuple(logp_BT.shape)} and ref_logp_BT "
            f"{tuple(ref_logp_BT.shape)} differ in shape"
        )
    diff_BT = ref_logp_BT - logp_BT
    return torch.exp(diff_BT) - diff_BT - 1.0


def grpo_loss(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    advantages_B: Tensor,
    mask_BT: Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    ref_logp_BT: Tensor | None = None,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
) -> tuple[Tensor, dict]:
    """Clipped GRPO surrogate (+ optional k3 KL penalty), aggregated over tokens.

    Per token: ``-min(ratio * A, clamp(ratio, 1 - epsilon, 1 + epsilon_high) * A)
    + beta * kl`` with ``ratio = exp(logp - old_logp)``. Aggregations:

    - ``"grpo"``: mean over each sequence's valid tokens, then mean over
      sequences (a sequence with no valid token contributes 0);
    - ``"dapo"`` / ``"bnpo"``: sum over all valid tokens / number of valid
      tokens in the batch;
    - ``"dr_grpo"``: sum over all valid tokens / (B * max_completion_length),
      falling back to the mask width T when ``max_completion_length`` is None.

    Gradients flow through ``logp_BT`` only: old log-probs, advantages and
    reference log-probs are detached.

    Returns ``(loss, metrics)`` where metrics holds python floats:
    ``clip_fraction`` (valid tokens on the active clipped branch, TRL's
    definition: ratio < 1 - epsilon with A < 0, or ratio > 1 + epsilon_high with
    A > 0), ``low_clip_fraction``, ``high_clip_fraction``, ``kl`` (mean k3 per
    valid token; 0.0 when no reference is given) and ``ratio_mean`` (mean ratio
    per valid token).
    """
    if logp_BT.dim() != 2:
        raise ValueError(f"logp_BT must be 2-D [B, T], got {tuple(logp_BT.shape)}")
    B, T = logp_BT.shape
    for name, t in (("old_logp_BT", old_logp_BT), ("mask_BT", mask_BT)):
        if t.shape != logp_BT.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != logp_BT shape {(B, T)}")
    if advantages_B.shape != (B,):
        raise ValueError(f"advantages_B shape {tuple(advantages_B.shape)} != {(B,)}")
    if ref_logp_BT is not None and ref_logp_BT.shape != logp_BT.shape:
        raise ValueError(
            f"ref_logp_BT shape {tuple(ref_logp_BT.shape)} != logp_BT shape {(B, T)}"
        )
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
    eps_low = float(epsilon)
    eps_high = eps_low if epsilon_high is None else float(epsilon_high)
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"epsilon values must be >= 0, got {eps_low}, {eps_high}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logp_BT is None:
        raise ValueError("beta > 0 needs ref_logp_BT for the KL penalty")
    if max_completion_length is not None and max_completion_length < 1:
        raise ValueError(f"max_completion_length must be >= 1, got {max_completion_length}")

    # Float mask so fractional weights, if ever used, act like TRL's multiply.
    mask_f_BT = mask_BT.to(logp_BT.dtype)
    adv_B1 = advantages_B.detach().to(logp_BT.dtype).unsqueeze(1)
    ratio_BT = torch.exp(logp_BT - old_logp_BT.detach())
    clipped_BT = torch.clamp(ratio_BT, 1.0 - eps_low, 1.0 + eps_high)
    per_token_BT = -torch.minimum(ratio_BT * adv_B1, clipped_BT * adv_B1)

    kl_BT = None
    if ref_logp_BT is not None:
        kl_BT = per_token_kl(logp_BT, ref_logp_BT.detach())
        if beta > 0:
            per_token_BT = per_token_BT + beta * kl_BT

    masked_BT = per_token_BT * mask_f_BT
    if loss_type == "grpo":
        # clamp(min=1): an all-padding row adds 0 instead of 0/0 = NaN.
        loss = (masked_BT.sum(dim=1) / mask_f_BT.sum(dim=1).clamp(min=1.0)).mean()
    elif loss_type in ("dapo", "bnpo"):
        loss = masked_BT.sum() / mask_f_BT.sum().clamp(min=1.0)
    else:  # dr_grpo: constant normaliser, so no length bias in either direction
        denom = max_completion_length if max_completion_length is not None else T
        loss = masked_BT.sum() / (B * denom)

    with torch.no_grad():
        n_valid = mask_f_BT.sum().clamp(min=1.0)
        low_BT = (ratio_BT < 1.0 - eps_low) & (adv_B1 < 0)
        high_BT = (ratio_BT > 1.0 + eps_high) & (adv_B1 > 0)
        low_frac = (low_BT.to(mask_f_BT.dtype) * mask_f_BT).sum() / n_valid
        high_frac = (high_BT.to(mask_f_BT.dtype) * mask_f_BT).sum() / n_valid
        clip_frac = ((low_BT | high_BT).to(mask_f_BT.dtype) * mask_f_BT).sum() / n_valid
        ratio_mean = (ratio_BT * mask_f_BT).sum() / n_valid
        kl_mean = (kl_BT * mask_f_BT).sum() / n_valid if kl_BT is not None else None

    metrics = {
        "clip_fraction": float(clip_frac),
        "low_clip_fraction": float(low_frac),
        "high_clip_fraction": float(high_frac),
        "kl": float(kl_mean) if kl_mean is not None else 0.0,
        "ratio_mean": float(ratio_mean),
    }
    return loss, metrics


def sequence_logprobs(logits_BTV: Tensor, labels_BT: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probability of each label token under ``softmax(logits / temperature)``: ``[B, T]``.

    The temperature is the sampling temperature, so the log-probabilities are those of
    the distribution the completions were drawn from (as TRL and verl compute them).

    ``logits_BTV[b, t]`` must already be the distribution that predicts
    ``labels_BT[b, t]`` (the caller does the causal shift). Labels must be valid
    vocabulary ids (mask padding afterwards, do not pass -100).

    One row at a time with logsumexp, so peak extra memory is one ``[T, V]``
    float32 slice rather than a full ``[B, T, V]`` log-softmax; half-precision
    logits are upcast per row because bf16 log-softmax loses the small
    differences the policy ratio depends on. Output is float32 for half inputs,
    else the logits' dtype.
    """
    if logits_BTV.dim() != 3:
        raise ValueError(f"logits_BTV must be 3-D [B, T, V], got {tuple(logits_BTV.shape)}")
    if labels_BT.shape != logits_BTV.shape[:2]:
        raise ValueError(
            f"labels_BT shape {tuple(labels_BT.shape)} != logits [B, T] "
            f"{tuple(logits_BTV.shape[:2])}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    out_dtype = logits_BTV.dtype
    if out_dtype in (torch.float16, torch.bfloat16):
        out_dtype = torch.float32
    rows_T = []
    for logits_TV, labels_T in zip(logits_BTV, labels_BT):
        logits_TV = logits_TV.to(out_dtype) / temperature
        picked_T = logits_TV.gather(-1, labels_T.long().unsqueeze(-1)).squeeze(-1)
        rows_T.append(picked_T - torch.logsumexp(logits_TV, dim=-1))
    if not rows_T:
        return logits_BTV.new_zeros(labels_BT.shape, dtype=out_dtype)
    return torch.stack(rows_T)


def lr_at(
    step: int,
    total_steps: int,
    base_lr: float,
    warmup_steps: int = 0,
    schedule: str = "constant",
    min_lr_ratio: float = 0.0,
) -> float:
    """Learning rate for 0-based optimizer step ``step``.

    Follows the Hugging Face schedulers so numbers match a TRL run: linear
    warm-up ``base_lr * step / warmup_steps`` (so step 0 of a warm-up uses lr 0),
    then either ``constant`` (``base_lr``; ``min_lr_ratio`` unused) or
    ``cosine`` decay from ``base_lr`` at ``step == warmup_steps`` to
    ``min_lr_ratio * base_lr`` at ``step == total_steps``, held there after.
    """
    if schedule not in _SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {_SCHEDULES}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")

    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if schedule == "constant":
        return float(base_lr)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine)
