"""Local stand-ins for both AIMO competition APIs, for dry-runs and tests.

Two styles, each enforcing the rules its real counterpart enforces, with the same error kinds:

* ``kaggle_evaluation`` (AIMO2, AIMO3): :class:`MockInferenceServer` mirrors
  ``AIMO2InferenceServer`` / ``AIMO3InferenceServer`` (``serve()``, ``run_local_gateway()``) and
  :class:`LocalGateway` plays the gateway. Endpoints are registered by ``__name__`` (a lambda or a
  non-callable is a ``ValueError``, AIMO3 also refuses bound methods; no function named ``predict``
  is ``SERVER_MISSING_ENDPOINT`` at the first call); the CSV's rows come in a shuffled order, one at
  a time, as one-row ``polars.Series`` per column in column order; each call must return a one-row
  DataFrame (polars or pandas) with an integer ``answer`` in the competition's range and, if it has an
  ``id``, the id it received with the same dtype (AIMO2 requires the ``id``); a bare int is refused
  (``INVALID_SUBMISSION``); an exception in ``predict`` is ``SERVER_RAISED_EXCEPTION``; calls after
  the first have a deadline (``GRPC_DEADLINE_EXCEEDED``); a gateway serves once; a server started
  more than 900 s after the process began is ``SERVER_NEVER_STARTED`` on a rerun. It writes
  ``submission.parquet`` (and ``result.json`` on a rerun, as Kaggle's gateway does).
* ``aimo`` (AIMO1): :class:`Aimo1Env` is ``aimo.make_env()``'s environment: ``make_env()`` and
  ``iter_test()`` work once, ``iter_test()`` prints and yields ``None`` while the current problem is
  unanswered, ``predict()`` refuses a non-DataFrame, a call with no problem outstanding, and a frame
  whose id or answer is wrong (:class:`Aimo1Error`). It writes ``submission.csv``.

:func:`write_competition_folder` lays out a fake competition data folder holding an importable
``kaggle_evaluation`` package or ``aimo`` module (thin files delegating here) and ``test.csv``, so
the Kaggle shim finds the API on ``sys.path`` as it does on Kaggle. Not covered: gRPC, Arrow
serialisation and the separate gateway container (the gateway runs in-process). The answer-range
check is stricter than Kaggle's, which would score an out-of-range answer as wrong rather than fail.
"""

from __future__ import annotations

import enum
import inspect
import json
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_ANSWER = 99_999
ANSWER_MAX = {"aimo1": 999, "aimo2": 999, "aimo3": MAX_ANSWER}
# The gateway's deadline for every call after the first (the first one has none: the model loads there).
CALL_DEADLINE_S = {"aimo2": 30 * 60.0, "aimo3": 9 * 3600.0}
STARTUP_LIMIT_SECONDS = 15 * 60.0
RERUN_ENV = "KAGGLE_IS_COMPETITION_RERUN"
AIMO1_PENDING_MESSAGE = "You must call `predict()` successfully before you can continue with `iter_test()`"


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


