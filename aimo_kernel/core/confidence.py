"""A candidate's confidence from its tokens' log-probabilities, and the vote weight it earns.

Covers the math only, as pure functions plus one small accumulator:

* :func:`token_entropy`: one step's entropy from the log-probabilities an engine returns for its k most
  likely tokens. With k < vocabulary this is the **top-k approximation**: the k tokens' terms
  ``-p log p`` plus the mass left over (``1 - sum p``) counted as one more outcome, a lower bound of
  the true entropy that is exact when the top k hold all the mass;
* :class:`ConfidenceMeter`: running sums over a candidate's generated tokens (entropy, sampled-token
  log-probability, their count) and the entropies of its last ``tail_tokens`` tokens, so no per-token
  list outlives a candidate. The tail window is the tokens just before the candidate's answer: a
  trace ends with its ``\\boxed{}`` answer, so they are its last tokens;
* :class:`Confidence`: the frozen summary (mean entropy, tail-window entropy, mean log-probability);
* :func:`vote_weight`: ``max(uncertainty, floor) ** -power``, times a bonus for a code-verified answer.

Not covered: which engine returns log-probabilities (:mod:`aimo_kernel.engine`), the vote itself
(:func:`aimo_kernel.core.answers.majority_vote` takes the weights).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from aimo_kernel.config.schema import CONFIDENCE_SIGNALS, VoteConfig


def token_entropy(top_logprobs: Sequence[float]) -> float:
    """Entropy (nats) of one step from its top-k log-probabilities (top-k approximation, see module doc)."""
    total = 0.0
    mass = 0.0
    for lp in top_logprobs:
        if not math.isfinite(lp):  # -inf: a token of zero probability adds nothing; nan: unknown
            continue
        p = math.exp(min(lp, 0.0))
        total -= p * min(lp, 0.0)
        mass += p
    rest = 1.0 - mass
    if rest > 1e-12:
        total -= rest * math.log(rest)
    return max(total, 0.0)


@dataclass(frozen=True, kw_only=True)
class Confidence:
    """A candidate's token statistics. ``tokens`` 0: the engine returned no log-probabilities."""

    tokens: int = 0
    mean_entropy: float = 0.0
    tail_entropy: float = 0.0  # mean entropy over the last ``tail_tokens`` generated tokens
    tail_tokens: int = 0
    mean_logprob: float = 0.0  # of the sampled tokens (<= 0)

    def __post_init__(self) -> None:
        if self.tokens < 0 or self.tail_tokens < 0 or self.tail_tokens > self.tokens:
            raise ValueError(f"Confidence needs 0 <= tail_tokens <= tokens, got tokens={self.tokens}, "
                             f"tail_tokens={self.tail_tokens}")
        for name in ("mean_entropy", "tail_entropy", "mean_logprob"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"Confidence.{name} must be finite, got {getattr(self, name)!r}")

    @property
    def known(self) -> bool:
        return self.tokens > 0

    def uncertainty(self, signal: str) -> float:
        """The signal as a number >= 0, lower meaning more confident."""
        if signal == "mean_entropy":
            return self.mean_entropy
        if signal == "tail_entropy":
            return self.tail_entropy
        if signal == "mean_logprob":
            return -self.mean_logprob
        raise ValueError(f"confidence signal must be one of {CONFIDENCE_SIGNALS}, got {signal!r}")


@dataclass
class ConfidenceMeter:
    """Running sums over one candidate's generated tokens (every round of it, restarts excluded)."""

    tail_tokens: int = 256
    tokens: int = 0
    entropy_sum: float = 0.0
    logprob_sum: float = 0.0
    tail: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.tail_tokens < 1:
            raise ValueError(f"ConfidenceMeter.tail_tokens must be >= 1, got {self.tail_tokens}")
        self.tail = deque(self.tail, maxlen=self.tail_tokens)

    def add(self, logprobs: Sequence[float], top_logprobs: Sequence[Sequence[float]]) -> None:
        """One piece of a stream: each token's own log-probability and its step's top-k values."""
        for lp, top in zip(logprobs, top_logprobs):
            h = token_entropy(top)
            self.tokens += 1
            self.entropy_sum += h
            self.logprob_sum += lp if math.isfinite(lp) else 0.0
            self.tail.append(h)

    def reset(self) -> None:
        """The candidate threw its trace away (a restart): only the kept text's tokens count."""
        self.tokens, self.entropy_sum, self.logprob_sum = 0, 0.0, 0.0
        self.tail.clear()

    def summary(self) -> Confidence:
        if not self.tokens:
            return Confidence()
        return Confidence(tokens=self.tokens, mean_entropy=self.entropy_sum / self.tokens,
                          tail_entropy=math.fsum(self.tail) / len(self.tail), tail_tokens=len(self.tail),
                          mean_logprob=self.logprob_sum / self.tokens)


def vote_weight(confidence: Confidence, *, signal: str, power: float, floor: float,
                code_verified: bool = False, code_bonus: float = 1.0) -> float:
    """``max(uncertainty, floor) ** -power``, times ``code_bonus`` for a code-verified answer.

    ``power`` 0 is the plain majority vote (every weight 1, bonus aside); the floor keeps a
    near-certain candidate from outvoting all the others alone.
    """
    if power < 0 or floor <= 0 or code_bonus < 0:
        raise ValueError(f"vote_weight needs power >= 0, floor > 0, code_bonus >= 0; got {power}, {floor}, "
                         f"{code_bonus}")
    weight = max(confidence.uncertainty(signal), floor) ** -power
    return weight * (code_bonus if code_verified else 1.0)


def vote_weights(confidences: Sequence[Confidence], verified: Sequence[bool], *, signal: str, power: float,
                 floor: float, code_bonus: float = 1.0, answers: Sequence[object] | None = None) -> list[float]:
    """One weight per candidate; when some voting candidate (``answers`` not None, default: all) has
    no confidence (its engine returned no log-probabilities) nobody's confidence counts, only the
    code bonus: a mixed vote would weigh candidates on different scales."""
    if len(confidences) != len(verified) or (answers is not None and len(answers) != len(confidences)):
        raise ValueError(f"vote_weights needs one verified flag and answer per confidence, got {len(verified)} "
                         f"and {len(answers or ())} for {len(confidences)}")
    voting = answers if answers is not None else [0] * len(confidences)
    use = all(c.known for c, a in zip(confidences, voting) if a is not None)
    return [vote_weight(c if use else Confidence(), signal=signal, power=power if use else 0.0, floor=floor,
                        code_verified=v, code_bonus=code_bonus) for c, v in zip(confidences, verified)]


def mode_weights(vote: VoteConfig, confidences: Sequence[Confidence], verified: Sequence[bool],
                 answers: Sequence[object] | None = None) -> list[float] | None:
    """The weights ``vote.mode`` votes with: None (one vote each) for ``majority``, else :func:`vote_weights`
    with the config's signal, power, floor and code bonus."""
    if vote.mode == "majority":
        return None
    return vote_weights(confidences, verified, signal=vote.confidence, power=vote.confidence_power,
                        floor=vote.confidence_floor, code_bonus=vote.code_bonus, answers=answers)
