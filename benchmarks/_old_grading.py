# A frozen copy of anglerank/grading.py before it moved to math-verify (commit 29c6e2b), kept only so
# benchmarks/checker_compare.py can judge the same pairs with the old checker. Not used by anglerank.
"""Final answers of math completions: extraction, normalisation and equivalence.

The usual bug in math RL is a reward of 0 for a correct answer written another
way (``\\dfrac12`` vs ``0.5``, ``$18.00`` vs ``18``, ``10 \\text{ cm}`` vs ``10``);
the other one is a reward of 1 for a near miss (``1000001`` for ``1000000``).
This module is the one place that decides whether two answers are the same, for
the built-in ``math`` reward (:mod:`anglerank.rewards`) and the pass rates of
``anglerank validate``. Pure Python (``re``, ``fractions``, ``decimal``): no torch,
no trainer.

When two numbers are the same answer
------------------------------------
Numbers are compared as exact fractions. A tolerance applies only when the
*reference* is itself inexact, because only then can a correct prediction
differ from it:

1. The reference's value has no finite decimal expansion (``1/3``, ``\\frac{2}{7}``).
   A decimal prediction is then necessarily rounded or cut; it matches when it is
   the reference rounded at its own last written digit, in either direction (off
   by less than one unit there), and off by at most ``5e-6`` of the reference
   (about six significant digits): ``0.333333``, ``0.166667`` and
   ``0.6666666666666666`` match ``1/3``, ``1/6`` and ``2/3``; ``0.33`` and
   ``0.166665`` do not, nor does ``333333/1000000`` (a fraction claims to be exact).
2. The reference is a decimal with at least ``ROUNDED_MIN_SIGNIFICANT`` (6)
   significant digits, at least ``ROUNDED_MIN_DECIMALS`` (5) of them after the
   point (``3.14159``, ``0.693147``, ``1.41421``): it is taken to be a rounded
   value (an irrational, a float printed to a few places). A prediction matches
   when it lies within half a unit of the reference's last digit: ``3.1415927``
   and ``\\frac{1}{3}`` match ``3.14159`` and ``0.333333``; ``3.1416`` does not.
   Shorter decimals such as ``3.14`` or ``1234.56`` cannot be told apart from
   exact values (money, ``1/32 = 0.03125``) and compare exactly.

Everything else (integers, short decimals, fractions whose decimal expansion
terminates) compares exactly: ``1000001`` vs ``1000000``, ``3.0000001`` vs ``3``,
``0.0000001`` vs ``0`` and ``1000000.5`` vs ``1000000`` are wrong answers.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction
from typing import Any

__all__ = [
    "extract_answer",
    "normalize_answer",
    "to_number",
    "answers_match",
    "reference_answer",
    "ROUNDED_MIN_SIGNIFICANT",
    "ROUNDED_MIN_DECIMALS",
]

# --------------------------------------------------------------------------- #
# Brace helpers
# --------------------------------------------------------------------------- #


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the balanced ``{...}`` group opening at ``text[start]``.

    Returns ``(content, index_after_closing_brace)`` or None if unbalanced.
    Escaped braces (``\\{``, ``\\}``) do not count.
    """
    if start >= len(text) or text[start] != "{":
        return None
    depth = 0
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


# --------------------------------------------------------------------------- #
# extract_answer
# --------------------------------------------------------------------------- #

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")

# A number as written in prose: optional minus (not a hyphen between words or
# digits), then thousands-separated, plain/decimal (optionally a fraction a/b)
# or a bare leading-dot decimal.
_NUM_RE = re.compile(
    r"(?:(?<![\w)\]}])-)?"
    r"(?<![\d.])"
    r"(?:"
    r"\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?"
    r"|\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)?"
    r"|\.\d+"
    r")"
)


def _boxed_content(text: str, after: int) -> str | None:
    n = len(text)
    j = after
    while j < n and text[j] in " \t":
        j += 1
    if j < n and text[j] == "{":
        grp = _braced(text, j)
        return grp[0] if grp is not None else None
    # ``\boxed 5`` / ``\boxed5`` form: one token up to whitespace or ``$``.
    m = re.match(r"[^\s$]+", text[j:])
    return m.group(0) if m else None


