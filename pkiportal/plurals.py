"""Spans of time in words, singular or plural as the number asks: "1 second", "2 seconds".

Messages built in Python use these (templates use the `pluralize` filter), so none says
"try again in 1 seconds" when a wait or a setting happens to be one. Django's ngettext
picks the form, so a translation would pick its language's forms here too.
"""

from __future__ import annotations

from django.utils.functional import lazy
from django.utils.translation import ngettext


def seconds(count: int) -> str:
    return ngettext("%(count)d second", "%(count)d seconds", count) % {"count": count}


def minutes(count: int) -> str:
    return ngettext("%(count)d minute", "%(count)d minutes", count) % {"count": count}


def hours(count: int) -> str:
    return ngettext("%(count)d hour", "%(count)d hours", count) % {"count": count}


def days(count: int) -> str:
    return ngettext("%(count)d day", "%(count)d days", count) % {"count": count}


# The same, worded when read rather than now: for a message built now and read later,
# perhaps in another language (a refusal's English in the audit trail, a check's text on
# a German page; pkiportal.i18n.worded).
minutes_when_read = lazy(minutes, str)
hours_when_read = lazy(hours, str)
days_when_read = lazy(days, str)


def count(number: int, singular: str, plural: str = "") -> str:
    """A count of things in English, "1 request" or "3 requests"; the plural is the
    singular with an "s" unless given."""
    return f"{number} {singular if number == 1 else (plural or singular + 's')}"
