"""Time budgets: hand-checked planner cases, the per-call deadline, and the deadline properties over 1000
simulated runs per competition."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from aimo_kernel.config import BudgetConfig, Config, ConfigError, TIRConfig, load_config
from aimo_kernel.config.presets import get_preset
from aimo_kernel.config.schema import CALL_DEADLINE_S, CALL_MARGIN_S
from aimo_kernel.core.budget import SPEED_LEVELS, BudgetPlanner, Outcome, call_deadline, effort, speed_level
from aimo_kernel.testing.simulation import FakeClock, simulate_run


def planner(clock: FakeClock, **budget: float) -> BudgetPlanner:
    cfg = BudgetConfig(**{"total_seconds": 1000.0, "num_problems": 10, "per_problem_seconds": 300.0,
                          "min_problem_seconds": 20.0, "safety_margin_s": 100.0, "overrun_allowance_s": 0.0,
                          **budget})  # type: ignore[arg-type]
    return BudgetPlanner(cfg, TIRConfig(num_candidates=48, max_rounds=4), start=0.0, clock=clock)


def test_first_problem_gets_the_even_share_of_what_is_left_after_load():
    clock = FakeClock(100.0)  # the model took 100 s to load
    plan = planner(clock).plan()
    assert plan.seconds == pytest.approx((900 - 100) / 10)
    assert plan.deadline == pytest.approx(180.0)
    assert (plan.speed_level, plan.num_candidates, plan.max_rounds) == (0, 48, 4)


def test_unused_time_is_carried_forward():
    clock = FakeClock()
    p = planner(clock)
    first = p.plan()  # 90 s
    clock.now += 10.0
    p.done(first.seconds, 10.0)  # decided early: 80 s handed back
    second = p.plan()
    # use ratio 10/90, planned as 0.7 of it but never below 0.25: 890 / (8 * 0.25 + 1)
    assert second.seconds == pytest.approx(890 / 3)
    assert second.seconds > first.seconds


def test_budget_is_capped():
    clock = FakeClock()
    p = planner(clock, per_problem_seconds=50.0)
    assert p.plan().seconds == 50.0


def test_later_floors_are_never_taken():
    clock = FakeClock(850.0)  # 50 s left for 10 problems with a 20 s floor: split evenly instead
    p = planner(clock)
    assert p.plan().seconds == pytest.approx(5.0)
    clock = FakeClock(600.0)  # 300 s left: 9 later floors of 20 s stay reserved
    p = planner(clock, per_problem_seconds=300.0)
    p.even_share = 30.0
    assert p.plan().seconds <= 300 - 9 * 20


def test_restart_reserve_comes_after_the_floors():
    clock = FakeClock(100.0)
    p = planner(clock, restart_reserve_s=700.0)
    assert p.plan().seconds == 20.0  # the reserve would leave nothing: the floor stays


def test_last_problem_may_use_everything_left():
    clock = FakeClock(500.0)
    p = planner(clock, per_problem_seconds=1000.0)
    p.planned = 9
    assert p.plan().seconds == pytest.approx(400.0)


def test_past_the_deadline_a_problem_gets_nothing():
    clock = FakeClock(2000.0)
    assert planner(clock).plan().seconds == 0.0


@pytest.mark.parametrize(("ratio", "level"), [(1.5, 0), (0.8, 0), (0.6, 1), (0.4, 2), (0.1, 3)])
def test_speed_levels(ratio, level):
    assert speed_level(ratio) == level


def test_effort_shrinks_with_the_level_but_never_to_zero():
    tir = TIRConfig(num_candidates=48, max_rounds=4)
    assert [effort(tir, lvl) for lvl in range(len(SPEED_LEVELS))] == [(48, 4), (36, 4), (24, 3), (16, 2)]
    assert effort(TIRConfig(num_candidates=1, max_rounds=1), 3) == (1, 1)


def test_behind_schedule_lowers_the_speed_level():
    clock = FakeClock()
    p = planner(clock)
    p.plan()
    clock.now = 700.0  # 200 s left for 9 problems: well behind the 90 s even share
    p.done(90.0, 90.0)
    plan = p.plan()
    assert plan.speed_level >= 2 and plan.num_candidates < 48


def test_deadline_property_over_1000_simulated_competitions():
    """AIMO1 preset on the T4×2 model: 50 problems, some never converge, occasional engine stalls."""
    cfg = get_preset("aimo1-t4x2")
    planned_end = cfg.budget.total_seconds - cfg.budget.safety_margin_s
    floor = cfg.budget.min_problem_seconds
    worst_margin, worst_use, worst_floor = float("inf"), 1.0, float("inf")
    for seed in range(1000):
        run = simulate_run(cfg, seed)
        assert len(run.problems) == 50
        worst_margin = min(worst_margin, run.margin)
        worst_use = min(worst_use, run.used_share(planned_end))
        worst_floor = min(worst_floor, min(p.given for p in run.problems))
    assert worst_margin >= 600.0, f"a run ended {worst_margin:.0f} s before the deadline"
    assert worst_floor >= floor, f"a problem got {worst_floor:.1f} s, below its {floor:.0f} s floor"
    assert worst_use >= 0.90, f"a run used only {worst_use:.1%} of its time"


# --- the gateway's per-call deadline ---------------------------------------------------------------------------


def test_call_deadlines_are_the_gateways():
    assert call_deadline("aimo2", 100.0, first=False) == 100.0 + 1800.0 - CALL_MARGIN_S
    assert call_deadline("aimo3", 100.0, first=False) == 100.0 + 9 * 3600.0 - CALL_MARGIN_S
    assert call_deadline("aimo2", 100.0, first=True) is None  # the first call loads the model: no deadline
    assert call_deadline("aimo1", 100.0, first=False) is None  # AIMO1's loop has none


def test_time_carried_forward_never_passes_the_call_deadline():
    # Early problems hand time back; the next one could be given the whole cap, but its call ends first.
    clock = FakeClock(0.0)
    cfg = BudgetConfig(total_seconds=5 * 3600.0, num_problems=3, per_problem_seconds=1675.0,
                       min_problem_seconds=60.0, safety_margin_s=900.0)
    p = BudgetPlanner(cfg, TIRConfig(), start=0.0, clock=clock)
    p.done(p.plan().seconds, 1.0)
    clock.now = 500.0
    call_started = 100.0  # a restart already took 400 s of this call
    plan = p.plan(call_deadline("aimo2", call_started, first=False))
    assert plan.seconds == pytest.approx(100.0 + 1800.0 - CALL_MARGIN_S - 500.0 - cfg.overrun_allowance_s)
    clock.now = 100.0 + 1800.0  # the call's time is gone: nothing, not a negative budget
    assert p.plan(call_deadline("aimo2", call_started, first=False)).seconds == 0.0


def test_the_aimo2_preset_fits_its_gateway_and_a_cap_that_cannot_fit_is_refused():
    assert get_preset("aimo2-l4x4").budget.per_problem_seconds <= 1800.0 - CALL_MARGIN_S
    with pytest.raises(ConfigError) as err:
        load_config(preset="aimo2-l4x4", overrides=["budget.per_problem_seconds=2400"])
    message = str(err.value)
    assert "BudgetConfig.per_problem_seconds" in message and "1675" in message and "2400" in message
    assert "1800" in message
    with pytest.raises(ConfigError, match="per_problem_seconds must be at most"):
        Config(competition="aimo2", budget=BudgetConfig(per_problem_seconds=1700.0))
    assert Config(competition="aimo1", budget=BudgetConfig(per_problem_seconds=3600.0)).competition == "aimo1"


def _natural_seconds(rng: random.Random) -> float:
    """How long a problem would run if let: 20% decide in minutes, 30% in a quarter hour or more, half never.

    Cheaper than :func:`~aimo_kernel.testing.simulation.natural_seconds`; the per-call property depends on
    the planner and the overruns, not on the shape of this distribution.
    """
    kind = rng.random()
    if kind < 0.2:
        return rng.lognormvariate(math.log(240), 0.8)
    return rng.lognormvariate(math.log(900), 0.8) if kind < 0.5 else math.inf


def simulate_calls(config: Config, seed: int, *, stall_rate: float = 0.05, hang_rate: float = 0.02):
    """One competition as the gateway sees it: the duration of every predict call, and when the run ended.

    As :class:`~aimo_kernel.run.runner.Runner` does it: the model loads in the first call; an engine that
    stalled is rebuilt at the start of the next call, within that call's deadline (a rebuild that hangs is
    abandoned there); each problem is planned with the call's deadline and may overrun its stop.
    """
    rng = random.Random(seed)
    budget = config.budget
    clock = FakeClock()
    planner = BudgetPlanner(budget, config.tir, start=0.0, clock=clock)
    calls, rebuild = [], False
    for index in range(planner.num_problems):
        started = clock.now
        deadline = call_deadline(config.competition, started, first=index == 0)
        if index == 0:
            clock.now += rng.uniform(120, 300)  # the model loads inside the first call
        if rebuild:
            left = planner.num_problems - index
            room = planner.run_deadline - clock.now - left * (budget.min_problem_seconds + budget.overrun_allowance_s)
            if deadline is not None:
                room = min(room, deadline - clock.now - budget.min_problem_seconds)
            took = config.engine.load_timeout_s if rng.random() < hang_rate else rng.uniform(60, 240)
            clock.now += max(0.0, min(took, room))
        plan = planner.plan(deadline)
        used = min(_natural_seconds(rng), plan.seconds)
        rebuild = rng.random() < stall_rate
        if rebuild:
            used = min(plan.seconds, rng.uniform(0, used) + budget.stall_timeout_s)
        used += rng.uniform(0, budget.overrun_allowance_s)
        clock.now += used + rng.uniform(0, 1.0)  # the trace and the reply
        planner.done(plan.seconds, used)
        calls.append(clock.now - started)
    return calls, clock.now


def _widest(name: str) -> Config:
    """The preset with the largest per-problem cap its competition's gateway allows."""
    cfg = get_preset(name)
    limit = CALL_DEADLINE_S[cfg.competition]
    if limit is None:
        return cfg
    cap = limit - CALL_MARGIN_S - cfg.budget.overrun_allowance_s
    return dataclasses.replace(cfg, budget=dataclasses.replace(cfg.budget, per_problem_seconds=cap))


