"""Reward functions with TRL's signature, the public ``anglerank.rewards`` package.

A reward function is called as ``f(prompts, completions, **columns)`` and
returns one float per completion (TRL's ``reward_funcs`` convention), so the
same function serves ``anglerank train``, TRL's ``GRPOTrainer`` and verl. The
built-in rewards are one file each in this package (``math``: answer checking on
math-verify, see :mod:`anglerank.rewards.grading`; ``code``: programs against the row's
tests), each registered by name with what it needs (:mod:`anglerank.rewards.base`).
What they judge with lives here as well: :mod:`~anglerank.rewards.grading` (answer
checking), :mod:`~anglerank.rewards.coding` and :mod:`~anglerank.rewards.sandbox`
(programs against tests, in a sandbox whose scripts are the ``_sandbox_*.py`` files;
they run as ``python -I``, so ``math.py`` and ``code.py`` beside them never stand in
for the standard library's modules). Here too: the loader for any reward (a built-in's
name, ``"module:function"`` or ``"file.py:function"``) and the helper that combines
several reward functions into one weighted reward. No torch.
"""

from __future__ import annotations

from anglerank.rewards.base import (ANSWER, REGISTRY, NonFiniteReward, RewardError, RewardSettings, RewardSpec,
                                    register)
from anglerank.rewards.code import code_reward, code_reward_all
from anglerank.rewards.combine import combine_rewards
from anglerank.rewards.loading import decider_index, load_reward, registered
from anglerank.rewards.math import math_reward, math_reward_any

__all__ = ["code_reward", "code_reward_all", "RewardError", "NonFiniteReward", "math_reward", "math_reward_any",
           "load_reward", "combine_rewards", "ANSWER", "REGISTRY", "RewardSettings", "RewardSpec", "register",
           "registered", "decider_index"]
