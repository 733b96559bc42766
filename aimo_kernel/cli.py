"""The ``aimo-kernel`` command line: ``solve``, ``dry-run``, ``eval``, ``config``, and the tools ``bundle``,
``profile``, ``calibrate``, ``quantize`` and ``verify``.

Every expected failure (bad config, bad CSV, missing model, broken API contract) becomes one line on
stderr and a non-zero exit code, never a traceback. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from aimo_kernel import __version__
from aimo_kernel.config import Config, ConfigError, load_config

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CliError(Exception):
    """A failure to report as one line."""


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="aimo1-t4x2, aimo2-l4x4, aimo3-h100 or cpu (default: cpu)")
    p.add_argument("--config", type=Path, help="a TOML file with [sampling], [tir], [sandbox], ... tables")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one setting, e.g. --set tir.num_candidates=8 (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the engine's own log")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aimo-kernel", description=__doc__)
    parser.add_argument("--version", action="version", version=f"aimo-kernel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    solve = sub.add_parser("solve", help="answer one problem given on the command line")
    solve.add_argument("problem", help="the problem text ('-' reads it from stdin)")
    _config_args(solve)

    dry = sub.add_parser("dry-run", help="serve a problem set through the local mock competition API")
    dry.add_argument("--problems", type=Path, help="CSV with id,problem[,answer] (default: the bundled sample)")
    dry.add_argument("--out", type=Path, default=Path("out/dry-run"), help="where submission.parquet goes")
    dry.add_argument("--seed", type=int, default=0, help="the gateway's shuffle seed")
    dry.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _config_args(dry)

    _eval_parser(sub)

    show = sub.add_parser("config", help="print the resolved configuration as TOML")
    _config_args(show)
    from aimo_kernel import bundle, calibrate, profile, quantize

    bundle.add_parser(sub)
    profile.add_parser(sub)
    calibrate.add_parser(sub)
    quantize.add_parser(sub)
    return parser


def _eval_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = sub.add_parser("eval", help="score SC-TIR on problems with gold answers: pass@1, maj@N, pass@N")
    ev.add_argument("--problems", type=Path, required=True, help="CSV with id,problem,answer (every row answered)")
    ev.add_argument("--out", type=Path, default=Path("out/eval"), help="where eval.csv and trace.jsonl go")
    ev.add_argument("--candidates", type=int, metavar="N", help="candidates per problem (default: tir.num_candidates)")
    ev.add_argument("--per-problem-seconds", type=float, metavar="S",
                    help="cap per problem (default: budget.per_problem_seconds)")
    ev.add_argument("--time-limit", type=float, metavar="S",
                    help="overall limit, checked before each problem starts (default: budget.total_seconds)")
    ev.add_argument("--concurrency", type=int, default=1, metavar="K",
                    help="problems solved at once on a streaming engine (default: 1)")
    ev.add_argument("--quiet", action="store_true", help="print only the overall row")
    ev.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _config_args(ev)


def _load(args: argparse.Namespace) -> Config:
    return load_config(preset=args.preset, path=args.config, overrides=args.overrides)


def _quiet_engine(verbose: bool) -> None:
    level = "INFO" if verbose else "ERROR"  # vLLM's CPU build warns a lot about tuning we do not need here
    os.environ.setdefault("VLLM_LOGGING_LEVEL", level)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def cmd_solve(args: argparse.Namespace) -> int:
    from aimo_kernel.runner import Runner

    problem = sys.stdin.read() if args.problem == "-" else args.problem
    config = _load(args)
    _quiet_engine(args.verbose)
    runner = Runner(config)
    try:
        runner.solver()  # load first: a missing model is an error here, not a fallback answer
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
    from aimo_kernel.problems import bundled_problems_path
    from aimo_kernel.runner import dry_run, format_table

    config = _load(args)
    _quiet_engine(args.verbose)
    problems = args.problems or bundled_problems_path()
    report = dry_run(config, problems, args.out, seed=args.seed, show_progress=not args.no_progress)
    print(format_table(report))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from aimo_kernel.evaluate import EvalOptions, format_report, run_eval

    config = _load(args)
    options = EvalOptions(candidates=args.candidates, per_problem_seconds=args.per_problem_seconds,
                          time_limit_s=args.time_limit, concurrency=args.concurrency)
    _quiet_engine(args.verbose)
    report = run_eval(config, args.problems, options, out_dir=args.out, show_progress=not args.no_progress)
    print(format_report(report, quiet=args.quiet))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from aimo_kernel.config import to_toml

    print(to_toml(_load(args)), end="")
    return 0


def _expected_errors() -> tuple[type[BaseException], ...]:
    from aimo_kernel.bundle import BundleError
    from aimo_kernel.engine.base import EngineError
    from aimo_kernel.mock_api import Aimo1Error, GatewayError
    from aimo_kernel.problems import ProblemSetError

    return (CliError, ConfigError, ProblemSetError, EngineError, GatewayError, Aimo1Error, BundleError,
            FileNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from aimo_kernel import bundle, calibrate, profile, quantize

    commands = {"solve": cmd_solve, "dry-run": cmd_dry_run, "eval": cmd_eval, "config": cmd_config,
                "bundle": bundle.run, "profile": profile.run, "calibrate": calibrate.run, **quantize.COMMANDS}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("aimo-kernel: interrupted", file=sys.stderr)
        return 130
    except _expected_errors() as exc:
        print(f"aimo-kernel: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
