"""The verifiable reward: answer extraction and exact numeric comparison, table-driven."""
from fractions import Fraction

import pytest

from tasks.verifiers import extract_answer, math_answer_reward, math_equal, parse_number

EXTRACT = [
    # (free text, extracted answer)
    (r"The result is \boxed{45}.", "45"),
    (r"first \boxed{3}, then corrected: \boxed{4}", "4"),  # the last box wins
    (r"\boxed{\frac{1}{20}}", r"\frac{1}{20}"),  # nested braces balanced
    (r"\boxed {7} and more text 99", "7"),  # a box beats a later number
    (r"broken \boxed{12 then 30", "30"),  # unbalanced box ignored: last number
    (r"\boxed{} but 45 appears", None),  # an empty box is no answer
    ("The answer is 72", "72"),
    ("the final answer is: -1,234.50 dollars", "-1,234.50"),
    ("So the answer is $18$. Then I checked 3 more cases.", "18"),
    ("The answer is 3.5.", "3.5"),
    ("The answer is blue.", "blue"),
    ("I think the answer is 5\nbut 6 is also said", "5"),
    ("Natalia sold 48/2 = 24 clips in May, 48+24 = 72 in total.", "72"),
    ("It costs 1,234 dollars", "1,234"),
    ("We get 0.05", "0.05"),
    ("The ratio is 1/20", "1/20"),
    ("The temperature fell to -3", "-3"),
    ("Compute 10-3", "3"),  # a binary minus is not a sign
    ("x=-3", "-3"),
    ("list: 1,2,3", "3"),  # commas not in groups of three are not thousands separators
    ("no number here", None),
    ("", None),
]


@pytest.mark.parametrize("text,expected", EXTRACT)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


EQUAL = [
    # (answer text, reference)
    ("45", "45"),
    ("45", "45.0"),
    ("45.00", "45"),
    ("1,234", "1234"),
    ("1234", "1,234"),
    ("-3", "-3"),
    ("+3", "3"),
    ("\u22123", "-3"),  # typographic minus
    ("1/20", "0.05"),
    ("0.05", "1/20"),
    (r"\boxed{\frac{1}{20}}", "0.05"),
    (r"\boxed{\dfrac{3}{4}}", "0.75"),
    (r"\boxed{x = 5}", "5"),
    ("The answer is $1,234.", "1234"),
    ("So 6 * 7 = 42. The answer is 42 apples.", "42"),
    ("48 + 24 = 72", "72"),
    ("The answer is 50%", "50"),
    ("The answer is Blue.", "blue"),  # non-numeric answers compare as case-folded text
    ("45", "He had 45 left. #### 45"),  # a worked reference: its final answer counts
]

NOT_EQUAL = [
    ("45", "54"),
    ("4", "45"),
    ("45", "4"),
    ("", "45"),
    ("no idea", "45"),
    ("-3", "3"),
    ("3", "-3"),
    ("45.01", "45"),
    ("0.33", "1/3"),  # exact comparison: no float tolerance
    ("1/20", "0.5"),
    ("1,234", "1.234"),
    ("12,34", "1234"),  # not a thousands group: the last number is 34
    ("The answer is 45. Later I add 1 more.", "46"),  # "The answer is" beats the later number
    (r"\boxed{45}, though 54 also appears", "54"),
    ("The answer is blue", "bluish"),
    ("The answer is blue", "45"),
    ("45", ""),
    (r"\boxed{} 45", "45"),
    ("1/0", "0"),
]


@pytest.mark.parametrize("answer,reference", EQUAL)
def test_math_equal_matches(answer, reference):
    assert math_equal(answer, reference)


@pytest.mark.parametrize("answer,reference", NOT_EQUAL)
def test_math_equal_near_misses(answer, reference):
    assert not math_equal(answer, reference)


@pytest.mark.parametrize("text,expected", [
    ("45", Fraction(45)),
    ("45.00", Fraction(45)),
    ("-1,234.5", Fraction(-2469, 2)),
    ("1/20", Fraction(1, 20)),
    (r"\frac{-2}{4}", Fraction(-1, 2)),
    (r"\$7", Fraction(7)),
    ("7.", Fraction(7)),
    ("45 apples", None),
    ("", None),
    ("-", None),
    ("1/0", None),
])
def test_parse_number(text, expected):
    assert parse_number(text) == expected


def test_reward_function_shape():
    rewards = math_answer_reward(["The answer is 4", r"\boxed{5}", ""], answer=["4", "4", "4"], prompts=["p"] * 3)
    assert rewards == [1.0, 0.0, 0.0]


def test_docstring_examples():
    import doctest

    import tasks.verifiers

    assert doctest.testmod(tasks.verifiers).failed == 0
