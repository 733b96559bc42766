"""Discrete-event simulation of a whole competition run under a fake clock, to check the time budgets.

The real :class:`~aimo_kernel.core.budget.BudgetPlanner` plans every problem; what a problem then takes is
drawn from documented distributions instead of running a model:

* **Problem kinds** (per problem): 25% *easy* (each candidate's answer is the majority answer with
  probability U(0.6, 0.9)), 35% *medium* (U(0.25, 0.6)), 40% *hard* (never converge: they keep
  sampling and use every second they are given).
* **Tokens per candidate**: per round, 85% lognormal(median 350, σ 0.6) and 15% a runaway that hits
  the 2048-token round cap; rounds per candidate uniform in 1..M.
* **Time**: all candidates in flight decode together, one token each per step of the T4×2 model of
  :mod:`aimo_kernel.testing.hardware` (batch = candidates in flight, mean context 1,200 tokens), so a
  candidate finishes after its tokens × the step time plus its code (median 0.4 s a round, 3% time
  out at 5 s). A finished candidate is replaced by a new one while the vote is undecided, up to 4N.
* **Convergence**: the problem stops when the 4th answer agreeing with the majority arrives; one
  that does not get there with 4N candidates never converges.
* **Engine stalls**: each problem stalls with probability 3% at a uniform time; the stall is noticed
  after ``stall_timeout_s`` (or at the problem's stop, if sooner) and the engine is restarted in
  U(60, 240) s before the next problem.
* Every problem may overrun its stop by U(0, overrun_allowance_s) (aborting, killing code).

Model load is U(120, 300) s before the first problem. This half is not a model of answer accuracy.

The second half runs the real scheduler on a simulated engine in virtual time
(:func:`run_virtual`, :class:`TraceModel`, :class:`SimulatedSandbox`), for the scheduler benchmark,
and a correctness model for the score-per-hour benchmark (:func:`problem_mix`, :func:`mixed_responder`:
each candidate right with its problem's chance, wrong answers scattered).
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import selectors
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from aimo_kernel.config import Config
from aimo_kernel.core.agreement import tightened
from aimo_kernel.core.budget import BudgetPlanner
from aimo_kernel.engine.base import GenerationRequest
from aimo_kernel.sandbox import ExecutionResult
from aimo_kernel.testing.hardware import T4X2, ThroughputModel

T = TypeVar("T")


@dataclass
class FakeClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class SimProblem:
    index: int
    kind: str
    given: float
    used: float
    speed_level: int
    stalled: bool


@dataclass
class SimRun:
    deadline: float  # the competition's hard limit (total_seconds after the start)
    end: float
    load_seconds: float
    problems: list[SimProblem] = field(default_factory=list)

    @property
    def margin(self) -> float:
        return self.deadline - self.end

    def used_share(self, planned_end: float) -> float:
        """Share of the time available to problems (planned end minus model load) that problems used."""
        available = planned_end - self.load_seconds
        return sum(p.used for p in self.problems) / available


def _candidate_tokens(rng: random.Random, rounds: int) -> float:
    total = 0.0
    for _ in range(rounds):
        total += 2048 if rng.random() < 0.15 else min(2048.0, rng.lognormvariate(math.log(350), 0.6))
    return total


def _code_seconds(rng: random.Random) -> float:
    return 5.0 if rng.random() < 0.03 else rng.lognormvariate(math.log(0.4), 0.8)


def natural_seconds(rng: random.Random, kind: str, model: ThroughputModel, num_candidates: int,
                    max_rounds: int, *, agree: int = 4) -> float:
    """How long the problem runs before its vote is decided (inf: never)."""
    if kind == "hard":
        return math.inf
    q = rng.uniform(0.6, 0.9) if kind == "easy" else rng.uniform(0.15, 0.45)
    step = model.step_seconds(num_candidates, 1200.0)
    slots = [0.0] * num_candidates  # a heap of when each slot in flight next becomes free
    finishes = []
    for _ in range(4 * num_candidates):
        free_at = heapq.heappop(slots)
        rounds = rng.randint(1, max_rounds)
        took = _candidate_tokens(rng, rounds) * step + sum(_code_seconds(rng) for _ in range(rounds))
        heapq.heappush(slots, free_at + took)
        finishes.append((free_at + took, rng.random() < q))
    agreeing = 0
    for finished_at, majority in sorted(finishes):
        agreeing += majority
        if agreeing >= agree:
            return finished_at
    return math.inf


def simulate_run(config: Config, seed: int, *, model: ThroughputModel = T4X2, stall_rate: float = 0.03) -> SimRun:
    rng = random.Random(seed)
    clock = FakeClock()
    budget = config.budget
    load = rng.uniform(120, 300)
    clock.now = load
    planner = BudgetPlanner(budget, config.tir, start=0.0, clock=clock)
    run = SimRun(deadline=budget.total_seconds, end=0.0, load_seconds=load)
    kinds = rng.choices(("easy", "medium", "hard"), weights=(0.2, 0.3, 0.5), k=planner.num_problems)
    for kind in kinds:
        plan = planner.plan()
        natural = natural_seconds(rng, kind, model, plan.num_candidates, plan.max_rounds,
                                  agree=tightened(4, plan.richness))
        used = min(natural, plan.seconds)
        stalled = rng.random() < stall_rate
        if stalled:  # the stall ends the problem once noticed, or at its stop
            used = min(plan.seconds, rng.uniform(0, used) + budget.stall_timeout_s)
        used += rng.uniform(0, budget.overrun_allowance_s)
        clock.now += used
        planner.done(plan.seconds, used)
        run.problems.append(SimProblem(plan.index, kind, plan.seconds, used, plan.speed_level, stalled))
        if stalled and plan.index < planner.num_problems - 1:
            clock.now += rng.uniform(60, 240)  # engine restart
    run.end = clock.now
    return run


# -- virtual time: the real scheduler code on a simulated engine ------------------------------------


class _VirtualSelector(selectors.DefaultSelector):
    """Never sleeps: a wait for the next timer moves the loop's clock to it instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if not events and timeout is not None and timeout > 0:
            self._loop.virtual_now += timeout
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock only moves when every task waits on a timer."""

    def __init__(self) -> None:
        self.virtual_now = 0.0
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self.virtual_now


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion in virtual time (no threads: code must not block)."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


@dataclass(frozen=True)
class TraceModel:
    """How simulated candidates write their traces (same distributions as :func:`simulate_run`)."""

    agreement: float  # chance that a candidate's final answer is the problem's majority answer
    answer: int = 42
    finish_chance: float = 0.45  # after round 0, chance that a round boxes an answer instead of coding


def tir_responder(model: TraceModel) -> Callable[[GenerationRequest], str]:
    """Canned TIR traces drawn from the request's seed: code in the first round, then code or an answer."""

    def respond(req: GenerationRequest) -> str:
        rng = random.Random(req.seed)
        runaway = rng.random() < 0.15
        tokens = 4096 if runaway else int(min(2048.0, rng.lognormvariate(math.log(350), 0.6)))
        filler = "x" * (tokens * 4)
        if req.prompt.count("```output\n") and rng.random() < model.finish_chance:
            answer = model.answer if rng.random() < model.agreement else rng.randrange(1000)
            return f"{filler}\nSo the answer is \\boxed{{{answer}}}."
        return f"{filler}\n```python\nprint({rng.randrange(10**6)})\n```\n```output\n"

    return respond


