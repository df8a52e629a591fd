"""Tests for anglerank.train.grpo against numbers worked out by hand.

Each expected value is derived in the comment next to it, so a change in the
formulas (clip direction, aggregation, KL estimator) shows up as a plain
arithmetic disagreement rather than a drift against a saved snapshot.
"""

import math

import pytest
import torch

from anglerank.train.grpo import (
    group_advantages,
    grpo_loss,
    lr_at,
    per_token_kl,
    sequence_logprobs,
)


def approx(x, rel=1e-6, abs=1e-7):
    return pytest.approx(x, rel=rel, abs=abs)


# ---------------------------------------------------------------- advantages


def test_group_advantages_scaled_with_zero_variance_group():
    # Prompt 0: rewards (1, 0): mean 0.5, unbiased std sqrt((0.25 + 0.25) / 1)
    # = sqrt(0.5). Prompt 1: rewards (1, 1): zero variance -> advantages 0.
    rewards_N = torch.tensor([1.0, 0.0, 1.0, 1.0])
    adv_N = group_advantages(rewards_N, 2)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert adv_N.tolist() == [approx(a), approx(-a), 0.0, 0.0]


def test_group_advantages_unscaled():
    rewards_N = torch.tensor([1.0, 0.0, 1.0, 1.0])
    adv_N = group_advantages(rewards_N, 2, scale="none")
    assert adv_N.tolist() == [0.5, -0.5, 0.0, 0.0]


def test_group_advantages_group_of_four_and_int_rewards():
    # Rewards 0,1,2,3: mean 1.5, unbiased var (2.25+0.25+0.25+2.25)/3 = 5/3.
    adv_N = group_advantages(torch.tensor([0, 1, 2, 3]), 4, eps=0.0)
    s = math.sqrt(5 / 3)
    assert adv_N.tolist() == [approx(v / s) for v in (-1.5, -0.5, 0.5, 1.5)]


def test_group_advantages_single_generation_is_zero_not_nan():
    adv_N = group_advantages(torch.tensor([1.0, 0.0]), 1)
    assert adv_N.tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "rewards, g, scale",
    [
        (torch.zeros(5), 2, "group"),  # 5 % 2 != 0
        (torch.zeros(4), 2, "std"),  # unknown scale
        (torch.zeros(4), 0, "group"),  # no groups
        (torch.zeros(2, 2), 2, "group"),  # not flat
    ],
)
def test_group_advantages_errors(rewards, g, scale):
    with pytest.raises(ValueError):
        group_advantages(rewards, g, scale=scale)


# ---------------------------------------------------------------- clipping


def _ratios_to_logp(ratios):
    # old_logp = 0 so ratio = exp(logp) exactly as chosen.
    logp_BT = torch.log(torch.tensor(ratios, dtype=torch.float64))
    return logp_BT, torch.zeros_like(logp_BT)


def test_clipping_both_sides_both_signs():
    # Both rows have ratios (1.5, 0.5, 1.0); eps = 0.2 -> clip range [0.8, 1.2].
    # Row 0, A = +1: min(1.5, 1.2) = 1.2 (high clip), min(0.5, 0.8) = 0.5
    #   (no clip: the unclipped branch is the smaller), 1.0 -> losses -1.2, -0.5, -1.0.
    # Row 1, A = -1: min(-1.5, -1.2) = -1.5 (no clip), min(-0.5, -0.8) = -0.8
    #   (low clip), -1.0 -> losses 1.5, 0.8, 1.0.
    # grpo: row means -0.9 and 1.1 -> 0.1. Clipped tokens: 2 of 6.
    logp_BT, old_BT = _ratios_to_logp([[1.5, 0.5, 1.0], [1.5, 0.5, 1.0]])
    adv_B = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask_BT = torch.ones(2, 3)
    loss, m = grpo_loss(logp_BT, old_BT, adv_B, mask_BT, epsilon=0.2)
    assert loss.item() == approx(0.1)
    assert m["clip_fraction"] == approx(2 / 6)
    assert m["high_clip_fraction"] == approx(1 / 6)
    assert m["low_clip_fraction"] == approx(1 / 6)
    assert m["ratio_mean"] == approx(1.0)  # (1.5 + 0.5 + 1.0) * 2 / 6
    assert m["kl"] == 0.0