class GatewayError(RuntimeError):
    """The submission broke the API contract; ``code`` is the error kind Kaggle reports."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.error_type = GatewayErrorType[code]
        self.error_details = message


class Aimo1Error(Exception):
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
    if not callable(func):
        raise ValueError("Endpoint listeners passed to `serve` must be functions")
    if getattr(func, "__name__", "<lambda>") == "<lambda>":
        raise ValueError("Functions passed as endpoint listeners must be named")
    if competition == "aimo3" and inspect.ismethod(func):
        raise ValueError("Endpoint listeners must be plain functions, not bound methods")


def _as_polars(result: Any) -> Any:
    import polars as pl

    if isinstance(result, pl.DataFrame):
        return result
    if type(result).__module__.startswith("pandas") and type(result).__name__ == "DataFrame":
        return pl.from_pandas(result)
    raise GatewayError("INVALID_SUBMISSION",
                       f"predict must return a DataFrame with columns id, answer; got {type(result).__name__}")


def _validated_answer(result: Any, id_series: Any, competition: str) -> int:
    frame = _as_polars(result)
    if frame.height != 1 or "answer" not in frame.columns:
        raise GatewayError("INVALID_SUBMISSION",
                           f"predict must return one row with an 'answer' column; got shape {frame.shape} "
                           f"and columns {frame.columns}")
    if "id" not in frame.columns and competition == "aimo2":
        raise GatewayError("INVALID_SUBMISSION", "Prediction missing column id")
    if "id" in frame.columns and (frame["id"].dtype != id_series.dtype or frame["id"].item(0) != id_series.item(0)):
        raise GatewayError("INVALID_SUBMISSION",
                           f"returned id {frame['id'].item(0)!r} ({frame['id'].dtype}) does not match "
                           f"the id received {id_series.item(0)!r} ({id_series.dtype})")
    answer = frame["answer"].item(0)
    top = ANSWER_MAX[competition]
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer <= top:
        raise GatewayError("INVALID_SUBMISSION", f"answer must be an integer in 0..{top}, got {answer!r}")
    return answer


class LocalGateway:
    """Serves a CSV's rows to ``predict`` the way the competition's gateway does, in one pass."""

    def __init__(self, predict: Callable[..., Any], *, competition: str = "aimo3",
                 call_deadline_s: float | None = None, seed: int | None = None):
        if competition not in CALL_DEADLINE_S:
            raise ValueError(f"LocalGateway serves aimo2 or aimo3, got {competition!r}")
        check_endpoint(predict, competition)
        self.predict = predict
        self.competition = competition
        self.call_deadline_s = CALL_DEADLINE_S[competition] if call_deadline_s is None else call_deadline_s
        self.seed = seed
        self.records: list[CallRecord] = []
        self._used = False

    def run(self, csv_path: str | Path, out_dir: str | Path = ".") -> Path:
        import polars as pl

        if self._used:
            raise GatewayError("GATEWAY_RAISED_EXCEPTION", "the gateway serves its problems once")
        self._used = True
        frame = pl.read_csv(csv_path, infer_schema_length=None)
        order = list(range(frame.height))
        random.Random(self.seed).shuffle(order)
        for n, row in enumerate(order):
            series = [frame[col].slice(row, 1) for col in frame.columns]
            self._call(series, first=n == 0)
        return self._write(out_dir, frame["id"].dtype)

    def _call(self, series: list[Any], *, first: bool) -> None:
        if getattr(self.predict, "__name__", "") != "predict":
            raise GatewayError("SERVER_MISSING_ENDPOINT", "Server did not register a listener for predict")
        start = time.monotonic()
        try:
            result = self.predict(*series)
        except Exception as exc:
            raise GatewayError("SERVER_RAISED_EXCEPTION", f"{type(exc).__name__}: {exc}") from exc
        seconds = time.monotonic() - start
        if not first and seconds > self.call_deadline_s:
            raise GatewayError("GRPC_DEADLINE_EXCEEDED",
                               f"predict took {seconds:.1f} s; the limit is {self.call_deadline_s:g} s")
        answer = _validated_answer(result, series[0], self.competition)
        self.records.append(CallRecord(id=series[0].item(0), answer=answer, seconds=seconds))

    def _write(self, out_dir: str | Path, id_dtype: Any) -> Path:
        import polars as pl

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "submission.parquet"
        pl.DataFrame({"id": pl.Series([r.id for r in self.records], dtype=id_dtype),
                      "answer": pl.Series([r.answer for r in self.records], dtype=pl.Int64)}).write_parquet(path)
        return path


class MockInferenceServer:
    """``kaggle_evaluation``'s inference server; subclasses name the competition and its test CSV."""

    competition = "aimo3"
    default_test_csv: Path | None = None

    def __init__(self, *endpoint_listeners: Callable[..., Any]) -> None:
        if not endpoint_listeners:
            raise ValueError("Must pass at least one endpoint listener, e.g. `predict`")
        for func in endpoint_listeners:
            check_endpoint(func, self.competition)
        self.endpoints = {func.__name__: func for func in endpoint_listeners}
        self.started_at: float | None = None
        self.gateway: LocalGateway | None = None

    def _start(self) -> float:
        self.started_at = time.time()
        return self.started_at - _PROCESS_START

    def _gateway(self) -> LocalGateway:
        # The gateway asks for "predict"; without it the first call fails with SERVER_MISSING_ENDPOINT.
        endpoint = self.endpoints.get("predict") or next(iter(self.endpoints.values()))
        self.gateway = LocalGateway(endpoint, competition=self.competition)
        return self.gateway

    def serve(self) -> None:
        """Off a rerun: starts and returns. On a rerun: Kaggle's gateway drives ``predict`` (here, in-process)."""
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
        import pandas as pd

        self.frame = pd.read_csv(test_csv)
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


_SERVER_MODULE = '''"""Mock of the {comp} inference server (aimo_kernel.mock_api)."""
from pathlib import Path

from aimo_kernel.mock_api import MockInferenceServer


class {cls}(MockInferenceServer):
    competition = "{comp}"
    default_test_csv = Path(__file__).resolve().parent.parent / "test.csv"
'''
_AIMO1_MODULE = '''"""Mock of the AIMO1 `aimo` module (aimo_kernel.mock_api)."""
from pathlib import Path

from aimo_kernel.mock_api import aimo1_make_env

make_env = aimo1_make_env(Path(__file__).resolve().parent.parent / "test.csv")
'''
_CORE_FILES = {
    "kaggle_evaluation/__init__.py": "",
    "kaggle_evaluation/core/__init__.py": "",
    "kaggle_evaluation/core/base_gateway.py": (
        "from aimo_kernel.mock_api import GatewayError as GatewayRuntimeError  # noqa: F401\n"
        "from aimo_kernel.mock_api import GatewayErrorType as GatewayRuntimeErrorType  # noqa: F401\n"),
    "kaggle_evaluation/core/templates.py": (
        "from aimo_kernel.mock_api import LocalGateway as Gateway  # noqa: F401\n"
        "from aimo_kernel.mock_api import MockInferenceServer as InferenceServer  # noqa: F401\n"),
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
