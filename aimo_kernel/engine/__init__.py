"""Engine registry: backends are named, and imported only when asked for.

``get_engine("vllm", config)`` imports :mod:`aimo_kernel.engine.vllm_backend` (and with it vLLM and
torch) at that moment, so ``import aimo_kernel`` and the CLI stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from aimo_kernel.engine.base import (
    AsyncEngine,
    Delta,
    Engine,
    EngineError,
    Generation,
    GenerationRequest,
    SamplingParams,
)

if TYPE_CHECKING:
    from aimo_kernel.config import Config

# kind -> "module:factory"; a factory takes a Config and returns an Engine.
_REGISTRY: dict[str, str] = {
    "vllm": "aimo_kernel.engine.vllm_async:create_engine",
    "vllm-offline": "aimo_kernel.engine.vllm_backend:create_engine",
    "fake": "aimo_kernel.engine.fake:create_engine",
    "fake-async": "aimo_kernel.engine.fake:create_async_engine",
    "transformers": "aimo_kernel.engine.hf_backend:create_engine",
}


def register_engine(kind: str, target: str) -> None:
    """Register a backend as ``"package.module:factory"``; it is imported on first use."""
    _REGISTRY[kind] = target


def engine_kinds() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_engine(kind: str, config: Config) -> Engine | AsyncEngine:
    try:
        target = _REGISTRY[kind]
    except KeyError:
        raise EngineError(f"unknown engine {kind!r}; registered: {', '.join(_REGISTRY)}") from None
    module_name, _, factory_name = target.partition(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    engine: Engine | AsyncEngine = factory(config)
    return engine


__all__ = [
    "AsyncEngine",
    "Delta",
    "Engine",
    "EngineError",
    "Generation",
    "GenerationRequest",
    "SamplingParams",
    "engine_kinds",
    "get_engine",
    "register_engine",
]
