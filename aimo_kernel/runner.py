"""Runs SC-TIR over a competition: the engine, the time budgets, the trace, one answer per problem.

:class:`Runner` is what a competition ``predict`` calls: the first call loads the engine (the only
call without a deadline in the real API), each call plans the problem's budget
(:mod:`aimo_kernel.budget`), solves it with the scheduler the engine supports (streaming engines on a
background event loop, blocking ones directly), rebuilds the engine if it stalled or died, writes a
trace record, and answers; it never raises. :func:`dry_run` serves a CSV through the local mock API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aimo_kernel.budget import SPEED_LEVELS, BudgetPlanner, ProblemBudget
from aimo_kernel.config import Config
from aimo_kernel.engine import AsyncEngine, Engine, get_engine
from aimo_kernel.sandbox import make_sandbox
from aimo_kernel.scheduler import AsyncSCTIR
from aimo_kernel.solver import Effort, SCTIRSolver, SolveResult, fallback_result

log = logging.getLogger(__name__)
T = TypeVar("T")
STREAMING_BACKENDS = ("vllm", "fake-async")  # engines that live on, and are driven from, a background event loop
_GRACE_S = 10.0  # past a problem's budget, how long to wait for the scheduler to wind down


def process_start() -> float:
    """When this process started, on the ``time.monotonic()`` clock (now, where it cannot be read).

    The competition's clock starts with the notebook, not with the first import of this package.
    """
    try:
        with open("/proc/self/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - max(0.0, age)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic()


class LoopThread:
    """An event loop on a daemon thread, so blocking callers can run coroutines with a timeout."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="aimo-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout=max(0.0, timeout))
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5.0)


@dataclass(frozen=True)
class ProblemRecord:
    id: Any
    answer: int
    gold: int | None
    seconds: float
    tokens: int
    code_blocks: int
    stop_reason: str
    votes: dict[int, float]
    error: str = ""
    budget_s: float = 0.0
    speed_level: int = 0

    @property
    def correct(self) -> bool | None:
        return None if self.gold is None else self.answer == self.gold


