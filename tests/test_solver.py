"""The SC-TIR core on the blocking fake engine (synchronous rounds through the blocking adapter):
rounds, code, restarts, pruning, truncation, deadlines, voting."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import pytest

from aimo_kernel.config import BudgetConfig, Config, SamplingConfig, SandboxConfig, TIRConfig, VoteConfig
from aimo_kernel.sandbox import ExecutionResult, SubprocessSandbox
from aimo_kernel.solve.dialect import last_code_block
from aimo_kernel.solve.pipeline import Solver
from aimo_kernel.testing.fake import FakeEngine, scripted

CODE_TURN = "Let me compute.\n```python\nprint(6 * 7)\n```\n```output\n"
ANSWER_TURN = "So the answer is $\\boxed{42}$."


class FakeSandbox:
    """Canned execution results; records the code it was asked to run."""

    def __init__(self, stdout: str = "42") -> None:
        self.stdout = stdout
        self.codes: list[str] = []
        self.timeouts: list[float | None] = []

    def run_many(self, codes: Sequence[str], *, timeout_s: float | None = None) -> list[ExecutionResult]:
        self.codes += codes
        self.timeouts.append(timeout_s)
        return [_ok(self.stdout) for _ in codes]

    def close(self) -> None:
        pass


def _ok(stdout: str) -> ExecutionResult:
    return ExecutionResult(stdout=stdout, error="", exit_code=0, timed_out=False, memory_exceeded=False,
                           output_truncated=False, crashed=False, refused=False, seconds=0.01)


def config(**tir: object) -> Config:
    return Config(
        tir=TIRConfig(**{"num_candidates": 4, "max_rounds": 4, **tir}),  # type: ignore[arg-type]
        sampling=SamplingConfig(max_new_tokens=512),
        budget=BudgetConfig(per_problem_seconds=30.0),
        vote=VoteConfig(fallback_answer=0),
    )


def solve(responder, cfg: Config | None = None, sandbox=None, **engine_kwargs):
    engine = FakeEngine(responder, **engine_kwargs)
    sandbox = sandbox or FakeSandbox()
    result = Solver(engine, sandbox, cfg or config()).run("What is 6 times 7?")
    return result, engine, sandbox


def test_code_runs_and_its_output_is_appended_then_the_candidate_answers():
    result, engine, sandbox = solve(scripted([CODE_TURN, ANSWER_TURN]))
    assert result.answer == 42
    assert result.vote.counts == {42: 4}
    assert len(engine.calls) == 2  # round 1 writes code, round 2 answers
    assert sandbox.codes == ["print(6 * 7)"] * 4
    trace = result.candidates[0].text
    assert "```python\nprint(6 * 7)\n```\n```output\n42\n```\nSo the answer" in trace
    assert result.code_blocks == 4
    # the second round continues the whole trace, output included
    assert engine.calls[1][0].prompt.endswith("```output\n42\n```\n")


def test_at_most_m_rounds():
    result, engine, _ = solve(scripted([CODE_TURN]), config(max_rounds=3))
    assert len(engine.calls) == 3
    assert all(c.reason == "rounds" and c.code_blocks == 3 for c in result.candidates)
    assert result.vote.is_fallback and result.answer == 0


def _first_call_without_code():
    calls = {"n": 0}

    def respond(req):
        calls["n"] += 1
        if calls["n"] <= 4:  # the whole first round answers without code
            return "I guess \\boxed{7}."
        return scripted([CODE_TURN, ANSWER_TURN])(req)

    return respond


def test_no_code_candidates_are_restarted_from_the_bare_prompt():
    result, engine, _ = solve(_first_call_without_code(), config(no_code_policy="restart", max_restarts=1))
    assert [c.restarts for c in result.candidates] == [1, 1, 1, 1]
    prompt = engine.calls[0][0].prompt
    assert all(r.prompt == prompt for r in engine.calls[1])  # trace thrown away
    assert result.answer == 42 and result.vote.counts == {42: 4}


def test_no_code_candidates_are_pruned():
    result, engine, _ = solve(_first_call_without_code(), config(no_code_policy="prune"))
    assert len(engine.calls) == 1
    assert all(c.status == "pruned" and c.reason == "no_code" for c in result.candidates)
    assert result.vote.is_fallback


def test_no_code_candidates_are_kept():
    result, _, _ = solve(_first_call_without_code(), config(no_code_policy="keep"))
    assert result.answer == 7 and result.vote.counts == {7: 4}


def test_restart_with_no_restarts_left_keeps_the_answer():
    result, _, _ = solve(lambda req: "\\boxed{9}", config(no_code_policy="restart", max_restarts=2, max_rounds=2))
    assert result.answer == 9
    assert all(c.restarts == 1 for c in result.candidates)  # round 1 restarts, round 2 is the last


def test_invented_output_is_pruned():
    result, _, sandbox = solve(lambda req: "The program prints:\n```output\n", config())
    assert sandbox.codes == []
    assert all(c.status == "pruned" and c.reason == "invented_output" for c in result.candidates)


def test_output_is_truncated_for_the_model():
    sandbox = FakeSandbox(stdout="9" * 5000)
    result, engine, _ = solve(scripted([CODE_TURN, ANSWER_TURN]), config(output_max_chars=50), sandbox)
    shown = engine.calls[1][0].prompt.split("```output\n")[-1]
    assert len(shown) < 120 and "truncated" in shown


def test_real_sandbox_error_is_shown_cleanly():
    turn = "```python\nprint(1/0)\n```\n```output\n"
    sandbox = SubprocessSandbox(SandboxConfig(timeout_s=5.0, workers=2))
    result, engine, _ = solve(scripted([turn, ANSWER_TURN]), config(num_candidates=2), sandbox)
    shown = engine.calls[1][0].prompt.split("```output\n")[-1]
    assert "ZeroDivisionError" in shown and "/tmp" not in shown
    assert result.answer == 42


def test_majority_vote_over_candidates():
    answers = iter(["\\boxed{5}", "\\boxed{3}", "\\boxed{5}", "\\boxed{8}"])
    result, _, _ = solve(lambda req: next(answers), config(no_code_policy="keep"))
    assert result.answer == 5 and result.vote.counts[5] == 2


def test_requests_never_exceed_the_context():
    result, engine, _ = solve(scripted([CODE_TURN, ANSWER_TURN]), config(), max_model_len=200)
    for batch in engine.calls:
        for req in batch:
            assert len(req.prompt) + req.max_tokens <= 200


def test_each_candidate_and_round_gets_its_own_seed():
    _, engine, _ = solve(scripted([CODE_TURN, ANSWER_TURN]))
    seeds = [r.seed for batch in engine.calls for r in batch]
    assert len(set(seeds)) == len(seeds)


def test_the_deadline_is_never_exceeded():
    cfg = dataclasses.replace(config(), budget=BudgetConfig(per_problem_seconds=0.6, min_problem_seconds=0.1))
    start = time.monotonic()
    result, _, _ = solve(scripted([CODE_TURN, ANSWER_TURN]), cfg, delay_s=5.0)
    assert time.monotonic() - start < 0.9
    assert result.answer == 0 and result.vote.is_fallback


def test_code_gets_only_the_time_left():
    cfg = dataclasses.replace(config(), budget=BudgetConfig(per_problem_seconds=2.0, min_problem_seconds=0.1))
    sandbox = FakeSandbox()
    solve(scripted([CODE_TURN, ANSWER_TURN]), cfg, sandbox, delay_s=0.5)
    assert sandbox.timeouts[0] is not None and sandbox.timeouts[0] <= 1.5


@pytest.mark.parametrize(("problem", "reason"), [("", "empty_problem"), ("   \n", "empty_problem"),
                                                 ("x" * 10_000, "prompt_too_long")])
def test_bad_problems_get_the_fallback(problem, reason):
    engine = FakeEngine(scripted([ANSWER_TURN]), max_model_len=4096)
    result = Solver(engine, FakeSandbox(), config()).run(problem)
    assert result.stop_reason == reason and result.answer == 0 and result.error
    assert engine.calls == []


def test_a_failing_engine_ends_the_problem_with_an_error_not_an_exception():
    def boom(req):
        raise RuntimeError("engine died")

    result, _, _ = solve(boom)
    assert result.stop_reason == "error" and "engine died" in result.error and result.answer == 0


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("```python\nx = 1\nprint(x)\n```\n```output\n", "x = 1\nprint(x)"),
        ("a\n```python\n1\n```\nb\n```python\n2\n```\n```output\n", "2"),
        ("```python\nprint(3)\n```output\n", "print(3)"),
        ("no code here\n```output\n", None),
        ("```python\n\n```\n```output\n", None),
    ],
)
def test_last_code_block(text, code):
    assert last_code_block(text) == code
