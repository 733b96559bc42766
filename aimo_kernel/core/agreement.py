"""Early stopping: has the vote of one problem been decided, so the candidates still running can go?

Two kinds of rule, both configurable in ``[vote]``: ``"k/n"`` agreement rules (stop once one answer
has k votes among the first n answers; imagination-research stopped AIMO2 problems at 4/4, 4/5, 5/7,
6/9) and *decided* (the leader is ahead by more votes than the candidates still to come could give
the runner-up). Rules tighten when the run is ahead of schedule (``richness`` > 1): time that would
otherwise go unused buys more evidence. Candidates without an answer count as finished, not as votes.
With ``vote.mode = "weighted"`` both kinds follow the weighted vote: a k/n rule stops only when the
answer it agrees on also leads in weight (else the stop would hand the vote to an answer the rule
never agreed on), and *decided* needs a weighted lead larger than the candidates still to come could
bring, each counted as heavy as the heaviest vote so far (the bound ``confidence_floor ** -power``
would be 100 votes' worth by default and would never stop anything; the heaviest seen is what the
same model on the same problem gives).
A third rule gives up instead (``vote.give_up_rule`` "k/n": n answers in and none with k votes):
answers that scattered that far rarely converge with more candidates, and the time left is carried
forward to the problems after. It loosens when the run is ahead of schedule (n scaled up, k kept).
The rule that decided is returned on its own (``"4/5"``, :data:`DECIDED`); the solver reports it next
to the stop reason ``agreement`` (:class:`aimo_kernel.vocab.StopReason`), never inside it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

from aimo_kernel.config import VoteConfig, parse_agreement_rule, parse_give_up_rule
from aimo_kernel.core.confidence import Confidence, mode_weights

MAX_TIGHTENING = 4.0  # rules are never scaled by more than this
DECIDED = "decided"  # the rule name when the leader can no longer be caught


def tightened(votes: int, richness: float) -> int:
    """A rule's vote count scaled up when the run is ahead of schedule (``richness`` > 1)."""
    return math.ceil(votes * min(MAX_TIGHTENING, max(1.0, richness)))


class AgreementTracker:
    def __init__(self, vote: VoteConfig, *, richness: float = 1.0) -> None:
        self.rules: Sequence[tuple[int, int]] = [
            (tightened(k, richness), tightened(n, richness)) for k, n in map(parse_agreement_rule, vote.agreement_rules)
        ]
        self.stop_when_decided = vote.stop_when_decided
        k, n = parse_give_up_rule(vote.give_up_rule) if vote.give_up_rule else (0, 0)
        self.give_up: tuple[int, int] | None = (k, tightened(n, richness)) if k else None
        self.vote = vote
        self.counts: Counter[int] = Counter()
        self.answered = 0
        self._votes: list[tuple[int, Confidence, bool]] = []  # (answer, confidence, code-verified)

    def add(self, answer: int | None, confidence: Confidence | None = None, code_verified: bool = False) -> None:
        if answer is not None:
            self.counts[answer] += 1
            self.answered += 1
            self._votes.append((answer, confidence or Confidence(), code_verified))

    def recount(self, votes: Iterable[tuple[int | None, Confidence, bool]], still_to_come: int) -> str:
        """Start over from these (answer, confidence, code-verified) votes (synchronous rounds vote on
        everything finished so far)."""
        self.counts.clear()
        self.answered = 0
        self._votes.clear()
        for answer, confidence, verified in votes:
            self.add(answer, confidence, verified)
        return self.decided(still_to_come)

    def weights(self) -> tuple[dict[int, float], float]:
        """Each answer's total weight as the final vote will weigh it, and what one more vote is taken to add."""
        answers = [a for a, _, _ in self._votes]
        weights = mode_weights(self.vote, [c for _, c, _ in self._votes], [ok for _, _, ok in self._votes],
                               answers=answers)
        if not weights:  # majority mode, or nothing voted yet
            return {a: float(n) for a, n in self.counts.items()}, 1.0
        totals: dict[int, float] = {}
        for answer, w in zip(answers, weights):
            totals[answer] = totals.get(answer, 0.0) + w
        return totals, max(weights)

    def decided(self, still_to_come: int) -> str:
        """The rule that decides the vote now ("4/5", "decided"), or "" while it is open."""
        if not self.counts:
            return ""
        top = self.counts.most_common(2)
        lead = top[0][1]
        totals, most_per_vote = self.weights()
        heavy = sorted(totals.values(), reverse=True) + [0.0]
        leads_in_weight = totals[top[0][0]] >= heavy[0]
        for k, n in self.rules:
            if self.answered <= n and lead >= k and leads_in_weight:
                return f"{k}/{n}"
        if self.stop_when_decided and heavy[0] - heavy[1] > still_to_come * most_per_vote:
            return DECIDED
        return ""

    def scattered(self) -> bool:
        """True once the give-up rule's n answers are in and no answer has its k votes (counted, not weighed)."""
        if self.give_up is None:
            return False
        k, n = self.give_up
        return self.answered >= n and max(self.counts.values(), default=0) < k