@pytest.mark.parametrize("name", ["aimo1-t4x2", "aimo2-l4x4", "aimo3-h100"])
@pytest.mark.parametrize("widest", [False, True], ids=["preset", "widest-cap"])
def test_no_call_overruns_its_gateway_deadline_in_1000_simulated_runs(name, widest):
    cfg = _widest(name) if widest else get_preset(name)
    limit = CALL_DEADLINE_S[cfg.competition]
    worst_call, worst_margin = 0.0, float("inf")
    for seed in range(1000):
        calls, end = simulate_calls(cfg, seed)
        worst_call = max(worst_call, max(calls[1:]))  # the first call has no deadline
        worst_margin = min(worst_margin, cfg.budget.total_seconds - end)
    if limit is not None:
        assert worst_call < limit - CALL_MARGIN_S / 2, f"a call took {worst_call:.0f} s of its {limit:.0f} s"
    assert worst_margin >= 600.0, f"a run ended {worst_margin:.0f} s before the deadline"


# --- a calibrated planner: the fullest effort projected to fit ------------------------------------------

@pytest.mark.parametrize(("seconds", "level"), [(300.0, 0), (120.0, 0), (90.0, 1), (45.0, 2), (25.0, 3), (20.0, 3)])
def test_a_calibrated_planner_gives_the_fullest_effort_that_fits(seconds, level):
    clock = FakeClock()
    cfg = BudgetConfig(total_seconds=1000.0, num_problems=1, per_problem_seconds=seconds, min_problem_seconds=1.0,
                       safety_margin_s=0.0, overrun_allowance_s=0.0)
    needs = (100.0, 60.0, 30.0, 22.0)  # seconds of one problem at each speed level
    plan = BudgetPlanner(cfg, TIRConfig(num_candidates=48, max_rounds=4), start=0.0, clock=clock,
                         level_seconds=needs).plan()
    assert plan.seconds == seconds and plan.speed_level == level  # none fits: the lowest effort
    assert (plan.num_candidates, plan.max_rounds) == effort(TIRConfig(num_candidates=48, max_rounds=4), level)


