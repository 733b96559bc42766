"""The named vocabularies of a solve: why a problem stopped, how a candidate ended, what its code did.

Each is a :class:`~enum.StrEnum` defined here once; members compare equal to their strings, so traces
(JSON) carry the plain values and old readers keep working. Covers only names; the rules that pick
them live with the solver (:mod:`aimo_kernel.solve`) and the engines (finish reasons).
"""

from __future__ import annotations

from enum import StrEnum


class StopReason(StrEnum):
    """Why a problem stopped. An agreement stop names its rule separately (``SolveResult.agreement_rule``)."""

    FINISHED = "finished"  # every candidate ended on its own
    AGREEMENT = "agreement"  # the vote was decided early by an agreement rule
    SCATTERED = "scattered"  # the answers disagreed past vote.give_up_rule: the time left goes to later problems
    DEADLINE = "deadline"  # the problem's time ran out (in flight, or before a candidate's code could start)
    STALL = "stall"  # no candidate made progress for the stall timeout
    PROMPT_TOO_LONG = "prompt_too_long"
    EMPTY_PROBLEM = "empty_problem"
    ERROR = "error"  # the engine failed every candidate, or the run failed around the solver


UNCONVERGED = (StopReason.DEADLINE, StopReason.STALL, StopReason.ERROR)
"""Stops that say nothing about how long the problem would have needed."""


class CandidateStatus(StrEnum):
    ACTIVE = "active"  # still generating or running code
    DONE = "done"  # ended; its answer (if any) votes
    PRUNED = "pruned"  # ended; its answer does not vote


class CandidateReason(StrEnum):
    """How a candidate ended (with its status)."""

    EOS = "eos"  # the model ended the text
    LENGTH = "length"  # the round's token budget ran out
    CONTEXT = "context"  # the model's context is full
    DEADLINE = "deadline"  # the problem's time ran out before its code could run or its text end
    NO_CODE = "no_code"  # it never wrote code (pruned under no_code_policy = "prune")
    INVENTED_OUTPUT = "invented_output"  # it wrote an output block for code it never wrote
    ROUNDS = "rounds"  # it used every round
    STOPPED = "stopped"  # the problem stopped while it ran (agreement, deadline, stall)
    ERROR = "error"  # the engine failed its request


class FinishReason(StrEnum):
    """Why one generation ended (what an engine reports)."""

    STOP = "stop"  # a stop string was generated (kept at the end of the text)
    EOS = "eos"
    LENGTH = "length"
    DEADLINE = "deadline"  # cut off by the caller's deadline
    ERROR = "error"


class CodeFlag(StrEnum):
    """What went wrong when a code block ran (none: it ran cleanly)."""

    TIMED_OUT = "timed_out"
    MEMORY_EXCEEDED = "memory_exceeded"
    CRASHED = "crashed"
    REFUSED = "refused"
    OUTPUT_TRUNCATED = "output_truncated"
    ERROR = "error"  # it failed for another reason (an exception, a non-zero exit)
