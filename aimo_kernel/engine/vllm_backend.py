"""vLLM offline backend (``LLM``, registered as ``vllm-offline``): engine arguments from the preset,
and deadline-bounded generation.

This is the only module that imports vLLM (and through it torch). It covers: mapping an
:class:`~aimo_kernel.config.EngineConfig` to vLLM engine arguments and environment (unit-tested for
the GPU presets, which CI cannot run), dropping arguments the installed vLLM does not know (Kaggle
runs an older vLLM than the CPU build used here), and generating through the engine's step loop so
that every call checks the clock between steps and aborts what is unfinished at the deadline.
It does not restart a dead engine or stream candidates asynchronously (the scheduler's job).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from aimo_kernel.engine.base import EngineError, Generation, GenerationRequest, SamplingParams
from aimo_kernel.models import CHAT_TEMPLATE, resolve_model

if TYPE_CHECKING:
    from aimo_kernel.config import Config, EngineConfig

log = logging.getLogger(__name__)

_GPTQ_KERNELS = {"auto": None, "marlin": "gptq_marlin", "legacy": "gptq"}


def engine_args(cfg: EngineConfig, model_path: str, *, seed: int = 0) -> dict[str, Any]:
    """vLLM ``LLM(...)`` keyword arguments for this engine configuration (no vLLM import needed)."""
    args: dict[str, Any] = {
        "model": model_path,
        "tokenizer": model_path,
        "dtype": cfg.dtype,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "max_model_len": cfg.max_model_len,
        "max_num_seqs": cfg.max_num_seqs,
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "enable_chunked_prefill": cfg.enable_chunked_prefill,
        "disable_custom_all_reduce": cfg.disable_custom_all_reduce,
        "enforce_eager": cfg.enforce_eager,
        "swap_space": cfg.swap_space_gib,
        "seed": seed,
        "trust_remote_code": False,
    }
    if cfg.quantization == "gptq" and _GPTQ_KERNELS[cfg.gptq_kernel] is not None:
        # Left unset, vLLM detects GPTQ from the checkpoint and picks Marlin where the card has it;
        # naming "gptq" forces the slow legacy kernel.
        args["quantization"] = _GPTQ_KERNELS[cfg.gptq_kernel]
    if cfg.max_num_batched_tokens:
        args["max_num_batched_tokens"] = cfg.max_num_batched_tokens
    if cfg.distributed_executor_backend:
        args["distributed_executor_backend"] = cfg.distributed_executor_backend
    if cfg.attention_backend:
        args["attention_backend"] = cfg.attention_backend
    return args


def engine_env(cfg: EngineConfig, *, streaming: bool = False) -> dict[str, str]:
    """Every environment variable vLLM reads at start-up that this configuration decides, with its value.

    Each is given explicitly (never left to whatever an earlier engine in this process set), so an
    offline in-process engine followed by a streaming one does not leak its multiprocessing switch.
    """
    return {
        # GiB of KV cache for the CPU build; without it start-up fails on memory. GPU builds ignore it.
        "VLLM_CPU_KVCACHE_SPACE": str(max(1, round(cfg.cpu_kvcache_gib))),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0" if _single_process(cfg, streaming) else "1",
    }


def _single_process(cfg: EngineConfig, streaming: bool) -> bool:
    """The value of vLLM's multiprocessing switch for this engine.

    A blocking engine reads it to run its core in this process or not. A streaming engine (and a
    server) always runs its core in a process of its own and reads it only on vLLM's CPU build, which
    turns a ``uni`` executor into ``mp`` while it is on: one more spawned process that imports torch
    and vLLM again (~8 s) and whose shared-memory readers spin on the two cores the sandbox needs.
    Off, the model runs inside the engine core process, as it does on one GPU by default.
    """
    if streaming:
        return cfg.distributed_executor_backend == "uni"
    return cfg.in_process


_SET_BY_US: dict[str, str] = {}


def apply_env(env: dict[str, str]) -> None:
    """Set the engine's variables; one the user set themselves (not by an earlier engine) is left alone."""
    for key, value in env.items():
        current = os.environ.get(key)
        if current is not None and _SET_BY_US.get(key) != current:
            continue
        os.environ[key] = value
        _SET_BY_US[key] = value