def _second_plan(level_seconds: tuple[float, ...], late_by: float) -> tuple[int, float]:
    """(speed level, seconds) of the second problem after the first used its time and ``late_by`` more."""
    clock = FakeClock()
    p = planner(clock)
    p = BudgetPlanner(p.cfg, p.tir, start=0.0, clock=clock, level_seconds=level_seconds)
    first = p.plan()
    clock.now += first.seconds + late_by
    p.done(first.seconds, first.seconds)
    second = p.plan()
    return second.speed_level, second.seconds


def test_a_calibration_overrides_the_share_heuristic_both_ways():
    assert _second_plan((), late_by=700.0)[0] == len(SPEED_LEVELS) - 1  # far behind: the share cuts effort
    level, seconds = _second_plan((5.0, 4.0, 3.0, 2.0), late_by=700.0)
    assert level == 0 and seconds >= 5.0  # this machine does full effort in 5 s: no reason to cut it
    assert _second_plan((), late_by=0.0)[0] == 0  # on time: the share keeps full effort...
    assert _second_plan((500.0, 80.0, 3.0, 2.0), late_by=0.0)[0] == 1  # ...which would not fit its 90 s
    with pytest.raises(ValueError, match="one projection per speed level"):
        BudgetPlanner(BudgetConfig(), TIRConfig(), start=0.0, level_seconds=(1.0,))


