"""The synthetic TIR generator (tools/synth_tir.py): format, splits, reproducibility, real outputs."""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from aimo_kernel.config import SandboxConfig
from aimo_kernel.core.answers import AnswerRule, extract_answer
from aimo_kernel.run.problems import bundled_problems_path, read_problems
from aimo_kernel.sandbox import SubprocessSandbox
from aimo_kernel.solve.dialect import STOP, last_code_block

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import synth_tir  # noqa: E402

RULE = AnswerRule(modulus=None, min_answer=0, max_answer=99_999)


@pytest.fixture(scope="module")
def train() -> list[synth_tir.Example]:
    return list(synth_tir.generate("train", 600, seed=5))


@pytest.fixture(scope="module")
def heldout() -> list[synth_tir.Example]:
    return list(synth_tir.generate("heldout", 200, seed=5))


def rounds(solution: str) -> list[str]:
    """The solution cut the way the solver sees it: each piece ends with the stop string or is the last."""
    pieces = solution.split(STOP)
    return [p + STOP for p in pieces[:-1]] + [pieces[-1]]


def test_same_seed_same_examples():
    assert list(synth_tir.generate("train", 50, seed=3)) == list(synth_tir.generate("train", 50, seed=3))
    assert list(synth_tir.generate("train", 50, seed=3)) != list(synth_tir.generate("train", 50, seed=4))


def test_splits_are_disjoint_by_problem_text(train, heldout):
    assert all(synth_tir.split_of(e.problem) == "train" for e in train)
    assert all(synth_tir.split_of(e.problem) == "heldout" for e in heldout)
    assert not {e.problem for e in train} & {e.problem for e in heldout}


def test_every_family_and_kind_appears(train):
    families = {f.__name__.removeprefix("fam_") for f in synth_tir.FAMILIES} - {"gcd"} | {"gcd", "lcm"}
    assert {e.family for e in train} == families
    kinds = Counter(e.kind for e in train)
    assert kinds["repair"] + kinds["repair+slip"] > 0.2 * len(train)
    assert 0.1 * len(train) < kinds["slip"] + kinds["repair+slip"] < 0.45 * len(train)


def test_heldout_has_no_slips(heldout):
    assert all("slip" not in e.kind for e in heldout)
    assert all(extract_answer(e.solution, RULE) == e.answer for e in heldout)


def test_solutions_follow_the_solver_format(train):
    for e in train:
        pieces = rounds(e.solution)
        assert 2 <= len(pieces) <= 3, e.solution
        for piece in pieces[:-1]:
            assert last_code_block(piece) is not None
        assert "```python" not in pieces[-1].split("```\n", 1)[1]  # the last round only concludes
        if "slip" not in e.kind:  # a slip boxes what its miscopied code printed, usually not the answer
            assert extract_answer(e.solution, RULE) == e.answer


def test_repairs_fail_first_and_then_run(train):
    repairs = [e for e in train if e.kind.startswith("repair")]
    for e in repairs:
        assert len(e.outputs) == 2
        assert re.search(r"(Error|error)\b", e.outputs[0]), e.outputs[0]
        assert "Error" not in e.outputs[1]


def test_mod_rule_problems_are_reduced(train):
    mod = [e for e in train if re.search(r"divided by (1000|\$10\^5\$)[.?]", e.problem)]
    assert len(mod) > 20
    for e in mod:
        assert e.answer < (1000 if "by 1000" in e.problem else 100_000), e.problem


def test_outputs_are_what_the_sandbox_prints(train):
    picks = [e for e in train if e.kind == "repair"][:6] + [e for e in train if e.kind == "clean"][:4]
    codes, outputs = [], []
    for e in picks:
        for piece, out in zip(rounds(e.solution), e.outputs):
            codes.append(last_code_block(piece))
            outputs.append(out)
    box = SubprocessSandbox(SandboxConfig(timeout_s=20.0, workers=2))
    try:
        results = box.run_many(codes, timeout_s=20.0)
    finally:
        box.close()
    assert [r.render(synth_tir.OUTPUT_WIDTH) for r in results] == outputs


def test_bundled_sample_is_heldout_synthetic():
    problems = read_problems(bundled_problems_path())
    assert all(synth_tir.split_of(p.problem) == "heldout" for p in problems)
    fresh = list(synth_tir.generate("heldout", len(problems), seed=2026))
    assert [(p.problem, p.answer) for p in problems] == [(e.problem, e.answer) for e in fresh]


def test_cli_writes_a_problem_csv(tmp_path):
    out = tmp_path / "h.csv"
    assert synth_tir.main(["--split", "heldout", "--count", "12", "--seed", "9", "--csv", str(out)]) == 0
    problems = read_problems(out)
    assert len(problems) == 12 and all(p.answer is not None for p in problems)


# -- the chat-tools format (Qwen3-style tool calls), for a tool-calling tiny model ----------------------------------

@pytest.fixture(scope="module")
def train_tools() -> list[synth_tir.Example]:
    return list(synth_tir.generate("train", 600, seed=5, dialect="chat-tools"))


def test_chat_tools_solutions_are_the_same_solutions(train, train_tools):
    assert [(e.problem, e.answer, e.kind, e.outputs) for e in train] == \
        [(e.problem, e.answer, e.kind, e.outputs) for e in train_tools]


def test_chat_tools_solutions_read_back_through_the_dialect(train, train_tools):
    from aimo_kernel.sandbox import ExecutionResult
    from aimo_kernel.solve.chat_tools import CLOSE, TOOL_TURN, ChatToolsDialect

    dialect = ChatToolsDialect()
    for numina, e in zip(train, train_tools):
        assert "```" not in e.solution
        calls = e.solution.split(CLOSE)
        assert len(calls) - 1 == len(e.outputs)
        for i, (out, piece) in enumerate(zip(e.outputs, rounds(numina.solution))):
            text = CLOSE.join(calls[:i + 1]) + CLOSE  # the trace when the stop string ended call i
            assert dialect.code(text) == last_code_block(piece)
            assert e.solution[len(text):].startswith(TOOL_TURN[0] + out + TOOL_TURN[1])
        # a run that printed is fed back exactly as the solver's dialect feeds it
        last = e.outputs[-1]
        assert dialect.feedback(ExecutionResult(stdout=last + "\n", exit_code=0), synth_tir.OUTPUT_WIDTH) == \
            TOOL_TURN[0] + last + TOOL_TURN[1]
        if "slip" not in e.kind:
            assert dialect.answer(e.solution, RULE) == e.answer


def test_an_unknown_dialect_is_refused():
    with pytest.raises(ValueError, match="dialect must be one of"):
        next(synth_tir.generate("train", 1, seed=0, dialect="harmony"))
