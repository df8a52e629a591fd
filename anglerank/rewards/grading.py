"""Is a math completion's final answer the reference answer? One judge: :func:`grade`.

Equivalence is decided by `math-verify <https://github.com/huggingface/Math-Verify>`_,
the verifier behind TRL's ``accuracy_reward`` and open-r1, so symbolic answers,
sets, intervals, tuples, matrices and LaTeX spellings are judged the way the
ecosystem judges them (``\\dfrac{1}{2}`` = ``0.5``, ``\\{1,2\\}`` = ``\\{2,1\\}``,
``x = 3`` = ``3``, ``1,000`` = ``1000``, ``10 \\text{ cm}`` = ``10``; ``[0,1)`` is
not ``(0,1]``, and ``10\\%`` is ``0.1``, not ``10``). This module adds only what
math-verify lacks: GSM8K's ``#### N`` marker, bare-text references, the ``any``
rule below, two TeX number spellings it misreads (``1.5e3``, ``10\\,000``), a guard
against numbers too large to compare, and timeouts that work outside the main
thread. Used by :mod:`anglerank.rewards` and ``anglerank validate``.

Which part of a completion is its answer (``answer_format``)
------------------------------------------------------------
``boxed`` (default, TRL's rule): the answer must be marked. The completion is read
as ``trl.rewards.accuracy_reward`` reads it: the ``\\boxed{...}`` content (several
boxes form a set: ``\\boxed{2}, \\boxed{3}``), else a LaTeX math span (``$...$``,
``\\(...\\)``, ``\\[...\\]``) after the word "answer" (``The final answer is $12$``);
the first such match is the answer. One difference, which only turns wrong zeros
into ones: the LaTeX is normalised with math-verify's default settings, which read
valid TeX shorthand (``\\frac12``, ``\\sqrt2``) that TRL's settings leave unparsed.
If none of these is found, the text after the last ``####`` (to the end of its
line) is the answer. Anything else scores False: ``The answer is 12`` is unmarked.

``any``: a marked answer is judged exactly as under ``boxed``. A completion with
no marker is judged by the number it gives: the first number within 50
characters after "answer is", "answer:" or "answer =" (``The answer is 12. I
checked it 3 ways`` gives 12), else the *last* number in the text. A number is
an integer or decimal (``1,234``, ``-3.5``), a fraction (``3/4``, ``1 / 6``,
``\\frac{3}{4}``) or a percent (``50%``). Expressions are not answers: ``9 - 6
=`` has not said 3, and a restated problem (``$\\sqrt{5^5+5^5}$``) is not its
result, though math-verify's own unanchored extraction would evaluate both.

The reference may be a bare answer (``72``, ``\\frac{1}{2}``, ``(1,2)``, ``\\$40``),
a MATH solution (its ``\\boxed{}`` is found by math-verify, as TRL does) or a GSM8K
solution (the text after ``####``). An unparseable or empty reference scores False.

Near misses
-----------
An integer reference admits no tolerance: ``1000001``, ``1000000.5`` and
``3.0000001`` are not ``1000000``, ``1000000`` and ``3`` (sympy >= 1.13 keeps
``Float(3.0)`` and ``3`` apart, and the symbolic check needs a zero difference).
Against any other reference (``\\frac13``, ``\\pi``, ``2.5``) a decimal matches
when both agree rounded to ``float_rounding`` = 6 decimal places, math-verify's
and TRL's default, kept here: ``0.333333`` and ``3.141593`` match ``\\frac13`` and
``\\pi``; ``0.3333``, ``3.14`` and ``3.14159`` do not. A higher setting would
reject six-digit roundings of 1/3; the price of 6 is an absolute tolerance of
5e-7 around non-integers (``0.5000001`` matches ``\\frac12``).
"""

from __future__ import annotations

import logging
import re
import threading
from functools import lru_cache
from typing import Any

from latex2sympy2_extended import NormalizationConfig
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException
from sympy import Basic, Float, Pow, factorial

