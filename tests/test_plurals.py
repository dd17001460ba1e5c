"""Counts in messages read as English does: "1 day", "2 days"."""

from __future__ import annotations

import pytest

from pkiportal import plurals


@pytest.mark.parametrize(
    ("number", "expected"),
    [(0, "0 days"), (1, "1 day"), (2, "2 days"), (365, "365 days")],
)
def test_days(number, expected):
    assert plurals.days(number) == expected


@pytest.mark.parametrize(
    ("number", "singular", "plural", "expected"),
    [
        (1, "request", "", "1 request"),
        (20, "request", "", "20 requests"),
        (1, "key recovery", "key recoveries", "1 key recovery"),
        (3, "key recovery", "key recoveries", "3 key recoveries"),
    ],
)
def test_count(number, singular, plural, expected):
    assert plurals.count(number, singular, plural) == expected


@pytest.mark.parametrize(
    ("function", "one", "two"),
    [
        (plurals.seconds, "1 second", "2 seconds"),
        (plurals.minutes, "1 minute", "2 minutes"),
        (plurals.hours, "1 hour", "2 hours"),
    ],
)
def test_spans(function, one, two):
    assert (function(1), function(2)) == (one, two)
