"""Tests for anglerank.rewards.grading (the math-verify answer judge) and anglerank.rewards
(the TRL-style math rewards, loading and combining reward functions).

The expectations come from the spec (math-verify's notion of equivalence, TRL's
answer markers plus GSM8K's ``####``, the boxed|any rule, near misses stay wrong),
not from the code's output."""

from __future__ import annotations

import math
import threading

import pytest

from anglerank.errors import UserError
from anglerank.rewards import grading
from anglerank.rewards.grading import ANSWER_FORMATS, DEFAULT_ANSWER_FORMAT, grade, reference_answer
from anglerank.rewards import (
    NonFiniteReward,
    RewardError,
    combine_rewards,
    load_reward,
    math_reward,
    math_reward_any,
)

# --------------------------------------------------------------------------- #
# grade: equivalent forms are the same answer (completion, reference)
# --------------------------------------------------------------------------- #

EQUIVALENT = [
    # fractions and decimals
    (r"\boxed{\frac{1}{2}}", "0.5"),
    (r"\boxed{0.5}", r"\frac{1}{2}"),
    (r"\boxed{1/2}", r"\frac{1}{2}"),
    (r"\boxed{\dfrac{1}{2}}", "1/2"),
    (r"\boxed{\tfrac{1}{2}}", "0.50"),
    (r"\boxed{\dfrac12}", r"\frac{1}{2}"),  # TeX shorthand
    (r"\boxed{\frac{2}{4}}", r"\frac{1}{2}"),
    (r"\boxed{-\frac{1}{2}}", r"\frac{-1}{2}"),
    (r"\boxed{0.333333}", r"\frac{1}{3}"),  # six decimals: math-verify's float_rounding
    (r"\boxed{18.00}", "18"),
    # sets (unordered), intervals, tuples
    (r"\boxed{\{1, 2\}}", r"\{2,1\}"),
    (r"\boxed{\{3,1,2\}}", r"\{1,2,3\}"),
    (r"\boxed{[0, 1)}", "[0,1)"),
    (r"\boxed{(-\infty, 2]}", r"(-\infty,2]"),
    (r"\boxed{(-\infty,-1)\cup(1,\infty)}", r"(-\infty,-1) \cup (1,\infty)"),
    (r"\boxed{\left( 1, 2 \right)}", "(1,2)"),
    (r"\boxed{(1, 2, 3)}", "(1,2,3)"),
    (r"\boxed{(\frac{1}{2}, 2)}", "(0.5, 2)"),
    # roots and symbols
    (r"\boxed{\sqrt2}", r"\sqrt{2}"),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}"),
    (r"\boxed{2\sqrt{3}}", r"\sqrt{12}"),
    (r"\boxed{2\pi}", r"2\pi"),
    (r"\boxed{\frac{\pi}{2}}", r"\frac{\pi}{2}"),
    (r"\boxed{\infty}", r"\infty"),
    (r"\boxed{x^2+2x+1}", "(x+1)^2"),
    (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
    # percent as math-verify reads it: 10% is 0.1
    (r"\boxed{10\%}", r"10\%"),
    (r"\boxed{0.1}", r"10\%"),
    # assignments
    (r"\boxed{x = 3}", "3"),
    (r"\boxed{3}", "x = 3"),
    # thousands separators, currency, units, degrees
    (r"\boxed{1,000}", "1000"),
    (r"\boxed{1000}", "1,000"),
    (r"\boxed{1{,}000}", "1000"),
    (r"\boxed{1,000,000}", "1000000"),
    (r"\boxed{15000}", r"\$15,\!000"),
    (r"\boxed{\$18}", "18"),
    (r"\boxed{10 \text{ cm}}", "10"),
    (r"\boxed{10\text{cm}^2}", "10"),
    (r"\boxed{90^\circ}", "90"),
    (r"\boxed{90}", r"90^{\circ}"),
    # scientific notation in LaTeX
    (r"\boxed{1.5 \times 10^{3}}", "1500"),
    # text answers
    (r"\boxed{\text{(A)}}", "(A)"),
    (r"\boxed{\text{Monday}}", "Monday"),
    # where the answer is in the completion
    (r"The answer is $\boxed{42}$.", "42"),
    (r"So the final answer is $12$.", "12"),  # TRL's "answer" + LaTeX marker
    (r"Answer: $\frac{3}{4}$", "0.75"),
    (r"$\boxed{3}$ but wait \boxed{4", "3"),  # an unclosed box is not an answer
]


