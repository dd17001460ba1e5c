"""Errors raised by enrollment.x509, each carrying a message that is safe to show a user."""

from __future__ import annotations


class X509Error(Exception):
    """Base class: ``message`` names what was wrong without leaking internals."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CsrError(X509Error):
    """A certificate signing request was unreadable or unacceptable."""


class PolicyError(X509Error):
    """A request or a template breaks the certificate profile (S/MIME BR, RFC 5280)."""


class RecoveryError(X509Error):
    """An archived private key could not be recovered from its CMS envelope."""
