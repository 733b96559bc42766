"""Runs SC-TIR over a competition: the engine, the time budgets, the trace, one answer per problem.

:class:`Runner` is what a competition ``predict`` calls, once per problem. The first call loads the
engine (the only call without a deadline in the real API); each later call has the gateway's
per-call deadline (:func:`aimo_kernel.core.budget.call_deadline`) and never passes it: the problem's
budget is planned inside it, and an engine rebuild (after a stall or a crash, done at the start of the
next call, not at the end of the one that saw it) or a load retry is bounded by it too. A model that
fails to load is retried at most once; after that every problem answers the fallback at once and
:meth:`Runner.summary_lines` says why. Every fallback answer is counted with its reason
(:func:`fallback_lines`). It never raises unless built with ``strict=True`` (tests, ``eval``),
where a failure is an error instead of a fallback answer.

Not covered: the competition APIs (:mod:`aimo_kernel.run.kaggle`), the dry-run
(:mod:`aimo_kernel.run.dryrun`), solving itself (:mod:`aimo_kernel.solve`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aimo_kernel.config import Config
from aimo_kernel.core.budget import SPEED_LEVELS, BudgetPlanner, ProblemBudget, call_deadline
from aimo_kernel.core.throughput import CalibrationError, level_seconds, read_calibration
from aimo_kernel.engine import AsyncEngine, Engine, get_engine, is_streaming
from aimo_kernel.run.trace import ProblemTrace, append_trace
from aimo_kernel.sandbox import Sandbox, make_sandbox
from aimo_kernel.solve.pipeline import Solver
from aimo_kernel.solve.result import Effort, SolveResult, fallback_result
from aimo_kernel.vocab import StopReason

log = logging.getLogger(__name__)
T = TypeVar("T")
# Model-written code is compiled from strings (named "<unknown>" by ast.parse, "<code>" by the sandbox):
# its SyntaxWarnings ("is" with a literal, invalid escapes) are the model's, not the run's to show.
warnings.filterwarnings("ignore", category=SyntaxWarning, module=r"<(unknown|code|string)>$")

_GRACE_S = 10.0  # past a problem's budget, how long to wait for the scheduler to wind down
MAX_LOAD_ATTEMPTS = 2  # a model that fails to load is retried once, then every problem answers the fallback
FALLBACK_WARN_SHARE = 0.1  # above this share of fallback answers, the summary says so in one loud line


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
    seconds: float  # the problem's own time: a model load inside the same call is not counted here
    tokens: int
    code_blocks: int
    stop_reason: str
    votes: dict[int, float]
    error: str = ""
    budget_s: float = 0.0
    speed_level: int = 0
    fallback_reason: str = ""  # why the answer is the fallback ("" when a candidate's vote decided it)
    candidates: int = 0  # candidates started (with persistent sessions: the kernels opened)

    @property
    def correct(self) -> bool | None:
        return None if self.gold is None else self.answer == self.gold

    @property
    def fallback(self) -> bool:
        return bool(self.fallback_reason)


def fallback_reason(result: SolveResult, plan: ProblemBudget | None, load_failed: bool) -> str:
    """Why no candidate's vote gave the answer, in a few words ("" when one did)."""
    if not result.vote.is_fallback:
        return ""
    if load_failed:
        return "model not loaded"
    if plan is not None and plan.seconds <= 0:
        return "no time left"
    words = {"error": "error", "stall": "engine stalled", "empty_problem": "empty problem",
             "prompt_too_long": "problem too long"}
    return words.get(result.stop_reason, "no candidate answered")


def fallback_lines(records: Sequence[ProblemRecord], fallback_answer: int) -> list[str]:
    """The fallback count with its reasons, and one loud line when more than a tenth got it."""
    reasons = Counter(r.fallback_reason for r in records if r.fallback)
    total = sum(reasons.values())
    if not records or not total:
        return [f"fallback answers: 0 of {len(records)}"]
    why = ", ".join(f"{reason} ×{n}" for reason, n in reasons.most_common())
    lines = [f"fallback answers: {total} of {len(records)} ({why})"]
    if total > FALLBACK_WARN_SHARE * len(records):
        lines.append(f"!!! WARNING: {total} of {len(records)} problems ({total / len(records):.0%}) got the "
                     f"fallback answer {fallback_answer}, not a model's answer: {why} !!!")
    return lines