def supported_args(args: dict[str, Any], known: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``args`` into those the installed vLLM accepts and those it does not."""
    kept = {k: v for k, v in args.items() if k in known}
    dropped = {k: v for k, v in args.items() if k not in known}
    return kept, dropped


def _known_engine_args() -> set[str]:
    from vllm.engine.arg_utils import EngineArgs

    return {f.name for f in dataclasses.fields(EngineArgs)}


_FINISH = {"length": "length", "abort": "deadline"}


def finish_reason(completion: Any) -> str:
    """vLLM's finish reason of a finished completion, in the engine protocol's words."""
    if completion.finish_reason == "stop":
        return "stop" if isinstance(completion.stop_reason, str) else "eos"
    return _FINISH.get(str(completion.finish_reason), "error")


def token_logprobs(completion: Any) -> tuple[tuple[float, ...], tuple[tuple[float, ...], ...]]:
    """A (delta) completion's log-probabilities: each sampled token's, and each step's values most
    likely first (vLLM returns the top k plus the sampled token when it is not among them)."""
    steps = completion.logprobs
    if not steps:
        return (), ()
    own: list[float] = []
    top: list[tuple[float, ...]] = []
    for token, step in zip(completion.token_ids, steps):
        if step is None:
            continue
        own.append(float(step[token].logprob) if token in step else float("nan"))
        top.append(tuple(sorted((float(v.logprob) for v in step.values()), reverse=True)))
    return tuple(own), tuple(top)


def render_chat(tokenizer: Any, problem: str) -> str:
    """The model's chat template around one user message (Numina's template if it has none)."""
    messages = [{"role": "user", "content": problem}]
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    from jinja2 import Template

    return Template(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True)


def prepare(config: Config, known: Callable[[], set[str]], *, streaming: bool) -> dict[str, Any]:
    """Resolve the model, set vLLM's environment, and return the arguments this vLLM accepts.

    The model is resolved before ``known`` imports vLLM, so a missing folder fails fast and quietly.
    """
    cfg = config.engine
    try:
        model_path = str(resolve_model(cfg.model))
    except FileNotFoundError as exc:
        raise EngineError(str(exc)) from None
    env = engine_env(cfg, streaming=streaming)
    apply_env(env)  # before ``known`` imports vLLM, which reads some of them at import
    kept, dropped = supported_args(engine_args(cfg, model_path, seed=config.sampling.seed), known())
    if "attention_backend" in dropped:  # vLLM < 0.17 reads it from the environment
        apply_env({"VLLM_ATTENTION_BACKEND": str(dropped["attention_backend"])})
    if dropped:
        log.info("this vLLM does not take %s; left out", ", ".join(sorted(dropped)))
    return kept


def load_error(args: dict[str, Any], exc: Exception) -> EngineError:
    return EngineError(f"vLLM could not load {args['model']}: {type(exc).__name__}: {exc}")


class VLLMEngine:
    """A loaded vLLM offline engine (``vllm.LLM``) driven step by step."""

    name = "vllm-offline"

    def __init__(self, config: Config) -> None:
        args = prepare(config, _known_engine_args, streaming=False)
        from vllm import LLM

        try:
            self._llm: Any = LLM(**args)
        except Exception as exc:  # vLLM raises many types; the caller needs one
            raise load_error(args, exc) from exc
        self._tokenizer = self._llm.get_tokenizer()
        self.max_model_len = config.engine.max_model_len
        self._ids = itertools.count()

    def chat_prompt(self, problem: str) -> str:
        return render_chat(self._tokenizer, problem)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text))

    def _params(self, req: GenerationRequest, params: SamplingParams) -> Any:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VllmSamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=req.max_tokens,
            seed=req.seed,
            stop=list(params.stop),
            include_stop_str_in_output=True,
            output_kind=RequestOutputKind.DELTA,
            logprobs=params.logprobs,
            skip_special_tokens=params.skip_special_tokens,
            spaces_between_special_tokens=params.skip_special_tokens,
        )

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, *, deadline: float
    ) -> list[Generation]:
        engine = self._llm.llm_engine
        batch = next(self._ids)
        states: dict[str, _State] = {}
        order: list[str] = []
        for i, req in enumerate(requests):
            rid = f"b{batch}-{i}"
            order.append(rid)
            try:
                engine.add_request(rid, req.prompt, self._params(req, params))
                states[rid] = _State()
            except Exception as exc:  # e.g. a prompt longer than the context
                log.warning("request %s refused: %s", rid, exc)
                states[rid] = _State(finish="error")
        self._run(engine, states, deadline)
        return [states[rid].generation() for rid in order]

    @staticmethod
    def _run(engine: Any, states: dict[str, _State], deadline: float) -> None:
        pending = {rid for rid, s in states.items() if s.finish is None}
        while pending and engine.has_unfinished_requests():
            if time.monotonic() >= deadline:
                engine.abort_request(sorted(pending))
                break
            for out in engine.step():
                state = states.get(out.request_id)
                if state is None:
                    continue
                state.add(out)
                if out.finished:
                    pending.discard(out.request_id)
        for rid in pending:
            states[rid].finish = "deadline"

    def close(self) -> None:
        engine = getattr(self._llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self._llm = None


@dataclasses.dataclass
class _State:
    pieces: list[str] = dataclasses.field(default_factory=list)
    num_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    finish: str | None = None
    logprobs: list[float] = dataclasses.field(default_factory=list)
    top_logprobs: list[tuple[float, ...]] = dataclasses.field(default_factory=list)

    def add(self, out: Any) -> None:
        if out.prompt_token_ids is not None:
            self.prompt_tokens = len(out.prompt_token_ids)
        self.cached_tokens = out.num_cached_tokens or self.cached_tokens
        completion = out.outputs[0]
        self.pieces.append(completion.text)
        self.num_tokens += len(completion.token_ids)
        own, top = token_logprobs(completion)
        self.logprobs.extend(own)
        self.top_logprobs.extend(top)
        if out.finished:
            self.finish = finish_reason(completion)

    def generation(self) -> Generation:
        return Generation(
            text="".join(self.pieces),
            num_tokens=self.num_tokens,
            prompt_tokens=self.prompt_tokens,
            finish_reason=self.finish or "deadline",
            cached_tokens=self.cached_tokens,
            logprobs=tuple(self.logprobs),
            top_logprobs=tuple(self.top_logprobs),
        )


def create_engine(config: Config) -> VLLMEngine:
    return VLLMEngine(config)
