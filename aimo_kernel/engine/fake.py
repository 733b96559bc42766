"""A fake engine with canned outputs, for unit tests of the solver loop. Never a production path.

Implements the :class:`~aimo_kernel.engine.base.Engine` protocol: one token per character, stop
strings honoured (kept in the output, as vLLM does with ``include_stop_str_in_output``),
``max_tokens`` honoured, and an optional per-call delay that respects the caller's deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from aimo_kernel.config import Config
from aimo_kernel.engine.base import Generation, GenerationRequest, SamplingParams

# Given a request and how many times this exact prompt was seen before, return the raw continuation.
Responder = Callable[[GenerationRequest], str]


class FakeEngine:
    name = "fake"

    def __init__(self, responder: Responder, *, max_model_len: int = 4096, delay_s: float = 0.0) -> None:
        self._responder = responder
        self.max_model_len = max_model_len
        self.delay_s = delay_s
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
            time.sleep(max(0.0, min(self.delay_s, deadline - time.monotonic())))
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
