"""The per-problem trace: one typed, versioned record per problem, one JSON line each in ``trace.jsonl``.

:class:`ProblemTrace` is what the runner and ``eval`` write (:meth:`ProblemTrace.from_result`) and what
``profile`` reads back (:func:`read_trace`), through the same type: a field renamed on one side is
an error on the other, never a silently zeroed column. Records of :data:`TRACE_VERSION` must carry
every field; records without a ``version`` are the earlier dict format (version 1), read with its
defaults and its ``"agreement:<rule>"`` stop reasons split into a reason and a rule. Covers the
record only: what goes into it is decided by the solver (:mod:`aimo_kernel.solve`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aimo_kernel.core.confidence import Confidence
from aimo_kernel.solve.candidate import RoundRecord
from aimo_kernel.solve.result import SolveResult
from aimo_kernel.vocab import CandidateReason, CandidateStatus, CodeFlag, FinishReason, StopReason

TRACE_VERSION = 3  # 3: each candidate's confidence and code_verified (read as unknown/False from 1 and 2)
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class CandidateTrace:
    index: int
    answer: int | None
    status: CandidateStatus
    reason: CandidateReason | str  # a CandidateReason; "" in version-1 records that lacked it
    restarts: int
    rounds: tuple[RoundRecord, ...]
    error: str = ""
    confidence: Confidence = Confidence()  # tokens 0: not recorded (no log-probabilities, or an older record)
    code_verified: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "answer": self.answer, "status": self.status.value, "reason": str(self.reason),
                "restarts": self.restarts, "error": self.error, "rounds": [_round_json(r) for r in self.rounds],
                "confidence": dataclasses.asdict(self.confidence), "code_verified": self.code_verified}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], *, version: int, position: int = 0) -> CandidateTrace:
        f = _Fields(d, "candidate", strict=version >= TRACE_VERSION)
        reason = f.get("reason", str, "")
        return cls(index=f.get("index", int, position), answer=f.get("answer", _optional_int, None),
                   status=CandidateStatus(f.get("status", str, CandidateStatus.DONE.value)),
                   reason=CandidateReason(reason) if reason else "", restarts=f.get("restarts", int, 0),
                   error=f.get("error", str, ""),
                   rounds=tuple(_round_from_json(r, strict=version >= TRACE_VERSION) for r in f.items("rounds")),
                   confidence=_confidence_from_json(f.mapping("confidence"), strict=version >= TRACE_VERSION),
                   code_verified=f.get("code_verified", _bool, False))


@dataclass(frozen=True, kw_only=True)
class ProblemTrace:
    """One problem: its budget, why it stopped, the vote, and every candidate's rounds."""

    id: Any
    answer: int
    gold: int | None
    stop_reason: StopReason
    agreement_rule: str
    error: str
    budget_given_s: float
    budget_used_s: float
    speed_level: int | None
    problem_index: int | None
    votes: dict[str, float]
    tokens: int
    code_blocks: int
    candidates: tuple[CandidateTrace, ...]
    fallback: str = ""  # why the answer is the fallback ("" when a candidate's vote decided it)
    version: int = TRACE_VERSION

    @classmethod
    def from_result(cls, problem_id: Any, result: SolveResult, gold: int | None, *, used_s: float,
                    given_s: float = 0.0, speed_level: int | None = None, problem_index: int | None = None,
                    fallback: str = "") -> ProblemTrace:
        cands = tuple(CandidateTrace(index=c.index, answer=c.answer, status=c.status, reason=c.reason,
                                     restarts=c.restarts, rounds=c.log, error=c.error, confidence=c.confidence,
                                     code_verified=c.code_verified) for c in result.candidates)
        return cls(id=problem_id, answer=result.answer, gold=gold, stop_reason=result.stop_reason,
                   agreement_rule=result.agreement_rule, error=result.error, budget_given_s=given_s,
                   budget_used_s=used_s, speed_level=speed_level, problem_index=problem_index,
                   votes={str(k): v for k, v in result.vote.counts.items()}, tokens=result.tokens_generated,
                   code_blocks=result.code_blocks, candidates=cands, fallback=fallback)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "id": self.id, "answer": self.answer, "gold": self.gold,
                "stop_reason": self.stop_reason.value, "agreement_rule": self.agreement_rule, "error": self.error,
                "budget_given_s": self.budget_given_s, "budget_used_s": self.budget_used_s,
                "speed_level": self.speed_level, "problem_index": self.problem_index, "votes": self.votes,
                "tokens": self.tokens, "code_blocks": self.code_blocks, "fallback": self.fallback,
                "candidates": [c.to_json() for c in self.candidates]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ProblemTrace:
        """The record of one line; a missing or mistyped field is a ValueError naming it."""
        version = d.get("version", 1)
        if not isinstance(version, int) or not 1 <= version <= TRACE_VERSION:
            raise ValueError(f"trace version must be 1..{TRACE_VERSION}, got {version!r}")
        f = _Fields(d, "problem", strict=version >= TRACE_VERSION)
        if "id" not in d:
            raise ValueError("trace record has no 'id'")
        stop, rule = _stop(f.get("stop_reason", str, StopReason.FINISHED.value), f.get("agreement_rule", str, ""))
        return cls(id=d["id"], answer=f.get("answer", int, 0), gold=f.get("gold", _optional_int, None),
                   stop_reason=stop, agreement_rule=rule, error=f.get("error", str, ""),
                   budget_given_s=f.get("budget_given_s", float, 0.0), budget_used_s=f.get("budget_used_s", float, 0.0),
                   speed_level=f.get("speed_level", _optional_int, None),
                   problem_index=f.get("problem_index", _optional_int, None),
                   votes={str(k): float(v) for k, v in f.mapping("votes").items()}, tokens=f.get("tokens", int, 0),
                   code_blocks=f.get("code_blocks", int, 0),
                   candidates=tuple(CandidateTrace.from_json(c, version=version, position=i)
                                    for i, c in enumerate(f.items("candidates"))),
                   fallback=f.get("fallback", str, ""), version=TRACE_VERSION)


