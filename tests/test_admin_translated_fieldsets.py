"""The account admin's sections whatever the default language (PKIPORTAL_LANGUAGE)."""

from __future__ import annotations

from django.contrib.auth.admin import UserAdmin
from django.utils import translation

from accounts.admin import with_derived_dates


def test_the_dates_section_shows_the_derived_dates_in_a_german_portal():
    """The fieldsets are built at import, in the default language: with German titles
    the dates section must still get when the account was switched off and when its
    address changed (the grace periods of their certificates start then)."""
    with translation.override("de"):
        fieldsets = with_derived_dates(UserAdmin.fieldsets or ())
        titles = [str(name) for name, _options in fieldsets]
    dates = [
        options["fields"] for _name, options in fieldsets if "date_joined" in options["fields"]
    ]
    assert dates == [("last_login", "date_joined", "deactivated_at", "email_changed_at")]
    assert "Wichtige Daten" in titles  # the German titles were in effect
    others = [
        options["fields"] for _name, options in fieldsets if "date_joined" not in options["fields"]
    ]
    assert all("deactivated_at" not in fields for fields in others)
