"""Answer extraction, normalisation, the range rule and the vote; every gold answer of the validation CSVs."""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from aimo_kernel.answers import (
    AnswerRule,
    extract_answer,
    extract_boxed,
    majority_vote,
    normalize,
    parse_number,
    to_int,
)

AIMO12 = AnswerRule()  # mod 1000, answers 0..999
AIMO3 = AnswerRule(modulus=None, max_answer=99_999)
KEEP_NEGATIVE = AnswerRule(drop_negative=False)
SIGNED = AnswerRule(modulus=None, min_answer=-10, max_answer=10, drop_negative=False)

# The repository's sibling folder `shared` holds the validation CSVs (id,problem,answer).
DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{5}", "5"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{a{b{c}}d}", "a{b{c}}d"),
        ("\\boxed {7}", "7"),
        ("\\boxed\n{42}", "42"),
        ("\\fbox{8}", "8"),
        ("\\boxed{1} and then \\fbox{9}", "9"),
        ("\\fbox{9} and then \\boxed{3}", "3"),
        ("\\fbox{4} \\fboxsep", "4"),
        ("\\boxed 5$.", "5"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed{}", ""),
        ("$\\boxed{\\boxed{6}}$", "6"),  # the box that starts last is the inner one
        ("no box here", None),
        ("", None),
        ("\\boxed", None),
        ("\\boxed{12", None),
        ("\\boxed{5} and a cut-off \\boxed{12", None),
    ],
    ids=lambda v: repr(v)[:24] if isinstance(v, str) else None,
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # plain numbers
        ("5", 5),
        ("025", 25),
        ("-7", -7),
        ("+3", 3),
        ("- 5", -5),
        ("\u22125", -5),
        ("-0", 0),
        ("3.5", 3.5),
        (".5", 0.5),
        ("5.", 5),
        ("5,", 5),
        ("5.0", 5),
        (" 5 ", 5),
        # thousands separators
        ("1,000", 1000),
        ("1{,}000", 1000),
        ("10,\\!080", 10080),
        ("1\\,000", 1000),
        ("1\\,000\\,000", 1_000_000),
        ("1 000", 1000),
        ("12,345,678", 12_345_678),
        ("1,000.5", 1000.5),
        # lists and malformed groups are not one number
        ("3, 5", None),
        ("3,5", None),
        ("1,00", None),
        ("0,025", None),
        ("3 5", None),
        ("1,2,3", None),
        # fractions
        ("\\frac{1}{2}", 0.5),
        ("\\dfrac{10}{2}", 5),
        ("\\tfrac{3}{4}", 0.75),
        ("\\frac12", 0.5),
        ("\\frac{1}2", 0.5),
        ("-\\frac{3}{2}", -1.5),
        ("\\frac{-3}{2}", -1.5),
        ("\\frac{1}{0}", None),
        ("3/4", 0.75),
        ("-6/3", -2),
        ("1/0", None),
        ("1/2/3", None),
        ("2\\frac{1}{2}", 2.5),
        ("2 \\frac{1}{2}", 2.5),
        ("2\\frac{3}{2}", None),
        # wrappers and units
        ("\\text{5}", 5),
        ("\\mathbf{5}", 5),
        ("\\textbf{5}", 5),
        ("\\mathrm{12}", 12),
        ("{5}", 5),
        ("{{5}}", 5),
        ("\\boxed{7}", 7),
        ("18 \\text{ cm}", 18),
        ("18\\text{cm}", 18),
        ("5 \\text{ cm}^2", 5),
        ("18 \\text{square units}", 18),
        ("18 dollars", 18),
        ("\\text{(C) } 5", None),
        ("\\textbf{(B)}", None),
        ("(C)", None),
        ("5 \\text{ and } 7", None),
        # currency, percent, degrees, delimiters
        ("\\$18", 18),
        ("$\\$18$", 18),
        ("10\\%", 10),
        ("10%", 10),
        ("90^\\circ", 90),
        ("90^{\\circ}", 90),
        ("90\u00b0", 90),
        ("$5$", 5),
        ("\\(5\\)", 5),
        ("\\[ 5 \\]", 5),
        ("\\displaystyle \\frac{10}{2}", 5),
        # equations
        ("x = 5", 5),
        ("n=12", 12),
        ("\\angle A = 90^\\circ", 90),
        ("x = 5, y = 3", None),
        ("a = b = 3", None),
        # powers, products, scientific
        ("2^{10}", 1024),
        ("10^5", 100_000),
        ("10^{-2}", 0.01),
        ("2^10", None),
        ("3 \\cdot 5", 15),
        ("2 \\times 10^{3}", 2000),
        ("1e3", 1000),
        ("2.5e-1", 0.25),
        ("2^{100000}", None),
        # not numbers
        ("\\sqrt{2}", None),
        ("2\\sqrt{2}", None),
        ("\\pi", None),
        ("x+1", None),
        ("1-2", None),
        ("--5", None),
        ("5!", None),
        ("five", None),
        ("\\infty", None),
        ("", None),
        ("   ", None),
        ("{", None),
        ("}", None),
    ],
    ids=lambda v: repr(v)[:24] if isinstance(v, str) else None,
)
def test_parse_number(raw, expected):
    got = parse_number(raw)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_parse_number_beyond_float_range_is_infinite_not_an_error():
    assert parse_number("9^{400}") == math.inf
    assert parse_number("-9^{400}") == -math.inf
    assert normalize("9^{400}", AIMO12) == 9**400 % 1000


