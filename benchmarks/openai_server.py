"""Streaming throughput of the ``openai`` backend (a spawned vLLM server) against the in-process ``vllm`` engine.

Both run the ``cpu`` preset's model with the same engine arguments (eager, single-process executor,
so that the two differ only by the HTTP hop) and stream the same requests concurrently on one event
loop: ``--prompts`` distinct chat prompts × ``--tokens`` new tokens at T=1 with per-request seeds
(a request may end early on EOS: the tokens are counted, not assumed). Prints tokens/s
(median of ``--repeats``) for each and the ratio openai / vllm (1.0 = no cost for the HTTP hop),
and the server's start-up time. The two engines run one after the other, never together.

    .venv/bin/python benchmarks/openai_server.py [--prompts 16] [--tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import time
from typing import Any


async def _one(engine: Any, prompt: str, tokens: int, seed: int, params: Any, rid: str) -> int:
    from aimo_kernel.engine import GenerationRequest

    req = GenerationRequest(prompt=prompt, max_tokens=tokens, seed=seed)
    return sum([d.num_tokens async for d in engine.stream(req, params, rid)])


async def rate(engine: Any, prompts: list[str], tokens: int, repeats: int) -> float:
    from aimo_kernel.engine import SamplingParams

    params = SamplingParams(temperature=1.0)
    await asyncio.gather(*(_one(engine, p, tokens, i, params, f"w{i}") for i, p in enumerate(prompts)))  # warm-up
    rates = []
    for r in range(repeats):
        t0 = time.perf_counter()
        counts = await asyncio.gather(*(_one(engine, p, tokens, 100 * r + i, params, f"r{r}-{i}")
                                        for i, p in enumerate(prompts)))
        rates.append(sum(counts) / (time.perf_counter() - t0))
    return statistics.median(rates)


async def measure(backend: str, config: Any, args: argparse.Namespace) -> tuple[float, float]:
    from aimo_kernel.engine import get_engine

    t0 = time.monotonic()
    engine: Any = get_engine(backend, config)
    loaded = time.monotonic() - t0
    try:
        prompts = [engine.chat_prompt(f"Problem {i}: find the sum of the first {i + 3} odd numbers.")
                   for i in range(args.prompts)]
        return await rate(engine, prompts, args.tokens, args.repeats), loaded
    finally:
        engine.close()
        await asyncio.sleep(0.5)  # let the closed client's connections go


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from aimo_kernel.config.presets import get_preset

    cpu = get_preset("cpu")
    same = dataclasses.replace(cpu.engine, enforce_eager=True, distributed_executor_backend="uni", in_process=False)
    configs = {"vllm": dataclasses.replace(cpu, engine=same),
               "openai": dataclasses.replace(cpu, engine=dataclasses.replace(same, backend="openai",
                                                                             server=("spawn",)))}
    print(f"model {cpu.engine.model}, {args.prompts} concurrent streams x {args.tokens} tokens, "
          f"median of {args.repeats}")
    got = {}
    for backend, config in configs.items():
        got[backend], loaded = asyncio.run(measure(backend, config, args))
        print(f"{backend:<7} {got[backend]:8.0f} tok/s   (engine ready after {loaded:.1f} s)", flush=True)
    print(f"ratio openai / vllm: {got['openai'] / got['vllm']:.2f}")


if __name__ == "__main__":
    main()
