"""Fixtures the engine test modules share: one background event loop per module, as a run has, and a
streaming engine started and closed on it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from aimo_kernel.run.runner import LoopThread


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


def engine_on(loop: LoopThread, kind: str, config: Any, *, timeout: float = 600) -> Iterator[Any]:
    """Start a ``kind`` engine on ``loop`` (where its tasks live), yield it, close it there."""
    from aimo_kernel.engine import get_engine

    async def create() -> Any:
        return get_engine(kind, config)

    eng = loop.run(create(), timeout=timeout)
    yield eng

    async def close() -> None:
        eng.close()

    loop.run(close(), timeout=60)
