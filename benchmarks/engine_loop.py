"""Overhead of the deadline-checked generation loop against vLLM's own ``LLM.generate``.

The solver drives vLLM step by step (checking the clock between steps, streaming deltas) instead of
calling ``LLM.generate``, which cannot be stopped at a deadline. This measures what that costs, in the
same run and on the same engine: both paths generate the same requests (same prompts, seeds and
max_tokens) with the built-in tiny model, whose per-step overhead dominates, so the ratio is an upper
bound on the loop's overhead. Prints tokens/s for each path and the ratio (ours / vLLM's; 1.0 = free).

    .venv/bin/python benchmarks/engine_loop.py [--candidates 32] [--tokens 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from vllm import SamplingParams as VllmParams

    from aimo_kernel.config.presets import get_preset
    from aimo_kernel.engine import GenerationRequest, SamplingParams, get_engine

    engine = get_engine("vllm", get_preset("cpu"))
    prompt = engine.chat_prompt("Find the number of ordered pairs $(a, b)$ of integers with $a^2 + b^2 = 2025$.")
    seeds = list(range(args.candidates))
    ours_requests = [GenerationRequest(prompt=prompt, max_tokens=args.tokens, seed=s) for s in seeds]
    ours_params = SamplingParams(temperature=0.8, stop=("```output\n",))
    theirs_params = [VllmParams(temperature=0.8, max_tokens=args.tokens, seed=s, stop=["```output\n"],
                                include_stop_str_in_output=True) for s in seeds]
    llm = engine._llm  # the same loaded engine, so only the loop differs

    def ours() -> int:
        outs = engine.generate(ours_requests, ours_params, deadline=time.monotonic() + 600)
        return sum(g.num_tokens for g in outs)

    def theirs() -> int:
        outs = llm.generate([prompt] * len(seeds), theirs_params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs)

    ours(), theirs()  # warm-up: compile, prefix cache
    rates: dict[str, list[float]] = {"step loop (ours)": [], "LLM.generate": []}
    for _ in range(args.repeats):
        for name, fn in (("step loop (ours)", ours), ("LLM.generate", theirs)):
            t0 = time.perf_counter()
            tokens = fn()
            rates[name].append(tokens / (time.perf_counter() - t0))
    for name, values in rates.items():
        print(f"{name:<18} {statistics.median(values):>10.0f} tok/s (median of {args.repeats})")
    ratio = statistics.median(rates["step loop (ours)"]) / statistics.median(rates["LLM.generate"])
    print(f"ratio ours/vLLM: {ratio:.2f}  ({args.candidates} candidates x {args.tokens} tokens)")
    engine.close()


if __name__ == "__main__":
    main()