@pytest.mark.parametrize(
    ("value", "tolerance", "expected"),
    [
        (3.0, 0.2, 3),
        (2.9999, 0.2, 3),
        (3.0001, 0.2, 3),
        (-2.9999, 0.2, -3),
        (2.8, 0.2, 3),  # boundary is inclusive despite 2.8 being stored as 2.7999...
        (3.2, 0.2, 3),
        (2.79, 0.2, None),
        (3.21, 0.2, None),
        (2.5, 0.2, None),
        (3.0, 0.0, 3),
        (3.0000001, 0.0, None),
        (2.6, 0.5, 3),
        (-0.1, 0.2, 0),
        (math.inf, 0.2, None),
        (-math.inf, 0.2, None),
        (math.nan, 0.2, None),
        (1e300, 0.2, None),
        (2.0**60, 0.2, None),
        (1e15, 0.2, 10**15),
    ],
)
def test_to_int(value, tolerance, expected):
    assert to_int(value, tolerance) == expected


@pytest.mark.parametrize(
    ("raw", "rule", "expected"),
    [
        ("5", AIMO12, 5),
        ("999", AIMO12, 999),
        ("1000", AIMO12, 0),
        ("1200", AIMO12, 200),
        ("57447", AIMO12, 447),
        ("-5", AIMO12, None),
        ("-5", KEEP_NEGATIVE, 995),
        ("-0.1", AIMO12, 0),
        ("2.9999", AIMO12, 3),
        ("2.5", AIMO12, None),
        ("\\frac{1}{2}", AIMO12, None),
        ("\\dfrac{10}{2}", AIMO12, 5),
        ("2^{100}", AIMO12, 2**100 % 1000),
        ("123456789012345678901", AIMO12, 901),  # exact beyond float precision
        ("1e3", AIMO12, 0),
        ("abc", AIMO12, None),
        ("57447", AIMO3, 57447),
        ("99999", AIMO3, 99_999),
        ("100000", AIMO3, None),
        ("123456", AIMO3, None),
        ("10^5", AIMO3, None),
        ("1,000", AIMO3, 1000),
        ("-1", AIMO3, None),
        ("-3", SIGNED, -3),
        ("-11", SIGNED, None),
        ("11", SIGNED, None),
        ("0", AnswerRule(min_answer=1, max_answer=10), None),
        ("2.7", AnswerRule(tolerance=0.3), 3),
        ("2.7", AnswerRule(tolerance=0.0), None),
    ],
    ids=lambda v: repr(v)[:24] if isinstance(v, str) else None,
)
def test_normalize(raw, rule, expected):
    assert normalize(raw, rule) == expected


@pytest.mark.parametrize(
    ("completion", "rule", "expected"),
    [
        ("The answer is $\\boxed{42}$.", AIMO12, 42),
        ("\\boxed{\\frac{1}{2}}", AIMO12, None),
        ("\\boxed{\\dfrac{10}{2}}", AIMO12, 5),
        ("\\boxed{3} wait, no: \\boxed{4}", AIMO12, 4),
        ("\\boxed{4} and a cut-off \\boxed{12", AIMO12, None),
        ("the answer is 42", AIMO12, None),
        ("\\boxed{123456}", AIMO3, None),
        ("\\boxed{123456}", AIMO12, 456),
        ("\\boxed{12{,}345}", AIMO3, 12_345),
    ],
    ids=lambda v: repr(v)[:24] if isinstance(v, str) else None,
)
def test_extract_answer(completion, rule, expected):
    assert extract_answer(completion, rule) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"modulus": 1}, "AnswerRule.modulus must be None or an integer in [2, inf), got 1"),
        ({"modulus": 0}, "AnswerRule.modulus must be None or an integer in [2, inf), got 0"),
        ({"modulus": 2.5}, "AnswerRule.modulus must be None or an integer in [2, inf), got 2.5"),
        ({"min_answer": 0.5}, "AnswerRule.min_answer must be an integer, got 0.5"),
        ({"min_answer": 5, "max_answer": 4}, "AnswerRule.max_answer must be an integer in [5, inf), got 4"),
        ({"tolerance": -0.1}, "AnswerRule.tolerance must be a number in [0, 0.5], got -0.1"),
        ({"tolerance": 0.6}, "AnswerRule.tolerance must be a number in [0, 0.5], got 0.6"),
        ({"tolerance": math.nan}, "AnswerRule.tolerance must be a number in [0, 0.5], got nan"),
        ({"drop_negative": "yes"}, "AnswerRule.drop_negative must be True or False, got 'yes'"),
    ],
)
def test_answer_rule_validation(kwargs, message):
    with pytest.raises(ValueError) as info:
        AnswerRule(**kwargs)
    assert str(info.value) == message


