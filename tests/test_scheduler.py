"""The asynchronous SC-TIR pipeline (and its synchronous-rounds mode) on the streaming fake engine."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from test_solver import ANSWER_TURN, CODE_TURN, FakeSandbox

from aimo_kernel.config import BudgetConfig, Config, SamplingConfig, TIRConfig, VoteConfig
from aimo_kernel.solve.pipeline import Solver
from aimo_kernel.solve.result import Effort
from aimo_kernel.testing.fake import FakeAsyncEngine, scripted


def config(mode: str = "async", rules: tuple[str, ...] = (), decided: bool = False, stall: float = 60.0,
           **tir: object) -> Config:
    return Config(
        tir=TIRConfig(**{"num_candidates": 4, "max_rounds": 3, "mode": mode, **tir}),  # type: ignore[arg-type]
        sampling=SamplingConfig(max_new_tokens=512),
        budget=BudgetConfig(per_problem_seconds=30.0, min_problem_seconds=0.1, stall_timeout_s=stall),
        vote=VoteConfig(agreement_rules=rules, stop_when_decided=decided),
    )


def solve(engine: FakeAsyncEngine, cfg: Config, seconds: float = 20.0, effort: Effort | None = None):
    sandbox = FakeSandbox()
    result = asyncio.run(Solver(engine, sandbox, cfg).solve("What is 6 times 7?", seconds=seconds, effort=effort))
    return result, sandbox


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_code_output_then_answer(mode):
    engine = FakeAsyncEngine(scripted([CODE_TURN, ANSWER_TURN]))
    result, sandbox = solve(engine, config(mode))
    assert result.answer == 42 and result.vote.counts == {42: 4}
    assert sandbox.codes == ["print(6 * 7)"] * 4
    assert all(c.rounds == 2 and c.code_blocks == 1 for c in result.candidates)
    assert "```output\n42\n```\nSo the answer" in result.candidates[0].text
    log = result.candidates[0].log
    assert [r.round for r in log] == [0, 1] and log[0].tokens_out == len(CODE_TURN) and log[0].finish == "stop"


def test_agreement_rule_stops_early_and_aborts_the_rest():
    answers = iter(["\\boxed{5}"] * 3 + ["x" * 4000 + "\\boxed{7}"] * 10)
    engine = FakeAsyncEngine(lambda req: next(answers), seconds_per_token=0.0005, chunk=64)
    cfg = config(rules=("3/4",), no_code_policy="keep", num_candidates=6)
    result, _ = solve(engine, cfg)
    assert result.stop_reason == "agreement" and result.agreement_rule == "3/4" and result.answer == 5
    assert engine.aborted and not engine.active  # the slow ones were cut off and aborted
    assert sum(c.reason == "stopped" for c in result.candidates) == 3


def test_decided_when_the_rest_cannot_overturn():
    answers = iter(["\\boxed{5}"] * 3 + ["x" * 4000 + "\\boxed{7}"])
    engine = FakeAsyncEngine(lambda req: next(answers), seconds_per_token=0.0005, chunk=64)
    result, _ = solve(engine, config(decided=True, no_code_policy="keep"))
    assert result.stop_reason == "agreement" and result.agreement_rule == "decided" and result.answer == 5


def test_finished_candidates_are_replaced_while_the_vote_is_undecided():
    counter = iter(range(1000))
    engine = FakeAsyncEngine(lambda req: f"\\boxed{{{next(counter)}}}")
    result, _ = solve(engine, config(no_code_policy="keep", num_candidates=3, max_candidates=10),
                      effort=Effort(num_candidates=3, max_rounds=2, max_candidates=10))
    assert len(result.candidates) == 10 and result.stop_reason == "finished"


def test_the_deadline_ends_the_problem_and_aborts_everything():
    engine = FakeAsyncEngine(scripted(["x" * 100_000]), seconds_per_token=0.001, chunk=50)
    start = time.monotonic()
    result, _ = solve(engine, config(), seconds=0.5)
    assert time.monotonic() - start < 0.5 + 1.0
    assert result.stop_reason == "deadline" and result.vote.is_fallback
    assert len(engine.aborted) == 4 and not engine.active


def test_a_stalled_engine_ends_the_problem_with_what_it_has():
    answers = iter(["\\boxed{9}", "\\boxed{9}"] + ["x" * 1000] * 2)
    engine = FakeAsyncEngine(lambda req: next(answers), chunk=10, stall_after_tokens=100)
    start = time.monotonic()
    result, _ = solve(engine, config(stall=1.0, no_code_policy="keep"), seconds=20.0)
    assert time.monotonic() - start < 1.0 + 1.0
    assert result.stop_reason == "stall" and result.answer == 9


def test_a_failing_stream_does_not_end_the_problem():
    calls = iter(range(100))

    def respond(req):
        if next(calls) == 0:
            raise RuntimeError("engine hiccup")
        return "\\boxed{8}"

    engine = FakeAsyncEngine(respond)
    result, _ = solve(engine, config(no_code_policy="keep"))
    assert result.answer == 8 and sum(c.reason == "error" for c in result.candidates) == 1


def test_sync_mode_waits_for_the_whole_round():
    engine = FakeAsyncEngine(scripted([CODE_TURN, ANSWER_TURN]))
    result, _ = solve(engine, config("sync", num_candidates=5))
    assert len(engine.requests) == 10  # 5 candidates × 2 rounds, no more


@pytest.mark.parametrize(("problem", "reason"), [("", "empty_problem"), ("y" * 5000, "prompt_too_long")])
def test_bad_problems(problem, reason):
    engine = FakeAsyncEngine(scripted([ANSWER_TURN]))
    cfg = config()
    result = asyncio.run(Solver(engine, FakeSandbox(), cfg).solve(problem, seconds=5.0))
    assert result.stop_reason == reason and result.vote.is_fallback and not engine.requests


def test_effort_limits_candidates_and_rounds():
    engine = FakeAsyncEngine(scripted([CODE_TURN]))
    result, _ = solve(engine, config(), effort=Effort(num_candidates=2, max_rounds=1))
    assert len(result.candidates) == 2 and all(c.rounds == 1 for c in result.candidates)


def test_config_round_trip_of_the_new_fields():
    cfg = dataclasses.replace(config(), vote=VoteConfig(agreement_rules=("4/5", "6/9")))
    assert cfg.vote.agreement_rules == ("4/5", "6/9")


def test_the_admission_window_releases_requests_that_arrive_together_at_once():
    from aimo_kernel.engine.vllm_async import AsyncVLLMEngine

    engine = AsyncVLLMEngine.__new__(AsyncVLLMEngine)  # the window only: no vLLM engine behind it

    async def arrivals(window: float, gaps: list[float]) -> list[float]:
        engine.coalesce_s, engine._gate = window, None
        loop = asyncio.get_running_loop()
        start, released = loop.time(), []

        async def one(delay: float) -> None:
            await asyncio.sleep(delay)
            await engine._admitted()
            released.append(loop.time() - start)

        await asyncio.gather(*(one(d) for d in gaps))
        return sorted(released)

    # three within 50 ms of the first leave together when the window closes; a late one opens a new window
    together = asyncio.run(arrivals(0.1, [0.0, 0.02, 0.05, 0.3]))
    assert together[2] - together[0] < 0.01 and together[0] >= 0.09 and together[3] >= 0.39
    assert asyncio.run(arrivals(0.0, [0.0, 0.0]))[1] < 0.05  # no window: nothing waits

    async def cancelled_waiter_keeps_the_window() -> float:
        engine.coalesce_s, engine._gate = 0.05, None
        first = asyncio.ensure_future(engine._admitted())
        await asyncio.sleep(0)
        t0 = asyncio.get_running_loop().time()
        second = asyncio.ensure_future(engine._admitted())
        await asyncio.sleep(0.01)
        first.cancel()
        await second
        return asyncio.get_running_loop().time() - t0

    assert 0.03 < asyncio.run(cancelled_waiter_keeps_the_window()) < 0.5


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_scattered_answers_give_up_and_keep_their_vote(mode):
    answers = iter(f"\\boxed{{{n}}}" for n in range(100))  # every candidate a different answer
    engine = FakeAsyncEngine(lambda req: next(answers))
    cfg = config(mode, no_code_policy="keep", num_candidates=4, max_candidates=12)
    cfg = dataclasses.replace(cfg, vote=dataclasses.replace(cfg.vote, give_up_rule="2/4"))
    result, _ = solve(engine, cfg)
    assert result.stop_reason == "scattered" and result.agreement_rule == ""
    assert len(result.candidates) == 4 and sum(result.vote.counts.values()) == 4  # no replacements launched
    assert result.answer in result.vote.counts  # the vote of what came in, not a fallback


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_tokens_of_generations_cut_off_by_the_deadline_still_count(mode):
    engine = FakeAsyncEngine(lambda req: "x" * 4000 + "\\boxed{7}", seconds_per_token=0.001, chunk=16)
    result, _ = solve(engine, config(mode), seconds=0.3)
    assert result.stop_reason == "deadline" and not result.vote.counts
    # four candidates streamed ~0.3 s at ~1000 tokens/s each: what they wrote is counted, not 0
    assert all(c.tokens >= 64 for c in result.candidates) and result.tokens_generated >= 4 * 64
    assert result.outcome().timed_out and result.outcome().tokens_per_open >= 64