def test_clipping_asymmetric_epsilon_high():
    # Same as above with epsilon_high = 0.6 -> range [0.8, 1.6]: row 0's 1.5 is
    # no longer clipped (loss -1.5), row 0 mean = -3.0 / 3 = -1.0, row 1 still
    # 1.1 -> 0.05. Only the low clip in row 1 remains: 1 of 6.
    logp_BT, old_BT = _ratios_to_logp([[1.5, 0.5, 1.0], [1.5, 0.5, 1.0]])
    adv_B = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, m = grpo_loss(logp_BT, old_BT, adv_B, torch.ones(2, 3), epsilon=0.2, epsilon_high=0.6)
    assert loss.item() == approx(0.05)
    assert m["clip_fraction"] == approx(1 / 6)
    assert m["high_clip_fraction"] == 0.0


# ---------------------------------------------------------------- aggregation

# Ragged batch: row 0 has 3 valid tokens, row 1 has 1 valid token and two pads
# whose log-probs are garbage (ratio e^5) that must not leak into anything.
# All valid ratios are 1, so per-token loss = -A: row 0 (A = 1) -> -1, -1, -1;
# row 1 (A = -2) -> 2.
_RAGGED_LOGP = [[0.0, 0.0, 0.0], [0.0, 5.0, 5.0]]
_RAGGED_MASK = [[1, 1, 1], [1, 0, 0]]
_RAGGED_ADV = [1.0, -2.0]


def _ragged(requires_grad=False):
    logp_BT = torch.tensor(_RAGGED_LOGP, dtype=torch.float64, requires_grad=requires_grad)
    old_BT = torch.zeros(2, 3, dtype=torch.float64)
    adv_B = torch.tensor(_RAGGED_ADV, dtype=torch.float64)
    return logp_BT, old_BT, adv_B, torch.tensor(_RAGGED_MASK)


@pytest.mark.parametrize(
    "loss_type, max_len, expected",
    [
        ("grpo", None, 0.5),  # mean(-3/3, 2/1) = mean(-1, 2)
        ("dapo", None, -0.25),  # (-3 + 2) / 4 tokens
        ("bnpo", None, -0.25),  # alias of dapo
        ("dr_grpo", 4, -0.125),  # (-3 + 2) / (2 rows * 4)
        ("dr_grpo", None, -1 / 6),  # falls back to T = 3: -1 / (2 * 3)
    ],
)
def test_aggregations_on_ragged_mask(loss_type, max_len, expected):
    logp_BT, old_BT, adv_B, mask_BT = _ragged()
    loss, m = grpo_loss(
        logp_BT, old_BT, adv_B, mask_BT, loss_type=loss_type, max_completion_length=max_len
    )
    assert loss.item() == approx(expected)
    assert m["ratio_mean"] == approx(1.0)  # pads (e^5) excluded
    assert m["clip_fraction"] == 0.0


def test_all_padding_row_contributes_zero_in_grpo():
    # Row 1 fully masked: row means (-1, 0) -> -0.5, and no NaN.
    logp_BT = torch.zeros(2, 2)
    loss, _ = grpo_loss(
        logp_BT, logp_BT.clone(), torch.tensor([1.0, 1.0]), torch.tensor([[1, 1], [0, 0]])
    )
    assert loss.item() == approx(-0.5)


# ---------------------------------------------------------------- KL


def test_per_token_kl_k3_values():
    # diff = ref - logp = (-0.5, 1.0): e^-0.5 + 0.5 - 1 and e^1 - 1 - 1.
    logp_BT = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    ref_BT = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
    kl_BT = per_token_kl(logp_BT, ref_BT)
    assert kl_BT.tolist() == [[approx(0.10653065971263342), approx(0.7182818284590451)]]
    assert per_token_kl(logp_BT, logp_BT).abs().max().item() == 0.0


