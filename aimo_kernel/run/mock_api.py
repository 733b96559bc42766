"""Local stand-ins for both AIMO competition APIs, as strict as the real ones, for dry-runs and tests.

Two styles, each enforcing what its real counterpart enforces (measured by running Kaggle's
``kaggle_evaluation`` 0.3.0 for AIMO2 and 0.9.0 for AIMO3), with the same error kinds:

* ``kaggle_evaluation`` (AIMO2, AIMO3): :class:`MockInferenceServer` mirrors
  ``AIMO2InferenceServer`` / ``AIMO3InferenceServer`` (``serve()``, ``run_local_gateway()``) and
  :class:`LocalGateway` plays the gateway. Listeners: AIMO3 takes only plain functions
  (``types.FunctionType``: no lambda, bound method, ``functools.partial`` or callable object), AIMO2
  exactly one named callable; the endpoint is the function's ``__name__`` (no ``predict`` is
  ``SERVER_MISSING_ENDPOINT`` at the first call). The test CSV is read as the gateway reads it
  (``pl.read_csv`` defaults, after the package's one reader has refused ambiguous files), its rows
  shuffled and passed one at a time as one length-1 ``polars.Series`` per column, in column order, on
  the server's one worker thread (not the caller's). Each call must return a one-row DataFrame (polars
  or pandas): a bare int, numpy scalar or Series is ``GATEWAY_RAISED_EXCEPTION``; ``None`` or two
  rows ``INVALID_SUBMISSION``; AIMO2 needs the ``id`` column, equal to the id received with its
  dtype; rows with and without ``id`` in one run are ``INVALID_SUBMISSION`` ("Inconsistent prediction
  column counts"). An exception in ``predict`` is ``SERVER_RAISED_EXCEPTION``. Every call after the
  first has a deadline (AIMO2 1800 s, AIMO3 9 h): the gateway stops waiting *at* the deadline, while
  ``predict`` is still running, and fails the run (AIMO2 ``SERVER_CONNECTION_FAILED``, AIMO3
  ``GRPC_DEADLINE_EXCEEDED``). A server started more than 900 s after the process began is
  ``SERVER_NEVER_STARTED`` on a rerun; on a rerun ``serve()`` never returns (Kaggle stops the notebook
  once the gateway is done: here it raises :class:`RerunFinished`, a ``BaseException``). It writes
  ``submission.parquet`` (and ``result.json`` on a rerun).
* ``aimo`` (AIMO1): :class:`Aimo1Env` is ``aimo.make_env()``'s environment: ``make_env()`` and
  ``iter_test()`` work once, ``iter_test()`` prints and yields ``None`` while the current problem is
  unanswered, ``predict()`` refuses a non-DataFrame, a call with no problem outstanding, and a frame
  whose id or answer is wrong (:class:`Aimo1Error`). It writes ``submission.csv``.

Stricter than Kaggle, and saying so in the message: an answer that is not an integer in the
competition's range (the real gateways accept it and score it wrong), an AIMO3 id that differs from
the one received (the real AIMO3 gateway overwrites it).

:func:`write_competition_folder` lays out a fake competition data folder holding an importable
``kaggle_evaluation`` package or ``aimo`` module (thin files delegating here) and ``test.csv``, so
the Kaggle shim finds the API on ``sys.path`` as it does on Kaggle. Not covered: gRPC, Arrow
serialisation and the separate gateway container (the gateway runs in-process).
"""

from __future__ import annotations

import enum
import json
import os
import queue
import random
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimo_kernel.config.schema import CALL_DEADLINE_S as _CALL_DEADLINES
from aimo_kernel.config.schema import COMPETITION_ANSWERS
from aimo_kernel.errors import AimoError
from aimo_kernel.run.problems import read_problem_frame

ANSWER_MAX = {name: high for name, (_, _, high) in COMPETITION_ANSWERS.items()}
MAX_ANSWER = ANSWER_MAX["aimo3"]
# The gateway's deadline for every call after the first (the first one has none: the model loads there).
CALL_DEADLINE_S: dict[str, float] = {k: v for k, v in _CALL_DEADLINES.items() if v is not None}
# What the gateway reports when a call passes its deadline (AIMO2 0.3.0 has no deadline error kind).
DEADLINE_ERROR = {"aimo2": "SERVER_CONNECTION_FAILED", "aimo3": "GRPC_DEADLINE_EXCEEDED"}
STARTUP_LIMIT_SECONDS = 15 * 60.0
RERUN_ENV = "KAGGLE_IS_COMPETITION_RERUN"
AIMO1_PENDING_MESSAGE = "You must call `predict()` successfully before you can continue with `iter_test()`"
OWN_CHECK = "aimo_kernel's own check, stricter than Kaggle's gateway"


