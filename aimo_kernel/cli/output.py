"""What the command line shows while the engine runs: the engine stack's own output kept off the terminal.

Covers routing stderr (and Python warnings) to a log file without ``-v``; nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


def quiet_engine(verbose: bool) -> None:
    level = "INFO" if verbose else "ERROR"  # vLLM's CPU build warns a lot about tuning we do not need here
    os.environ.setdefault("VLLM_LOGGING_LEVEL", level)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@contextlib.contextmanager
def engine_output(verbose: bool, log_path: Path) -> Iterator[TextIO | None]:
    """Without ``-v``, what the engine stack writes to stderr goes to ``log_path``, not the terminal.

    That is torch's, torchao's and vLLM's import-time warnings, their log handlers, their C++ logs and
    the output of the processes they start, which all end on file descriptor 2: so fd 2 itself is
    pointed at the log, and Python warnings are routed through logging to it. Yields the terminal
    (a copy of the original fd 2) for the progress bar; None with ``-v``, where nothing is redirected.
    """
    quiet_engine(verbose)
    if verbose:
        yield None
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    with log_path.open("a", encoding="utf-8") as log_file:
        os.dup2(log_file.fileno(), 2)
        logging.captureWarnings(True)
        try:
            yield terminal
        finally:  # errors stay one line: the log's place is in -v's help
            logging.captureWarnings(False)
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            terminal.close()
    if log_path.stat().st_size == 0:
        log_path.unlink()
