"""Synthetic competition problems with tool-integrated (TIR) solutions, for the built-in tiny model.

Each problem comes from one of a dozen families (arithmetic, sums of multiples, binomials, gcd/lcm,
modular powers, digit sums, divisor counts, linear equations, counting, Fibonacci and factorial
remainders, sums of squares). Its numbers are random, so solving it means copying them into code:
the model cannot memorise answers. A solution is written in the exact format the solver expects:
a sentence of reasoning, a ```python block, the ```output block the sandbox would print (the code is
really executed here and its output or error rendered as :meth:`ExecutionResult.render` does), and a
closing sentence with ``\\boxed{}``. With ``dialect="chat-tools"`` the same solution is written as the
chat-tools dialect reads it instead (:mod:`aimo_kernel.solve.chat_tools`): each block a
``<tool_call>{"name": "python", "arguments": {"code": ...}}</tool_call>`` followed by the ChatML tool turn
holding its output, so a model trained on it speaks Qwen3-style tool calls.

Two kinds of solutions teach the parts of SC-TIR a single clean trace would not:

* *repair* (``repair_rate``): the first block fails (a missing import, a misspelt name, a string
  concatenated with an int, a missing parenthesis), the model reads the error and a second round fixes it;
* *slip* (``slip_rate``): the code copies one number from the problem wrongly, like a real model's
  reasoning error, and boxes what that code printed. Single samples are then unreliable while the
  right answer stays the most common one, so majority voting has work to do.

Some families ask for a remainder modulo 1000 or 10^5 of a huge number, the competitions' own rule.
Splits are by a hash of the problem text: ``heldout`` problems are never produced by ``train``.
Covers generation only; training is ``tools/train_tiny_tir.py``. Standard library only, plus the
package's output rendering.

    python tools/synth_tir.py --split heldout --count 200 --csv heldout.csv
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import random
import sys
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aimo_kernel.sandbox import ExecutionResult  # noqa: E402
from aimo_kernel.solve.chat_tools import CLOSE, OPEN, TOOL_TURN  # noqa: E402

OUTPUT_WIDTH = 200  # TIRConfig.output_max_chars: the output block as the solver renders it
MAX_ANSWER = 99_999  # the AIMO3 range of the cpu preset; larger results are asked modulo 1000 or 10^5
HELDOUT_BUCKETS = 20  # one problem text in 20 belongs to the held-out split
DIALECTS = ("numina", "chat-tools")  # the formats a solution can be written in


@dataclass(frozen=True)
class Problem:
    """One problem: its text, the code that solves it, and the numbers a slip may miscopy."""

    family: str
    text: str
    intro: str
    code: str
    numbers: tuple[int, ...] = ()
    imports: tuple[str, ...] = ()  # import lines the code needs (a repair may drop them)
    result_name: str = "result"


@dataclass(frozen=True)
class Example:
    id: str
    family: str
    problem: str
    answer: int
    solution: str  # the assistant's text after the prompt ("### Solution: " for numina)
    kind: str  # clean | repair | slip | repair+slip
    outputs: tuple[str, ...] = field(default=())


# ----- families ---------------------------------------------------------------------------------


def _pick(rng: random.Random, *options: str) -> str:
    return options[rng.randrange(len(options))]


def _mod_suffix(rng: random.Random) -> tuple[str, int]:
    m = rng.choice((1000, 100000))
    return ("1000" if m == 1000 else "$10^5$"), m


def fam_arith(rng: random.Random) -> Problem:
    a, b, c = rng.randint(12, 299), rng.randint(12, 299), rng.randint(2, 999)
    text = _pick(rng, f"Compute ${a} \\times {b} + {c}$.", f"What is the value of ${a} \\cdot {b} + {c}$?",
                 f"Evaluate {a} times {b}, plus {c}.")
    return Problem("arith", text, f"We multiply {a} by {b} and add {c}.",
                   f"result = {a} * {b} + {c}\nprint(result)", (a, b, c))


def fam_sum_multiples(rng: random.Random) -> Problem:
    k, n = rng.randint(2, 19), rng.randint(40, 900)
    text = _pick(rng, f"Find the sum of all positive multiples of {k} that are at most {n}.",
                 f"What is the sum of the positive integers not exceeding {n} that are divisible by {k}?")
    return Problem("sum_multiples", text, f"We add up the multiples of {k} from 1 to {n}.",
                   f"result = sum(i for i in range(1, {n} + 1) if i % {k} == 0)\nprint(result)", (k, n))


def fam_binomial(rng: random.Random) -> Problem:
    n = rng.randint(8, 60)
    k = rng.randint(2, min(n - 2, 12))
    value = math.comb(n, k)
    if value <= MAX_ANSWER:
        text = _pick(rng, f"In how many ways can {k} students be chosen from a class of {n}?",
                     f"How many subsets with exactly {k} elements does a set with {n} elements have?")
        code = f"result = math.comb({n}, {k})\nprint(result)"
    else:
        word, m = _mod_suffix(rng)
        text = f"Find the remainder when $\\binom{{{n}}}{{{k}}}$ is divided by {word}."
        code = f"result = math.comb({n}, {k}) % {m}\nprint(result)"
    return Problem("binomial", text, f"This is the binomial coefficient C({n}, {k}).", code, (n, k),
                   imports=("import math",))


def fam_gcd(rng: random.Random) -> Problem:
    g = rng.randint(2, 99)
    a, b = g * rng.randint(3, 900), g * rng.randint(3, 900)
    if rng.random() < 0.5:
        text = f"Find the greatest common divisor of {a} and {b}."
        return Problem("gcd", text, f"We compute gcd({a}, {b}).",
                       f"result = math.gcd({a}, {b})\nprint(result)", (a, b), imports=("import math",))
    a, b = rng.randint(6, 400), rng.randint(6, 400)
    text = f"What is the least common multiple of {a} and {b}?"
    return Problem("lcm", text, f"We compute lcm({a}, {b}).",
                   f"result = math.lcm({a}, {b})\nprint(result)", (a, b), imports=("import math",))


def fam_power_mod(rng: random.Random) -> Problem:
    a, b = rng.randint(2, 99), rng.randint(20, 999)
    if rng.random() < 0.5:
        word, m = _mod_suffix(rng)
    else:
        m = rng.randint(7, 997)
        word = str(m)
    text = _pick(rng, f"What is the remainder when ${a}^{{{b}}}$ is divided by {word}?",
                 f"Find ${a}^{{{b}}} \\bmod {m}$.")
    return Problem("power_mod", text, f"We reduce {a} to the power {b} modulo {m}.",
                   f"result = pow({a}, {b}, {m})\nprint(result)", (a, b, m))


def fam_digit_sum(rng: random.Random) -> Problem:
    a, b = rng.randint(2, 99), rng.randint(5, 200)
    text = f"What is the sum of the digits of ${a}^{{{b}}}$?"
    return Problem("digit_sum", text, f"We expand {a} to the power {b} and add its digits.",
                   f"result = sum(int(d) for d in str({a} ** {b}))\nprint(result)", (a, b))


def fam_divisors(rng: random.Random) -> Problem:
    n = rng.randint(12, 99_999)
    text = _pick(rng, f"How many positive divisors does {n} have?", f"Find the number of positive divisors of {n}.")
    return Problem("divisors", text, f"We count the divisors of {n}.",
                   f"result = sum(1 for d in range(1, {n} + 1) if {n} % d == 0)\nprint(result)", (n,))


def fam_linear(rng: random.Random) -> Problem:
    x, a = rng.randint(2, 999), rng.randint(2, 60)
    b = rng.randint(1, 999)
    c = a * x + b
    text = _pick(rng, f"If ${a}x + {b} = {c}$, what is $x$?", f"Solve ${a}x + {b} = {c}$ for $x$.")
    code = f"x = sympy.symbols('x')\nresult = sympy.solve({a} * x + {b} - {c}, x)[0]\nprint(result)"
    return Problem("linear", text, "We solve the linear equation with sympy.", code, (a, b, c),
                   imports=("import sympy",))


def fam_count(rng: random.Random) -> Problem:
    n, a = rng.randint(50, 9999), rng.randint(2, 15)
    b = rng.choice([v for v in range(2, 16) if v != a])
    text = f"How many integers from 1 to {n} are divisible by {a} or {b}?"
    return Problem("count", text, f"We count the integers up to {n} divisible by {a} or {b}.",
                   f"result = sum(1 for i in range(1, {n} + 1) if i % {a} == 0 or i % {b} == 0)\nprint(result)",
                   (n, a, b))


def fam_fibonacci(rng: random.Random) -> Problem:
    n = rng.randint(20, 999)
    word, m = _mod_suffix(rng)
    text = (f"Let $F_1 = F_2 = 1$ and $F_{{n+2}} = F_{{n+1}} + F_n$. "
            f"Find the remainder when $F_{{{n}}}$ is divided by {word}.")
    code = f"a, b = 1, 1\nfor _ in range({n} - 2):\n    a, b = b, a + b\nresult = b % {m}\nprint(result)"
    return Problem("fibonacci", text, f"We iterate the recurrence up to F_{n}.", code, (n, m))


def fam_factorial(rng: random.Random) -> Problem:
    n = rng.randint(8, 120)
    m = rng.choice((1009, 10007, 997, 9973, 99991))
    text = f"Find the remainder when ${n}!$ is divided by {m}."
    return Problem("factorial", text, f"We reduce {n} factorial modulo {m}.",
                   f"result = math.factorial({n}) % {m}\nprint(result)", (n, m), imports=("import math",))


def fam_powers_sum(rng: random.Random) -> Problem:
    p = rng.choice((2, 3))
    n = rng.randint(10, 66 if p == 2 else 24)
    word = "squares" if p == 2 else "cubes"
    text = f"Compute the sum of the {word} of the integers from 1 to {n}."
    return Problem("powers_sum", text, f"We add the {word} from 1 to {n}.",
                   f"result = sum(i ** {p} for i in range(1, {n} + 1))\nprint(result)", (n,))


FAMILIES: tuple[Callable[[random.Random], Problem], ...] = (
    fam_arith, fam_sum_multiples, fam_binomial, fam_gcd, fam_power_mod, fam_digit_sum, fam_divisors,
    fam_linear, fam_count, fam_fibonacci, fam_factorial, fam_powers_sum,
)


# ----- running code as the sandbox does -----------------------------------------------------------


def run_code(code: str) -> tuple[str, int | None]:
    """Execute ``code`` here and render its output block; (text, integer printed or None)."""
    out = io.StringIO()
    name = "<code>"  # the file name the sandboxes compile under
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, name, "exec"), {"__name__": "__main__"})
        res = ExecutionResult(stdout=out.getvalue(), exit_code=0)
    except Exception as exc:
        res = ExecutionResult(stdout=out.getvalue(), error="".join(traceback.format_exception(exc)), exit_code=1)
    text = res.render(OUTPUT_WIDTH)
    value = int(text) if res.completed and text.lstrip("-").isdigit() else None
    return text, value


# ----- solutions ----------------------------------------------------------------------------------

_CLOSERS = ("The answer is $\\boxed{{{v}}}$.", "Therefore the answer is $\\boxed{{{v}}}$.",
            "So the final answer is $\\boxed{{{v}}}$.")
_REPAIR_LINES = ("The code raised an error. Let me fix it and run it again.",
                 "That failed. Let me correct the code.")


def _full_code(p: Problem) -> str:
    return "\n".join((*p.imports, p.code))


def _miscopy(p: Problem, rng: random.Random) -> Problem | None:
    """The same solution with one number of the problem copied wrongly (a slip), or None."""
    candidates = [n for n in p.numbers if f"{n}" in p.code and n > 2]
    if not candidates:
        return None
    n = rng.choice(candidates)
    digits = list(str(n))
    i = rng.randrange(len(digits))
    new = rng.choice([d for d in "0123456789" if d != digits[i] and not (i == 0 and d == "0")])
    digits[i] = new
    wrong = int("".join(digits))
    code = p.code.replace(f"{n}", f"{wrong}", 1)
    return Problem(p.family, p.text, p.intro, code, p.numbers, p.imports, p.result_name)


def _broken(p: Problem, rng: random.Random) -> str | None:
    """A first attempt that fails to run (the repair lesson), or None when no break applies."""
    code = _full_code(p)
    options: list[str] = []
    if p.imports:
        options.append(p.code)  # the import forgotten
    if "print(result)" in code:
        options.append(code.replace("print(result)", "print(reslt)"))
        options.append(code.replace("print(result)", 'print("The answer is " + result)'))
    if code.rstrip().endswith(")"):
        options.append(code.rstrip()[:-1])
    return rng.choice(options) if options else None


def _block(code: str, dialect: str = "numina") -> tuple[str, str, int | None]:
    """One block as the dialect writes it, with the output the solver would feed back."""
    out, value = run_code(code)
    if dialect == "chat-tools":
        call = json.dumps({"name": "python", "arguments": {"code": code}})
        return f"{OPEN}\n{call}\n{CLOSE}{TOOL_TURN[0]}{out}{TOOL_TURN[1]}", out, value
    return f"```python\n{code}\n```\n```output\n{out}\n```\n", out, value


def solve_text(p: Problem, rng: random.Random, *, repair: bool, slip: bool,
               dialect: str = "numina") -> tuple[str, int | None, str, tuple[str, ...]]:
    """The assistant's solution; returns (text, boxed value, kind, outputs)."""
    final = _miscopy(p, rng) if slip else p
    kind = "slip" if final is not p and final is not None else "clean"
    final = final or p
    parts, outputs = [f"{p.intro} Let's compute it with Python.\n\n"], []
    if repair and (bad := _broken(final, rng)) is not None:
        block, out, value = _block(bad, dialect)
        if value is None:  # it really failed: the lesson holds
            parts += [block, rng.choice(_REPAIR_LINES) + "\n\n"]
            outputs.append(out)
            kind = "repair" if kind == "clean" else "repair+slip"
    block, out, value = _block(_full_code(final), dialect)
    parts.append(block)
    outputs.append(out)
    if value is None:
        return "", None, kind, tuple(outputs)
    parts.append(rng.choice(_CLOSERS).format(v=value))
    return "".join(parts), value, kind, tuple(outputs)