@pytest.mark.parametrize("completion,reference", EQUIVALENT)
def test_equivalent_forms_match(completion, reference):
    assert grade(completion, reference) is True
    assert grade(completion, reference, "any") is True  # a marked answer is judged alike in both formats


# --------------------------------------------------------------------------- #
# grade: near misses and wrong forms stay wrong
# --------------------------------------------------------------------------- #

NOT_EQUIVALENT = [
    (r"\boxed{1000001}", "1000000"),
    (r"\boxed{999999}", "1,000,000"),
    (r"\boxed{1000000.5}", "1000000"),
    (r"\boxed{3.0000001}", "3"),
    (r"\boxed{0.3333}", r"\frac13"),
    (r"\boxed{0.33}", r"\frac{1}{3}"),
    (r"\boxed{3.14}", r"\pi"),
    (r"\boxed{3.1416}", r"\pi"),
    (r"\boxed{6.28}", r"2\pi"),
    (r"\boxed{1.41}", r"\sqrt{2}"),
    (r"\boxed{\frac{1}{2}}", r"-\frac{1}{2}"),
    (r"\boxed{-\infty}", r"\infty"),
    (r"\boxed{(0, 1]}", "[0,1)"),  # wrong brackets
    (r"\boxed{[0, 1]}", "[0,1)"),
    (r"\boxed{(-\infty, 2)}", r"(-\infty,2]"),
    (r"\boxed{(2, 1)}", "(1,2)"),  # tuples are ordered
    (r"\boxed{(1, 2, 3)}", "(1,2)"),
    (r"\boxed{\{1, 3\}}", r"\{1,2\}"),
    (r"\boxed{3\sqrt{2}}", r"\sqrt{12}"),
    (r"\boxed{10\%}", "10"),  # math-verify: 10% is 1/10
    (r"\boxed{x = 4}", "3"),
    (r"\boxed{11 \text{ cm}}", "10"),
    (r"\boxed{1.5 \times 10^{4}}", "1500"),
    (r"\boxed{\begin{pmatrix} 1 \\ 3 \end{pmatrix}}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
    (r"\boxed{B}", "(A)"),
    (r"\boxed{\text{Tuesday}}", r"\text{Monday}"),
    (r"\boxed{2x+1}", "2x-1"),
]


@pytest.mark.parametrize("completion,reference", NOT_EQUIVALENT)
def test_near_misses_and_wrong_forms_do_not_match(completion, reference):
    assert grade(completion, reference) is False
    assert grade(completion, reference, "any") is False


# --------------------------------------------------------------------------- #
# references: bare answers, MATH solutions, GSM8K solutions
# --------------------------------------------------------------------------- #


def test_reference_forms():
    gsm = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips.\n#### 72"
    assert grade(r"\boxed{72}", gsm) and not grade(r"\boxed{24}", gsm)
    assert grade(r"\boxed{1234}", "So it is 1,234.\n#### 1,234")
    math_solution = r"Adding, $x = \frac{6}{12}$, so the answer is $\boxed{\dfrac12}$."
    assert grade(r"\boxed{0.5}", math_solution) and not grade(r"\boxed{6}", math_solution)
    assert grade(r"\boxed{5}", 5) and grade(r"\boxed{7.5}", 7.5)
    assert grade(r"\boxed{5}", "$5$") and grade(r"\boxed{40}", r"\$40")
    for empty in (None, "", "   ", "####"):
        assert grade(r"\boxed{5}", empty) is False


def test_reference_answer():
    assert reference_answer("Natalia sold 48/2 = 24 clips.\n#### 72") == "72"
    assert reference_answer("#### 1,234\n") == "1,234"
    sol = r"so $\boxed{\dfrac12}$"
    assert reference_answer(sol) == sol  # math-verify finds the box itself
    assert reference_answer(" 5 ") == "5" and reference_answer(5) == "5" and reference_answer(7.5) == "7.5"
    assert reference_answer("  ") is None and reference_answer(None) is None


# --------------------------------------------------------------------------- #
# GSM8K's #### marker in completions
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "completion,reference,expected",
    [
        ("She sold 48 + 24 = 72 clips.\n#### 72", "72", True),
        ("#### 72.", "72", True),  # a closing full stop is not part of the number
        ("#### 1,234", "1234", True),
        ("#### $18.00", "18", True),
        ("#### 73", "72", False),
        ("48 + 24 = 72\n#### 71\nI double-checked: 72", "72", False),  # the #### line is the answer
        ("#### ", "72", False),
        (r"So \boxed{72}. #### 71", "72", True),  # a box comes first, as in TRL
    ],
)
def test_gsm8k_marker_in_completion(completion, reference, expected):
    assert grade(completion, reference) is expected
    assert grade(completion, reference, "any") is expected


