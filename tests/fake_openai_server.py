"""A small OpenAI-compatible completions server that answers the way vLLM's does, for the ``openai`` backend's tests.

It speaks what the backend uses of vLLM 0.32's server, with the same shapes (checked against a real
``vllm serve``): ``GET /health``, ``GET /v1/models``, ``GET /metrics`` (``vllm:num_requests_running``),
and ``POST /v1/completions`` streamed as server-sent events: a chunk per token, or per
``stream_interval`` tokens (the first and the last sent at once), with ``token_ids``, ``stop_reason``,
per-chunk usage (``continuous_usage_stats``) and logprobs, then a last usage chunk with
``prompt_tokens_details.cached_tokens`` and ``data: [DONE]``; HTTP 400 for ``max_tokens`` beyond the context.
A client that goes away aborts its request, as in vLLM. The "model" samples words with a
``random.Random(seed)``, so equal seeds give equal texts. Faults for the tests: a delay per token
(``slow_s``), a stream that stops sending (``stall_after``), a connection dropped mid-stream
(``die_after``), EOS after ``eos_after`` tokens, and stop strings left out of the text (``drop_stop``,
as a server that ignores ``include_stop_str_in_output`` does).

Run as a script (``python fake_openai_server.py PORT [--child] [--delay S] [--fail]``) it serves until
killed; ``--child`` also starts a sleeping child process, standing for vLLM's engine core, to check
that stopping the process group ends it; ``--delay`` and ``--fail`` make slow and failed starts.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = ("the", "sum", "of", "two", "is", "four", "we", "count", "divisors", "```python\n", "print(4)\n", "```\n",
         "answer", "\\boxed{4}", "so", "and", "it", "with", "Python", ".", "\n")
MAX_MODEL_LEN = 2048
MODEL = "fake-model"


@dataclass
class Behaviour:
    slow_s: float = 0.0
    stall_after: int | None = None
    die_after: int | None = None
    eos_after: int | None = None
    drop_stop: bool = False
    bodies: list[dict[str, Any]] = field(default_factory=list)
    running: int = 0
    aborted: int = 0
    finished: int = 0
    prompts: list[list[str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def tokens_of(text: str) -> list[str]:
    return text.split(" ")


def sample(seed: int | None, index: int) -> tuple[int, str]:
    """Token ``index`` of the sample for ``seed``: (id, text)."""
    rng = random.Random(f"{seed}-{index}")
    i = rng.randrange(len(WORDS))
    return i, ("" if index == 0 else " ") + WORDS[i]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeServer

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _json(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        b = self.server.behaviour
        if self.path == "/health":
            self._json(200, {})
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model",
                                                         "max_model_len": MAX_MODEL_LEN}]})
        elif self.path == "/metrics":
            text = (f'vllm:num_requests_running{{engine="0",model_name="{MODEL}"}} {float(b.running)}\n'
                    f'vllm:request_success_total{{finished_reason="abort"}} {float(b.aborted)}\n').encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
        else:
            self._json(404, {"error": {"message": "not found", "code": 404}})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        b = self.server.behaviour
        with b.lock:
            b.bodies.append(body)
        if body.get("model") != MODEL:
            return self._json(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                              "type": "NotFoundError", "code": 404}})
        if int(body.get("max_tokens", 16)) > MAX_MODEL_LEN:
            return self._json(400, {"error": {"message": f"max_tokens={body['max_tokens']} cannot be greater "
                                              f"than max_model_len={MAX_MODEL_LEN}.", "type": "BadRequestError",
                                              "code": 400}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with b.lock:
            b.running += 1
        try:
            self._generate(body, b)
            with b.lock:
                b.finished += 1
        except (BrokenPipeError, ConnectionResetError):  # the client went away: abort, as vLLM does
            with b.lock:
                b.aborted += 1
        finally:
            with b.lock:
                b.running -= 1

    def _send(self, payload: str) -> None:
        data = f"data: {payload}\n\n".encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _generate(self, body: dict[str, Any], b: Behaviour) -> None:
        prompt = tokens_of(body["prompt"])
        with b.lock:
            cached = max((_common(prompt, p) for p in b.prompts), default=0) // 4 * 4  # blocks of 4 "tokens"
            b.prompts.append(prompt)
        n_prompt = len(prompt) + 1  # BOS
        every = int(body.get("stream_interval") or 1)  # vLLM: tokens per chunk; first and last sent at once
        text, buf, i = "", Chunk(), 0
        for i in range(int(body.get("max_tokens", 16))):
            if b.die_after is not None and i == b.die_after:
                self.connection.shutdown(2)  # the server process dying mid-stream, as the client sees it
                raise ConnectionResetError
            if b.stall_after is not None and i >= b.stall_after:
                time.sleep(3600)
            time.sleep(b.slow_s)
            tid, piece, finish, stop_reason = self._token(body, b, text, i)
            buf.add(i, tid, piece, len(text), body)
            text += piece
            if i == 0 or len(buf.ids) >= every or finish is not None:
                self._send(json.dumps(buf.chunk(body, n_prompt, i, finish, stop_reason)))
                buf = Chunk()
            if finish is not None:
                break
        if (body.get("stream_options") or {}).get("include_usage"):
            self._send(json.dumps({"id": "cmpl-fake", "object": "text_completion", "model": MODEL, "choices": [],
                                   "usage": {"prompt_tokens": n_prompt, "completion_tokens": i + 1,
                                             "total_tokens": n_prompt + i + 1,
                                             "prompt_tokens_details": {"cached_tokens": cached}}}))
        self._send("[DONE]")
        self.wfile.write(b"0\r\n\r\n")

    @staticmethod
    def _token(body: dict[str, Any], b: Behaviour, text: str, i: int) -> tuple[int, str, str | None, str | None]:
        """Token ``i``: its id, its text (cut at a stop string), the finish reason and stop reason."""
        tid, piece = sample(body.get("seed"), i)
        finish, stop_reason = None, None
        if b.eos_after is not None and i + 1 >= b.eos_after:
            finish = "stop"  # EOS: vLLM says "stop" with no stop_reason
        if i + 1 == int(body.get("max_tokens", 16)):
            finish = "length"
        hit = next((s for s in body.get("stop") or [] if s in text + piece), None)
        if hit is not None:
            end = (text + piece).index(hit) + len(hit)
            keep = bool(body.get("include_stop_str_in_output")) and not b.drop_stop
            piece = (text + piece)[len(text):end if keep else end - len(hit)]
            finish, stop_reason = "stop", hit
        return tid, piece, finish, stop_reason


@dataclass
class Chunk:
    """Tokens gathered for one streamed chunk."""

    ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: dict[str, list[Any]] = field(default_factory=lambda: {
        "text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []})

    def add(self, i: int, tid: int, piece: str, offset: int, body: dict[str, Any]) -> None:
        self.ids.append(tid)
        self.text += piece
        if body.get("logprobs") is not None:
            one = _logprobs(i, tid, offset, int(body["logprobs"]), piece, bool(body.get("return_tokens_as_token_ids")))
            for key, values in one.items():
                self.logprobs[key] += values

    def chunk(self, body: dict[str, Any], n_prompt: int, i: int, finish: str | None,
              stop_reason: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "text": self.text, "finish_reason": finish, "stop_reason": stop_reason,
                                  "token_ids": self.ids if body.get("return_token_ids") else None}
        if i + 1 == len(self.ids) and body.get("return_token_ids"):  # the first chunk
            choice["prompt_token_ids"] = list(range(n_prompt))
        if body.get("logprobs") is not None:
            choice["logprobs"] = self.logprobs
        chunk: dict[str, Any] = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
                                 "model": MODEL, "choices": [choice]}
        usage = body.get("stream_options") or {}
        if usage.get("include_usage") and usage.get("continuous_usage_stats"):
            chunk["usage"] = {"prompt_tokens": n_prompt, "completion_tokens": i + 1, "total_tokens": n_prompt + i + 1}
        return chunk


def _common(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _logprobs(i: int, tid: int, offset: int, k: int, piece: str, as_ids: bool) -> dict[str, Any]:
    lp = -0.1 * (1 + i % 5)
    key = (lambda t: f"token_id:{t}") if as_ids else (lambda t: WORDS[t])
    top = {key(tid): lp}
    for j in range(1, k):
        top[key((tid + j) % len(WORDS))] = lp - j - math.log(2)
    return {"text_offset": [offset], "token_logprobs": [lp], "tokens": [key(tid) if as_ids else piece],
            "top_logprobs": [top]}


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.behaviour = Behaviour()
        self.thread: threading.Thread | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, OSError)):  # a client going away is normal
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> FakeServer:
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before listening (a slow start)")
    parser.add_argument("--fail", action="store_true", help="print an error and exit (a start that fails)")
    args = parser.parse_args()
    if args.child:  # stands for vLLM's engine core: it must go when the server is stopped
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        print(f"child pid {child.pid}", flush=True)
    print("fake server starting", flush=True)
    if args.fail:
        print("ValueError: this model does not fit (a start-up failure)", flush=True)
        sys.exit(3)
    time.sleep(args.delay)
    FakeServer(args.port).serve_forever()


if __name__ == "__main__":
    main()