def test_answer_rule_defaults_are_the_aimo12_rule():
    assert (AIMO12.modulus, AIMO12.min_answer, AIMO12.max_answer) == (1000, 0, 999)
    assert AIMO12.tolerance == 0.2 and AIMO12.drop_negative


@pytest.mark.parametrize(
    ("answers", "kwargs", "winner", "counts", "margin"),
    [
        ([1, 2, 2, 3], {}, 2, [(2, 2.0), (3, 1.0), (1, 1.0)], 1.0),
        ([5, None, 5, 3], {}, 5, [(5, 2.0), (3, 1.0)], 1.0),
        ([7], {}, 7, [(7, 1.0)], 1.0),
        ([1, 2], {"tie_break": "largest"}, 2, [(2, 1.0), (1, 1.0)], 0.0),
        ([1, 2], {"tie_break": "smallest"}, 1, [(1, 1.0), (2, 1.0)], 0.0),
        ([1, 2], {"tie_break": "first"}, 1, [(1, 1.0), (2, 1.0)], 0.0),
        ([2, 1], {"tie_break": "first"}, 2, [(2, 1.0), (1, 1.0)], 0.0),
        ([3, 1, 3, 1, 9], {"tie_break": "first"}, 3, [(3, 2.0), (1, 2.0), (9, 1.0)], 0.0),
        ([1, 2, 2], {"weights": [3.0, 1.0, 1.0]}, 1, [(1, 3.0), (2, 2.0)], 1.0),
        ([1, 2], {"weights": [0.5, 0.5], "tie_break": "smallest"}, 1, [(1, 0.5), (2, 0.5)], 0.0),
        ([1, None, 2], {"weights": [1.0, 100.0, 1.5]}, 2, [(2, 1.5), (1, 1.0)], 0.5),
        ([1, 2, 2], {"weights": [0.0, 0.0, 0.0]}, 2, [(2, 0.0), (1, 0.0)], 0.0),
    ],
)
def test_majority_vote(answers, kwargs, winner, counts, margin):
    result = majority_vote(answers, fallback=0, **kwargs)
    assert result.answer == winner and not result.is_fallback
    assert list(result.counts.items()) == counts
    assert result.num_valid == sum(a is not None for a in answers)
    assert result.margin == pytest.approx(margin)


@pytest.mark.parametrize("answers", [[], [None], [None, None, None]], ids=["empty", "one_none", "all_none"])
def test_majority_vote_falls_back_when_nothing_voted(answers):
    result = majority_vote(answers, fallback=7, tie_break="smallest")
    assert (result.answer, result.counts, result.num_valid) == (7, {}, 0)
    assert result.is_fallback and result.margin == 0.0


def test_majority_vote_does_not_depend_on_answer_order_except_under_first():
    answers = [4, 8, 4, 8, 1, None]
    for tie_break, expected in (("largest", 8), ("smallest", 4)):
        assert majority_vote(answers, fallback=0, tie_break=tie_break).answer == expected
        assert majority_vote(answers[::-1], fallback=0, tie_break=tie_break).answer == expected
    assert majority_vote(answers, fallback=0, tie_break="first").answer == 4
    assert majority_vote(answers[::-1], fallback=0, tie_break="first").answer == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tie_break": "random"}, "tie_break must be one of"),
        ({"weights": [1.0]}, "weights must have one entry per answer (2), got 1"),
        ({"weights": [1.0, -1.0]}, "weights[1] must be in [0, inf), got -1.0"),
        ({"weights": [math.nan, 1.0]}, "weights[0] must be in [0, inf), got nan"),
    ],
)
def test_majority_vote_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as info:
        majority_vote([1, 2], fallback=0, **kwargs)
    assert message in str(info.value)


# ---------------------------------------------------------------------------------------------------
# Regression guards on regex backtracking and huge inputs: each must answer well under a second.

MEGABYTE = 1_000_000


