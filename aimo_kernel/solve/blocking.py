"""A blocking engine (``vllm-offline``, ``transformers``) as a streaming one, with a watchdog.

:class:`BlockingEngineAdapter` gives the solver core the :class:`~aimo_kernel.engine.base.AsyncEngine`
it drives: requests that arrive together (one synchronous round, or whatever waits while a call
runs) go to the engine as one ``generate()`` batch, on a daemon thread, so the event loop keeps
running and a hung call cannot keep the process from exiting. One call runs at a time; it gets the
earliest deadline of its batch. Each request's text comes back as one delta; while the call runs
within its deadline the stream yields empty deltas, so the core's stall timeout reads a long batch
as progress.

The watchdog: a call still running :data:`WATCHDOG_GRACE_S` past its deadline has ignored it. The
adapter then turns broken (:attr:`alive` is False): its requests fail with an ``EngineError``, the
core stops waiting for it (:meth:`settle` bounds the wait to the deadline plus the grace) and the
run rebuilds the engine. Covers the blocking protocol only; streaming engines pass through
:func:`streaming` unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from aimo_kernel.engine.base import (
    AsyncEngine,
    Delta,
    Engine,
    EngineError,
    Generation,
    GenerationRequest,
    SamplingParams,
)

WATCHDOG_GRACE_S = 1.0  # how long past its deadline a call may take before the engine counts as broken
HEARTBEAT_S = 0.5  # how often a waiting stream reports that the call is still within its deadline
_POLL_S = 0.05  # how often a batch waiting for a call left over from an earlier loop checks on it
CLOSE_TIMEOUT_S = 30.0  # how long close() waits for the engine to close
log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    request: GenerationRequest
    params: SamplingParams
    request_id: str
    future: asyncio.Future[Generation]


class BlockingEngineAdapter:
    """Drives a blocking :class:`Engine` from an event loop; see the module docstring."""

    def __init__(self, engine: Engine, *, grace_s: float = WATCHDOG_GRACE_S) -> None:
        self.engine = engine
        self.name = engine.name
        self.max_model_len = engine.max_model_len
        self.grace_s = grace_s
        self.broken = ""  # why the engine must be rebuilt ("": it is sound)
        self._queue: list[_Job] = []
        self._batcher: asyncio.Task[None] | None = None
        self._call_deadline: float | None = None  # the running call's deadline (None: no call running)
        self._call_done = threading.Event()
        self._call_done.set()

    def chat_prompt(self, problem: str) -> str:
        return self.engine.chat_prompt(problem)

    def count_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text)

    @property
    def alive(self) -> bool:
        self._check_overdue()
        return not self.broken and bool(getattr(self.engine, "alive", True))

    def _check_overdue(self) -> None:
        deadline = self._call_deadline
        if deadline is not None and time.monotonic() > deadline + self.grace_s and not self.broken:
            self.broken = f"generate() ran more than {self.grace_s:g} s past its deadline"

    # -- the streaming side --------------------------------------------------------------------

    async def stream(self, request: GenerationRequest, params: SamplingParams, request_id: str) -> AsyncIterator[Delta]:
        if not self.alive:
            raise EngineError(f"engine {self.name} is broken: {self.broken or 'it died'}")
        loop = asyncio.get_running_loop()
        job = _Job(request, params, request_id, loop.create_future())
        self._queue.append(job)
        if self._batcher is None or self._batcher.done():
            self._batcher = loop.create_task(self._drain())
        try:
            while not job.future.done():
                await asyncio.wait({job.future}, timeout=HEARTBEAT_S)
                if not job.future.done():
                    if not self.alive:
                        raise EngineError(f"engine {self.name} is broken: {self.broken or 'it died'}")
                    yield Delta(text="", num_tokens=0)  # still within its deadline: progress
        finally:
            if not job.future.done():  # cancelled or failed while waiting: the batch drops it
                job.future.cancel()
        gen = job.future.result()
        yield Delta(text=gen.text, num_tokens=gen.num_tokens, finish_reason=gen.finish_reason,
                    prompt_tokens=gen.prompt_tokens, cached_tokens=gen.cached_tokens,
                    logprobs=gen.logprobs, top_logprobs=gen.top_logprobs)

    async def abort(self, request_id: str) -> None:
        """A queued request is dropped; a running ``generate()`` cannot be interrupted (the deadline bounds it)."""
        for job in self._queue:
            if job.request_id == request_id:
                job.future.cancel()

    async def settle(self) -> None:
        """Wait for a call due within the grace to return; past its deadline + grace, the engine is broken.

        A call due later (a problem stopped early) is left running: the next batch waits for it.
        """
        deadline = self._call_deadline
        if deadline is None or deadline > time.monotonic() + self.grace_s:
            return
        await asyncio.to_thread(self._call_done.wait, max(0.0, deadline + self.grace_s - time.monotonic()))
        self._check_overdue()

    # -- the blocking side ---------------------------------------------------------------------

    async def _drain(self) -> None:
        while self._queue:
            await self._wait_for_call()
            params = next((j.params for j in self._queue if not j.future.done()), None)
            batch = [j for j in self._queue if not j.future.done() and j.params == params]
            self._queue = [j for j in self._queue if not j.future.done() and j.params != params]
            if batch:
                await self._run(batch)

    async def _wait_for_call(self) -> None:
        """A call made from an earlier event loop may still run: one call at a time."""
        while not self._call_done.is_set() and self.alive:
            await asyncio.sleep(_POLL_S)

    async def _run(self, batch: list[_Job]) -> None:
        if not self.alive:
            _fail(batch, EngineError(f"engine {self.name} is broken: {self.broken or 'it died'}"))
            return
        deadline = min((j.request.deadline for j in batch if j.request.deadline is not None), default=math.inf)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Generation]] = loop.create_future()
        self._call_deadline = deadline
        self._call_done.clear()
        thread = threading.Thread(target=self._call, args=(loop, done, [j.request for j in batch], batch[0].params,
                                                           deadline), name=f"aimo-{self.name}-generate", daemon=True)
        thread.start()
        try:
            gens = await done
        except Exception as exc:  # the engine's failure is every request's of the batch
            _fail(batch, exc if isinstance(exc, EngineError) else EngineError(f"{type(exc).__name__}: {exc}"))
            return
        if len(gens) != len(batch):
            _fail(batch, EngineError(f"generate() returned {len(gens)} generations for {len(batch)} requests"))
            return
        for job, gen in zip(batch, gens):
            if not job.future.done():
                job.future.set_result(gen)

    def _call(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[list[Generation]],
              requests: Sequence[GenerationRequest], params: SamplingParams, deadline: float) -> None:
        """On the call's own thread: generate, and hand the outcome back to the loop (whatever happens)."""
        outcome: list[Generation] | Exception = EngineError("generate() was interrupted")
        try:
            outcome = self.engine.generate(requests, params, deadline=deadline)
        except Exception as exc:  # handed to the loop: the batch's requests fail with it
            outcome = exc
        finally:
            self._call_deadline = None
            self._call_done.set()
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits for this batch any more
                loop.call_soon_threadsafe(_settle_future, done, outcome)

    def close(self) -> None:
        """Close the engine on a thread of its own, waited for at most :data:`CLOSE_TIMEOUT_S`: a close
        that hangs behind a stuck call must not hang the caller (often the run's event loop)."""
        self.broken = self.broken or "closed"
        closer = threading.Thread(target=self.engine.close, name=f"aimo-{self.name}-close", daemon=True)
        closer.start()
        closer.join(CLOSE_TIMEOUT_S)
        if closer.is_alive():
            log.warning("engine %s did not close within %.0f s; left behind", self.name, CLOSE_TIMEOUT_S)


def _settle_future(done: asyncio.Future[list[Generation]], outcome: list[Generation] | Exception) -> None:
    if done.done():
        return
    if isinstance(outcome, Exception):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)


def _fail(batch: Sequence[_Job], exc: BaseException) -> None:
    for job in batch:
        if not job.future.done():
            job.future.set_exception(exc)


def streaming(engine: Engine | AsyncEngine) -> AsyncEngine:
    """The engine as the solver core drives it: streaming engines as they are, blocking ones adapted."""
    if isinstance(engine, AsyncEngine):
        return engine
    return BlockingEngineAdapter(engine)
