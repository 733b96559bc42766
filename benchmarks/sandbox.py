"""Latency of the warm pool sandbox against a fresh ``python3`` per code block (the Numina way).

48 blocks typical of competition-math TIR code (sympy solve/factor/series, numpy, brute-force loops, a few
that raise and a few that run past the timeout) run concurrently, ``--workers`` at a time, twice in the
same run: through :class:`~aimo_kernel.sandbox.PoolSandbox` (with the isolation it detects), and as the
baseline, each written to a file and run by a fresh interpreter that imports math/numpy/sympy first
(``subprocess.run`` with a timeout, nothing else; its timeout gets ``--import-allowance`` extra seconds, since the
imports count).
Prints median and p95 per-block latency, wall time, the ratios baseline/ours and the median cost of a
trivial ``print(1)`` block, and of the second block of a persistent session (``print(x)`` after ``x = 1``).

    .venv/bin/python benchmarks/sandbox.py [--workers 4] [--timeout 2] [--trivial 30]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from aimo_kernel.config import SandboxConfig
from aimo_kernel.sandbox import PoolSandbox, describe_isolation

HEADER = "import math\nimport numpy as np\nimport sympy as sp\n"

BLOCKS = [
    "x = sp.symbols('x')\nsp.solve(x**2 - 5*x + 6, x)",
    "x, y = sp.symbols('x y')\nsp.solve([x + y - 10, x - y - 2], [x, y])",
    "x = sp.symbols('x')\nsp.factor(x**4 - 16)",
    "x = sp.symbols('x')\nsp.series(sp.exp(x) * sp.sin(x), x, 0, 6)",
    "sp.factorint(2**32 + 1)",
    "sum(1 for a in range(1, 200) for b in range(a, 200) if (a*a + b*b) % 7 == 0)",
    "count = 0\nfor n in range(1, 10**5):\n    if n % 3 == 0 or n % 5 == 0:\n        count += n\nprint(count)",
    "np.linalg.det(np.array([[2, 1], [1, 3]]))",
    "A = np.arange(1, 10).reshape(3, 3)\nprint(np.linalg.matrix_rank(A), A.sum())",
    "sp.isprime(10**9 + 7)",
    "sum(sp.divisors(360))",
    "sp.binomial(30, 15) % 1000",
    "math.comb(50, 25) % 1000",
    "x = sp.symbols('x')\nsp.integrate(x**3 * sp.exp(-x), (x, 0, sp.oo))",
    "n = sp.symbols('n', integer=True)\nsp.summation(n**2, (n, 1, 100))",
    "sp.nsimplify(0.333333333333333)",
    "x = sp.symbols('x')\nsp.expand((x + 2)**8).coeff(x, 5)",
    "[p for p in sp.primerange(1, 100) if (p + 2) in sp.primerange(1, 103)]",
    "sp.totient(10**6)",
    "from itertools import permutations\nsum(1 for p in permutations(range(7)) if all(p[i] != i for i in range(7)))",
    "x = sp.symbols('x')\nsp.Poly(x**5 - x - 1, x).all_coeffs()",
    "sp.Matrix([[1, 2], [3, 4]]).inv()",
    "pow(7, 10**6, 1000)",
    "from fractions import Fraction\nsum(Fraction(1, k * (k + 1)) for k in range(1, 100))",
    "x = sp.symbols('x')\nsp.limit(sp.sin(x) / x, x, 0)",
    "np.round(np.roots([1, -6, 11, -6]), 6)",
    "len([n for n in range(1, 3000) if str(n) == str(n)[::-1]])",
    "sp.gcd(2**40 - 1, 2**24 - 1)",
    "x = sp.symbols('x')\nsp.simplify((x**2 - 1) / (x - 1))",
    "sp.mod_inverse(17, 1000)",
    "dp = [0] * 101\ndp[0] = 1\nfor c in (1, 5, 10, 25, 50):\n"
    "    for v in range(c, 101):\n        dp[v] += dp[v - c]\ndp[100]",
    "sp.fibonacci(100) % 1000",
    "x = sp.symbols('x')\nsp.solve(sp.Eq(x**3 - 3*x + 1, 0), x)",
    "np.sum(np.arange(1, 1001) ** 2) % 1000",
    "a, b = sp.symbols('a b', positive=True)\nsp.simplify(sp.sqrt(a**2 * b**2))",
    "sp.Rational(3, 7) + sp.Rational(2, 9)",
    "sp.continued_fraction_periodic(0, 1, 13)",
    "max(sp.divisor_count(n) for n in range(1, 2000))",
    "sp.nextprime(10**6)",
    "x = sp.symbols('x')\nsp.diff(sp.atan(x) * sp.log(x), x, 2)",
    "x = sp.symbols('x')\nsp.solve(x**2 + 1",  # syntax error
    "print(undefined_variable)",  # NameError
    "1 / 0",  # ZeroDivisionError
    "sp.Matrix([[1, 2], [2, 4]]).inv()",  # singular matrix
    "while True:\n    pass",  # timeout
    "n = 0\nwhile n >= 0:\n    n += 1",  # timeout
    "import time\ntime.sleep(100)",  # timeout
    "sum(i * i for i in range(3 * 10**6)) % 1000",
]


def baseline_run(python: str, code: str, timeout: float) -> float:
    """A fresh interpreter for one block, as the AIMO1 winner did it; returns seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "block.py")
        with open(path, "w") as f:
            f.write(HEADER + code)
        start = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([python, path], capture_output=True, timeout=timeout, cwd=tmp, check=False)
        return time.monotonic() - start


