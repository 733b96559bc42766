"""The scheduler on the simulated T4 engine in virtual time: both modes, same work, the pipeline wins."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from aimo_kernel.config.presets import get_preset
from aimo_kernel.solve.pipeline import Solver
from aimo_kernel.testing.hardware import T4X2
from aimo_kernel.testing.simulated import SimulatedEngine
from aimo_kernel.testing.simulation import SimulatedSandbox, TraceModel, run_virtual, tir_responder


def test_virtual_time_moves_without_waiting():
    async def nap():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(3600)
        return loop.time() - t0

    start = time.monotonic()
    assert run_virtual(nap()) == 3600
    assert time.monotonic() - start < 1.0


def solve(mode: str, *, early_stop: bool = False, agreement: float = 0.5):
    cfg = get_preset("aimo1-t4x2")
    vote = cfg.vote if early_stop else dataclasses.replace(cfg.vote, agreement_rules=(), stop_when_decided=False)
    cfg = dataclasses.replace(cfg, vote=vote, tir=dataclasses.replace(cfg.tir, mode=mode, num_candidates=16,
                                                                       max_candidates=16))

    async def run():
        engine = SimulatedEngine(T4X2, tir_responder(TraceModel(agreement=agreement)))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        result = await Solver(engine, SimulatedSandbox(), cfg).solve("p", seconds=3600)
        engine.close()
        return result, loop.time() - t0, engine

    return run_virtual(run())


def test_same_work_in_both_modes_and_the_pipeline_takes_less_time():
    sync, sync_wall, sync_engine = solve("sync")
    pipe, pipe_wall, pipe_engine = solve("async")
    assert sync_engine.tokens == pipe_engine.tokens  # identical candidate texts
    assert [c.text for c in sync.candidates] == [c.text for c in pipe.candidates]
    assert pipe_wall < sync_wall
    assert pipe_engine.busy_seconds / pipe_wall > sync_engine.busy_seconds / sync_wall


def test_early_stopping_saves_tokens_and_keeps_the_answer():
    full, _, full_engine = solve("async", agreement=0.9)
    early, _, early_engine = solve("async", early_stop=True, agreement=0.9)
    assert early.stop_reason == "agreement" and early.agreement_rule
    assert early_engine.tokens < full_engine.tokens
    assert early.answer == full.answer == 42


def test_the_admission_window_only_delays_a_request_by_its_length():
    from aimo_kernel.engine.base import GenerationRequest, SamplingParams

    async def first_delta(window: float) -> float:
        engine = SimulatedEngine(T4X2, lambda req: "x" * 64, coalesce_s=window)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            async for _ in engine.stream(GenerationRequest(prompt="p", max_tokens=64, seed=1),
                                           SamplingParams(temperature=1.0), "r"):
                return loop.time() - t0
        finally:
            engine.close()
        return -1.0

    plain, windowed = run_virtual(first_delta(0.0)), run_virtual(first_delta(0.004))
    assert plain > 0 and abs(windowed - plain - 0.004) < 1e-9
