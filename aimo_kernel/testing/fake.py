"""Fake engines with canned outputs (blocking and streaming), for unit tests of the solver loops.

Never a production path.

Implements the :class:`~aimo_kernel.engine.base.Engine` protocol: one token per character, stop
strings honoured (kept in the output, as vLLM does with ``include_stop_str_in_output``),
``max_tokens`` honoured, and an optional per-call delay that respects the caller's deadline (or,
with ``ignore_deadline``, does not: a hung call, for the blocking adapter's watchdog).
:class:`FakeAsyncEngine` implements :class:`~aimo_kernel.engine.base.AsyncEngine` the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

from aimo_kernel.config import Config
from aimo_kernel.engine.base import AsyncEngine, Delta, Engine, Generation, GenerationRequest, SamplingParams

# Given a request (the prompt so far, its token budget and seed), return the raw continuation.
Responder = Callable[[GenerationRequest], str]


class FakeEngine:
    name = "fake"

    def __init__(self, responder: Responder, *, max_model_len: int = 4096, delay_s: float = 0.0,
                 ignore_deadline: bool = False) -> None:
        self._responder = responder
        self.max_model_len = max_model_len
        self.delay_s = delay_s
        self.ignore_deadline = ignore_deadline
        self.calls: list[list[GenerationRequest]] = []
        self.closed = False

    def chat_prompt(self, problem: str) -> str:
        return f"### Problem: {problem}\n### Solution: "

    def count_tokens(self, text: str) -> int:
        return len(text)

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, *, deadline: float
    ) -> list[Generation]:
        self.calls.append(list(requests))
        if self.delay_s:
            left = deadline - time.monotonic()
            time.sleep(self.delay_s if self.ignore_deadline else max(0.0, min(self.delay_s, left)))
        late = time.monotonic() >= deadline
        return [self._one(req, params, late) for req in requests]

    def _one(self, req: GenerationRequest, params: SamplingParams, late: bool) -> Generation:
        text = self._responder(req)
        finish = "eos"
        cut = min((text.find(s) + len(s) for s in params.stop if s in text), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        if len(text) > req.max_tokens:
            text, finish = text[: req.max_tokens], "length"
        if late:
            text, finish = text[: len(text) // 2], "deadline"
        return Generation(text=text, num_tokens=len(text), prompt_tokens=len(req.prompt), finish_reason=finish)

    def close(self) -> None:
        self.closed = True


def scripted(turns: Sequence[str]) -> Responder:
    """A responder that answers the k-th continuation of a trace with ``turns[k]``.

    The turn is found by counting the ```output blocks already in the prompt, so every candidate
    follows the same script; the last turn repeats if the script runs out.
    """

    def respond(req: GenerationRequest) -> str:
        k = req.prompt.count("```output\n")
        return turns[min(k, len(turns) - 1)]

    return respond


def create_engine(config: Config) -> FakeEngine:
    """The registry's fake: every candidate boxes 0. Tests build FakeEngine directly with a script."""
    return FakeEngine(lambda req: "No code needed. \\boxed{0}", max_model_len=config.engine.max_model_len)


class FakeAsyncEngine:
    """The streaming counterpart: the same canned text, streamed in chunks on the event loop's clock.

    ``seconds_per_token`` paces the stream (0: as fast as the loop runs); ``stall_after_tokens`` makes
    every stream go silent after that many tokens, as a hung engine would.
    """

    name = "fake-async"

    def __init__(self, responder: Responder, *, max_model_len: int = 4096, seconds_per_token: float = 0.0,
                 chunk: int = 16, stall_after_tokens: int | None = None) -> None:
        self._sync = FakeEngine(responder, max_model_len=max_model_len)
        self.max_model_len = max_model_len
        self.seconds_per_token = seconds_per_token
        self.chunk = chunk
        self.stall_after_tokens = stall_after_tokens
        self.requests: list[GenerationRequest] = []
        self.aborted: list[str] = []
        self.active: set[str] = set()
        self.alive = True
        self.closed = False

    def chat_prompt(self, problem: str) -> str:
        return self._sync.chat_prompt(problem)

    def count_tokens(self, text: str) -> int:
        return len(text)

    async def stream(self, request: GenerationRequest, params: SamplingParams, request_id: str) -> AsyncIterator[Delta]:
        self.requests.append(request)
        gen = self._sync._one(request, params, late=False)
        self.active.add(request_id)
        try:
            for start in range(0, max(1, len(gen.text)), self.chunk):
                if self.stall_after_tokens is not None and start >= self.stall_after_tokens:
                    await asyncio.sleep(10**9)  # silent forever, until cancelled
                piece = gen.text[start:start + self.chunk]
                await asyncio.sleep(self.seconds_per_token * len(piece))
                last = start + self.chunk >= len(gen.text)
                yield Delta(text=piece, num_tokens=len(piece), finish_reason=gen.finish_reason if last else None,
                            prompt_tokens=len(request.prompt))
        finally:
            self.active.discard(request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        self.active.discard(request_id)

    def close(self) -> None:
        self.closed = True


def create_async_engine(config: Config) -> FakeAsyncEngine:
    """The registry's streaming fake: every candidate boxes 0."""
    return FakeAsyncEngine(lambda req: "No code needed. \\boxed{0}", max_model_len=config.engine.max_model_len)


if TYPE_CHECKING:  # the fakes implement the real protocols
    _engine: Engine = FakeEngine(scripted(["x"]))
    _async_engine: AsyncEngine = FakeAsyncEngine(scripted(["x"]))
