"""API token settings: the longest life and the per-person cap are at least 1, or the
portal does not start (a token that expires at once, or none allowed, is a typo).

The settings module is executed afresh under a patched environment (conftest's
load_settings); Django's own settings object is not touched.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from django.core.exceptions import ImproperlyConfigured


def test_the_defaults_are_90_days_and_10_tokens(load_settings):
    loaded = load_settings()

    assert loaded["API_TOKEN_TTL_DAYS"] == 90
    assert loaded["REST_KNOX"]["TOKEN_TTL"] == timedelta(days=90)
    assert loaded["PKIPORTAL_MAX_API_TOKENS"] == 10
    assert loaded["PKIPORTAL_TOKEN_SIGN_IN_MINUTES"] == 15


def test_both_are_read_from_the_environment(load_settings):
    loaded = load_settings(API_TOKEN_TTL_DAYS="30", PKIPORTAL_MAX_API_TOKENS="3")

    assert loaded["REST_KNOX"]["TOKEN_TTL"] == timedelta(days=30)
    assert loaded["PKIPORTAL_MAX_API_TOKENS"] == 3


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("API_TOKEN_TTL_DAYS", "0"),
        ("API_TOKEN_TTL_DAYS", "-5"),
        ("PKIPORTAL_MAX_API_TOKENS", "0"),
        ("PKIPORTAL_MAX_API_TOKENS", "-1"),
        ("PKIPORTAL_TOKEN_SIGN_IN_MINUTES", "0"),
        ("PKIPORTAL_TOKEN_SIGN_IN_MINUTES", "1441"),
    ],
)
def test_less_than_one_stops_the_portal(load_settings, name, value):
    with pytest.raises(ImproperlyConfigured, match=name):
        load_settings(**{name: value})
