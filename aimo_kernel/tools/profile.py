"""``aimo-kernel profile TRACE``: where a run's time went, and whether the full competition will fit.

Reads the ``trace.jsonl`` a run writes (one record per problem, :class:`aimo_kernel.run.trace.ProblemTrace`)
and writes, into one folder, ``report.md`` (opening with a one-paragraph verdict), PNG plots (matplotlib,
Agg) and ``projection.json``. Everything comes from the trace and the command's arguments (seeded
resampling, no clock, no engine): the same trace and arguments give the same report.

**Projection.** Each trace problem is replayed on a target throughput model
(:mod:`aimo_kernel.testing.hardware`: t4x2, l4x4, h100, or a calibration file from ``aimo-kernel calibrate``):

* a candidate takes, per round, ``tokens_out × step_seconds(batch, tokens_in + tokens_out / 2)`` plus the
  round's measured code seconds; rounds are cut to the target's M and its per-round token limit, and a
  candidate that stopped because it ran out of rounds repeats its last round up to M;
* the problem launches ``ceil(K × n / n_trace)`` candidates (K: candidates in the trace, n_trace: the
  trace run's N), cycling through the trace's candidates, onto ``min(n, max_batch)`` slots decoding
  together; its *natural* time is when the last one ends (prefill and queueing are left out: the prompt
  is shared and prefix-cached);
* problems the trace stopped at a deadline, a stall or an error never converged: they use whatever
  budget they are given.

A run is 50 problems (the config's count) drawn with replacement from the trace's problems, each
planned by the real :class:`~aimo_kernel.core.budget.BudgetPlanner` under a fake clock after the model
load; a problem uses ``min(natural, budget)``, plus the overrun allowance when its budget cuts it. The
spread comes from many such mixes. A configuration *fits* when, in at least 95% of the mixes, the run
ends by ``total − safety margin + overrun allowance`` (the planner's promise) and no converging problem
is cut by its budget. The suggestion is the largest N×M on a grid that fits.

Not covered: accuracy (more candidates may or may not help), prefill cost, a model other than the
trace's (its token counts are taken as they are), engine restarts.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimo_kernel.config import Config
from aimo_kernel.config.options import add_config_args, config_from_args
from aimo_kernel.core.budget import BudgetPlanner
from aimo_kernel.errors import UsageError
from aimo_kernel.run import trace
from aimo_kernel.run.trace import ProblemTrace
from aimo_kernel.testing.hardware import ThroughputModel
from aimo_kernel.vocab import UNCONVERGED, CandidateReason, StopReason

FIT_QUANTILE = 0.95
GRID_N = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
GRID_M = (1, 2, 3, 4, 5, 6, 8)
HARDWARE_FOR_PRESET = {"aimo1-t4x2": "t4x2", "aimo2-l4x4": "l4x4", "aimo3-h100": "h100"}


# -- the trace ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundRow:
    tokens_in: int
    tokens_out: int
    gen_s: float
    code_s: float
    flags: tuple[str, ...] = ()

    @property
    def ran_code(self) -> bool:
        return self.code_s > 0 or bool(self.flags)


@dataclass(frozen=True)
class CandidateRow:
    index: int
    answer: int | None
    status: str
    reason: str
    rounds: tuple[RoundRow, ...]

    @property
    def gen_s(self) -> float:
        return sum(r.gen_s for r in self.rounds)

    @property
    def code_s(self) -> float:
        return sum(r.code_s for r in self.rounds)


@dataclass(frozen=True)
class ProblemRow:
    id: str
    answer: int
    gold: int | None
    stop_reason: StopReason
    given_s: float
    used_s: float
    speed_level: int
    votes: dict[str, float]
    tokens: int
    code_blocks: int
    candidates: tuple[CandidateRow, ...]
    agreement_rule: str = ""  # the rule of an agreement stop

    @property
    def converged(self) -> bool:
        return self.stop_reason not in UNCONVERGED


def _problem(t: ProblemTrace) -> ProblemRow:
    cands = tuple(
        CandidateRow(index=c.index, answer=c.answer, status=c.status.value, reason=str(c.reason),
                     rounds=tuple(RoundRow(tokens_in=r.tokens_in, tokens_out=r.tokens_out, gen_s=r.gen_seconds,
                                           code_s=r.code_seconds, flags=tuple(f.value for f in r.code_flags))
                                  for r in c.rounds))
        for c in t.candidates)
    return ProblemRow(id=str(t.id), answer=t.answer, gold=t.gold, stop_reason=t.stop_reason,
                      given_s=t.budget_given_s, used_s=t.budget_used_s, speed_level=t.speed_level or 0,
                      votes=dict(t.votes), tokens=t.tokens, code_blocks=t.code_blocks, candidates=cands,
                      agreement_rule=t.agreement_rule)


def read_trace(path: str | Path) -> list[ProblemRow]:
    """The trace's problems in run order, read through :class:`~aimo_kernel.run.trace.ProblemTrace`;
    a bad line is a ValueError naming it."""
    rows = [_problem(t) for t in trace.read_trace(path)]
    if not rows:
        raise ValueError(f"{path}: the trace has no problems")
    return rows


# -- projection --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replay:
    """What the target hardware does with the trace's work."""

    model: ThroughputModel
    trace_candidates: int  # N of the run that wrote the trace
    max_new_tokens: int  # the target's per-round token limit

    def round_seconds(self, r: RoundRow, batch: int) -> float:
        tokens = min(r.tokens_out, self.max_new_tokens)
        return tokens * self.model.step_seconds(batch, r.tokens_in + tokens / 2) + r.code_s

    def rounds(self, c: CandidateRow, m: int) -> list[RoundRow]:
        rounds = list(c.rounds[:m])
        if c.reason == CandidateReason.ROUNDS and rounds:  # it wanted more rounds than the trace run allowed
            rounds += [rounds[-1]] * (m - len(rounds))
        return rounds

    def natural_seconds(self, p: ProblemRow, n: int, m: int) -> float:
        """Seconds until the problem's last candidate ends, with n candidates in flight (inf: never converges)."""
        if not p.converged:
            return math.inf
        if not p.candidates:
            return 0.0
        launched = max(n, math.ceil(len(p.candidates) * n / max(1, self.trace_candidates)))
        slots = max(1, min(n, self.model.max_batch))
        free = [0.0] * slots
        end = 0.0
        for i in range(launched):
            c = p.candidates[i % len(p.candidates)]
            start = heapq.heappop(free)
            finish = start + sum(self.round_seconds(r, slots) for r in self.rounds(c, m))
            heapq.heappush(free, finish)
            end = max(end, finish)
        return end


