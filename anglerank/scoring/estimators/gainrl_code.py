"""The number the authors' released script computes, bug-compatible (docs/method.md, "What the
released code does"): fixed prefix and suffix token counts (``--code-prefix-tokens``,
``--code-suffix-tokens``) instead of the rendered segments, and their row slicing as written
(:func:`anglerank.angles.gainrl_code_terms_batch`). It reads whole rows, so a cached prefix
is put back in front of each row.
"""

from __future__ import annotations

import math

from anglerank.scoring.estimators import register

__all__ = ["GainrlCodeEstimator"]


@register("gainrl-code")
class GainrlCodeEstimator:
    help = "the number the authors' released script computes"
    default_w_inter = 8.0  # the authors' weight
    prefix_as_sum = False

    def __init__(self, prefix_tokens: int = 110, suffix_tokens: int = 6):
        self.prefix_tokens = prefix_tokens
        self.suffix_tokens = suffix_tokens

    @classmethod
    def from_options(cls, options) -> "GainrlCodeEstimator":
        return cls(options.code_prefix_tokens, options.code_suffix_tokens)

    def terms(self, hidden_BTD, rows, prefix_PD=None) -> tuple[list[float], list[float]]:
        from anglerank import angles  # here, not at the top: listing the estimators must not load torch

        lengths = [len(r.ids) for r in rows]
        intra, inter = angles.gainrl_code_terms_batch(hidden_BTD, lengths, self.prefix_tokens, self.suffix_tokens)
        return intra.tolist(), inter.tolist()

    def note(self, row, intra: float, inter: float) -> str | None:
        if math.isnan(intra) or math.isnan(inter):
            return f"gainrl-code slice empty ({len(row.ids)} tokens)"
        return None