# --------------------------------------------------------------------------- #
# answer_format: boxed (TRL) vs any
# --------------------------------------------------------------------------- #


def test_answer_formats():
    assert ANSWER_FORMATS == ("boxed", "any") and DEFAULT_ANSWER_FORMAT == "boxed"
    with pytest.raises(ValueError, match="boxed, any"):
        grade(r"\boxed{1}", "1", "last")


@pytest.mark.parametrize(
    "completion,reference,boxed,any_",
    [
        ("The answer is 12", "12", False, True),
        ("The answer is 12.", "12", False, True),
        ("so the total is 42 apples.", "42", False, True),
        ("so the total is 42 apples.", "43", False, False),
        ("First 3 apples, then 5 more, so 8", "8", False, True),  # the last number
        ("First 3 apples, then 5 more, so 8", "3", False, False),  # not an earlier one
        ("It costs 1,234 dollars", "1234", False, True),
        ("The answer is 12. I checked it with 3 methods.", "12", False, True),  # "answer" beats the last number
        ("Answer: x = 5, as 2 + 3 is 5", "5", False, True),
        (r"so we get $\frac{3}{4}$", "0.75", False, True),
        ("probability 3/4", r"\frac34", False, True),
        ("I am not sure.", "72", False, False),
        ("", "72", False, False),
        (r"\boxed{7} and then 8", "8", False, False),  # a marked answer is never overridden
        (r"\boxed{7} and then 8", "7", True, True),
        # "any" takes numbers, not expressions: an unfinished sum or a restated problem has not answered
        ("He buys 6 more, so he has 9 - 6 = ", "3", False, False),
        (r"We need $\sqrt{5^5+5^5+5^5+5^5+5^5}$. Let me think", "125", False, False),
        ("Answer: -5 degrees", "-5", False, True),
        ("the answer is 1 / 6", r"\frac{1}{6}", False, True),
        ("the answer is 1 / 6", "6", False, False),
        ("The answer is 1000001", "1000000", False, False),
    ],
)
def test_boxed_vs_any(completion, reference, boxed, any_):
    assert grade(completion, reference, "boxed") is boxed
    assert grade(completion, reference) is boxed  # boxed is the default
    assert grade(completion, reference, "any") is any_


def test_several_boxes_form_a_set_as_in_trl():
    assert grade(r"The roots are $\boxed{2}$ and $\boxed{3}$.", r"2, 3")
    assert grade(r"The roots are $\boxed{2}$ and $\boxed{3}$.", r"\{3, 2\}")
    assert not grade(r"The roots are $\boxed{2}$ and $\boxed{3}$.", "2")


def test_boxed_matches_trl_accuracy_reward():
    """On well-formed LaTeX, ``boxed`` gives TRL's accuracy_reward verdicts."""
    trl_rewards = pytest.importorskip("trl.rewards")
    cases = [
        (r"My answer is \boxed{\frac{1}{3}}", r"$\frac{1}{3}$"),
        (r"My answer is \boxed{\frac{1}{2}}", r"$\frac{1}{3}$"),
        (r"so $\boxed{0.5}$", r"Thus $\boxed{\frac{1}{2}}$."),
        (r"The final answer is $x = 3$.", r"$\boxed{3}$"),
        ("The answer is 12", r"$\boxed{12}$"),
        (r"\boxed{[0,1)}", r"$\boxed{[0,1)}$"),
        (r"\boxed{(0,1]}", r"$\boxed{[0,1)}$"),
        (r"\boxed{\{2,1\}}", r"$\boxed{\{1,2\}}$"),
        (r"\boxed{1000001}", r"$\boxed{1000000}$"),
        (r"\boxed{10 \text{ cm}}", r"$\boxed{10}$"),
        (r"no answer here 7", r"$\boxed{7}$"),
    ]
    trl = trl_rewards.accuracy_reward([[{"role": "assistant", "content": c}] for c, _ in cases],
                                      [s for _, s in cases])
    ours = [float(grade(c, s, "boxed")) for c, s in cases]
    assert ours == trl