@dataclass(frozen=True)
class RunProjection:
    end_s: float  # wall time from the notebook's start to the last answer
    cut: int  # converging problems stopped by their budget
    unconverged: int
    degraded: int  # problems planned below full effort
    used_s: tuple[float, ...] = ()


def replay_run(config: Config, mix: Sequence[int], natural: Callable[[int, int, int], float],
               load_s: float) -> RunProjection:
    """One competition run of the problems ``mix`` (trace indices) through the real planner on a fake clock."""
    from aimo_kernel.testing.simulation import FakeClock

    clock = FakeClock(load_s)
    planner = BudgetPlanner(config.budget, config.tir, start=0.0, clock=clock, num_problems=len(mix))
    cut = unconverged = degraded = 0
    used_all = []
    for p in mix:
        plan = planner.plan()
        need = natural(p, plan.num_candidates, plan.max_rounds)
        used = min(need, plan.seconds)
        if need > plan.seconds:  # aborted at its stop: the abort itself takes up to the overrun allowance
            used += config.budget.overrun_allowance_s
            if math.isinf(need):
                unconverged += 1
            else:
                cut += 1
        degraded += plan.speed_level > 0
        clock.now += used
        planner.done(plan.seconds, used)
        used_all.append(used)
    return RunProjection(end_s=clock.now, cut=cut, unconverged=unconverged, degraded=degraded,
                         used_s=tuple(used_all))