STARVED = Outcome(timed_out=True, candidates=48, answered=0, tokens_per_open=10.0)
EASY = Outcome(timed_out=False, candidates=48, answered=48, tokens_per_answer=30.0)
FULL = Outcome(timed_out=True, candidates=48, answered=30, tokens_per_open=20.0, tokens_per_answer=60.0)


def _levels(p: BudgetPlanner, clock: FakeClock, outcomes: list[Outcome]) -> list[int]:
    """The speed level of each problem, each ending with its outcome (EASY in 30% of its time, else all)."""
    levels = []
    for outcome in outcomes:
        plan = p.plan()
        levels.append(plan.speed_level)
        used = plan.seconds * (0.3 if outcome is EASY else 1.0)
        clock.now += used
        p.done(plan.seconds, used, outcome)
    return levels


def test_starved_problems_lower_the_effort_until_problems_have_time_to_spare():
    clock = FakeClock()
    p = planner(clock, num_problems=12)
    levels = _levels(p, clock, [STARVED] * 4 + [EASY] * 6)
    assert levels[:4] == [0, 0, 1, 1]  # two starved at a level: one level lower for the ones after
    assert levels[4:] == [2, 2, 2, 1, 1, 1]  # back up one level per three problems in a row with time to spare
    assert p.plan().num_candidates == 48


def test_a_hopeless_problem_among_answered_ones_keeps_the_effort():
    clock = FakeClock()
    p = planner(clock)
    assert _levels(p, clock, [STARVED, FULL, FULL, STARVED, FULL, FULL, STARVED]) == [0] * 7
    assert p.plan().speed_level == 0


def test_a_problem_that_used_its_time_resets_the_recovery():
    clock = FakeClock()
    p = planner(clock)
    _levels(p, clock, [STARVED, STARVED, EASY, EASY, FULL, EASY, EASY])
    assert p.plan().speed_level == 1  # the full-time problem broke the run of three


# (outcome, what answering candidates wrote before it (None: nobody answered yet), starved)
STARVATION = [
    (STARVED, None, True),  # nothing answered yet: fewer candidates are the one way to get an answer
    (STARVED, 30.0, True),  # 10 tokens each where an answer takes 30
    (Outcome(timed_out=True, candidates=8, answered=3, tokens_per_open=10.0, tokens_per_answer=30.0), 30.0,
     True),  # three of eight answered, the other five were cut off early
    (Outcome(timed_out=True, candidates=8, answered=4, tokens_per_open=10.0, tokens_per_answer=30.0), 30.0,
     False),  # half answered: enough votes
    (Outcome(timed_out=True, candidates=8, answered=0, tokens_per_open=400.0), 30.0, False),  # hard: long, no answer
    (Outcome(timed_out=False, candidates=8, answered=0, tokens_per_open=10.0), 30.0, False),  # ended on its own
]


@pytest.mark.parametrize(("outcome", "answer_tokens", "starved"), STARVATION)
def test_starved_means_fewer_candidates_would_have_answered(outcome, answer_tokens, starved):
    p = planner(FakeClock())
    if answer_tokens is not None:
        p.done(10.0, 10.0, Outcome(timed_out=False, candidates=4, answered=4, tokens_per_answer=answer_tokens))
    p.done(10.0, 10.0, outcome)
    assert p.starved(outcome) is starved


def test_starving_below_the_lowest_level_halves_the_candidates_down_to_one():
    clock = FakeClock()
    p = planner(clock, num_problems=40, min_problem_seconds=1.0)
    for _ in range(20):
        plan = p.plan()
        clock.now += plan.seconds
        p.done(plan.seconds, plan.seconds, STARVED)
    lowest = len(SPEED_LEVELS) - 1
    plan = p.plan()
    assert plan.speed_level == lowest and plan.num_candidates == 1  # 48 → 16 at the lowest level → 8, 4, 2, 1
    assert plan.max_rounds == effort(TIRConfig(num_candidates=48, max_rounds=4), lowest)[1]
