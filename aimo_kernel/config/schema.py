"""Run configuration schema: the six frozen, keyword-only sections and their validation.

Covers sampling, SC-TIR, sandbox, budget, vote and engine, each validated in ``__post_init__`` with
messages naming the field, the allowed range and the value. Loading (presets, TOML, overrides) is
:mod:`aimo_kernel.config.loading`; the presets are :mod:`aimo_kernel.config.presets`. No vLLM or torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from aimo_kernel.engine.registry import engine_kinds
from aimo_kernel.errors import AimoError

# The rounding tolerance of answers is for float noise only (12.0000001 from a float computation); a larger
# one would turn real decimals (2.8 dollars, 99076.92) into integer votes.
DEFAULT_TOLERANCE = 1e-6
MAX_TOLERANCE = 1e-3


class ConfigError(AimoError, ValueError):
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
# How a model writes code and reads its output (aimo_kernel.solve.dialect.DIALECTS has one of each)
DIALECT_NAMES = ("numina", "harmony", "chat-tools")


def candidates_in_all(max_candidates: int, num_candidates: int) -> int:
    """Candidates launched in all: ``max_candidates``, where 0 (or anything below N) means N."""
    return max(max_candidates, num_candidates)


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
    # numina: ```python / ```output blocks; harmony: gpt-oss's python tool; chat-tools: <tool_call> in the
    # model's chat template. harmony and chat-tools run a candidate's calls in one persistent session.
    dialect: str = "numina"

    def __post_init__(self) -> None:
        _check_int(self, "num_candidates", 1, 4096)
        _check_choice(self, "dialect", DIALECT_NAMES)
        _check_int(self, "max_rounds", 1, 64)
        _check_choice(self, "mode", ("sync", "async"))
        _check_int(self, "max_candidates", 0, 100_000)
        _check_choice(self, "no_code_policy", NO_CODE_POLICIES)
        _check_int(self, "max_restarts", 0, 64)
        _check_int(self, "output_max_chars", 16, 1_000_000)

    @property
    def candidates_in_all(self) -> int:
        return candidates_in_all(self.max_candidates, self.num_candidates)


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
    session: str = "stateless"  # stateless: every block starts fresh; persistent: a candidate's blocks share state
    tmp_mb: int = 256  # size cap of each private tmpfs (/tmp, /var/tmp, /dev/shm, /run/lock) of a block
    min_isolation: str = "minimal"  # refuse blocks when the machine allows less: minimal | namespaces | full
    isolation_off: tuple[str, ...] = ()  # not to use even if allowed: namespaces, uid, cgroup, net, userns, readonly

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
        _check_choice(self, "session", ("stateless", "persistent"))
        _check_int(self, "tmp_mb", 1, 65_536)
        _check_choice(self, "min_isolation", ("minimal", "namespaces", "full"))
        object.__setattr__(self, "isolation_off", tuple(self.isolation_off))
        features = ("namespaces", "uid", "cgroup", "net", "userns", "readonly")
        if not all(f in features for f in self.isolation_off):
            raise ConfigError(f"SandboxConfig.isolation_off must be among {features}, got {self.isolation_off!r}")


@dataclass(frozen=True, kw_only=True)
class BudgetConfig:
    """Wall-clock limits for the whole run and each problem (see :mod:`aimo_kernel.core.budget`).

    The run must end ``safety_margin_s`` before ``total_seconds`` after it started (model load
    included). Each problem gets a share of the time left, clamped to
    ``[min_problem_seconds, per_problem_seconds]``; time a problem does not use is carried forward.
    ``overrun_allowance_s`` is what a problem may run past its stop (aborting, killing code) and
    ``restart_reserve_s`` the time kept back for one engine restart. ``calibration`` names a file
    written by ``aimo-kernel preflight``/``calibrate`` on this machine ("" none): the planner then gives
    each problem the fullest effort whose projected time fits its seconds (:mod:`aimo_kernel.core.throughput`)
    instead of judging by the share of time alone.
    """

    total_seconds: float = 9 * 3600.0
    num_problems: int = 50
    per_problem_seconds: float = 600.0
    min_problem_seconds: float = 30.0
    safety_margin_s: float = 600.0
    overrun_allowance_s: float = 5.0
    restart_reserve_s: float = 0.0
    stall_timeout_s: float = 120.0
    calibration: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.calibration, str):
            raise ConfigError(f"BudgetConfig.calibration must be a file path or '', got {self.calibration!r}")
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
VoteMode = Literal["majority", "weighted"]
VOTE_MODES: tuple[str, ...] = get_args(VoteMode)
ConfidenceSignalName = Literal["mean_entropy", "tail_entropy", "mean_logprob"]
CONFIDENCE_SIGNALS: tuple[str, ...] = get_args(ConfidenceSignalName)


@dataclass(frozen=True, kw_only=True)
class VoteConfig:
    """Answer normalisation and majority vote.

    ``modulus`` (e.g. 1000) is applied to integer answers before the range check; with modulus 0
    (none), answers outside ``[min_answer, max_answer]`` are discarded. ``tolerance`` absorbs float
    noise only (``12.0000001`` counts as 12, ``2.8`` is no answer), at most ``MAX_TOLERANCE``.
    """

    modulus: int = 1000
    min_answer: int = 0
    max_answer: int = 999
    tolerance: float = DEFAULT_TOLERANCE
    drop_negative: bool = True
    fallback_answer: int = 0
    tie_break: str = "largest"
    # Early stop: "k/n" stops once one answer has k votes among the first n answers (n ≥ k);
    # stop_when_decided stops once the leader cannot be overtaken by the candidates still running.
    agreement_rules: tuple[str, ...] = ()
    stop_when_decided: bool = True
    # Give up: "k/n" stops once n answers are in and none has k votes (k ≥ 2): answers that scattered
    # are unlikely to agree with more candidates, and the time left is carried forward to later problems.
    give_up_rule: str = ""
    # Selection: "majority" counts every answer once; "weighted" weighs it by its candidate's confidence
    # (aimo_kernel.core.confidence): max(uncertainty, confidence_floor) ** -confidence_power, where the
    # uncertainty is the ``confidence`` signal, times code_bonus when the candidate's own code printed the
    # answer. confidence_top_k > 0 asks the engine for that many log-probabilities per token (0: none, and
    # no confidence is recorded); confidence_tail_tokens is the window before the answer.
    mode: VoteMode = "majority"
    confidence: ConfidenceSignalName = "mean_logprob"  # measured best of the three on the tiny model
    confidence_top_k: int = 0
    confidence_tail_tokens: int = 256
    confidence_power: float = 1.0
    confidence_floor: float = 0.01
    code_bonus: float = 1.0

    def __post_init__(self) -> None:
        self._check_selection()
        _check_int(self, "modulus", 0, 10**18)
        if self.modulus == 1:
            raise ConfigError("VoteConfig.modulus must be 0 (none) or in [2, 1e+18], got 1")
        _check_int(self, "min_answer", -(10**18), 10**18)
        _check_int(self, "max_answer", self.min_answer, 10**18)
        _check_range(self, "tolerance", 0.0, MAX_TOLERANCE)
        _check_bool(self, "drop_negative")
        _check_int(self, "fallback_answer", self.min_answer, self.max_answer)
        _check_choice(self, "tie_break", TIE_BREAKS)
        object.__setattr__(self, "agreement_rules", tuple(self.agreement_rules))
        for rule in self.agreement_rules:
            parse_agreement_rule(rule)
        _check_bool(self, "stop_when_decided")
        if self.give_up_rule and parse_give_up_rule(self.give_up_rule)[0] < 2:
            raise ConfigError(f"VoteConfig.give_up_rule needs k in [2, n] ('k/n'), got {self.give_up_rule!r}")


    def _check_selection(self) -> None:
        _check_choice(self, "mode", VOTE_MODES)
        _check_choice(self, "confidence", CONFIDENCE_SIGNALS)
        _check_int(self, "confidence_top_k", 0, 100)
        if self.mode == "weighted" and self.confidence_top_k == 0:
            raise ConfigError("VoteConfig.confidence_top_k must be in [1, 100] with mode 'weighted', got 0")
        _check_int(self, "confidence_tail_tokens", 1, 1_000_000)
        _check_range(self, "confidence_power", 0.0, 16.0)
        _check_range(self, "confidence_floor", 1e-6, 100.0)
        _check_range(self, "code_bonus", 0.0, 1000.0)


def parse_agreement_rule(rule: object, field: str = "agreement_rules entries") -> tuple[int, int]:
    """``"k/n"`` -> (k, n) with 1 ≤ k ≤ n; a clear error otherwise."""
    k_text, sep, n_text = str(rule).partition("/")
    try:
        k, n = int(k_text), int(n_text)
    except ValueError:
        k = n = 0
    if not isinstance(rule, str) or not sep or not 1 <= k <= n <= 100_000:
        raise ConfigError(f"VoteConfig.{field} must look like 'k/n' with 1 <= k <= n, got {rule!r}")
    return k, n


def parse_give_up_rule(rule: object) -> tuple[int, int]:
    """``vote.give_up_rule`` "k/n" -> (k, n)."""
    return parse_agreement_rule(rule, "give_up_rule")


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
    # backend "openai": "spawn" starts and supervises a vLLM server with the arguments above; one or
    # more http(s) URLs name OpenAI-compatible servers someone else runs; "none" for other backends
    server: tuple[str, ...] = ("none",)
    server_start_timeout_s: float = 840.0  # inside the gateway's 15-minute start-up limit
    server_restarts: int = 2  # how many times a spawned server that died is started again
    server_port: int = 0  # 0: a free port
    server_log: str = ""  # "": a file in the temporary directory
    # tokens per streamed chunk (vLLM's per-request stream_interval): fewer, larger chunks cost the
    # server's HTTP process and the client less CPU per token; 1 streams every token
    server_stream_interval: int = 8

    def __post_init__(self) -> None:
        _check_choice(self, "backend", engine_kinds())
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
        if self.distributed_executor_backend == "uni" and self.tensor_parallel_size > 1:
            raise ConfigError("EngineConfig.distributed_executor_backend 'uni' runs one worker: "
                              f"tensor_parallel_size must be 1, got {self.tensor_parallel_size}")
        _check_range(self, "swap_space_gib", 0.0, 1024.0)
        _check_range(self, "cpu_kvcache_gib", 0.0625, 1024.0)
        _check_range(self, "load_timeout_s", 1.0, 24 * 3600.0)
        self._check_server()

    def _check_server(self) -> None:
        if isinstance(self.server, str):
            object.__setattr__(self, "server", (self.server,))
        if not isinstance(self.server, (tuple, list)):
            raise ConfigError(f"EngineConfig.server must be 'none', 'spawn' or a list of URLs, got {self.server!r}")
        servers = tuple(self.server)
        object.__setattr__(self, "server", servers)
        urls = all(isinstance(s, str) and s.startswith(("http://", "https://")) and len(s) > 8 for s in servers)
        if not servers or not (servers in (("none",), ("spawn",)) or urls):
            raise ConfigError(f"EngineConfig.server must be 'none', 'spawn' or one or more http(s):// URLs, "
                              f"got {self.server!r}")
        if (self.backend == "openai") == (servers == ("none",)):
            need = "'spawn' or URLs for" if self.backend == "openai" else "'none' unless"
            raise ConfigError(f"EngineConfig.server must be {need} backend 'openai', got {servers!r}")
        _check_range(self, "server_start_timeout_s", 1.0, min(900.0, self.load_timeout_s))
        _check_int(self, "server_restarts", 0, 100)
        _check_int(self, "server_port", 0, 65535)
        _check_int(self, "server_stream_interval", 1, 1024)
        if not isinstance(self.server_log, str):
            raise ConfigError(f"EngineConfig.server_log must be a path string, got {self.server_log!r}")


COMPETITIONS = ("aimo1", "aimo2", "aimo3")
# Each competition's answers, the one source of the rule: (modulus, 0 for none; smallest; largest).
# AIMO1/2 take a model's integer answer mod 1000; AIMO3 takes 0..99999 as it is.
COMPETITION_ANSWERS: dict[str, tuple[int, int, int]] = {
    "aimo1": (1000, 0, 999), "aimo2": (1000, 0, 999), "aimo3": (0, 0, 99_999)}
# The gateway's deadline for every predict call after the first (the first has none: the model loads
# there); past it the whole submission fails. AIMO1's iterate-and-predict loop has none.
CALL_DEADLINE_S: dict[str, float | None] = {"aimo1": None, "aimo2": 30 * 60.0, "aimo3": 9 * 3600.0}
# What a call needs beyond its problem's budget and overrun: the solver winding down, the trace, the reply.
CALL_MARGIN_S = 120.0
SECTIONS = ("sampling", "tir", "sandbox", "budget", "vote", "engine")


def competition_vote(competition: str, **fields: Any) -> VoteConfig:
    """The vote section that answers ``competition``: its modulus and range, other fields as given."""
    modulus, low, high = COMPETITION_ANSWERS[competition]
    return VoteConfig(modulus=modulus, min_answer=low, max_answer=high, **fields)


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
        _check_call_deadline(self.competition, self.budget)


def _check_call_deadline(competition: str, budget: BudgetConfig) -> None:
    """A problem's cap must fit inside one gateway call, or a late problem fails the whole submission."""
    limit = CALL_DEADLINE_S[competition]
    if limit is None:
        return
    most = limit - CALL_MARGIN_S - budget.overrun_allowance_s
    if budget.per_problem_seconds > most:
        raise ConfigError(
            f"BudgetConfig.per_problem_seconds must be at most {most:g} for {competition} (its gateway fails a "
            f"call after {limit:g} s; {CALL_MARGIN_S:g} s margin and overrun_allowance_s kept), "
            f"got {budget.per_problem_seconds!r}")


SECTION_TYPES: dict[str, type] = {
    "sampling": SamplingConfig,
    "tir": TIRConfig,
    "sandbox": SandboxConfig,
    "budget": BudgetConfig,
    "vote": VoteConfig,
    "engine": EngineConfig,
}


