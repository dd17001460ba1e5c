"""How long officers' notices of requests awaiting approval are collected for one summary:
0 to 1440 minutes, or the portal does not start. (The settings module runs afresh:
conftest's load_settings.)"""

from __future__ import annotations

from datetime import timedelta

import pytest

from django.core.exceptions import ImproperlyConfigured

NAME = "PKIPORTAL_RA_NOTICE_WINDOW_MINUTES"


def test_requests_are_collected_for_15_minutes_by_default_and_beat_sends_the_summaries(
    load_settings,
):
    loaded = load_settings()

    assert loaded[NAME] == 15
    entry = loaded["CELERY_BEAT_SCHEDULE"]["approval-notice-digests"]
    assert entry["task"] == "enrollment.tasks.approval_notice_digests_task"
    assert entry["schedule"] == timedelta(minutes=1)


@pytest.mark.parametrize(("given", "minutes"), [("0", 0), ("1", 1), ("1440", 1440), (" 30 ", 30)])
def test_it_takes_0_to_1440_minutes(load_settings, given, minutes):
    assert load_settings(**{NAME: given})[NAME] == minutes


@pytest.mark.parametrize("given", ["-1", "1441", "2.5", "15m", "soon", "", "١٥"])
def test_anything_else_stops_the_portal_saying_what_it_takes(load_settings, given):
    with pytest.raises(ImproperlyConfigured, match=f"{NAME} must be 0 to 1440 minutes"):
        load_settings(**{NAME: given})
