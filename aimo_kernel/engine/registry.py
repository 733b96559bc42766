"""The engine registry: the one list of backend names, where each lives, and whether it streams.

Pure data and lookups, importing nothing heavy, so configuration can validate ``engine.backend``
against it. Creating an engine (which imports vLLM or torch) is :func:`aimo_kernel.engine.get_engine`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class EngineSpec:
    """A registered backend: ``target`` is ``"package.module:factory"``, imported on first use.

    ``streaming`` backends are :class:`~aimo_kernel.engine.base.AsyncEngine`\\ s that live on, and are
    driven from, a background event loop; the others are blocking :class:`~aimo_kernel.engine.base.Engine`\\ s.
    """

    name: str
    target: str
    streaming: bool

    def __post_init__(self) -> None:
        module, sep, factory = self.target.partition(":")
        if not (self.name and module and sep and factory):
            raise ValueError(f"EngineSpec needs a name and a 'module:factory' target, "
                             f"got {self.name!r} -> {self.target!r}")


_REGISTRY: dict[str, EngineSpec] = {}


def register_engine(name: str, target: str, *, streaming: bool) -> EngineSpec:
    """Register (or replace) a backend; configuration accepts its name from then on."""
    spec = EngineSpec(name=name, target=target, streaming=streaming)
    _REGISTRY[name] = spec
    return spec


def unregister_engine(name: str) -> None:
    _REGISTRY.pop(name, None)


def engine_kinds() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def engine_spec(name: str) -> EngineSpec | None:
    return _REGISTRY.get(name)


def is_streaming(name: str) -> bool:
    spec = _REGISTRY.get(name)
    return spec is not None and spec.streaming


register_engine("vllm", "aimo_kernel.engine.vllm_async:create_engine", streaming=True)
register_engine("vllm-offline", "aimo_kernel.engine.vllm_backend:create_engine", streaming=False)
register_engine("fake", "aimo_kernel.testing.fake:create_engine", streaming=False)
register_engine("fake-async", "aimo_kernel.testing.fake:create_async_engine", streaming=True)
register_engine("transformers", "aimo_kernel.engine.hf_backend:create_engine", streaming=False)
register_engine("openai", "aimo_kernel.engine.openai_server:create_engine", streaming=True)