def mixes(num_trace: int, num_problems: int, count: int, seed: int) -> list[list[int]]:
    """``count`` problem mixes drawn with replacement; the first is the trace in order (repeated)."""
    first = [i % num_trace for i in range(num_problems)]
    rng = random.Random(seed)
    return [first] + [[rng.randrange(num_trace) for _ in range(num_problems)] for _ in range(count - 1)]


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (no interpolation: reproducible and exact on small hand cases)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class Projection:
    n: int
    m: int
    runs: tuple[RunProjection, ...]
    limit_s: float  # total − safety margin + overrun allowance
    total_s: float
    demand_s: tuple[float, ...] = ()  # per mix: load + every problem's natural time (capped), no planner

    def end(self, q: float) -> float:
        return quantile([r.end_s for r in self.runs], q)

    def cut(self, q: float) -> int:
        return int(quantile([r.cut for r in self.runs], q))

    def degraded(self, q: float) -> int:
        return int(quantile([r.degraded for r in self.runs], q))

    @property
    def fits(self) -> bool:
        return self.end(FIT_QUANTILE) <= self.limit_s + 1e-9 and self.cut(FIT_QUANTILE) == 0


def with_effort(config: Config, n: int, m: int) -> Config:
    tir = dataclasses.replace(config.tir, num_candidates=n, max_rounds=m)
    return dataclasses.replace(config, tir=tir)


def project(problems: Sequence[ProblemRow], config: Config, replay: Replay, *, runs: list[list[int]],
            load_s: float, n: int | None = None, m: int | None = None,
            cache: dict[tuple[int, int, int], float] | None = None) -> Projection:
    """The configuration (at N=n, M=m if given) replayed over every mix in ``runs``."""
    n = n or config.tir.num_candidates
    m = m or config.tir.max_rounds
    cfg = with_effort(config, n, m)
    memo = cache if cache is not None else {}

    def natural(p: int, nn: int, mm: int) -> float:
        key = (p, nn, mm)
        if key not in memo:
            memo[key] = replay.natural_seconds(problems[p], nn, mm)
        return memo[key]

    b = cfg.budget
    cap = b.per_problem_seconds
    demand = tuple(load_s + sum(min(natural(p, n, m), cap) for p in mix) for mix in runs)
    return Projection(n=n, m=m, runs=tuple(replay_run(cfg, mix, natural, load_s) for mix in runs),
                      limit_s=b.total_seconds - b.safety_margin_s + b.overrun_allowance_s,
                      total_s=b.total_seconds, demand_s=demand)


@dataclass(frozen=True)
class GridResult:
    projections: tuple[Projection, ...]
    best: Projection | None  # the largest N×M that fits

    def at(self, n: int, m: int) -> Projection | None:
        return next((p for p in self.projections if p.n == n and p.m == m), None)


def search_grid(problems: Sequence[ProblemRow], config: Config, replay: Replay, *, runs: list[list[int]],
                load_s: float, grid_n: Sequence[int] = GRID_N, grid_m: Sequence[int] = GRID_M,
                progress: bool = False) -> GridResult:
    """Every (N, M) of the grid; the fitting one with the most candidate-rounds (then the most candidates)."""
    from tqdm import tqdm

    cache: dict[tuple[int, int, int], float] = {}
    pairs = [(n, m) for n in grid_n for m in grid_m]
    found = [project(problems, config, replay, runs=runs, load_s=load_s, n=n, m=m, cache=cache)
             for n, m in tqdm(pairs, desc="N/M grid", unit="cfg", disable=not progress)]
    fitting = [p for p in found if p.fits]
    best = max(fitting, key=lambda p: (p.n * p.m, p.n)) if fitting else None
    return GridResult(projections=tuple(found), best=best)


# -- trace summaries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceSummary:
    problems: int
    converged: int
    given_s: float
    used_s: float
    tokens: int
    code_blocks: int
    gen_s: float  # candidate-seconds generating (candidates overlap, so not wall time)
    code_s: float
    answered: int  # candidates with an answer
    candidates: int
    stop_reasons: dict[str, int] = field(default_factory=dict)
    candidate_reasons: dict[str, int] = field(default_factory=dict)
    sandbox: dict[str, int] = field(default_factory=dict)
    correct: int = 0
    graded: int = 0


