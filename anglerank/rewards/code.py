"""The built-in ``code`` and ``code_all`` rewards: a completion's last fenced Python block against the row's tests.

``code`` pays the share of the tests passed, ``code_all`` 1.0 only when every test passes. The
programs run in :mod:`anglerank.rewards.sandbox` (see :mod:`anglerank.rewards.coding` and ``docs/rewards.md``).
Neither is a verifier of its own: "correct" is the total reward reaching the run's threshold.
"""

from __future__ import annotations

from typing import Callable

from anglerank.rewards.base import RewardError, RewardSettings, completion_text, register
from anglerank.rewards.coding import pass_fractions

__all__ = ["CodeReward", "CodeAllReward", "code_reward", "code_reward_all"]

TESTS = {"tests": "per row, a list of assert statements or of {input, output} pairs"}


def code_reward(prompts, completions, tests=None, **kwargs) -> list[float]:
    """The share of the row's tests that the completion's last fenced Python block passes.

    TRL reward-function signature; ``tests`` is the data column (a list of
    ``assert`` statements, or of ``{"input", "output"}`` stdin/stdout pairs, per
    row; see :mod:`anglerank.rewards.coding`). The program runs in :mod:`anglerank.rewards.sandbox`
    (a private root with nothing of the machine but the Python installation, no
    network, limits); the tests run outside it and count only plain results, so
    exiting early or returning an object that equals anything earns nothing.
    :class:`anglerank.rewards.sandbox.SandboxUnavailable` (a RewardError here) where
    programs cannot be isolated; see ``docs/rewards.md``.
    """
    if tests is None:
        raise RewardError(f"the code reward needs a 'tests' column: {TESTS['tests']}")
    if len(tests) != len(completions):
        raise RewardError(f"code_reward: {len(tests)} test lists for {len(completions)} completions")
    try:
        return pass_fractions([completion_text(c) for c in completions], list(tests))
    except ValueError as exc:
        raise RewardError(f"code_reward: {exc}") from None


def code_reward_all(prompts, completions, tests=None, **kwargs) -> list[float]:
    """1.0 when the completion passes every test of its row, else 0.0 (all or nothing)."""
    return [float(x == 1.0) for x in code_reward(prompts, completions, tests=tests, **kwargs)]


@register("code")
class CodeReward:
    columns = TESTS
    decides_correct = False

    @classmethod
    def from_settings(cls, settings: RewardSettings) -> Callable:
        return code_reward


@register("code_all")
class CodeAllReward(CodeReward):
    @classmethod
    def from_settings(cls, settings: RewardSettings) -> Callable:
        return code_reward_all
