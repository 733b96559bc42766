"""The run: budgets per problem, the trace, a stalled engine rebuilt, a failed load retried once, every
problem answered, fallbacks counted."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from aimo_kernel.config import BudgetConfig, Config, EngineConfig, SamplingConfig, TIRConfig, VoteConfig
from aimo_kernel.run.runner import ProblemRecord, Runner, fallback_lines
from aimo_kernel.testing.fake import FakeAsyncEngine, FakeEngine


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


# --- a failed model load: one bounded retry, then the fallback at once --------------------------------------


def test_a_failed_load_is_retried_once_then_every_problem_answers_the_fallback_at_once():
    loads = []

    def factory(cfg):
        loads.append(time.monotonic())
        raise RuntimeError("CUDA out of memory")

    runner = Runner(config("fake"), engine_factory=factory, started=time.monotonic())
    try:
        answers = [runner.answer(i, "x") for i in range(5)]
    finally:
        runner.close()
    assert answers == [0] * 5 and len(loads) == 2  # the first call and one retry in the second
    assert "failed to load 2 times" in runner.gave_up and "CUDA out of memory" in runner.gave_up
    assert all(r.fallback_reason == "model not loaded" for r in runner.records)
    assert max(r.seconds for r in runner.records[2:]) < 0.05  # no third try: answered at once
    lines = runner.summary_lines()
    assert any("failed to load 2 times" in line for line in lines)
    assert any(line.startswith("!!! WARNING: 5 of 5 problems (100%) got the fallback answer 0") for line in lines)


def test_a_hanging_load_retry_is_bounded_by_the_calls_deadline(monkeypatch):
    from aimo_kernel.core import budget

    cfg = dataclasses.replace(config("fake"), competition="aimo2")  # validated against the real deadline
    monkeypatch.setitem(budget.CALL_DEADLINE_S, "aimo2", 4.0)  # then a 4 s gateway deadline, 1 s margin
    monkeypatch.setattr(budget, "CALL_MARGIN_S", 1.0)
    loads = []

    def factory(cfg):
        loads.append(1)
        if len(loads) == 1:
            raise RuntimeError("first load fails")
        time.sleep(30)  # the retry hangs

    runner = Runner(cfg, engine_factory=factory, started=time.monotonic())
    try:
        runner.answer("a", "x")  # the first call: no deadline, the load fails
        took = []
        for pid in ("b", "c"):
            t0 = time.monotonic()
            runner.answer(pid, "x")
            took.append(time.monotonic() - t0)
    finally:
        runner.close()
    # the retry is given what is left of the call (4 - 1 margin - 1 floor = 2 s), then abandoned
    assert len(loads) == 2 and 1.5 < took[0] < 3.0 and took[1] < 0.05
    assert "did not load within" in runner.gave_up
    assert [r.fallback_reason for r in runner.records] == ["model not loaded"] * 3


def test_a_stalled_engine_is_rebuilt_in_the_next_call_not_the_one_that_saw_it():
    engines: list[FakeAsyncEngine] = []

    def factory(cfg):
        engines.append(FakeAsyncEngine(lambda req: "Thus \\boxed{7}.", chunk=4,
                                       stall_after_tokens=4 if not engines else None))
        return engines[-1]

    runner = Runner(config(), engine_factory=factory, started=time.monotonic())
    try:
        runner.answer("a", "Problem one?")
        assert len(engines) == 1 and runner.restarts == 0  # the stalled call returned without rebuilding
        assert runner.answer("b", "Problem two?") == 7
    finally:
        runner.close()
    assert runner.restarts == 1 and len(engines) == 2 and engines[0].closed


# --- strict mode: failures raise instead of answering the fallback ---------------------------------------


def test_strict_runner_raises_what_a_competition_runner_answers():
    def factory(cfg):
        raise RuntimeError("no GPU")

    strict = Runner(config("fake"), engine_factory=factory, started=time.monotonic(), strict=True)
    with pytest.raises(RuntimeError, match="no GPU"):
        strict.answer("a", "x")
    strict.close()


# --- no silent zeros --------------------------------------------------------------------------------------


def test_fallback_answers_are_counted_with_their_reasons():
    responses = iter(["no box here", "Thus \\boxed{5}.", "still nothing", "Thus \\boxed{5}."] * 10)
    cfg = dataclasses.replace(config("fake"), tir=TIRConfig(num_candidates=1, max_rounds=1, no_code_policy="keep"))
    runner = Runner(cfg, engine_factory=lambda c: FakeEngine(lambda req: next(responses)), started=time.monotonic())
    try:
        answers = [runner.answer(i, f"Problem {i}?") for i in range(3)] + [runner.answer(3, "")]
    finally:
        runner.close()
    assert answers == [0, 5, 0, 0]
    assert [r.fallback_reason for r in runner.records] == ["no candidate answered", "", "no candidate answered",
                                                            "empty problem"]
    lines = fallback_lines(runner.records, 0)
    assert lines[0] == "fallback answers: 3 of 4 (no candidate answered ×2, empty problem ×1)"
    assert lines[1].startswith("!!! WARNING: 3 of 4 problems (75%) got the fallback answer 0")


def test_no_loud_line_at_a_tenth_or_less():
    rec = ProblemRecord(id="a", answer=1, gold=None, seconds=0.0, tokens=0, code_blocks=0, stop_reason="finished",
                        votes={1: 1.0})
    records = [rec] * 9 + [dataclasses.replace(rec, answer=0, fallback_reason="engine stalled")]
    assert fallback_lines(records, 0) == ["fallback answers: 1 of 10 (engine stalled ×1)"]


def _calibrated(tmp_path, fit: dict | None, text: str | None = None) -> Config:
    path = tmp_path / "calibration.json"
    path.write_text(text if text is not None else json.dumps({"version": 1, "startup_s": 3.0, "fit": fit}))
    return dataclasses.replace(config("fake"), budget=dataclasses.replace(config().budget, calibration=str(path)))


@pytest.mark.parametrize(("step_s", "level"), [(1e-6, 0), (10.0, 3)])
def test_the_planner_reads_the_calibration_file(tmp_path, step_s, level):
    cfg = _calibrated(tmp_path, {"fixed_s": step_s, "per_sequence_s": 0.0, "per_context_token_s": 0.0, "r2": 1.0})
    runner = Runner(cfg, engine_factory=lambda c: FakeEngine(lambda req: "\\boxed{5}"), started=time.monotonic())
    try:
        assert runner.answer("a", "Problem?") == 5
    finally:
        runner.close()
    assert runner.records[0].speed_level == level  # a machine 10 s a step cannot give full effort in 20 s


@pytest.mark.parametrize("text", ["{not json", json.dumps({"version": 1}), json.dumps({"fit": {"fixed_s": "x"}}),
                                  json.dumps({"fit": {"fixed_s": -1, "per_sequence_s": 0, "per_context_token_s": 0,
                                                      "r2": 1}})])
def test_a_bad_calibration_file_is_logged_and_the_run_plans_without_it(tmp_path, caplog, text):
    from aimo_kernel.core.throughput import CalibrationError

    cfg = _calibrated(tmp_path, None, text)
    runner = Runner(cfg, engine_factory=lambda c: FakeEngine(lambda req: "\\boxed{5}"), started=time.monotonic())
    try:
        assert runner.answer("a", "Problem?") == 5  # the problem is still solved, at the share's effort
    finally:
        runner.close()
    assert runner.records[0].speed_level == 0 and "calibration file" in caplog.text
    strict = Runner(cfg, engine_factory=lambda c: FakeEngine(lambda req: "\\boxed{5}"), started=time.monotonic(),
                    strict=True)
    try:
        with pytest.raises(CalibrationError, match="calibration file"):
            strict.answer("a", "Problem?")
    finally:
        strict.close()


def test_the_sandbox_starts_before_the_engine_loads_and_survives_a_failed_load():
    seen = []

    def factory(cfg):
        seen.append(runner._sandbox)  # the pool is already warming up while the model loads
        if len(seen) == 1:
            raise RuntimeError("first load fails")
        return FakeEngine(lambda req: "\\boxed{5}")

    cfg = dataclasses.replace(config("fake"), sandbox=dataclasses.replace(config().sandbox, kind="subprocess"))
    runner = Runner(cfg, engine_factory=factory, started=time.monotonic())
    try:
        assert runner.answer("a", "Problem?") == 0  # the fallback; the load is retried in the next call
        assert runner.answer("b", "Problem?") == 5
        assert len(seen) == 2 and seen[0] is not None and seen[1] is seen[0]  # one sandbox for both tries
        assert runner._solver.sandbox is seen[0] and runner._sandbox is None
        assert "sandbox" in runner.startup
    finally:
        runner.close()
