"""Engine backend ``openai``: streaming completions from OpenAI-compatible servers (``vllm serve``, SGLang).

Implements the :class:`~aimo_kernel.engine.base.AsyncEngine` protocol over HTTP with ``httpx``: each
candidate is one streamed ``/v1/completions`` request (server-sent events). The prompt is rendered
client-side with the model's own tokenizer and chat template and sent as text, so every round of a
candidate sends the same text prefix as the round before and the server's prefix cache hits, as with
the in-process engine. Per request: its seed, the stop strings kept in the output, token counts
(exact token ids where the server returns them, else the running usage), cached prompt tokens from the
final usage, and per-token log-probabilities when asked for.

Every wait is bounded: a request ends at its deadline (the stream is closed, which makes vLLM abort it;
the finish reason is ``deadline``), no data for ``budget.stall_timeout_s`` fails it, and waiting for a
server to come (back) up is bounded by both. Closing a stream early (cancellation, :meth:`abort`)
closes the HTTP response, which cancels the request in the server.

With ``engine.server = "spawn"`` the engine starts and owns a vLLM server
(:mod:`aimo_kernel.engine.server`), which restarts itself when it dies and is stopped by :meth:`close`;
with URLs, requests go to the least busy server that is up, and a server that refuses connections is
left alone for a few seconds. It does not spread whole problems over servers or vote on confidence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from aimo_kernel.engine.base import Delta, EngineError, GenerationRequest, SamplingParams
from aimo_kernel.engine.server import SERVED_MODEL_NAME, ServerProcess, spawn_server
from aimo_kernel.engine.vllm_backend import render_chat
from aimo_kernel.models import resolve_model

if TYPE_CHECKING:
    from aimo_kernel.config import Config

log = logging.getLogger(__name__)

DOWN_FOR_S = 5.0  # a server that refused a connection gets no requests for this long
READY_POLL_S = 0.1
CONNECT_TIMEOUT_S = 10.0


@dataclass
class Endpoint:
    """One server: its base URL, the model name it serves, and how busy and how reachable it is."""

    url: str
    model: str = SERVED_MODEL_NAME
    inflight: int = 0
    down_until: float = 0.0


@dataclass
class _Stream:
    """What one streamed request has read so far."""

    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    tail: str = ""  # the end of the text, to check that a stop string is kept
    expired: bool = False
    aborted: bool = False
    response: httpx.Response | None = None


def finish_reason(reason: object, stop_reason: object) -> str:
    """An OpenAI/vLLM finish reason in the engine protocol's words (vLLM's ``stop_reason`` is the stop
    string, a stop token id, or None for EOS)."""
    if reason == "stop":
        return "stop" if isinstance(stop_reason, str) and stop_reason else "eos"
    if reason == "length":
        return "length"
    return "error"  # "abort" (the server gave up on it), or anything unknown


def load_tokenizer(model: str) -> Any:
    """The model's tokenizer, read from its local folder (the prompt is rendered here, not in the server)."""
    try:
        path = resolve_model(model)
    except FileNotFoundError as exc:
        raise EngineError(f"{exc}; the openai backend needs the model's tokenizer locally") from None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # transformers raises many types
        raise EngineError(f"could not load the tokenizer of {path}: {type(exc).__name__}: {exc}") from exc


def request_body(model: str, request: GenerationRequest, params: SamplingParams, *,
                 stream_interval: int = 1) -> dict[str, Any]:
    """The ``/v1/completions`` body: streamed, with usage on every chunk and the stop string kept."""
    body: dict[str, Any] = {
        "model": model, "prompt": request.prompt, "max_tokens": request.max_tokens,
        "temperature": params.temperature, "top_p": params.top_p, "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        # vLLM extensions (other servers ignore them): keep the stop string, return the token ids
        "include_stop_str_in_output": True, "return_token_ids": True,
    }
    if request.seed is not None:
        body["seed"] = request.seed
    if params.stop:
        body["stop"] = list(params.stop)
    if stream_interval > 1:  # a vLLM that knows it sends this many tokens per chunk; others ignore it
        body["stream_interval"] = stream_interval
    if not params.skip_special_tokens:  # vLLM extensions: the dialect reads the special tokens themselves
        body["skip_special_tokens"] = False
        body["spaces_between_special_tokens"] = False
    if params.logprobs is not None:
        body["logprobs"] = params.logprobs
        body["return_tokens_as_token_ids"] = True  # distinct keys in top_logprobs, whatever the text
    return body


