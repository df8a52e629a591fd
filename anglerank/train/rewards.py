"""Verifiable rewards for GRPO training on math data.

GAIN-RL's curriculum only helps if the reward it trains against is right, and
the usual bug in math RL is a reward of 0 for a correct answer written another
way (``\\dfrac12`` vs ``0.5``, ``$18.00`` vs ``18``, ``10 \\text{ cm}`` vs
``10``). This module holds the answer extraction, normalisation and comparison
used by the built-in ``math`` reward, the loader for user reward functions
(``"module:function"`` or ``"file.py:function"``) and the helper that combines
several TRL-style reward functions into one weighted reward.

Pure Python on purpose (``re``, ``fractions``, ``importlib``): it is imported by
the training loop and by tests that must run without torch.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import math
import os
import re
import sys
from fractions import Fraction
from typing import Any, Callable, Sequence

__all__ = [
    "extract_answer",
    "normalize_answer",
    "to_number",
    "answers_match",
    "math_reward",
    "load_reward",
    "combine_rewards",
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


def to_number(s: str) -> Fraction | None:
    """Exact value of a numeric answer: integers, decimals, ``a/b``,
    ``\\frac{a}{b}`` with signs outside or inside. None if not a plain number.
    The input is normalised first (so ``$1,234.50`` parses)."""
    if s is None:
        return None
    t = normalize_answer(s)
    if not t:
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


def _numbers_close(p: Fraction, r: Fraction) -> bool:
    return p == r or abs(p - r) <= Fraction(1, 10**6) * max(1, abs(r))


def _match_norm(p: str, r: str, depth: int = 0) -> bool:
    if not p or not r:
        return False
    if p == r:
        return True
    pn, rn = to_number(p), to_number(r)
    if pn is not None and rn is not None:
        return _numbers_close(pn, rn)
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
    """True when ``pred`` and ``ref`` are the same answer: equal normalised
    strings, or numbers equal as fractions / within ``1e-6 * max(1, |ref|)``;
    tuples and intervals are compared element by element."""
    if pred is None or ref is None:
        return False
    return _match_norm(normalize_answer(str(pred)), normalize_answer(str(ref)))


# --------------------------------------------------------------------------- #
# TRL reward function
# --------------------------------------------------------------------------- #


def _completion_text(c: Any) -> str:
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


def _reference_answer(ref: Any) -> str | None:
    if ref is None:
        return None
    ref = str(ref)
    if _BOX_RE.search(ref) or "####" in ref:
        return extract_answer(ref)
    return ref.strip()


def math_reward(prompts, completions, answer=None, **kwargs) -> list[float]:
    """1.0 when the completion's final answer matches the reference, else 0.0.

    TRL reward-function signature. The reference comes from the ``answer``
    column (falls back to a ``solution`` column); a reference containing
    ``\\boxed`` or ``####`` is passed through :func:`extract_answer` first.
    """
    if answer is None:
        answer = kwargs.get("solution")
    if answer is None:
        raise ValueError("math_reward needs an 'answer' (or 'solution') column aligned with completions")
    if isinstance(answer, (str, bytes)):
        raise ValueError("math_reward: 'answer' must be a list aligned with completions, got a string")
    answer = list(answer)
    if len(answer) != len(completions):
        raise ValueError(
            f"math_reward: got {len(answer)} answers for {len(completions)} completions"
        )
    rewards = []
    for comp, ref in zip(completions, answer):
        pred = extract_answer(_completion_text(comp))
        rewards.append(1.0 if answers_match(pred, _reference_answer(ref)) else 0.0)
    return rewards


# --------------------------------------------------------------------------- #
# Loading and combining reward functions
# --------------------------------------------------------------------------- #

_BUILTINS: dict[str, Callable] = {"math": math_reward}


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".replace("\n", " ").strip()


def _import_file(path: str):
    if not os.path.isfile(path):
        raise ValueError(f"reward file not found: {path}")
    abspath = os.path.abspath(path)
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(abspath))[0])
    digest = hashlib.sha1(abspath.encode()).hexdigest()[:10]
    modname = f"_anglerank_reward_{stem}_{digest}"
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, abspath)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load reward file: {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - reported as a one-line ValueError
        sys.modules.pop(modname, None)
        raise ValueError(f"error importing reward file {path}: {_one_line(e)}") from e
    return module


def load_reward(spec: str) -> Callable:
    """Resolve ``"module:function"``, ``"path/to/file.py:function"``, or the
    built-in ``"math"`` / ``"builtin:math"`` to a callable.

    Raises a one-line ValueError when the module, file or function cannot be
    found or the attribute is not callable.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"invalid reward spec {spec!r}: expected 'module:function' or 'file.py:function'")
    spec = spec.strip()
    if spec in _BUILTINS:
        return _BUILTINS[spec]
    if spec.startswith("builtin:"):
        name = spec[len("builtin:") :]
        if name not in _BUILTINS:
            raise ValueError(f"unknown built-in reward {name!r} (available: {', '.join(sorted(_BUILTINS))})")
        return _BUILTINS[name]
    mod, sep, attr = spec.rpartition(":")
    if not sep or not mod or not attr:
        raise ValueError(f"invalid reward spec {spec!r}: expected 'module:function' or 'file.py:function'")
    if mod.endswith(".py") or "/" in mod or os.sep in mod:
        module = _import_file(mod)
    else:
        try:
            module = importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"cannot import reward module {mod!r}: {_one_line(e)}") from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"reward function {attr!r} not found in {mod!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"reward {attr!r} in {mod!r} is not callable (got {type(obj).__name__})")
    return obj