def split_of(problem_text: str) -> str:
    return "heldout" if zlib.crc32(problem_text.encode()) % HELDOUT_BUCKETS == 0 else "train"


def generate(split: str, count: int, *, seed: int, repair_rate: float = 0.45,
             slip_rate: float = 0.2, dialect: str = "numina") -> Iterator[Example]:
    """``count`` examples of ``split`` ("train" or "heldout"), reproducible from ``seed``; the same problems
    and choices for every dialect."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {DIALECTS}, got {dialect!r}")
    rng = random.Random(f"{split}:{seed}")
    made, seen = 0, set()
    while made < count:
        p = rng.choice(FAMILIES)(rng)
        if split_of(p.text) != split or p.text in seen:
            continue
        gold = run_code(_full_code(p))[1]
        if gold is None or not 0 <= gold <= MAX_ANSWER:
            continue
        slip = split == "train" and rng.random() < slip_rate
        text, value, kind, outputs = solve_text(p, rng, repair=rng.random() < repair_rate, slip=slip,
                                                dialect=dialect)
        if value is None:
            continue
        seen.add(p.text)
        yield Example(f"{split}-{seed}-{made:06d}", p.family, p.text, gold, text, kind, outputs)
        made += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=("train", "heldout"), default="heldout")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dialect", choices=DIALECTS, default="numina", help="the format the solutions are written in")
    ap.add_argument("--csv", type=Path, help="write id,problem,answer (the solver's problem format)")
    ap.add_argument("--jsonl", type=Path, help="write every field, solutions included")
    args = ap.parse_args(argv)
    examples = list(generate(args.split, args.count, seed=args.seed, dialect=args.dialect))
    if args.csv:
        with args.csv.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "problem", "answer"])
            w.writerows([e.id, e.problem, e.answer] for e in examples)
    if args.jsonl:
        with args.jsonl.open("w") as f:
            for e in examples:
                f.write(json.dumps(e.__dict__) + "\n")
    if not (args.csv or args.jsonl):
        for e in examples[:3]:
            print(f"### Problem: {e.problem}\n### Solution: {e.solution}\n[{e.kind}, gold {e.answer}]\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