@dataclass
class Runner:
    """Holds the run's state across ``predict`` calls.

    ``strict``: a failure inside :meth:`answer` (a bug, a model that cannot load) raises instead of
    answering the fallback; for tests and ``eval``, never for a competition.
    """

    config: Config
    engine_factory: Callable[[Config], Engine | AsyncEngine] | None = None
    num_problems: int | None = None  # known for a local CSV; else the preset's count
    trace_path: Path | None = None
    records: list[ProblemRecord] = field(default_factory=list)
    load_seconds: float = 0.0
    startup: dict[str, float] = field(default_factory=dict)  # where the last start-up went (engine's own split)
    restarts: int = 0
    started: float = field(default_factory=process_start)
    close_engine: bool = True
    strict: bool = False
    _solver: Solver | None = None
    loop: LoopThread | None = None  # where the solver runs (and a streaming engine lives); made on first use
    _planner: BudgetPlanner | None = None
    calls: int = 0
    load_failures: int = 0  # consecutive failed loads (a successful one resets it)
    load_error: str = ""  # the last load failure
    gave_up: str = ""  # set once loading failed MAX_LOAD_ATTEMPTS times: every problem answers the fallback
    _needs_restart: bool = False
    _own_loop: bool = False
    _sandbox: Sandbox | None = None  # made before a load, kept across a failed one, then the solver's

    def solver(self, timeout: float | None = None) -> Solver:
        """The solver, loading the engine first if needed (within ``timeout`` seconds, at most
        ``engine.load_timeout_s``); raises what the load raised."""
        if self._solver is None:
            t0 = time.monotonic()
            # the sandbox first: its pool's interpreters import their modules in the background while the
            # engine loads (a CPU core the engine's start leaves idle much of the time)
            if self._sandbox is None:
                self._sandbox = make_sandbox(self.config.sandbox)
            t1 = time.monotonic()
            limit = self.config.engine.load_timeout_s
            limit = limit if timeout is None else min(timeout, limit)
            try:
                engine = self._make_engine(max(0.0, limit - (t1 - t0)))
            finally:
                self.load_seconds += time.monotonic() - t1
            self.startup = {"sandbox": t1 - t0, **getattr(engine, "startup", {})}
            self._solver = Solver(engine, self._sandbox, self.config)
            self._sandbox = None  # the solver's now
        return self._solver

    def _make_engine(self, timeout: float) -> Engine | AsyncEngine:
        factory = self.engine_factory or (lambda cfg: get_engine(cfg.engine.backend, cfg))
        if is_streaming(self.config.engine.backend) or self.loop is not None:
            # a streaming engine lives on the loop that will drive it
            if self.loop is None:
                self.loop, self._own_loop = LoopThread(), True

            async def create() -> Engine | AsyncEngine:
                return factory(self.config)

            try:
                return self.loop.run(create(), timeout=timeout)
            except TimeoutError:
                if self._own_loop:  # the hung load still blocks that loop: the next try gets a fresh one
                    self.loop, self._own_loop = None, False
                raise TimeoutError(f"the model did not load within {timeout:.0f} s") from None
        return _call_with_timeout(lambda: factory(self.config), timeout)

    def planner(self) -> BudgetPlanner:
        if self._planner is None:
            self._planner = BudgetPlanner(self.config.budget, self.config.tir, start=self.started,
                                          num_problems=self.num_problems, level_seconds=self._level_seconds())
        return self._planner

    def _level_seconds(self) -> tuple[float, ...]:
        """Each speed level's projected time per problem from ``budget.calibration`` (none: () ).

        An unreadable file must not cost the submission: it is logged and the plan goes on uncalibrated,
        unless ``strict``."""
        path = self.config.budget.calibration
        if not path:
            return ()
        try:
            fit = read_calibration(path).fit
        except CalibrationError as exc:
            if self.strict:
                raise
            log.error("%s; planning without it", exc)
            return ()
        needs = level_seconds(self.config, fit)
        log.info("budget calibrated from %s: a problem at full effort ~%.0f s projected", path, needs[0])
        return needs

    def answer(self, problem_id: Any, problem: str, gold: int | None = None) -> int:
        """Solve one problem inside this call's deadline and record it; never raises unless ``strict``."""
        t0 = time.monotonic()
        deadline = call_deadline(self.config.competition, t0, first=self.calls == 0)
        self.calls += 1
        plan: ProblemBudget | None = None
        t_plan = t0
        load_failed = False
        try:
            solver = self._ready_solver(deadline)
            t_plan = time.monotonic()  # a load inside this call is not the problem's time
            if solver is None:
                load_failed = True
                result = fallback_result(self.config, StopReason.ERROR,
                                         self.gave_up or f"model not loaded: {self.load_error}")
            else:
                plan = self.planner().plan(deadline)
                result = self._solve(solver, problem, plan)
        except Exception as exc:  # a bug or a hung engine: every problem still gets an answer
            if self.strict:
                raise
            log.error("problem %s: %s: %s; answering the fallback", problem_id, type(exc).__name__, exc)
            result = fallback_result(self.config, StopReason.ERROR, f"{type(exc).__name__}: {exc}")
        used = time.monotonic() - t_plan
        if plan is not None:
            self.planner().done(plan.seconds, used, result.outcome())
        self.records.append(_record(problem_id, result, gold, used, plan,
                                    fallback_reason(result, plan, load_failed)))
        self._trace(problem_id, result, gold, used, plan)
        if self._solver is not None and engine_broken(self._solver, result):
            self._needs_restart = True  # rebuilt at the start of the next call, inside that call's deadline
        return result.answer

    def record_fallback(self, problem_id: Any, error: str) -> None:
        """Count a problem the caller answered with the fallback without reaching :meth:`answer`."""
        result = fallback_result(self.config, StopReason.ERROR, error)
        self.records.append(_record(problem_id, result, None, 0.0, None, "error"))

    def _ready_solver(self, deadline: float | None) -> Solver | None:
        """A live solver within this call's deadline, or None (the problem answers the fallback)."""
        if self.gave_up:
            return None
        if self._needs_restart:
            self._restart_engine()
        if self._solver is not None:
            return self._solver
        room = self._load_room(deadline)
        if room is not None and room <= 1.0:
            self.load_error = self.load_error or "no time left in this call to load the model"
            return None
        try:
            solver = self.solver(room)
        except Exception as exc:
            if self.strict:
                raise
            self._load_failed(exc)
            return None
        self.load_failures = 0
        return solver

    def _load_room(self, deadline: float | None) -> float | None:
        """How long a load may take now: None for the first (only ``engine.load_timeout_s`` bounds it);
        a retry or rebuild must leave this call its problem's floor and the run every later floor."""
        if self.calls <= 1 and not self.records:
            return None
        now = time.monotonic()
        cfg = self.config.budget
        planner = self.planner()
        floors = planner.problems_left() * (cfg.min_problem_seconds + cfg.overrun_allowance_s)
        room = planner.run_deadline - now - floors
        if deadline is not None:
            room = min(room, deadline - now - cfg.min_problem_seconds)
        return room

    def _load_failed(self, exc: Exception) -> None:
        self.load_failures += 1
        self.load_error = f"{type(exc).__name__}: {exc}"
        if self.load_failures >= MAX_LOAD_ATTEMPTS:
            self.gave_up = (f"the model failed to load {self.load_failures} times (last: {self.load_error}); "
                            "every later problem answers the fallback")
            log.error("%s", self.gave_up)
        else:
            log.error("model load failed (%s); retrying once, in the next call", self.load_error)

    def event_loop(self) -> LoopThread:
        """The loop the solver runs on: the caller's, or one this runner makes (and closes)."""
        if self.loop is None:
            self.loop, self._own_loop = LoopThread(), True
        return self.loop

    def rebuild(self, timeout: float | None = None) -> Solver:
        """A fresh engine on the same loop after a stall or a crash: what :meth:`answer` does at the start
        of the call after one, for callers that drive the solver themselves (``eval``)."""
        self._restart_engine()
        return self.solver(timeout)

    def _solve(self, solver: Solver, problem: str, plan: ProblemBudget) -> SolveResult:
        """The solver core on the run's event loop (a blocking engine too: it runs on its own thread)."""
        coro = solver.solve(problem, seconds=plan.seconds, effort=effort_for(self.config, plan))
        return self.event_loop().run(coro, timeout=plan.seconds + _GRACE_S)

    def _restart_engine(self) -> None:
        """Drop the engine after a stall or a crash; the caller loads a fresh one within its deadline."""
        self._needs_restart = False
        if self.engine_factory is not None and not self.close_engine:
            return  # a caller's engine is the caller's to manage
        log.warning("restarting the engine after %s", self.records[-1].stop_reason if self.records else "a failure")
        self.close(keep_loop=True)
        self._solver = None
        self.restarts += 1

    def _trace(self, problem_id: Any, result: SolveResult, gold: int | None, used: float,
               plan: ProblemBudget | None) -> None:
        if self.trace_path is None:
            return
        fallback = self.records[-1].fallback_reason if self.records else ""
        append_trace(self.trace_path, trace_record(problem_id, result, gold, used, plan, fallback=fallback))

    def summary_lines(self) -> list[str]:
        """The model load on its own line, why loading was given up (if it was), and the fallback count."""
        restarts = f", {self.restarts} engine restart(s)" if self.restarts else ""
        lines = [f"model load {self.load_seconds:.1f} s{restarts}"]
        if self.startup:
            parts = dict(self.startup)
            pool = getattr(self._solver.sandbox, "startup_seconds", None) if self._solver else None
            if pool is not None:  # the pool's templates import in the background: ready this long after creation
                parts["sandbox pool"] = pool
            lines.append("start-up: " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()))
        if self._solver is not None and self._solver.sessions is not None:  # the dialect's tool runs in kernels
            calls = sum(r.code_blocks for r in self.records)
            kernels = sum(r.candidates for r in self.records)
            lines.append(f"tool calls: {calls} run in {kernels} sessions ({self._solver.dialect.name}: "
                         "one Python kernel per candidate, state kept between its calls)")
        if self.gave_up:
            lines.append(f"!!! {self.gave_up} !!!")
        return lines + fallback_lines(self.records, self.config.vote.fallback_answer)

    def close(self, *, keep_loop: bool = False) -> None:
        if self._sandbox is not None:  # made for a load that never finished
            self._sandbox.close()
            self._sandbox = None
        if self._solver is not None:
            if self.close_engine:
                self._close_engine(self._solver.engine)
            self._solver.sandbox.close()
        # a loop this runner made is its own to close; a caller's only goes with the caller's consent
        if self.loop is not None and not keep_loop and (self.close_engine or self._own_loop):
            self.loop.close()
            self.loop, self._own_loop = None, False

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


