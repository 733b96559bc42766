"""SC-TIR over a streaming engine: the asynchronous pipeline, and synchronous rounds as the baseline.

``async`` mode: every candidate runs its own generate → code → continue loop, so the engine never
waits for the slowest candidate of a round and code runs while other candidates generate. While the
vote is undecided and time is left, each finished candidate is replaced by a new one (up to
``max_candidates``). ``sync`` mode: Numina's rounds (all active candidates generate, then all code
runs), on the same engine, for comparison.

Every wait is bounded by the problem's deadline and by the stall timeout (no token from any candidate
for ``stall_timeout_s`` ends the problem). When a problem ends, for any reason, every request still
in flight is cancelled and aborted in the engine. All times come from the running event loop's clock,
so the same code runs in real time or in a simulation's virtual time. :meth:`AsyncSCTIR.solve` never
raises: a failure answers the best vote so far, or the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aimo_kernel.agreement import AgreementTracker
from aimo_kernel.config import Config
from aimo_kernel.engine.base import AsyncEngine, Generation, GenerationRequest
from aimo_kernel.sandbox import ExecutionResult
from aimo_kernel.solver import (
    MIN_CODE_SECONDS,
    REFUSALS,
    Candidate,
    Effort,
    RoundRecord,
    SolveResult,
    absorb,
    answer_rule,
    append_output,
    build_result,
    candidate_answer,
    candidate_request,
    code_flags,
    default_effort,
    fallback_result,
    problem_prompt,
    sampling_params,
    seed_base,
    vote_so_far,
)

log = logging.getLogger(__name__)
ABORT_GRACE_S = 2.0  # how long cancelled candidates get to abort their requests


class EngineStalled(RuntimeError):
    """No candidate produced a token for the stall timeout."""


@dataclass
class _Problem:
    prompt: str
    base: int
    deadline: float
    effort: Effort
    last_progress: float
    candidates: list[Candidate] = field(default_factory=list)


async def run_code(sandbox: Any, code: str, timeout_s: float) -> ExecutionResult:
    """Run one block without blocking the event loop (the sandbox's own ``arun`` if it has one)."""
    if hasattr(sandbox, "arun"):
        result: ExecutionResult = await sandbox.arun(code, timeout_s=timeout_s)
        return result
    results = await asyncio.to_thread(sandbox.run_many, [code], timeout_s=timeout_s)
    return results[0]


class AsyncSCTIR:
    _ids = itertools.count()

    def __init__(self, engine: AsyncEngine, sandbox: Any, config: Config) -> None:
        self.engine = engine
        self.sandbox = sandbox
        self.config = config
        self.rule = answer_rule(config)
        self.params = sampling_params(config)

    async def solve(self, problem: str, *, seconds: float, effort: Effort | None = None) -> SolveResult:
        """Answer one problem within ``seconds`` of the event loop's clock; never raises."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        st = _Problem(prompt="", base=seed_base(self.config, problem), deadline=start + seconds,
                      effort=effort or default_effort(self.config.tir), last_progress=start)
        try:
            prompt, refused = problem_prompt(self.engine, problem)  # type: ignore[arg-type]
            if refused:
                return fallback_result(self.config, refused, REFUSALS[refused], seconds=loop.time() - start)
            st.prompt = prompt
            if self.config.tir.mode == "sync":
                reason = await self._rounds(st)
            else:
                reason = await self._pipeline(st)
        except Exception as exc:  # keep what the candidates found so far
            log.exception("scheduler failed; voting on what is there")
            result = build_result(st.candidates, self.config, self.rule, loop.time() - start, "error")
            return _with_error(result, f"{type(exc).__name__}: {exc}")
        return build_result(st.candidates, self.config, self.rule, loop.time() - start, reason)

    # -- one candidate ---------------------------------------------------------------------------

    async def _generate(self, st: _Problem, req: GenerationRequest, rid: str) -> Generation:
        pieces: list[str] = []
        tokens = prompt_tokens = cached = 0
        finish = "deadline"
        try:
            async for delta in self.engine.stream(req, self.params, rid):
                pieces.append(delta.text)
                tokens += delta.num_tokens
                prompt_tokens = delta.prompt_tokens or prompt_tokens
                cached = delta.cached_tokens or cached
                st.last_progress = asyncio.get_running_loop().time()
                if delta.finish_reason is not None:
                    finish = delta.finish_reason
                    break
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.engine.abort(rid), ABORT_GRACE_S)
            raise
        return Generation(text="".join(pieces), num_tokens=tokens, prompt_tokens=prompt_tokens,
                          finish_reason=finish, cached_tokens=cached)

    async def _step(self, st: _Problem, cand: Candidate, rnd: int) -> str | None:
        """One generation of a candidate; returns the code it asks to run, if any."""
        req = candidate_request(self.engine, self.config, st.prompt, cand, rnd, st.base)  # type: ignore[arg-type]
        if req is None:
            return None
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        gen = await self._generate(st, req, f"p{next(self._ids)}-c{cand.index}-r{rnd}")
        cand.log.append(RoundRecord(rnd, gen.prompt_tokens, gen.num_tokens, loop.time() - t0, finish=gen.finish_reason))
        return absorb(cand, gen, self.config.tir, rnd == st.effort.max_rounds - 1)

    async def _code(self, st: _Problem, cand: Candidate, code: str) -> None:
        left = st.deadline - asyncio.get_running_loop().time()
        if left < MIN_CODE_SECONDS:
            cand.status, cand.reason = "done", "deadline"
            return
        res = await run_code(self.sandbox, code, min(self.config.sandbox.timeout_s, left))
        st.last_progress = asyncio.get_running_loop().time()  # code that ran is progress too
        rec = cand.log[-1]
        cand.log[-1] = RoundRecord(rec.round, rec.tokens_in, rec.tokens_out, rec.gen_seconds, res.seconds,
                                   rec.finish, code_flags(res))
        append_output(cand, res, self.config.tir.output_max_chars)

    async def _candidate(self, st: _Problem, cand: Candidate) -> Candidate:
        for rnd in range(st.effort.max_rounds):
            code = await self._step(st, cand, rnd)
            if code is not None:
                await self._code(st, cand, code)
            if cand.status != "active":
                return cand
        cand.status, cand.reason = "done", "rounds"
        return cand

    # -- the asynchronous pipeline ---------------------------------------------------------------

    async def _pipeline(self, st: _Problem) -> str:
        effort = st.effort
        total = max(effort.max_candidates, effort.num_candidates)
        tracker = AgreementTracker(self.config.vote, richness=effort.richness)
        inflight: dict[asyncio.Task[Candidate], Candidate] = {}

        def launch() -> None:
            cand = Candidate(len(st.candidates))
            st.candidates.append(cand)
            inflight[asyncio.ensure_future(self._candidate(st, cand))] = cand

        for _ in range(min(effort.num_candidates, total)):
            launch()
        try:
            while inflight:
                done = await self._wait(st, set(inflight))
                for task in done:
                    cand = inflight.pop(task)
                    if task.exception() is not None:
                        cand.status, cand.reason = "done", "error"
                    tracker.add(candidate_answer(cand, self.rule))
                decided = tracker.decided(still_to_come=len(inflight) + total - len(st.candidates))
                if decided:
                    return f"agreement:{decided}"
                while len(inflight) < effort.num_candidates and len(st.candidates) < total:
                    launch()
            return "finished"
        except (TimeoutError, EngineStalled) as stop:
            return "stall" if isinstance(stop, EngineStalled) else "deadline"
        finally:
            await _cancel(inflight)

    async def _wait(self, st: _Problem, tasks: set[Any]) -> set[Any]:
        """The tasks that finished; TimeoutError at the deadline, EngineStalled on a stall."""
        loop = asyncio.get_running_loop()
        stall = self.config.budget.stall_timeout_s
        while True:
            now = loop.time()
            if now >= st.deadline:
                raise TimeoutError
            if now - st.last_progress >= stall:
                raise EngineStalled
            timeout = min(st.deadline - now, st.last_progress + stall - now)
            done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if done:
                return done

    # -- synchronous rounds ----------------------------------------------------------------------

    async def _rounds(self, st: _Problem) -> str:
        st.candidates = [Candidate(i) for i in range(st.effort.num_candidates)]
        tracker = AgreementTracker(self.config.vote, richness=st.effort.richness)
        for rnd in range(st.effort.max_rounds):
            active = [c for c in st.candidates if c.status == "active"]
            if not active:
                return "finished"
            try:
                await self._barrier(st, [self._step(st, c, rnd) for c in active], active)
            except (TimeoutError, EngineStalled) as stop:
                return "stall" if isinstance(stop, EngineStalled) else "deadline"
            decided = vote_so_far(st.candidates, tracker, self.rule)
            if decided:
                return f"agreement:{decided}"
        for c in st.candidates:
            if c.status == "active":
                c.status, c.reason = "done", "rounds"
        return "finished"

    async def _barrier(self, st: _Problem, steps: Sequence[Any], active: list[Candidate]) -> None:
        """Generate for every active candidate, then run every candidate's code: one round."""
        tasks: dict[asyncio.Future[Any], Candidate] = {asyncio.ensure_future(s): c for s, c in zip(steps, active)}
        codes: dict[int, str] = {}
        try:
            pending = set(tasks)
            while pending:
                for task in await self._wait(st, pending):
                    pending.discard(task)
                    code = None if task.exception() is not None else task.result()
                    if code is not None:
                        codes[tasks[task].index] = code
        finally:
            await _cancel(tasks)
        byindex = {c.index: c for c in active}
        runs = {asyncio.ensure_future(self._code(st, byindex[i], code)): byindex[i] for i, code in codes.items()}
        try:
            pending = set(runs)
            while pending:
                pending -= await self._wait(st, pending)
        finally:
            await _cancel(runs)


async def _cancel(tasks: dict[Any, Candidate]) -> None:
    """Cancel what is still running and give it a moment to abort its engine requests."""
    live = [t for t in tasks if not t.done()]
    for task in live:
        task.cancel()
        cand = tasks[task]
        if cand.status == "active":
            cand.status, cand.reason = "done", "stopped"
    if live:
        await asyncio.wait(live, timeout=ABORT_GRACE_S)


def _with_error(result: SolveResult, error: str) -> SolveResult:
    return replace(result, error=error)
