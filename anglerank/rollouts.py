"""The settings of sampled completions and of judging their answers, declared once, and of the two
commands that measure with them (``passrate`` and ``validate``).

``validate`` (pass rates), ``passrate`` and ``anglerank train`` (rollouts) sample
completions and judge their final answers the same way; each holds these groups by
inheritance (see :mod:`anglerank.settings`). No torch and no checker here: the
command line builds its options from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from anglerank import settings
from anglerank.errors import UserError
from anglerank.settings import override, setting

__all__ = ["ANSWER_FORMATS", "DEFAULT_ANSWER_FORMAT", "SamplingSettings", "AnswerSettings", "PassRateOptions",
           "ValidateOptions"]

ANSWER_FORMATS = ("boxed", "any")
DEFAULT_ANSWER_FORMAT = "boxed"
ROLLOUTS, REWARDS = "Rollouts", "Rewards"  # help panels (of `anglerank train`)


@dataclass
class SamplingSettings:
    """How completions are sampled."""

    temperature: float = setting(0.9, "Sampling temperature of rollouts.", panel=ROLLOUTS, valid="> 0", result=True)
    top_p: float = setting(1.0, "Nucleus sampling threshold of rollouts (1 = off).", panel=ROLLOUTS, valid="(0, 1]",
                           result=True)
    max_new_tokens: int = setting(512, "Completion length limit; a completion stops earlier at EOS.", panel=ROLLOUTS,
                                  valid=">= 1", result=True)


@dataclass
class AnswerSettings:
    """Where the reference answer is and how a completion's final answer is found."""

    answer_column: str | None = setting(
        None, "Reference-answer column, dotted paths allowed. Default: the first of reward_model.ground_truth, "
        "answer, solution, ground_truth that exists.", panel=REWARDS, result=True)
    answer_format: str = setting(
        DEFAULT_ANSWER_FORMAT, "How the built-in math checker finds a completion's final answer: boxed (as TRL's "
        "accuracy reward: a \\boxed{} or LaTeX answer, or GSM8K's '#### N'; a completion without one is wrong) or "
        "any (else the last number it writes).", panel=REWARDS, choices=ANSWER_FORMATS, result=True)


@dataclass
class PassRateOptions(AnswerSettings, SamplingSettings):
    """How completions are sampled and judged."""

    rollouts: int = setting(8, "G sampled completions per prompt.", flags=("--rollouts", "-g"), valid=">= 1",
                            result=True)
    seed: int = setting(0, "Seed: each row samples from its own generator, seeded by this and the row.",
                        valid="[0, 2**63)", result=True)

    def __post_init__(self):
        settings.check(self)


@dataclass
class ValidateOptions(AnswerSettings, SamplingSettings):
    """What `anglerank validate` measures besides the scoring options."""

    samples: int = setting(64, "Prompts drawn without replacement (seeded; all rows if fewer).", valid=">= 1")
    seed: int = setting(0, "Seed of the row sample and of rollout sampling.", valid="[0, 2**63)")
    target_column: str | None = setting(
        None, "Column with a reference completion (dotted paths reach into structs, e.g. extra_info.answer). "
        "Default: the model's own greedy completion.")
    max_new_tokens: int = override(SamplingSettings, "max_new_tokens", default=256, help="Length of greedy "
                                   "completions and rollouts; reference targets are cut to it.")
    rollouts: int = setting(0, "G sampled completions per prompt for pass rates (0: skip). Needs --answer-column.",
                            valid=">= 0")
    answer_column: str | None = override(
        AnswerSettings, "answer_column", help="Column with the reference final answer (e.g. "
        "reward_model.ground_truth); a \\boxed{} or '#### N' reference is reduced to its final answer.")
    gen_batch: int = setting(8, "Prompts per greedy-generation batch.", valid=">= 1")
    pass_rates: str | None = setting(
        None, "Read pass rates from an `anglerank passrate` output directory measured on these files (instead of "
        "--rollouts), and compare the angle score with them.", metavar="DIR")
    group_column: str | None = setting(
        None, "With pass rates, also correlate the score with them within each value of this column (e.g. "
        "data_source, or extra_info.level).")

    def __post_init__(self):
        settings.check(self)
        if self.rollouts > 0 and not self.answer_column:
            raise UserError("--rollouts needs --answer-column (the reference final answer)")
        if self.rollouts == 0 and self.answer_column:
            raise UserError("--answer-column is only used with --rollouts G (G >= 1)")
        if self.rollouts and self.pass_rates:
            raise UserError("use either --rollouts (measure pass rates) or --pass-rates (read them), not both")
