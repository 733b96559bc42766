"""The one solver core: the blocking adapter and its watchdog, bugs that must not become a quiet 0,
per-candidate sessions, the named vocabularies, and the typed trace record."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Sequence

import pytest
from test_solver import ANSWER_TURN, CODE_TURN, FakeSandbox, _ok, config

from aimo_kernel.config import BudgetConfig, Config
from aimo_kernel.core.budget import Outcome
from aimo_kernel.engine.base import Generation, GenerationRequest, SamplingParams
from aimo_kernel.run.runner import Runner
from aimo_kernel.run.trace import TRACE_VERSION, ProblemTrace, append_trace, read_trace
from aimo_kernel.sandbox import ExecutionResult
from aimo_kernel.solve.blocking import WATCHDOG_GRACE_S, BlockingEngineAdapter
from aimo_kernel.solve.candidate import Candidate
from aimo_kernel.solve.dialect import NuminaDialect
from aimo_kernel.solve.pipeline import Solver
from aimo_kernel.solve.result import SolveResult
from aimo_kernel.testing.fake import FakeAsyncEngine, FakeEngine, scripted
from aimo_kernel.vocab import CandidateReason, CandidateStatus, CodeFlag, StopReason


def timed(cfg: Config, seconds: float, stall: float = 60.0) -> Config:
    return dataclasses.replace(cfg, budget=BudgetConfig(per_problem_seconds=seconds, min_problem_seconds=0.1,
                                                        stall_timeout_s=stall))


class HangsAfterFirstCall(FakeEngine):
    """Answers its first call; every later call sleeps ``hang_s``, ignoring the deadline."""

    def __init__(self, responder, *, hang_s: float) -> None:
        super().__init__(responder)
        self.hang_s = hang_s

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams, *,
                 deadline: float) -> list[Generation]:
        if self.calls:
            self.delay_s, self.ignore_deadline = self.hang_s, True
        return super().generate(requests, params, deadline=deadline)


def _two_answer_two_code():
    n = iter(range(10**6))

    def respond(req):  # round 1: candidates 0 and 1 answer, 2 and 3 write code
        if req.prompt.count("```output\n"):
            return ANSWER_TURN
        return "\\boxed{42}" if next(n) % 4 < 2 else CODE_TURN

    return respond


# -- the blocking adapter ----------------------------------------------------------------------------


def test_a_generate_that_ignores_its_deadline_cannot_push_the_problem_past_it():
    engine = HangsAfterFirstCall(_two_answer_two_code(), hang_s=6.0)
    solver = Solver(engine, FakeSandbox(), timed(config(no_code_policy="keep"), 1.0))
    start = time.monotonic()
    result = solver.run("What is 6 times 7?")
    took = time.monotonic() - start
    assert took < 1.0 + WATCHDOG_GRACE_S + 0.5
    assert result.stop_reason == "deadline" and result.answer == 42 and result.vote.counts == {42: 2}
    assert not solver.engine.alive and "past its deadline" in solver.engine.broken  # type: ignore[attr-defined]


def test_the_run_rebuilds_a_broken_blocking_engine_and_goes_on():
    engines: list[FakeEngine] = []

    def factory(cfg: Config) -> FakeEngine:
        hang = not engines  # the first engine hangs past every deadline, its replacement is sound
        engine = FakeEngine(scripted([ANSWER_TURN]), delay_s=6.0 if hang else 0.0, ignore_deadline=hang)
        engines.append(engine)
        return engine

    runner = Runner(timed(config(no_code_policy="keep"), 1.0), engine_factory=factory, num_problems=2,
                    started=time.monotonic())
    try:
        start = time.monotonic()
        first = runner.answer("a", "What is 6 times 7?")
        assert time.monotonic() - start < 1.0 + WATCHDOG_GRACE_S + 1.0
        second = runner.answer("b", "What is 6 times 7?")
    finally:
        runner.close()
    assert first == 0 and runner.records[0].stop_reason == "deadline"
    assert runner.restarts == 1 and len(engines) == 2 and engines[0].closed
    assert second == 42


def test_a_long_blocking_batch_is_progress_not_a_stall():
    engine = FakeEngine(scripted([CODE_TURN, ANSWER_TURN]), delay_s=1.6)
    result = Solver(engine, FakeSandbox(), timed(config(), 20.0, stall=1.0)).run("What is 6 times 7?")
    assert result.stop_reason != "stall" and result.answer == 42 and len(engine.calls) == 2


def test_one_synchronous_round_is_one_generate_call_in_request_order():
    engine = FakeEngine(scripted([CODE_TURN, ANSWER_TURN]))
    Solver(engine, FakeSandbox(), config(num_candidates=6)).run("What is 6 times 7?")
    assert [len(c) for c in engine.calls] == [6, 6]
    seeds = [[r.seed for r in call] for call in engine.calls]
    assert all(r.deadline is not None for call in engine.calls for r in call)
    assert len({s for call in seeds for s in call}) == 12


def test_the_adapter_is_an_async_engine_and_passes_streaming_engines_through():
    from aimo_kernel.engine.base import AsyncEngine
    from aimo_kernel.solve.blocking import streaming

    fake_async = FakeAsyncEngine(scripted([ANSWER_TURN]))
    assert streaming(fake_async) is fake_async
    adapted = streaming(FakeEngine(scripted([ANSWER_TURN])))
    assert isinstance(adapted, BlockingEngineAdapter) and isinstance(adapted, AsyncEngine)


def test_a_blocking_engine_in_async_mode_gives_the_same_answers():
    engine = FakeEngine(scripted([CODE_TURN, ANSWER_TURN]))
    cfg = config(mode="async")
    cfg = dataclasses.replace(cfg, vote=dataclasses.replace(cfg.vote, agreement_rules=(), stop_when_decided=False))
    result = Solver(engine, FakeSandbox(), cfg).run("What is 6 times 7?")
    assert result.answer == 42 and result.vote.counts == {42: 4} and result.stop_reason == "finished"
    assert all(c.rounds == 2 and c.code_blocks == 1 for c in result.candidates)


# -- failures: typed results, bugs propagate ---------------------------------------------------------


class BuggyDialect(NuminaDialect):
    def code(self, text: str) -> str | None:
        raise ZeroDivisionError("a bug in the dialect")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_bug_in_the_core_propagates_instead_of_answering_the_fallback(mode):
    engine = FakeAsyncEngine(scripted([CODE_TURN, ANSWER_TURN]))
    solver = Solver(engine, FakeSandbox(), config(mode=mode), dialect=BuggyDialect())
    with pytest.raises(ZeroDivisionError, match="a bug in the dialect"):
        solver.run("What is 6 times 7?")
    assert not engine.active  # the other candidates were cancelled on the way out


class RaisingSandbox(FakeSandbox):
    def run_many(self, codes, *, timeout_s=None):
        raise RuntimeError("the sandbox broke its promise")


def test_a_sandbox_that_raises_propagates():
    with pytest.raises(RuntimeError, match="broke its promise"):
        Solver(FakeEngine(scripted([CODE_TURN])), RaisingSandbox(), config()).run("What is 6 times 7?")


def test_an_engine_failure_ends_its_candidate_with_the_reason_and_the_message():
    calls = iter(range(100))

    def respond(req):
        if next(calls) == 0:
            raise RuntimeError("engine hiccup")
        return "\\boxed{8}"

    result = Solver(FakeAsyncEngine(respond), FakeSandbox(), config(mode="async", no_code_policy="keep")).run("p")
    failed = [c for c in result.candidates if c.reason == CandidateReason.ERROR]
    assert len(failed) == 1 and "engine hiccup" in failed[0].error
    assert result.stop_reason != "error" and result.answer == 8 and "engine hiccup" in result.error


# -- per-candidate sessions --------------------------------------------------------------------------


class FakeSession:
    def __init__(self, opened: list[FakeSession]) -> None:
        self.codes: list[str] = []
        self.closed = False
        opened.append(self)

    async def arun(self, code: str, *, timeout_s: float | None = None) -> ExecutionResult:
        self.codes.append(code)
        return _ok(f"session {len(self.codes)}")

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_candidate_runs_its_code_in_its_own_session_closed_with_it(mode):
    opened: list[FakeSession] = []
    shared = FakeSandbox()
    engine = FakeAsyncEngine(scripted([CODE_TURN, CODE_TURN, ANSWER_TURN]))
    result = Solver(engine, shared, config(mode=mode), sessions=lambda: FakeSession(opened)).run("p")
    assert len(opened) == 4 and shared.codes == []
    assert all(s.codes == ["print(6 * 7)"] * 2 and s.closed for s in opened)
    assert "```output\nsession 2\n```" in result.candidates[0].text


# -- the candidate and the vocabularies --------------------------------------------------------------


def test_candidate_transitions():
    tir = config(no_code_policy="restart", max_restarts=1).tir
    cand, dialect = Candidate(0), NuminaDialect()
    gen = Generation(text="\\boxed{3}", num_tokens=9, prompt_tokens=5, finish_reason="eos")
    assert cand.absorb(gen, dialect, tir, rnd=0, gen_seconds=0.1, last_round=False) is None
    assert cand.active and cand.restarts == 1 and cand.text == ""  # restarted: no code written
    stop = Generation(text="```output\n", num_tokens=3, prompt_tokens=5, finish_reason="stop")
    assert cand.absorb(stop, dialect, tir, rnd=1, gen_seconds=0.1, last_round=False) is None
    assert cand.status is CandidateStatus.PRUNED and cand.reason is CandidateReason.INVENTED_OUTPUT
    other = Candidate(1)
    other.stop()
    assert other.reason is CandidateReason.STOPPED
    other.out_of_rounds()  # already ended: nothing changes
    assert other.reason is CandidateReason.STOPPED


def test_code_flags_are_named():
    cand = Candidate(0)
    cand.absorb(Generation(text=CODE_TURN, num_tokens=5, prompt_tokens=1, finish_reason="stop"), NuminaDialect(),
                config().tir, rnd=0, gen_seconds=0.0, last_round=False)
    cand.add_output(ExecutionResult(stdout="", error="TimeoutError", timed_out=True, seconds=5.0), NuminaDialect(), 100)
    assert cand.log[-1].code_flags == (CodeFlag.TIMED_OUT,) and cand.log[-1].code_seconds == 5.0


def test_an_agreement_stop_names_its_rule_separately():
    from aimo_kernel.core.answers import majority_vote

    vote = majority_vote([5], fallback=0)
    result = SolveResult(answer=5, vote=vote, stop_reason="agreement", agreement_rule="4/5")
    assert result.stop_reason is StopReason.AGREEMENT and result.stop_label == "agreement 4/5"
    with pytest.raises(ValueError, match="agreement_rule"):
        SolveResult(answer=5, vote=vote, stop_reason="agreement")
    with pytest.raises(ValueError, match="agreement_rule"):
        SolveResult(answer=5, vote=vote, stop_reason="deadline", agreement_rule="4/5")


def test_the_outcome_for_the_planner_counts_answers_and_tokens():
    from aimo_kernel.core.answers import majority_vote
    from aimo_kernel.solve.candidate import CandidateResult

    def cand(answer, tokens):
        return CandidateResult(index=0, answer=answer, status=CandidateStatus.DONE, reason=CandidateReason.EOS,
                               rounds=1, restarts=0, code_blocks=0, tokens=tokens, text="")

    cands = (cand(5, 30), cand(None, 50), cand(7, 10))
    vote = majority_vote([5, 7], fallback=0)
    out = SolveResult(answer=5, vote=vote, candidates=cands, tokens_generated=90, stop_reason="deadline").outcome()
    assert out == Outcome(timed_out=True, candidates=3, answered=2, tokens_per_open=50.0, tokens_per_answer=20.0)
    none = SolveResult(answer=0, vote=majority_vote([], fallback=0), stop_reason="stall").outcome()
    assert none == Outcome(timed_out=False, candidates=0, answered=0)


# -- the trace record ---------------------------------------------------------------------------------


def _solved() -> SolveResult:
    engine = FakeAsyncEngine(scripted([CODE_TURN, ANSWER_TURN]))
    cfg = dataclasses.replace(config(mode="async"), vote=dataclasses.replace(config().vote, agreement_rules=("4/4",),
                                                                           stop_when_decided=False))
    return Solver(engine, FakeSandbox(), cfg).run("What is 6 times 7?")


def test_the_trace_record_round_trips_through_json(tmp_path):
    result = _solved()
    assert result.stop_reason == "agreement" and result.agreement_rule == "4/4"
    rec = ProblemTrace.from_result("p1", result, 42, used_s=1.5, given_s=30.0, speed_level=2, problem_index=0)
    path = tmp_path / "trace.jsonl"
    append_trace(path, rec)
    append_trace(path, dataclasses.replace(rec, id="p2", problem_index=1))
    line = json.loads(path.read_text().splitlines()[0])
    assert line["version"] == TRACE_VERSION and line["stop_reason"] == "agreement" and line["agreement_rule"] == "4/4"
    back = read_trace(path)
    assert back[0] == rec and back[1].id == "p2"
    assert back[0].candidates[0].rounds[0].code_flags == () and back[0].candidates[0].rounds[0].finish == "stop"


def test_a_current_record_missing_a_field_is_an_error_naming_it(tmp_path):
    line = ProblemTrace.from_result("p1", _solved(), None, used_s=1.0).to_json()
    del line["budget_used_s"]
    path = tmp_path / "trace.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(ValueError, match="trace.jsonl:1.*budget_used_s"):
        read_trace(path)


def test_a_version_1_record_is_read_with_its_agreement_reason_split():
    rec = ProblemTrace.from_json({"id": "a", "answer": 3, "stop_reason": "agreement:4/4", "speed_level": None,
                                  "candidates": [{"index": 0, "answer": 3, "status": "done", "reason": "eos",
                                                  "rounds": [{"round": 0, "tokens_in": 4, "tokens_out": 8,
                                                              "gen_seconds": 0.4, "finish": "stop",
                                                              "code_flags": ["timed_out"]}]}]})
    assert rec.stop_reason is StopReason.AGREEMENT and rec.agreement_rule == "4/4"
    assert rec.speed_level is None and rec.candidates[0].rounds[0].code_flags == (CodeFlag.TIMED_OUT,)
    with pytest.raises(ValueError, match="version"):
        ProblemTrace.from_json({"id": "a", "version": TRACE_VERSION + 1})


def test_the_streaming_fake_is_driven_on_the_callers_loop():
    engine = FakeAsyncEngine(scripted([ANSWER_TURN]))
    result = asyncio.run(Solver(engine, FakeSandbox(), config(mode="async", no_code_policy="keep")).solve("p"))
    assert result.answer == 42


def test_persistent_sessions_of_the_real_sandbox_keep_a_candidates_variables():
    from aimo_kernel.config import SandboxConfig
    from aimo_kernel.sandbox import make_sandbox

    turns = ["```python\nx = 6 * 7\nprint(x)\n```\n```output\n", "```python\nprint(x + 1)\n```\n```output\n",
             ANSWER_TURN]
    sandbox = make_sandbox(SandboxConfig(timeout_s=5.0, workers=2, session="persistent"))
    try:
        cfg = dataclasses.replace(config(mode="async", num_candidates=2), sandbox=sandbox.config)
        result = Solver(FakeAsyncEngine(scripted(turns)), sandbox, cfg).run("What is 6 times 7?")
    finally:
        sandbox.close()
    assert all("```output\n43\n```" in c.text for c in result.candidates)  # the second block saw the first's x
    assert result.answer == 42


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_candidates_refused_code_for_lack_of_time_make_it_a_deadline_stop(mode):
    # every candidate asks for code 0.5 s into a 0.6 s problem: too late to start it
    engine = FakeAsyncEngine(scripted([CODE_TURN]), seconds_per_token=0.5 / len(CODE_TURN), chunk=len(CODE_TURN))
    result = Solver(engine, FakeSandbox(), timed(config(mode=mode), 0.6)).run("What is 6 times 7?")
    assert all(c.reason == CandidateReason.DEADLINE for c in result.candidates)
    assert result.stop_reason == "deadline"
