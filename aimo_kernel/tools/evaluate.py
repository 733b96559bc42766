"""Offline evaluation of SC-TIR on a problem set with gold answers (``aimo-kernel eval``).

Covers:

* the metrics, as pure functions over typed results (:func:`score_problem`, :func:`summarize`): pass@1
  (mean single-candidate accuracy), maj@N (the majority vote is right), pass@N (some candidate is
  right), the selection gap pass@N − maj@N, the share of correct candidates that ran a second code
  block, code blocks per candidate and seconds per problem;
* the gold answers, normalised with the candidates' own answer rule (a gold of 123456 under a mod-1000
  rule is 456); a problem whose gold the rule cannot represent (no candidate could ever match it) is
  skipped with a warning, and only a set where every gold is impossible is an error;
* running: a config made for evaluation (every one of the N candidates finishes: no early stop, no
  replacement candidates), one engine for the whole set, held by a strict
  :class:`~aimo_kernel.run.runner.Runner` (its load, its event loop, its rebuild after a stall), the same
  per-problem cap for every problem, an overall time limit checked before each problem starts
  (problems not started are reported as not run), and optionally K problems at once on a streaming
  engine (:attr:`EvalOptions.concurrency`);
* selection: besides maj@N, every rule of :func:`report_rules` (``weighted``: the config's confidence
  weighting, whatever ``vote.mode`` is, and :data:`EXTRA_RULES`) picks an answer from the same
  candidates, so one run gives every rule's accuracy and the share of the maj@N -> pass@N gap it
  closes; :func:`rescore_trace` recomputes them offline from a ``trace.jsonl`` (``eval --rescore``);
* many servers (:attr:`EvalOptions.endpoints`): the ``openai`` backend over every URL, ``concurrency``
  problems per server; each request goes to the least busy server that is up (the backend's rule, finer
  than giving each server whole problems), and a problem whose candidates a failing server ended is
  solved again, whole, once;
* the outputs: a plain-text table, ``eval.csv`` and ``trace.jsonl`` (the dry-run's trace format, so
  ``aimo-kernel profile`` reads it).

Not covered: the competition's time management (no budget planner, no speed levels: every problem
gets the same cap and the same N; see :mod:`aimo_kernel.run.runner`), answer extraction and voting rules
(:mod:`aimo_kernel.core.answers`), the solver itself (:mod:`aimo_kernel.solve`).
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimo_kernel.config import Config, ConfigError
from aimo_kernel.config.schema import VoteConfig
from aimo_kernel.core.answers import AnswerRule, majority_vote, normalize
from aimo_kernel.core.confidence import Confidence, vote_weights
from aimo_kernel.engine import AsyncEngine, Engine, engine_kinds, is_streaming
from aimo_kernel.run.problems import Problem, ProblemSetError, read_problems
from aimo_kernel.run.runner import (
    LoopThread,
    Runner,
    append_trace,
    engine_broken,
    id_width,
    trace_record,
)
from aimo_kernel.run.trace import ProblemTrace, read_trace
from aimo_kernel.solve.candidate import CandidateResult
from aimo_kernel.solve.pipeline import Solver
from aimo_kernel.solve.result import SolveResult, answer_rule, fallback_result
from aimo_kernel.vocab import CandidateReason, CandidateStatus, StopReason

log = logging.getLogger(__name__)
GRACE_S = 10.0  # past a problem's cap, how long to wait for the solver to wind down before giving up on it
MAX_RESTARTS = 3  # an engine that keeps dying after this many rebuilds ends the run (the rest: not run)


# ---------------------------------------------------------------------------------------------------
# Selection rules: the vote recomputed from the same candidates in several ways


@dataclass(frozen=True, kw_only=True)
class SelectionRule:
    """One way to pick the answer from a problem's candidates.

    ``power`` 0 and ``code_bonus`` 1 is the majority vote; ``power`` > 0 weighs each vote by
    ``max(uncertainty, floor) ** -power`` (:func:`aimo_kernel.core.confidence.vote_weight`);
    ``keep`` < 1 first keeps only that share of the voting candidates, the most confident ones
    (DeepConf's filter), and then votes.
    """

    name: str
    signal: str = "tail_entropy"
    power: float = 0.0
    floor: float = 0.01
    code_bonus: float = 1.0
    keep: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or not 0 < self.keep <= 1:
            raise ConfigError(f"SelectionRule needs a name and keep in (0, 1], got {self.name!r}, {self.keep!r}")
        Confidence().uncertainty(self.signal)  # an unknown signal is an error here, not at the first vote


def weighted_rule(vote: VoteConfig) -> SelectionRule:
    """``weighted``: the config's weighting (what ``vote.mode = "weighted"`` applies), whatever its mode."""
    return SelectionRule(name="weighted", signal=vote.confidence, power=vote.confidence_power,
                         floor=vote.confidence_floor, code_bonus=vote.code_bonus)


def report_rules(vote: VoteConfig) -> tuple[SelectionRule, ...]:
    return (weighted_rule(vote),) + EXTRA_RULES


# The rules eval reports besides the config's own: one per confidence signal, the code bonus alone and with a
# signal, a sharper weighting, and the top-half filter.
EXTRA_RULES = (
    SelectionRule(name="w_mean_entropy", signal="mean_entropy", power=1.0),
    SelectionRule(name="w_tail_entropy", signal="tail_entropy", power=1.0),
    SelectionRule(name="w_mean_logprob", signal="mean_logprob", power=1.0),
    SelectionRule(name="w2_tail_entropy", signal="tail_entropy", power=2.0),
    SelectionRule(name="code_x2", code_bonus=2.0),
    SelectionRule(name="w_tail_code_x2", signal="tail_entropy", power=1.0, code_bonus=2.0),
    SelectionRule(name="top50_tail", signal="tail_entropy", keep=0.5),
    SelectionRule(name="top50_mean_logprob", signal="mean_logprob", keep=0.5),
)


def select(rule: SelectionRule, answers: Sequence[int | None], confidences: Sequence[Confidence],
           verified: Sequence[bool], *, tie_break: str = "largest") -> int | None:
    """The answer ``rule`` picks (None when nothing voted); candidates without a confidence make a
    confidence rule fall back to one vote each (see :func:`aimo_kernel.core.confidence.vote_weights`)."""
    idx = [i for i, a in enumerate(answers) if a is not None]
    if rule.keep < 1 and idx and all(confidences[i].known for i in idx):
        idx.sort(key=lambda i: confidences[i].uncertainty(rule.signal))
        idx = sorted(idx[:max(1, math.ceil(rule.keep * len(idx)))])
    weights = vote_weights([confidences[i] for i in idx], [verified[i] for i in idx], signal=rule.signal,
                           power=rule.power, floor=rule.floor, code_bonus=rule.code_bonus)
    vote = majority_vote([answers[i] for i in idx], fallback=0, tie_break=tie_break, weights=weights)
    return None if vote.is_fallback else vote.answer


# ---------------------------------------------------------------------------------------------------
# Metrics: pure functions over typed results


@dataclass(frozen=True)
class ProblemScore:
    """One problem's outcome. ``candidates`` is N, the denominator of pass@1: a candidate never
    sampled (the solver failed early) counts as wrong, like one without an answer or pruned."""

    id: str
    gold: int  # normalised with the candidates' rule
    ran: bool = True
    answer: int | None = None  # the majority vote; None when nothing voted (or not run)
    candidates: int = 0
    correct: int = 0
    correct_second_round: int = 0  # correct candidates whose trace ran >= 2 code blocks
    sampled: int = 0  # candidates that actually ran (the code-block mean is over these)
    code_blocks: int = 0
    seconds: float = 0.0
    stop_reason: str = ""
    picks: tuple[tuple[str, int | None], ...] = ()  # (selection rule, its answer), the rules eval reports

    def right(self, rule: str) -> int | None:
        """Whether ``rule``'s answer is the gold one (None: not run)."""
        return int(dict(self.picks).get(rule) == self.gold) if self.ran else None

    @property
    def pass_at_1(self) -> float | None:
        if not self.ran:
            return None
        return self.correct / self.candidates if self.candidates else 0.0

    @property
    def maj_at_n(self) -> int | None:
        return int(self.answer == self.gold) if self.ran else None

    @property
    def pass_at_n(self) -> int | None:
        return int(self.correct > 0) if self.ran else None

    @property
    def gap(self) -> int | None:
        return None if not self.ran else int(self.correct > 0) - int(self.answer == self.gold)

    @property
    def second_round(self) -> float | None:
        return self.correct_second_round / self.correct if self.correct else None

    @property
    def code_blocks_mean(self) -> float | None:
        return self.code_blocks / self.sampled if self.sampled else None


@dataclass(frozen=True)
class EvalSummary:
    """The overall row. Accuracies are means over the problems that ran; ``second_round`` and
    ``code_blocks_mean`` are pooled over candidates (a mean of per-problem ratios would let a
    problem with one correct candidate weigh as much as one with sixteen)."""

    problems: int
    run: int
    pass_at_1: float | None
    maj_at_n: float | None
    pass_at_n: float | None
    second_round: float | None
    code_blocks_mean: float | None
    seconds_mean: float | None
    candidates: int = 0
    correct: int = 0
    selection: tuple[tuple[str, float | None], ...] = ()  # (rule, accuracy) for every rule reported

    def at_n(self, rule: str) -> float | None:
        return dict(self.selection).get(rule)

    def gap_closed(self, rule: str) -> float | None:
        """The share of the maj@N -> pass@N gap that ``rule`` closes (None without a gap)."""
        acc, maj, top = self.at_n(rule), self.maj_at_n, self.pass_at_n
        if acc is None or maj is None or top is None or top <= maj:
            return None
        return (acc - maj) / (top - maj)

    @property
    def not_run(self) -> int:
        return self.problems - self.run

    @property
    def gap(self) -> float | None:
        return None if self.pass_at_n is None or self.maj_at_n is None else self.pass_at_n - self.maj_at_n


def candidate_answer(cand: CandidateResult) -> int | None:
    """What a candidate votes: nothing when pruned, whatever answer it carries."""
    return None if cand.status is CandidateStatus.PRUNED else cand.answer


def score_problem(problem_id: str, gold: int, candidates: Sequence[CandidateResult], *, num_candidates: int,
                  tie_break: str = "largest", seconds: float = 0.0, stop_reason: str = "",
                  rules: Sequence[SelectionRule] = ()) -> ProblemScore:
    """Score one solved problem against its (already normalised) gold answer.

    The vote is recounted from the candidates with the run's tie-break, as the solver does; a
    fallback answer (no candidate voted) is never right, so maj@N never exceeds pass@N. Each of
    ``rules`` picks its own answer from the same candidates.
    """
    answers = [candidate_answer(c) for c in candidates]
    confidences = [c.confidence for c in candidates]
    verified = [c.code_verified for c in candidates]
    picks = tuple((r.name, select(r, answers, confidences, verified, tie_break=tie_break)) for r in rules)
    vote = majority_vote(answers, fallback=0, tie_break=tie_break)
    right = [c for c, a in zip(candidates, answers) if a is not None and a == gold]
    return ProblemScore(
        id=problem_id, gold=gold, answer=None if vote.is_fallback else vote.answer,
        candidates=max(num_candidates, len(candidates)), correct=len(right),
        correct_second_round=sum(c.code_blocks >= 2 for c in right), sampled=len(candidates),
        code_blocks=sum(c.code_blocks for c in candidates), seconds=seconds, stop_reason=stop_reason,
        picks=picks,
    )


def score_trace(record: ProblemTrace, rules: Sequence[SelectionRule], *, tie_break: str = "largest") -> ProblemScore:
    """One problem scored again from its trace record (written by ``eval``: its gold is normalised)."""
    if record.gold is None:
        raise ValueError(f"trace record {record.id!r} has no gold answer")
    answers = [None if c.status is CandidateStatus.PRUNED else c.answer for c in record.candidates]
    confidences = [c.confidence for c in record.candidates]
    verified = [c.code_verified for c in record.candidates]
    vote = majority_vote(answers, fallback=0, tie_break=tie_break)
    return ProblemScore(
        id=str(record.id), gold=record.gold, answer=None if vote.is_fallback else vote.answer,
        candidates=len(record.candidates), correct=sum(a is not None and a == record.gold for a in answers),
        sampled=len(record.candidates), code_blocks=record.code_blocks, seconds=record.budget_used_s,
        stop_reason=record.stop_reason.value,
        picks=tuple((r.name, select(r, answers, confidences, verified, tie_break=tie_break)) for r in rules))


def rescore_trace(path: Path | str, vote: VoteConfig | None = None,
                  rules: Sequence[SelectionRule] | None = None) -> tuple[list[ProblemScore], EvalSummary]:
    """Every selection rule's maj@N-like accuracy recomputed offline from an eval's ``trace.jsonl``."""
    vote = vote or VoteConfig()
    chosen = report_rules(vote) if rules is None else tuple(rules)
    scores = [score_trace(r, chosen, tie_break=vote.tie_break) for r in read_trace(path)]
    return scores, summarize(scores)


def not_run(problem_id: str, gold: int) -> ProblemScore:
    return ProblemScore(id=problem_id, gold=gold, ran=False, stop_reason="not_run")


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(scores: Sequence[ProblemScore]) -> EvalSummary:
    ran = [s for s in scores if s.ran]
    correct = sum(s.correct for s in ran)
    sampled = sum(s.sampled for s in ran)
    return EvalSummary(
        problems=len(scores), run=len(ran),
        pass_at_1=_mean([s.pass_at_1 or 0.0 for s in ran]),
        maj_at_n=_mean([float(s.maj_at_n or 0) for s in ran]),
        pass_at_n=_mean([float(s.pass_at_n or 0) for s in ran]),
        second_round=sum(s.correct_second_round for s in ran) / correct if correct else None,
        code_blocks_mean=sum(s.code_blocks for s in ran) / sampled if sampled else None,
        seconds_mean=_mean([s.seconds for s in ran]),
        candidates=sum(s.candidates for s in ran), correct=correct,
        selection=tuple((name, _mean([float(s.right(name) or 0) for s in ran]))
                        for name in (dict(ran[0].picks) if ran else {})),
    )


# ---------------------------------------------------------------------------------------------------
# Gold answers and the evaluation config


def _rule_text(rule: AnswerRule) -> str:
    mod = f"mod {rule.modulus}, " if rule.modulus else ""
    neg = ", negatives dropped" if rule.drop_negative else ""
    return f"{mod}range {rule.min_answer}..{rule.max_answer}{neg}"


def gold_answers(problems: Sequence[Problem], rule: AnswerRule, path: Path | str = "problems") -> list[int]:
    """Every problem's gold answer under ``rule``; ProblemSetError for a missing or impossible one."""
    missing = [p.id for p in problems if p.answer is None]
    if len(missing) == len(problems):
        raise ProblemSetError(f"{path}: no gold answers (eval needs an 'answer' column, filled on every row)")
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ProblemSetError(f"{path}: no gold answer for {', '.join(map(repr, missing[:3]))}{more} "
                              "(eval needs an answer column filled on every row)")
    golds: list[int] = []
    for p in problems:
        gold = normalize(str(p.answer), rule)
        if gold is None:
            raise ProblemSetError(f"{path}: gold answer {p.answer} of {p.id!r} is impossible under the answer rule "
                                  f"({_rule_text(rule)}): no candidate could match it")
        golds.append(gold)
    return golds


def usable_problems(problems: Sequence[Problem], rule: AnswerRule, path: Path | str = "problems"
                    ) -> tuple[list[Problem], list[int], list[str]]:
    """The problems whose gold answer the rule can represent, their golds, and a warning per problem
    skipped (a gold no candidate could match, e.g. HMMT's -984 under a 0..99999 rule). Every row
    impossible, or a gold missing, is still an error (:func:`gold_answers`)."""
    kept: list[Problem] = []
    warnings: list[str] = []
    for p in problems:
        if p.answer is not None and normalize(str(p.answer), rule) is None:
            warnings.append(f"{path}: line {p.line} (id {p.id!r}): skipped: gold answer {p.answer} is impossible "
                            f"under the answer rule ({_rule_text(rule)})")
        else:
            kept.append(p)
    if not kept:
        return list(problems), gold_answers(problems, rule, path), []  # raises with the first impossible one
    return kept, gold_answers(kept, rule, path), warnings


@dataclass(frozen=True)
class EvalOptions:
    """What ``eval`` adds to a config. None: the config's own value."""

    candidates: int | None = None  # N
    per_problem_seconds: float | None = None
    time_limit_s: float | None = None  # None: the config's budget.total_seconds
    concurrency: int = 1  # problems at once; with endpoints, per server
    endpoints: tuple[str, ...] = ()  # OpenAI-compatible servers to spread the problems over (backend openai)

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", tuple(self.endpoints))
        for name in ("per_problem_seconds", "time_limit_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"eval: {name} must be > 0, got {value!r}")
        if not 1 <= self.concurrency <= 64:
            raise ConfigError(f"eval: concurrency must be in [1, 64], got {self.concurrency!r}")


def eval_config(config: Config, options: EvalOptions) -> Config:
    """``config`` changed so that exactly N candidates run to their end on every problem.

    Early stopping and replacement candidates would make pass@1 and pass@N depend on how fast the
    vote agreed; every problem gets the same cap.
    """
    n = config.tir.num_candidates if options.candidates is None else options.candidates
    cap = config.budget.per_problem_seconds if options.per_problem_seconds is None else options.per_problem_seconds
    tir = dataclasses.replace(config.tir, num_candidates=n, max_candidates=n)
    vote = dataclasses.replace(config.vote, agreement_rules=(), stop_when_decided=False, give_up_rule="")
    budget = dataclasses.replace(config.budget, per_problem_seconds=cap,
                                 min_problem_seconds=min(cap, config.budget.min_problem_seconds))
    engine = config.engine
    if options.endpoints:  # EngineConfig validates the URLs (a bad one is a ConfigError naming it)
        engine = dataclasses.replace(engine, backend="openai", server=options.endpoints)
    return dataclasses.replace(config, tir=tir, vote=vote, budget=budget, engine=engine)


def total_concurrency(options: EvalOptions) -> int:
    """Problems in flight: ``concurrency`` per server with endpoints, else ``concurrency``."""
    return options.concurrency * max(1, len(options.endpoints))


# ---------------------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True)
class EvalReport:
    scores: list[ProblemScore]
    summary: EvalSummary
    num_candidates: int
    per_problem_seconds: float
    concurrency: int
    load_seconds: float
    solve_seconds: float  # wall time solving: with concurrency, less than the sum of the problems' seconds
    seconds: float  # the whole command: model load, every problem, closing
    stopped: str = ""  # why problems were left not run ("time limit", "engine ..."), "" when all ran
    restarts: int = 0
    files: tuple[Path, ...] = ()
    skipped: tuple[str, ...] = ()  # a warning per problem left out (its gold answer is impossible under the rule)


EngineFactory = Callable[[Config], Engine | AsyncEngine]


def _needs_streaming(config: Config) -> ConfigError:
    return ConfigError(f"eval: concurrency > 1 needs a streaming engine (engine.backend "
                       f"{' or '.join(k for k in engine_kinds() if is_streaming(k))}), got {config.engine.backend!r}")


@dataclass
class _Session:
    """One evaluation run: the engine (through a Runner), the clock, and the results so far."""

    config: Config
    problems: list[Problem]
    golds: list[int]
    concurrency: int
    deadline: float  # the overall time limit, on time.monotonic()
    engine_factory: EngineFactory | None = None
    caller_loop: LoopThread | None = None  # the caller's event loop (and engine), left open at the end
    trace_path: Path | None = None
    progress: Any = None
    results: dict[int, tuple[SolveResult, float]] = field(default_factory=dict)
    runner: Runner | None = None
    restarts: int = 0
    load_seconds: float = 0.0
    solve_seconds: float = 0.0  # wall time spent solving (load and restarts excluded)
    max_retries: int = 0  # per problem, after a server failed its candidates (eval over endpoints: 1)
    retries: dict[int, int] = field(default_factory=dict)

    @property
    def cap(self) -> float:
        return self.config.budget.per_problem_seconds

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def start(self) -> Solver:
        """Load the engine through the run's :class:`Runner` (strict: a missing model is an error, not a
        0% score); the Runner owns the engine, its event loop and their rebuilds."""
        self.runner = Runner(self.config, engine_factory=self.engine_factory, loop=self.caller_loop,
                             close_engine=self.engine_factory is None, num_problems=len(self.problems),
                             strict=True)
        solver = self.runner.solver()
        self.load_seconds = self.runner.load_seconds
        if self.concurrency > 1 and solver.blocking:
            raise _needs_streaming(self.config)
        self.runner.event_loop()  # a blocking engine too: the solver runs on an event loop
        return solver

    def rebuild(self) -> Solver:
        """The Runner's rebuild after a stall or a crash (same loop, fresh engine)."""
        assert self.runner is not None
        solver = self.runner.rebuild()
        self.restarts, self.load_seconds = self.runner.restarts, self.runner.load_seconds
        return solver

    def record(self, index: int, result: SolveResult, seconds: float) -> None:
        self.results[index] = (result, seconds)
        if self.trace_path is not None:
            rec = trace_record(self.problems[index].id, result, self.golds[index], seconds, None)
            append_trace(self.trace_path, dataclasses.replace(rec, budget_given_s=self.cap, problem_index=index,
                                                              speed_level=0))
        if self.progress is not None:
            self.progress.update(1)

    async def solve_queue(self, solver: Solver, todo: list[int]) -> list[int]:
        """Solve ``todo`` with up to ``concurrency`` problems in flight; returns those not started.

        A worker takes the next problem only while time is left and the engine is sound, so a
        problem is either solved to its end or never started.
        """
        queue = list(reversed(todo))
        broken = False

        async def worker() -> None:
            nonlocal broken
            while queue and not broken and self.time_left() > 0:
                index = queue.pop()
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                try:  # solve() bounds itself; this is the belt to its braces
                    result = await asyncio.wait_for(solver.solve(self.problems[index].problem, seconds=self.cap),
                                                    self.cap + GRACE_S)
                except TimeoutError:
                    result = fallback_result(self.config, StopReason.STALL,
                                             "the solver did not wind down at its deadline")
                if self._retry(index, result):
                    queue.append(index)  # next out: its candidates run again on the servers still up
                    continue
                self.record(index, result, loop.time() - t0)
                broken = broken or engine_broken(solver, result)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        return list(reversed(queue))

    def _retry(self, index: int, result: SolveResult) -> bool:
        """With several servers, a problem whose candidates a failing server ended (reason ``error``) is
        solved again, whole, once: the backend sends its requests to the servers still up, and the
        trace holds one record per problem, as in a local run."""
        failed = any(c.reason is CandidateReason.ERROR for c in result.candidates) or \
            result.stop_reason is StopReason.ERROR
        if not failed or self.retries.get(index, 0) >= self.max_retries or self.time_left() <= 0:
            return False
        self.retries[index] = self.retries.get(index, 0) + 1
        log.warning("problem %s: %s; solving it again", self.problems[index].id, result.error or "a server failed")
        return True

    def solve(self, solver: Solver, todo: list[int]) -> list[int]:
        t0 = time.monotonic()
        try:
            assert self.runner is not None and self.runner.loop is not None
            timeout = max(0.0, self.time_left()) + self.cap + 2 * GRACE_S
            try:
                return self.runner.loop.run(self.solve_queue(solver, todo), timeout=timeout)
            except TimeoutError:  # every problem bounds itself, so this means the loop itself is stuck
                return [i for i in todo if i not in self.results]
        finally:
            self.solve_seconds += time.monotonic() - t0

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()  # the engine and the loop it made; a caller's engine and loop stay open


def _run(session: _Session) -> str:
    """Solve every problem, rebuilding a broken engine; returns why some were not run ("" if none)."""
    todo = list(range(len(session.problems)))
    solver = session.start()
    while todo:
        todo = session.solve(solver, todo)
        if not todo:
            return ""
        if session.time_left() <= 0:
            return "time limit"
        if session.engine_factory is not None or session.restarts >= MAX_RESTARTS:
            return f"engine stalled or died ({session.restarts} restart(s))"
        try:
            solver = session.rebuild()
        except Exception as exc:  # the problems solved so far are still worth reporting
            return f"engine restart failed: {type(exc).__name__}: {exc}"
    return ""


def run_eval(config: Config, problems_path: Path | str, options: EvalOptions | None = None, *,
             out_dir: Path | str | None = None, engine_factory: EngineFactory | None = None,
             loop: LoopThread | None = None, show_progress: bool = False, progress_file: Any = None) -> EvalReport:
    """Evaluate ``config`` on a CSV with gold answers; writes eval.csv and trace.jsonl under ``out_dir``.

    Bad input (file, columns, gold answers, options) raises before the engine loads. An engine from
    ``engine_factory`` (living on ``loop``, for a streaming one) is the caller's: it is not closed, nor
    rebuilt after a stall.
    """
    from tqdm import tqdm

    t0 = time.monotonic()
    options = options or EvalOptions()
    cfg = eval_config(config, options)
    problems, golds, skipped = usable_problems(read_problems(problems_path), answer_rule(cfg), problems_path)
    for warning in skipped:
        log.warning("%s", warning)
    if options.concurrency > 1 and engine_factory is None and not is_streaming(cfg.engine.backend):
        raise _needs_streaming(cfg)  # before a model loads for nothing
    trace = _prepare_out(out_dir)
    limit = cfg.budget.total_seconds if options.time_limit_s is None else options.time_limit_s
    session = _Session(cfg, problems, golds, total_concurrency(options), deadline=t0 + limit,
                       engine_factory=engine_factory, caller_loop=loop, trace_path=trace,
                       max_retries=1 if options.endpoints else 0)
    with tqdm(total=len(problems), desc="eval", unit="pb", disable=not show_progress, file=progress_file) as bar:
        session.progress = bar
        try:
            stopped = _run(session)
        finally:
            session.close()
    report = _report(session, cfg, options, stopped, time.monotonic() - t0, out_dir)
    return dataclasses.replace(report, skipped=tuple(skipped))


def _prepare_out(out_dir: Path | str | None) -> Path | None:
    if out_dir is None:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trace = out / "trace.jsonl"
    trace.unlink(missing_ok=True)  # a trace of this run only, like the dry-run's
    return trace


def _report(session: _Session, cfg: Config, options: EvalOptions, stopped: str, seconds: float,
            out_dir: Path | str | None) -> EvalReport:
    scores = []
    for index, (problem, gold) in enumerate(zip(session.problems, session.golds)):
        if index not in session.results:
            scores.append(not_run(problem.id, gold))
            continue
        result, used = session.results[index]
        scores.append(score_problem(problem.id, gold, result.candidates, num_candidates=cfg.tir.num_candidates,
                                    tie_break=cfg.vote.tie_break, seconds=used, stop_reason=result.stop_reason,
                                    rules=report_rules(cfg.vote)))
    report = EvalReport(scores=scores, summary=summarize(scores), num_candidates=cfg.tir.num_candidates,
                        per_problem_seconds=cfg.budget.per_problem_seconds, concurrency=total_concurrency(options),
                        load_seconds=session.load_seconds, solve_seconds=session.solve_seconds, seconds=seconds,
                        stopped=stopped, restarts=session.restarts)
    if out_dir is None:
        return report
    csv_path = Path(out_dir) / "eval.csv"
    csv_path.write_text(to_csv(report), encoding="utf-8")
    files = (csv_path,) + ((session.trace_path,) if session.trace_path and session.trace_path.exists() else ())
    return dataclasses.replace(report, files=files)


# ---------------------------------------------------------------------------------------------------
# Output

CSV_COLUMNS = ("id", "status", "problems", "gold", "answer", "candidates", "correct", "pass_at_1", "maj_at_n",
               "weighted_at_n", "pass_at_n", "selection_gap", "second_round", "code_blocks_mean", "seconds",
               "stop_reason") + tuple(f"{r.name}_at_n" for r in EXTRA_RULES)
RULE_NAMES = ("weighted",) + tuple(r.name for r in EXTRA_RULES)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def to_csv(report: EvalReport) -> str:
    """One row per problem (``status`` run or not_run), then the ``overall`` row.

    ``problems`` is how many problems a row's metrics average over (1 or 0 for a problem row).
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for s in report.scores:
        rights = [s.right(name) if s.picks else None for name in RULE_NAMES]
        writer.writerow([_cell(v) for v in (
            s.id, "run" if s.ran else "not_run", int(s.ran), s.gold, s.answer, s.candidates if s.ran else None,
            s.correct if s.ran else None, s.pass_at_1, s.maj_at_n, rights[0], s.pass_at_n, s.gap, s.second_round,
            s.code_blocks_mean, s.seconds if s.ran else None, s.stop_reason, *rights[1:])])
    o = report.summary
    accs = [o.at_n(name) for name in RULE_NAMES]
    writer.writerow([_cell(v) for v in (
        "overall", "overall", o.run, None, None, o.candidates, o.correct, o.pass_at_1, o.maj_at_n, accs[0],
        o.pass_at_n, o.gap, o.second_round, o.code_blocks_mean, o.seconds_mean, report.stopped, *accs[1:])])
    return buf.getvalue()


def _num(value: float | None, width: int, digits: int = 3) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def _header(n: int, w: int) -> str:
    return (f"{'id':<{w}} {'gold':>6} {'answer':>6} {'pass@1':>6} {f'maj@{n}':>6} {f'wtd@{n}':>6} {f'pass@{n}':>7} "
            f"{'gap':>6} {'2nd':>5} {'code':>5} {'seconds':>8}  stop")


def _row(s: ProblemScore, w: int) -> str:
    if not s.ran:
        return f"{s.id[:w]:<{w}} {s.gold:>6} {'':>6}  not run"
    answer = "-" if s.answer is None else str(s.answer)
    weighted = "-" if not s.picks else str(s.right("weighted"))
    return (f"{s.id[:w]:<{w}} {s.gold:>6} {answer:>6} {_num(s.pass_at_1, 6)} {s.maj_at_n:>6} {weighted:>6} "
            f"{s.pass_at_n:>7} "
            f"{s.gap:>6} {_num(s.second_round, 5, 2)} {_num(s.code_blocks_mean, 5, 2)} {s.seconds:>8.2f}  "
            f"{s.stop_reason}")


def _overall(o: EvalSummary, w: int) -> str:
    label = f"overall ({o.run}/{o.problems})"
    return (f"{label[:w]:<{w}} {'':>6} {'':>6} {_num(o.pass_at_1, 6)} {_num(o.maj_at_n, 6)} "
            f"{_num(o.at_n('weighted'), 6)} {_num(o.pass_at_n, 7)} "
            f"{_num(o.gap, 6)} {_num(o.second_round, 5, 2)} {_num(o.code_blocks_mean, 5, 2)} "
            f"{_num(o.seconds_mean, 8, 2)}")


def format_report(report: EvalReport, *, quiet: bool = False) -> str:
    """The table: a row per problem (unless ``quiet``), the overall row, and a footer on the run."""
    w = id_width((s.id for s in report.scores), least=22)
    header = _header(report.num_candidates, w)
    rule = "-" * len(header)
    lines = [header, rule]
    if not quiet:
        lines += [_row(s, w) for s in report.scores] + [rule]
    lines.append(_overall(report.summary, w))
    o = report.summary
    wall = report.solve_seconds
    footer = (f"N={report.num_candidates} candidates, cap {report.per_problem_seconds:g} s/problem, "
              f"concurrency {report.concurrency}; model load {report.load_seconds:.1f} s, "
              f"problems {wall:.1f} s ({wall / max(1, o.run):.2f} s/problem), total {report.seconds:.1f} s")
    lines += [rule, footer]
    if o.not_run:
        lines.append(f"not run: {o.not_run} of {o.problems} problem(s) ({report.stopped})")
    if report.restarts:
        lines.append(f"engine restarts: {report.restarts}")
    lines += [f"warning: {w}" for w in report.skipped]
    if o.selection:
        lines += format_selection(o, report.num_candidates)
    if report.files:
        lines.append("wrote: " + ", ".join(str(p) for p in report.files))
    return "\n".join(lines)


def format_selection(o: EvalSummary, n: int) -> list[str]:
    """Every selection rule's accuracy from the same candidates, and the share of the maj -> pass gap it closes."""
    lines = [f"selection from the same candidates: pass@1 {_num(o.pass_at_1, 0)}, maj@{n} {_num(o.maj_at_n, 0)}, "
             f"pass@{n} {_num(o.pass_at_n, 0)}"]
    for name, acc in o.selection:
        closed = o.gap_closed(name)
        share = "" if closed is None else f"  (gap closed {closed:+.0%})"
        lines.append(f"  {name + f'@{n}':<24} {_num(acc, 6)}{share}")
    return lines