@dataclass
class Runner:
    """Holds the run's state across ``predict`` calls."""

    config: Config
    engine_factory: Callable[[Config], Engine | AsyncEngine] | None = None
    num_problems: int | None = None  # known for a local CSV; else the preset's count
    trace_path: Path | None = None
    records: list[ProblemRecord] = field(default_factory=list)
    load_seconds: float = 0.0
    restarts: int = 0
    started: float = field(default_factory=process_start)
    close_engine: bool = True
    _solver: SCTIRSolver | AsyncSCTIR | None = None
    loop: LoopThread | None = None  # where a streaming engine lives; made on first use
    _planner: BudgetPlanner | None = None

    def solver(self) -> SCTIRSolver | AsyncSCTIR:
        if self._solver is None:
            t0 = time.monotonic()
            engine = self._make_engine()
            self.load_seconds += time.monotonic() - t0
            sandbox = make_sandbox(self.config.sandbox)
            if isinstance(engine, AsyncEngine):
                self._solver = AsyncSCTIR(engine, sandbox, self.config)
            else:
                self._solver = SCTIRSolver(engine, sandbox, self.config)
        return self._solver

    def _make_engine(self) -> Engine | AsyncEngine:
        factory = self.engine_factory or (lambda cfg: get_engine(cfg.engine.backend, cfg))
        if self.config.engine.backend in STREAMING_BACKENDS or self.loop is not None:
            # a streaming engine lives on the loop that will drive it
            self.loop = self.loop or LoopThread()

            async def create() -> Engine | AsyncEngine:
                return factory(self.config)

            return self.loop.run(create(), timeout=self.config.engine.load_timeout_s)
        return factory(self.config)

    def planner(self) -> BudgetPlanner:
        if self._planner is None:
            self._planner = BudgetPlanner(self.config.budget, self.config.tir, start=self.started,
                                          num_problems=self.num_problems)
        return self._planner

    def answer(self, problem_id: Any, problem: str, gold: int | None = None) -> int:
        """Solve one problem within its budget and record it; never raises."""
        t0 = time.monotonic()
        t_plan = t0
        plan: ProblemBudget | None = None
        try:
            solver = self.solver()  # the first call loads the model: that is not the problem's time
            plan = self.planner().plan()
            t_plan = time.monotonic()
            result = self._solve(solver, problem, plan)
        except Exception as exc:  # engine failed to load or hung: every problem still gets an answer
            log.error("problem %s: %s: %s; answering the fallback", problem_id, type(exc).__name__, exc)
            result = fallback_result(self.config, "error", f"{type(exc).__name__}: {exc}")
        used = time.monotonic() - t_plan
        if plan is not None:
            self.planner().done(plan.seconds, used)
        self.records.append(_record(problem_id, result, gold, time.monotonic() - t0, plan))
        self._trace(problem_id, result, gold, used, plan)
        if result.stop_reason in ("stall", "error") and self._solver is not None \
                and engine_broken(self._solver, result):
            self._restart_engine()
        return result.answer

    def _solve(self, solver: SCTIRSolver | AsyncSCTIR, problem: str, plan: ProblemBudget) -> SolveResult:
        effort = effort_for(self.config, plan)
        if isinstance(solver, AsyncSCTIR):
            assert self.loop is not None
            coro = solver.solve(problem, seconds=plan.seconds, effort=effort)
            return self.loop.run(coro, timeout=plan.seconds + _GRACE_S)
        return solver.solve(problem, deadline=plan.deadline, effort=effort)

    def _restart_engine(self) -> None:
        """Rebuild the engine after a stall or a crash, so the next problem starts on a live one."""
        if self.engine_factory is not None and not self.close_engine:
            return  # a caller's engine is the caller's to manage
        log.warning("restarting the engine after %s", self.records[-1].stop_reason)
        self.close(keep_loop=True)
        self._solver = None
        self.restarts += 1
        try:
            self.solver()
        except Exception as exc:  # the next problem tries again
            log.error("engine restart failed: %s: %s", type(exc).__name__, exc)

    def _trace(self, problem_id: Any, result: SolveResult, gold: int | None, used: float,
               plan: ProblemBudget | None) -> None:
        if self.trace_path is None:
            return
        append_trace(self.trace_path, trace_record(problem_id, result, gold, used, plan))

    def close(self, *, keep_loop: bool = False) -> None:
        if self._solver is not None:
            if self.close_engine:
                self._close_engine(self._solver.engine)
            self._solver.sandbox.close()
        if self.loop is not None and not keep_loop and self.close_engine:
            self.loop.close()
            self.loop = None


    def _close_engine(self, engine: Engine | AsyncEngine) -> None:
        """A streaming engine is closed on its own loop, where its tasks live."""
        if self.loop is None:
            engine.close()
            return

        async def close() -> None:
            engine.close()

        try:
            self.loop.run(close(), timeout=60.0)
        except Exception as exc:  # closing must not lose the run's answers
            log.warning("engine close: %s: %s", type(exc).__name__, exc)


def engine_broken(solver: SCTIRSolver | AsyncSCTIR, result: SolveResult) -> bool:
    """Whether the engine must be rebuilt before the next problem: it stalled, or it died."""
    return result.stop_reason == "stall" or not getattr(solver.engine, "alive", True)


def append_trace(path: Path, record: dict[str, Any]) -> None:
    """One problem's trace record as a line of ``trace.jsonl``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=str) + "\n")


def effort_for(config: Config, plan: ProblemBudget) -> Effort:
    """The planner's speed level applied to the whole candidate budget of asynchronous mode too."""
    _, factor, _ = SPEED_LEVELS[plan.speed_level]
    total = max(config.tir.max_candidates, config.tir.num_candidates)
    return Effort(num_candidates=plan.num_candidates, max_rounds=plan.max_rounds,
                  max_candidates=max(plan.num_candidates, math.ceil(total * factor)), richness=plan.richness)


def trace_record(problem_id: Any, result: SolveResult, gold: int | None, used: float,
                 plan: ProblemBudget | None) -> dict[str, Any]:
    """One JSON line per problem: budget, stop reason, vote, and every candidate's rounds."""
    return {
        "id": problem_id, "answer": result.answer, "gold": gold, "stop_reason": result.stop_reason,
        "error": result.error, "budget_given_s": plan.seconds if plan else 0.0, "budget_used_s": used,
        "speed_level": plan.speed_level if plan else None, "problem_index": plan.index if plan else None,
        "votes": {str(k): v for k, v in result.vote.counts.items()}, "tokens": result.tokens_generated,
        "code_blocks": result.code_blocks,
        "candidates": [
            {"index": c.index, "answer": c.answer, "status": c.status, "reason": c.reason, "restarts": c.restarts,
             "rounds": [asdict(r) for r in c.log]}
            for c in result.candidates
        ],
    }


