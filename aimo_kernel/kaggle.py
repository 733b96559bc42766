"""The Kaggle competition shim: the one call the submission notebook makes, :func:`run`.

Covers finding the competition data folder and which API it ships (AIMO1's ``aimo`` module, AIMO2's
or AIMO3's ``kaggle_evaluation`` inference server), putting that folder on ``sys.path``, serving
the module-level :func:`predict` endpoint over a :class:`~aimo_kernel.runner.Runner` (the model loads
lazily inside the first call, the only one without a deadline), ``serve()`` under
``KAGGLE_IS_COMPETITION_RERUN`` and ``run_local_gateway`` otherwise, and AIMO1's
``make_env()``/``iter_test()``/``predict()`` loop. Nothing here raises out of a prediction: any
failure answers the fallback and logs why. :func:`serve_mock` drives the same code through the local
mocks for ``aimo-kernel dry-run``. Not covered: solving (runner, solver), installing wheels (the
notebook), the mock APIs themselves (:mod:`aimo_kernel.mock_api`).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimo_kernel.config import Config, load_config
from aimo_kernel.runner import ProblemRecord, Runner

log = logging.getLogger(__name__)

API_STYLES = ("aimo1", "aimo2", "aimo3")
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
_ANSWER_MAX = {"aimo1": 999, "aimo2": 999, "aimo3": 99_999}


class ShimError(RuntimeError):
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

    def summary(self) -> str:
        where = self.submission if self.submission is not None else "written by Kaggle's gateway"
        return f"{self.api} ({self.mode}): answered {len(self.records)} problem(s); submission: {where}"


@dataclass
class _Session:
    runner: Runner
    api: str
    progress: Any = None


_SESSION: _Session | None = None


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
    top = _ANSWER_MAX[api]
    if 0 <= value <= top:
        return value
    if api in ("aimo1", "aimo2"):
        return value % (top + 1)
    return fallback if 0 <= fallback <= top else 0


def _gold(answer: Any) -> int | None:
    if answer is None:
        return None
    value = answer.item(0)
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        return int(value)
    return int(value) if isinstance(value, float) and value.is_integer() else None


def predict(id_: Any, problem: Any, answer: Any = None) -> Any:
    """The AIMO2/AIMO3 endpoint: one-row Series in, a one-row frame (received id, int answer) out; never raises."""
    session = _SESSION
    api = session.api if session else "aimo3"
    fallback = session.runner.config.vote.fallback_answer if session else 0
    try:
        if session is None:
            raise ShimError("predict was called before aimo_kernel.kaggle.run() set up the runner")
        text = problem.item(0)
        value = session.runner.answer(id_.item(0), "" if text is None else str(text), _gold(answer))
    except Exception as exc:  # an exception here fails the whole submission: answer the fallback instead
        log.error("predict: %s: %s; answering the fallback %d", type(exc).__name__, exc, fallback)
        value = fallback
    _tick(session.progress if session else None)
    return _answer_frame(id_, to_competition_range(value, api, fallback))


def _tick(progress: Any) -> None:
    try:
        if progress is not None:
            progress.update(1)
    except Exception as exc:  # a broken progress bar must not cost an answer
        log.warning("progress update failed: %s", exc)


def _answer_frame(id_: Any, value: int) -> Any:
    import polars as pl

    answer = pl.Series("answer", [value], dtype=pl.Int64)
    try:
        if isinstance(id_, pl.Series) and len(id_) == 1:
            return pl.DataFrame([id_.alias("id"), answer])  # same values, same dtype as received
    except Exception as exc:
        log.error("cannot echo the id %r: %s", id_, exc)
    return pl.DataFrame([answer])  # AIMO3 fills the id in itself


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


def run(preset: str | None = None, *, config: Config | None = None, overrides: Sequence[str] = (),
        competition_dir: str | Path | None = None, api: str | None = None, test_csv: str | Path | None = None,
        engine_factory: Any = None) -> ShimResult:
    """Answer the competition's problems through whichever API its data folder ships."""
    global _SESSION
    _setup_logging()
    cfg = config or load_config(preset=preset, overrides=[*overrides, *_env_overrides()])
    comp = find_competition(competition_dir, api=api, prefer=cfg.competition)
    if comp.api != cfg.competition:
        log.warning("the competition folder ships the %s API but preset %s targets %s; answers are mapped "
                    "to %s's range", comp.api, cfg.preset, cfg.competition, comp.api)
    log.info("competition API %s from %s, preset %s", comp.api, comp.folder, cfg.preset)
    runner = Runner(cfg, engine_factory=engine_factory)  # cheap: the engine loads in the first predict
    try:
        if comp.api == "aimo1":
            env = _import_from("aimo", comp.folder).make_env()
            return ShimResult("aimo1", "local", _aimo1_loop(runner, env), runner.records)
        _SESSION = _Session(runner, comp.api)
        return _serve(runner, comp, test_csv)
    finally:
        runner.close()


def _serve(runner: Runner, comp: Competition, test_csv: str | Path | None) -> ShimResult:
    module_name, class_name = _SERVERS[comp.api]
    server = getattr(_import_from(module_name, comp.folder), class_name)(predict)
    if os.getenv(RERUN_ENV):
        log.info("competition rerun: serving predict")
        server.serve()  # blocks on Kaggle: the gateway calls predict from its own container
        return ShimResult(comp.api, "serve", None, runner.records)
    csv = Path(test_csv or os.environ.get(ENV_TEST_CSV) or comp.folder / "test.csv")
    log.info("local run: the gateway serves %s", csv)
    server.run_local_gateway((str(csv),))
    return ShimResult(comp.api, "local", Path("submission.parquet").resolve(), runner.records)


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
        log.error("aimo1 problem: %s: %s; answering the fallback %d", type(exc).__name__, exc, fallback)
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
    global _SESSION
    from aimo_kernel.mock_api import Aimo1Env, LocalGateway

    api = runner.config.competition
    if api == "aimo1":
        from aimo_kernel.problems import read_problems

        gold = {p.id: p.answer for p in read_problems(problems)}
        return _aimo1_loop(runner, Aimo1Env(problems, out_dir=out_dir, seed=seed), gold, progress)
    previous, _SESSION = _SESSION, _Session(runner, api, progress)
    try:
        return LocalGateway(predict, competition=api, seed=seed, call_deadline_s=call_deadline_s).run(problems, out_dir)
    finally:
        _SESSION = previous