def _func_name(f: Any) -> str:
    if isinstance(f, functools.partial):
        return _func_name(f.func)
    return getattr(f, "__name__", None) or type(f).__name__


def combine_rewards(
    funcs: Sequence[Callable],
    weights: Sequence[float] | None,
    prompts,
    completions,
    **columns,
) -> tuple[list[float], dict[str, list[float]]]:
    """Call every reward function TRL-style and return the weighted sum.

    Each function is called as ``f(prompts=prompts, completions=completions,
    **columns)`` and must return one value per completion (ValueError naming
    the function otherwise). ``None`` entries become ``nan`` in the
    per-function lists and count as 0 in the weighted sum. Returns
    ``(total, {name: values})``; duplicate names get ``_2``, ``_3`` suffixes.
    """
    funcs = list(funcs)
    if not funcs:
        raise ValueError("combine_rewards: no reward functions given")
    if weights is None:
        weights = [1.0] * len(funcs)
    weights = [float(w) for w in weights]
    if len(weights) != len(funcs):
        raise ValueError(f"combine_rewards: {len(weights)} weights for {len(funcs)} reward functions")
    n = len(completions)
    total = [0.0] * n
    per: dict[str, list[float]] = {}
    for f, w in zip(funcs, weights):
        name = _func_name(f)
        out = f(prompts=prompts, completions=completions, **columns)
        if out is None or isinstance(out, (str, bytes)) or not hasattr(out, "__len__"):
            raise ValueError(f"reward function {name!r} must return a list of {n} floats, got {type(out).__name__}")
        if len(out) != n:
            raise ValueError(f"reward function {name!r} returned {len(out)} values for {n} completions")
        vals: list[float] = []
        for v in out:
            if v is None:
                vals.append(math.nan)
                continue
            try:
                vals.append(float(v))
            except (TypeError, ValueError):
                raise ValueError(f"reward function {name!r} returned a non-numeric value {v!r}") from None
        key, k = name, 2
        while key in per:
            key, k = f"{name}_{k}", k + 1
        per[key] = vals
        for i, v in enumerate(vals):
            if not math.isnan(v):
                total[i] += w * v
    return total, per
