"""Run configuration: frozen, keyword-only dataclasses, TOML loading and CLI overrides.

Covers the six sections a run needs (sampling, SC-TIR, sandbox, budget, vote, engine), their
validation, and merging a preset with a TOML file and ``section.field=value`` overrides.
The named presets themselves live in :mod:`aimo_kernel.presets`. Nothing here imports vLLM or torch.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names the field."""


def _check_range(obj: object, name: str, lo: float | None, hi: float | None) -> None:
    value = getattr(obj, name)
    where = f"{type(obj).__name__}.{name}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be finite, got {value!r}")
    low = "-inf" if lo is None else f"{lo:g}"
    high = "inf" if hi is None else f"{hi:g}"
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{where} must be in [{low}, {high}], got {value!r}")


def _check_int(obj: object, name: str, lo: int | None, hi: int | None) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{type(obj).__name__}.{name} must be an integer, got {value!r}")
    _check_range(obj, name, lo, hi)


def _check_choice(obj: object, name: str, choices: Iterable[object]) -> None:
    value = getattr(obj, name)
    allowed = tuple(choices)
    if value not in allowed:
        raise ConfigError(f"{type(obj).__name__}.{name} must be one of {allowed!r}, got {value!r}")


def _check_bool(obj: object, name: str) -> None:
    value = getattr(obj, name)
    if not isinstance(value, bool):
        raise ConfigError(f"{type(obj).__name__}.{name} must be true or false, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """How each candidate is sampled. ``max_new_tokens`` is per round."""

    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        _check_range(self, "temperature", 0.0, 2.0)
        _check_range(self, "top_p", 1e-6, 1.0)
        _check_int(self, "max_new_tokens", 1, 1_000_000)
        _check_int(self, "seed", 0, 2**31 - 1)


NO_CODE_POLICIES = ("restart", "prune", "keep")


@dataclass(frozen=True, kw_only=True)
class TIRConfig:
    """Self-consistency with tool-integrated reasoning: N candidates, up to M code rounds.

    ``no_code_policy`` decides what happens to a candidate that finishes a generation without ever
    having written a ```python block: ``restart`` from the bare prompt (at most ``max_restarts``
    times per candidate), ``prune`` (its answer does not vote) or ``keep`` (its answer votes).
    """

    num_candidates: int = 48
    max_rounds: int = 4
    mode: str = "sync"  # sync: Numina's synchronous rounds; async: each candidate runs its own pipeline
    # async mode: while the vote is undecided and time is left, finished candidates are replaced by
    # new ones up to this many in all (0: just num_candidates)
    max_candidates: int = 0
    no_code_policy: str = "restart"
    max_restarts: int = 1
    output_max_chars: int = 200

    def __post_init__(self) -> None:
        _check_int(self, "num_candidates", 1, 4096)
        _check_int(self, "max_rounds", 1, 64)
        _check_choice(self, "mode", ("sync", "async"))
        _check_int(self, "max_candidates", 0, 100_000)
        _check_choice(self, "no_code_policy", NO_CODE_POLICIES)
        _check_int(self, "max_restarts", 0, 64)
        _check_int(self, "output_max_chars", 16, 1_000_000)


@dataclass(frozen=True, kw_only=True)
class SandboxConfig:
    """Limits for running one model-written code block."""

    timeout_s: float = 5.0
    max_output_chars: int = 20_000
    memory_mb: int = 2048
    workers: int = 4
    python: str = ""  # empty: the interpreter running the package
    refuse_patterns: tuple[str, ...] = ("subprocess", "venv")
    print_last_expression: bool = True
    kind: str = "pool"  # pool: forks from warm interpreters; subprocess: a fresh interpreter per block
    preload: tuple[str, ...] = ("math", "numpy", "sympy")  # modules the pool's warm interpreters import
    max_code_chars: int = 1_000_000  # longer code blocks are refused without running

    def __post_init__(self) -> None:
        _check_range(self, "timeout_s", 0.1, 3600.0)
        _check_int(self, "max_output_chars", 16, 100_000_000)
        _check_int(self, "memory_mb", 64, 1_048_576)
        _check_int(self, "workers", 1, 256)
        if not isinstance(self.python, str):
            raise ConfigError(f"SandboxConfig.python must be a path string, got {self.python!r}")
        object.__setattr__(self, "refuse_patterns", tuple(self.refuse_patterns))
        if not all(isinstance(p, str) and p for p in self.refuse_patterns):
            raise ConfigError(
                f"SandboxConfig.refuse_patterns must be non-empty strings, got {self.refuse_patterns!r}"
            )
        _check_bool(self, "print_last_expression")
        _check_choice(self, "kind", ("pool", "subprocess"))
        object.__setattr__(self, "preload", tuple(self.preload))
        if not all(isinstance(m, str) and m.replace(".", "").replace("_", "").isalnum() for m in self.preload):
            raise ConfigError(f"SandboxConfig.preload must be module names, got {self.preload!r}")
        _check_int(self, "max_code_chars", 1, 100_000_000)


@dataclass(frozen=True, kw_only=True)
class BudgetConfig:
    """Wall-clock limits for the whole run and each problem (see :mod:`aimo_kernel.budget`).

    The run must end ``safety_margin_s`` before ``total_seconds`` after it started (model load
    included). Each problem gets a share of the time left, clamped to
    ``[min_problem_seconds, per_problem_seconds]``; time a problem does not use is carried forward.
    ``overrun_allowance_s`` is what a problem may run past its stop (aborting, killing code) and
    ``restart_reserve_s`` the time kept back for one engine restart.
    """

    total_seconds: float = 9 * 3600.0
    num_problems: int = 50
    per_problem_seconds: float = 600.0
    min_problem_seconds: float = 30.0
    safety_margin_s: float = 600.0
    overrun_allowance_s: float = 5.0
    restart_reserve_s: float = 0.0
    stall_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        _check_range(self, "total_seconds", 1.0, 7 * 24 * 3600.0)
        _check_int(self, "num_problems", 1, 100_000)
        _check_range(self, "per_problem_seconds", 0.5, 7 * 24 * 3600.0)
        _check_range(self, "min_problem_seconds", 0.1, self.per_problem_seconds)
        _check_range(self, "safety_margin_s", 0.0, 24 * 3600.0)
        _check_range(self, "overrun_allowance_s", 0.0, 3600.0)
        _check_range(self, "restart_reserve_s", 0.0, 3600.0)
        _check_range(self, "stall_timeout_s", 1.0, 24 * 3600.0)
        if self.safety_margin_s >= self.total_seconds:
            raise ConfigError(
                f"BudgetConfig.safety_margin_s must be below total_seconds ({self.total_seconds:g}), "
                f"got {self.safety_margin_s!r}"
            )


TIE_BREAKS = ("largest", "smallest", "first")


@dataclass(frozen=True, kw_only=True)
class VoteConfig:
    """Answer normalisation and majority vote.

    ``modulus`` (e.g. 1000) is applied to integer answers before the range check; with modulus 0
    (none), answers outside ``[min_answer, max_answer]`` are discarded.
    """

    modulus: int = 1000
    min_answer: int = 0
    max_answer: int = 999
    tolerance: float = 0.2
    drop_negative: bool = True
    fallback_answer: int = 0
    tie_break: str = "largest"
    # Early stop: "k/n" stops once one answer has k votes among the first n answers (n ≥ k);
    # stop_when_decided stops once the leader cannot be overtaken by the candidates still running.
    agreement_rules: tuple[str, ...] = ()
    stop_when_decided: bool = True

    def __post_init__(self) -> None:
        _check_int(self, "modulus", 0, 10**18)
        if self.modulus == 1:
            raise ConfigError("VoteConfig.modulus must be 0 (none) or in [2, 1e+18], got 1")
        _check_int(self, "min_answer", -(10**18), 10**18)
        _check_int(self, "max_answer", self.min_answer, 10**18)
        _check_range(self, "tolerance", 0.0, 0.5)
        _check_bool(self, "drop_negative")
        _check_int(self, "fallback_answer", self.min_answer, self.max_answer)
        _check_choice(self, "tie_break", TIE_BREAKS)
        object.__setattr__(self, "agreement_rules", tuple(self.agreement_rules))
        for rule in self.agreement_rules:
            parse_agreement_rule(rule)
        _check_bool(self, "stop_when_decided")


def parse_agreement_rule(rule: object) -> tuple[int, int]:
    """``"k/n"`` -> (k, n) with 1 ≤ k ≤ n; a clear error otherwise."""
    k_text, sep, n_text = str(rule).partition("/")
    try:
        k, n = int(k_text), int(n_text)
    except ValueError:
        k = n = 0
    if not isinstance(rule, str) or not sep or not 1 <= k <= n <= 100_000:
        raise ConfigError(f"VoteConfig.agreement_rules entries must look like 'k/n' with 1 <= k <= n, got {rule!r}")
    return k, n


ENGINE_BACKENDS = ("vllm", "vllm-offline", "fake", "fake-async", "transformers")
DTYPES = ("auto", "half", "float16", "bfloat16", "float32")
QUANTIZATIONS = ("none", "gptq")
GPTQ_KERNELS = ("auto", "marlin", "legacy")


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Which engine runs the model and with which arguments.

    ``model`` is a local folder, or a built-in model: ``builtin:tiny-tir`` (trained, shipped inside
    the package) or ``builtin:tiny-random-llama`` (random, created on first use).
    ``quantization`` says what the checkpoint is; ``gptq_kernel`` picks vLLM's kernel (``auto`` lets
    vLLM choose Marlin where the card supports it). ``cpu_kvcache_gib`` only matters to the CPU build
    of vLLM.
    """

    backend: str = "vllm"
    model: str = "builtin:tiny-tir"
    dtype: str = "auto"
    quantization: str = "none"
    gptq_kernel: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int = 4096
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 0  # 0: vLLM's default
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    disable_custom_all_reduce: bool = False
    distributed_executor_backend: str = ""  # "" lets vLLM decide
    enforce_eager: bool = False
    swap_space_gib: float = 0.0
    attention_backend: str = ""  # "" lets vLLM decide; "TRITON_ATTN" on T4
    cpu_kvcache_gib: float = 1.0
    in_process: bool = False  # run vLLM's engine core in this process (faster start on CPU)
    load_timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        _check_choice(self, "backend", ENGINE_BACKENDS)
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"EngineConfig.model must be a non-empty path, got {self.model!r}")
        _check_choice(self, "dtype", DTYPES)
        _check_choice(self, "quantization", QUANTIZATIONS)
        _check_choice(self, "gptq_kernel", GPTQ_KERNELS)
        _check_int(self, "tensor_parallel_size", 1, 64)
        _check_range(self, "gpu_memory_utilization", 0.05, 0.99)
        _check_int(self, "max_model_len", 64, 1_048_576)
        _check_int(self, "max_num_seqs", 1, 4096)
        _check_int(self, "max_num_batched_tokens", 0, 10_000_000)
        for flag in ("enable_prefix_caching", "enable_chunked_prefill", "disable_custom_all_reduce",
                     "enforce_eager", "in_process"):
            _check_bool(self, flag)
        _check_choice(self, "distributed_executor_backend", ("", "mp", "ray", "uni"))
        _check_range(self, "swap_space_gib", 0.0, 1024.0)
        _check_range(self, "cpu_kvcache_gib", 0.0625, 1024.0)
        _check_range(self, "load_timeout_s", 1.0, 24 * 3600.0)


COMPETITIONS = ("aimo1", "aimo2", "aimo3")
SECTIONS = ("sampling", "tir", "sandbox", "budget", "vote", "engine")


@dataclass(frozen=True, kw_only=True)
class Config:
    """A whole run: which competition it targets and the six sections."""

    preset: str = "custom"
    competition: str = "aimo3"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    tir: TIRConfig = field(default_factory=TIRConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    vote: VoteConfig = field(default_factory=VoteConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        _check_choice(self, "competition", COMPETITIONS)
        if not isinstance(self.preset, str):
            raise ConfigError(f"Config.preset must be a string, got {self.preset!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTION_TYPES: dict[str, type] = {
    "sampling": SamplingConfig,
    "tir": TIRConfig,
    "sandbox": SandboxConfig,
    "budget": BudgetConfig,
    "vote": VoteConfig,
    "engine": EngineConfig,
}


def _replace_section(section: object, name: str, values: Mapping[str, Any]) -> object:
    known = {f.name for f in dataclasses.fields(section)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in [{name}]; allowed: {sorted(known)}")
    cleaned = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}
    try:
        return dataclasses.replace(section, **cleaned)  # type: ignore[type-var]
    except TypeError as exc:  # a wrong type that __post_init__ did not catch
        raise ConfigError(f"[{name}]: {exc}") from None


def merge(config: Config, values: Mapping[str, Any]) -> Config:
    """Return ``config`` with the nested mapping ``values`` (TOML layout) applied on top."""
    top: dict[str, Any] = {}
    for key, value in values.items():
        if key in _SECTION_TYPES:
            if not isinstance(value, Mapping):
                raise ConfigError(f"[{key}] must be a table, got {value!r}")
            top[key] = _replace_section(getattr(config, key), key, value)
        elif key in ("preset", "competition"):
            top[key] = value
        else:
            raise ConfigError(
                f"unknown top-level key {key!r}; allowed: preset, competition, {', '.join(SECTIONS)}"
            )
    return dataclasses.replace(config, **top)


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``section.field=value``; the value is read as TOML (``8``, ``0.5``, ``true``, ``"x"``),
    falling back to a bare string."""
    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    if section not in _SECTION_TYPES:
        raise ConfigError(f"override {text!r}: unknown section {section!r}; allowed: {', '.join(SECTIONS)}")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, name, value


def apply_overrides(config: Config, overrides: Iterable[str]) -> Config:
    nested: dict[str, dict[str, Any]] = {}
    for item in overrides:
        section, name, value = parse_override(item)
        nested.setdefault(section, {})[name] = value
    return merge(config, nested)


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None


def load_config(
    preset: str | None = None,
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> Config:
    """Build a config: a preset (the file's ``preset`` key, else ``preset``, else ``cpu``), then the
    TOML file's tables, then the command-line overrides."""
    from aimo_kernel.presets import get_preset

    values = read_toml(path) if path is not None else {}
    name = preset or values.get("preset") or "cpu"
    config = get_preset(str(name))
    values = {k: v for k, v in values.items() if k != "preset"}
    config = merge(config, values)
    return apply_overrides(config, overrides)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(config: Config) -> str:
    """The config as a TOML file that :func:`load_config` reads back to an equal config.

    ``None`` values (e.g. no modulus) are written as comments, since TOML has no null.
    """
    lines = [f"preset = {_toml_value(config.preset)}", f"competition = {_toml_value(config.competition)}"]
    for name in SECTIONS:
        lines.append(f"\n[{name}]")
        for f in dataclasses.fields(getattr(config, name)):
            value = getattr(getattr(config, name), f.name)
            lines.append(f"# {f.name} = (none)" if value is None else f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
