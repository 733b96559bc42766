"""The Kaggle competition shim: the one call the submission notebook makes, :func:`run`.

Covers finding the competition data folder and which API it ships (AIMO1's ``aimo`` module, AIMO2's
or AIMO3's ``kaggle_evaluation`` inference server), choosing the configuration for that competition
and the GPUs seen (``preset="auto"``; a named preset that contradicts them is corrected, loudly:
:func:`resolve_config`), putting the folder on ``sys.path``, serving a ``predict`` endpoint made by
:func:`make_predict` (a closure over a :class:`~aimo_kernel.run.runner.Runner`: the model loads lazily
inside the first call, the only one without a deadline), ``serve()`` under
``KAGGLE_IS_COMPETITION_RERUN`` and ``run_local_gateway`` otherwise, and AIMO1's
``make_env()``/``iter_test()``/``predict()`` loop. Nothing here raises out of a prediction, whatever
it is called with: any failure answers the fallback, logs why, and is counted in the summary.
:func:`serve_mock` drives the same code through the local mocks (the dry-run). Not covered: solving
(runner, solver), installing wheels (the notebook), the mock APIs themselves
(:mod:`aimo_kernel.run.mock_api`).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimo_kernel.config import Config, apply_overrides
from aimo_kernel.config.presets import (
    AUTO,
    Gpu,
    choose_preset,
    describe_gpus,
    for_competition,
    get_preset,
    hardware_misfit,
    uses_local_gpus,
)
from aimo_kernel.config.schema import COMPETITION_ANSWERS
from aimo_kernel.errors import AimoError
from aimo_kernel.run.runner import ProblemRecord, Runner

log = logging.getLogger(__name__)

KAGGLE_INPUT = Path("/kaggle/input")
RERUN_ENV = "KAGGLE_IS_COMPETITION_RERUN"
# Set by CI and local runs of the notebook; on Kaggle none of them is set.
ENV_COMPETITION_DIR = "AIMO_COMPETITION_DIR"
ENV_TEST_CSV = "AIMO_TEST_CSV"
ENV_OVERRIDES = "AIMO_SET"  # ';'-separated section.field=value overrides
_SERVERS = {
    "aimo2": ("kaggle_evaluation.aimo_2_inference_server", "AIMO2InferenceServer"),
    "aimo3": ("kaggle_evaluation.aimo_3_inference_server", "AIMO3InferenceServer"),
}


class ShimError(AimoError, RuntimeError):
    """The competition API could not be found or started."""


@dataclass(frozen=True)
class Competition:
    api: str  # aimo1 | aimo2 | aimo3
    folder: Path


@dataclass(frozen=True)
class ShimResult:
    api: str
    mode: str  # local (run_local_gateway / AIMO1 loop) | serve (rerun)
    submission: Path | None
    records: list[ProblemRecord]
    lines: tuple[str, ...] = ()  # the runner's summary: model load, fallback answers and why

    def summary(self) -> str:
        where = self.submission if self.submission is not None else "written by Kaggle's gateway"
        head = f"{self.api} ({self.mode}): answered {len(self.records)} problem(s); submission: {where}"
        return "\n".join([head, *self.lines])


_DETECT = object()  # run(gpus=...) default: ask the machine


def detect_api(folder: str | Path) -> str | None:
    """Which API a competition data folder ships, or None."""
    root = Path(folder)
    if (root / "kaggle_evaluation" / "aimo_3_inference_server.py").is_file():
        return "aimo3"
    if (root / "kaggle_evaluation" / "aimo_2_inference_server.py").is_file():
        return "aimo2"
    if (root / "aimo" / "__init__.py").is_file() or (root / "aimo.py").is_file() or any(root.glob("aimo.*.so")):
        return "aimo1"
    return None


def find_competition(folder: str | Path | None = None, *, api: str | None = None,
                     prefer: str | None = None) -> Competition:
    """The competition folder: ``folder``, else ``$AIMO_COMPETITION_DIR``, else searched under /kaggle/input."""
    given = folder or os.environ.get(ENV_COMPETITION_DIR)
    if given:
        candidates = [Path(given)]
    elif KAGGLE_INPUT.is_dir():
        children = [p for p in sorted(KAGGLE_INPUT.iterdir()) if p.is_dir()]
        candidates = children + [g for c in children for g in sorted(c.iterdir()) if g.is_dir()]
    else:
        candidates = []
    found = [Competition(a, c.resolve()) for c in candidates if (a := detect_api(c)) is not None]
    if api is not None:
        found = [c for c in found if c.api == api]
    if not found:
        where = str(given) if given else f"{KAGGLE_INPUT}/*"
        wanted = api or "aimo1, aimo2 or aimo3"
        raise ShimError(f"no competition API ({wanted}) found in {where}; attach the competition's data")
    return next((c for c in found if c.api == prefer), found[0])


def to_competition_range(value: int, api: str, fallback: int = 0) -> int:
    """AIMO1/2 take the answer mod 1000; AIMO3 answers outside 0..99999 become the fallback."""
    top = COMPETITION_ANSWERS[api][2]
    if 0 <= value <= top:
        return value
    if api in ("aimo1", "aimo2"):
        return value % (top + 1)
    return fallback if 0 <= fallback <= top else 0


def _gold(answer: Any) -> int | None:
    value = _item(answer)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        return int(value)
    return int(value) if isinstance(value, float) and value.is_integer() else None


def _item(value: Any) -> Any:
    """The one value of a length-1 Series (the first of a longer one); a plain value as it is."""
    if hasattr(value, "item") and hasattr(value, "__len__"):
        return value.item(0) if len(value) == 1 else (value[0] if len(value) else None)
    return value


def _column(columns: Sequence[Any], named: Mapping[str, Any], name: str, position: int) -> Any:
    """The argument for one CSV column: by Series name, then by keyword, then by position."""
    for col in columns:
        if getattr(col, "name", None) == name:
            return col
    if name in named:
        return named[name]
    named_series = any(isinstance(getattr(c, "name", None), str) for c in columns)
    return columns[position] if position < len(columns) and not (named_series and position >= 2) else None


def make_predict(runner: Runner, api: str, progress: Any = None) -> Callable[..., Any]:
    """The AIMO2/AIMO3 endpoint over ``runner``: a plain function named ``predict``."""
    fallback = runner.config.vote.fallback_answer

    def predict(*columns: Any, **named: Any) -> Any:
        """One length-1 Series per CSV column in, one row (the id received, an int answer) out; never raises."""
        id_ = _column(columns, named, "id", 0)
        try:
            text = _item(_column(columns, named, "problem", 1))
            value = runner.answer(_item(id_), "" if text is None else str(text),
                                  _gold(_column(columns, named, "answer", 2)))
        except Exception as exc:  # an exception here fails the whole submission: answer the fallback instead
            if runner.strict:
                raise
            log.error("predict: %s: %s; answering the fallback %d", type(exc).__name__, exc, fallback)
            runner.record_fallback(_safe_item(id_), f"{type(exc).__name__}: {exc}")
            value = fallback
        _tick(progress)
        return _answer_frame(id_, to_competition_range(value, api, fallback))

    return predict


def _safe_item(value: Any) -> Any:
    try:
        return _item(value)
    except Exception:  # an id that cannot even be read is still recorded
        return repr(value)


def _tick(progress: Any) -> None:
    try:
        if progress is not None:
            progress.update(1)
    except Exception as exc:  # a broken progress bar must not cost an answer
        log.warning("progress update failed: %s", exc)


def _id_column(id_: Any) -> Any:
    """The id received, as a one-row ``id`` Series of the same dtype (never left out: AIMO3 rejects a run
    that mixes rows with and without an id)."""
    import polars as pl

    if isinstance(id_, pl.Series):
        if len(id_) == 1:
            return id_.alias("id")
        return id_.slice(0, 1).alias("id") if len(id_) else pl.Series("id", [None], dtype=id_.dtype)
    if type(id_).__module__.startswith("pandas") and type(id_).__name__ == "Series":
        return _id_column(pl.from_pandas(id_))
    try:
        return pl.Series("id", [id_])
    except Exception:  # an id polars cannot hold: its text, still one row
        return pl.Series("id", [repr(id_)])


def _answer_frame(id_: Any, value: int) -> Any:
    import polars as pl

    answer = pl.Series("answer", [value], dtype=pl.Int64)
    try:
        return pl.DataFrame([_id_column(id_), answer])
    except Exception as exc:
        log.error("cannot echo the id %r: %s", id_, exc)
        return pl.DataFrame([pl.Series("id", [None], dtype=pl.String), answer])


def _import_from(module_name: str, folder: Path) -> Any:
    """Import ``module_name`` from ``folder`` (put on ``sys.path``), not from a stale cached copy."""
    top = module_name.split(".")[0]
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        file = getattr(sys.modules[name], "__file__", None)
        if file is None or not Path(file).resolve().is_relative_to(folder):
            del sys.modules[name]
    if str(folder) in sys.path:
        sys.path.remove(str(folder))
    sys.path.insert(0, str(folder))  # first, so no other copy of the API shadows this one
    importlib.invalidate_caches()
    return importlib.import_module(module_name)


def _env_overrides() -> list[str]:
    return [item.strip() for item in os.environ.get(ENV_OVERRIDES, "").split(";") if item.strip()]


def _setup_logging() -> None:
    if not logging.getLogger().handlers:  # a notebook has none: show the shim's and the runner's messages
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def resolve_config(preset: str | None, competition: str, gpus: Sequence[Gpu] | None, *,
                   config: Config | None = None, overrides: Sequence[str] = ()) -> tuple[Config, list[str]]:
    """The configuration for ``competition`` on ``gpus``, and the lines that say what was seen and chosen.

    ``auto`` (or None) picks the preset (:func:`~aimo_kernel.config.presets.choose_preset`); a named
    preset whose engine does not fit the GPUs is replaced by auto's choice, and one made for another
    competition gets this competition's answer rule and time limits, each with one loud line.
    """
    lines = [f"aimo_kernel: competition {competition}; {describe_gpus(gpus)}"]
    if config is not None:
        base = config
    elif preset in (None, AUTO):
        name, why = choose_preset(competition, gpus)
        lines.append(f"aimo_kernel: preset auto -> {name} ({why})")
        base = get_preset(name)
    else:
        base = get_preset(preset)
    cfg = apply_overrides(for_competition(base, competition), overrides)
    misfit = hardware_misfit(cfg.preset, gpus) if uses_local_gpus(cfg.engine) else ""
    if misfit and config is None:
        name, why = choose_preset(competition, gpus)
        lines.append(f"!!! aimo_kernel: preset {cfg.preset} does not fit this machine ({misfit}); using {name} "
                     f"instead ({why}) !!!")
        cfg = apply_overrides(for_competition(get_preset(name), competition), overrides)
    elif misfit:
        lines.append(f"!!! aimo_kernel: the given config does not fit this machine: {misfit} !!!")
    if base.competition != competition:
        lines.append(f"!!! aimo_kernel: preset {base.preset} targets {base.competition}, the folder ships "
                     f"{competition}: using {competition}'s answers ({cfg.vote.min_answer}..{cfg.vote.max_answer}) "
                     "and time limits !!!")
    lines.append(f"aimo_kernel: running preset {cfg.preset} for {cfg.competition}: engine {cfg.engine.backend} "
                 f"{cfg.engine.model} (TP={cfg.engine.tensor_parallel_size}), N={cfg.tir.num_candidates}, "
                 f"M={cfg.tir.max_rounds}, {cfg.budget.total_seconds / 3600:g} h")
    return cfg, lines


def _announce(lines: Sequence[str]) -> None:
    for line in lines:
        print(line, flush=True)  # the notebook's output, not only the log
        log.info("%s", line)


def run(preset: str | None = AUTO, *, config: Config | None = None, overrides: Sequence[str] = (),
        competition_dir: str | Path | None = None, api: str | None = None, test_csv: str | Path | None = None,
        engine_factory: Any = None, gpus: Any = _DETECT) -> ShimResult:
    """Answer the competition's problems through whichever API its data folder ships.

    ``gpus``: the machine's GPUs (default: detected, see :mod:`aimo_kernel.run.machine`).
    """
    _setup_logging()
    prefer = None if config is not None or preset in (None, AUTO) else get_preset(preset).competition
    comp = find_competition(competition_dir, api=api, prefer=config.competition if config else prefer)
    if gpus is _DETECT:
        from aimo_kernel.run.machine import detect_gpus

        gpus = detect_gpus()
    cfg, lines = resolve_config(preset, comp.api, gpus, config=config, overrides=[*overrides, *_env_overrides()])
    _announce([*lines, f"aimo_kernel: {comp.api} API from {comp.folder}"])
    runner = Runner(cfg, engine_factory=engine_factory)  # cheap: the engine loads in the first predict
    try:
        if comp.api == "aimo1":
            env = _import_from("aimo", comp.folder).make_env()
            submission = _aimo1_loop(runner, env)
            return ShimResult("aimo1", "local", submission, runner.records, tuple(runner.summary_lines()))
        return _serve(runner, comp, test_csv)
    finally:
        runner.close()


def _serve(runner: Runner, comp: Competition, test_csv: str | Path | None) -> ShimResult:
    module_name, class_name = _SERVERS[comp.api]
    server = getattr(_import_from(module_name, comp.folder), class_name)(make_predict(runner, comp.api))
    if os.getenv(RERUN_ENV):
        log.info("competition rerun: serving predict")
        server.serve()  # on Kaggle this never returns: the gateway calls predict from its own container
        return ShimResult(comp.api, "serve", None, runner.records, tuple(runner.summary_lines()))
    csv = Path(test_csv or os.environ.get(ENV_TEST_CSV) or comp.folder / "test.csv")
    log.info("local run: the gateway serves %s", csv)
    server.run_local_gateway((str(csv),))
    return ShimResult(comp.api, "local", Path("submission.parquet").resolve(), runner.records,
                      tuple(runner.summary_lines()))


def _aimo1_loop(runner: Runner, env: Any, gold: Mapping[str, int | None] | None = None,
                progress: Any = None) -> Path:
    """AIMO1: answer each problem ``iter_test()`` hands out, then ``predict`` it before asking for the next."""
    for item in env.iter_test():
        if item is None:  # the API says the last answer was not taken; asking again would loop forever
            log.error("the aimo API refused to hand out the next problem; stopping")
            break
        test, sample = item
        env.predict(_aimo1_answer(runner, test, sample, gold or {}))
        _tick(progress)
    path = getattr(env, "submission_path", None)
    return Path(path if path is not None else "submission.csv").resolve()


def _aimo1_answer(runner: Runner, test: Any, sample: Any, gold: Mapping[str, int | None]) -> Any:
    """The filled-in ``sample_submission`` for one problem; never raises."""
    fallback = runner.config.vote.fallback_answer
    try:
        problem_id = test["id"].iloc[0]
        value = runner.answer(problem_id, str(test["problem"].iloc[0]), gold.get(str(problem_id)))
    except Exception as exc:
        if runner.strict:
            raise
        log.error("aimo1 problem: %s: %s; answering the fallback %d", type(exc).__name__, exc, fallback)
        runner.record_fallback(_safe_item(getattr(test, "id", None)), f"{type(exc).__name__}: {exc}")
        value = fallback
    value = to_competition_range(value, "aimo1", fallback)
    try:
        return sample.assign(answer=[value])
    except Exception as exc:
        log.error("cannot fill in sample_submission: %s", exc)
        import pandas as pd

        return pd.DataFrame({"id": [test["id"].iloc[0]], "answer": [value]})


def serve_mock(runner: Runner, problems: str | Path, out_dir: str | Path, *, seed: int | None = 0,
               progress: Any = None, call_deadline_s: float | None = None) -> Path:
    """Serve ``problems`` through the mock of ``runner``'s competition API, in-process (the dry-run)."""
    from aimo_kernel.run.mock_api import Aimo1Env, LocalGateway
    from aimo_kernel.run.problems import read_problems

    api = runner.config.competition
    if api == "aimo1":
        gold = {p.id: p.answer for p in read_problems(problems)}
        return _aimo1_loop(runner, Aimo1Env(problems, out_dir=out_dir, seed=seed), gold, progress)
    predict = make_predict(runner, api, progress)
    return LocalGateway(predict, competition=api, seed=seed, call_deadline_s=call_deadline_s).run(problems, out_dir)
