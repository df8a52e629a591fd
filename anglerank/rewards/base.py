"""What every reward shares: its errors, the spec a built-in reward declares, and the registry of them.

A built-in reward is a class in a file of this package, registered by name with :func:`register`.
Its class attributes tell the trainer what it needs without the trainer knowing its name: the
columns it reads from a row, whether it decides "correct", and how it is built from the run's
settings (:class:`RewardSpec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from anglerank.errors import UserError
from anglerank.registry import Registry
from anglerank.rollouts import DEFAULT_ANSWER_FORMAT

__all__ = ["ANSWER", "RewardError", "NonFiniteReward", "RewardSettings", "RewardSpec", "REGISTRY", "register",
           "completion_text"]

#: The column a row's reference answer reaches a reward in; the trainer fills it from ``--answer-column``.
ANSWER = "answer"


class RewardError(UserError):
    """A reward spec that cannot be loaded, or a reward function or its data that does not fit."""


class NonFiniteReward(RewardError):
    """A reward function returned NaN or an infinity; ``index`` is the completion's position."""

    def __init__(self, func: str, index: int, value: float):
        super().__init__(f"reward function {func!r} returned {value} for completion {index}; rewards must be "
                         "finite numbers (return None for 'no reward')")
        self.func, self.index, self.value = func, index, value


@dataclass(frozen=True)
class RewardSettings:
    """The run's settings a built-in reward may be built from."""

    answer_format: str = DEFAULT_ANSWER_FORMAT  # how a math completion's final answer is found (rewards.grading)


class RewardSpec(Protocol):
    """What the trainer needs to know about a built-in reward, declared as class attributes."""

    name: str
    #: The columns the reward reads from a row, each with what it holds (said when data lacks it).
    #: :data:`ANSWER` is the reference answer: rows without one are left out of training.
    columns: Mapping[str, str]
    #: True for a verifier: its own value decides "correct", whatever the other rewards and their
    #: weights. False leaves "correct" to the weighted total reward.
    decides_correct: bool

    @classmethod
    def from_settings(cls, settings: RewardSettings) -> Callable:
        """The reward function (TRL's signature) for this run's settings."""


REGISTRY = Registry("reward", "anglerank.rewards")
#: Class decorator: make a reward available as ``--reward name`` and ``load_reward("name")``.
register = REGISTRY.register


def completion_text(c: Any) -> str:
    """Text of a TRL completion: a string, or a conversational message list
    (last message's content; content may be a list of ``{"type": "text"}``)."""
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, dict):
        content = c.get("content", "")
    elif isinstance(c, (list, tuple)):
        if not c:
            return ""
        last = c[-1]
        content = last.get("content", "") if isinstance(last, dict) else last
    else:
        return str(c)
    if isinstance(content, (list, tuple)):
        return "".join(
            p.get("text", "") if isinstance(p, dict) else str(p) for p in content
        )
    return "" if content is None else str(content)