@pytest.mark.parametrize(
    "text",
    [
        "word " * (MEGABYTE // 5),
        "\\boxedness " * (MEGABYTE // 11),
        "\\boxed{" + "{" * MEGABYTE,
        "\\boxed{" + "1," * (MEGABYTE // 2) + "}",
        "\\boxed{" + "\\text{" * (MEGABYTE // 6) + "}",
        "\\boxed " + "9" * MEGABYTE,
    ],
    ids=["prose", "lookalikes", "unbalanced", "long_list", "nested_text", "bare_digits"],
)
def test_one_megabyte_completion_is_fast(text):
    start = time.perf_counter()
    assert extract_answer(text, AIMO12) is None
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "raw",
    ["1" * MEGABYTE, "1 " * (MEGABYTE // 2), "a " * (MEGABYTE // 2), "{" * MEGABYTE, "=" * MEGABYTE],
    ids=["digits", "spaced_digits", "words", "braces", "equals"],
)
def test_parse_number_of_one_megabyte_is_fast(raw):
    start = time.perf_counter()
    assert parse_number(raw) is None
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------------------------------
# Every gold answer of the validation CSVs, written the ways a model writes it.


def _thousands(g: int, sep: str) -> str | None:
    return f"{g:,}".replace(",", sep) if abs(g) >= 1000 else None


FORMS: dict[str, Callable[[int], str | None]] = {
    "sentence": lambda g: f"The answer is $\\boxed{{{g}}}$.",
    "period": lambda g: f"\\boxed{{{g}.}}",
    "point0": lambda g: f"\\boxed{{{g}.0}}",
    "spaces": lambda g: f"\\boxed{{ {g} }}",
    "text": lambda g: f"\\boxed{{\\text{{{g}}}}}",
    "mathbf": lambda g: f"\\boxed{{\\mathbf{{{g}}}}}",
    "fbox": lambda g: f"\\fbox{{{g}}}",
    "equation": lambda g: f"\\boxed{{n = {g}}}",
    "comma": lambda g: None if (t := _thousands(g, ",")) is None else f"\\boxed{{{t}}}",
    "brace_comma": lambda g: None if (t := _thousands(g, "{,}")) is None else f"\\boxed{{{t}}}",
    "thin_space": lambda g: None if (t := _thousands(g, "\\,")) is None else f"\\boxed{{{t}}}",
    "degree": lambda g: f"\\boxed{{{g}^\\circ}}",
    "dollar": lambda g: f"\\boxed{{\\${g}}}",
    "percent": lambda g: f"\\boxed{{{g}\\%}}",
    "unit": lambda g: f"\\boxed{{{g} \\text{{ cm}}}}",
    "zero_pad": lambda g: f"\\boxed{{{g:03d}}}" if 0 <= g < 100 else None,
    "frac": lambda g: f"\\boxed{{\\frac{{{2 * g}}}{{2}}}}",
    "last_box": lambda g: f"Maybe \\boxed{{{g + 1}}}? No, recheck: the answer is \\boxed{{{g}}}.",
}


def _gold_answers() -> list[tuple[str, str, int]]:
    """(file stem, row id, gold answer) for every row of every validation CSV; fails if there are none."""
    if not DATA_DIR.is_dir():
        pytest.fail(f"validation data folder {DATA_DIR} is missing (`shared/data` beside the repo)")
    paths = sorted(DATA_DIR.glob("*.csv"))
    if not paths:
        pytest.fail(f"no validation CSVs (*.csv) in {DATA_DIR}")
    rows = []
    for path in paths:
        with path.open(newline="", encoding="utf-8") as f:
            rows += [(path.stem, row["id"], int(row["answer"])) for row in csv.DictReader(f)]
    return rows


def _rule_and_expected(stem: str, gold: int) -> tuple[AnswerRule, int | None]:
    """The competition rule of a file, and the gold answer as that rule reads it (computed by hand)."""
    if stem == "aimo3_reference":  # AIMO3: answers 0..99999, no modulus
        return AIMO3, gold if 0 <= gold <= 99_999 else None
    return AIMO12, None if gold < 0 else gold % 1000


@pytest.fixture(scope="module")
def gold_answers() -> list[tuple[str, str, int]]:
    return _gold_answers()


def test_validation_data_is_present(gold_answers):
    assert len({stem for stem, _, _ in gold_answers}) >= 1
    assert any(stem == "aimo3_reference" for stem, _, _ in gold_answers)


@pytest.mark.parametrize("form", list(FORMS))
def test_every_gold_answer_in_every_form(gold_answers, form):
    failures, checked = [], 0
    for stem, row_id, gold in gold_answers:
        completion = FORMS[form](gold)
        if completion is None:
            continue  # the form does not apply to this answer (e.g. thousands separators below 1000)
        rule, expected = _rule_and_expected(stem, gold)
        got = extract_answer(completion, rule)
        checked += 1
        if got != expected:
            failures.append(f"{stem}:{row_id} gold={gold} {completion!r} -> {got} (expected {expected})")
    assert checked > 0, f"form {form!r} applied to no gold answer"
    assert not failures, f"{len(failures)} failures, first ones:\n" + "\n".join(failures[:10])