def extract_answer(text: str) -> str | None:
    """Final answer of a completion or reference solution.

    Priority: last ``\\boxed{...}`` / ``\\boxed x`` / ``\\fbox{...}`` (nested
    braces balanced; truncated, unbalanced boxes are skipped), else the text
    after the last ``####`` up to the end of that line, else the last number
    (integer, decimal, negative, ``1,234``, ``3/4``). None when nothing found.
    """
    if text is None:
        return None
    text = str(text)
    for m in reversed(list(_BOX_RE.finditer(text))):
        content = _boxed_content(text, m.end())
        if content is not None and content.strip():
            return content.strip()
    idx = text.rfind("####")
    if idx >= 0:
        after = text[idx + 4 :].split("\n", 1)[0].strip()
        if after:
            return after
    nums = _NUM_RE.findall(text)
    if nums:
        return nums[-1]
    return None


# --------------------------------------------------------------------------- #
# normalize_answer
# --------------------------------------------------------------------------- #

_TEXT_CMDS = r"(?:text|textbf|textrm|textit|textnormal|textsf|mbox|mathrm|mathbf|mathit)"
_TEXT_OPEN_RE = re.compile(r"\\" + _TEXT_CMDS + r"\s*(?=\{)")
# Trailing ``\text{ cm}`` (optionally ``^2``) after a numeric-looking value.
_TEXT_UNIT_RE = re.compile(
    r"^(?P<val>.*?\S)\s*\\" + _TEXT_CMDS + r"\s*\{(?P<unit>[^{}]*)\}"
    r"(?:\s*\^\s*\{?\s*\d\s*\}?)?\s*$"
)
# Trailing plain-word unit: ``12 apples``, ``5 dollars``, ``6 km/h``, ``3 sq. ft``.
_WORD_UNIT_RE = re.compile(
    r"^(?P<val>.*?\S)\s+(?P<unit>[A-Za-z][A-Za-z./\s-]*?)"
    r"(?:\s*\^\s*\{?\s*\d\s*\}?)?\s*$"
)
# A value a unit can follow: ends in a digit, a closing brace or ``\pi``.
_NUMERIC_END_RE = re.compile(r"(?:\d|\}|\\pi)$")
_NOT_UNITS = {"pi"}

_THOUSANDS_RE = re.compile(r"(?<![\d.,])(\d{1,3}(?:,\d{3})+)(?!\d|,\d)")
_TRAILING_ZEROS_RE = re.compile(r"(?<![\d.])(\d+)\.(\d*?)0+(?!\d)")
_ASSIGN_RE = re.compile(r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?[A-Za-z0-9]+\}?)?=(?!=)")
_DEGREES_RE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|°")


def _unwrap_text(s: str) -> str:
    """``\\text{abc}`` -> ``abc`` (also mbox, mathrm, ...), braces balanced."""
    while True:
        m = _TEXT_OPEN_RE.search(s)
        if not m:
            return s
        grp = _braced(s, m.end())
        if grp is None:  # unbalanced: drop just the command name
            return s[: m.start()] + s[m.end() :]
        s = s[: m.start()] + grp[0] + s[grp[1] :]


def _take_arg(s: str, j: int) -> tuple[str, int] | None:
    """One TeX macro argument at ``s[j]`` (after spaces): braced group, control
    word or single character. Returns (argument without braces, next index)."""
    n = len(s)
    while j < n and s[j] == " ":
        j += 1
    if j >= n:
        return None
    if s[j] == "{":
        grp = _braced(s, j)
        return grp
    if s[j] == "\\":
        m = re.match(r"\\(?:[A-Za-z]+|.)", s[j:])
        return m.group(0), j + len(m.group(0))
    if s[j] in "}^_":
        return None
    return s[j], j + 1


def _brace_macro_args(s: str, name: str, nargs: int) -> str:
    """Rewrite ``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt2`` -> ``\\sqrt{2}``
    (recursively inside the arguments)."""
    pat = re.compile("\\\\" + name + r"(?![A-Za-z])")
    out: list[str] = []
    i = 0
    while True:
        m = pat.search(s, i)
        if not m:
            out.append(s[i:])
            break
        out.append(s[i : m.end()])
        j = m.end()
        if name == "sqrt":  # optional ``[n]`` index
            k = j
            while k < len(s) and s[k] == " ":
                k += 1
            if k < len(s) and s[k] == "[":
                close = s.find("]", k)
                if close > 0:
                    out.append(s[k : close + 1])
                    j = close + 1
        for _ in range(nargs):
            arg = _take_arg(s, j)
            if arg is None:
                break
            out.append("{" + _brace_macro_args(arg[0], name, nargs) + "}")
            j = arg[1]
        i = j
    return "".join(out)


