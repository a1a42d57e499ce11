"""``ratios.py`` without timing anything: the README's goal table reads, names exactly the rows
that ``ratios.py`` measures, and only an unmarked miss fails."""

from __future__ import annotations

import pytest

from tests.benchmarks.ratios import MEASURES, README, Goal, read_goals, verdict


def test_the_readme_states_one_goal_for_every_measured_row():
    goals = read_goals(README.read_text())
    assert [g.row for g in goals] == list(MEASURES)
    assert all(g.op in "≥≤" and g.bound > 0 for g in goals)


def test_the_table_is_read_by_its_header():
    text = """Intro.

| row | ratio | goal | how | known miss |
|---|---|---|---|---|
| `fast` | a / b | ≥ 6.4 (0.8·N) | alternating | |
| `slow` | c / d | ≤ 2.0 | alternating | the floor is 2.3 |

After."""
    assert read_goals(text) == [Goal("fast", "≥", 6.4, ""), Goal("slow", "≤", 2.0, "the floor is 2.3")]
    with pytest.raises(ValueError, match="goal"):
        read_goals(text.replace("≤ 2.0", "about 2"))


@pytest.mark.parametrize(
    ("goal", "measured", "fails", "says"),
    [
        (Goal("a", "≥", 25.0, ""), 31.8, False, "met"),
        (Goal("a", "≥", 25.0, ""), 24.0, True, "MISSED"),
        (Goal("a", "≤", 4.0, "the reason"), 4.4, False, "known miss: the reason"),
        (Goal("a", "≤", 4.0, "the reason"), 3.9, False, "drop the mark"),
    ],
)
def test_only_an_unmarked_miss_fails(goal, measured, fails, says):
    text, failed = verdict(goal, measured)
    assert failed is fails and says in text
