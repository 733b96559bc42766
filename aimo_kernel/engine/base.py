"""The engine protocol: what the solver needs from a text generator, and the typed data it exchanges.

Covers the request/response types and the protocol. Backends (vLLM, the fake used by unit tests)
live in their own modules and are reached through :func:`aimo_kernel.engine.get_engine`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

FINISH_REASONS = ("stop", "eos", "length", "deadline", "error")


class EngineError(RuntimeError):
    """The engine could not be created or a generation failed as a whole."""


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """One continuation: the full text so far (prompt + trace), its token budget and its seed."""

    prompt: str
    max_tokens: int
    seed: int | None = None


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """Sampling shared by every request of one ``generate`` call."""

    temperature: float
    top_p: float = 1.0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Generation:
    """What one request produced.

    ``finish_reason``: ``stop`` (a stop string was generated and is kept at the end of ``text``),
    ``eos``, ``length`` (``max_tokens`` reached), ``deadline`` (cut off by the caller's deadline;
    ``text`` holds what was generated until then) or ``error``.
    """

    text: str
    num_tokens: int
    prompt_tokens: int
    finish_reason: str
    cached_tokens: int = 0

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"Generation.finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}")


@runtime_checkable
class Engine(Protocol):
    """A loaded model. ``deadline`` is an absolute ``time.monotonic()`` value that no call may outlive."""

    name: str
    max_model_len: int

    def chat_prompt(self, problem: str) -> str:
        """The model's chat template applied to one user message, ready for generation."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, *, deadline: float
    ) -> list[Generation]:
        """One generation per request, in request order."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class Delta:
    """A piece of a streamed generation: new text and tokens, and on the last piece its finish reason."""

    text: str
    num_tokens: int
    finish_reason: str | None = None  # set on the last delta (one of FINISH_REASONS)
    prompt_tokens: int = 0
    cached_tokens: int = 0


@runtime_checkable
class AsyncEngine(Protocol):
    """An engine that streams each request on its own, for the asynchronous scheduler.

    ``stream`` yields :class:`Delta` pieces until one carries a finish reason; a consumer that stops
    early (cancellation) must have the request aborted, and ``abort`` does so explicitly. ``alive``
    is False once the engine has died and must be rebuilt.
    """

    name: str
    max_model_len: int

    def chat_prompt(self, problem: str) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def stream(self, request: GenerationRequest, params: SamplingParams, request_id: str) -> AsyncIterator[Delta]:
        ...

    async def abort(self, request_id: str) -> None: ...

    @property
    def alive(self) -> bool: ...

    def close(self) -> None: ...
