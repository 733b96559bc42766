"""SC-TIR: self-consistency over tool-integrated reasoning candidates (the Numina algorithm).

N candidates share the problem's prompt. In each of up to M synchronous rounds every active
candidate generates until it writes "```output\\n" (the stop string, kept), its last ```python block
runs in the sandbox, and the block's output is appended as an ```output block before the next round.
A candidate that stops without code in its round's text but claims an output is pruned; one that
finishes without ever writing code is restarted, pruned or kept per ``TIRConfig.no_code_policy``.
The final ``\\boxed{}`` answers are normalised and majority-voted.

One per-problem deadline bounds everything: generation is cut off at it, code runs with at most the
time left, and :meth:`SCTIRSolver.solve` never raises: any failure answers the fallback and says why.
Time budgets across problems and asynchronous candidates are the scheduler's business, not this module's.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aimo_kernel.answers import AnswerRule, VoteResult, extract_answer, majority_vote
from aimo_kernel.config import Config
from aimo_kernel.engine.base import Engine, Generation, GenerationRequest, SamplingParams
from aimo_kernel.sandbox import ExecutionResult

log = logging.getLogger(__name__)

STOP = "```output\n"
_CODE_OPEN = "```python"
_MIN_NEW_TOKENS = 8  # a candidate with less room than this left in the context is finished
_MIN_CODE_SECONDS = 0.2  # below this, code is not started: it could not finish before the deadline


class CodeRunner(Protocol):
    """What the solver needs from a sandbox (``SubprocessSandbox`` and later pools)."""

    def run_many(self, codes: Sequence[str], *, timeout_s: float | None = None) -> list[ExecutionResult]: ...

    def close(self) -> None: ...


@dataclass
class _Candidate:
    index: int
    text: str = ""
    status: str = "active"  # active | done | pruned
    reason: str = ""
    restarts: int = 0
    rounds: int = 0
    code_blocks: int = 0
    tokens: int = 0


@dataclass(frozen=True)
class CandidateResult:
    index: int
    answer: int | None
    status: str  # done | pruned
    reason: str  # eos, length, context, deadline, no_code, invented_output, rounds, error
    rounds: int
    restarts: int
    code_blocks: int
    tokens: int
    text: str


@dataclass(frozen=True)
class SolveResult:
    answer: int
    vote: VoteResult
    candidates: tuple[CandidateResult, ...] = ()
    seconds: float = 0.0
    tokens_generated: int = 0
    code_blocks: int = 0
    stop_reason: str = "finished"  # finished | deadline | prompt_too_long | empty_problem | error
    error: str = ""
    extras: dict[str, float] = field(default_factory=dict)


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


def fallback_result(config: Config, reason: str, error: str = "", *, seconds: float = 0.0) -> SolveResult:
    """The answer when no candidate could vote (empty problem, engine failure, ...)."""
    vote = majority_vote([], fallback=config.vote.fallback_answer)
    return SolveResult(answer=vote.answer, vote=vote, seconds=seconds, stop_reason=reason, error=error)


class SCTIRSolver:
    def __init__(self, engine: Engine, sandbox: CodeRunner, config: Config) -> None:
        self.engine = engine
        self.sandbox = sandbox
        self.config = config
        self.rule = answer_rule(config)
        self.params = SamplingParams(temperature=config.sampling.temperature, top_p=config.sampling.top_p,
                                     stop=(STOP,))

    def solve(self, problem: str, *, deadline: float | None = None) -> SolveResult:
        """Answer one problem before ``deadline`` (absolute ``time.monotonic()``); never raises."""
        start = time.monotonic()
        limit = start + self.config.budget.per_problem_seconds
        deadline = limit if deadline is None else min(deadline, limit)
        try:
            return self._solve(problem, start, deadline)
        except Exception as exc:  # the run must go on: answer the fallback and say why
            log.exception("solver failed; answering the fallback")
            return self._fallback("error", start, f"{type(exc).__name__}: {exc}")

    def _fallback(self, reason: str, start: float, error: str = "") -> SolveResult:
        return fallback_result(self.config, reason, error, seconds=time.monotonic() - start)

    def _solve(self, problem: str, start: float, deadline: float) -> SolveResult:
        if not problem.strip():
            return self._fallback("empty_problem", start, "the problem text is empty")
        prompt = self.engine.chat_prompt(problem)
        prompt_tokens = self.engine.count_tokens(prompt)
        if prompt_tokens + _MIN_NEW_TOKENS > self.engine.max_model_len:
            return self._fallback("prompt_too_long", start,
                                  f"prompt has {prompt_tokens} tokens; the context holds {self.engine.max_model_len}")
        cands = [_Candidate(i) for i in range(self.config.tir.num_candidates)]
        seed_base = zlib.crc32(problem.encode("utf-8", "replace")) ^ self.config.sampling.seed
        stop_reason = "finished"
        for rnd in range(self.config.tir.max_rounds):
            if time.monotonic() >= deadline:
                stop_reason = "deadline"
                break
            if not self._round(prompt, cands, rnd, seed_base, deadline):
                break
        return self._result(cands, start, stop_reason)

    def _round(self, prompt: str, cands: list[_Candidate], rnd: int, seed_base: int, deadline: float) -> bool:
        """Run one round; False when no candidate is left active."""
        active = [c for c in cands if c.status == "active"]
        if not active:
            return False
        requests, asked = self._requests(prompt, active, rnd, seed_base)
        gens = self.engine.generate(requests, self.params, deadline=deadline) if requests else []
        pending: list[tuple[_Candidate, str]] = []
        last_round = rnd == self.config.tir.max_rounds - 1
        for cand, gen in zip(asked, gens):
            code = self._absorb(cand, gen, last_round)
            if code is not None:
                pending.append((cand, code))
        self._run_code(pending, deadline)
        if last_round:
            for cand in cands:
                if cand.status == "active":
                    cand.status, cand.reason = "done", "rounds"
        return any(c.status == "active" for c in cands)

    def _requests(
        self, prompt: str, active: list[_Candidate], rnd: int, seed_base: int
    ) -> tuple[list[GenerationRequest], list[_Candidate]]:
        requests: list[GenerationRequest] = []
        asked: list[_Candidate] = []
        for cand in active:
            room = self.engine.max_model_len - self.engine.count_tokens(prompt + cand.text)
            if room < _MIN_NEW_TOKENS:
                cand.status, cand.reason = "done", "context"
                continue
            seed = (seed_base + 7919 * cand.index + 104729 * rnd + 15485863 * cand.restarts) % (2**31 - 1)
            requests.append(GenerationRequest(prompt=prompt + cand.text,
                                              max_tokens=min(self.config.sampling.max_new_tokens, room), seed=seed))
            asked.append(cand)
        return requests, asked

    def _absorb(self, cand: _Candidate, gen: Generation, last_round: bool) -> str | None:
        """Append one generation to its candidate; return the code to run, if any."""
        cand.text += gen.text
        cand.tokens += gen.num_tokens
        cand.rounds += 1
        if gen.finish_reason == "stop":
            code = last_code_block(gen.text)
            if code is None:  # it wrote an output block for code it never wrote
                cand.status, cand.reason = "pruned", "invented_output"
            return code
        if gen.finish_reason in ("eos", "length") and not self._wrote_code(cand):
            self._no_code(cand, gen.finish_reason, last_round)
        else:
            cand.status, cand.reason = "done", gen.finish_reason
        return None

    @staticmethod
    def _wrote_code(cand: _Candidate) -> bool:
        return cand.code_blocks > 0 or _CODE_OPEN in cand.text

    def _no_code(self, cand: _Candidate, finish: str, last_round: bool) -> None:
        tir = self.config.tir
        if tir.no_code_policy == "restart" and cand.restarts < tir.max_restarts and not last_round:
            cand.text, cand.restarts = "", cand.restarts + 1
        elif tir.no_code_policy == "prune":
            cand.status, cand.reason = "pruned", "no_code"
        else:  # keep, or restart with no restarts or rounds left: its answer still votes
            cand.status, cand.reason = "done", finish

    def _run_code(self, pending: list[tuple[_Candidate, str]], deadline: float) -> None:
        if not pending:
            return
        left = deadline - time.monotonic()
        if left < _MIN_CODE_SECONDS:
            for cand, _ in pending:
                cand.status, cand.reason = "done", "deadline"
            return
        timeout = min(self.config.sandbox.timeout_s, left)
        results = self.sandbox.run_many([code for _, code in pending], timeout_s=timeout)
        width = self.config.tir.output_max_chars
        for (cand, _), res in zip(pending, results):
            cand.text += res.render(width) + "\n```\n"
            cand.code_blocks += 1

    def _result(self, cands: list[_Candidate], start: float, stop_reason: str) -> SolveResult:
        results = tuple(
            CandidateResult(index=c.index, answer=None if c.status == "pruned" else extract_answer(c.text, self.rule),
                            status="pruned" if c.status == "pruned" else "done", reason=c.reason or stop_reason,
                            rounds=c.rounds, restarts=c.restarts, code_blocks=c.code_blocks, tokens=c.tokens,
                            text=c.text)
            for c in cands
        )
        vote = majority_vote([r.answer for r in results], fallback=self.config.vote.fallback_answer,
                             tie_break=self.config.vote.tie_break)
        return SolveResult(answer=vote.answer, vote=vote, candidates=results, seconds=time.monotonic() - start,
                           tokens_generated=sum(c.tokens for c in cands),
                           code_blocks=sum(c.code_blocks for c in cands), stop_reason=stop_reason)
