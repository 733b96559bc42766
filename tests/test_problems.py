"""The one problems reader: ambiguous files refused with one line naming the line; the gateway frame."""

from __future__ import annotations

import polars as pl
import pytest

from aimo_kernel.run.problems import ProblemSetError, bundled_problems_path, read_problem_frame, read_problems


def write(tmp_path, text: str):
    path = tmp_path / "p.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_bundled_sample():
    problems = read_problems(bundled_problems_path())
    assert len(problems) == 10
    assert all(p.answer is not None and p.problem for p in problems)


def test_answer_column_is_optional(tmp_path):
    problems = read_problems(write(tmp_path, 'id,problem\na1,"What is $1+1$?"\n'))
    assert problems[0].id == "a1" and problems[0].answer is None


def test_one_megabyte_problem_is_read(tmp_path):
    big = "x" * 1_000_000
    problems = read_problems(write(tmp_path, f"id,problem,answer\nbig,{big},3\n"))
    assert len(problems[0].problem) == 1_000_000


def test_quoted_commas_newlines_and_crlf_are_read(tmp_path):
    text = 'id,problem,answer\r\na,"Compute 1,000 + 1.\r\n\r\nThen stop.",1001\r\nb,x,\r\n'
    problems = read_problems(write(tmp_path, text))
    assert [(p.id, p.answer, p.line) for p in problems] == [("a", 1001, 2), ("b", None, 5)]
    assert problems[0].problem == "Compute 1,000 + 1.\r\n\r\nThen stop."


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("id,problem\n", "no problems"),
        ("id,question\n1,x\n", "missing column(s) problem; found id, question"),
        ("problem\nx\n", "missing column(s) id"),
        ("id,problem,answer\n1,x,seven\n", "line 2 (id '1'): answer 'seven' is not an integer"),
        ("id,problem,answer\n1,x,2.5\n", "answer '2.5' is not an integer"),
        ("id,problem\n1,x\n1,y\n", "line 3: duplicate id '1' (first on line 2)"),
        ("id,problem\n,x\n", "line 2: empty id"),
        # ambiguous: each would be read one way here and another way by the gateway, or silently wrong
        ("id, problem\n1,x\n", "line 1: header name ' problem' has surrounding spaces"),
        ("id,problem,source\n1,x,aime\n", "line 1: unknown column(s) 'source'"),
        ("id,problem,id\n1,x,2\n", "a column is named twice"),
        ("id,problem\n1,x,y\n", "line 2: 3 field(s) where the header has 2 (an unquoted comma?)"),
        ("id,problem,answer\n1,What is 1,000 + 1?,1001\n", "line 2: 4 field(s) where the header has 3"),
        ("id,problem\n1\n", "line 2: 1 field(s) where the header has 2 (a row with only an id?)"),
        ("id,problem\n1,x\n\n2,y\n", "line 3: blank line"),
        ("id,problem\n1,x\n\n", "line 3: blank line"),
        ("id,problem\n01,x\n1,y\n", "line 3: id '1' collides with '01' once parsed as a number (first on line 2)"),
        ("id,problem\n5,\n", "line 2 (id '5'): no problem text"),
        ('id,problem\ne,""\n', "line 2 (id 'e'): no problem text"),
        ("id,problem\n a1,x\n", "id has surrounding spaces"),
        ('id,problem\n1,"What is 2+2?\n2,What is 3?\n',
         "line 3: not a readable CSV (unexpected end of data; an unclosed quote?)"),
        ('id,problem\n1,"abc\n2,"def"\n3,x\n', "an unclosed quote?"),
        ("id,problem\n" + "".join(f"{i},p\n" for i in range(120)) + "abc,p\n",
         "the competition's gateway (pl.read_csv) cannot read it"),
    ],
)
def test_bad_files(tmp_path, text, message):
    with pytest.raises(ProblemSetError) as err:
        read_problems(write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)  # one line


def test_the_gateway_frame_is_pl_read_csv_of_a_validated_file(tmp_path):
    path = write(tmp_path, "id,problem,answer\n7,x,1\n8,y,2\n")
    frame = read_problem_frame(path)
    assert frame.equals(pl.read_csv(path)) and frame["id"].dtype == pl.Int64
    with pytest.raises(ProblemSetError, match="blank line"):
        read_problem_frame(write(tmp_path, "id,problem\n7,x\n\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ProblemSetError, match="problems file not found"):
        read_problems(tmp_path / "none.csv")


def test_not_utf8(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes(b"id,problem\n1,\xff\xfe\xfa\n")
    with pytest.raises(ProblemSetError, match="not a readable UTF-8 CSV"):
        read_problems(path)


def test_eval_skips_a_gold_outside_the_rule_with_a_warning(tmp_path):
    from aimo_kernel.core.answers import AnswerRule
    from aimo_kernel.tools.evaluate import usable_problems

    path = write(tmp_path, "id,problem,answer\nh1,x,-984\nh2,y,12\n")  # HMMT has a negative answer
    kept, golds, warnings = usable_problems(read_problems(path), AnswerRule(modulus=None, max_answer=99_999), path)
    assert [p.id for p in kept] == ["h2"] and golds == [12]
    assert len(warnings) == 1 and "line 2 (id 'h1'): skipped: gold answer -984 is impossible" in warnings[0]
    with pytest.raises(ProblemSetError, match="impossible"):  # every gold impossible: nothing to evaluate
        usable_problems(read_problems(write(tmp_path, "id,problem,answer\nh1,x,-984\n")),
                        AnswerRule(modulus=None, max_answer=99_999), path)
