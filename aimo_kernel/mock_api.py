"""A local stand-in for the AIMO3 ``kaggle_evaluation`` gateway, for dry-runs.

Enforces the contract a submission must meet: ``predict`` is a plain function named ``predict``;
the rows of the CSV arrive one at a time in a shuffled order, as one-row ``polars.Series`` per
column in column order; each call returns a one-row DataFrame (polars or pandas) with an integer
``answer`` in 0–99999 and, if it has an ``id``, the id it received with the same dtype; a bare int
is rejected; an exception in ``predict`` fails the run; calls after the first have a deadline.
It writes ``submission.parquet``. It does not speak gRPC or serve another process (the real server
does); the AIMO1 ``aimo`` module's mock belongs to the Kaggle shim.
"""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_ANSWER = 99_999


class GatewayError(RuntimeError):
    """The submission broke the API contract; ``code`` is the error kind Kaggle reports."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class CallRecord:
    id: Any
    answer: int
    seconds: float


def _check_predict(predict: Callable[..., Any]) -> None:
    if not inspect.isfunction(predict) or predict.__name__ != "predict":
        raise GatewayError("INVALID_ENDPOINT",
                           f"the endpoint must be a plain function named 'predict', got {predict!r}")


def _as_polars(result: Any) -> Any:
    import polars as pl

    if isinstance(result, pl.DataFrame):
        return result
    if type(result).__module__.startswith("pandas") and type(result).__name__ == "DataFrame":
        return pl.from_pandas(result)
    raise GatewayError("INVALID_SUBMISSION",
                       f"predict must return a DataFrame with columns id, answer; got {type(result).__name__}")


def _validated_answer(result: Any, id_series: Any) -> int:
    frame = _as_polars(result)
    if frame.height != 1 or "answer" not in frame.columns:
        raise GatewayError("INVALID_SUBMISSION",
                           f"predict must return one row with an 'answer' column; got shape {frame.shape} "
                           f"and columns {frame.columns}")
    if "id" in frame.columns and (frame["id"].dtype != id_series.dtype or frame["id"].item(0) != id_series.item(0)):
        raise GatewayError("INVALID_SUBMISSION",
                           f"returned id {frame['id'].item(0)!r} ({frame['id'].dtype}) does not match "
                           f"the id received {id_series.item(0)!r} ({id_series.dtype})")
    answer = frame["answer"].item(0)
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer <= MAX_ANSWER:
        raise GatewayError("INVALID_SUBMISSION", f"answer must be an integer in 0..{MAX_ANSWER}, got {answer!r}")
    return answer


class LocalGateway:
    """Serves a CSV's rows to ``predict`` the way the competition's gateway does, in one pass."""

    def __init__(self, predict: Callable[..., Any], *, call_deadline_s: float = 3600.0, seed: int | None = None):
        _check_predict(predict)
        self.predict = predict
        self.call_deadline_s = call_deadline_s
        self.seed = seed
        self.records: list[CallRecord] = []
        self._used = False

    def run(self, csv_path: str | Path, out_dir: str | Path) -> Path:
        import polars as pl

        if self._used:
            raise GatewayError("GATEWAY_ERROR", "the gateway serves its problems once")
        self._used = True
        frame = pl.read_csv(csv_path, infer_schema_length=None)
        order = list(range(frame.height))
        random.Random(self.seed).shuffle(order)
        for n, row in enumerate(order):
            series = [frame[col].slice(row, 1) for col in frame.columns]
            self._call(series, first=n == 0)
        return self._write(out_dir, frame["id"].dtype)

    def _call(self, series: list[Any], *, first: bool) -> None:
        start = time.monotonic()
        try:
            result = self.predict(*series)
        except Exception as exc:
            raise GatewayError("SERVER_RAISED_EXCEPTION", f"{type(exc).__name__}: {exc}") from exc
        seconds = time.monotonic() - start
        if not first and seconds > self.call_deadline_s:
            raise GatewayError("TIMEOUT", f"predict took {seconds:.0f} s; the limit is {self.call_deadline_s:.0f} s")
        answer = _validated_answer(result, series[0])
        self.records.append(CallRecord(id=series[0].item(0), answer=answer, seconds=seconds))

    def _write(self, out_dir: str | Path, id_dtype: Any) -> Path:
        import polars as pl

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "submission.parquet"
        pl.DataFrame({"id": pl.Series([r.id for r in self.records], dtype=id_dtype),
                      "answer": pl.Series([r.answer for r in self.records], dtype=pl.Int64)}).write_parquet(path)
        return path