class OpenAIServerEngine:
    """An :class:`~aimo_kernel.engine.base.AsyncEngine` over one or more OpenAI-compatible servers."""

    name = "openai"

    def __init__(self, config: Config, *, endpoints: Sequence[Endpoint], tokenizer: Any,
                 server: ServerProcess | None = None) -> None:
        if not endpoints:
            raise EngineError("the openai backend needs at least one server")
        self.config = config
        self.max_model_len = config.engine.max_model_len
        self.endpoints = list(endpoints)
        self.server = server
        self._tokenizer = tokenizer
        self._stall_s = config.budget.stall_timeout_s
        timeout = httpx.Timeout(self._stall_s, connect=min(CONNECT_TIMEOUT_S, self._stall_s))
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=config.engine.max_num_seqs)
        self._client = httpx.AsyncClient(timeout=timeout, limits=limits)
        self._open: dict[str, _Stream] = {}
        self._closed = False

    def chat_prompt(self, problem: str) -> str:
        return render_chat(self._tokenizer, problem)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text))

    @property
    def alive(self) -> bool:
        if self._closed:
            return False
        return self.server.alive if self.server is not None else True

    async def stream(self, request: GenerationRequest, params: SamplingParams, request_id: str) -> AsyncIterator[Delta]:
        now = time.monotonic()
        deadline = math.inf if request.deadline is None else request.deadline  # None: the caller cuts it off
        endpoint = await self._endpoint(min(deadline, now + self._stall_s))
        state = _Stream()
        final: Delta | None = None
        endpoint.inflight += 1
        self._open[request_id] = state
        timer = None if request.deadline is None else asyncio.get_running_loop().call_later(
            max(0.0, deadline - time.monotonic()), self._expire, state)
        try:
            async with self._client.stream("POST", f"{endpoint.url}/v1/completions",
                                           json=self._body(endpoint, request, params)) as resp:
                state.response = resp
                if state.expired:
                    raise httpx.StreamClosed()
                await self._check_status(resp, endpoint, request_id)
                async for delta in self._deltas(resp, state):
                    if delta.finish_reason is not None:
                        final = delta
                        break
                    yield delta
        except (httpx.HTTPError, httpx.StreamError) as exc:  # ReadError/StreamClosed: closed at the deadline
            final = self._ended(exc, state, endpoint, request_id)
        finally:
            if timer is not None:
                timer.cancel()
            endpoint.inflight -= 1
            self._open.pop(request_id, None)
        if final is None:
            final = self._ended(None, state, endpoint, request_id)
        yield final  # after the response is closed: a consumer that stops here leaves nothing open

    def _body(self, endpoint: Endpoint, request: GenerationRequest, params: SamplingParams) -> dict[str, Any]:
        return request_body(endpoint.model, request, params, stream_interval=self.config.engine.server_stream_interval)

    async def _endpoint(self, until: float) -> Endpoint:
        """The least busy server that is up; waits (bounded by ``until``) while none is."""
        while True:
            now = time.monotonic()
            ready = self.server is None or (self.server.ready.is_set() and self.server.check())
            up = [e for e in self.endpoints if e.down_until <= now] if ready else []
            if up:
                return min(up, key=lambda e: e.inflight)
            if now >= until:
                state = "restarting" if self.server is not None and self.server.alive else "down"
                raise EngineError(f"no server is up ({state}): {', '.join(e.url for e in self.endpoints)}")
            if self.server is not None and not self.server.alive:
                raise EngineError(f"the vLLM server is dead (log {self.server.log_path})")
            await asyncio.sleep(READY_POLL_S)

    @staticmethod
    async def _check_status(resp: httpx.Response, endpoint: Endpoint, request_id: str) -> None:
        if resp.status_code == 200:
            return
        body = (await resp.aread()).decode("utf-8", "replace")[:500]
        raise EngineError(f"server {endpoint.url} refused request {request_id}: HTTP {resp.status_code}: {body}")

    def _ended(self, exc: BaseException | None, state: _Stream, endpoint: Endpoint, request_id: str) -> Delta:
        """The last delta of a stream that ended without a finish reason: at the deadline, aborted, or failed."""
        if state.expired or state.aborted:
            return Delta(text="", num_tokens=0, finish_reason="deadline", prompt_tokens=state.prompt_tokens)
        if self.server is not None:
            self.server.check()  # a dead server stops taking requests now, not at the watcher's next look
        elif isinstance(exc, httpx.ConnectError):
            endpoint.down_until = time.monotonic() + DOWN_FOR_S
        if isinstance(exc, httpx.ReadTimeout):
            raise EngineError(f"server {endpoint.url}: no data on request {request_id} for {self._stall_s:g} s")
        what = "the stream ended without a finish reason" if exc is None else f"{type(exc).__name__}: {exc}"
        raise EngineError(f"server {endpoint.url}, request {request_id}: {what}") from exc

    async def _deltas(self, resp: httpx.Response, state: _Stream) -> AsyncIterator[Delta]:
        """Server-sent events to deltas; the finish chunk is held until the usage after it has arrived."""
        pending: tuple[dict[str, Any], Delta] | None = None
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, ": keep-alive" comments
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                raise EngineError(f"the server sent something that is not JSON: {data[:200]!r}") from None
            if "error" in chunk:
                raise EngineError(f"server error: {chunk['error']}")
            usage = chunk.get("usage") or {}
            self._usage(state, usage)
            for choice in chunk.get("choices") or ():
                delta = self._delta(state, choice, usage)
                if choice.get("finish_reason") is not None:
                    pending = (choice, delta)
                elif delta.text or delta.num_tokens:
                    yield delta
            if pending is not None and usage.get("prompt_tokens_details") is not None:
                break  # the final usage, with the cached tokens: nothing else is needed
        if pending is not None:
            yield self._finish(state, *pending)

    @staticmethod
    def _usage(state: _Stream, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        state.prompt_tokens = int(usage.get("prompt_tokens") or state.prompt_tokens)
        details = usage.get("prompt_tokens_details") or {}
        state.cached_tokens = int(details.get("cached_tokens") or state.cached_tokens)

    @staticmethod
    def _delta(state: _Stream, choice: dict[str, Any], usage: dict[str, Any] | None) -> Delta:
        text = choice.get("text") or ""
        logprobs, top = _logprobs(choice.get("logprobs"))
        ids = choice.get("token_ids")
        if ids is not None:
            count = len(ids)
        elif usage and usage.get("completion_tokens") is not None:
            count = max(0, int(usage["completion_tokens"]) - state.completion_tokens)
        else:
            count = len(logprobs) or int(bool(text))
        state.completion_tokens += count
        state.tail = (state.tail + text)[-256:]
        if not state.prompt_tokens and choice.get("prompt_token_ids"):
            state.prompt_tokens = len(choice["prompt_token_ids"])
        return Delta(text=text, num_tokens=count, prompt_tokens=state.prompt_tokens,
                     logprobs=logprobs, top_logprobs=top)

    @staticmethod
    def _finish(state: _Stream, choice: dict[str, Any], last: Delta) -> Delta:
        stop = choice.get("stop_reason", choice.get("matched_stop"))
        reason = finish_reason(choice.get("finish_reason"), stop)
        text = last.text
        if reason == "stop" and isinstance(stop, str) and not state.tail.endswith(stop):
            text += stop  # a server that drops the stop string from the text: put it back, as vLLM keeps it
        return Delta(text=text, num_tokens=last.num_tokens, finish_reason=reason,
                     prompt_tokens=state.prompt_tokens, cached_tokens=state.cached_tokens,
                     logprobs=last.logprobs, top_logprobs=last.top_logprobs)

    @staticmethod
    def _expire(state: _Stream) -> None:
        """The request's deadline: close its stream (vLLM aborts a request whose client has gone)."""
        state.expired = True
        if state.response is not None:
            asyncio.get_running_loop().create_task(state.response.aclose())

    async def abort(self, request_id: str) -> None:
        state = self._open.pop(request_id, None)
        if state is not None:
            state.aborted = True
            if state.response is not None:
                await state.response.aclose()

    def close(self) -> None:
        """Stop a spawned server (with its children) and let go of the connections."""
        self._closed = True
        server, self.server = self.server, None
        if server is not None:
            server.stop()
        with contextlib.suppress(RuntimeError):  # no loop running here: the connections go with the client
            asyncio.get_running_loop().create_task(self._client.aclose())


def _logprobs(data: dict[str, Any] | None) -> tuple[tuple[float, ...], tuple[tuple[float, ...], ...]]:
    """``token_logprobs`` and the ``top_logprobs`` values (most likely first) of a completions chunk."""
    if not data:
        return (), ()
    tokens = tuple(float(v) if v is not None else float("nan") for v in data.get("token_logprobs") or ())
    top = tuple(tuple(sorted((float(v) for v in (d or {}).values()), reverse=True))
                for d in data.get("top_logprobs") or ())
    return tokens, top


# Once one server answers, how long the others may still take before the run goes on without them.
LATE_SERVER_GRACE_S = 15.0


def _listed_model(client: httpx.Client, url: str) -> tuple[str, str]:
    """(the first model ``/v1/models`` lists, "") or ("", why not)."""
    try:
        resp = client.get(f"{url}/v1/models")
        resp.raise_for_status()
        models = resp.json().get("data") or []
        return (str(models[0]["id"]), "") if models else ("", "it serves no model")
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        return "", f"{type(exc).__name__}: {exc}"


def discover_endpoints(urls: Sequence[str], until: float) -> list[Endpoint]:
    """The servers that list their model, each with it. Waits until ``until`` while none answers; once one
    has, the others get :data:`LATE_SERVER_GRACE_S`, then the run goes on without them (a dead server
    among several must not hold a restart for the whole start-up limit)."""
    found: dict[str, Endpoint] = {}
    why: dict[str, str] = {}
    give_up = until
    with httpx.Client(timeout=httpx.Timeout(5.0)) as client:
        while True:
            for url in (u for u in urls if u not in found):
                model, why[url] = _listed_model(client, url)
                if model:
                    found[url] = Endpoint(url=url, model=model)
                    give_up = min(give_up, time.monotonic() + LATE_SERVER_GRACE_S)
            if len(found) == len(urls) or (found and time.monotonic() >= give_up):
                break
            if time.monotonic() >= until:
                raise EngineError("no server listed its model in time: "
                                  + "; ".join(f"{u}: {why[u]}" for u in urls))
            time.sleep(1.0)
    for url in (u for u in urls if u not in found):
        log.warning("server %s did not answer (%s); going on without it", url, why[url])
    return [found[u] for u in urls if u in found]


def create_engine(config: Config) -> OpenAIServerEngine:
    """Load the tokenizer, then spawn the server (``engine.server = "spawn"``) or find the given ones."""
    cfg = config.engine
    if cfg.server == ("spawn",):
        server = spawn_server(config, wait=False)
        try:  # the tokenizer loads here while the server loads the model
            tokenizer = load_tokenizer(cfg.model)
            server.wait_healthy()
        except BaseException:
            server.stop()
            raise
        return OpenAIServerEngine(config, endpoints=[Endpoint(url=server.url)], tokenizer=tokenizer, server=server)
    tokenizer = load_tokenizer(cfg.model)
    until = time.monotonic() + cfg.server_start_timeout_s
    endpoints = discover_endpoints([url.rstrip("/") for url in cfg.server], until)
    return OpenAIServerEngine(config, endpoints=endpoints, tokenizer=tokenizer)