from anglerank.rollouts import ANSWER_FORMATS, DEFAULT_ANSWER_FORMAT

__all__ = ["ANSWER_FORMATS", "DEFAULT_ANSWER_FORMAT", "grade", "reference_answer"]

# TRL's completion config (boxed first, no answer without a marker), with
# math-verify's default normalisation instead of TRL's NormalizationConfig(units=True)
# so that \frac12 and \sqrt2 parse (see the module docstring).
_MARKED = [LatexExtractionConfig(
    boxed_match_priority=0,
    try_extract_without_anchor=False,
    normalization_config=NormalizationConfig(basic_latex=True, units=True, malformed_operators=True,
                                             nits=True, boxed="all"),
)]
# math-verify's default parse: TRL's config for the gold, ours for unmarked completions.
_DEFAULT = [LatexExtractionConfig(), ExprExtractionConfig()]
_LATEX = [LatexExtractionConfig()]

# TRL's timeouts (seconds). math-verify implements them with signal.alarm, which
# raises outside the main thread: there they are off (see _timeouts).
_PARSE_TIMEOUT, _VERIFY_TIMEOUT = 10, 5
# Numbers beyond this exponent (10^{10^{10}}, (10^{100})!) make sympy run for ever;
# in a worker thread no timeout would stop it, so such answers are refused everywhere.
_MAX_EXPONENT = 10**6
_MAX_FLOAT = 10**300

# Two spellings math-verify misreads: "1.5e3" (lower-case e is Euler's number to it,
# while "1.5E3" is read as 1500) and digit groups split by a TeX space ("10\,000" reads
# as 10*0); TeX itself prints both as numbers. An exponent of 4+ digits stays (or becomes)
# a lower-case e: sympy would build "1E99999999" as an exact integer, for ever.
_SCI_E_RE = re.compile(r"(?<![\w.\\])(\d+(?:\.\d+)?)e(?=[+-]?\d{1,3}(?![\w.]))")
_HUGE_E_RE = re.compile(r"(?<=\d)E(?=[+-]?\d{4})")
_TEX_SPACE_GROUP_RE = re.compile(r"(?<=\d)(?:\\[,;: ]|~)(?=\d{3}(?!\d))")
_HASHES_RE = re.compile(r"####[ \t]*([^\n]*)")
_TRAILING_DOT_RE = re.compile(r"(?<=\d)\.\s*$")  # "#### 72." -> "72"
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
# A number an unmarked completion gives (answer_format="any"): an integer or decimal, digits grouped by
# commas, an a/b or \frac{a}{b} fraction, a percent. Not an expression: "9 - 6 =" has not answered 3.
_NUMBER_RE = re.compile(r"(?<![\w.,])[-+]?(?:\\[dt]?frac\{\d+\}\{\d+\}|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
                        r"(?:\s*/\s*\d+(?:\.\d+)?)?(?:\s*\\?%)?)")
_ANCHOR_RE = re.compile(r"\banswer\s*(?:is|:|=)", re.IGNORECASE)
_MATH_DOLLAR_RE = re.compile(r"(?<!\\)\$")  # "$x$" opens math; "\$18" is money


def _timeouts() -> tuple[int | None, int | None]:
    """(parse, verify) timeouts: TRL's in the main thread, none elsewhere (as TRL does)."""
    if threading.current_thread() is threading.main_thread():
        return _PARSE_TIMEOUT, _VERIFY_TIMEOUT
    for name in ("math_verify.parser", "math_verify.grader"):  # once per process would do; harmless
        logging.getLogger(name).setLevel(logging.ERROR)  # silence "Timeout is disabled"
    return None, None


def _tex_fixes(text: str) -> str:
    text = _SCI_E_RE.sub(r"\1E", _HUGE_E_RE.sub("e", text))
    return _TEX_SPACE_GROUP_RE.sub("", text)


