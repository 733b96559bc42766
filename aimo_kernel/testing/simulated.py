"""A streaming engine that paces canned text by a GPU throughput model, for benchmarks in virtual time.

Every request in flight shares the decode steps of :class:`~aimo_kernel.testing.hardware.ThroughputModel`
(one token per request per step, the step time growing with the batch and its context), which is
what makes synchronous rounds wait on their slowest candidate. Run it on
:func:`aimo_kernel.testing.simulation.run_virtual` and a whole competition takes seconds. It also keeps the
meters the benchmark reports: busy time and tokens. Prefill is not modelled (prompts are prefix-cached
in the real engine). Not a production path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aimo_kernel.engine.base import AsyncEngine, Delta, GenerationRequest, SamplingParams
from aimo_kernel.testing.hardware import ThroughputModel

CHARS_PER_TOKEN = 4


@dataclass
class _Stream:
    text: str
    finish: str
    context: int
    sent: int = 0
    queue: asyncio.Queue[Delta | None] = field(default_factory=asyncio.Queue)


class SimulatedEngine:
    name = "simulated"

    def __init__(self, model: ThroughputModel, responder: Callable[[GenerationRequest], str], *,
                 max_model_len: int = 4096, steps_per_delta: int = 8, coalesce_s: float = 0.0) -> None:
        self.model = model
        self.coalesce_s = coalesce_s  # the real engine's admission window: a new request waits up to this long
        self.responder = responder
        self.max_model_len = max_model_len
        self.steps_per_delta = steps_per_delta
        self.alive = True
        self.busy_seconds = 0.0  # time with at least one sequence decoding
        self.batch_seconds = 0.0  # time × sequences decoding: / busy_seconds is the mean batch
        self.tokens = 0
        self._active: dict[str, _Stream] = {}
        self._wake = asyncio.Event()
        self._stepper: asyncio.Task[None] | None = None

    def chat_prompt(self, problem: str) -> str:
        return f"### Problem: {problem}\n### Solution: "

    def count_tokens(self, text: str) -> int:
        return len(text) // CHARS_PER_TOKEN + 1

    def _cut(self, text: str, req: GenerationRequest, params: SamplingParams) -> tuple[str, str]:
        finish = "eos"
        cut = min((text.find(s) + len(s) for s in params.stop if s in text), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        if len(text) > req.max_tokens * CHARS_PER_TOKEN:
            text, finish = text[: req.max_tokens * CHARS_PER_TOKEN], "length"
        return text, finish

    async def stream(self, request: GenerationRequest, params: SamplingParams, request_id: str) -> AsyncIterator[Delta]:
        if self.coalesce_s > 0:  # costs the waiting time only: prefill is not modelled
            await asyncio.sleep(self.coalesce_s)
        text, finish = self._cut(self.responder(request), request, params)
        st = _Stream(text=text, finish=finish, context=self.count_tokens(request.prompt))
        self._active[request_id] = st
        self._wake.set()
        if self._stepper is None or self._stepper.done():
            self._stepper = asyncio.ensure_future(self._run())
        try:
            while (delta := await st.queue.get()) is not None:
                yield delta
                if delta.finish_reason is not None:
                    break
        finally:
            self._active.pop(request_id, None)

    async def _run(self) -> None:
        while True:
            if not self._active:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = len(self._active)
            context = sum(s.context + s.sent // CHARS_PER_TOKEN for s in self._active.values()) / batch
            seconds = self.steps_per_delta * self.model.step_seconds(batch, context)
            await asyncio.sleep(seconds)
            self.busy_seconds += seconds
            self.batch_seconds += seconds * batch
            for st in list(self._active.values()):
                self._advance(st)

    def _advance(self, st: _Stream) -> None:
        piece = st.text[st.sent: st.sent + self.steps_per_delta * CHARS_PER_TOKEN]
        st.sent += len(piece)
        tokens = max(1, len(piece) // CHARS_PER_TOKEN)
        self.tokens += tokens
        done = st.sent >= len(st.text)
        st.queue.put_nowait(Delta(text=piece, num_tokens=tokens, finish_reason=st.finish if done else None))
        if done:
            self._active = {k: v for k, v in self._active.items() if v is not st}

    async def abort(self, request_id: str) -> None:
        st = self._active.pop(request_id, None)
        if st is not None:
            st.queue.put_nowait(None)

    def close(self) -> None:
        if self._stepper is not None:
            self._stepper.cancel()


if TYPE_CHECKING:  # the simulated engine implements the real protocol
    _engine: AsyncEngine = SimulatedEngine(ThroughputModel.__new__(ThroughputModel), lambda req: "")
