"""The estimator protocol and the registry of estimators by name.

An estimator turns the hidden states of a batch of rendered rows into each row's
``(intra, inter)`` angle terms; the engine weighs them into the score. Adding one is
one file in this package that decorates its class with :func:`register`; ``score``,
``validate`` and ``train`` then accept its name as ``--estimator``.

Nothing here, and nothing at the top of an estimator's module, imports torch: the
command line lists the names (its ``--help``) without loading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from anglerank.errors import UserError
from anglerank.registry import Registry

if TYPE_CHECKING:
    import torch

    from anglerank.model.render import Rendered
    from anglerank.scoring.engine import ScoreOptions

__all__ = ["DEFAULT", "Estimator", "register", "get", "names"]

#: The estimator used when none is named (listed first).
DEFAULT = "paper"


class Estimator(Protocol):
    """What the scoring engine needs from an estimator."""

    name: str
    #: One line for ``--estimator``'s help.
    help: str
    #: The weight of the inter term in the score when ``--w-inter`` is not given.
    default_w_inter: float
    #: True when the terms need the shared prefix only as the sum of its unit rows: with the
    #: prefix cache, :meth:`terms` then gets only the tokens after the prefix plus the prefix's
    #: own hidden states. False when it reads whole rows, prefix included.
    prefix_as_sum: bool

    @classmethod
    def from_options(cls, options: "ScoreOptions") -> "Estimator": ...

    def terms(self, hidden_BTD: "torch.Tensor", rows: list["Rendered"],
              prefix_PD: "torch.Tensor | None" = None) -> tuple[list[float], list[float]]:
        """``(intra, inter)`` per row (NaN where a term is undefined).

        ``hidden_BTD[b]`` holds row ``b``'s tokens, right-padded; ``rows[b]`` gives its
        segments (``ids``; P is ``ids[:n_prefix]``, Q is ``ids[n_prefix:q_end]``). With
        ``prefix_PD`` (only for ``prefix_as_sum`` estimators) every row's P is exactly
        those hidden states and ``hidden_BTD`` holds only the tokens after it.
        """

    def note(self, row: "Rendered", intra: float, inter: float) -> str | None:
        """Why the row's terms are missing or weak, or None."""


REGISTRY = Registry("estimator", __name__)
#: Class decorator: make an estimator available as ``--estimator name``.
register = REGISTRY.register


def names() -> list[str]:
    """Registered estimator names: the default first, then alphabetical."""
    return sorted(REGISTRY.names(), key=lambda n: (n != DEFAULT, n))


def get(name: str) -> type:
    """The estimator class registered as ``name``; an unknown name is the user's error."""
    try:
        return REGISTRY.get(name)
    except KeyError:
        raise UserError(f"unknown estimator {name!r}; choose from {', '.join(names())}") from None