# --------------------------------------------------------------------------- #
# robustness: threads, exceptions, huge numbers
# --------------------------------------------------------------------------- #


def test_grade_in_a_worker_thread():
    """math-verify's default timeouts use signal.alarm, which raises outside the main thread."""
    out: dict = {}

    def work():
        try:
            out["r"] = [grade(r"\boxed{\frac{1}{2}}", "0.5"), grade(r"\boxed{3}", "4"),
                        grade("so 42", "42", "any"), grade("#### 7", "7")]
        except BaseException as e:  # noqa: BLE001 - reported below
            out["e"] = e

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert not t.is_alive()
    assert "e" not in out, out.get("e")
    assert out["r"] == [True, False, True, True]


def test_huge_numbers_are_refused_not_hung():
    # in a worker thread math-verify has no timeout: sympy would run for ever
    out: dict = {}
    cases = [(r"\boxed{10^{10^{10}}}", "1"), (r"\boxed{(10^{100})!}", "1"), (r"\boxed{9^{9^{9}}}", "9^{9^{9}}"),
             (r"\boxed{1e99999999}", "1")]
    t = threading.Thread(target=lambda: out.setdefault("r", [grade(c, r) for c, r in cases]))
    t.start()
    t.join(60)
    assert not t.is_alive() and out["r"] == [False, False, False, False]
    assert grade(r"\boxed{2^{2023}}", "2^{2023}") and not grade(r"\boxed{2^{2023}}", "2^{2022}")


@pytest.mark.parametrize("where", ["parse", "verify"])
@pytest.mark.parametrize("exc", [RuntimeError("boom"), RecursionError(), grading.TimeoutException()])
def test_an_exception_inside_math_verify_is_false(monkeypatch, where, exc):
    def boom(*a, **k):
        raise exc

    grading._parse_reference.cache_clear()
    monkeypatch.setattr(grading, where, boom)
    assert grade(r"\boxed{1}", "1") is False
    assert math_reward(None, [r"\boxed{1}"], answer=["1"]) == [0.0]
    grading._parse_reference.cache_clear()


@pytest.mark.parametrize("odd", [None, 42, "\\boxed{", "}}}{{{", "\\frac{", "$" * 50, "\\boxed{\\sqrt[}", "x" * 20000])
def test_odd_completions_are_false_not_errors(odd):
    assert grade(odd, "1") is False
    assert grade(odd, "1", "any") is False


# --------------------------------------------------------------------------- #
# math_reward / math_reward_any
# --------------------------------------------------------------------------- #


def test_math_reward_strings():
    completions = [r"... so \boxed{\frac{1}{2}}", "I think it is 7", "#### 1,234", "no idea", r"\boxed{1000001}"]
    answers = ["0.5", "7", "1234", "3", "1000000"]
    assert math_reward(["p"] * 5, completions, answer=answers) == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert math_reward_any(["p"] * 5, completions, answer=answers) == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_math_reward_solution_column():
    assert math_reward(None, [r"\boxed{2}"], solution=[r"so $\boxed{2}$"]) == [1.0]
    assert math_reward_any(None, ["it is 2"], solution=["2"]) == [1.0]


