"""Early-stop rules under the plain and the confidence-weighted vote (aimo_kernel.core.agreement)."""

from __future__ import annotations

import dataclasses

import pytest

from aimo_kernel.config import ConfigError, VoteConfig
from aimo_kernel.core.agreement import DECIDED, AgreementTracker
from aimo_kernel.core.confidence import Confidence

MAJORITY = VoteConfig(agreement_rules=("4/4", "5/6"))
WEIGHTED = dataclasses.replace(MAJORITY, mode="weighted", confidence="mean_logprob", confidence_top_k=8)


def conf(weight: float) -> Confidence:
    """A confidence whose mean_logprob weight (power 1) is ``weight``."""
    return Confidence(tokens=10, mean_logprob=-1.0 / weight)


# (votes as (answer, weight), still to come, what majority decides, what weighted decides)
CASES = [
    ([(7, 1), (7, 1), (7, 1), (7, 1)], 4, "4/4", "4/4"),  # unanimous: both stop
    # five agree in count, but the one dissent outweighs them: the weighted vote would pick 3, so no stop
    ([(7, 1), (7, 1), (7, 1), (3, 8), (7, 1), (7, 1)], 2, "5/6", ""),
    ([(7, 1), (7, 1), (7, 1), (3, 1.5)], 1, DECIDED, ""),  # 3 − 1.5 is not more than one vote of 1.5
    ([(7, 2), (7, 2), (7, 2), (3, 1)], 1, DECIDED, DECIDED),  # 6 − 1 > one vote of at most 2
    ([(7, 1), (3, 5)], 0, "", DECIDED),  # nobody left: a tie in count, a win in weight
    ([(7, 1), (3, 1)], 0, "", ""),  # a tie is never decided
    ([], 3, "", ""),
]


@pytest.mark.parametrize(("votes", "to_come", "majority", "weighted"), CASES)
def test_rules_follow_the_vote_they_stop(votes: list[tuple[int, float]], to_come: int, majority: str,
                                          weighted: str) -> None:
    for vote, want in ((MAJORITY, majority), (WEIGHTED, weighted)):
        tracker = AgreementTracker(vote)
        for answer, w in votes:
            tracker.add(answer, conf(w))
        assert tracker.decided(still_to_come=to_come) == want, vote.mode
        again = AgreementTracker(vote)
        assert again.recount([(a, conf(w), False) for a, w in votes], still_to_come=to_come) == want


def test_a_candidate_without_an_answer_is_no_vote_in_either_mode() -> None:
    for vote in (MAJORITY, WEIGHTED):
        tracker = AgreementTracker(vote)
        for _ in range(4):
            tracker.add(None, conf(50))
        tracker.add(5, conf(1))
        assert tracker.answered == 1
        assert tracker.decided(still_to_come=0) == DECIDED


def test_the_code_bonus_counts_in_the_weighted_lead() -> None:
    vote = dataclasses.replace(WEIGHTED, code_bonus=3.0)
    tracker = AgreementTracker(vote)
    tracker.add(7, conf(1), code_verified=False)
    tracker.add(7, conf(1), code_verified=False)
    tracker.add(3, conf(1), code_verified=True)  # weighs 3: leads 3 to 2
    totals, heaviest = tracker.weights()
    assert totals == {7: 2.0, 3: 3.0} and heaviest == 3.0
    assert tracker.decided(still_to_come=0) == DECIDED
    assert tracker.decided(still_to_come=1) == ""


# (give-up rule, answers so far, richness, gives up): answers scattered past "k/n" end the problem
GIVE_UP = [
    ("2/4", [1, 2, 3, 4], 1.0, True),  # four answers, none twice
    ("2/4", [1, 2, 3], 1.0, False),  # not yet four
    ("2/4", [1, 2, 1, 4], 1.0, False),  # one answer has two votes
    ("3/5", [1, 2, 1, 4, 5], 1.0, True),  # two votes are fewer than three
    ("2/4", [1, 2, 3, 4, 5, 6, 7], 2.0, False),  # ahead of schedule: n is doubled to 8, k kept
    ("2/4", [1, 2, 3, 4, 5, 6, 7, 8], 2.0, True),
    ("", [1, 2, 3, 4, 5, 6, 7, 8], 1.0, False),  # no rule, no giving up
]


@pytest.mark.parametrize(("rule", "answers", "richness", "gives_up"), GIVE_UP)
def test_scattered_answers_give_up(rule: str, answers: list[int], richness: float, gives_up: bool) -> None:
    for vote in (MAJORITY, WEIGHTED):  # counted, not weighed, in either mode
        tracker = AgreementTracker(dataclasses.replace(vote, give_up_rule=rule), richness=richness)
        tracker.add(None)  # a candidate without an answer is no answer
        for answer in answers:
            tracker.add(answer, conf(3 if answer == 1 else 1))
        assert tracker.scattered() is gives_up, vote.mode


@pytest.mark.parametrize("rule", ["1/4", "5/4", "2", "two/four", "0/0"])
def test_a_give_up_rule_needs_k_of_at_least_two(rule: str) -> None:
    with pytest.raises(ConfigError, match="give_up_rule"):
        VoteConfig(give_up_rule=rule)
