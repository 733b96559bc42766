"""SC-TIR: self-consistency over tool-integrated reasoning candidates (the Numina algorithm).

N candidates share the problem's prompt. A candidate generates until it writes "```output\\n" (the
stop string, kept); its last ```python block runs in the sandbox and the block's output is appended
as an ```output block before it continues, up to M rounds. A candidate that stops without code in
its round's text but claims an output is pruned; one that finishes without ever writing code is
restarted, pruned or kept per ``TIRConfig.no_code_policy``. The final ``\\boxed{}`` answers are
normalised and majority-voted, and the vote may stop a problem early (:mod:`aimo_kernel.agreement`).

This module holds the candidate rules shared by both schedulers and :class:`SCTIRSolver`, the
blocking synchronous-rounds solver over a blocking :class:`~aimo_kernel.engine.base.Engine`. The
asynchronous pipeline over a streaming engine is :mod:`aimo_kernel.scheduler`. One deadline bounds a
problem: generation is cut off at it and code runs with at most the time left. Solvers never raise:
any failure answers the fallback and says why.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aimo_kernel.agreement import AgreementTracker
from aimo_kernel.answers import AnswerRule, VoteResult, extract_answer, majority_vote
from aimo_kernel.config import Config, TIRConfig
from aimo_kernel.engine.base import Engine, Generation, GenerationRequest, SamplingParams
from aimo_kernel.sandbox import ExecutionResult

log = logging.getLogger(__name__)

STOP = "```output\n"
_CODE_OPEN = "```python"
MIN_NEW_TOKENS = 8  # a candidate with less room than this left in the context is finished
MIN_CODE_SECONDS = 0.2  # below this, code is not started: it could not finish before the deadline


class CodeRunner(Protocol):
    """What the solvers need from a sandbox (``SubprocessSandbox`` and the worker pool)."""

    def run_many(self, codes: Sequence[str], *, timeout_s: float | None = None) -> list[ExecutionResult]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RoundRecord:
    """One generation of one candidate, and the code it ran (for the trace)."""

    round: int
    tokens_in: int
    tokens_out: int
    gen_seconds: float
    code_seconds: float = 0.0
    finish: str = ""
    code_flags: tuple[str, ...] = ()  # timed_out, memory_exceeded, crashed, refused, error, truncated


@dataclass
class Candidate:
    index: int
    text: str = ""
    status: str = "active"  # active | done | pruned
    reason: str = ""
    restarts: int = 0
    rounds: int = 0
    code_blocks: int = 0
    tokens: int = 0
    log: list[RoundRecord] = field(default_factory=list)


@dataclass(frozen=True)
class CandidateResult:
    index: int
    answer: int | None
    status: str  # done | pruned
    reason: str  # eos, length, context, deadline, no_code, invented_output, rounds, stopped, error
    rounds: int
    restarts: int
    code_blocks: int
    tokens: int
    text: str
    log: tuple[RoundRecord, ...] = ()


@dataclass(frozen=True)
class SolveResult:
    answer: int
    vote: VoteResult
    candidates: tuple[CandidateResult, ...] = ()
    seconds: float = 0.0
    tokens_generated: int = 0
    code_blocks: int = 0
    # finished | deadline | stall | agreement:<rule> | prompt_too_long | empty_problem | error
    stop_reason: str = "finished"
    error: str = ""


@dataclass(frozen=True)
class Effort:
    """How hard to try on one problem (from the budget planner's speed level)."""

    num_candidates: int
    max_rounds: int
    max_candidates: int = 0  # candidates launched in all (asynchronous mode); 0: num_candidates
    richness: float = 1.0


def default_effort(tir: TIRConfig) -> Effort:
    return Effort(num_candidates=tir.num_candidates, max_rounds=tir.max_rounds,
                  max_candidates=max(tir.max_candidates, tir.num_candidates))


def last_code_block(text: str) -> str | None:
    """The last ```python block of ``text`` (closed by ``` or cut by the stop string), or None."""
    start = text.rfind(_CODE_OPEN)
    if start < 0:
        return None
    body = text[start + len(_CODE_OPEN):]
    code = body.split("```", 1)[0]
    return code.strip("\n") or None


def answer_rule(config: Config) -> AnswerRule:
    v = config.vote
    return AnswerRule(modulus=v.modulus or None, min_answer=v.min_answer, max_answer=v.max_answer,
                      tolerance=v.tolerance, drop_negative=v.drop_negative)


def sampling_params(config: Config) -> SamplingParams:
    return SamplingParams(temperature=config.sampling.temperature, top_p=config.sampling.top_p, stop=(STOP,))


def fallback_result(config: Config, reason: str, error: str = "", *, seconds: float = 0.0) -> SolveResult:
    """The answer when no candidate could vote (empty problem, engine failure, ...)."""
    vote = majority_vote([], fallback=config.vote.fallback_answer)
    return SolveResult(answer=vote.answer, vote=vote, seconds=seconds, stop_reason=reason, error=error)


def problem_prompt(engine: Engine, problem: str) -> tuple[str, str]:
    """(prompt, "") for a usable problem, or ("", why not) for an empty or too long one."""
    if not problem.strip():
        return "", "empty_problem"
    prompt = engine.chat_prompt(problem)
    if engine.count_tokens(prompt) + MIN_NEW_TOKENS > engine.max_model_len:
        return "", "prompt_too_long"
    return prompt, ""


def seed_base(config: Config, problem: str) -> int:
    return zlib.crc32(problem.encode("utf-8", "replace")) ^ config.sampling.seed


def candidate_request(engine: Engine, config: Config, prompt: str, cand: Candidate, rnd: int,
                      base: int) -> GenerationRequest | None:
    """The next request of a candidate, or None (and the candidate done) when its context is full."""
    room = engine.max_model_len - engine.count_tokens(prompt + cand.text)
    if room < MIN_NEW_TOKENS:
        cand.status, cand.reason = "done", "context"
        return None
    seed = (base + 7919 * cand.index + 104729 * rnd + 15485863 * cand.restarts) % (2**31 - 1)
    return GenerationRequest(prompt=prompt + cand.text, max_tokens=min(config.sampling.max_new_tokens, room),
                             seed=seed)


def absorb(cand: Candidate, gen: Generation, tir: TIRConfig, last_round: bool) -> str | None:
    """Append one generation to its candidate; return the code to run, if any."""
    cand.text += gen.text
    cand.tokens += gen.num_tokens
    cand.rounds += 1
    if gen.finish_reason == "stop":
        code = last_code_block(gen.text)
        if code is None:  # it wrote an output block for code it never wrote
            cand.status, cand.reason = "pruned", "invented_output"
        return code
    wrote_code = cand.code_blocks > 0 or _CODE_OPEN in cand.text
    if gen.finish_reason in ("eos", "length") and not wrote_code:
        _no_code(cand, gen.finish_reason, tir, last_round)
    else:
        cand.status, cand.reason = "done", gen.finish_reason
    return None


def _no_code(cand: Candidate, finish: str, tir: TIRConfig, last_round: bool) -> None:
    if tir.no_code_policy == "restart" and cand.restarts < tir.max_restarts and not last_round:
        cand.text, cand.restarts = "", cand.restarts + 1
    elif tir.no_code_policy == "prune":
        cand.status, cand.reason = "pruned", "no_code"
    else:  # keep, or restart with no restarts or rounds left: its answer still votes
        cand.status, cand.reason = "done", finish


def code_flags(res: ExecutionResult) -> tuple[str, ...]:
    names = ("timed_out", "memory_exceeded", "crashed", "refused", "output_truncated")
    flags = tuple(n for n in names if getattr(res, n))
    return flags + (("error",) if not res.ok and not flags else ())


def append_output(cand: Candidate, res: ExecutionResult, width: int) -> None:
    cand.text += res.render(width) + "\n```\n"
    cand.code_blocks += 1


def candidate_answer(cand: Candidate, rule: AnswerRule) -> int | None:
    return None if cand.status == "pruned" else extract_answer(cand.text, rule)


def vote_so_far(cands: Sequence[Candidate], tracker: AgreementTracker, rule: AnswerRule) -> str:
    """After a synchronous round: the rule that decides the vote of the finished candidates, or ""."""
    answers = [candidate_answer(c, rule) for c in cands if c.status == "done"]
    return tracker.recount(answers, still_to_come=sum(c.status == "active" for c in cands))


def build_result(cands: Sequence[Candidate], config: Config, rule: AnswerRule, seconds: float,
                 stop_reason: str) -> SolveResult:
    results = tuple(
        CandidateResult(index=c.index, answer=candidate_answer(c, rule),
                        status="pruned" if c.status == "pruned" else "done", reason=c.reason or "stopped",
                        rounds=c.rounds, restarts=c.restarts, code_blocks=c.code_blocks, tokens=c.tokens,
                        text=c.text, log=tuple(c.log))
        for c in cands
    )
    vote = majority_vote([r.answer for r in results], fallback=config.vote.fallback_answer,
                         tie_break=config.vote.tie_break)
    return SolveResult(answer=vote.answer, vote=vote, candidates=results, seconds=seconds,
                       tokens_generated=sum(c.tokens for c in cands),
                       code_blocks=sum(c.code_blocks for c in cands), stop_reason=stop_reason)


class SCTIRSolver:
    """Synchronous rounds over a blocking engine: every active candidate generates, then all code runs."""

    def __init__(self, engine: Engine, sandbox: CodeRunner, config: Config) -> None:
        self.engine = engine
        self.sandbox = sandbox
        self.config = config
        self.rule = answer_rule(config)
        self.params = sampling_params(config)

    def solve(self, problem: str, *, deadline: float | None = None, effort: Effort | None = None) -> SolveResult:
        """Answer one problem before ``deadline`` (absolute ``time.monotonic()``); never raises."""
        start = time.monotonic()
        limit = start + self.config.budget.per_problem_seconds
        deadline = limit if deadline is None else min(deadline, limit)
        try:
            return self._solve(problem, start, deadline, effort or default_effort(self.config.tir))
        except Exception as exc:  # the run must go on: answer the fallback and say why
            log.exception("solver failed; answering the fallback")
            return fallback_result(self.config, "error", f"{type(exc).__name__}: {exc}",
                                   seconds=time.monotonic() - start)

    def _solve(self, problem: str, start: float, deadline: float, effort: Effort) -> SolveResult:
        prompt, refused = problem_prompt(self.engine, problem)
        if refused:
            return fallback_result(self.config, refused, REFUSALS[refused], seconds=time.monotonic() - start)
        cands = [Candidate(i) for i in range(effort.num_candidates)]
        tracker = AgreementTracker(self.config.vote, richness=effort.richness)
        base = seed_base(self.config, problem)
        stop_reason = "finished"
        for rnd in range(effort.max_rounds):
            if time.monotonic() >= deadline:
                stop_reason = "deadline"
                break
            self._round(prompt, cands, rnd, base, deadline, rnd == effort.max_rounds - 1)
            decided = vote_so_far(cands, tracker, self.rule)
            if decided:
                stop_reason = f"agreement:{decided}"
                break
            if not any(c.status == "active" for c in cands):
                break
        return build_result(cands, self.config, self.rule, time.monotonic() - start, stop_reason)

    def _round(self, prompt: str, cands: list[Candidate], rnd: int, base: int, deadline: float,
               last_round: bool) -> None:
        asked: list[tuple[Candidate, GenerationRequest]] = []
        for cand in (c for c in cands if c.status == "active"):
            req = candidate_request(self.engine, self.config, prompt, cand, rnd, base)
            if req is not None:
                asked.append((cand, req))
        t0 = time.monotonic()
        gens = self.engine.generate([r for _, r in asked], self.params, deadline=deadline) if asked else []
        gen_seconds = time.monotonic() - t0
        pending: list[tuple[Candidate, str]] = []
        for (cand, _req), gen in zip(asked, gens):
            cand.log.append(RoundRecord(rnd, gen.prompt_tokens, gen.num_tokens, gen_seconds, finish=gen.finish_reason))
            code = absorb(cand, gen, self.config.tir, last_round)
            if code is not None:
                pending.append((cand, code))
        self._run_code(pending, deadline)
        if last_round:
            for cand in cands:
                if cand.status == "active":
                    cand.status, cand.reason = "done", "rounds"

    def _run_code(self, pending: list[tuple[Candidate, str]], deadline: float) -> None:
        if not pending:
            return
        left = deadline - time.monotonic()
        if left < MIN_CODE_SECONDS:
            for cand, _ in pending:
                cand.status, cand.reason = "done", "deadline"
            return
        results = self.sandbox.run_many([code for _, code in pending],
                                        timeout_s=min(self.config.sandbox.timeout_s, left))
        for (cand, _), res in zip(pending, results):
            record = cand.log[-1]
            cand.log[-1] = RoundRecord(record.round, record.tokens_in, record.tokens_out, record.gen_seconds,
                                       res.seconds, record.finish, code_flags(res))
            append_output(cand, res, self.config.tir.output_max_chars)


REFUSALS = {
    "empty_problem": "the problem text is empty",
    "prompt_too_long": "the prompt does not fit the model's context",
}
