"""One SC-TIR candidate: its trace, and every change of its status and reason, in one place.

A candidate generates until its dialect's stop string; the code it wrote runs and the output is fed
back, up to M rounds. The rules (Numina's): a generation that stops on the stop string without code
in it invented an output and is pruned; one that ends without the trace ever holding code is
restarted, pruned or kept per ``TIRConfig.no_code_policy``; a full context, the last round, the
deadline, an engine failure or the problem stopping ends it. Every transition is a method of
:class:`Candidate`; the solver core (:mod:`aimo_kernel.solve.pipeline`) decides when, never how.
Covers one candidate only: voting and scheduling are the core's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

from aimo_kernel.config import TIRConfig
from aimo_kernel.core.answers import AnswerRule, last_number
from aimo_kernel.core.confidence import Confidence, ConfidenceMeter
from aimo_kernel.engine.base import Generation, GenerationRequest, PromptFormat
from aimo_kernel.sandbox import ExecutionResult
from aimo_kernel.solve.dialect import Dialect
from aimo_kernel.vocab import CandidateReason, CandidateStatus, CodeFlag, FinishReason

MIN_NEW_TOKENS = 8  # a candidate with less room than this left in the context is finished
OUTPUT_KEPT_CHARS = 400  # of its last code output, what a candidate keeps to check its answer against


class CodeSession(Protocol):
    """A candidate's own interpreter, when the sandbox keeps state between its blocks."""

    async def arun(self, code: str, *, timeout_s: float | None = None) -> ExecutionResult: ...

    def close(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class RoundRecord:
    """One generation of one candidate, and the code it ran (for the trace)."""

    round: int
    tokens_in: int
    tokens_out: int
    gen_seconds: float
    code_seconds: float = 0.0
    cached_tokens: int = 0  # of tokens_in, how many the engine's prefix cache served
    finish: FinishReason = FinishReason.EOS
    code_flags: tuple[CodeFlag, ...] = ()

    def __post_init__(self) -> None:
        if self.round < 0 or self.tokens_in < 0 or self.tokens_out < 0:
            raise ValueError(f"RoundRecord counts must be >= 0, got round={self.round}, "
                             f"tokens_in={self.tokens_in}, tokens_out={self.tokens_out}")
        object.__setattr__(self, "finish", FinishReason(self.finish))
        object.__setattr__(self, "code_flags", tuple(CodeFlag(f) for f in self.code_flags))


def code_flags(res: ExecutionResult) -> tuple[CodeFlag, ...]:
    named = (CodeFlag.TIMED_OUT, CodeFlag.MEMORY_EXCEEDED, CodeFlag.CRASHED, CodeFlag.REFUSED,
             CodeFlag.OUTPUT_TRUNCATED)
    flags = tuple(f for f in named if getattr(res, f.value))
    return flags + ((CodeFlag.ERROR,) if not res.ok and not flags else ())


@dataclass(frozen=True, kw_only=True)
class CandidateResult:
    """A candidate once its problem is over (``status`` is done or pruned)."""

    index: int
    answer: int | None
    status: CandidateStatus
    reason: CandidateReason
    rounds: int
    restarts: int
    code_blocks: int
    tokens: int
    text: str
    log: tuple[RoundRecord, ...] = ()
    error: str = ""  # the engine's failure, for reason "error"
    confidence: Confidence = Confidence()  # from its tokens' log-probabilities, when the engine gave them
    code_verified: bool = False  # its answer is the last number its last successful code block printed

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", CandidateStatus(self.status))
        object.__setattr__(self, "reason", CandidateReason(self.reason))
        if self.status is CandidateStatus.ACTIVE:
            raise ValueError("CandidateResult.status must be done or pruned, got 'active'")


@dataclass
class Candidate:
    index: int
    text: str = ""
    status: CandidateStatus = CandidateStatus.ACTIVE
    reason: CandidateReason | None = None
    restarts: int = 0
    rounds: int = 0
    code_blocks: int = 0
    tokens: int = 0
    error: str = ""
    log: list[RoundRecord] = field(default_factory=list)
    session: CodeSession | None = None  # its own interpreter (persistent sessions); None: the shared sandbox
    meter: ConfidenceMeter = field(default_factory=ConfidenceMeter)  # fed by the core with each piece's logprobs
    last_output: str = ""  # what its last successful code block printed (the end of it)

    @property
    def active(self) -> bool:
        return self.status is CandidateStatus.ACTIVE

    # -- transitions ---------------------------------------------------------------------------

    def finish(self, reason: CandidateReason) -> None:
        self.status, self.reason = CandidateStatus.DONE, reason

    def prune(self, reason: CandidateReason) -> None:
        self.status, self.reason = CandidateStatus.PRUNED, reason

    def restart(self) -> None:
        """Throw the trace away: the next round starts again from the bare prompt, with a new seed."""
        self.text, self.restarts, self.last_output = "", self.restarts + 1, ""
        self.meter.reset()

    def fail(self, error: str) -> None:
        """The engine failed this candidate's request: it ends, the problem goes on."""
        self.error = error
        self.finish(CandidateReason.ERROR)

    def stop(self) -> None:
        """The problem stopped while this candidate was still running."""
        if self.active:
            self.finish(CandidateReason.STOPPED)

    def out_of_rounds(self) -> None:
        if self.active:
            self.finish(CandidateReason.ROUNDS)

    def end_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.close()

    # -- one round -----------------------------------------------------------------------------

    def seed(self, base: int, rnd: int) -> int:
        return (base + 7919 * self.index + 104729 * rnd + 15485863 * self.restarts) % (2**31 - 1)

    def request(self, model: PromptFormat, prompt: str, *, max_new_tokens: int, seed: int,
                deadline: float | None = None) -> GenerationRequest | None:
        """The next request, or None (and the candidate done) when its context is full."""
        room = model.max_model_len - model.count_tokens(prompt + self.text)
        if room < MIN_NEW_TOKENS:
            self.finish(CandidateReason.CONTEXT)
            return None
        return GenerationRequest(prompt=prompt + self.text, max_tokens=min(max_new_tokens, room), seed=seed,
                                 deadline=deadline)

    def absorb(self, gen: Generation, dialect: Dialect, tir: TIRConfig, *, rnd: int, gen_seconds: float,
               last_round: bool) -> str | None:
        """Append one generation; return the code to run, if any."""
        self.log.append(RoundRecord(round=rnd, tokens_in=gen.prompt_tokens, tokens_out=gen.num_tokens,
                                    gen_seconds=gen_seconds, finish=FinishReason(gen.finish_reason),
                                    cached_tokens=gen.cached_tokens))
        self.text += gen.text
        self.tokens += gen.num_tokens
        self.rounds += 1
        if gen.finish_reason == FinishReason.STOP:
            code = dialect.code(gen.text)
            if code is None:  # it wrote an output block for code it never wrote
                self.prune(CandidateReason.INVENTED_OUTPUT)
            return code
        call = dialect.eos_call(gen.text) if gen.finish_reason == FinishReason.EOS else None
        if call is not None:  # a tool call whose end token is an EOS of the model (gpt-oss's <|call|>)
            self.text += call[0]
            return call[1]
        wrote_code = self.code_blocks > 0 or dialect.wrote_code(self.text)
        if gen.finish_reason in (FinishReason.EOS, FinishReason.LENGTH) and not wrote_code:
            self._no_code(CandidateReason(gen.finish_reason), tir, last_round)
        else:
            self.finish(CandidateReason(gen.finish_reason))
        return None

    def _no_code(self, finish: CandidateReason, tir: TIRConfig, last_round: bool) -> None:
        if tir.no_code_policy == "restart" and self.restarts < tir.max_restarts and not last_round:
            self.restart()
        elif tir.no_code_policy == "prune":
            self.prune(CandidateReason.NO_CODE)
        else:  # keep, or restart with no restarts or rounds left: its answer still votes
            self.finish(finish)

    def add_output(self, res: ExecutionResult, dialect: Dialect, max_chars: int) -> None:
        """The code of the last round ran: record it and feed its output back."""
        self.log[-1] = dataclasses.replace(self.log[-1], code_seconds=res.seconds, code_flags=code_flags(res))
        self.text += dialect.feedback(res, max_chars)
        self.code_blocks += 1
        if res.ok:
            self.last_output = (res.stdout_tail or res.stdout)[-OUTPUT_KEPT_CHARS:]

    # -- the end -------------------------------------------------------------------------------

    def answer(self, dialect: Dialect, rule: AnswerRule) -> int | None:
        return None if self.status is CandidateStatus.PRUNED else dialect.answer(self.text, rule)

    def result(self, dialect: Dialect, rule: AnswerRule) -> CandidateResult:
        pruned = self.status is CandidateStatus.PRUNED
        answer = self.answer(dialect, rule)
        verified = answer is not None and last_number(self.last_output, rule) == answer
        return CandidateResult(index=self.index, answer=answer, confidence=self.meter.summary(),
                               code_verified=verified,
                               status=CandidateStatus.PRUNED if pruned else CandidateStatus.DONE,
                               reason=self.reason or CandidateReason.STOPPED, rounds=self.rounds,
                               restarts=self.restarts, code_blocks=self.code_blocks, tokens=self.tokens,
                               text=self.text, log=tuple(self.log), error=self.error)
