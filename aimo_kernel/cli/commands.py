"""The run-side commands: ``solve`` one problem, ``dry-run`` a problem set through the mock competition API,
``eval`` (score with gold answers) and ``config`` (print the resolved configuration).

Each command registers its own parser and sets ``func``; heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from aimo_kernel.cli.output import engine_output
from aimo_kernel.config.options import add_config_args, config_from_args

if TYPE_CHECKING:
    from aimo_kernel.config import Config


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``solve``, ``dry-run``, ``eval`` and ``config``."""
    solve = sub.add_parser("solve", help="answer one problem given on the command line")
    solve.add_argument("problem", help="the problem text ('-' reads it from stdin)")
    add_config_args(solve)
    solve.set_defaults(func=cmd_solve)

    dry = sub.add_parser("dry-run", help="serve a problem set through the local mock competition API")
    dry.add_argument("--problems", type=Path, help="CSV with id,problem[,answer] (default: the bundled sample)")
    dry.add_argument("--out", type=Path, default=Path("out/dry-run"), help="where submission.parquet goes")
    dry.add_argument("--seed", type=int, default=0, help="the gateway's shuffle seed")
    dry.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_config_args(dry)
    dry.set_defaults(func=cmd_dry_run)

    _eval_parser(sub)

    show = sub.add_parser("config", help="print the resolved configuration as TOML")
    add_config_args(show)
    show.set_defaults(func=cmd_config)


def _eval_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = sub.add_parser("eval", help="score SC-TIR on problems with gold answers: pass@1, maj@N, pass@N")
    ev.add_argument("--problems", type=Path, help="CSV with id,problem,answer (every row answered); required "
                                                  "unless --rescore")
    ev.add_argument("--rescore", type=Path, metavar="TRACE",
                    help="no run: every selection rule recomputed from an eval's trace.jsonl")
    ev.add_argument("--out", type=Path, default=Path("out/eval"), help="where eval.csv and trace.jsonl go")
    ev.add_argument("--candidates", type=int, metavar="N", help="candidates per problem (default: tir.num_candidates)")
    ev.add_argument("--per-problem-seconds", type=float, metavar="S",
                    help="cap per problem (default: budget.per_problem_seconds)")
    ev.add_argument("--time-limit", type=float, metavar="S",
                    help="overall limit, checked before each problem starts (default: budget.total_seconds)")
    ev.add_argument("--concurrency", type=int, default=1, metavar="K",
                    help="problems solved at once on a streaming engine; with --endpoint, per server (default: 1)")
    ev.add_argument("--endpoint", action="append", default=[], metavar="URL",
                    help="an OpenAI-compatible server (vllm serve, SGLang, a router) to spread the problems over; "
                         "repeatable; sets engine.backend=openai")
    ev.add_argument("--quiet", action="store_true", help="print only the overall row")
    ev.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_config_args(ev)
    ev.set_defaults(func=cmd_eval)


def cmd_solve(args: argparse.Namespace) -> int:
    from aimo_kernel.run.runner import Runner

    problem = sys.stdin.read() if args.problem == "-" else args.problem
    config = config_from_args(args)
    runner = Runner(config, strict=True)  # a missing model is an error here, not a fallback answer
    with engine_output(args.verbose, Path(tempfile.gettempdir()) / "aimo-kernel-solve.log"):
        try:
            answer = runner.answer("cli", problem)
        finally:
            runner.close()
    record = runner.records[-1]
    votes = ", ".join(f"{a}×{n:g}" for a, n in record.votes.items()) or "none"
    print(f"answer: {answer}")
    print(f"votes: {votes}")
    print(f"stop: {record.stop_reason}{' (' + record.error + ')' if record.error else ''}; "
          f"{record.seconds:.1f} s, {record.tokens} tokens, {record.code_blocks} code blocks")
    return 0


def cmd_dry_run(args: argparse.Namespace) -> int:
    from aimo_kernel.run.dryrun import dry_run, format_table
    from aimo_kernel.run.problems import bundled_problems_path

    config = config_from_args(args)
    problems = args.problems or bundled_problems_path()
    with engine_output(args.verbose, args.out / "engine.log") as terminal:
        report = dry_run(config, problems, args.out, seed=args.seed, show_progress=not args.no_progress,
                         progress_file=terminal)
    print(format_table(report))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from aimo_kernel.tools.evaluate import EvalOptions, format_report, run_eval

    config = config_from_args(args)
    if args.rescore is not None:
        return _rescore(args.rescore, config)
    if args.problems is None:
        from aimo_kernel.config import ConfigError

        raise ConfigError("eval: --problems is required (or --rescore TRACE)")
    options = EvalOptions(candidates=args.candidates, per_problem_seconds=args.per_problem_seconds,
                          time_limit_s=args.time_limit, concurrency=args.concurrency,
                          endpoints=tuple(args.endpoint))
    with engine_output(args.verbose, args.out / "engine.log") as terminal:
        report = run_eval(config, args.problems, options, out_dir=args.out, show_progress=not args.no_progress,
                          progress_file=terminal)
    print(format_report(report, quiet=args.quiet))
    return 0


def _rescore(trace: Path, config: Config) -> int:
    from aimo_kernel.tools.evaluate import format_selection, rescore_trace

    scores, summary = rescore_trace(trace, config.vote)
    n = max((s.candidates for s in scores), default=0)
    print(f"{trace}: {summary.run} problems")
    print("\n".join(format_selection(summary, n)))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from aimo_kernel.config import to_toml

    print(to_toml(config_from_args(args)), end="")
    return 0