def reference_answer(ref: Any) -> str | None:
    """The part of a reference that holds its answer: the text after the last
    ``####`` (GSM8K), else the whole reference (math-verify finds a MATH
    solution's ``\\boxed{}`` itself); None when empty."""
    if ref is None:
        return None
    text = str(ref).strip()
    if "####" in text and not _BOX_RE.search(text):
        text = _HASHES_RE.findall(text)[-1].strip()
    return text or None


def _parse_bare(answer: str, timeout: int | None) -> list:
    """Parse a bare answer (``72``, ``(1,2)``, ``\\frac12``) by boxing it, so the
    whole string is read as LaTeX rather than its first number or word."""
    answer = _TRAILING_DOT_RE.sub("", answer.strip())
    if not answer:
        return []
    parsed = parse("\\boxed{" + answer + "}", _LATEX, parsing_timeout=timeout)
    return parsed or parse(answer, _DEFAULT, parsing_timeout=timeout)


@lru_cache(maxsize=4096)  # a GRPO group shares its reference
def _parse_reference(ref: str, timeout: int | None) -> list:
    """A solution (with ``\\boxed`` or ``$`` math) is parsed as TRL parses its gold; a bare answer is boxed."""
    if _BOX_RE.search(ref) or _MATH_DOLLAR_RE.search(ref):
        return parse(ref, _DEFAULT, parsing_timeout=timeout) or _parse_bare(ref, timeout)
    return _parse_bare(ref, timeout)


def _parse_completion(text: str, answer_format: str, timeout: int | None) -> list:
    parsed = parse(text, _MARKED, extraction_mode="first_match", parsing_timeout=timeout)
    if parsed:
        return parsed
    hashes = _HASHES_RE.findall(text)
    if hashes and hashes[-1].strip():
        return _parse_bare(hashes[-1], timeout)
    if answer_format == "any":
        number = _given_number(text)
        return _parse_bare(number, timeout) if number else []
    return []


def _given_number(text: str) -> str | None:
    """The number an unmarked completion gives: the first after its last "answer is", else its last."""
    anchors = list(_ANCHOR_RE.finditer(text))
    if anchors:
        end = anchors[-1].end()
        m = _NUMBER_RE.search(text[end: end + 50])
        if m:
            return m.group()
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None


def _too_big(parsed: list) -> bool:
    """Whether a parsed answer holds a number too large to compare (see _MAX_EXPONENT)."""
    for expr in parsed:
        if not isinstance(expr, Basic):
            continue
        for node in expr.atoms(Pow, factorial, Float):
            try:
                if isinstance(node, Float):  # math-verify rounds floats: 1e99999999 becomes a huge integer
                    if abs(node) > _MAX_FLOAT:
                        return True
                    continue
                if isinstance(node, Pow) and node.base.is_number and abs(node.base) in (0, 1):
                    continue
                arg = node.exp if isinstance(node, Pow) else node.args[0]
                if arg.is_number and abs(arg.evalf(15)) > _MAX_EXPONENT:
                    return True
            except (TypeError, ValueError, ArithmeticError):
                return True
    return False


def grade(completion: str, reference: Any, answer_format: str = DEFAULT_ANSWER_FORMAT) -> bool:
    """True when the completion's final answer equals the reference (module docstring).

    Safe in any thread, and never raises for odd input: a failure inside
    math-verify or sympy, or an answer that cannot be found or parsed, is False.
    Raises ValueError only for an unknown ``answer_format``.
    """
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"unknown answer_format {answer_format!r}; choose one of {', '.join(ANSWER_FORMATS)}")
    ref = reference_answer(reference)
    if ref is None or completion is None:
        return False
    parse_timeout, verify_timeout = _timeouts()
    try:
        gold = _parse_reference(_tex_fixes(ref), parse_timeout)
        pred = _parse_completion(_tex_fixes(str(completion)), answer_format, parse_timeout) if gold else []
        if not pred or _too_big(gold) or _too_big(pred):
            return False
        return bool(verify(gold, pred, timeout_seconds=verify_timeout))
    except (Exception, TimeoutException):  # TimeoutException is a BaseException
        return False
