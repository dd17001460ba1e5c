"""The CRL settings refuse what the S/MIME BR (4.9.7) forbid, loudly, at start-up.

The settings module is executed afresh under a patched environment (conftest's
load_settings); Django's own settings object is not touched.
"""

from __future__ import annotations

import pytest

from django.core.exceptions import ImproperlyConfigured


def test_the_defaults_are_7_days_refreshed_daily_with_a_72_hour_overlap(load_settings):
    loaded = load_settings()

    assert loaded["PKIPORTAL_CRL_VALIDITY_DAYS"] == 7
    assert loaded["PKIPORTAL_CRL_REFRESH_HOURS"] == 24
    assert loaded["PKIPORTAL_CRL_OVERLAP_HOURS"] == 72
    schedule = loaded["CELERY_BEAT_SCHEDULE"]
    assert schedule["crl-refresh"]["task"] == "enrollment.tasks.crl_publish_scheduled_task"
    assert schedule["crl-refresh"]["schedule"].total_seconds() == 24 * 3600
    assert schedule["crl-watchdog"]["schedule"].total_seconds() == 5 * 60


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"PKIPORTAL_CRL_VALIDITY_DAYS": "11"}, "PKIPORTAL_CRL_VALIDITY_DAYS must be 1 to 10"),
        ({"PKIPORTAL_CRL_VALIDITY_DAYS": "0"}, "PKIPORTAL_CRL_VALIDITY_DAYS must be 1 to 10"),
        ({"PKIPORTAL_CRL_REFRESH_HOURS": "169", "PKIPORTAL_CRL_VALIDITY_DAYS": "10"},
         "PKIPORTAL_CRL_REFRESH_HOURS must be 1 to 168"),
        ({"PKIPORTAL_CRL_REFRESH_HOURS": "48", "PKIPORTAL_CRL_VALIDITY_DAYS": "2"},
         "shorter than PKIPORTAL_CRL_VALIDITY_DAYS"),
        ({"PKIPORTAL_CRL_OVERLAP_HOURS": "150"}, "PKIPORTAL_CRL_OVERLAP_HOURS must be 1 to 144"),
        ({"PKIPORTAL_ROOT_CRL_VALIDITY_DAYS": "400"}, "12 months"),
        ({"PKIPORTAL_CRL_PUBLISH_DELAY_SECONDS": "120"}, "must be 0 to 60"),
        ({"PKIPORTAL_CRL_WATCHDOG_MINUTES": "0"}, "must be 1 to 60"),
    ],
)  # fmt: skip
def test_it_refuses_settings_outside_the_bounds(load_settings, variables, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        load_settings(**variables)


def test_ten_days_refreshed_weekly_is_the_most_the_br_allow(load_settings):
    loaded = load_settings(PKIPORTAL_CRL_VALIDITY_DAYS="10", PKIPORTAL_CRL_REFRESH_HOURS="168")

    assert loaded["PKIPORTAL_CRL_OVERLAP_HOURS"] == 36
