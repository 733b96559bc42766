"""What solving one problem returns, how hard to try, and the rules shared by every way of solving.

Covers :class:`SolveResult` (the vote, the candidates, why it stopped), :class:`Effort`, the vote over
finished candidates and the fallback answer. Not the solving itself (:mod:`aimo_kernel.solve.pipeline`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from aimo_kernel.config import Config, TIRConfig
from aimo_kernel.config.schema import VoteConfig, candidates_in_all
from aimo_kernel.core.answers import AnswerRule, VoteResult, majority_vote
from aimo_kernel.core.budget import Outcome
from aimo_kernel.core.confidence import mode_weights
from aimo_kernel.engine.base import PromptFormat, SamplingParams
from aimo_kernel.solve.candidate import MIN_NEW_TOKENS, Candidate, CandidateResult
from aimo_kernel.solve.dialect import Dialect
from aimo_kernel.vocab import CandidateReason, StopReason


@dataclass(frozen=True, kw_only=True)
class SolveResult:
    answer: int
    vote: VoteResult
    candidates: tuple[CandidateResult, ...] = ()
    seconds: float = 0.0
    tokens_generated: int = 0
    code_blocks: int = 0
    stop_reason: StopReason = StopReason.FINISHED
    agreement_rule: str = ""  # the rule that decided an agreement stop ("4/5", "decided"), else ""
    error: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_reason", StopReason(self.stop_reason))
        if bool(self.agreement_rule) != (self.stop_reason is StopReason.AGREEMENT):
            raise ValueError(f"SolveResult.agreement_rule must be set exactly for an agreement stop, got "
                             f"stop_reason={self.stop_reason.value!r}, agreement_rule={self.agreement_rule!r}")

    def outcome(self) -> Outcome:
        """How it ended, for the budget planner (which backs off when time ran out on most candidates)."""
        answering = [c.tokens for c in self.candidates if c.answer is not None]
        open_ = [c.tokens for c in self.candidates if c.answer is None]
        return Outcome(timed_out=self.stop_reason is StopReason.DEADLINE, candidates=len(self.candidates),
                       answered=len(answering), tokens_per_open=sum(open_) / len(open_) if open_ else 0.0,
                       tokens_per_answer=sum(answering) / len(answering) if answering else 0.0)

    @property
    def stop_label(self) -> str:
        """The stop reason for people: ``agreement 4/5``, ``deadline``, ..."""
        return f"{self.stop_reason.value} {self.agreement_rule}" if self.agreement_rule else self.stop_reason.value


@dataclass(frozen=True, kw_only=True)
class Effort:
    """How hard to try on one problem (from the budget planner's speed level)."""

    num_candidates: int
    max_rounds: int
    max_candidates: int = 0  # candidates launched in all (asynchronous mode); 0: num_candidates
    richness: float = 1.0

    def __post_init__(self) -> None:
        if self.num_candidates < 1 or self.max_rounds < 1 or self.max_candidates < 0:
            raise ValueError(f"Effort needs num_candidates >= 1, max_rounds >= 1, max_candidates >= 0; got "
                             f"{self.num_candidates}, {self.max_rounds}, {self.max_candidates}")

    @property
    def total(self) -> int:
        return candidates_in_all(self.max_candidates, self.num_candidates)


def default_effort(tir: TIRConfig) -> Effort:
    return Effort(num_candidates=tir.num_candidates, max_rounds=tir.max_rounds,
                  max_candidates=tir.candidates_in_all)


def answer_rule(config: Config) -> AnswerRule:
    v = config.vote
    return AnswerRule(modulus=v.modulus or None, min_answer=v.min_answer, max_answer=v.max_answer,
                      tolerance=v.tolerance, drop_negative=v.drop_negative)


def sampling_params(config: Config, dialect: Dialect) -> SamplingParams:
    top_k = config.vote.confidence_top_k  # log-probabilities only when a confidence is recorded
    return SamplingParams(temperature=config.sampling.temperature, top_p=config.sampling.top_p, stop=dialect.stop,
                          logprobs=top_k or None, skip_special_tokens=not dialect.special_tokens)


def candidate_weights(results: Sequence[CandidateResult], vote: VoteConfig) -> list[float] | None:
    """The vote weights of ``vote.mode``: None (one vote each) for ``majority``."""
    return mode_weights(vote, [r.confidence for r in results], [r.code_verified for r in results],
                        answers=[r.answer for r in results])


def seed_base(config: Config, problem: str) -> int:
    return zlib.crc32(problem.encode("utf-8", "replace")) ^ config.sampling.seed


REFUSALS = {
    StopReason.EMPTY_PROBLEM: "the problem text is empty",
    StopReason.PROMPT_TOO_LONG: "the prompt does not fit the model's context",
}


def problem_prompt(model: PromptFormat, dialect: Dialect, problem: str) -> tuple[str, StopReason | None]:
    """(prompt, None) for a usable problem, or ("", why not) for an empty or too long one."""
    if not problem.strip():
        return "", StopReason.EMPTY_PROBLEM
    prompt = dialect.prompt(model, problem)
    if model.count_tokens(prompt) + MIN_NEW_TOKENS > model.max_model_len:
        return "", StopReason.PROMPT_TOO_LONG
    return prompt, None


def fallback_result(config: Config, reason: StopReason, error: str = "", *, seconds: float = 0.0) -> SolveResult:
    """The answer when no candidate could vote (empty problem, engine failure, ...)."""
    vote = majority_vote([], fallback=config.vote.fallback_answer)
    return SolveResult(answer=vote.answer, vote=vote, seconds=seconds, stop_reason=reason, error=error)


def build_result(cands: Sequence[Candidate], config: Config, rule: AnswerRule, dialect: Dialect, *,
                 seconds: float, stop: StopReason, agreement_rule: str = "") -> SolveResult:
    """The vote over the candidates.

    A problem that ran out of candidates did not finish on its own when the engine failed every one
    of them (stop ``error``) or when time ran out for some of them (their code could not start: stop
    ``deadline``, so a trace never reads it as converged).
    """
    results = tuple(c.result(dialect, rule) for c in cands)
    vote = majority_vote([r.answer for r in results], fallback=config.vote.fallback_answer,
                         tie_break=config.vote.tie_break, weights=candidate_weights(results, config.vote))
    errors = [r.error for r in results if r.reason is CandidateReason.ERROR]
    if stop is StopReason.FINISHED and results and len(errors) == len(results):
        stop = StopReason.ERROR
    elif stop is StopReason.FINISHED and any(r.reason is CandidateReason.DEADLINE for r in results):
        stop = StopReason.DEADLINE
    return SolveResult(answer=vote.answer, vote=vote, candidates=results, seconds=seconds,
                       tokens_generated=sum(c.tokens for c in cands), code_blocks=sum(c.code_blocks for c in cands),
                       stop_reason=stop, agreement_rule=agreement_rule, error=errors[0] if errors else "")