def _outcome(r: RoundRow) -> str:
    return r.flags[0] if r.flags else "ok"


def summarize(problems: Sequence[ProblemRow]) -> TraceSummary:
    cands = [c for p in problems for c in p.candidates]
    rounds = [r for c in cands for r in c.rounds]
    graded = [p for p in problems if p.gold is not None]
    return TraceSummary(
        problems=len(problems), converged=sum(p.converged for p in problems),
        given_s=sum(p.given_s for p in problems), used_s=sum(p.used_s for p in problems),
        tokens=sum(p.tokens for p in problems), code_blocks=sum(p.code_blocks for p in problems),
        gen_s=sum(r.gen_s for r in rounds), code_s=sum(r.code_s for r in rounds),
        answered=sum(c.answer is not None for c in cands), candidates=len(cands),
        stop_reasons=dict(Counter(p.stop_reason for p in problems).most_common()),
        candidate_reasons=dict(Counter(c.reason or c.status for c in cands).most_common()),
        sandbox=dict(Counter(_outcome(r) for r in rounds if r.ran_code).most_common()),
        correct=sum(p.answer == p.gold for p in graded), graded=len(graded))


# -- plots -------------------------------------------------------------------------------------------


def _figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (9.0, 4.0)) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on Kaggle or in CI
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=size, squeeze=False)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})  # no version stamp: reproducible bytes
    plt.close(fig)
    return path


def _slot_starts(p: ProblemRow, slots: int) -> list[float]:
    """Estimated start of each candidate: the trace has no start times, so replay them onto ``slots`` slots."""
    free = [0.0] * max(1, slots)
    starts = []
    for c in p.candidates:
        start = heapq.heappop(free)
        starts.append(start)
        heapq.heappush(free, start + c.gen_s + c.code_s)
    return starts


def plot_timeline(problems: Sequence[ProblemRow], slots: int, path: Path, limit: int = 12) -> Path:
    shown = list(problems[:limit])
    cols = 3 if len(shown) > 2 else len(shown)
    rows = math.ceil(len(shown) / cols)
    fig, axes = _figure(rows, cols, (4.2 * cols, 0.4 + 2.4 * rows))
    for ax, p in zip(axes.flat, shown):
        for y, (c, start) in enumerate(zip(p.candidates, _slot_starts(p, slots))):
            t = start
            for r in c.rounds:
                ax.barh(y, r.gen_s, left=t, color="tab:blue", height=0.7)
                ax.barh(y, r.code_s, left=t + r.gen_s, color="tab:orange", height=0.7)
                t += r.gen_s + r.code_s
            ax.barh(y, max(0.0, p.used_s - t), left=t, color="0.85", height=0.7)
        ax.set_title(f"{p.id[:24]} ({p.stop_reason})", fontsize=8)
        ax.set_xlabel("seconds", fontsize=7)
        ax.set_ylabel("candidate", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle("Candidates per problem: generation (blue), code (orange), waiting (grey); starts estimated",
                 fontsize=9)
    return _save(fig, path)


def plot_tokens(problems: Sequence[ProblemRow], path: Path) -> Path:
    fig, axes = _figure(1, 2)
    by_round: dict[int, list[int]] = {}
    for p in problems:
        for c in p.candidates:
            for i, r in enumerate(c.rounds):
                by_round.setdefault(i, []).append(r.tokens_out)
    keys = sorted(by_round)
    if keys:
        axes[0, 0].boxplot([by_round[k] for k in keys])
        axes[0, 0].set_xticks(range(1, len(keys) + 1), [str(k + 1) for k in keys])
    axes[0, 0].set(title="Tokens generated per round", xlabel="round", ylabel="tokens")
    per_cand = [sum(r.tokens_out for r in c.rounds) for p in problems for c in p.candidates]
    axes[0, 1].hist(per_cand or [0], bins=20, color="tab:blue")
    axes[0, 1].set(title="Tokens per candidate", xlabel="tokens", ylabel="candidates")
    return _save(fig, path)


def plot_budget(problems: Sequence[ProblemRow], path: Path) -> Path:
    fig, axes = _figure(1, 2)
    xs = range(len(problems))
    reasons = sorted({p.stop_reason for p in problems})
    colors = {r: f"C{i}" for i, r in enumerate(reasons)}
    ax = axes[0, 0]
    ax.bar(xs, [p.given_s for p in problems], color="0.85", label="given")
    for r in reasons:
        idx = [i for i, p in enumerate(problems) if p.stop_reason == r]
        ax.bar(idx, [problems[i].used_s for i in idx], color=colors[r], label=f"used ({r})")
    ax.set(title="Budget given vs used per problem", xlabel="problem (run order)", ylabel="seconds")
    ax.legend(fontsize=7)
    cum_given = [sum(p.given_s for p in problems[: i + 1]) for i in xs]
    cum_used = [sum(p.used_s for p in problems[: i + 1]) for i in xs]
    axes[0, 1].plot(list(xs), cum_given, label="given", color="0.5")
    axes[0, 1].plot(list(xs), cum_used, label="used", color="tab:blue")
    axes[0, 1].set(title="Cumulative", xlabel="problem", ylabel="seconds")
    axes[0, 1].legend(fontsize=7)
    return _save(fig, path)


def _hbar(ax: Any, counts: dict[str, int], title: str) -> None:
    if counts:
        ax.barh(list(counts), list(counts.values()), color="tab:blue")
        for y, v in enumerate(counts.values()):
            ax.text(v, y, f" {v}", va="center", fontsize=8)
    else:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)


