"""The dry-run (``aimo-kernel dry-run``): a problems CSV served through the local mock of the config's
competition API, by the Kaggle shim's own code, then a per-problem table.

Covers reading the CSV through the one reader (errors before anything loads), the run itself (a
:class:`~aimo_kernel.run.runner.Runner` behind the shim's ``predict`` or AIMO1 loop, the mock's
per-call deadline), and the report: one row per problem with fallback answers marked, the accuracy,
the model load on its own line, and the fallback count with its reasons. Not covered: the mocks
(:mod:`aimo_kernel.run.mock_api`), the shim (:mod:`aimo_kernel.run.kaggle`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimo_kernel.config import Config
from aimo_kernel.config.schema import CALL_DEADLINE_S, CALL_MARGIN_S
from aimo_kernel.engine import AsyncEngine, Engine
from aimo_kernel.run.kaggle import serve_mock
from aimo_kernel.run.problems import read_problems
from aimo_kernel.run.runner import LoopThread, ProblemRecord, Runner, fallback_lines, id_width


@dataclass(frozen=True)
class DryRunReport:
    submission: Path
    records: list[ProblemRecord]
    load_seconds: float
    seconds: float
    lines: tuple[str, ...] = ()  # the runner's summary: model load, give-up reason, fallback count

    @property
    def accuracy(self) -> float | None:
        graded = [r.correct for r in self.records if r.correct is not None]
        return sum(graded) / len(graded) if graded else None


def mock_call_deadline(config: Config) -> float:
    """The mock gateway's per-call deadline: the competition's, or tighter, so that a problem that
    overruns its own cap fails the dry-run as it would fail a real run on a tighter gateway."""
    real = CALL_DEADLINE_S[config.competition] or float("inf")
    own = config.budget.per_problem_seconds + config.budget.overrun_allowance_s + CALL_MARGIN_S
    return min(real, own)


def dry_run(config: Config, problems: Path, out_dir: Path, *, seed: int | None = 0,
            engine_factory: Callable[[Config], Engine | AsyncEngine] | None = None,
            show_progress: bool = True, loop: LoopThread | None = None, strict: bool = False,
            progress_file: Any = None) -> DryRunReport:
    """Serve ``problems`` through the local mock gateway and collect the per-problem records.

    ``progress_file``: where the progress bar goes (default: ``sys.stderr``).
    """
    from tqdm import tqdm

    count = len(read_problems(problems))  # validates the file with a clear error before anything loads
    trace = Path(out_dir) / "trace.jsonl"
    trace.unlink(missing_ok=True)
    # An engine handed in by the caller is the caller's to close.
    runner = Runner(config, engine_factory=engine_factory, close_engine=engine_factory is None,
                    num_problems=count, trace_path=trace, started=time.monotonic(), loop=loop, strict=strict)
    t0 = time.monotonic()
    with tqdm(total=count, desc="problems", unit="pb", disable=not show_progress, file=progress_file) as bar:
        try:
            submission = serve_mock(runner, problems, out_dir, seed=seed, progress=bar,
                                    call_deadline_s=mock_call_deadline(config))
        finally:
            runner.close()
    return DryRunReport(submission=submission, records=runner.records, load_seconds=runner.load_seconds,
                        seconds=time.monotonic() - t0, lines=tuple(runner.summary_lines()))


def format_table(report: DryRunReport) -> str:
    """A row per problem (``*`` after a fallback answer), the accuracy, the model load, the fallbacks."""
    w = id_width(r.id for r in report.records)
    header = f"{'id':<{w}} {'answer':>7} {'gold':>7} {'ok':>3} {'seconds':>8} {'tokens':>7} {'code':>5}  stop"
    lines = [header, "-" * len(header)]
    for r in report.records:
        gold = "" if r.gold is None else str(r.gold)
        ok = {True: "yes", False: "no", None: ""}[r.correct]
        answer = f"{r.answer}*" if r.fallback else f"{r.answer} "
        stop = r.stop_reason + (f" (fallback: {r.fallback_reason})" if r.fallback else "")
        lines.append(f"{str(r.id)[:w]:<{w}} {answer:>8}{gold:>7} {ok:>3} {r.seconds:>8.2f} {r.tokens:>7} "
                     f"{r.code_blocks:>5}  {stop}")
    acc = report.accuracy
    graded = sum(r.correct is not None for r in report.records)
    right = sum(bool(r.correct) for r in report.records)
    summary = f"accuracy: {right}/{graded} = {acc:.1%}" if acc is not None else "accuracy: no gold answers"
    fallbacks = list(report.lines) or [f"model load {report.load_seconds:.1f} s",
                                       *fallback_lines(report.records, 0)]
    if any(r.fallback for r in report.records):
        fallbacks.append("* fallback answer: no candidate's vote decided it")
    lines += ["-" * len(header), summary, *fallbacks,
              f"problems {sum(r.seconds for r in report.records):.1f} s, total {report.seconds:.1f} s; "
              f"submission: {report.submission}"]
    return "\n".join(lines)
