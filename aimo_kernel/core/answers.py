"""Final answers: find the answer's ``\\boxed{}``, normalise it to an integer, and majority-vote.

Covers:

* extraction: :func:`extract_boxed` returns the content of the last ``\\boxed{...}`` or ``\\fbox{...}``
  that holds an answer, nested braces matched (and ``\\boxed 5`` without braces). A last box that is
  cut off (never closed), empty or a placeholder (``?``, ``\\dots``, ``answer``) does not erase an earlier
  box; any other last box, even one that is not a number, is the model's final word;
* normalisation: :func:`parse_number` reads one number written in LaTeX (leading zeros, thousands
  separators, ``\\frac``, ``a/b``, ``\\text`` wrappers, units, ``\\$``, ``\\%``, degrees, ``x = 5``,
  a choice label or ``Answer:`` in front (``\\text{(B) } 12``), ``12 \\pmod{1000}``, scientific notation,
  simple powers ``2^{10}`` and products ``3 \\cdot 5``); :func:`to_int` rounds within a tolerance;
* the range rule: :class:`AnswerRule` drops negative answers, applies the modulus and the
  ``[min_answer, max_answer]`` range (AIMO1/2: mod 1000 into 0..999; AIMO3: no modulus, 0..99999).
  Only float noise (``12.0000001``) is rounded: a decimal such as ``2.8`` is not an integer answer.
  A power too large to build (``2^{5000}``) is computed exactly modulo the rule's or the box's modulus;
* voting: :func:`majority_vote`, weighted or not, with a deterministic tie-break.

It does not decide the symbolic equivalence of non-integer answers (``\\sqrt{2}``, ``\\pi``, ``x+1``
give None), does not evaluate general expressions (sums, nested powers ``10^{10^{10}}``), and does not
read answers written as words ("five") or a choice letter alone ("(C)" gives None). Only the
standard library is imported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import NoReturn

from aimo_kernel.config.schema import DEFAULT_TOLERANCE, MAX_TOLERANCE

__all__ = [
    "DEFAULT_TOLERANCE",
    "MAX_TOLERANCE",
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
# Absolute slack on to_int's float check, so that a distance written in decimal (0.2 from 2.8, stored
# as 2.79999...) counts as within that distance.
_FLOAT_EPS = 1e-9
# A modulus written in the box (12 \pmod{1000}) is at most this, so residues stay small numbers.
_MAX_MODULUS = 10**18


@dataclass(frozen=True, kw_only=True)
class AnswerRule:
    """Which integers count as answers.

    ``modulus`` is applied to integer answers before the range check (AIMO1/2: 1000; AIMO3: None).
    A number within ``tolerance`` of an integer counts as that integer; the tolerance absorbs float
    noise only (at most ``MAX_TOLERANCE``), so ``2.8`` is no answer. Negative answers are discarded
    when ``drop_negative`` (Numina's rule); otherwise Python's ``%`` applies the modulus.
    """

    modulus: int | None = 1000
    min_answer: int = 0
    max_answer: int = 999
    tolerance: float = DEFAULT_TOLERANCE
    drop_negative: bool = True

    def __post_init__(self) -> None:
        if self.modulus is not None and (not _is_int(self.modulus) or self.modulus < 2):
            _reject("modulus", "None or an integer in [2, inf)", self.modulus)
        if not _is_int(self.min_answer):
            _reject("min_answer", "an integer", self.min_answer)
        if not _is_int(self.max_answer) or self.max_answer < self.min_answer:
            _reject("max_answer", f"an integer in [{self.min_answer}, inf)", self.max_answer)
        tol = self.tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol <= MAX_TOLERANCE:
            _reject("tolerance", f"a number in [0, {MAX_TOLERANCE:g}]", tol)  # nan fails too
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


# Only the last few boxes are looked at when the last ones hold no answer: the answer is near the
# end, and the cap bounds the work on a runaway generation full of empty boxes.
_MAX_BOXES = 8
# Longer box contents are never placeholders; the cap keeps the placeholder check cheap.
_MAX_PLACEHOLDER_CHARS = 40
# What a box holds when the model wrote the template rather than the answer (spaces removed, lower case).
_PLACEHOLDER = re.compile(
    r"|\?+|\.+|\u2026+|(?:\\[lcv]?dots)+|_+|(?:\\_)+|\*+|x{2,}|n/a|\(\)|\[\]"
    r"|[<\[]?(?:final|your|the)?answer(?:here)?[>\]]?|ans"
)


def _matching_brace(text: str, pos: int, end: int | None = None) -> int | None:
    """Index of the brace closing the ``{`` at ``text[pos]`` before ``end``, or None if it is not closed."""
    depth = 0
    for match in _BRACE_TOKEN.finditer(text, pos, len(text) if end is None else end):
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


def _box_contents_from_last(text: str) -> Iterator[str | None]:
    """The content of each box from the last one backwards; None for a box that is never closed."""
    limit = len(text)
    for start, keyword in _box_keywords_from_last(text):
        pos = start + len(keyword)
        if pos < len(text) and text[pos].isalpha():
            continue  # another macro that starts the same way, e.g. \fboxsep
        spaces = _SPACES.match(text, pos)
        pos = spaces.end() if spaces else pos
        if pos >= len(text):
            yield None  # `\boxed` is the last word: cut off
        elif text[pos] != "{":
            bare = _BARE_TOKEN.match(text, pos)
            yield bare.group() if bare else ""
        elif (close := _matching_brace(text, pos, limit)) is None:
            # An earlier box cannot close after this unclosed one (its braces stay open to the end),
            # so earlier scans stop here: the walk stays linear in the text.
            limit = start
            yield None
        else:
            yield text[pos + 1 : close]


def _is_placeholder(content: str) -> bool:
    """True for an empty box or a template left in place of the answer (``?``, ``\\dots``, ``answer``)."""
    if len(content) > _MAX_PLACEHOLDER_CHARS:
        return False
    s = _AS_SPACE.sub(" ", _DROPPED.sub("", content))
    while (unwrapped := _WRAPPER.sub(r" \1", s)) != s:  # short, so few passes
        s = unwrapped
    return _PLACEHOLDER.fullmatch("".join(s.split()).lower()) is not None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\boxed {...}``, ``\\fbox{...}``, ``\\boxed 5``) with an answer.

    Nested braces are matched. A last box that is cut off (never closed: the generation stopped),
    empty or a placeholder is passed over for the box before it, among the last few boxes; any other
    box is the model's final answer even if it is no number (an earlier box is then not used: the
    model moved on from it). None when no box holds an answer.
    """
    if not isinstance(text, str):
        return None
    for seen, content in enumerate(_box_contents_from_last(text)):
        if seen >= _MAX_BOXES:
            return None
        if content is not None and not _is_placeholder(content):
            return content
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
# A congruence sign reads as "=": `2^{10} \equiv 24 \pmod{1000}` -> `24 \pmod{1000}`.
_EQUIV = re.compile(r"\\equiv(?![A-Za-z])|\u2261")
# A modulus after the number: `\pmod{1000}`, `\pmod 1000`, `(\bmod 1000)`, `(\text{mod } 10^5)`, `mod 7`.
_MOD_SUFFIX = re.compile(r"\(?\s*(?:\\[pb]?mod(?![A-Za-z])|\bmod\b)\s*(.+?)\s*\)?$")
# A label in front of the number: a choice letter `(B) 12`, or `Answer: 12`, `The final answer is 12`.
_LABEL = re.compile(r"(?:\(\s*[A-Ea-e]\s*\)|(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\s*:?)\s*", re.IGNORECASE)


def _clean(raw: str) -> tuple[str, str | None] | None:
    """Strip LaTeX dressing around the number: (the number, the modulus written after it or None).

    None when the text cannot be a single number.
    """
    s = raw.replace("\u2212", "-").replace("{,}", ",").replace("\\%", "%")
    s = _EQUIV.sub("=", _DROPPED.sub("", s))
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
    number, modulus = _strip_suffixes(sides[-1]), None  # "x = 5" -> "5"
    if match := _MOD_SUFFIX.search(number):
        number, modulus = _strip_suffixes(number[: match.start()]), match.group(1)
    while match := _LABEL.match(number):  # never empty, so each pass shortens the text
        number = number[match.end() :]
    return number, modulus


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


@dataclass(frozen=True, kw_only=True)
class _Residue:
    """An integer too large to build (``2^{5000}``), known by its sign and its residue modulo ``modulus``."""

    residue: int  # the signed value mod modulus, in [0, modulus)
    modulus: int
    negative: bool


_Value = Fraction | _Residue


def _parse_value(s: str, modulus: int | None = None) -> _Value | None:
    """An optional sign and a product of factors; huge integer powers are reduced mod ``modulus``."""
    s = _strip_outer_braces(s)
    sign = 1
    if s.startswith(("-", "+")):
        sign = -1 if s[0] == "-" else 1
        s = _strip_outer_braces(s[1:])
    value, residue = Fraction(sign), None
    for factor in _PRODUCT.split(s):
        parsed = _parse_factor(factor, modulus)
        if parsed is None:
            return None
        if isinstance(parsed, _Residue):
            residue = parsed.residue if residue is None else residue * parsed.residue % parsed.modulus
        else:
            value *= parsed
    if residue is None or value == 0:
        return value
    if modulus is None or value.denominator != 1:
        return None  # a huge integer times a non-integer has no exact residue
    return _Residue(residue=int(value) * residue % modulus, modulus=modulus, negative=value < 0)


def _parse_factor(s: str, modulus: int | None) -> _Value | None:
    """One unsigned factor: a fraction, a ratio, a power, scientific notation or a plain number."""
    s = _strip_outer_braces(s)
    if match := _FRAC.fullmatch(s):
        return _frac_value(match)
    if match := _RATIO.fullmatch(s):
        num, den = _parse_value(match.group(1)), _parse_value(match.group(2))
        if not isinstance(num, Fraction) or not isinstance(den, Fraction) or not den:
            return None
        return num / den
    if match := _POWER.fullmatch(s):
        exponent = int(match.group(2) or match.group(3))  # at most _MAX_ANSWER_CHARS digits
        return _power(Fraction(match.group(1)), exponent, modulus)
    if _SCIENTIFIC.fullmatch(s):
        return Fraction(s)  # exponent has at most 3 digits, so at most ~3300 bits
    if _PLAIN.fullmatch(s):
        return Fraction(s.replace(",", "").replace(" ", ""))
    return None


def _frac_value(match: re.Match[str]) -> Fraction | None:
    """``\\frac{a}{b}``, ``\\dfrac``, ``\\tfrac``, ``\\frac12``, and the mixed number ``2\\frac{1}{2}``."""
    num, den = _parse_value(match.group(2)), _parse_value(match.group(3))
    if not isinstance(num, Fraction) or not isinstance(den, Fraction) or not den:
        return None
    if match.group(1) is None:
        return num / den
    # A mixed number needs a proper fraction of naturals; anything else (2\frac{3}{2}) is ambiguous.
    if num.denominator != 1 or den.denominator != 1 or not 0 <= num < den:
        return None
    return int(match.group(1)) + num / den


def _power(base: Fraction, exponent: int, modulus: int | None) -> _Value | None:
    """``base ** exponent`` exactly; a huge integer power only as its residue modulo ``modulus``."""
    if base == 0:
        return None if exponent < 0 else Fraction(0 if exponent else 1)
    # int-to-float comparison is exact and never overflows, whatever the exponent's size.
    if abs(exponent) <= _MAX_BITS / max(abs(math.log2(base)), 1.0):
        return base**exponent
    if modulus is None or exponent < 0 or base.denominator != 1:
        return None  # huge and no modulus to reduce it by: refuse rather than build megabytes
    # Square-and-multiply modulo the modulus: work grows with the exponent's digits, not its value.
    return _Residue(residue=pow(int(base), exponent, modulus), modulus=modulus, negative=False)


def _parse_exact(raw: str, modulus: int | None = None) -> _Value | None:
    """The exact value of ``raw``, or None when it is not one number.

    A modulus written after the number (``\\pmod{1000}``) reduces it, and a huge power within it, to
    a plain residue; otherwise a huge power is reduced by ``modulus`` and stays a :class:`_Residue`.
    """
    if not isinstance(raw, str) or len(raw) > _MAX_ANSWER_CHARS:
        return None
    try:
        cleaned = _clean(raw)
        if cleaned is None or not cleaned[0]:
            return None
        if cleaned[1] is None:
            return _parse_value(cleaned[0], modulus)
        written = _parse_value(cleaned[1])
        if not isinstance(written, Fraction) or written.denominator != 1 or not 2 <= written <= _MAX_MODULUS:
            return None
        return _reduce(_parse_value(cleaned[0], int(written)), int(written))
    except (ValueError, ZeroDivisionError, OverflowError, RecursionError):
        # Belt and braces: the regexes should rule these out, but a bad answer must never end a run.
        return None


def _reduce(value: _Value | None, modulus: int) -> Fraction | None:
    """An integer value, or a residue modulo ``modulus``, as its residue in ``[0, modulus)``."""
    if isinstance(value, _Residue):
        return Fraction(value.residue)
    if value is None or value.denominator != 1:
        return None  # "2.5 (mod 7)" is no residue
    return Fraction(int(value) % modulus)


def parse_number(raw: str) -> float | None:
    """A LaTeX answer string as a number, or None when it is not a single number.

    Reads plain integers and decimals (leading zeros, signs), thousands separators (``1,000``,
    ``1{,}000``, ``10,\\!080``, ``1\\,000``, ``1 000``), ``\\frac``/``\\dfrac``/``\\tfrac`` (also
    ``\\frac12``), ``a/b``, mixed numbers, ``\\text``/``\\mathbf`` wrappers, trailing units, ``\\$``,
    ``%``, degrees, math delimiters, ``x = 5``, ``1e3``, ``2^{10}``, ``10^5`` and products with
    ``\\cdot``/``\\times``. A list (``3, 5``), an expression (``\\sqrt{2}``) or text gives None.
    ``2^10`` gives None: in LaTeX it is 2 to the 1, then 0. A label in front (``(B) 12``,
    ``Answer: 12``) is dropped; ``12 \\pmod{1000}`` gives the residue 12. Never raises; values beyond
    the float range give +-inf, powers beyond 2**4096 None.
    """
    value = _parse_exact(raw)
    if not isinstance(value, Fraction):
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
    to even, which only matters with ``tolerance=0.5``. Any tolerance is accepted here; the answer
    rule allows only float noise (:data:`MAX_TOLERANCE`).
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
    although no float holds it, and ``2^{5000}`` mod 1000 is computed without building it. A
    negative answer is one whose rounded integer is negative.
    """
    value = _parse_exact(raw, rule.modulus)
    if value is None:
        return None
    if isinstance(value, _Residue):  # only built when the rule has a modulus: already reduced by it
        return None if value.negative and rule.drop_negative else _in_range(value.residue, rule)
    answer = _nearest_int(value, rule.tolerance)
    if answer is None or (answer < 0 and rule.drop_negative):
        return None
    if rule.modulus is not None:
        answer %= rule.modulus
    return _in_range(answer, rule)


def _in_range(answer: int, rule: AnswerRule) -> int | None:
    return answer if rule.min_answer <= answer <= rule.max_answer else None


def extract_answer(completion: str, rule: AnswerRule) -> int | None:
    """The normalised integer in the answer's box of ``completion`` (see :func:`extract_boxed`), or None."""
    boxed = extract_boxed(completion)
    return None if boxed is None else normalize(boxed, rule)


_PRINTED_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number(output: str, rule: AnswerRule) -> int | None:
    """The last number a code block printed, normalised like an answer (None: none, or not an answer).

    A candidate whose boxed answer is this number had its own code compute it ("code-verified").
    """
    numbers = _PRINTED_NUMBER.findall(output[-2000:])
    return normalize(numbers[-1], rule) if numbers else None


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
