"""Engines: the protocols, the registry of named backends, and creating one when asked for.

``get_engine("vllm", config)`` imports :mod:`aimo_kernel.engine.vllm_async` (and with it vLLM and
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
from aimo_kernel.engine.registry import EngineSpec, engine_kinds, engine_spec, is_streaming, register_engine

if TYPE_CHECKING:
    from aimo_kernel.config import Config


def get_engine(kind: str, config: Config) -> Engine | AsyncEngine:
    spec = engine_spec(kind)
    if spec is None:
        raise EngineError(f"unknown engine {kind!r}; registered: {', '.join(engine_kinds())}")
    module_name, _, factory_name = spec.target.partition(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    engine: Engine | AsyncEngine = factory(config)
    return engine


__all__ = [
    "AsyncEngine",
    "Delta",
    "Engine",
    "EngineError",
    "EngineSpec",
    "Generation",
    "GenerationRequest",
    "SamplingParams",
    "engine_kinds",
    "engine_spec",
    "get_engine",
    "is_streaming",
    "register_engine",
]