def _record(problem_id: Any, result: SolveResult, gold: int | None, seconds: float,
            plan: ProblemBudget | None) -> ProblemRecord:
    return ProblemRecord(id=problem_id, answer=result.answer, gold=gold, seconds=seconds,
                         tokens=result.tokens_generated, code_blocks=result.code_blocks,
                         stop_reason=result.stop_reason, votes=dict(result.vote.counts), error=result.error,
                         budget_s=plan.seconds if plan else 0.0, speed_level=plan.speed_level if plan else 0)


def make_predict(runner: Runner, progress: Any = None) -> Callable[..., Any]:
    """The competition endpoint: a plain function named ``predict`` over one-row polars Series."""

    def predict(id_: Any, problem: Any, answer: Any = None) -> Any:
        import polars as pl

        gold = None
        if answer is not None:
            value = answer.item(0)
            gold = int(value) if isinstance(value, (int, float)) or str(value).lstrip("-").isdigit() else None
        text = problem.item(0)
        result = runner.answer(id_.item(0), "" if text is None else str(text), gold)
        if progress is not None:
            progress.update(1)
        return pl.DataFrame({"id": id_, "answer": [result]})

    return predict


@dataclass(frozen=True)
class DryRunReport:
    submission: Path
    records: list[ProblemRecord]
    load_seconds: float
    seconds: float

    @property
    def accuracy(self) -> float | None:
        graded = [r.correct for r in self.records if r.correct is not None]
        return sum(graded) / len(graded) if graded else None


def dry_run(config: Config, problems: Path, out_dir: Path, *, seed: int | None = 0,
            engine_factory: Callable[[Config], Engine | AsyncEngine] | None = None,
            show_progress: bool = True, loop: LoopThread | None = None) -> DryRunReport:
    """Serve ``problems`` through the local mock gateway and collect the per-problem records."""
    from tqdm import tqdm

    from aimo_kernel.kaggle import serve_mock
    from aimo_kernel.problems import read_problems

    count = len(read_problems(problems))  # validates the file with a clear error before anything loads
    # An engine handed in by the caller is the caller's to close.
    trace = Path(out_dir) / "trace.jsonl"
    trace.unlink(missing_ok=True)
    runner = Runner(config, engine_factory=engine_factory, close_engine=engine_factory is None,
                    num_problems=count, trace_path=trace, started=time.monotonic(), loop=loop)
    t0 = time.monotonic()
    with tqdm(total=count, desc="problems", unit="pb", disable=not show_progress) as bar:
        try:  # the mock of the config's competition API, through the Kaggle shim's own code
            submission = serve_mock(runner, problems, out_dir, seed=seed, progress=bar,
                                    call_deadline_s=config.budget.per_problem_seconds + 60.0)
        finally:
            runner.close()
    return DryRunReport(submission=submission, records=runner.records, load_seconds=runner.load_seconds,
                        seconds=time.monotonic() - t0)


def id_width(ids: Iterable[object], *, least: int = 18, most: int = 40) -> int:
    """A table's id column: wide enough for the longest id (so ids sharing a long prefix stay
    distinct), within [least, most]."""
    return max(least, min(most, max((len(str(i)) for i in ids), default=least)))


def format_table(report: DryRunReport) -> str:
    w = id_width(r.id for r in report.records)
    header = f"{'id':<{w}} {'answer':>7} {'gold':>7} {'ok':>3} {'seconds':>8} {'tokens':>7} {'code':>5}  stop"
    lines = [header, "-" * len(header)]
    for r in report.records:
        gold = "" if r.gold is None else str(r.gold)
        ok = {True: "yes", False: "no", None: ""}[r.correct]
        lines.append(f"{str(r.id)[:w]:<{w}} {r.answer:>7} {gold:>7} {ok:>3} {r.seconds:>8.2f} {r.tokens:>7} "
                     f"{r.code_blocks:>5}  {r.stop_reason}")
    acc = report.accuracy
    graded = sum(r.correct is not None for r in report.records)
    right = sum(bool(r.correct) for r in report.records)
    summary = f"accuracy: {right}/{graded} = {acc:.1%}" if acc is not None else "accuracy: no gold answers"
    lines += ["-" * len(header), summary,
              f"model load {report.load_seconds:.1f} s, total {report.seconds:.1f} s; submission: {report.submission}"]
    return "\n".join(lines)
