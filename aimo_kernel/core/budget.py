"""Time budgets for a whole competition run: how long each problem may take, and how hard to try.

The run has one hard deadline: ``start + total_seconds - safety_margin_s`` (``start`` is when the
notebook started, so model load is already spent when the first problem is planned). Each problem's
budget is the time left shared over the problems left, clamped to ``[floor, cap]``, and never so
large that a later problem would lose its floor (plus what a problem may overrun its stop by, plus a
reserve for one engine restart). Time a problem does not use stays in "time left", which is how it
is carried forward to the problems after it. When the share falls behind the even share the run
started with, a *speed level* lowers the number of candidates and rounds.

A problem *starved* when its time ran out before half of its candidates answered while the others had
written fewer tokens each than the run's answering candidates needed (or none had answered yet): fewer
candidates would have answered, so its effort did not fit the time on this machine, whatever the share
or the calibration said. Once more than half of the problems (two at least) since the last change
starved, later problems are planned one speed level lower (below the lowest, with half the candidates,
down to one); the level comes back up one step after ``RECOVER_AFTER`` problems in a row that ended
using under half their time. A hopeless problem starves at any effort, so one among answered problems
changes nothing. A hard problem whose open candidates wrote more than an answer takes and still did not
answer is not starved: fewer of them would not have answered either (on a GPU a batch of 8 decodes
nearly as fast per sequence as a batch of 2); on a machine whose throughput the batch shares (a CPU),
full effort inside a small share can leave every problem without an answer.

Every ``predict`` call after the first also has the gateway's own deadline (AIMO2 1800 s, AIMO3 9 h,
AIMO1 none; past it the whole submission fails): :meth:`BudgetPlanner.plan` takes the call's hard
end (:func:`call_deadline`), and a problem never gets more than fits before it, whatever was carried
forward.

With a calibration (``level_seconds``: a problem's projected time at each speed level, from
:mod:`aimo_kernel.core.throughput`) the speed level is the fullest effort projected to fit the seconds
given, not a guess from the share alone: a machine faster than the even share needs keeps full effort
while behind schedule, a slower one lowers it from the first problem.

Pure logic with an injectable clock: the solver enforces the budgets, the simulation in the tests
checks the deadline property over many simulated runs. It does not measure throughput.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aimo_kernel.config import BudgetConfig, TIRConfig
from aimo_kernel.config.schema import CALL_DEADLINE_S, CALL_MARGIN_S

# (share of the starting even share at or above which the level applies, candidates factor, rounds cut)
MIN_USE_RATIO = 0.25  # never plan as if later problems will need less than a quarter of their share
# Plan as if later problems will use this share of what earlier ones did: time kept back for problems
# that end up not needing it is lost at the end of the run, while a problem short of time still gets
# its floor and a lower speed level.
OPTIMISM = 0.7
RECOVER_AFTER = 3  # problems in a row with time to spare before a starved run's effort goes back up a level

SPEED_LEVELS: tuple[tuple[float, float, int], ...] = (
    (0.8, 1.0, 0),
    (0.5, 0.75, 0),
    (0.3, 0.5, 1),
    (0.0, 0.33, 2),
)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How a problem ended, as far as planning the next ones cares."""

    timed_out: bool  # stopped by its deadline
    candidates: int  # candidates started
    answered: int  # of them, how many answered
    tokens_per_open: float = 0.0  # mean tokens written by the candidates without an answer (0: none)
    tokens_per_answer: float = 0.0  # mean tokens written by the answering candidates (0: none)


@dataclass(frozen=True)
class ProblemBudget:
    """What one problem is given."""

    index: int  # 0-based position in the run
    seconds: float  # time given (0 when the run's deadline has passed)
    deadline: float  # absolute clock value of the hard stop
    speed_level: int  # 0 = full effort
    num_candidates: int
    max_rounds: int
    richness: float = 1.0  # share / the even share the run started with: > 1 when ahead of schedule


def call_deadline(competition: str, call_started: float, *, first: bool) -> float | None:
    """The clock value by which a ``predict`` call that began at ``call_started`` must have answered.

    None for the first call (the gateway gives it no deadline: the model loads there) and for AIMO1.
    The margin is kept back for what follows the problem's stop: winding down, the trace, the reply.
    """
    limit = CALL_DEADLINE_S[competition]
    if first or limit is None:
        return None
    return call_started + limit - CALL_MARGIN_S


def speed_level(ratio: float) -> int:
    """The speed level for a share that is ``ratio`` times the starting even share."""
    for level, (threshold, _, _) in enumerate(SPEED_LEVELS):
        if ratio >= threshold:
            return level
    return len(SPEED_LEVELS) - 1


def effort(tir: TIRConfig, level: int) -> tuple[int, int]:
    """(candidates, rounds) at a speed level: never fewer than 1 of each."""
    _, factor, cut = SPEED_LEVELS[level]
    return max(1, math.ceil(tir.num_candidates * factor)), max(1, tir.max_rounds - cut)


