"""Final answers: extract the last ``\\boxed{}``, normalise it to an integer, and majority-vote.

Covers:

* extraction: :func:`extract_boxed` returns the content of the last ``\\boxed{...}`` or ``\\fbox{...}``
  of a completion, nested braces matched (and ``\\boxed 5`` without braces);
* normalisation: :func:`parse_number` reads one number written in LaTeX (leading zeros, thousands
  separators, ``\\frac``, ``a/b``, ``\\text`` wrappers, units, ``\\$``, ``\\%``, degrees, ``x = 5``,
  scientific notation, simple powers ``2^{10}`` and products ``3 \\cdot 5``); :func:`to_int` rounds
  within a tolerance;
* the range rule: :class:`AnswerRule` drops negative answers, applies the modulus and the
  ``[min_answer, max_answer]`` range (AIMO1/2: mod 1000 into 0..999; AIMO3: no modulus, 0..99999);
* voting: :func:`majority_vote`, weighted or not, with a deterministic tie-break.

It does not decide the symbolic equivalence of non-integer answers (``\\sqrt{2}``, ``\\pi``, ``x+1``
give None), does not evaluate general expressions, and does not read answers written as words
("five") or multiple-choice letters ("(C) 5" gives None). Only the standard library is imported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import NoReturn

__all__ = [
    "AnswerRule",
    "VoteResult",
    "extract_answer",
    "extract_boxed",
    "majority_vote",
    "normalize",
    "parse_number",
    "to_int",
]

_TIE_BREAKS = ("largest", "smallest", "first")

# A boxed answer longer than this is prose or a runaway generation, not one number. The cap keeps
# parsing linear-time cheap and below int()'s 4300-digit conversion limit.
_MAX_ANSWER_CHARS = 1000
# Powers and scientific notation above 2**4096 are "huge": no competition answer, and no float either.
_MAX_BITS = 4096
# Floats beyond 2**53 no longer hold every integer, so rounding them to "the nearest int" is meaningless.
_MAX_EXACT_FLOAT = 2.0**53
# Absolute slack on the float tolerance check, so that 2.8 (stored as 2.79999...) is within 0.2 of 3.
_FLOAT_EPS = 1e-9


@dataclass(frozen=True, kw_only=True)
class AnswerRule:
    """Which integers count as answers.

    ``modulus`` is applied to integer answers before the range check (AIMO1/2: 1000; AIMO3: None).
    A number within ``tolerance`` of an integer counts as that integer. Negative answers are
    discarded when ``drop_negative`` (Numina's rule); otherwise Python's ``%`` applies the modulus.
    """

    modulus: int | None = 1000
    min_answer: int = 0
    max_answer: int = 999
    tolerance: float = 0.2
    drop_negative: bool = True

    def __post_init__(self) -> None:
        if self.modulus is not None and (not _is_int(self.modulus) or self.modulus < 2):
            _reject("modulus", "None or an integer in [2, inf)", self.modulus)
        if not _is_int(self.min_answer):
            _reject("min_answer", "an integer", self.min_answer)
        if not _is_int(self.max_answer) or self.max_answer < self.min_answer:
            _reject("max_answer", f"an integer in [{self.min_answer}, inf)", self.max_answer)
        tol = self.tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol <= 0.5:
            # 0.5 is the most that still maps every number to at most one integer (nan fails too).
            _reject("tolerance", "a number in [0, 0.5]", tol)
        if not isinstance(self.drop_negative, bool):
            _reject("drop_negative", "True or False", self.drop_negative)


def _reject(name: str, allowed: str, value: object) -> NoReturn:
    raise ValueError(f"AnswerRule.{name} must be {allowed}, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------------
# Extraction

_BOX_KEYWORDS = ("\\boxed", "\\fbox")
# One token of a brace scan: an escaped character (so \{ and \} do not count) or a brace.
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)
_SPACES = re.compile(r"\s*")
# `\boxed 5`: without braces TeX takes one token; models mean the word that follows.
_BARE_TOKEN = re.compile(r"[^\s${}]+")


def _matching_brace(text: str, pos: int) -> int | None:
    """Index of the brace closing the ``{`` at ``text[pos]``, or None if it is never closed."""
    depth = 0
    for match in _BRACE_TOKEN.finditer(text, pos):
        token = match.group()
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
            if depth == 0:
                return match.start()
    return None


def _box_keywords_from_last(text: str) -> Iterator[tuple[int, str]]:
    """Positions of ``\\boxed`` and ``\\fbox`` from the last one backwards.

    Each keyword keeps its own cursor so that the whole walk costs one pass over the text, even when
    it holds many look-alikes (``\\fboxsep``) to skip.
    """
    cursors = {keyword: text.rfind(keyword) for keyword in _BOX_KEYWORDS}
    while True:
        keyword = max(cursors, key=lambda k: cursors[k])
        start = cursors[keyword]
        if start < 0:
            return
        yield start, keyword
        cursors[keyword] = text.rfind(keyword, 0, start)


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\boxed {...}``, ``\\fbox{...}``, ``\\boxed 5``).

    Nested braces are matched. None when there is no box, or when the last box is never closed: a
    cut-off answer is not trusted, and an earlier box is not used instead (the model moved on from it).
    """
    if not isinstance(text, str):
        return None
    for start, keyword in _box_keywords_from_last(text):
        pos = start + len(keyword)
        if pos < len(text) and text[pos].isalpha():
            continue  # another macro that starts the same way, e.g. \fboxsep
        spaces = _SPACES.match(text, pos)
        pos = spaces.end() if spaces else pos
        if pos >= len(text):
            return None
        if text[pos] != "{":
            bare = _BARE_TOKEN.match(text, pos)
            return bare.group() if bare else None
        close = _matching_brace(text, pos)
        return None if close is None else text[pos + 1 : close]
    return None


# ---------------------------------------------------------------------------------------------------
# Parsing one number

# Formatting wrappers whose content is kept. A space goes in front so that a unit written as
# `18\text{cm}` stays a separate word, while `5\text{ cm}^2` still gives the single word `cm^2`.
_WRAPPER = re.compile(
    r"\\(?:text|textbf|textrm|textit|textnormal|textup|textsf|mathrm|mathbf|mathit|mathsf|mathnormal"
    r"|boldsymbol|bm|mbox|hbox|operatorname|boxed|fbox)\s*\{([^{}]*)\}"
)
# Dropped outright: sizing and style commands, the negative thin space of `10,\!080`, dollar signs
# (math delimiters and currency alike: a `$` is never part of a number).
_DROPPED = re.compile(r"\\(?:left|right|displaystyle|textstyle)(?![A-Za-z])|\\!|\\\$|\$")
# Read as a space: TeX spacing (`1\,000` is a thin-space thousands separator) and \( \) \[ \].
_AS_SPACE = re.compile(r"\\[,;: ]|\\q?quad(?![A-Za-z])|~|\\[()\[\]]")
_DEGREE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|\\degree(?![A-Za-z])")
# What may follow the number and is dropped: punctuation, percent and degree signs. Not "!" (5! = 120).
_SUFFIXES = (".", ",", ";", "%", "\u00b0")
# A unit word after the number: `cm`, `cm^2`, `m/s`, `sq.`; must be separated from it by a space.
_UNIT = re.compile(r"[A-Za-z]+(?:/[A-Za-z]+)?(?:\^\{?\d\}?)?\.?")
_PRODUCT = re.compile(r"\\(?:times|cdot)(?![A-Za-z])|\*")
_FRAC = re.compile(r"(?:(\d+)\s*)?\\[dt]?frac\s*(\{[^{}]*\}|[^\s{}\\])\s*(\{[^{}]*\}|[^\s{}\\])")
_RATIO = re.compile(r"([^/]+)/([^/]+)")
_POWER = re.compile(r"(\d+(?:\.\d+)?)\s*\^\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))")
_SCIENTIFIC = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)[eE][+-]?\d{1,3}")
# Thousands groups need a non-zero lead digit so that "0,025" (a decimal comma) is not 25.
_PLAIN = re.compile(
    r"[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?|[1-9]\d{0,2}(?: \d{3})+(?:\.\d+)?|\d+(?:\.\d*)?|\.\d+"
)


def _clean(raw: str) -> str | None:
    """Strip LaTeX dressing around the number; None when the text cannot be a single number."""
    s = raw.replace("\u2212", "-").replace("{,}", ",").replace("\\%", "%")
    s = _DROPPED.sub("", s)
    s = _AS_SPACE.sub(" ", s)
    s = _DEGREE.sub("\u00b0", s)
    while True:  # innermost wrappers first; each pass removes at least one, so this ends
        unwrapped = _WRAPPER.sub(r" \1", s)
        if unwrapped == s:
            break
        s = unwrapped
    s = " ".join(s.split())
    sides = s.split("=")
    if len(sides) > 2:
        return None  # "x = 5, y = 3" or "a = b = 3": not one answer
    return _strip_suffixes(sides[-1])  # "x = 5" -> "5"


def _strip_suffixes(s: str) -> str:
    """Drop trailing punctuation, %, degree signs and unit words ("18 cm", "5 dollars")."""
    while True:
        s = s.strip()
        for suffix in _SUFFIXES:
            if s.endswith(suffix):
                s = s[: -len(suffix)]
                break
        else:
            head, _, last = s.rpartition(" ")
            if not head or not _UNIT.fullmatch(last):
                return s
            s = head


def _strip_outer_braces(s: str) -> str:
    """``{5}`` -> ``5``, ``{{5}}`` -> ``5``; leaves ``{1}{2}`` alone."""
    s = s.strip()
    while s.startswith("{") and _matching_brace(s, 0) == len(s) - 1:
        s = s[1:-1].strip()
    return s


def _parse_value(s: str) -> Fraction | None:
    """An optional sign and a product of factors."""
    s = _strip_outer_braces(s)
    sign = 1
    if s.startswith(("-", "+")):
        sign = -1 if s[0] == "-" else 1
        s = _strip_outer_braces(s[1:])
    value = Fraction(sign)
    for factor in _PRODUCT.split(s):
        parsed = _parse_factor(factor)
        if parsed is None:
            return None
        value *= parsed
    return value


def _parse_factor(s: str) -> Fraction | None:
    """One unsigned factor: a fraction, a ratio, a power, scientific notation or a plain number."""
    s = _strip_outer_braces(s)
    if match := _FRAC.fullmatch(s):
        return _frac_value(match)
    if match := _RATIO.fullmatch(s):
        num, den = _parse_value(match.group(1)), _parse_value(match.group(2))
        return None if num is None or not den else num / den
    if match := _POWER.fullmatch(s):
        exponent = int(match.group(2) or match.group(3))
        return _power(Fraction(match.group(1)), exponent)
    if _SCIENTIFIC.fullmatch(s):
        return Fraction(s)  # exponent has at most 3 digits, so at most ~3300 bits
    if _PLAIN.fullmatch(s):
        return Fraction(s.replace(",", "").replace(" ", ""))
    return None


def _frac_value(match: re.Match[str]) -> Fraction | None:
    """``\\frac{a}{b}``, ``\\dfrac``, ``\\tfrac``, ``\\frac12``, and the mixed number ``2\\frac{1}{2}``."""
    num, den = _parse_value(match.group(2)), _parse_value(match.group(3))
    if num is None or not den:
        return None
    if match.group(1) is None:
        return num / den
    # A mixed number needs a proper fraction of naturals; anything else (2\frac{3}{2}) is ambiguous.
    if num.denominator != 1 or den.denominator != 1 or not 0 <= num < den:
        return None
    return int(match.group(1)) + num / den


def _power(base: Fraction, exponent: int) -> Fraction | None:
    if base == 0:
        return None if exponent < 0 else Fraction(0 if exponent else 1)
    if abs(exponent) * max(abs(math.log2(base)), 1.0) > _MAX_BITS:
        return None  # huge: refuse rather than build a number of megabytes
    return base**exponent


def _parse_exact(raw: str) -> Fraction | None:
    """The exact rational value of ``raw``, or None when it is not one number."""
    if not isinstance(raw, str) or len(raw) > _MAX_ANSWER_CHARS:
        return None
    try:
        cleaned = _clean(raw)
        return None if not cleaned else _parse_value(cleaned)
    except (ValueError, ZeroDivisionError, OverflowError, RecursionError):
        # Belt and braces: the regexes should rule these out, but a bad answer must never end a run.
        return None


def parse_number(raw: str) -> float | None:
    """A LaTeX answer string as a number, or None when it is not a single number.

    Reads plain integers and decimals (leading zeros, signs), thousands separators (``1,000``,
    ``1{,}000``, ``10,\\!080``, ``1\\,000``, ``1 000``), ``\\frac``/``\\dfrac``/``\\tfrac`` (also
    ``\\frac12``), ``a/b``, mixed numbers, ``\\text``/``\\mathbf`` wrappers, trailing units, ``\\$``,
    ``%``, degrees, math delimiters, ``x = 5``, ``1e3``, ``2^{10}``, ``10^5`` and products with
    ``\\cdot``/``\\times``. A list (``3, 5``), an expression (``\\sqrt{2}``) or text gives None.
    ``2^10`` gives None: in LaTeX it is 2 to the 1, then 0. Never raises; huge values give +-inf.
    """
    value = _parse_exact(raw)
    if value is None:
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


# ---------------------------------------------------------------------------------------------------
# Integers and the answer rule


def to_int(value: float, tolerance: float) -> int | None:
    """The nearest integer if ``value`` is within ``tolerance`` of it (inclusive), else None.

    inf, nan and floats beyond 2**53 (where floats skip integers) give None. Exact halves round
    to even, which only matters with ``tolerance=0.5``.
    """
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(x) or abs(x) > _MAX_EXACT_FLOAT:
        return None
    nearest = round(x)
    return nearest if abs(x - nearest) <= tolerance + _FLOAT_EPS else None


def _nearest_int(value: Fraction, tolerance: float) -> int | None:
    """:func:`to_int` on an exact value: no float precision limit, so huge integers keep their residue."""
    nearest = round(value)
    # Fraction(0.3) is 0.29999...; the shortest repr is the decimal the caller wrote: 2.7 is within 0.3 of 3.
    return nearest if abs(value - nearest) <= Fraction(repr(tolerance)) else None


def normalize(raw: str, rule: AnswerRule) -> int | None:
    """Parse, round, drop negatives, apply the modulus, check the range; None when any step fails.

    The value stays exact (a rational) throughout, so ``123456789012345678901`` mod 1000 is 901
    although no float holds it. A negative answer is one whose rounded integer is negative.
    """
    value = _parse_exact(raw)
    if value is None:
        return None
    answer = _nearest_int(value, rule.tolerance)
    if answer is None or (answer < 0 and rule.drop_negative):
        return None
    if rule.modulus is not None:
        answer %= rule.modulus
    return answer if rule.min_answer <= answer <= rule.max_answer else None


def extract_answer(completion: str, rule: AnswerRule) -> int | None:
    """The normalised integer in the last box of ``completion``, or None."""
    boxed = extract_boxed(completion)
    return None if boxed is None else normalize(boxed, rule)


# ---------------------------------------------------------------------------------------------------
# Voting


@dataclass(frozen=True)
class VoteResult:
    answer: int  # the winner, or the fallback
    counts: dict[int, float]  # answer -> votes; descending votes, then tie-break order
    num_valid: int  # how many non-None answers voted
    is_fallback: bool  # True when nothing valid voted
    margin: float  # winner's votes minus the runner-up's (0 on a tie or the fallback)


def _weights(answers: Sequence[int | None], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(answers)
    if len(weights) != len(answers):
        raise ValueError(f"weights must have one entry per answer ({len(answers)}), got {len(weights)}")
    checked = [float(w) for w in weights]
    for i, w in enumerate(checked):
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weights[{i}] must be in [0, inf), got {weights[i]!r}")
    return checked


def majority_vote(
    answers: Sequence[int | None],
    *,
    fallback: int,
    tie_break: str = "largest",
    weights: Sequence[float] | None = None,
) -> VoteResult:
    """The most voted answer; None answers are ignored.

    ``tie_break`` orders answers with equal votes: ``largest`` or ``smallest`` answer first, or
    ``first`` occurrence in ``answers`` first. Votes are compared exactly (no float slack), summed
    with :func:`math.fsum` so that the order of the answers does not change a total.
    """
    if tie_break not in _TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {_TIE_BREAKS}, got {tie_break!r}")
    ws = _weights(answers, weights)
    votes: dict[int, list[float]] = {}  # insertion order is first occurrence, which "first" needs
    for answer, weight in zip(answers, ws):
        if answer is not None:
            votes.setdefault(answer, []).append(weight)
    if not votes:
        return VoteResult(answer=fallback, counts={}, num_valid=0, is_fallback=True, margin=0.0)
    totals = {answer: math.fsum(v) for answer, v in votes.items()}
    first_seen = {answer: i for i, answer in enumerate(totals)}
    tie_keys = {"largest": lambda a: -a, "smallest": lambda a: a, "first": lambda a: first_seen[a]}
    tie_key = tie_keys[tie_break]
    order = sorted(totals, key=lambda a: (-totals[a], tie_key(a)))
    runner_up = totals[order[1]] if len(order) > 1 else 0.0
    return VoteResult(
        answer=order[0],
        counts={a: totals[a] for a in order},
        num_valid=sum(len(v) for v in votes.values()),
        is_fallback=False,
        margin=totals[order[0]] - runner_up,
    )
