"""The engine protocols: what the solver needs from a text generator, and the typed data it exchanges.

Three protocols: :class:`PromptFormat` (the prompt side: chat template, token count, context size),
shared by :class:`Engine` (blocking: a batch per call, bounded by a deadline) and
:class:`AsyncEngine` (streaming: one request at a time, abortable). Covers the request/response types
and the protocols only. Backends (vLLM, transformers) live in their own modules and are reached
through :func:`aimo_kernel.engine.get_engine`; the solver drives a blocking engine through an
adapter (:mod:`aimo_kernel.solve.blocking`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from aimo_kernel.errors import AimoError
from aimo_kernel.vocab import FinishReason

FINISH_REASONS = tuple(r.value for r in FinishReason)


class EngineError(AimoError, RuntimeError):
    """The engine could not be created or a generation failed as a whole."""


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """One continuation: the full text so far (prompt + trace), its token budget and its seed.

    ``deadline`` (absolute ``time.monotonic()``, None: the call's own) is when the text is needed by:
    a blocking engine is called with the earliest deadline of its batch; a streaming one is cut off
    by its caller instead.
    """

    prompt: str
    max_tokens: int
    seed: int | None = None
    deadline: float | None = None


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """Sampling shared by every request of one ``generate`` call."""

    temperature: float
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    # None: no log-probabilities; k >= 0: each generated token's, and the k most likely alternatives'
    logprobs: int | None = None
    # False keeps special tokens in the text: a dialect whose structure is special tokens (gpt-oss's
    # <|channel|>, <|call|>) must see them, or it never finds a tool call
    skip_special_tokens: bool = True


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
    # asked for with SamplingParams.logprobs: per generated token, its log-probability, and those of the
    # step's most likely tokens, most likely first (k of them, k + 1 where the sampled one is not among them)
    logprobs: tuple[float, ...] = ()
    top_logprobs: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"Generation.finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}")


@runtime_checkable
class PromptFormat(Protocol):
    """The prompt side of a loaded model: how a problem becomes a prompt, and how long a text is."""

    name: str
    max_model_len: int

    def chat_prompt(self, problem: str) -> str:
        """The model's chat template applied to one user message, ready for generation."""
        ...

    def count_tokens(self, text: str) -> int: ...


@runtime_checkable
class Engine(PromptFormat, Protocol):
    """A loaded model. ``deadline`` is an absolute ``time.monotonic()`` value that no call may outlive."""

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
    finish_reason: str | None = None  # set on the last delta (a FinishReason)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    logprobs: tuple[float, ...] = ()  # as in Generation: one per token of this piece, when asked for
    top_logprobs: tuple[tuple[float, ...], ...] = ()


@runtime_checkable
class AsyncEngine(PromptFormat, Protocol):
    """An engine that streams each request on its own, for the asynchronous scheduler.

    ``stream`` yields :class:`Delta` pieces until one carries a finish reason; a consumer that stops
    early (cancellation) must have the request aborted, and ``abort`` does so explicitly. ``alive``
    is False once the engine has died and must be rebuilt.
    """

    def stream(self, request: GenerationRequest, params: SamplingParams, request_id: str) -> AsyncIterator[Delta]:
        ...

    async def abort(self, request_id: str) -> None: ...

    @property
    def alive(self) -> bool: ...

    def close(self) -> None: ...