def measure(fn, codes: list[str], workers: int) -> tuple[list[float], float]:
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as ex:
        times = list(ex.map(fn, codes))
    return times, time.monotonic() - start


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--trivial", type=int, default=30)
    parser.add_argument("--import-allowance", type=float, default=3.0,
                        help="extra seconds the baseline gets for its imports, so they do not time it out")
    args = parser.parse_args()
    assert len(BLOCKS) == 48

    pool = PoolSandbox(SandboxConfig(timeout_s=args.timeout, workers=args.workers))
    startup = pool.wait_ready()

    def ours(code: str) -> float:
        start = time.monotonic()
        pool.run(HEADER + code)
        return time.monotonic() - start

    ours_times, ours_wall = measure(ours, BLOCKS, args.workers)
    base_timeout = args.timeout + args.import_allowance
    base_times, base_wall = measure(lambda c: baseline_run(sys.executable, c, base_timeout), BLOCKS, args.workers)
    trivial = [ours("print(1)") for _ in range(args.trivial)]
    second = []
    for _ in range(args.trivial):
        session = pool.open_session()
        session.run("x = 1")
        start = time.monotonic()
        session.run("print(x)")
        second.append(time.monotonic() - start)
        session.close()
    isolation = describe_isolation(pool.isolation())
    trivial_base = [baseline_run(sys.executable, "print(1)", base_timeout) for _ in range(5)]
    pool.close()

    print(f"pool start-up: {startup or 0:.2f} s for {args.workers} workers (once per run); timeout {args.timeout:g} s "
          f"(baseline {base_timeout:g} s: its imports count); load average {os.getloadavg()[0]:.1f}")
    print(f"isolation: {isolation}")
    print(f"{'':<22}{'median':>10}{'p95':>10}{'wall':>10}")
    for name, times, wall in (("fresh python3", base_times, base_wall), ("pool (ours)", ours_times, ours_wall)):
        print(f"{name:<22}{statistics.median(times) * 1e3:>8.1f}ms{p95(times) * 1e3:>8.1f}ms{wall:>9.2f}s")
    print(f"ratio baseline/ours: median {statistics.median(base_times) / statistics.median(ours_times):.1f}x, "
          f"p95 {p95(base_times) / p95(ours_times):.1f}x, wall {base_wall / ours_wall:.1f}x")
    print(f"print(1): ours {statistics.median(trivial) * 1e3:.1f} ms median (p95 {p95(trivial) * 1e3:.1f} ms), "
          f"fresh python3 {statistics.median(trivial_base) * 1e3:.0f} ms")
    print(f"persistent session, second block print(x): {statistics.median(second) * 1e3:.1f} ms median "
          f"(p95 {p95(second) * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
