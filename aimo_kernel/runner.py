"""Runs SC-TIR over problems: the lazily loaded engine, the per-problem deadline, the run's records.

:class:`Runner` is what a competition ``predict`` calls: the first call loads the engine (the only
call without a deadline in the real API), every call answers (the fallback if anything fails) and
records a row. :func:`dry_run` serves a CSV through the local mock gateway and reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimo_kernel.config import Config
from aimo_kernel.engine import Engine, get_engine
from aimo_kernel.sandbox import SubprocessSandbox
from aimo_kernel.solver import SCTIRSolver, SolveResult, fallback_result

log = logging.getLogger(__name__)


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

    @property
    def correct(self) -> bool | None:
        return None if self.gold is None else self.answer == self.gold


@dataclass
class Runner:
    """Holds the run's state across ``predict`` calls."""

    config: Config
    engine_factory: Callable[[Config], Engine] | None = None
    records: list[ProblemRecord] = field(default_factory=list)
    load_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)
    close_engine: bool = True
    _solver: SCTIRSolver | None = None

    def solver(self) -> SCTIRSolver:
        if self._solver is None:
            t0 = time.monotonic()
            factory = self.engine_factory or (lambda cfg: get_engine(cfg.engine.backend, cfg))
            engine = factory(self.config)
            self.load_seconds = time.monotonic() - t0
            self._solver = SCTIRSolver(engine, SubprocessSandbox(self.config.sandbox), self.config)
        return self._solver

    def run_deadline(self) -> float:
        budget = self.config.budget
        return self.started + budget.total_seconds - budget.safety_margin_s

    def answer(self, problem_id: Any, problem: str, gold: int | None = None) -> int:
        """Solve one problem and record it; never raises."""
        t0 = time.monotonic()
        try:
            result = self.solver().solve(problem, deadline=self.run_deadline())
        except Exception as exc:  # engine failed to load: every problem still gets an answer
            log.error("problem %s: %s: %s; answering the fallback", problem_id, type(exc).__name__, exc)
            result = fallback_result(self.config, "error", f"{type(exc).__name__}: {exc}")
        self.records.append(_record(problem_id, result, gold, time.monotonic() - t0))
        return result.answer

    def close(self) -> None:
        if self._solver is not None:
            if self.close_engine:
                self._solver.engine.close()
            self._solver.sandbox.close()


def _record(problem_id: Any, result: SolveResult, gold: int | None, seconds: float) -> ProblemRecord:
    return ProblemRecord(id=problem_id, answer=result.answer, gold=gold, seconds=seconds,
                         tokens=result.tokens_generated, code_blocks=result.code_blocks,
                         stop_reason=result.stop_reason, votes=dict(result.vote.counts), error=result.error)


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
            engine_factory: Callable[[Config], Engine] | None = None, show_progress: bool = True) -> DryRunReport:
    """Serve ``problems`` through the local mock gateway and collect the per-problem records."""
    from tqdm import tqdm

    from aimo_kernel.mock_api import LocalGateway
    from aimo_kernel.problems import read_problems

    count = len(read_problems(problems))  # validates the file with a clear error before anything loads
    # An engine handed in by the caller is the caller's to close.
    runner = Runner(config, engine_factory=engine_factory, close_engine=engine_factory is None)
    t0 = time.monotonic()
    with tqdm(total=count, desc="problems", unit="pb", disable=not show_progress) as bar:
        gateway = LocalGateway(make_predict(runner, bar), seed=seed,
                               call_deadline_s=config.budget.per_problem_seconds + 60.0)
        try:
            submission = gateway.run(problems, out_dir)
        finally:
            runner.close()
    return DryRunReport(submission=submission, records=runner.records, load_seconds=runner.load_seconds,
                        seconds=time.monotonic() - t0)


def format_table(report: DryRunReport) -> str:
    header = f"{'id':<18} {'answer':>7} {'gold':>7} {'ok':>3} {'seconds':>8} {'tokens':>7} {'code':>5}  stop"
    lines = [header, "-" * len(header)]
    for r in report.records:
        gold = "" if r.gold is None else str(r.gold)
        ok = {True: "yes", False: "no", None: ""}[r.correct]
        lines.append(f"{str(r.id)[:18]:<18} {r.answer:>7} {gold:>7} {ok:>3} {r.seconds:>8.2f} {r.tokens:>7} "
                     f"{r.code_blocks:>5}  {r.stop_reason}")
    acc = report.accuracy
    graded = sum(r.correct is not None for r in report.records)
    right = sum(bool(r.correct) for r in report.records)
    summary = f"accuracy: {right}/{graded} = {acc:.1%}" if acc is not None else "accuracy: no gold answers"
    lines += ["-" * len(header), summary,
              f"model load {report.load_seconds:.1f} s, total {report.seconds:.1f} s; submission: {report.submission}"]
    return "\n".join(lines)
