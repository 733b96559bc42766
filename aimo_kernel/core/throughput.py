"""Measured decode speed, for planning: the step-time fit a calibration file holds and what it projects.

``aimo-kernel calibrate`` and ``aimo-kernel preflight`` measure decode steps on the real machine and
write them, fitted to ``step = fixed + batch × per_sequence + batch × context × per_context_token``, into
a calibration file (its ``fit`` table, plus ``startup_s``). With ``budget.calibration`` naming that file,
the run's budget planner projects how long one problem takes at each speed level (``max_rounds`` rounds
of ``ROUND_FILL`` × ``max_new_tokens`` tokens at the level's batch, no early stop) and gives each problem
the fullest effort that fits the seconds it was given. Reading and projecting only: measuring is
:mod:`aimo_kernel.tools.calibrate`'s, the plan :mod:`aimo_kernel.core.budget`'s.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from aimo_kernel.config import Config
from aimo_kernel.core.budget import SPEED_LEVELS, effort
from aimo_kernel.errors import AimoError

ROUND_FILL = 0.5  # share of a round's token cap a round writes on average (projection, conservative)


class CalibrationError(AimoError, ValueError):
    """A calibration file that cannot be read or holds no usable fit."""


@dataclass(frozen=True)
class StepFit:
    """``step = fixed_s + batch × per_sequence_s + batch × context × per_context_token_s``."""

    fixed_s: float
    per_sequence_s: float
    per_context_token_s: float
    r2: float

    def predict(self, batch: int, context: float) -> float:
        return self.fixed_s + batch * self.per_sequence_s + batch * context * self.per_context_token_s


@dataclass(frozen=True)
class Calibrated:
    """What planning reads from a calibration file."""

    fit: StepFit
    startup_s: float


def read_calibration(path: str | Path) -> Calibrated:
    """The fit and start-up time of a calibration file; CalibrationError naming the file and what is wrong."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"calibration file {path}: {exc}") from None
    table = data.get("fit") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise CalibrationError(f"calibration file {path}: no 'fit' table (write it with aimo-kernel calibrate)")
    try:
        fit = StepFit(**{k: float(table[k]) for k in ("fixed_s", "per_sequence_s", "per_context_token_s", "r2")})
        startup = float(data.get("startup_s", 0.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise CalibrationError(f"calibration file {path}: bad 'fit' table ({type(exc).__name__}: {exc})") from None
    terms = (fit.fixed_s, fit.per_sequence_s, fit.per_context_token_s, startup)
    if not all(math.isfinite(t) and t >= 0 for t in terms) or fit.predict(1, 1.0) <= 0:
        raise CalibrationError(f"calibration file {path}: the fit must be finite, >= 0 and not all 0, got {table}")
    return Calibrated(fit=fit, startup_s=startup)


def problem_seconds(config: Config, fit: StepFit, candidates: int, rounds: int) -> float:
    """Projected decode time of one problem: ``rounds`` rounds of ``ROUND_FILL`` of the token cap."""
    tokens = ROUND_FILL * config.sampling.max_new_tokens
    context = config.engine.max_model_len / 4 + rounds * tokens / 2  # a prompt, then the growing trace
    batch = min(candidates, config.engine.max_num_seqs)
    waves = math.ceil(candidates / batch)  # candidates beyond the engine's sequence limit wait for a slot
    return waves * rounds * tokens * fit.predict(batch, context)


def level_seconds(config: Config, fit: StepFit) -> tuple[float, ...]:
    """Projected decode time of one problem at each speed level (the planner's ``level_seconds``)."""
    return tuple(problem_seconds(config, fit, *effort(config.tir, level)) for level in range(len(SPEED_LEVELS)))
