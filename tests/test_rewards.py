"""Tests for anglerank.grading (answer extraction, normalisation, equivalence) and
anglerank.rewards (the TRL-style math reward, loading and combining reward functions)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from anglerank.errors import UserError
from anglerank.grading import answers_match, extract_answer, normalize_answer, reference_answer, to_number
from anglerank.rewards import RewardError, combine_rewards, load_reward, math_reward

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
    (r"\boxed{0.333333}", r"\frac13", True),  # 1/3 has no exact decimal: six digits suffice
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
    # an exact reference admits no tolerance (issue 10: this case used to expect a match)
    ("1000000.5", "1000000", False),
    ("1.001", "1", False),
]


@pytest.mark.parametrize("pred_text,ref,expected", MATCH_CASES)
def test_answers_match(pred_text, ref, expected):
    pred = extract_answer(pred_text)
    assert answers_match(pred, ref) is expected


# Near misses (issue 10, item 8): numbers compare exactly unless the reference is
# inexact (see anglerank/grading.py). (prediction, reference, expected)
NUMBER_CASES = [
    # exact references: integers and terminating decimals admit no tolerance
    ("1000001", "1000000", False),
    ("3.0000001", "3", False),
    ("0.0000001", "0", False),
    ("2.9999999", "3", False),
    ("-0.0000001", "0", False),
    ("999999999999", "1000000000000", False),
    ("1234.564", "1234.56", False),  # 6 significant digits but only 2 decimals: money, exact
    ("0.031254", "0.03125", False),  # 1/32, exact
    ("3.14159", "3.14", False),  # too short to be taken as a rounded value
    ("3", "3.0000001", False),
    ("0.5", "0.50000001", False),  # a long reference is rounded only to its own last digit
    ("1000000", "1,000,000", True),
    ("1e6", "1000000", True),
    ("0.0", "0", True),
    ("-0", "0", True),
    (r"\frac{3}{4}", "0.75", True),
    # references without a finite decimal expansion: about six significant digits
    ("0.333333", r"\frac{1}{3}", True),
    ("0.3333333333333333", "1/3", True),
    ("0.166667", r"\frac{1}{6}", True),
    ("0.666666", r"\frac{2}{3}", True),  # cut, not rounded: one unit in the last digit
    ("0.6666666666666666", "2/3", True),
    ("-0.333333", r"-\frac{1}{3}", True),
    ("33.3333", "100/3", True),
    ("0.142857", r"\frac{1}{7}", True),
    ("0.33333", r"\frac{1}{3}", False),  # five digits
    ("0.166666", r"\frac{1}{6}", True),  # cut
    ("0.166665", r"\frac{1}{6}", False),  # off by more than a unit in its last digit
    ("0.1667", r"\frac{1}{6}", False),
    ("0.3334", r"\frac{1}{3}", False),
    ("333333", "1000000/3", True),  # 333333.33...: the integer is within one unit of its last digit
    ("333334", "1000000/3", True),  # rounded up: still the reference at the prediction's last digit
    ("333335", "1000000/3", False),
    ("333333000000", "1000000000000/3", False),  # six right digits, but written as an exact integer
    ("333333/1000000", "1/3", False),  # a fraction claims to be exact
    # rounded references (>= 6 significant digits, >= 5 decimals): half a unit of the last digit
    ("3.14159265358979", "3.14159", True),
    ("3.141592653589793", "3.14159", True),
    ("3.1416", "3.14159", False),
    ("3.14158", "3.14159", False),
    ("3.141585", "3.14159", True),  # exactly half a unit
    ("3.141584", "3.14159", False),
    (r"\frac{1}{3}", "0.333333", True),
    ("0.69314718", "0.693147", True),
    ("1.4142136", "1.41421", True),
    ("1.41422", "1.41421", False),
    # inside tuples the same rules apply element by element
    ("(1000001, 2)", "(1000000, 2)", False),
    ("(0.333333, 2)", r"(\frac{1}{3}, 2)", True),
]


@pytest.mark.parametrize("pred,ref,expected", NUMBER_CASES)
def test_numbers_compare_exactly_unless_the_reference_is_inexact(pred, ref, expected):
    assert answers_match(pred, ref) is expected


def test_near_misses_through_the_math_reward():
    completions = [r"\boxed{1000001}", r"\boxed{3.0000001}", r"\boxed{0.0000001}", r"\boxed{1000000.5}",
                   r"\boxed{1000000}", r"\boxed{3}", r"\boxed{0}"]
    answers = ["1000000", "3", "0", "#### 1000000", "1000000", "3", "0"]
    assert math_reward(None, completions, answer=answers) == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_huge_exponents_do_not_hang():
    assert to_number("1e-99999999") is None
    assert answers_match("1e99999999", "1") is False
    assert answers_match("1e99999999", "1e99999999") is True  # equal strings still match


def test_reference_answer():
    assert reference_answer("Natalia sold 48/2 = 24 clips.\n#### 72") == "72"
    assert reference_answer(r"so $\boxed{\dfrac12}$") == r"\dfrac12"
    assert reference_answer(" 5 ") == "5" and reference_answer(5) == "5" and reference_answer(7.5) == "7.5"
    assert reference_answer("  ") is None and reference_answer(None) is None


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
    assert load_reward("anglerank.rewards:math_reward") is math_reward
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
        "anglerank.rewards:no_such_function",
        "no_such_module_xyz:f",
        "/nonexistent/dir/reward.py:f",
        "anglerank.rewards",
        ":f",
        "",
    ],
)
def test_load_reward_errors(spec):
    with pytest.raises(RewardError) as ei:
        load_reward(spec)
    assert "\n" not in str(ei.value)
    assert isinstance(ei.value, UserError) and isinstance(ei.value, ValueError)  # exit 2; old callers still catch


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
