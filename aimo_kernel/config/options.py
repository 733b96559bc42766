"""The command-line options every command shares for choosing a configuration, and loading it from them.

Lives with the configuration (not the CLI) so the tools can register their own commands without
importing the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aimo_kernel.config.loading import load_config
from aimo_kernel.config.schema import Config


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="aimo1-t4x2, aimo2-l4x4, aimo3-h100 or cpu (default: cpu)")
    p.add_argument("--config", type=Path, help="a TOML file with [sampling], [tir], [sandbox], ... tables")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one setting, e.g. --set tir.num_candidates=8 (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the engine's own log")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(preset=args.preset, path=args.config, overrides=args.overrides)
