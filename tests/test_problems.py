"""Problem CSV reading: clear one-line errors, long problems read as they are."""

from __future__ import annotations

import pytest

from aimo_kernel.problems import ProblemSetError, bundled_problems_path, read_problems


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


def test_empty_problem_is_read_for_the_solver_to_answer(tmp_path):
    problems = read_problems(write(tmp_path, 'id,problem\ne,""\n'))
    assert problems[0].problem == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("id,problem\n", "no problems"),
        ("id,question\n1,x\n", "missing column(s) problem; found id, question"),
        ("problem\nx\n", "missing column(s) id"),
        ("id,problem,answer\n1,x,seven\n", "line 2: answer 'seven' is not an integer"),
        ("id,problem\n1,x\n1,y\n", "duplicate id '1'"),
        ("id,problem\n,x\n", "empty id"),
    ],
)
def test_bad_files(tmp_path, text, message):
    with pytest.raises(ProblemSetError) as err:
        read_problems(write(tmp_path, text))
    assert message in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ProblemSetError, match="problems file not found"):
        read_problems(tmp_path / "none.csv")


def test_not_utf8(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes(b"id,problem\n1,\xff\xfe\xfa\n")
    with pytest.raises(ProblemSetError, match="not a readable UTF-8 CSV"):
        read_problems(path)