_MAX_UNIT_LEN = 200  # answers are short; the unit regexes are quadratic on long text


def _strip_units(s: str) -> str:
    if len(s) > _MAX_UNIT_LEN:
        return s
    for _ in range(4):
        before = s
        m = _TEXT_UNIT_RE.match(s)
        if m and _NUMERIC_END_RE.search(m.group("val").rstrip()):
            unit = m.group("unit").strip()
            if re.fullmatch(r"[A-Za-z][A-Za-z./\s-]*|", unit) and unit not in _NOT_UNITS:
                s = m.group("val").rstrip()
        s = s.rstrip()
        m = _WORD_UNIT_RE.match(s)
        if m and _NUMERIC_END_RE.search(m.group("val")):
            unit = m.group("unit").strip()
            letters = re.sub(r"[^A-Za-z]", "", unit)
            if len(letters) >= 2 and unit.lower() not in _NOT_UNITS:
                s = m.group("val").rstrip()
        if s == before:
            break
    return s


def _strip_outer_braces(s: str) -> str:
    while s.startswith("{"):
        grp = _braced(s, 0)
        if grp is None or grp[1] != len(s):
            break
        s = grp[0]
    return s


def normalize_answer(s: str) -> str:
    """Canonical string form of an answer, for string comparison.

    Removes math delimiters, ``\\left``/``\\right``, spacing macros, ``$``,
    ``%``, degree signs, trailing units (``\\text{ cm}``, ``12 apples``),
    thousands separators (not inside tuples), trailing decimal zeros, a leading
    single-variable assignment (``x =``) and a trailing period; ``\\dfrac`` and
    ``\\tfrac`` become ``\\frac`` and ``\\frac12``/``\\sqrt2`` get their braces.
    All whitespace goes, except one space after a control word followed by a
    letter (``\\pi r`` must not become ``\\pir``). Case is kept.
    """
    if s is None:
        return ""
    s = str(s).strip()
    if _BOX_RE.search(s):
        inner = extract_answer(s)
        if inner is not None:
            s = inner
    s = s.replace("\n", " ").replace("\t", " ")
    s = s.replace("∞", "\\infty").replace("−", "-")
    # delimiters and dollar signs
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\[()\[\]]", "", s)
    # sizing macros
    s = re.sub(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)(?![A-Za-z])", "", s)
    s = re.sub(r"\\displaystyle(?![A-Za-z])", "", s)
    # spacing macros
    s = re.sub(r"\\(?:qquad|quad)(?![A-Za-z])", " ", s)
    s = re.sub(r"\\[!,;: ]", " ", s)
    s = s.replace("~", " ")
    s = s.replace("{,}", ",")
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    # degrees and percent
    s = _DEGREES_RE.sub("", s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.strip()
    while s.endswith("."):
        s = s[:-1].rstrip()
    # units (before unwrapping \text, then plain words after)
    s = _strip_units(s)
    s = _unwrap_text(s)
    s = _strip_units(s)
    s = re.sub(r"\s+(?:degrees?|deg)$", "", s)
    # thousands separators, unless the whole thing is a tuple / interval / set
    if not re.match(r"^\s*(?:\(|\[|\\\{|\{)", s):
        s = _THOUSANDS_RE.sub(lambda m: m.group(1).replace(",", ""), s)
    # whitespace: keep one space only where it separates a control word from a letter
    s = re.sub(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])", "\\1\x00", s)
    s = re.sub(r"\s+", "", s).replace("\x00", " ")
    # single-variable assignment ``x=5``, ``\theta=...``, ``a_1=...``
    if s.count("=") == 1:
        s = _ASSIGN_RE.sub("", s)
    s = _brace_macro_args(s, "frac", 2)
    s = _brace_macro_args(s, "sqrt", 1)
    s = _strip_outer_braces(s)
    while s.endswith("."):
        s = s[:-1]
    s = _TRAILING_ZEROS_RE.sub(
        lambda m: m.group(1) + ("." + m.group(2) if m.group(2) else ""), s
    )
    return s


# --------------------------------------------------------------------------- #
# to_number / answers_match
# --------------------------------------------------------------------------- #

_DEC = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_DEC_RE = re.compile(_DEC)
_SLASH_RE = re.compile(r"(?P<sign>[+-]?)(?P<a>" + _DEC + r")/(?P<b>" + _DEC + r")")
_FRAC_RE = re.compile(r"(?P<sign>[+-]?)\\frac\{(?P<a>" + _DEC + r")\}\{(?P<b>" + _DEC + r")\}")
# Fraction("1e-99999999") builds a hundred-million-digit integer: a completion must not hang the reward.
_HUGE_EXPONENT_RE = re.compile(r"[eE][+-]?\d{4,}")