class BudgetPlanner:
    """Plans problem budgets in order; call :meth:`plan` before each problem and :meth:`done` after."""

    def __init__(self, budget: BudgetConfig, tir: TIRConfig, *, start: float, num_problems: int | None = None,
                 clock: Callable[[], float] = time.monotonic, level_seconds: Sequence[float] = ()) -> None:
        if level_seconds and len(level_seconds) != len(SPEED_LEVELS):
            raise ValueError(f"level_seconds needs one projection per speed level ({len(SPEED_LEVELS)}), "
                             f"got {len(level_seconds)}")
        self.level_seconds = tuple(level_seconds)
        self.cfg = budget
        self.tir = tir
        self.clock = clock
        self.num_problems = num_problems or budget.num_problems
        self.run_deadline = start + budget.total_seconds - budget.safety_margin_s
        self.planned = 0
        self.even_share: float | None = None  # fixed at the first plan, after the model has loaded
        self.given_total = 0.0
        self.used_total = 0.0
        self.backoff = 0  # speed levels below the plan's, after starved problems
        self._comfortable = 0  # problems in a row that used under half their time
        self._at_level = [0, 0]  # problems since the last change of backoff, and how many of them starved
        lowest = len(SPEED_LEVELS) - 1  # below the lowest level each step halves the candidates, down to one
        self._max_backoff = lowest + (effort(tir, lowest)[0] - 1).bit_length()
        self._answers = 0  # answering candidates so far, and their tokens: what an answer takes here
        self._answer_tokens = 0.0

    def use_ratio(self) -> float:
        """How much of what problems were given they used so far (1 before any finished).

        Problems whose votes agree early hand time back; planning with this ratio gives that time to
        the problem at hand instead of keeping it for problems that will not need it either.
        """
        if self.given_total <= 0:
            return 1.0
        return min(1.0, max(MIN_USE_RATIO, OPTIMISM * self.used_total / self.given_total))

    def starved(self, outcome: Outcome) -> bool:
        """Time ran out with most candidates still short of what an answer takes in this run (or of any answer
        yet): fewer candidates would have answered. Call after :meth:`done` has counted the problem's answers."""
        if not outcome.timed_out or 2 * outcome.answered >= outcome.candidates:
            return False
        return not self._answers or outcome.tokens_per_open < self._answer_tokens / self._answers

    def done(self, given: float, used: float, outcome: Outcome | None = None) -> None:
        """Record how much of its budget a problem used and how it ended (none: it counts for time only)."""
        self.given_total += max(0.0, given)
        self.used_total += max(0.0, min(used, given))
        if outcome is None:
            return
        self._answers += outcome.answered
        self._answer_tokens += outcome.answered * outcome.tokens_per_answer
        starved = self.starved(outcome)
        self._adjust(starved, comfortable=not starved and used < 0.5 * given)

    def _adjust(self, starved: bool, *, comfortable: bool) -> None:
        """One level lower once most problems at this level starved; one higher after a run of comfortable ones.

        A hopeless problem starves at any effort: one among answered ones must not lower the effort."""
        self._at_level[0] += 1
        self._at_level[1] += starved
        self._comfortable = self._comfortable + 1 if comfortable else 0
        problems, hungry = self._at_level
        if problems >= 2 and 2 * hungry > problems and self.backoff < self._max_backoff:
            self.backoff += 1
        elif self.backoff and self._comfortable >= RECOVER_AFTER:
            self.backoff -= 1
        else:
            return
        self._at_level, self._comfortable = [0, 0], 0

    def problems_left(self) -> int:
        return max(1, self.num_problems - self.planned)

    def _clamp(self, share: float, remaining: float, left: int) -> float:
        """The share clamped to [floor, cap], never taking the floors of the problems after it.

        Priorities, highest first: every later problem's floor, this problem's floor, a reserve for one
        engine restart (while a later problem could need it), then this problem's share.
        """
        cfg = self.cfg
        per_problem = cfg.min_problem_seconds + cfg.overrun_allowance_s
        room = remaining - cfg.overrun_allowance_s - (left - 1) * per_problem
        if room < cfg.min_problem_seconds:  # already behind every floor: split what is left evenly
            return max(0.0, (remaining - left * cfg.overrun_allowance_s) / left)
        seconds = min(cfg.per_problem_seconds, max(cfg.min_problem_seconds, share), room)
        if left > 1:
            seconds = min(seconds, max(cfg.min_problem_seconds, room - cfg.restart_reserve_s))
        return seconds

    def _level(self, richness: float, seconds: float) -> int:
        """The fullest effort projected to fit ``seconds`` when calibrated, else the share's level."""
        if not self.level_seconds:
            return speed_level(richness)
        return next((i for i, need in enumerate(self.level_seconds) if need <= seconds), len(SPEED_LEVELS) - 1)

    def plan(self, call_deadline: float | None = None) -> ProblemBudget:
        """The next problem's budget; ``call_deadline`` is when the current gateway call must answer."""
        now = self.clock()
        left = self.problems_left()
        remaining = self.run_deadline - now
        share = remaining / ((left - 1) * self.use_ratio() + 1)
        if self.even_share is None:
            self.even_share = max(share, 1e-9)
        seconds = self._clamp(share, remaining, left)
        if call_deadline is not None:  # the gateway's per-call deadline beats every other rule
            seconds = max(0.0, min(seconds, call_deadline - now - self.cfg.overrun_allowance_s))
        richness = share / self.even_share
        wanted = self._level(richness, seconds) + self.backoff
        level = min(len(SPEED_LEVELS) - 1, wanted)
        candidates, rounds = effort(self.tir, level)
        candidates = max(1, candidates >> (wanted - level))  # starved below the lowest level: halve, down to 1
        index = self.planned
        self.planned += 1
        return ProblemBudget(index=index, seconds=seconds, deadline=now + seconds, speed_level=level,
                             num_candidates=candidates, max_rounds=rounds,
                             richness=richness)
