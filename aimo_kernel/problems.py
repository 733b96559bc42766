"""Problem sets: reading and validating ``id,problem[,answer]`` CSV files.

Covers CSV input with clear one-line errors (missing file or columns, empty file, duplicate ids,
non-integer answers). It does not judge problem texts: an empty or huge problem is read as it is, and
the solver answers it with the fallback.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

REQUIRED_COLUMNS = ("id", "problem")
_MAX_FIELD = 64 * 1024 * 1024  # csv's default limit (128 KiB) would reject a long problem


class ProblemSetError(ValueError):
    """The problems file cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: int | None = None


BUNDLED_SETS = ("sample", "competition-sample")


def bundled_problems_path(name: str = "sample") -> Path:
    """A problem set shipped inside the package.

    ``sample``: ten held-out synthetic problems the built-in tiny model can solve (the dry-run's
    default); ``competition-sample``: ten real AIME 2024 / AMC 2023 problems.
    """
    if name not in BUNDLED_SETS:
        raise ValueError(f"bundled problem set must be one of {BUNDLED_SETS}, got {name!r}")
    return Path(str(resources.files("aimo_kernel") / "data" / f"{name}.csv"))


def _parse_answer(raw: str | None, path: Path, line: int) -> int | None:
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw.strip())
    except ValueError:
        raise ProblemSetError(f"{path}: line {line}: answer {raw.strip()[:40]!r} is not an integer") from None


def read_problems(path: str | Path) -> list[Problem]:
    p = Path(path)
    if not p.is_file():
        raise ProblemSetError(f"problems file not found: {p}")
    csv.field_size_limit(_MAX_FIELD)
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            if not header:
                raise ProblemSetError(f"{p}: empty file (expected a header with columns id,problem)")
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise ProblemSetError(f"{p}: missing column(s) {', '.join(missing)}; found {', '.join(header)}")
            reader.fieldnames = header
            problems = [
                Problem(id=(row["id"] or "").strip(), problem=row["problem"] or "",
                        answer=_parse_answer(row.get("answer"), p, reader.line_num))
                for row in reader
            ]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ProblemSetError(f"{p}: not a readable UTF-8 CSV: {exc}") from None
    return _validated(problems, p)


def _validated(problems: list[Problem], path: Path) -> list[Problem]:
    if not problems:
        raise ProblemSetError(f"{path}: no problems (header only)")
    seen: set[str] = set()
    for i, prob in enumerate(problems, start=2):
        if not prob.id:
            raise ProblemSetError(f"{path}: row {i}: empty id")
        if prob.id in seen:
            raise ProblemSetError(f"{path}: duplicate id {prob.id!r}")
        seen.add(prob.id)
    return problems
