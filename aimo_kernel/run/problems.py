"""Problem sets: the one reader of ``id,problem[,answer]`` CSV files.

``solve``/``dry-run``/``eval`` (:func:`read_problems`) and both mock competition APIs
(:func:`read_problem_frame`, the frame exactly as the real gateway reads it: ``pl.read_csv`` with its
defaults) go through the same validation, so they agree on every file. Whatever could be read two
ways is refused with a one-line :class:`ProblemSetError` naming the line and what is wrong: header
names with surrounding spaces, unknown or repeated columns, rows with too many or too few fields
(an unquoted comma, a row with only an id), blank lines (the gateway reads them as problems without
an id), an unclosed quote, an empty id or problem, ids with surrounding spaces, ids that collide once
parsed as numbers (``01`` and ``1``), non-integer answers, and anything ``pl.read_csv`` itself reads
differently (e.g. a column whose type changes after the 100 rows it infers the schema from).

Not covered: judging the problem texts (a huge one is read as it is) or whether a gold answer fits a
competition's answer rule (``eval`` checks that against its rule).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from aimo_kernel.errors import AimoError

REQUIRED_COLUMNS = ("id", "problem")
KNOWN_COLUMNS = ("id", "problem", "answer")
_MAX_FIELD = 64 * 1024 * 1024  # csv's default limit (128 KiB) would reject a long problem
_INTEGER = re.compile(r"[+-]?\d+")


class ProblemSetError(AimoError, ValueError):
    """The problems file cannot be used; the message says which file, which line and why."""


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: int | None = None
    line: int = 0  # where the row starts in the file (1-based, the header is line 1)


BUNDLED_SETS = ("sample", "competition-sample")


def bundled_problems_path(name: str = "sample") -> Path:
    """A problem set shipped inside the package.

    ``sample``: ten held-out synthetic problems the built-in tiny model can solve (the dry-run's
    default); ``competition-sample``: ten real AIME 2024 / AMC 2023 problems.
    """
    if name not in BUNDLED_SETS:
        raise ValueError(f"bundled problem set must be one of {BUNDLED_SETS}, got {name!r}")
    return Path(str(resources.files("aimo_kernel") / "data" / f"{name}.csv"))


def _text(path: Path) -> str:
    if not path.is_file():
        raise ProblemSetError(f"problems file not found: {path}")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ProblemSetError(f"{path}: not a readable UTF-8 CSV: {exc}") from None


def _header(row: list[str] | None, path: Path) -> list[str]:
    if not row:
        raise ProblemSetError(f"{path}: empty file (expected a header with columns id,problem)")
    for name in row:
        if name != name.strip():
            raise ProblemSetError(f"{path}: line 1: header name {name!r} has surrounding spaces")
    missing = [c for c in REQUIRED_COLUMNS if c not in row]
    if missing:
        raise ProblemSetError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(row)}")
    unknown = [c for c in row if c not in KNOWN_COLUMNS]
    if unknown:
        raise ProblemSetError(f"{path}: line 1: unknown column(s) {', '.join(map(repr, unknown))}; "
                              f"allowed: {', '.join(KNOWN_COLUMNS)}")
    if len(set(row)) != len(row):
        raise ProblemSetError(f"{path}: line 1: a column is named twice: {','.join(row)}")
    return row


def _parse_answer(raw: str | None, where: str) -> int | None:
    if raw is None or raw.strip() == "":
        return None
    if not _INTEGER.fullmatch(raw.strip()):
        raise ProblemSetError(f"{where}: answer {raw.strip()[:40]!r} is not an integer")
    return int(raw.strip())


def _problem(fields: list[str], header: list[str], path: Path, line: int) -> Problem:
    if len(fields) != len(header):
        hint = "an unquoted comma?" if len(fields) > len(header) else "a row with only an id?"
        raise ProblemSetError(f"{path}: line {line}: {len(fields)} field(s) where the header has "
                              f"{len(header)} ({hint}); quote fields that contain commas")
    row = dict(zip(header, fields))
    pid = row["id"]
    where = f"{path}: line {line} (id {pid!r})"
    if not pid.strip():
        raise ProblemSetError(f"{path}: line {line}: empty id")
    if pid != pid.strip():
        raise ProblemSetError(f"{where}: the id has surrounding spaces")
    if not row["problem"].strip():
        raise ProblemSetError(f"{where}: no problem text")
    return Problem(id=pid, problem=row["problem"], answer=_parse_answer(row.get("answer"), where), line=line)


def _rows(text: str, path: Path) -> tuple[list[str], list[Problem]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = _header(next(reader, None), path)
        problems: list[Problem] = []
        start = reader.line_num + 1
        for fields in reader:
            if not fields or fields == [""]:
                raise ProblemSetError(f"{path}: line {start}: blank line (the gateway reads it as a problem "
                                      "with no id); remove it")
            problems.append(_problem(fields, header, path, start))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise ProblemSetError(f"{path}: line {reader.line_num}: not a readable CSV ({exc}; an unclosed quote?)") \
            from None
    return header, problems


def _id_key(pid: str) -> str:
    """How an id reads once parsed: ``01``, ``+1`` and ``1`` are all the integer 1 to ``pl.read_csv``."""
    return str(int(pid)) if _INTEGER.fullmatch(pid) else pid


def _check_ids(problems: list[Problem], path: Path) -> None:
    seen: dict[str, Problem] = {}
    for prob in problems:
        key = _id_key(prob.id)
        if key in seen:
            first = seen[key]
            what = f"duplicate id {prob.id!r}" if first.id == prob.id else \
                f"id {prob.id!r} collides with {first.id!r} once parsed as a number"
            raise ProblemSetError(f"{path}: line {prob.line}: {what} (first on line {first.line})")
        seen[key] = prob


def read_problems(path: str | Path) -> list[Problem]:
    """The problems of a CSV file, refusing anything ambiguous (see the module docstring)."""
    p = Path(path)
    csv.field_size_limit(_MAX_FIELD)
    header, problems = _rows(_text(p), p)
    if not problems:
        raise ProblemSetError(f"{p}: no problems (header only)")
    _check_ids(problems, p)
    _agrees_with_gateway(p, header, problems)
    return problems


def _gateway_read(path: Path) -> Any:
    """The file exactly as the competition's gateway reads it: ``pl.read_csv`` with its defaults."""
    import polars as pl

    try:
        return pl.read_csv(path)
    except Exception as exc:  # polars raises its own error kinds; any of them means the gateway cannot read it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProblemSetError(f"{path}: the competition's gateway (pl.read_csv) cannot read it: {first}") from None


def _agrees_with_gateway(path: Path, header: list[str], problems: list[Problem]) -> Any:
    frame = _gateway_read(path)
    if frame.columns != header or frame.height != len(problems):
        raise ProblemSetError(f"{path}: pl.read_csv reads {frame.height} row(s) with columns {frame.columns}, "
                              f"this reader {len(problems)} with {header}; the file is ambiguous")
    ids = frame["id"]
    if ids.null_count() or ids.n_unique() != frame.height:
        raise ProblemSetError(f"{path}: pl.read_csv reads the ids as {ids.dtype} and some collide or are empty")
    return frame


def read_problem_frame(path: str | Path) -> Any:
    """The validated file as the gateway reads it (a ``polars.DataFrame``, ``pl.read_csv`` defaults)."""
    p = Path(path)
    read_problems(p)
    return _gateway_read(p)
