"""The ``aimo-kernel`` command line: a table of commands, each registering its own parser.

``solve``, ``dry-run``, ``eval`` and ``config`` (:mod:`aimo_kernel.cli.commands`), and the home tools
``bundle``, ``profile``, ``calibrate``, ``preflight``, ``quantize`` and ``verify`` (:mod:`aimo_kernel.tools`). Every
expected failure (:class:`~aimo_kernel.errors.AimoError`: a bad config, a bad CSV, a missing model, a broken
API contract) becomes one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence

from aimo_kernel import __version__
from aimo_kernel.cli import commands
from aimo_kernel.config import ConfigError
from aimo_kernel.errors import AimoError
from aimo_kernel.tools import bundle, calibrate, preflight, profile, quantize

EXIT_USAGE = 2
EXIT_FAILURE = 1
# Each module's ``add_parser(subparsers)`` registers its commands, setting ``func`` on each.
COMMAND_MODULES = (commands, bundle, profile, calibrate, preflight, quantize)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aimo-kernel", description=__doc__)
    parser.add_argument("--version", action="version", version=f"aimo-kernel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        print("aimo-kernel: interrupted", file=sys.stderr)
        return 130
    except (AimoError, FileNotFoundError) as exc:
        print(f"aimo-kernel: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILURE


def entry() -> None:
    """The console script: :func:`main`, then an exit that skips the interpreter's last garbage collection.

    That collection walks every object torch, transformers and vLLM created (2–3 s after a dry-run
    here) only to free memory the ending process gives back anyway; every file the command wrote is
    closed by then. ``main`` itself leaves the collector alone, for callers that go on running.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
