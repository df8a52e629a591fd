"""Judging code completions: the last fenced Python block against the row's tests, in the sandbox.

Tests come in the two shapes datasets use: a list of Python ``assert``
statements (HumanEval / MBPP style), or stdin/stdout pairs (APPS / CodeContests
style) as a list of ``{"input": ..., "output": ...}`` or one
``{"inputs": [...], "outputs": [...]}``; either may arrive as a JSON string.
Every test is a separate program run (:mod:`anglerank.sandbox`), so a program
cannot report its own results: an assert test passes when the program exits 0,
an stdin/stdout test when it exits 0 and prints the expected output (compared
line by line, trailing whitespace ignored).
"""

from __future__ import annotations

import json
import re
from typing import Any

from anglerank.sandbox import Limits, run_many

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


def _same_output(got: str, want: str) -> bool:
    lines = lambda s: [x.rstrip() for x in s.strip().splitlines()]  # noqa: E731
    return lines(got) == lines(want)


def pass_fractions(completions: list[str], tests: list[Any], limits: Limits = Limits(),
                   workers: int | None = None) -> list[float]:
    """Per completion: the share of its row's tests passed (0 without a code block or without tests)."""
    jobs, owners = [], []
    cases = [normalise_tests(t) for t in tests]
    for i, (text, case) in enumerate(zip(completions, cases)):
        code = extract_code(text)
        if code is None:
            continue
        for kind, t in case:
            jobs.append((code + "\n\n" + t, "") if kind == "assert" else (code, t[0]))
            owners.append((i, kind, t))
    passed = [0] * len(completions)
    for (i, kind, t), res in zip(owners, run_many(jobs, limits, workers)):
        ok = res.returncode == 0 and not res.timed_out
        passed[i] += ok and (kind == "assert" or _same_output(res.stdout, t[1]))
    return [p / len(c) if c else 0.0 for p, c in zip(passed, cases)]
