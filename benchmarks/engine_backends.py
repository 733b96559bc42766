"""Throughput of the plain-transformers backend against ``vllm-offline``, measured in the same run.

Both engines load the ``cpu`` preset's model in float32 and generate the same batch: ``--prompts``
distinct chat prompts × ``--tokens`` new tokens, greedy, then the same count sampled at T=0.8 with
the solver's stop string and per-request seeds. Prints tokens/s (median of ``--repeats``) for each
backend and the ratio transformers / vLLM (1.0 = as fast as vLLM).

    .venv/bin/python benchmarks/engine_backends.py [--prompts 8] [--tokens 64] [--repeats 3] [--model M]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Any


def rate(engine: Any, prompts: list[str], params: Any, tokens: int, repeats: int) -> float:
    from aimo_kernel.engine import GenerationRequest

    reqs = [GenerationRequest(prompt=p, max_tokens=tokens, seed=i) for i, p in enumerate(prompts)]
    engine.generate(reqs, params, deadline=time.monotonic() + 600)  # warm-up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = engine.generate(reqs, params, deadline=time.monotonic() + 600)
        rates.append(sum(g.num_tokens for g in outs) / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", help="a model folder or builtin:NAME (default: the cpu preset's)")
    args = parser.parse_args()

    from aimo_kernel.config.presets import get_preset
    from aimo_kernel.engine import SamplingParams, get_engine
    from aimo_kernel.solve.dialect import STOP

    cpu = get_preset("cpu")
    engine_cfg = dataclasses.replace(cpu.engine, dtype="float32", model=args.model or cpu.engine.model)
    config = dataclasses.replace(cpu, engine=engine_cfg)
    engines = {"vllm-offline": get_engine("vllm-offline", config), "transformers": get_engine("transformers", config)}
    prompts = [engines["transformers"].chat_prompt(f"Problem {i}: find the sum of the first {i + 3} odd numbers.")
               for i in range(args.prompts)]
    cases = {"greedy": SamplingParams(temperature=0.0),
             "T=0.8, stop": SamplingParams(temperature=0.8, stop=(STOP,))}
    print(f"model {config.engine.model}, {args.prompts} prompts x {args.tokens} tokens, median of {args.repeats}")
    for label, params in cases.items():
        got = {name: rate(eng, prompts, params, args.tokens, args.repeats) for name, eng in engines.items()}
        print(f"{label:<12} vllm-offline {got['vllm-offline']:8.0f} tok/s   transformers {got['transformers']:8.0f} "
              f"tok/s   ratio {got['transformers'] / got['vllm-offline']:.2f}")
    for eng in engines.values():
        eng.close()


if __name__ == "__main__":
    main()
