"""The GRPO loss against TRL's own ``GRPOTrainer._compute_loss`` on the same tensors.

``anglerank.train.grpo`` claims to follow TRL's GRPOTrainer (the variant the GAIN-RL
authors trained with). Rather than re-deriving TRL's formulas here, this runs TRL's
unbound ``_compute_loss`` on a minimal stand-in for the trainer: only the model call
(``_get_per_token_logps_and_entropies``) is replaced, so it hands back the test's
log-probabilities; every line of the loss, the KL term, the aggregation and the clip
metrics is TRL's code.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from anglerank.train.grpo import grpo_loss

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")


# TRL >= 1.x multiplies the KL term by the policy ratio by default (DeepSeek-V3.2's
# bias correction; it changes the gradient even on-policy). anglerank implements the
# plain k3 penalty of the TRL releases the GAIN-RL authors trained with, so the
# comparison turns the correction off where the option exists.
_CLASSIC_KL = {"use_bias_correction_kl": False} if hasattr(trl_grpo.GRPOConfig, "use_bias_correction_kl") else {}


class _OneProcess:
    """The accelerate calls TRL's loss makes, for a single process."""

    num_processes = 1

    def reduce(self, t, reduction="sum"):
        return t

    def gather(self, t):
        return t

    gather_for_metrics = gather


def _trl_loss(config, logp_BT, inputs):
    """TRL's ``_compute_loss`` with ``config`` (a real GRPOConfig), returning (loss, metrics)."""
    args = config
    fake = SimpleNamespace(
        args=args,
        # the same attribute derivations as GRPOTrainer.__init__
        loss_type=args.loss_type,
        beta=args.beta,
        epsilon_low=args.epsilon,
        epsilon_high=args.epsilon_high if args.epsilon_high is not None else args.epsilon,
        max_completion_length=args.max_completion_length,
        importance_sampling_level=args.importance_sampling_level,
        off_policy_mask_threshold=args.off_policy_mask_threshold,
        top_entropy_quantile=args.top_entropy_quantile,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        current_gradient_accumulation_steps=1,
        model=SimpleNamespace(training=False),  # eval mode: no accumulation scaling
        accelerator=_OneProcess(),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp_BT, torch.zeros_like(logp_BT), None),
    )
    loss = trl_grpo.GRPOTrainer._compute_loss(fake, None, inputs)
    return loss, {k: v[-1] for k, v in fake._metrics["eval"].items()}


def _case(seed: int, B: int = 6, T: int = 9):
    """Ragged completions, ratios far enough from 1 to hit both clip sides, mixed-sign advantages."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 - 0.05
    logp = old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.4
    ref = old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.int64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    adv[1] = 0.0
    return logp, old, ref, adv, mask


def _inputs(old, ref, adv, mask):
    B, T = mask.shape
    return {
        "prompt_ids": torch.zeros(B, 3, dtype=torch.long),
        "prompt_mask": torch.ones(B, 3, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        # TRL's dapo divides by the generation batch's completion-token count
        "num_items_in_batch": mask.sum().to(torch.float64),
    }


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize("beta,epsilon,epsilon_high", [(0.0, 0.2, None), (0.04, 0.2, 0.28), (0.005, 0.1, 0.3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_grpo_loss_equals_trl(tmp_path, loss_type, beta, epsilon, epsilon_high, seed):
    from trl import GRPOConfig

    logp, old, ref, adv, mask = _case(seed)
    max_len = 12  # larger than T, so dr_grpo's constant normaliser is not the mask width
    config = GRPOConfig(output_dir=str(tmp_path), loss_type=loss_type, beta=beta, epsilon=epsilon,
                        epsilon_high=epsilon_high, max_completion_length=max_len, report_to="none",
                        bf16=False, use_cpu=True, **_CLASSIC_KL)

    logp_trl = logp.clone().requires_grad_(True)
    want, trl_metrics = _trl_loss(config, logp_trl, _inputs(old, ref, adv, mask))
    want.backward()

    logp_ours = logp.clone().requires_grad_(True)
    got, metrics = grpo_loss(logp_ours, old, adv, mask, epsilon=epsilon, epsilon_high=epsilon_high, beta=beta,
                             ref_logp_BT=ref, loss_type=loss_type, max_completion_length=max_len)
    got.backward()

    assert got.item() == pytest.approx(want.item(), abs=1e-6, rel=1e-6)
    torch.testing.assert_close(logp_ours.grad, logp_trl.grad, atol=1e-9, rtol=1e-6)
    # TRL divides its metrics by a float32 token count, hence 1e-6 there
    assert metrics["low_clip_fraction"] == pytest.approx(trl_metrics["clip_ratio/low_mean"], abs=1e-6)
    assert metrics["high_clip_fraction"] == pytest.approx(trl_metrics["clip_ratio/high_mean"], abs=1e-6)
    assert metrics["clip_fraction"] == pytest.approx(trl_metrics["clip_ratio/region_mean"], abs=1e-6)
    if beta:
        assert metrics["kl"] == pytest.approx(trl_metrics["kl"], abs=1e-6, rel=1e-6)


def test_trl_comparison_is_not_vacuous(tmp_path):
    """The cases above exercise both clip sides and the KL term, and the variants really differ."""
    from trl import GRPOConfig

    logp, old, ref, adv, mask = _case(0)
    losses = {}
    for lt in ("grpo", "dapo", "dr_grpo"):
        config = GRPOConfig(output_dir=str(tmp_path), loss_type=lt, beta=0.04, epsilon=0.2, epsilon_high=0.28,
                            max_completion_length=12, report_to="none", bf16=False, use_cpu=True, **_CLASSIC_KL)
        loss, m = _trl_loss(config, logp.clone(), _inputs(old, ref, adv, mask))
        losses[lt] = loss.item()
    assert m["clip_ratio/low_mean"] > 0 and m["clip_ratio/high_mean"] > 0 and m["kl"] > 0
    assert len({round(v, 9) for v in losses.values()}) == 3
