"""The leavers' revocation settings: a grace period within the S/MIME BR's 5 days, or off,
and a cap of at least one account; anything else stops the portal at start-up.

The settings module is executed afresh under a patched environment (conftest's
load_settings); Django's own settings object is not touched.
"""

from __future__ import annotations

import pytest

from django.core.exceptions import ImproperlyConfigured


def test_the_defaults_are_72_hours_at_most_50_accounts_a_run_hourly(load_settings):
    loaded = load_settings()

    assert loaded["PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS"] == 72
    assert loaded["PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN"] == 50
    entry = loaded["CELERY_BEAT_SCHEDULE"]["leavers-revoke"]
    assert entry["task"] == "enrollment.tasks.leavers_revoke_task"
    assert entry["schedule"].total_seconds() == 3600
    assert entry["options"] == {"expires": 3600}


@pytest.mark.parametrize(("given", "hours"), [("0", 0), ("120", 120), (" 24 ", 24)])
def test_it_takes_0_to_120_hours(load_settings, given, hours):
    loaded = load_settings(PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS=given)

    assert loaded["PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS"] == hours


@pytest.mark.parametrize("given", ["", "off", "OFF", " off "])
def test_an_explicit_empty_or_off_value_turns_it_off(load_settings, given):
    loaded = load_settings(PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS=given)

    assert loaded["PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS"] is None


@pytest.mark.parametrize("given", ["121", "-1", "72.5", "3d", "no", "٧٢"])
def test_it_refuses_a_grace_period_beyond_5_days_or_not_in_hours(load_settings, given):
    with pytest.raises(
        ImproperlyConfigured, match=r"must be 0 to 120 hours \(S/MIME BR 4\.9\.1\.1"
    ):
        load_settings(PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS=given)


@pytest.mark.parametrize("given", ["0", "-5", "", "ten", "2.5"])
def test_it_refuses_a_cap_below_one_account(load_settings, given):
    with pytest.raises(ImproperlyConfigured, match="MAX_PER_RUN must be a whole number"):
        load_settings(PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN=given)


def test_it_takes_a_larger_cap(load_settings):
    loaded = load_settings(PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN="500")

    assert loaded["PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN"] == 500