def test_kl_term_in_loss_and_metric():
    # A = 0 and ratio = 1 so the surrogate is 0; loss = beta * mean(kl) =
    # 0.1 * (0.10653066 + 0.71828183) / 2 = 0.041240625.
    logp_BT = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    ref_BT = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
    mean_kl = (0.10653065971263342 + 0.7182818284590451) / 2
    args = (logp_BT, logp_BT.clone(), torch.zeros(1, dtype=torch.float64), torch.ones(1, 2))
    loss, m = grpo_loss(*args, beta=0.1, ref_logp_BT=ref_BT)
    assert loss.item() == approx(0.1 * mean_kl)
    assert m["kl"] == approx(mean_kl)
    # beta = 0 with a reference: the metric is still reported, the loss ignores it.
    loss0, m0 = grpo_loss(*args, beta=0.0, ref_logp_BT=ref_BT)
    assert loss0.item() == 0.0
    assert m0["kl"] == approx(mean_kl)


def test_kl_metric_ignores_padding():
    # Second token is padding with a huge KL; only the first (0.10653066) counts.
    logp_BT = torch.tensor([[-1.0, -20.0]], dtype=torch.float64)
    ref_BT = torch.tensor([[-1.5, 0.0]], dtype=torch.float64)
    _, m = grpo_loss(
        logp_BT, logp_BT.clone(), torch.zeros(1), torch.tensor([[1, 0]]),
        beta=0.1, ref_logp_BT=ref_BT,
    )
    assert m["kl"] == approx(0.10653065971263342)


# ---------------------------------------------------------------- gradients


def test_gradient_flows_through_logp_only():
    logp_BT, _, _, mask_BT = _ragged(requires_grad=True)
    old_BT = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    adv_B = torch.tensor(_RAGGED_ADV, dtype=torch.float64, requires_grad=True)
    ref_BT = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    loss, _ = grpo_loss(logp_BT, old_BT, adv_B, mask_BT, ref_logp_BT=ref_BT, beta=0.0)
    loss.backward()
    assert old_BT.grad is None and adv_B.grad is None and ref_BT.grad is None
    # d/dlogp of mean_b(mean_t(-ratio * A)) at ratio 1 = -A / (len_b * B):
    # row 0: -1 / (3 * 2) = -1/6 each; row 1: 2 / (1 * 2) = 1, pads 0.
    expected = [[-1 / 6, -1 / 6, -1 / 6], [1.0, 0.0, 0.0]]
    assert logp_BT.grad.tolist() == [[approx(v) for v in row] for row in expected]


def test_clipped_tokens_get_no_gradient():
    # Ratio 1.5 with A > 0 sits on the clipped branch: constant in logp.
    logp_BT = torch.log(torch.tensor([[1.5, 1.0]], dtype=torch.float64)).requires_grad_()
    loss, _ = grpo_loss(logp_BT, torch.zeros(1, 2, dtype=torch.float64),
                        torch.ones(1, dtype=torch.float64), torch.ones(1, 2))
    loss.backward()
    # Token 1: -ratio * A / 2 -> derivative -1 * 1 / 2 = -0.5.
    assert logp_BT.grad.tolist() == [[0.0, approx(-0.5)]]


def test_kl_gradient_reaches_logp_not_ref():
    # d/dlogp [e^(ref-logp) - (ref-logp) - 1] = 1 - e^(ref-logp) = 1 - e^-0.5.
    logp_BT = torch.tensor([[-1.0]], dtype=torch.float64, requires_grad=True)
    ref_BT = torch.tensor([[-1.5]], dtype=torch.float64, requires_grad=True)
    loss, _ = grpo_loss(logp_BT, logp_BT.detach(), torch.zeros(1, dtype=torch.float64),
                        torch.ones(1, 1), beta=1.0, ref_logp_BT=ref_BT)
    loss.backward()
    assert ref_BT.grad is None
    assert logp_BT.grad.item() == approx(1 - math.exp(-0.5))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs",
    [
        {"loss_type": "ppo"},
        {"beta": 0.1},  # no reference given
        {"beta": -0.1},
        {"epsilon": -0.1},
        {"loss_type": "dr_grpo", "max_completion_length": 0},
    ],
)
def test_grpo_loss_bad_options(kwargs):
    logp_BT = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        grpo_loss(logp_BT, logp_BT, torch.zeros(2), torch.ones(2, 3), **kwargs)