class GatewayErrorType(enum.Enum):
    """The error kinds Kaggle's gateway reports (``GatewayRuntimeErrorType``)."""

    UNSPECIFIED = 0
    SERVER_NEVER_STARTED = 1
    SERVER_CONNECTION_FAILED = 2
    SERVER_RAISED_EXCEPTION = 3
    SERVER_MISSING_ENDPOINT = 4
    GATEWAY_RAISED_EXCEPTION = 5
    INVALID_SUBMISSION = 6
    GRPC_DEADLINE_EXCEEDED = 7


class GatewayError(AimoError, RuntimeError):
    """The submission broke the API contract; ``code`` is the error kind Kaggle reports."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.error_type = GatewayErrorType[code]
        self.error_details = message


class RerunFinished(BaseException):
    """A rerun's ``serve()`` does not return: Kaggle stops the notebook once its gateway is done.

    A ``BaseException``, like the kill it stands for, so an ``except Exception`` does not swallow it.
    """


class Aimo1Error(AimoError):
    """The AIMO1 ``aimo`` environment refused a call (the real module raises plain exceptions)."""


@dataclass(frozen=True)
class CallRecord:
    id: Any
    answer: int
    seconds: float


def _process_start() -> float:
    """When this process began (the notebook's start on Kaggle); import time where /proc is missing."""
    try:
        return os.stat(f"/proc/{os.getpid()}").st_ctime
    except OSError:
        return time.time()


_PROCESS_START = _process_start()


def check_endpoint(func: Any, competition: str = "aimo3") -> None:
    """What ``relay.define_server`` checks when the server is built (``ValueError`` like the real one)."""
    if competition == "aimo3" and not isinstance(func, types.FunctionType):
        raise ValueError(f"Endpoint listeners must be plain functions, got {type(func).__name__}")
    if not callable(func):
        raise ValueError("Endpoint listeners passed to `serve` must be functions")
    if getattr(func, "__name__", "<lambda>") == "<lambda>":
        raise ValueError("Functions passed as endpoint listeners must be named")


class _Worker:
    """The server's single gRPC worker thread (``max_workers=1``): calls run there, one at a time.

    A daemon thread: a call the gateway gave up on keeps running, as it does in the real server.
    """

    def __init__(self) -> None:
        self._tasks: queue.Queue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = queue.Queue()
        threading.Thread(target=self._loop, name="grpc-worker", daemon=True).start()

    def _loop(self) -> None:
        while True:
            future, func, args = self._tasks.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(func(*args))
            except BaseException as exc:  # the gateway sees it as the server raising
                future.set_exception(exc)

    def submit(self, func: Callable[..., Any], args: tuple[Any, ...]) -> Future[Any]:
        future: Future[Any] = Future()
        self._tasks.put((future, func, args))
        return future


def _as_polars(result: Any) -> Any:
    import polars as pl

    if isinstance(result, pl.DataFrame):
        return result
    if type(result).__module__.startswith("pandas") and type(result).__name__ == "DataFrame":
        return pl.from_pandas(result)
    if result is None:
        raise GatewayError("INVALID_SUBMISSION", "predict returned None; it must return a one-row DataFrame")
    raise GatewayError("GATEWAY_RAISED_EXCEPTION",
                       f"predict must return a DataFrame with columns id, answer; got {type(result).__name__}")


def _check_id(frame: Any, id_series: Any, competition: str) -> None:
    if "id" not in frame.columns:
        if competition == "aimo2":
            raise GatewayError("INVALID_SUBMISSION", "Prediction missing column id")
        return
    if frame["id"].dtype != id_series.dtype or frame["id"].item(0) != id_series.item(0):
        own = f" ({OWN_CHECK}: AIMO3's overwrites the id)" if competition == "aimo3" else ""
        raise GatewayError("INVALID_SUBMISSION",
                           f"returned id {frame['id'].item(0)!r} ({frame['id'].dtype}) does not match "
                           f"the id received {id_series.item(0)!r} ({id_series.dtype}){own}")


def _validated(result: Any, id_series: Any, competition: str) -> tuple[Any, int]:
    """The returned frame (its id the one received) and its answer; GatewayError as Kaggle's would."""
    frame = _as_polars(result)
    if frame.height != 1 or "answer" not in frame.columns:
        raise GatewayError("INVALID_SUBMISSION",
                           f"predict must return one row with an 'answer' column; got shape {frame.shape} "
                           f"and columns {frame.columns}")
    _check_id(frame, id_series, competition)
    answer = frame["answer"].item(0)
    top = ANSWER_MAX[competition]
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer <= top:
        raise GatewayError("INVALID_SUBMISSION", f"answer must be an integer in 0..{top}, got {answer!r} "
                           f"({OWN_CHECK}, which accepts it and scores it wrong)")
    return frame, answer


class LocalGateway:
    """Serves a CSV's rows to ``predict`` the way the competition's gateway does, in one pass."""

    def __init__(self, predict: Callable[..., Any], *, competition: str = "aimo3",
                 call_deadline_s: float | None = None, seed: int | None = None,
                 worker: _Worker | None = None):
        if competition not in CALL_DEADLINE_S:
            raise ValueError(f"LocalGateway serves aimo2 or aimo3, got {competition!r}")
        check_endpoint(predict, competition)
        self.predict = predict
        self.competition = competition
        self.call_deadline_s = CALL_DEADLINE_S[competition] if call_deadline_s is None else call_deadline_s
        self.seed = seed
        self.records: list[CallRecord] = []
        self.frames: list[Any] = []
        self.widths: list[int] = []
        self.worker = worker or _Worker()
        self._used = False

    def run(self, csv_path: str | Path, out_dir: str | Path = ".") -> Path:
        if self._used:
            raise GatewayError("GATEWAY_RAISED_EXCEPTION", "the gateway serves its problems once")
        self._used = True
        frame = read_problem_frame(csv_path)
        order = list(range(frame.height))
        random.Random(self.seed).shuffle(order)
        for n, row in enumerate(order):
            series = [frame[col].slice(row, 1) for col in frame.columns]
            self._call(series, first=n == 0)
        return self._write(out_dir)

    def _wait(self, series: list[Any], *, first: bool) -> tuple[Any, float]:
        start = time.monotonic()
        future = self.worker.submit(self.predict, tuple(series))
        try:  # the first call has no deadline in the real gateway: the model loads there
            result = future.result(timeout=None if first else self.call_deadline_s)
        except FutureTimeout:
            raise GatewayError(DEADLINE_ERROR[self.competition],
                               f"predict did not answer within {self.call_deadline_s:g} s (the per-call deadline); "
                               "the gateway stopped waiting") from None
        except Exception as exc:
            raise GatewayError("SERVER_RAISED_EXCEPTION", f"{type(exc).__name__}: {exc}") from exc
        return result, time.monotonic() - start

    def _call(self, series: list[Any], *, first: bool) -> None:
        if getattr(self.predict, "__name__", "") != "predict":
            raise GatewayError("SERVER_MISSING_ENDPOINT", "Server did not register a listener for predict")
        result, seconds = self._wait(series, first=first)
        frame, answer = _validated(result, series[0], self.competition)
        if self.widths and frame.width != self.widths[0]:
            raise GatewayError("INVALID_SUBMISSION", "Inconsistent prediction column counts: "
                               f"{self.widths[0]} then {frame.width} ({frame.columns})")
        self.widths.append(frame.width)
        self.frames.append(frame.with_columns(series[0].alias("id")))  # the id the gateway sent (AIMO3 fills it in)
        self.records.append(CallRecord(id=series[0].item(0), answer=answer, seconds=seconds))

    def _write(self, out_dir: str | Path) -> Path:
        import polars as pl

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "submission.parquet"
        empty = pl.DataFrame({"id": [], "answer": []})
        frame = pl.concat(self.frames, how="vertical_relaxed") if self.frames else empty
        frame.select("id", "answer", *[c for c in frame.columns if c not in ("id", "answer")]).write_parquet(path)
        return path


class MockInferenceServer:
    """``kaggle_evaluation``'s inference server; subclasses name the competition and its test CSV."""

    competition = "aimo3"
    default_test_csv: Path | None = None

    def __init__(self, *endpoint_listeners: Callable[..., Any]) -> None:
        if not endpoint_listeners:
            raise ValueError("Must pass at least one endpoint listener, e.g. `predict`")
        if self.competition == "aimo2" and len(endpoint_listeners) != 1:
            raise TypeError(f"AIMO2InferenceServer takes exactly one endpoint listener, got {len(endpoint_listeners)}")
        for func in endpoint_listeners:
            check_endpoint(func, self.competition)
        self.endpoints = {func.__name__: func for func in endpoint_listeners}
        self.started_at: float | None = None
        self.gateway: LocalGateway | None = None
        self.worker = _Worker()

    def _start(self) -> float:
        self.started_at = time.time()
        return self.started_at - _PROCESS_START

    def _gateway(self) -> LocalGateway:
        # The gateway asks for "predict"; without it the first call fails with SERVER_MISSING_ENDPOINT.
        endpoint = self.endpoints.get("predict") or next(iter(self.endpoints.values()))
        self.gateway = LocalGateway(endpoint, competition=self.competition, worker=self.worker)
        return self.gateway

    def serve(self) -> None:
        """Off a rerun: starts and returns. On a rerun: Kaggle's gateway drives ``predict``, then the
        notebook is stopped: this never returns (:class:`RerunFinished`)."""
        elapsed = self._start()
        if os.getenv(RERUN_ENV) is None:
            return
        error: GatewayError | None = None
        try:
            if elapsed > STARTUP_LIMIT_SECONDS:
                raise GatewayError("SERVER_NEVER_STARTED",
                                   f"the server started {elapsed:.0f} s after the notebook; the limit is "
                                   f"{STARTUP_LIMIT_SECONDS:.0f} s")
            self._gateway().run(self._test_csv(None), Path.cwd())
        except GatewayError as exc:
            error = exc
        _write_result(error)
        raise RerunFinished("the rerun's gateway is done; Kaggle stops the notebook here")

    def run_local_gateway(self, data_paths: tuple[str, ...] | None = None, *args: Any, **kwargs: Any) -> None:
        elapsed = self._start()
        if elapsed > STARTUP_LIMIT_SECONDS:
            warnings.warn(f"{elapsed:.0f} seconds elapsed before server startup; the rerun's limit is "
                          f"{STARTUP_LIMIT_SECONDS:.0f} s", RuntimeWarning, stacklevel=2)
        self._gateway().run(self._test_csv(data_paths), Path.cwd())

    def _test_csv(self, data_paths: tuple[str, ...] | None) -> Path:
        if data_paths:
            return Path(data_paths[0])
        if self.default_test_csv is None:
            raise GatewayError("GATEWAY_RAISED_EXCEPTION", "no test CSV given and the server has no default")
        return self.default_test_csv


def _write_result(error: GatewayError | None) -> None:
    result: dict[str, Any] = {"Succeeded": error is None}
    if error is not None:
        result.update(ErrorType=error.error_type.value, ErrorName=error.code, ErrorDetails=error.error_details)
    Path("result.json").write_text(json.dumps(result))


class Aimo1Env:
    """The AIMO1 ``aimo`` module's environment: iterate-and-predict over a CSV, once."""

    def __init__(self, test_csv: str | Path, *, out_dir: str | Path = ".", seed: int | None = None) -> None:
        self.frame = read_problem_frame(test_csv).to_pandas()  # the package's one reader
        self.out_dir = Path(out_dir)
        self.seed = seed
        self.answers: list[tuple[Any, int]] = []
        self._pending: Any = None
        self._iterated = False

    @property
    def submission_path(self) -> Path:
        return self.out_dir / "submission.csv"

    def iter_test(self) -> Iterator[Any]:
        if self._iterated:
            raise Aimo1Error("`iter_test` can only be called once.")
        self._iterated = True
        return self._problems()

    def _problems(self) -> Iterator[Any]:
        import pandas as pd

        order = list(range(len(self.frame)))
        random.Random(self.seed).shuffle(order)
        for row in order:
            while self._pending is not None:  # the real module prints and yields None, it does not raise
                print(AIMO1_PENDING_MESSAGE, flush=True)
                yield None
            record = self.frame.iloc[row]
            self._pending = record["id"]
            test = pd.DataFrame({"id": [record["id"]], "problem": [record["problem"]]})
            yield test, pd.DataFrame({"id": [record["id"]], "answer": [0]})

    def predict(self, prediction: Any) -> None:
        import pandas as pd

        if not isinstance(prediction, pd.DataFrame):
            raise Aimo1Error(f"You must provide a DataFrame, got {type(prediction).__name__}.")
        if self._pending is None:
            done = len(self.answers) == len(self.frame)
            raise Aimo1Error("You have already made predictions for the full test set." if done
                             else "You must get the next test sample from `iter_test()` first.")
        self.answers.append((self._pending, _aimo1_answer(prediction, self._pending)))
        self._pending = None
        if len(self.answers) == len(self.frame):
            self.out_dir.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(self.answers, columns=["id", "answer"]).to_csv(self.submission_path, index=False)


def _aimo1_answer(prediction: Any, expected_id: Any) -> int:
    if len(prediction) != 1 or not {"id", "answer"} <= set(prediction.columns):
        raise Aimo1Error(f"predict needs one row with columns id, answer; got {len(prediction)} row(s) "
                         f"and columns {list(prediction.columns)}")
    if prediction["id"].iloc[0] != expected_id:
        raise Aimo1Error(f"predicted id {prediction['id'].iloc[0]!r} is not the current problem's {expected_id!r}")
    answer = prediction["answer"].iloc[0]
    if isinstance(answer, bool) or not hasattr(answer, "__index__") or not 0 <= int(answer) <= ANSWER_MAX["aimo1"]:
        raise Aimo1Error(f"answer must be an integer in 0..{ANSWER_MAX['aimo1']}, got {answer!r}")
    return int(answer)


def aimo1_make_env(test_csv: str | Path) -> Callable[[], Aimo1Env]:
    """``aimo.make_env`` over ``test_csv``: like the real one, it works once per process."""
    made = False

    def make_env() -> Aimo1Env:
        nonlocal made
        if made:
            raise Aimo1Error("You can only call `make_env()` once.")
        made = True
        return Aimo1Env(test_csv)

    return make_env


_SERVER_MODULE = '''"""Mock of the {comp} inference server (aimo_kernel.run.mock_api)."""
from pathlib import Path

from aimo_kernel.run.mock_api import MockInferenceServer


class {cls}(MockInferenceServer):
    competition = "{comp}"
    default_test_csv = Path(__file__).resolve().parent.parent / "test.csv"
'''
_AIMO1_MODULE = '''"""Mock of the AIMO1 `aimo` module (aimo_kernel.run.mock_api)."""
from pathlib import Path

from aimo_kernel.run.mock_api import aimo1_make_env

make_env = aimo1_make_env(Path(__file__).resolve().parent.parent / "test.csv")
'''
_CORE_FILES = {
    "kaggle_evaluation/__init__.py": "",
    "kaggle_evaluation/core/__init__.py": "",
    "kaggle_evaluation/core/base_gateway.py": (
        "from aimo_kernel.run.mock_api import GatewayError as GatewayRuntimeError  # noqa: F401\n"
        "from aimo_kernel.run.mock_api import GatewayErrorType as GatewayRuntimeErrorType  # noqa: F401\n"),
    "kaggle_evaluation/core/templates.py": (
        "from aimo_kernel.run.mock_api import LocalGateway as Gateway  # noqa: F401\n"
        "from aimo_kernel.run.mock_api import MockInferenceServer as InferenceServer  # noqa: F401\n"),
}


def write_competition_folder(dest: str | Path, api: str, problems: str | Path) -> Path:
    """A fake competition data folder: the ``api``'s importable package plus ``test.csv``."""
    folder = Path(dest)
    files: dict[str, str]
    if api == "aimo1":
        files = {"aimo/__init__.py": _AIMO1_MODULE}
    elif api in ("aimo2", "aimo3"):
        n = api[-1]
        files = {**_CORE_FILES, f"kaggle_evaluation/aimo_{n}_inference_server.py":
                 _SERVER_MODULE.format(comp=api, cls=f"AIMO{n}InferenceServer")}
    else:
        raise ValueError(f"unknown competition API {api!r}; choose aimo1, aimo2 or aimo3")
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (folder / "test.csv").write_bytes(Path(problems).read_bytes())
    return folder
