"""Errors raised by enrollment.x509, each carrying a message that is safe to show a user."""

from __future__ import annotations

from typing import Any


def gettext_noop(message: str) -> str:
    """Marks a message for the translation catalogue without importing Django: makemessages
    finds it by this name, and the Django side translates ``X509Error.msgid`` when shown."""
    return message


class X509Error(Exception):
    """Base class: ``message`` names what was wrong without leaking internals.

    ``msgid`` and ``params`` are the message before its values were put in, so the Django
    side can word it in the reader's language; ``message`` is the English.
    """

    def __init__(self, message: str, **params: Any) -> None:
        self.msgid = message
        self.params = params
        self.message = message % params if params else message
        super().__init__(self.message)


class CsrError(X509Error):
    """A certificate signing request was unreadable or unacceptable."""


class PolicyError(X509Error):
    """A request or a template breaks the certificate profile (S/MIME BR, RFC 5280)."""


class RecoveryError(X509Error):
    """An archived private key could not be recovered from its CMS envelope."""
