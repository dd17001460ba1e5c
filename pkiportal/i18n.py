"""Which language a person reads: the pages and mail of one person agree."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from django.conf import settings
from django.utils import translation


def supported(code: str | None) -> str | None:
    """The LANGUAGES code ``code`` names (a regional variant maps to its language), or None."""
    if not code:
        return None
    try:
        return translation.get_supported_language_variant(code)
    except LookupError:
        return None


def language_of(person: Any) -> str:
    """For mail, which has no browser to ask: the person's choice, else PKIPORTAL_LANGUAGE."""
    return supported(getattr(person, "language", "")) or settings.LANGUAGE_CODE


def in_language_of(person: Any) -> AbstractContextManager[None]:
    """Word what is built inside (a mail's subject and body) for this person."""
    return translation.override(language_of(person))