def append_trace(path: Path, record: ProblemTrace) -> None:
    """One problem's record as a line of ``trace.jsonl``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record.to_json(), default=str) + "\n")


def read_trace(path: str | Path) -> list[ProblemTrace]:
    """The trace's records in run order; a bad line is a ValueError naming it."""
    records = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(ProblemTrace.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{lineno}: not a trace record ({type(exc).__name__}: {exc})") from None
    return records


# -- reading fields ----------------------------------------------------------------------------------


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


class _Fields:
    """Reads one record's fields: a missing field is an error in a strict (current) record, else the default."""

    def __init__(self, d: Mapping[str, Any], what: str, *, strict: bool) -> None:
        if not isinstance(d, Mapping):
            raise TypeError(f"a {what} record must be an object, got {type(d).__name__}")
        self.d, self.what, self.strict = d, what, strict

    def get(self, key: str, kind: Callable[[Any], T], default: T) -> T:
        if key not in self.d:
            if self.strict:
                raise ValueError(f"{self.what} record has no {key!r}")
            return default
        value = self.d[key]
        if value is None and kind is not _optional_int:
            return default  # version 1 wrote null for some numbers (speed_level)
        return kind(value)

    def items(self, key: str) -> list[Any]:
        value: Any = self.get(key, lambda v: v, [])
        if not isinstance(value, list):
            raise ValueError(f"{self.what} field {key!r} must be a list, got {type(value).__name__}")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        value: Any = self.get(key, lambda v: v, {})
        if not isinstance(value, dict):
            raise ValueError(f"{self.what} field {key!r} must be an object, got {type(value).__name__}")
        return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _confidence_from_json(d: Mapping[str, Any], *, strict: bool) -> Confidence:
    if not d and not strict:
        return Confidence()
    f = _Fields(d, "confidence", strict=strict)
    return Confidence(tokens=f.get("tokens", int, 0), mean_entropy=f.get("mean_entropy", float, 0.0),
                      tail_entropy=f.get("tail_entropy", float, 0.0), tail_tokens=f.get("tail_tokens", int, 0),
                      mean_logprob=f.get("mean_logprob", float, 0.0))


def _round_json(r: RoundRecord) -> dict[str, Any]:
    return {"round": r.round, "tokens_in": r.tokens_in, "tokens_out": r.tokens_out, "gen_seconds": r.gen_seconds,
            "code_seconds": r.code_seconds, "cached_tokens": r.cached_tokens, "finish": r.finish.value,
            "code_flags": [f.value for f in r.code_flags]}


def _round_from_json(d: Mapping[str, Any], *, strict: bool) -> RoundRecord:
    f = _Fields(d, "round", strict=strict)
    return RoundRecord(round=f.get("round", int, 0), tokens_in=f.get("tokens_in", int, 0),
                       tokens_out=f.get("tokens_out", int, 0), gen_seconds=f.get("gen_seconds", float, 0.0),
                       code_seconds=f.get("code_seconds", float, 0.0), cached_tokens=f.get("cached_tokens", int, 0),
                       finish=FinishReason(f.get("finish", str, "eos")),
                       code_flags=tuple(CodeFlag(str(flag)) for flag in f.items("code_flags")))


def _stop(reason: str, rule: str) -> tuple[StopReason, str]:
    """Version 1 packed the agreement rule into the reason (``"agreement:4/5"``)."""
    if reason.startswith("agreement:"):
        return StopReason.AGREEMENT, reason.split(":", 1)[1]
    return StopReason(reason), rule