def test_grpo_loss_bad_shapes():
    logp_BT = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        grpo_loss(logp_BT, torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(ValueError):
        grpo_loss(logp_BT, logp_BT, torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError):
        grpo_loss(logp_BT, logp_BT, torch.zeros(2), torch.ones(2, 2))
    with pytest.raises(ValueError):
        grpo_loss(logp_BT, logp_BT, torch.zeros(2), torch.ones(2, 3),
                  beta=0.1, ref_logp_BT=torch.zeros(1, 3))


# ---------------------------------------------------------------- log-probs


def test_sequence_logprobs_hand_values():
    # Logits (0, 0, ln 2) -> softmax (1/4, 1/4, 1/2).
    logits_BTV = torch.tensor([[[0.0, 0.0, math.log(2.0)], [0.0, 0.0, math.log(2.0)]]])
    labels_BT = torch.tensor([[2, 0]])
    logp_BT = sequence_logprobs(logits_BTV, labels_BT)
    assert logp_BT.tolist() == [[approx(math.log(0.5)), approx(math.log(0.25))]]


def test_sequence_logprobs_matches_log_softmax_and_upcasts_bf16():
    g = torch.Generator().manual_seed(0)
    logits_BTV = torch.randn(3, 5, 11, generator=g)
    labels_BT = torch.randint(0, 11, (3, 5), generator=g)
    ref_BT = torch.log_softmax(logits_BTV, -1).gather(-1, labels_BT.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(sequence_logprobs(logits_BTV, labels_BT), ref_BT, atol=1e-6)
    out_bf16 = sequence_logprobs(logits_BTV.bfloat16(), labels_BT)
    assert out_bf16.dtype == torch.float32
    assert torch.allclose(out_bf16, ref_BT, atol=0.05)
    with pytest.raises(ValueError):
        sequence_logprobs(logits_BTV, labels_BT[:, :4])


def test_sequence_logprobs_gradient():
    logits_BTV = torch.zeros(1, 1, 4, requires_grad=True)
    sequence_logprobs(logits_BTV, torch.tensor([[1]])).sum().backward()
    # d log softmax_1 / d z = onehot(1) - softmax = (-1/4, 3/4, -1/4, -1/4).
    assert logits_BTV.grad.flatten().tolist() == [-0.25, 0.75, -0.25, -0.25]


# ---------------------------------------------------------------- lr schedule


def test_lr_constant_with_warmup():
    # Warm-up of 4 steps: lr = step / 4, then constant.
    values = [lr_at(s, 10, 1.0, warmup_steps=4) for s in (0, 1, 2, 4, 9, 50)]
    assert values == [0.0, 0.25, 0.5, 1.0, 1.0, 1.0]
    assert lr_at(3, 10, 1e-6) == 1e-6


def test_lr_cosine():
    # total 10, warm-up 2: progress = (step - 2) / 8; step 6 -> 0.5 -> cos factor 0.5.
    assert lr_at(1, 10, 1.0, warmup_steps=2, schedule="cosine") == approx(0.5)
    assert lr_at(2, 10, 1.0, warmup_steps=2, schedule="cosine") == approx(1.0)
    assert lr_at(6, 10, 1.0, warmup_steps=2, schedule="cosine") == approx(0.5)
    # step 4: progress 0.25 -> 0.5 * (1 + cos(pi/4)) = 0.8535533905932737.
    assert lr_at(4, 10, 2.0, warmup_steps=2, schedule="cosine") == approx(2 * 0.8535533905932737)
    assert lr_at(10, 10, 1.0, warmup_steps=2, schedule="cosine") == approx(0.0)
    # With a floor of 0.1: 0.1 + 0.9 * factor; held at 0.1 past the end.
    assert lr_at(6, 10, 1.0, 2, "cosine", min_lr_ratio=0.1) == approx(0.55)
    assert lr_at(10, 10, 1.0, 2, "cosine", min_lr_ratio=0.1) == approx(0.1)
    assert lr_at(99, 10, 1.0, 2, "cosine", min_lr_ratio=0.1) == approx(0.1)


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((0, 10, 1.0), {"schedule": "linear"}),
        ((-1, 10, 1.0), {}),
        ((0, 0, 1.0), {}),
        ((0, 10, 1.0), {"warmup_steps": -1}),
        ((0, 10, 1.0), {"min_lr_ratio": 1.5}),
    ],
)
def test_lr_errors(args, kwargs):
    with pytest.raises(ValueError):
        lr_at(*args, **kwargs)