def to_number(s: str) -> Fraction | None:
    """Exact value of a numeric answer: integers, decimals, ``a/b``,
    ``\\frac{a}{b}`` with signs outside or inside. None if not a plain number.
    The input is normalised first (so ``$1,234.50`` parses)."""
    if s is None:
        return None
    t = normalize_answer(s)
    if not t or _HUGE_EXPONENT_RE.search(t):
        return None
    try:
        if _DEC_RE.fullmatch(t):
            return Fraction(t)
        m = _SLASH_RE.fullmatch(t) or _FRAC_RE.fullmatch(t)
        if m:
            b = Fraction(m.group("b"))
            if b == 0:
                return None
            val = Fraction(m.group("a")) / b
            return -val if m.group("sign") == "-" else val
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None



# --------------------------------------------------------------------------- #
# number equivalence (the rules are in the module docstring)
# --------------------------------------------------------------------------- #

ROUNDED_MIN_SIGNIFICANT = 6
ROUNDED_MIN_DECIMALS = 5
_SIX_DIGITS = Fraction(5, 10**6)


def _written_precision(t: str) -> tuple[int, int] | None:
    """(significant digits, power of ten of the last written digit) of a plain decimal, else None."""
    if not _DEC_RE.fullmatch(t):
        return None
    _, digits, exponent = Decimal(t).as_tuple()
    leading_zeros = next((i for i, d in enumerate(digits) if d), len(digits))
    return len(digits) - leading_zeros, int(exponent)


def _terminates(x: Fraction) -> bool:
    """Whether ``x`` has a finite decimal expansion (its denominator divides a power of ten)."""
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def _numbers_match(p: Fraction, p_text: str, r: Fraction, r_text: str) -> bool:
    """``p`` (written ``p_text``) against the reference ``r`` (written ``r_text``), both normalised."""
    if p == r:
        return True
    err = abs(p - r)
    if not _terminates(r):  # rule 1: only a rounded decimal can stand for 1/3
        written = _written_precision(p_text)
        return written is not None and err <= Fraction(10) ** written[1] and err <= _SIX_DIGITS * abs(r)
    written = _written_precision(r_text)
    if written is not None and written[0] >= ROUNDED_MIN_SIGNIFICANT and -written[1] >= ROUNDED_MIN_DECIMALS:
        return err <= Fraction(1, 2) * Fraction(10) ** written[1]  # rule 2: a rounded reference
    return False


def _split_top_level(s: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for c in s:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def _match_norm(p: str, r: str, depth: int = 0) -> bool:
    if not p or not r:
        return False
    if p == r:
        return True
    pn, rn = to_number(p), to_number(r)
    if pn is not None and rn is not None:
        return _numbers_match(pn, p, rn, r)
    if depth > 3:
        return False
    # tuples / intervals / lists compared element by element
    pb = p[0] + p[-1] if len(p) >= 2 and p[0] in "([" and p[-1] in ")]" else ""
    rb = r[0] + r[-1] if len(r) >= 2 and r[0] in "([" and r[-1] in ")]" else ""
    if pb != rb:
        return False
    pi, ri = (p[1:-1], r[1:-1]) if pb else (p, r)
    pp, rp = _split_top_level(pi), _split_top_level(ri)
    if len(pp) < 2 or len(pp) != len(rp):
        return False
    return all(_match_norm(normalize_answer(a), normalize_answer(b), depth + 1) for a, b in zip(pp, rp))


def answers_match(pred: str | None, ref: str | None) -> bool:
    """True when ``pred`` and ``ref`` are the same answer: equal normalised strings,
    or equal numbers under the rules of the module docstring (exact unless the
    reference is inexact); tuples and intervals are compared element by element."""
    if pred is None or ref is None:
        return False
    return _match_norm(normalize_answer(str(pred)), normalize_answer(str(ref)))


def reference_answer(ref: Any) -> str | None:
    """The final answer in a reference: extracted from a ``\\boxed{}`` / ``####``
    solution, else the reference itself (numbers as text); None when empty."""
    if ref is None:
        return None
    ref = str(ref)
    if _BOX_RE.search(ref) or "####" in ref:
        return extract_answer(ref)
    return ref.strip() or None
