"""Early stopping: has the vote of one problem been decided, so the candidates still running can go?

Two kinds of rule, both configurable in ``[vote]``: ``"k/n"`` agreement rules (stop once one answer
has k votes among the first n answers; imagination-research stopped AIMO2 problems at 4/4, 4/5, 5/7,
6/9) and *decided* (the leader is ahead by more votes than the candidates still to come could give
the runner-up). Rules tighten when the run is ahead of schedule (``richness`` > 1): time that would
otherwise go unused buys more evidence. Candidates without an answer count as finished, not as votes.
The rule that decided is returned on its own (``"4/5"``, :data:`DECIDED`); the solver reports it next
to the stop reason ``agreement`` (:class:`aimo_kernel.vocab.StopReason`), never inside it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

from aimo_kernel.config import VoteConfig, parse_agreement_rule

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
        self.counts: Counter[int] = Counter()
        self.answered = 0

    def add(self, answer: int | None) -> None:
        if answer is not None:
            self.counts[answer] += 1
            self.answered += 1

    def recount(self, answers: Iterable[int | None], still_to_come: int) -> str:
        """Start over from these answers (synchronous rounds vote on everything finished so far)."""
        self.counts.clear()
        self.answered = 0
        for answer in answers:
            self.add(answer)
        return self.decided(still_to_come)

    def decided(self, still_to_come: int) -> str:
        """The rule that decides the vote now ("4/5", "decided"), or "" while it is open."""
        if not self.counts:
            return ""
        top = self.counts.most_common(2)
        lead = top[0][1]
        for k, n in self.rules:
            if self.answered <= n and lead >= k:
                return f"{k}/{n}"
        runner_up = top[1][1] if len(top) > 1 else 0
        if self.stop_when_decided and lead - runner_up > still_to_come:
            return DECIDED
        return ""