def plot_reasons(summary: TraceSummary, path: Path) -> Path:
    fig, axes = _figure(1, 2)
    _hbar(axes[0, 0], summary.stop_reasons, "Why problems stopped")
    _hbar(axes[0, 1], summary.candidate_reasons, "Why candidates ended")
    return _save(fig, path)


def plot_votes(problems: Sequence[ProblemRow], path: Path) -> Path:
    fig, axes = _figure(1, 1, (9.0, 0.8 + 0.3 * len(problems)))
    ax = axes[0, 0]
    for y, p in enumerate(problems):
        counts = sorted(p.votes.values(), reverse=True)
        total = sum(counts) or 1.0
        left = 0.0
        for k, v in enumerate(counts[:6]):
            ax.barh(y, v / total, left=left, color=f"C{k}", edgecolor="white")
            left += v / total
        label = f" → {p.answer}" + ("" if p.gold is None else (" ✓" if p.answer == p.gold else f" (gold {p.gold})"))
        ax.text(1.01, y, label if counts else " no votes", va="center", fontsize=7)
    ax.set_yticks(range(len(problems)), [p.id[:20] for p in problems], fontsize=7)
    ax.set_xlim(0, 1.35)
    ax.set(title="Vote shares per problem (largest first)", xlabel="share of votes")
    return _save(fig, path)


def plot_sandbox(problems: Sequence[ProblemRow], summary: TraceSummary, path: Path) -> Path:
    fig, axes = _figure(1, 2)
    _hbar(axes[0, 0], summary.sandbox, "Code block outcomes")
    times = [r.code_s for p in problems for c in p.candidates for r in c.rounds if r.ran_code]
    axes[0, 1].hist(times or [0.0], bins=20, color="tab:orange")
    axes[0, 1].set(title=f"Code seconds per block ({len(times)} blocks)", xlabel="seconds", ylabel="blocks")
    return _save(fig, path)


def plot_throughput(problems: Sequence[ProblemRow], path: Path) -> Path:
    fig, axes = _figure(1, 2)
    ends, rates = [], []
    t = 0.0
    for p in problems:
        t += p.used_s
        ends.append(t)
        rates.append(p.tokens / p.used_s if p.used_s > 0 else 0.0)
    axes[0, 0].plot(ends, rates, marker="o", color="tab:blue")
    axes[0, 0].set(title="Engine throughput over the run", xlabel="seconds into the run (problems only)",
                   ylabel="generated tokens / s")
    per_round = [r.tokens_out / r.gen_s for p in problems for c in p.candidates for r in c.rounds if r.gen_s > 0]
    axes[0, 1].hist(per_round or [0.0], bins=20, color="tab:green")
    axes[0, 1].set(title="Per-candidate decode speed per round", xlabel="tokens / s", ylabel="rounds")
    return _save(fig, path)


