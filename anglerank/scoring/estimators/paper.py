"""The paper's estimator: exact mean cosines within Q and between Q and P (docs/method.md, "The signal").

Closed forms in ``O(L d)`` (:func:`anglerank.angles.segment_concentration`). P enters only
as the sum of its unit rows, so a prefix shared by a batch (the prefix cache) is summed
once from its own hidden states.
"""

from __future__ import annotations

from anglerank.scoring.estimators import register

__all__ = ["PaperEstimator"]


@register("paper")
class PaperEstimator:
    help = "exact segment means (closed form)"
    default_w_inter = 1.0
    prefix_as_sum = True

    @classmethod
    def from_options(cls, options) -> "PaperEstimator":
        return cls()

    def terms(self, hidden_BTD, rows, prefix_PD=None) -> tuple[list[float], list[float]]:
        import torch  # here, not at the top: listing the estimators must not load torch

        from anglerank import angles

        B, T = hidden_BTD.shape[:2]
        P = prefix_PD.shape[0] if prefix_PD is not None else 0
        q_mask = torch.zeros(B, T, dtype=torch.bool, device=hidden_BTD.device)
        for b, r in enumerate(rows):
            q_mask[b, r.n_prefix - P: r.q_end - P] = True
        if prefix_PD is not None:  # every row's P is exactly the cached prefix (the cache key is ids[:n_prefix])
            intra, inter = angles.segment_concentration_shared_prefix(hidden_BTD, q_mask, prefix_PD)
        else:
            p_mask = torch.zeros_like(q_mask)
            for b, r in enumerate(rows):
                p_mask[b, : r.n_prefix] = True
            intra, inter = angles.segment_concentration(hidden_BTD, q_mask, p_mask)
        return intra.tolist(), inter.tolist()

    def note(self, row, intra: float, inter: float) -> str | None:
        notes = []
        if row.n_question < 2:
            notes.append("question shorter than 2 tokens")
        if row.n_prefix == 0:
            notes.append("empty prefix")
        return "; ".join(notes) or None
