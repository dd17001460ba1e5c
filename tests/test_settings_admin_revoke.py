"""PKIPORTAL_ADMIN_REVOKE_INLINE_MAX: how many certificates the admin's "Revoke selected
certificates…" revokes in the officer's request before handing them to a background
task; a whole number from 0 (always in the background) to 10000, or the portal stops at
start-up."""

from __future__ import annotations

import pytest

from django.core.exceptions import ImproperlyConfigured


def test_the_default_is_100(load_settings):
    assert load_settings()["PKIPORTAL_ADMIN_REVOKE_INLINE_MAX"] == 100


@pytest.mark.parametrize(("given", "limit"), [("0", 0), (" 500 ", 500), ("10000", 10000)])
def test_it_takes_0_to_10000(load_settings, given, limit):
    loaded = load_settings(PKIPORTAL_ADMIN_REVOKE_INLINE_MAX=given)

    assert loaded["PKIPORTAL_ADMIN_REVOKE_INLINE_MAX"] == limit


@pytest.mark.parametrize("given", ["-1", "10001", "", "2.5", "many"])
def test_it_refuses_anything_else(load_settings, given):
    with pytest.raises(
        ImproperlyConfigured, match="PKIPORTAL_ADMIN_REVOKE_INLINE_MAX must be 0 to 10000"
    ):
        load_settings(PKIPORTAL_ADMIN_REVOKE_INLINE_MAX=given)
