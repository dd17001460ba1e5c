"""Spans of time in words, singular or plural as the number asks: "1 second", "2 seconds".

Messages built in Python use these (templates use the `pluralize` filter), so none says
"try again in 1 seconds" when a wait or a setting happens to be one. Django's ngettext
picks the form, so a translation would pick its language's forms here too.
"""

from __future__ import annotations

from django.utils.translation import ngettext


def seconds(count: int) -> str:
    return ngettext("%(count)d second", "%(count)d seconds", count) % {"count": count}


def minutes(count: int) -> str:
    return ngettext("%(count)d minute", "%(count)d minutes", count) % {"count": count}


def hours(count: int) -> str:
    return ngettext("%(count)d hour", "%(count)d hours", count) % {"count": count}