def test_math_reward_conversational():
    completions = [
        [{"role": "assistant", "content": r"The answer is $\boxed{72}$."}],
        [{"role": "assistant", "content": "draft 1"}, {"role": "assistant", "content": r"\boxed{71}"}],
        [{"role": "assistant", "content": [{"type": "text", "text": r"\boxed{72}"}]}],
        [{"role": "assistant", "content": "It is 72"}],
        {"role": "assistant", "content": r"\boxed{72}"},
        [],
        None,
    ]
    prompts = [[{"role": "user", "content": "q"}]] * len(completions)
    answers = ["72"] * len(completions)
    assert math_reward(prompts, completions, answer=answers) == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert math_reward_any(prompts, completions, answer=answers) == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_math_reward_reference_extraction():
    completions = [r"\boxed{72}", r"\boxed{\frac{1}{2}}", r"\boxed{5}", r"\boxed{5}"]
    answers = ["Natalia sold 48/2 = 24 clips in May.\n#### 72", r"Hence $\boxed{\dfrac12}$.", 5, None]
    assert math_reward(None, completions, answer=answers) == [1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("reward", [math_reward, math_reward_any])
def test_math_reward_errors(reward):
    with pytest.raises(RewardError, match="answer"):
        reward(["p"], ["1"])  # no answer column
    with pytest.raises(RewardError, match="1 answers for 2 completions"):
        reward(["p", "p"], ["1", "2"], answer=["1"])
    with pytest.raises(RewardError, match="string"):
        reward(["p"], ["1"], answer="1")
    assert issubclass(RewardError, ValueError) and issubclass(RewardError, UserError)


def test_math_reward_returns_floats_in_a_thread():
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", math_reward(None, [r"\boxed{4}", r"\boxed{5}"],
                                                                        answer=["4", "4"])))
    t.start()
    t.join(60)
    assert out["r"] == [1.0, 0.0] and all(type(x) is float for x in out["r"])


# --------------------------------------------------------------------------- #
# load_reward
# --------------------------------------------------------------------------- #


def test_load_reward_builtin():
    assert load_reward("math") is math_reward
    assert load_reward("builtin:math") is math_reward
    assert load_reward(" math ", answer_format="boxed") is math_reward
    assert load_reward("math", answer_format="any") is math_reward_any
    assert load_reward("builtin:math", "any") is math_reward_any
    with pytest.raises(RewardError):
        load_reward("builtin:nope")
    with pytest.raises(RewardError, match="boxed, any"):
        load_reward("math", answer_format="last")


def test_load_reward_module_path():
    assert load_reward("anglerank.rewards:math_reward") is math_reward
    assert load_reward("anglerank.rewards:math_reward_any") is math_reward_any
    assert load_reward("anglerank.rewards:math_reward", answer_format="any") is math_reward  # only "math" picks
    assert callable(load_reward("os.path:join"))


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


def nan_reward(prompts, completions, **kw):
    return [float("nan")] * len(completions)


def test_combine_rewards_weighting():
    completions = ["a", "bbb"]
    total, per = combine_rewards([ones, lengths], [0.5, 2.0], ["p", "p"], completions)
    assert total == [0.5 + 2.0, 0.5 + 6.0]
    assert per == {"ones": [1.0, 1.0], "lengths": [1.0, 3.0]}


def test_combine_rewards_default_weights_and_columns():
    total, per = combine_rewards(
        [math_reward, math_reward_any, ones], None, ["p", "p"], [r"\boxed{1}", "it is 1"], answer=["1", "1"]
    )
    assert total == [3.0, 2.0]
    assert per["math_reward"] == [1.0, 0.0] and per["math_reward_any"] == [1.0, 1.0]


def test_combine_rewards_none_entries():
    total, per = combine_rewards([sometimes_none, ones], [1.0, 1.0], None, ["a", "b", "c"])
    assert total == [3.0, 1.0, 3.0]
    assert math.isnan(per["sometimes_none"][1])


def test_combine_rewards_non_finite():
    with pytest.raises(NonFiniteReward) as ei:
        combine_rewards([nan_reward], None, None, ["a"])
    assert ei.value.func == "nan_reward" and ei.value.index == 0


def test_combine_rewards_length_check():
    with pytest.raises(ValueError, match="wrong_length"):
        combine_rewards([ones, wrong_length], None, ["p", "p"], ["a", "b"])


def test_combine_rewards_weights_mismatch():
    with pytest.raises(ValueError):
        combine_rewards([ones, lengths], [1.0], None, ["a"])


def test_combine_rewards_duplicate_names():
    _, per = combine_rewards([ones, ones], None, None, ["a"])
    assert set(per) == {"ones", "ones_2"}
