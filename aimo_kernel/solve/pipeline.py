"""The SC-TIR solver core: one asynchronous pipeline, with Numina's synchronous rounds as a mode of it.

``async`` mode (``tir.mode``): every candidate runs its own generate → code → continue loop, so the
engine never waits for the slowest candidate of a round and code runs while other candidates
generate. While the vote is undecided and time is left, each finished candidate is replaced by a new
one (up to ``max_candidates``); answers scattered past ``vote.give_up_rule`` end the problem early too
(stop ``scattered``). ``sync`` mode: Numina's rounds, a barrier between them (all active
candidates generate, then all code runs, then the vote may stop the problem).

Any engine: a streaming one is driven directly, a blocking one through
:mod:`aimo_kernel.solve.blocking` (one ``generate()`` batch per round, with a watchdog). The model's
text conventions go through a :class:`~aimo_kernel.solve.dialect.Dialect`, each candidate's state
through :class:`~aimo_kernel.solve.candidate.Candidate`.

Every wait is bounded by the problem's deadline and by the stall timeout (no progress from any
candidate for ``stall_timeout_s`` ends the problem). When a problem ends, for any reason, every
request still in flight is cancelled and aborted in the engine. All times come from the running
event loop's clock, so the same code runs in real time or in a simulation's virtual time.

Failures: what the engine raises ends that candidate (reason ``error``; every candidate failing ends
the problem with ``error``), a deadline or a stall ends the problem; all are results. Anything else
— a bug in the rules, the dialect or the vote, a sandbox that raises — propagates to the caller,
which keeps the never-raise guarantee at the competition boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from aimo_kernel.config import Config
from aimo_kernel.core.agreement import AgreementTracker
from aimo_kernel.core.confidence import ConfidenceMeter
from aimo_kernel.engine.base import AsyncEngine, Engine, Generation, GenerationRequest
from aimo_kernel.sandbox import ExecutionResult
from aimo_kernel.solve.blocking import BlockingEngineAdapter, streaming
from aimo_kernel.solve.candidate import Candidate, CodeSession
from aimo_kernel.solve.dialect import Dialect, get_dialect
from aimo_kernel.solve.result import (
    REFUSALS,
    Effort,
    SolveResult,
    answer_rule,
    build_result,
    default_effort,
    fallback_result,
    problem_prompt,
    sampling_params,
    seed_base,
)
from aimo_kernel.vocab import CandidateReason, CandidateStatus, FinishReason, StopReason

log = logging.getLogger(__name__)
R = TypeVar("R")
ABORT_GRACE_S = 2.0  # how long cancelled candidates get to abort their requests
MIN_CODE_SECONDS = 0.2  # below this, code is not started: it could not finish before the deadline


@runtime_checkable
class AsyncCodeRunner(Protocol):
    """A sandbox with its own event-loop entry point (the warm pool, the simulation's sandbox)."""

    async def arun(self, code: str, *, timeout_s: float | None = None) -> ExecutionResult: ...

    def close(self) -> None: ...


class BatchCodeRunner(Protocol):
    """A sandbox that runs blocks from a thread (``SubprocessSandbox``, test doubles)."""

    def run_many(self, codes: Sequence[str], *, timeout_s: float | None = None) -> list[ExecutionResult]: ...

    def close(self) -> None: ...


CodeRunner = AsyncCodeRunner | BatchCodeRunner
SessionFactory = Callable[[], CodeSession]  # a fresh interpreter for one candidate (persistent sessions)
Stop = tuple[StopReason, str]  # why the problem stopped, and the agreement rule that stopped it ("" if none)


def _session_factory(sandbox: CodeRunner, config: Config, dialect: Dialect) -> SessionFactory | None:
    """``sandbox.session = "persistent"``, or a dialect whose model expects a kernel (harmony, chat-tools):
    every candidate gets its own interpreter from the sandbox, with the sandbox's limits."""
    open_session = getattr(sandbox, "open_session", None)
    wanted = config.sandbox.session == "persistent" or getattr(dialect, "persistent", False)
    if not wanted or open_session is None:
        return None
    factory: SessionFactory = open_session
    return factory


class EngineStalled(RuntimeError):
    """No candidate made progress for the stall timeout."""


async def run_code(sandbox: CodeRunner, code: str, timeout_s: float) -> ExecutionResult:
    """Run one block without blocking the event loop (the sandbox's own ``arun`` if it has one)."""
    if isinstance(sandbox, AsyncCodeRunner):  # a candidate's CodeSession is one too
        result: ExecutionResult = await sandbox.arun(code, timeout_s=timeout_s)
        return result
    results = await asyncio.to_thread(sandbox.run_many, [code], timeout_s=timeout_s)
    return results[0]


@dataclass
class _Problem:
    prompt: str
    base: int
    deadline: float  # on the event loop's clock
    effort: Effort
    last_progress: float
    candidates: list[Candidate] = field(default_factory=list)


class Solver:
    """Answers problems with SC-TIR over one engine and one sandbox; see the module docstring."""

    _ids = itertools.count()

    def __init__(self, engine: Engine | AsyncEngine, sandbox: CodeRunner, config: Config, *,
                 dialect: Dialect | None = None, sessions: SessionFactory | None = None) -> None:
        self.engine: AsyncEngine = streaming(engine)
        self.sandbox = sandbox
        self.config = config
        self.dialect = dialect or get_dialect(config.tir.dialect)
        self.sessions = sessions or _session_factory(sandbox, config, self.dialect)
        self.rule = answer_rule(config)
        self.params = sampling_params(config, self.dialect)

    async def solve(self, problem: str, *, seconds: float | None = None, effort: Effort | None = None) -> SolveResult:
        """Answer one problem within ``seconds`` (default: the per-problem cap) of the event loop's clock."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        seconds = self.config.budget.per_problem_seconds if seconds is None else seconds
        st = _Problem(prompt="", base=seed_base(self.config, problem), deadline=start + seconds,
                      effort=effort or default_effort(self.config.tir), last_progress=start)
        prompt, refused = problem_prompt(self.engine, self.dialect, problem)
        if refused is not None:
            return fallback_result(self.config, refused, REFUSALS[refused], seconds=loop.time() - start)
        st.prompt = prompt
        try:
            stop, rule = await (self._rounds(st) if self.config.tir.mode == "sync" else self._pipeline(st))
        finally:
            for cand in st.candidates:
                cand.end_session()
            if isinstance(self.engine, BlockingEngineAdapter):
                await self.engine.settle()  # a call that ignores its deadline is found out here, bounded
        return build_result(st.candidates, self.config, self.rule, self.dialect, seconds=loop.time() - start,
                            stop=stop, agreement_rule=rule)

    @property
    def blocking(self) -> bool:
        """Whether the engine is a blocking one, driven through the adapter (one call at a time)."""
        return isinstance(self.engine, BlockingEngineAdapter)

    def run(self, problem: str, *, seconds: float | None = None, effort: Effort | None = None) -> SolveResult:
        """:meth:`solve` on a fresh event loop, for callers without one (tests, scripts)."""
        return asyncio.run(self.solve(problem, seconds=seconds, effort=effort))

    # -- one candidate ---------------------------------------------------------------------------

    def _new_candidate(self, st: _Problem) -> Candidate:
        cand = Candidate(len(st.candidates), session=self.sessions() if self.sessions else None,
                         meter=ConfidenceMeter(tail_tokens=self.config.vote.confidence_tail_tokens))
        st.candidates.append(cand)
        return cand

    async def _generate(self, st: _Problem, req: GenerationRequest, rid: str,
                        cand: Candidate) -> tuple[Generation, str]:
        """The generation, and "" or the engine's failure (then the generation holds what came before it).

        Log-probabilities go into the candidate's meter (running sums) as they arrive; the generation
        keeps none, so a long candidate costs no per-token lists. A generation cut off by the problem's
        stop still counts its tokens as the candidate's (the planner reads how much candidates wrote)."""
        meter = cand.meter
        pieces: list[str] = []
        tokens = prompt_tokens = cached = 0
        finish: str = FinishReason.DEADLINE
        error = ""
        try:
            async for delta in self.engine.stream(req, self.params, rid):
                pieces.append(delta.text)
                tokens += delta.num_tokens
                prompt_tokens = delta.prompt_tokens or prompt_tokens
                cached = delta.cached_tokens or cached
                if delta.top_logprobs:
                    meter.add(delta.logprobs, delta.top_logprobs)
                st.last_progress = asyncio.get_running_loop().time()
                if delta.finish_reason is not None:
                    finish = delta.finish_reason
                    break
        except asyncio.CancelledError:
            cand.tokens += tokens
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.engine.abort(rid), ABORT_GRACE_S)
            raise
        except Exception as exc:  # the engine failed this request: the candidate ends, the problem goes on
            log.warning("engine failed request %s: %s: %s", rid, type(exc).__name__, exc)
            error, finish = f"{type(exc).__name__}: {exc}", FinishReason.ERROR
        gen = Generation(text="".join(pieces), num_tokens=tokens, prompt_tokens=prompt_tokens, finish_reason=finish,
                         cached_tokens=cached)
        return gen, error

    def _deadline_for_engine(self, st: _Problem) -> float:
        """The problem's deadline on ``time.monotonic()``, the clock blocking engines read."""
        return time.monotonic() + (st.deadline - asyncio.get_running_loop().time())

    async def _step(self, st: _Problem, cand: Candidate, rnd: int) -> str | None:
        """One generation of a candidate; returns the code it asks to run, if any."""
        req = cand.request(self.engine, st.prompt, max_new_tokens=self.config.sampling.max_new_tokens,
                           seed=cand.seed(st.base, rnd), deadline=self._deadline_for_engine(st))
        if req is None:
            return None
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        gen, error = await self._generate(st, req, f"p{next(self._ids)}-c{cand.index}-r{rnd}", cand)
        if error:
            cand.fail(error)
            return None
        return cand.absorb(gen, self.dialect, self.config.tir, rnd=rnd, gen_seconds=loop.time() - t0,
                           last_round=rnd == st.effort.max_rounds - 1)

    async def _code(self, st: _Problem, cand: Candidate, code: str) -> None:
        left = st.deadline - asyncio.get_running_loop().time()
        if left < MIN_CODE_SECONDS:
            cand.finish(CandidateReason.DEADLINE)
            return
        runner: CodeRunner = cand.session if cand.session is not None else self.sandbox
        res = await run_code(runner, code, min(self.config.sandbox.timeout_s, left))
        st.last_progress = asyncio.get_running_loop().time()  # code that ran is progress too
        cand.add_output(res, self.dialect, self.config.tir.output_max_chars)

    async def _candidate(self, st: _Problem, cand: Candidate) -> Candidate:
        try:
            for rnd in range(st.effort.max_rounds):
                code = await self._step(st, cand, rnd)
                if code is not None:
                    await self._code(st, cand, code)
                if not cand.active:
                    return cand
            cand.out_of_rounds()
            return cand
        finally:
            cand.end_session()

    # -- the asynchronous pipeline ---------------------------------------------------------------

    async def _pipeline(self, st: _Problem) -> Stop:
        effort = st.effort
        tracker = AgreementTracker(self.config.vote, richness=effort.richness)
        inflight: dict[asyncio.Task[Candidate], Candidate] = {}

        def launch() -> None:
            cand = self._new_candidate(st)
            inflight[asyncio.ensure_future(self._candidate(st, cand))] = cand

        for _ in range(min(effort.num_candidates, effort.total)):
            launch()
        try:
            while inflight:
                for task in await self._wait(st, set(inflight)):
                    inflight.pop(task)
                    res = task.result().result(self.dialect, self.rule)  # a bug in a candidate propagates
                    tracker.add(res.answer, res.confidence, res.code_verified)
                decided = tracker.decided(still_to_come=len(inflight) + effort.total - len(st.candidates))
                if decided:
                    return StopReason.AGREEMENT, decided
                if tracker.scattered():
                    return StopReason.SCATTERED, ""
                if not self.engine.alive:  # a dead engine fails every new candidate at once
                    return StopReason.ERROR, ""
                while len(inflight) < effort.num_candidates and len(st.candidates) < effort.total:
                    launch()
            return StopReason.FINISHED, ""
        except TimeoutError:
            return StopReason.DEADLINE, ""
        except EngineStalled:
            return StopReason.STALL, ""
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

    async def _rounds(self, st: _Problem) -> Stop:
        for _ in range(st.effort.num_candidates):
            self._new_candidate(st)
        tracker = AgreementTracker(self.config.vote, richness=st.effort.richness)
        for rnd in range(st.effort.max_rounds):
            active = [c for c in st.candidates if c.active]
            if not active:
                return StopReason.FINISHED, ""
            try:
                await self._round(st, active, rnd)
            except TimeoutError:
                return StopReason.DEADLINE, ""
            except EngineStalled:
                return StopReason.STALL, ""
            if rnd == st.effort.max_rounds - 1:  # nobody is still to come after the last round
                for c in active:
                    c.out_of_rounds()
            done = [c.result(self.dialect, self.rule) for c in st.candidates if c.status is CandidateStatus.DONE]
            decided = tracker.recount([(r.answer, r.confidence, r.code_verified) for r in done],
                                      still_to_come=sum(c.active for c in st.candidates))
            if decided:
                return StopReason.AGREEMENT, decided
            if tracker.scattered():
                return StopReason.SCATTERED, ""
        return StopReason.FINISHED, ""

    async def _round(self, st: _Problem, active: list[Candidate], rnd: int) -> None:
        """Generate for every active candidate, then run every candidate's code: the barrier."""
        steps = {asyncio.ensure_future(self._step(st, c, rnd)): c for c in active}
        codes = await self._all(st, steps)
        runs = {asyncio.ensure_future(self._code(st, cand, code)): cand
                for cand, code in zip(active, (codes[t] for t in steps)) if code is not None}
        await self._all(st, runs)

    async def _all(self, st: _Problem, tasks: dict[asyncio.Task[R], Candidate]) -> dict[asyncio.Task[R], R]:
        """Every task's result (a bug in one propagates), within the deadline and the stall timeout."""
        results: dict[asyncio.Task[R], R] = {}
        try:
            pending = set(tasks)
            while pending:
                for task in await self._wait(st, pending):
                    pending.discard(task)
                    results[task] = task.result()
        finally:
            await _cancel(tasks)
        return results


async def _cancel(tasks: dict[Any, Candidate]) -> None:
    """Cancel what is still running and give it a moment to abort its engine requests."""
    live = [t for t in tasks if not t.done()]
    for task in live:
        task.cancel()
        tasks[task].stop()
    if live:
        await asyncio.wait(live, timeout=ABORT_GRACE_S)
    for task in tasks:  # a second failure while the first propagates is not news: mark it seen
        if task.done() and not task.cancelled():
            task.exception()

