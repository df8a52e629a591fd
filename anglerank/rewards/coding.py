"""Judging code completions: the last fenced Python block against the row's tests, in the sandbox.

Tests come in the two shapes datasets use: a list of Python ``assert``
statements (HumanEval / MBPP style; a string may hold several statements, such
as HumanEval's ``def check(candidate): ...`` followed by ``check(f)``), or
stdin/stdout pairs (APPS / CodeContests style) as a list of
``{"input": ..., "output": ...}`` or one ``{"inputs": [...], "outputs": [...]}``;
either may arrive as a JSON string.

The tests never enter the program's process (:mod:`anglerank.rewards.sandbox`): an
assert test runs in the judge against the program's functions, which answer
with plain values only, and passes when it runs to its end; an stdin/stdout
test passes when the program exits 0 and prints the expected output (compared
line by line, trailing whitespace ignored). See ``docs/rewards.md``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from anglerank.rewards.sandbox import Limits, check, judge_many

__all__ = ["extract_code", "normalise_tests", "pass_fractions"]

_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(completion: str) -> str | None:
    """The last fenced code block (```python, ```py or a bare ```), or None."""
    blocks = _FENCE_RE.findall(completion or "")
    return blocks[-1] if blocks else None


def normalise_tests(tests: Any) -> list[tuple[str, Any]]:
    """[("assert", statement) | ("io", (stdin, expected_stdout)), ...]; ValueError for an unknown shape."""
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError:
            tests = [tests]  # one assert statement
    if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:
        return [("io", (str(i), str(o))) for i, o in zip(tests["inputs"], tests["outputs"])]
    if hasattr(tests, "tolist"):
        tests = tests.tolist()
    out = []
    for t in tests or []:
        if isinstance(t, str):
            out.append(("assert", t))
        elif isinstance(t, dict) and "input" in t and "output" in t:
            out.append(("io", (str(t["input"]), str(t["output"]))))
        else:
            raise ValueError(f"a test must be an assert statement or an {{input, output}} pair, got {t!r}")
    return out


def pass_fractions(completions: list[str], tests: list[Any], limits: Limits = Limits(),
                   workers: int | None = None) -> list[float]:
    """Per completion: the share of its row's tests passed (0 without a code block or without tests).

    Raises :class:`anglerank.rewards.sandbox.SandboxUnavailable` where programs cannot be isolated (unless waived),
    whether or not a completion holds code."""
    cases = [normalise_tests(t) for t in tests]
    check(limits)
    jobs = [(i, extract_code(text)) for i, text in enumerate(completions)]
    jobs = [(i, code) for i, code in jobs if code is not None and cases[i]]
    passed = [0] * len(completions)
    for (i, _), verdicts in zip(jobs, judge_many([(code, cases[i]) for i, code in jobs], limits, workers)):
        passed[i] = sum(verdicts)
    return [p / len(c) if c else 0.0 for p, c in zip(passed, cases)]