PROBLEM_KINDS = (("easy", 0.25, 0.6, 0.9), ("medium", 0.35, 0.15, 0.45), ("hard", 0.40, 0.0, 0.0))


@dataclass(frozen=True)
class MixedProblem:
    """A simulated problem with its correctness model: each candidate is right with ``agreement``."""

    text: str
    answer: int
    kind: str
    agreement: float


def problem_mix(count: int, seed: int = 0) -> list[MixedProblem]:
    """``count`` problems in the shares of ``PROBLEM_KINDS`` (name, share, chance range), shuffled.

    A candidate's final answer is the problem's answer with the problem's ``agreement`` chance, else
    uniform in 0..999 (scattered: wrong answers rarely agree, so the majority of enough candidates
    is right whenever ``agreement`` is well above 1/1000; hard problems, 0, are never right).
    """
    if count < 1:
        raise ValueError(f"problem_mix needs count >= 1, got {count!r}")
    rng = random.Random(seed)
    kinds = [name for name, share, _, _ in PROBLEM_KINDS[:-1] for _ in range(round(share * count))]
    kinds = (kinds + [PROBLEM_KINDS[-1][0]] * count)[:count]  # the shares exactly, the rest hard
    rng.shuffle(kinds)
    ranges = {k[0]: (k[2], k[3]) for k in PROBLEM_KINDS}
    return [MixedProblem(text=f"simulated problem {i} ({kind})", answer=rng.randrange(1000), kind=kind,
                         agreement=rng.uniform(*ranges[kind])) for i, kind in enumerate(kinds)]


def mixed_responder(problems: list[MixedProblem]) -> Callable[[GenerationRequest], str]:
    """:func:`tir_responder` with each problem's own correctness model (found by its text in the prompt)."""
    responders = [(p.text, tir_responder(TraceModel(agreement=p.agreement, answer=p.answer))) for p in problems]

    def respond(req: GenerationRequest) -> str:
        for text, responder in responders:
            if text in req.prompt:
                return responder(req)
        raise ValueError("a request for a problem outside the mix")

    return respond


class SimulatedSandbox:
    """Code that takes simulated time: median 0.4 s, 3% run into the timeout."""

    def __init__(self) -> None:
        self.busy_seconds = 0.0

    async def arun(self, code: str, *, timeout_s: float | None = None) -> ExecutionResult:
        rng = random.Random(code)
        timeout = timeout_s if timeout_s is not None else 5.0
        seconds = timeout if rng.random() < 0.03 else min(timeout, rng.lognormvariate(math.log(0.4), 0.8))
        await asyncio.sleep(seconds)
        self.busy_seconds += seconds
        timed_out = seconds >= timeout
        return ExecutionResult(stdout="" if timed_out else "42", exit_code=None if timed_out else 0,
                               timed_out=timed_out, error="TimeoutError" if timed_out else "", seconds=seconds)

    def close(self) -> None:
        pass


if TYPE_CHECKING:  # the simulated sandbox implements the solver's sandbox protocol
    from aimo_kernel.solve.pipeline import AsyncCodeRunner

    _sandbox: AsyncCodeRunner = SimulatedSandbox()