def plot_projection(proj: Projection, grid: GridResult | None, path: Path) -> Path:
    fig, axes = _figure(1, 2)
    ax = axes[0, 0]
    ends = [r.end_s / 3600 for r in proj.runs]
    top = max(proj.total_s / 3600, max(ends)) * 1.02
    ax.hist(ends, bins=[top * i / 60 for i in range(61)], color="tab:blue")  # on the whole scale: bars stay visible
    ax.axvline(proj.total_s / 3600, color="red", label="limit")
    ax.axvline(proj.limit_s / 3600, color="orange", linestyle="--", label="limit − safety margin")
    ax.set(title=f"Projected wall time, N={proj.n} M={proj.m}", xlabel="hours", ylabel="problem mixes")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    if grid is not None:
        ns = sorted({p.n for p in grid.projections})
        ms = sorted({p.m for p in grid.projections})
        cells = [[(1.0 if (q := grid.at(n, m)) is not None and q.fits else 0.0) for n in ns] for m in ms]
        ax.imshow(cells, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto", origin="lower")
        ax.set_xticks(range(len(ns)), [str(n) for n in ns], fontsize=7)
        ax.set_yticks(range(len(ms)), [str(m) for m in ms], fontsize=7)
        if grid.best is not None:
            ax.plot(ns.index(grid.best.n), ms.index(grid.best.m), "k*", markersize=12)
        ax.set(title="Fits (green) by N and M; ★ suggested", xlabel="N candidates", ylabel="M rounds")
    else:
        ax.axis("off")
    return _save(fig, path)


# -- the report --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileOptions:
    hardware: str  # t4x2, l4x4, h100 or a calibration file
    trace_candidates: int  # N of the run that wrote the trace
    load_s: float = 300.0
    mixes: int = 200
    grid_mixes: int = 40
    seed: int = 0
    grid: bool = True
    progress: bool = False


@dataclass(frozen=True)
class ProfileReport:
    report: Path
    plots: tuple[Path, ...]
    projection_json: Path
    verdict: str
    projection: Projection
    grid: GridResult | None
    summary: TraceSummary


def _h(seconds: float) -> str:
    return "∞" if math.isinf(seconds) else f"{seconds / 3600:.2f} h"


def _warning(s: TraceSummary) -> str:
    if s.code_blocks == 0 and s.answered == 0:
        return (" The trace has no code blocks and no answers: its token counts are not a real model's (the "
                "built-in tiny random model?), so this checks the pipeline, not a submission.")
    return ""


def verdict(s: TraceSummary, proj: Projection, grid: GridResult | None, hardware: str, preset: str) -> str:
    """The report's opening paragraph."""
    state = "**Fits.**" if proj.fits else "**Does not fit.**"
    share = s.gen_s + s.code_s
    where = (f"candidates spent {s.gen_s / share:.0%} of their time generating and {s.code_s / share:.0%} running "
             f"code" if share > 0 else "no candidate time was recorded")
    suggestion = ("no N/M on the grid fits" if grid is not None and grid.best is None else
                  f"the largest N/M that fits is N={grid.best.n}, M={grid.best.m}" if grid is not None and grid.best
                  else "the N/M grid was not searched")
    return (
        f"{state} On {hardware}, `{preset}` with N={proj.n}, M={proj.m} is projected to take {_h(proj.end(0.5))} "
        f"for {len(proj.runs[0].used_s)} problems (95th percentile {_h(proj.end(FIT_QUANTILE))} over "
        f"{len(proj.runs)} resampled problem mixes) against {_h(proj.total_s)} allowed and {_h(proj.limit_s)} "
        f"promised by the safety margin; at the 95th percentile {proj.cut(FIT_QUANTILE)} converging problems are "
        f"cut by their budgets and {proj.degraded(FIT_QUANTILE)} run at reduced effort. Without budgets the mix "
        f"would need {_h(quantile(proj.demand_s, 0.5))} (95th percentile {_h(quantile(proj.demand_s, FIT_QUANTILE))}). "
        f"{s.problems - s.converged} of the trace's {s.problems} problems never converged (they use whatever they "
        f"are given); {where}; {suggestion}.{_warning(s)}"
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    out += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return out


def _markdown(problems: Sequence[ProblemRow], s: TraceSummary, proj: Projection, grid: GridResult | None,
              text: str, plots: Sequence[Path], opts: ProfileOptions, config: Config) -> str:
    lines = ["# Time-budget profile", "", text, "", "## The trace", ""]
    lines += _table(["problems", "converged", "given", "used", "tokens", "code blocks", "correct"],
                    [[s.problems, s.converged, f"{s.given_s:.1f} s", f"{s.used_s:.1f} s", s.tokens, s.code_blocks,
                      f"{s.correct}/{s.graded}"]])
    lines += ["", "| id | stop | given s | used s | candidates | tokens | code | answer | gold |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {p.id} | {p.stop_reason} | {p.given_s:.1f} | {p.used_s:.2f} | {len(p.candidates)} | {p.tokens} | "
              f"{p.code_blocks} | {p.answer} | {'' if p.gold is None else p.gold} |" for p in problems]
    lines += ["", "## Projection", "",
              f"Hardware `{opts.hardware}`, configuration `{config.preset}` ({config.budget.num_problems} problems, "
              f"{_h(config.budget.total_seconds)}, safety margin {config.budget.safety_margin_s:.0f} s), model load "
              f"{opts.load_s:.0f} s, trace run's N = {opts.trace_candidates}, {len(proj.runs)} mixes, "
              f"seed {opts.seed}.",
              ""]
    lines += _table(["quantile", "wall time", "margin to the limit", "cut", "reduced effort"],
                    [[f"{q:.0%}", _h(proj.end(q)), f"{(proj.total_s - proj.end(q)) / 60:.1f} min", proj.cut(q),
                      proj.degraded(q)] for q in (0.05, 0.5, FIT_QUANTILE)])
    if grid is not None:
        lines += ["", f"N/M grid ({len(grid.projections[0].runs)} mixes each; fits = at the 95th percentile the run "
                  "ends within the promise and no converging problem is cut):", ""]
        ms = sorted({p.m for p in grid.projections})
        rows = [[n] + [("✓ " if (q := grid.at(n, m)) and q.fits else "✗ ") + _h(q.end(FIT_QUANTILE) if q else math.nan)
                       for m in ms] for n in sorted({p.n for p in grid.projections})]
        lines += _table(["N \\ M"] + [str(m) for m in ms], rows)
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)


def _projection_json(proj: Projection, grid: GridResult | None, opts: ProfileOptions) -> dict[str, Any]:
    def one(p: Projection) -> dict[str, Any]:
        return {"n": p.n, "m": p.m, "fits": p.fits, "end_p05_s": p.end(0.05), "end_p50_s": p.end(0.5),
                "end_p95_s": p.end(FIT_QUANTILE), "cut_p95": p.cut(FIT_QUANTILE),
                "degraded_p95": p.degraded(FIT_QUANTILE), "limit_s": p.limit_s}

    return {"options": dataclasses.asdict(opts), "projection": one(proj),
            "suggested": None if grid is None or grid.best is None else {"n": grid.best.n, "m": grid.best.m},
            "grid": [] if grid is None else [one(p) for p in grid.projections]}


def profile(trace: Path, out_dir: Path, config: Config, opts: ProfileOptions) -> ProfileReport:
    """Read the trace, project it, draw the plots and write the report into ``out_dir``."""
    from aimo_kernel.testing.hardware import throughput_model

    problems = read_trace(trace)
    replay = Replay(model=throughput_model(opts.hardware), trace_candidates=opts.trace_candidates,
                    max_new_tokens=config.sampling.max_new_tokens)
    n_problems = config.budget.num_problems
    proj = project(problems, config, replay, runs=mixes(len(problems), n_problems, opts.mixes, opts.seed),
                   load_s=opts.load_s)
    grid = None
    if opts.grid:
        runs = mixes(len(problems), n_problems, opts.grid_mixes, opts.seed)
        grid = search_grid(problems, config, replay, runs=runs, load_s=opts.load_s, progress=opts.progress)
    s = summarize(problems)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = (plot_timeline(problems, opts.trace_candidates, out_dir / "timeline.png"),
             plot_tokens(problems, out_dir / "tokens.png"), plot_budget(problems, out_dir / "budget.png"),
             plot_reasons(s, out_dir / "stop_reasons.png"), plot_votes(problems, out_dir / "votes.png"),
             plot_sandbox(problems, s, out_dir / "sandbox.png"), plot_throughput(problems, out_dir / "throughput.png"),
             plot_projection(proj, grid, out_dir / "projection.png"))
    text = verdict(s, proj, grid, opts.hardware, config.preset)
    report = out_dir / "report.md"
    report.write_text(_markdown(problems, s, proj, grid, text, plots, opts, config), encoding="utf-8")
    pj = out_dir / "projection.json"
    pj.write_text(json.dumps(_projection_json(proj, grid, opts), indent=2) + "\n", encoding="utf-8")
    return ProfileReport(report=report, plots=plots, projection_json=pj, verdict=text, projection=proj, grid=grid,
                         summary=s)


# -- command line ------------------------------------------------------------------------------------


ASSUMED_LOAD_S = 300.0  # the top of the simulation's U(120, 300) s model load, until preflight measures it


def load_seconds(given: float | None, hardware: str | None) -> float:
    """``--load-seconds``, else the start-up ``aimo-kernel preflight`` measured (its calibration file), else assumed."""
    if given is not None:
        return given
    if hardware and Path(hardware).is_file():
        try:
            measured = json.loads(Path(hardware).read_text(encoding="utf-8")).get("startup_s")
        except (OSError, ValueError, AttributeError):
            measured = None
        if isinstance(measured, (int, float)) and measured > 0:
            return float(measured)
    return ASSUMED_LOAD_S


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("profile", help="report where a run's time went and project the full competition")
    p.add_argument("trace", type=Path, help="a run's trace.jsonl")
    p.add_argument("--out", type=Path, help="report folder (default: profile/ next to the trace)")
    p.add_argument("--hardware", help="t4x2, l4x4, h100 or a calibration file (default: the preset's, else t4x2)")
    p.add_argument("--trace-candidates", type=int,
                   help="N of the run that wrote the trace (default: the projected configuration's N)")
    p.add_argument("--load-seconds", type=float, default=None,
                   help="model load before the first problem (default: a calibration file's measured start-up, "
                        f"else {ASSUMED_LOAD_S:.0f} s)")
    p.add_argument("--mixes", type=int, default=200, help="resampled problem mixes for the spread")
    p.add_argument("--grid-mixes", type=int, default=40, help="mixes per N/M pair of the suggestion grid")
    p.add_argument("--no-grid", action="store_true", help="skip the N/M suggestion")
    p.add_argument("--seed", type=int, default=0, help="seed of the problem resampling")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_config_args(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.mixes < 1 or args.grid_mixes < 1 or (args.trace_candidates is not None and args.trace_candidates < 1):
        raise UsageError("--mixes, --grid-mixes and --trace-candidates must be at least 1")
    opts = ProfileOptions(hardware=args.hardware or HARDWARE_FOR_PRESET.get(config.preset, "t4x2"),
                          trace_candidates=args.trace_candidates or config.tir.num_candidates,
                          load_s=load_seconds(args.load_seconds, args.hardware), mixes=args.mixes,
                          grid_mixes=args.grid_mixes, seed=args.seed,
                          grid=not args.no_grid, progress=not args.no_progress)
    out = args.out or args.trace.parent / "profile"
    try:
        result = profile(args.trace, out, config, opts)
    except ValueError as exc:  # a bad trace or hardware name: one line, not a traceback
        raise UsageError(str(exc)) from None
    print(result.verdict)
    print(f"report: {result.report} ({len(result.plots)} plots)")
    return 0
