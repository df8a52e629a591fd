"""Tests for anglerank.train.rewards: answer extraction, matching and reward plumbing."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from anglerank.train.rewards import (
    answers_match,
    combine_rewards,
    extract_answer,
    load_reward,
    math_reward,
    normalize_answer,
    to_number,
)

# --------------------------------------------------------------------------- #
# extract_answer
# --------------------------------------------------------------------------- #

EXTRACT_CASES = [
    (r"The answer is $\boxed{42}$.", "42"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"so $\boxed{\sqrt{\frac{3}{4}}}$", r"\sqrt{\frac{3}{4}}"),
    (r"first \boxed{1} then \boxed{2}", "2"),
    (r"\boxed{\left( 1, 2 \right)}", r"\left( 1, 2 \right)"),
    (r"Thus $\boxed 5$", "5"),
    (r"\fbox{7}", "7"),
    (r"\boxed{\text{(A)}}", r"\text{(A)}"),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
    (r"\boxed{3} but wait \boxed{4", "3"),  # truncated last box is skipped
    ("Natalia sold 48 clips.\n#### 72", "72"),
    ("step 1\n#### 1,234\nextra 99", "1,234"),
    ("so the total is 42 apples.", "42"),
    ("It costs 1,234 dollars", "1,234"),
    ("the temperature is -5 degrees", "-5"),
    ("roughly 3.14.", "3.14"),
    ("probability 3/4", "3/4"),
    ("pages 3-5", "5"),
    ("no number here", None),
    ("", None),
    (r"\boxed{} and 9", "9"),
]


@pytest.mark.parametrize("text,expected", EXTRACT_CASES)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# --------------------------------------------------------------------------- #
# answers_match: (prediction text, reference, expected)
# The prediction goes through extract_answer first, as in math_reward.
# --------------------------------------------------------------------------- #

MATCH_CASES = [
    # fractions and decimals
    (r"\boxed{\frac{1}{2}}", "0.5", True),
    (r"\boxed{\frac{1}{2}}", "1/2", True),
    (r"\boxed{\dfrac12}", r"\frac{1}{2}", True),
    (r"\boxed{\tfrac{1}{2}}", "0.50", True),
    ("0.5", r"\dfrac12", True),
    (r"\boxed{0.333333}", r"\frac13", True),  # relative tolerance 1e-6
    (r"\boxed{0.33}", r"\frac13", False),
    (r"\boxed{-\frac{1}{2}}", r"\frac{-1}{2}", True),
    (r"\boxed{-\frac{1}{2}}", "-0.5", True),
    (r"\boxed{-1/2}", r"-\dfrac{1}{2}", True),
    (r"\boxed{\frac{1}{2}}", r"-\frac{1}{2}", False),
    (r"\boxed{\frac{2}{4}}", r"\frac{1}{2}", True),
    # nested / multiple boxes
    (r"\boxed{\sqrt{\frac{3}{4}}}", r"\sqrt{\frac{3}{4}}", True),
    (r"\boxed{\sqrt{\frac34}}", r"\sqrt{\frac{3}{4}}", True),
    (r"\boxed{\sqrt2}", r"\sqrt{2}", True),
    (r"\boxed{\sqrt{3}}", r"\sqrt{2}", False),
    (r"\boxed{1} no wait \boxed{2}", "2", True),
    (r"\boxed{1} no wait \boxed{2}", "1", False),
    # thousands separators
    ("#### 1,234", "1234", True),
    (r"\boxed{1,000,000}", "1000000", True),
    ("The answer is 1,000,000.", "1000000", True),
    (r"\boxed{1{,}000}", "1000", True),
    (r"\boxed{10\,000}", "10000", True),
    # tuples / intervals
    (r"\boxed{\left( 1, 2 \right)}", "(1,2)", True),
    (r"\boxed{(1, 2)}", "(1,2)", True),
    (r"\boxed{(1,2)}", "(1,3)", False),
    (r"\boxed{(0.5, 2)}", r"(\frac{1}{2}, 2)", True),
    (r"\boxed{[1, 2)}", "(1,2)", False),
    (r"\boxed{(1,2,3)}", "(1,2)", False),
    # percent, currency, units, degrees
    (r"\boxed{50\%}", "50", True),
    (r"\boxed{50%}", "50", True),
    (r"\boxed{\$18}", "18", True),
    ("$18", "18", True),
    (r"\boxed{18.00}", "18", True),
    (r"\boxed{2.50}", "2.5", True),
    (r"\boxed{10 \text{ cm}}", "10", True),
    (r"\boxed{10\mbox{cm}}", "10", True),
    (r"\boxed{5\ \mathrm{m}^2}", "5", True),
    ("He has 5 dollars", "5", True),
    (r"\boxed{12 \text{apples}}", "12", True),
    (r"\boxed{90^\circ}", "90", True),
    (r"\boxed{90^{\circ}}", "90", True),
    (r"\boxed{90 \text{ degrees}}", "90", True),
    (r"\boxed{90^\circ}", "45", False),
    # assignments
    (r"\boxed{x = 5}", "5", True),
    (r"\boxed{a=5}", "5", True),
    (r"\boxed{x = 5}", "6", False),
    # signs and integers
    (r"\boxed{-3}", "-3.0", True),
    (r"\boxed{3}", "4", False),
    (r"\boxed{3}", "-3", False),
    (r"\boxed{3.}", "3", True),
    # symbols
    (r"\boxed{\infty}", r"\infty", True),
    (r"\boxed{-\infty}", r"\infty", False),
    (r"\boxed{2\pi}", r"2\pi", True),
    (r"\boxed{\frac{\pi}{2}}", r"\frac\pi2", True),
    (r"\boxed{\text{(A)}}", "(A)", True),
    (r"\boxed{\text{(A)}}", "(B)", False),
    # GSM8K-style references and last-number fallback
    ("She earned 72 dollars in total. #### 72", "72", True),
    ("so the total is 42 apples.", "42", True),
    ("so the total is 42 apples.", "43", False),
    ("I am not sure.", "72", False),
    # tolerance is relative to the reference
    ("1000000.5", "1000000", True),
    ("1.001", "1", False),
]


@pytest.mark.parametrize("pred_text,ref,expected", MATCH_CASES)
def test_answers_match(pred_text, ref, expected):
    pred = extract_answer(pred_text)
    assert answers_match(pred, ref) is expected


def test_answers_match_none():
    assert answers_match(None, "1") is False
    assert answers_match("1", None) is False
    assert answers_match(None, None) is False
    assert answers_match("", "") is False


@pytest.mark.parametrize(
    "raw,expected",
    [
        (r"\left( 1, 2 \right)", "(1,2)"),
        (r"\dfrac12", r"\frac{1}{2}"),
        (r"50\%", "50"),
        (r"\$1,234.50", "1234.5"),
        ("3.0", "3"),
        ("2.50", "2.5"),
        ("x = 5", "5"),
        (r"10 \text{ cm}", "10"),
        (r"90^{\circ}", "90"),
        ("42.", "42"),
        (r"\infty", r"\infty"),
        (r"2\pi r", r"2\pi r"),  # space after a control word before a letter survives
        ("3x", "3x"),  # no whitespace: not a unit
        ("(1,000, 2)", "(1,000,2)"),  # tuples keep their commas
    ],
)
def test_normalize_answer(raw, expected):
    out = normalize_answer(raw)
    assert out == expected
    assert normalize_answer(out) == out  # idempotent


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("42", Fraction(42)),
        ("-3.5", Fraction(-7, 2)),
        ("3/4", Fraction(3, 4)),
        (r"\frac{1}{2}", Fraction(1, 2)),
        (r"-\frac{1}{2}", Fraction(-1, 2)),
        (r"\frac{-1}{2}", Fraction(-1, 2)),
        (r"\dfrac34", Fraction(3, 4)),
        ("1,234", Fraction(1234)),
        ("1/0", None),
        (r"\sqrt{2}", None),
        ("abc", None),
        ("", None),
    ],
)
def test_to_number(raw, expected):
    assert to_number(raw) == expected


# --------------------------------------------------------------------------- #
# math_reward
# --------------------------------------------------------------------------- #


def test_math_reward_strings():
    completions = [r"... so \boxed{\frac{1}{2}}", "I think it is 7", "#### 1,234", "no idea"]
    answers = ["0.5", "8", "1234", "3"]
    assert math_reward(["p"] * 4, completions, answer=answers) == [1.0, 0.0, 1.0, 0.0]


def test_math_reward_conversational():
    completions = [
        [{"role": "assistant", "content": r"The answer is $\boxed{72}$."}],
        [{"role": "assistant", "content": "draft 1"}, {"role": "assistant", "content": r"\boxed{71}"}],
        [{"role": "assistant", "content": [{"type": "text", "text": r"\boxed{72}"}]}],
    ]
    prompts = [[{"role": "user", "content": "q"}]] * 3
    assert math_reward(prompts, completions, answer=["72", "72", "72"]) == [1.0, 0.0, 1.0]


def test_math_reward_reference_extraction():
    # References with \boxed or #### are extracted; plain ones are used as is.
    completions = [r"\boxed{72}", r"\boxed{\frac{1}{2}}", r"\boxed{5}"]
    answers = ["Natalia sold 48/2 = 24 clips in May.\n#### 72", r"Hence $\boxed{\dfrac12}$.", 5]
    assert math_reward(None, completions, answer=answers) == [1.0, 1.0, 1.0]


def test_math_reward_errors():
    with pytest.raises(ValueError):
        math_reward(["p"], ["1"])
    with pytest.raises(ValueError):
        math_reward(["p", "p"], ["1", "2"], answer=["1"])


# --------------------------------------------------------------------------- #
# load_reward
# --------------------------------------------------------------------------- #


def test_load_reward_builtin():
    assert load_reward("math") is math_reward
    assert load_reward("builtin:math") is math_reward
    with pytest.raises(ValueError):
        load_reward("builtin:nope")


def test_load_reward_module_path():
    assert load_reward("anglerank.train.rewards:math_reward") is math_reward
    f = load_reward("os.path:join")
    assert callable(f)


def test_load_reward_file(tmp_path):
    p = tmp_path / "my_reward.py"
    p.write_text(
        "def length_reward(prompts, completions, **kw):\n"
        "    return [float(len(c)) for c in completions]\n"
        "NOT_CALLABLE = 3\n"
    )
    f = load_reward(f"{p}:length_reward")
    assert f(None, ["ab", "abc"]) == [2.0, 3.0]
    with pytest.raises(ValueError, match="not callable"):
        load_reward(f"{p}:NOT_CALLABLE")


@pytest.mark.parametrize(
    "spec",
    [
        "anglerank.train.rewards:no_such_function",
        "no_such_module_xyz:f",
        "/nonexistent/dir/reward.py:f",
        "anglerank.train.rewards",
        ":f",
        "",
    ],
)
def test_load_reward_errors(spec):
    with pytest.raises(ValueError) as ei:
        load_reward(spec)
    assert "\n" not in str(ei.value)


def test_load_reward_file_missing_function(tmp_path):
    p = tmp_path / "r.py"
    p.write_text("def f(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    with pytest.raises(ValueError, match="not found"):
        load_reward(f"{p}:g")


def test_load_reward_file_import_error(tmp_path):
    p = tmp_path / "broken.py"
    p.write_text("import no_such_module_xyz\n")
    with pytest.raises(ValueError):
        load_reward(f"{p}:f")


# --------------------------------------------------------------------------- #
# combine_rewards
# --------------------------------------------------------------------------- #


def ones(prompts, completions, **kw):
    return [1.0] * len(completions)


def lengths(prompts, completions, **kw):
    return [float(len(c)) for c in completions]


def sometimes_none(prompts, completions, **kw):
    return [None if i % 2 else 2.0 for i in range(len(completions))]


def wrong_length(prompts, completions, **kw):
    return [1.0]


def test_combine_rewards_weighting():
    completions = ["a", "bbb"]
    total, per = combine_rewards([ones, lengths], [0.5, 2.0], ["p", "p"], completions)
    assert total == [0.5 + 2.0, 0.5 + 6.0]
    assert per == {"ones": [1.0, 1.0], "lengths": [1.0, 3.0]}


def test_combine_rewards_default_weights_and_columns():
    total, per = combine_rewards(
        [math_reward, ones], None, ["p", "p"], [r"\boxed{1}", r"\boxed{2}"], answer=["1", "1"]
    )
    assert total == [2.0, 1.0]
    assert per["math_reward"] == [1.0, 0.0]


def test_combine_rewards_none_entries():
    total, per = combine_rewards([sometimes_none, ones], [1.0, 1.0], None, ["a", "b", "c"])
    assert total == [3.0, 1.0, 3.0]
    assert math.isnan(per["sometimes_none"][1])


def test_combine_rewards_length_check():
    with pytest.raises(ValueError, match="wrong_length"):
        combine_rewards([ones, wrong_length], None, ["p", "p"], ["a", "b"])


def test_combine_rewards_weights_mismatch():
    with pytest.raises(ValueError):
        combine_rewards([ones, lengths], [1.0], None, ["a"])


def test_combine_rewards_duplicate_names():
    _, per = combine_rewards([ones, ones], None, None, ["a"])
    assert set(per) == {"ones", "ones_2"}
