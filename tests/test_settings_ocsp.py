"""The OCSP settings refuse what the S/MIME BR (4.9.10) forbid, loudly, at start-up.

The settings module is executed afresh under a patched environment (conftest's
load_settings); Django's own settings object is not touched.
"""

from __future__ import annotations

import pytest

from django.core.exceptions import ImproperlyConfigured


def test_the_defaults_are_24_hour_answers_kept_by_caches_for_5_minutes(load_settings):
    loaded = load_settings()

    assert loaded["PKIPORTAL_OCSP_VALIDITY_HOURS"] == 24
    assert loaded["PKIPORTAL_OCSP_MAX_AGE_SECONDS"] == 300


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"PKIPORTAL_OCSP_VALIDITY_HOURS": "7"}, "PKIPORTAL_OCSP_VALIDITY_HOURS must be 8 to 240"),
        ({"PKIPORTAL_OCSP_VALIDITY_HOURS": "241"}, "at most ten days"),
        ({"PKIPORTAL_OCSP_MAX_AGE_SECONDS": "-1"}, "PKIPORTAL_OCSP_MAX_AGE_SECONDS must be 0"),
        ({"PKIPORTAL_OCSP_MAX_AGE_SECONDS": "3601"}, "must be 0 to 3600"),
    ],
)
def test_it_refuses_settings_outside_the_bounds(load_settings, variables, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        load_settings(**variables)


@pytest.mark.parametrize(
    ("variables", "hours", "seconds"),
    [
        ({"PKIPORTAL_OCSP_VALIDITY_HOURS": "8", "PKIPORTAL_OCSP_MAX_AGE_SECONDS": "0"}, 8, 0),
        (
            {"PKIPORTAL_OCSP_VALIDITY_HOURS": "240", "PKIPORTAL_OCSP_MAX_AGE_SECONDS": "3600"},
            240,
            3600,
        ),
    ],
)
def test_it_takes_the_bounds_themselves(load_settings, variables, hours, seconds):
    loaded = load_settings(**variables)

    assert loaded["PKIPORTAL_OCSP_VALIDITY_HOURS"] == hours
    assert loaded["PKIPORTAL_OCSP_MAX_AGE_SECONDS"] == seconds
