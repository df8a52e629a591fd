"""The built-in ``math`` reward: 1.0 when a completion's final answer equals the row's reference answer.

Answers are judged by :func:`anglerank.rewards.grading.grade` (math-verify). The run's answer format picks
the function: ``boxed`` gives :func:`math_reward`, ``any`` :func:`math_reward_any`. It is a verifier,
so its verdict decides "correct" whatever other rewards a run adds.
"""

from __future__ import annotations

from typing import Callable

from anglerank.rewards.base import ANSWER, RewardError, RewardSettings, completion_text, register
from anglerank.rewards.grading import grade

__all__ = ["MathReward", "math_reward", "math_reward_any"]


def _judge(prompts, completions, answer, kwargs, answer_format: str, name: str) -> list[float]:
    if answer is None:
        answer = kwargs.get("solution")
    if answer is None:
        raise RewardError(f"{name} needs an 'answer' (or 'solution') column aligned with completions")
    if isinstance(answer, (str, bytes)):
        raise RewardError(f"{name}: 'answer' must be a list aligned with completions, got a string")
    answer = list(answer)
    if len(answer) != len(completions):
        raise RewardError(f"{name}: got {len(answer)} answers for {len(completions)} completions")
    return [1.0 if grade(completion_text(c), ref, answer_format) else 0.0 for c, ref in zip(completions, answer)]


def math_reward(prompts, completions, answer=None, **kwargs) -> list[float]:
    """1.0 when the completion's marked final answer equals the reference, else 0.0.

    TRL reward-function signature. The reference comes from the ``answer``
    column (falls back to a ``solution`` column): a bare answer, a MATH solution
    with ``\\boxed{}`` or a GSM8K solution ending in ``#### N``. Judged by
    :func:`anglerank.rewards.grading.grade` with ``answer_format="boxed"``: math-verify,
    reading the completion as TRL's ``accuracy_reward`` does (``\\boxed{}``, or
    LaTeX after "answer"), plus GSM8K's ``#### N``; an unmarked answer scores 0.
    """
    return _judge(prompts, completions, answer, kwargs, "boxed", "math_reward")


def math_reward_any(prompts, completions, answer=None, **kwargs) -> list[float]:
    """:func:`math_reward`, except that a completion without an answer marker is
    judged by its last number or LaTeX expression (``answer_format="any"``)."""
    return _judge(prompts, completions, answer, kwargs, "any", "math_reward_any")


@register("math")
class MathReward:
    columns = {ANSWER: "the reference answer"}
    decides_correct = True

    @classmethod
    def from_settings(cls, settings: RewardSettings) -> Callable:
        return {"boxed": math_reward, "any": math_reward_any}[settings.answer_format]
