"""The run: budgets per problem, the trace, a stalled engine rebuilt, every problem answered."""

from __future__ import annotations

import json
import time

from aimo_kernel.config import BudgetConfig, Config, EngineConfig, SamplingConfig, TIRConfig, VoteConfig
from aimo_kernel.engine.fake import FakeAsyncEngine, FakeEngine
from aimo_kernel.runner import Runner


def config(backend: str = "fake-async") -> Config:
    return Config(
        tir=TIRConfig(num_candidates=3, max_rounds=2, mode="async", no_code_policy="keep"),
        sampling=SamplingConfig(max_new_tokens=256),
        budget=BudgetConfig(total_seconds=120.0, num_problems=3, per_problem_seconds=20.0, min_problem_seconds=1.0,
                            safety_margin_s=10.0, stall_timeout_s=1.0),
        vote=VoteConfig(),
        engine=EngineConfig(backend=backend),
    )


def test_a_stalled_engine_is_rebuilt_and_the_run_goes_on(tmp_path):
    engines: list[FakeAsyncEngine] = []

    def factory(cfg):
        stall = 4 if not engines else None  # the first engine hangs mid-generation
        engines.append(FakeAsyncEngine(lambda req: "Thus \\boxed{7}.", chunk=4, stall_after_tokens=stall))
        return engines[-1]

    runner = Runner(config(), engine_factory=factory, trace_path=tmp_path / "trace.jsonl", started=time.monotonic())
    try:
        first = runner.answer("a", "Problem one?")
        second = runner.answer("b", "Problem two?")
    finally:
        runner.close()
    assert runner.records[0].stop_reason == "stall" and first == 0
    assert runner.restarts == 1 and len(engines) == 2 and engines[0].closed
    assert second == 7 and runner.records[1].stop_reason != "stall"
    trace = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert [t["id"] for t in trace] == ["a", "b"]
    assert trace[0]["budget_given_s"] > 0 and trace[0]["budget_used_s"] < trace[0]["budget_given_s"]
    assert trace[1]["candidates"][0]["rounds"][0]["tokens_out"] > 0


def test_every_problem_gets_a_budget_inside_the_run():
    runner = Runner(config("fake"), engine_factory=lambda cfg: FakeEngine(lambda req: "\\boxed{5}"),
                    started=time.monotonic())
    try:
        answers = [runner.answer(i, f"Problem {i}?") for i in range(3)]
    finally:
        runner.close()
    assert answers == [5, 5, 5]
    assert all(0 < r.budget_s <= 20.0 for r in runner.records)


def test_the_run_clock_starts_with_the_process():
    # The competition's time runs from the notebook's start: a runner created late has less left.
    runner = Runner(config("fake"), engine_factory=lambda cfg: FakeEngine(lambda req: "\\boxed{5}"),
                    started=time.monotonic() - 115.0)
    try:
        assert runner.answer("late", "Problem?") == 0  # 120 s run, 10 s margin: nothing left to plan
    finally:
        runner.close()
    assert runner.records[0].budget_s == 0.0


def test_an_engine_that_cannot_load_still_answers_every_problem():
    def factory(cfg):
        raise RuntimeError("no GPU")

    runner = Runner(config(), engine_factory=factory, started=time.monotonic())
    try:
        assert [runner.answer(i, "x") for i in range(2)] == [0, 0]
    finally:
        runner.close()
    assert all(r.stop_reason == "error" and "no GPU" in r.error for r in runner.records)