def _call_with_timeout(func: Callable[[], T], timeout: float) -> T:
    """``func()`` on a daemon thread, waited for at most ``timeout`` s (a hung load is left behind)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = func()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="aimo-load", daemon=True)
    thread.start()
    thread.join(max(0.0, timeout))
    if thread.is_alive():
        raise TimeoutError(f"the model did not load within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def engine_broken(solver: Solver, result: SolveResult) -> bool:
    """Whether the engine must be rebuilt before the next problem: it stalled, it died, or (a
    blocking one) its watchdog found a call that ignored its deadline."""
    return result.stop_reason is StopReason.STALL or not solver.engine.alive


def effort_for(config: Config, plan: ProblemBudget) -> Effort:
    """The planner's speed level applied to the whole candidate budget of asynchronous mode too."""
    _, factor, _ = SPEED_LEVELS[plan.speed_level]
    total = config.tir.candidates_in_all
    return Effort(num_candidates=plan.num_candidates, max_rounds=plan.max_rounds,
                  max_candidates=max(plan.num_candidates, math.ceil(total * factor)), richness=plan.richness)


def trace_record(problem_id: Any, result: SolveResult, gold: int | None, used: float,
                 plan: ProblemBudget | None, *, fallback: str = "") -> ProblemTrace:
    """One problem's trace record (:mod:`aimo_kernel.run.trace`): budget, stop reason, vote, every round."""
    return ProblemTrace.from_result(problem_id, result, gold, used_s=used, given_s=plan.seconds if plan else 0.0,
                                    speed_level=plan.speed_level if plan else None,
                                    problem_index=plan.index if plan else None, fallback=fallback)


def _record(problem_id: Any, result: SolveResult, gold: int | None, seconds: float,
            plan: ProblemBudget | None, reason: str = "") -> ProblemRecord:
    return ProblemRecord(id=problem_id, answer=result.answer, gold=gold, seconds=seconds,
                         tokens=result.tokens_generated, code_blocks=result.code_blocks,
                         stop_reason=result.stop_reason, votes=dict(result.vote.counts), error=result.error,
                         budget_s=plan.seconds if plan else 0.0, speed_level=plan.speed_level if plan else 0,
                         fallback_reason=reason, candidates=len(result.candidates))


def id_width(ids: Iterable[object], *, least: int = 18, most: int = 40) -> int:
    """A table's id column: wide enough for the longest id (so ids sharing a long prefix stay
    distinct), within [least, most]."""
    return max(least, min(most, max((len(str(i)) for i in ids), default=least)))
