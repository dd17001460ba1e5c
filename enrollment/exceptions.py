"""The one domain exception family; views and the API translate it once at the edge."""

from __future__ import annotations

from typing import Any

from django.utils import translation
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from enrollment.x509.errors import X509Error

# A message as raised: a plain str, or gettext_lazy's promise, read in the language active
# where it is shown.
Message = str | Promise


class EnrollmentError(Exception):
    """An error whose .message is safe to show to the person who caused it.

    Raise it with ``_("... %(name)s ...")`` (gettext_lazy) and the values in ``params``:
    the message is then worded in the language of whoever reads it, the page's for the
    person, English for the audit trail (``english``), however far it travelled first.
    """

    default_message: Message = _("The request could not be completed.")

    def __init__(
        self,
        message: Message | None = None,
        *,
        field: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        self._message = message or self.default_message
        self.params = params or {}
        self.field = field
        super().__init__(self._message)

    @property
    def message(self) -> str:
        text = str(self._message)
        return text % self.params if self.params else text

    @property
    def english(self) -> str:
        """For the audit trail and logs, which read the same whoever acted."""
        with translation.override("en"):
            return self.message

    def __str__(self) -> str:
        return self.message

    @classmethod
    def from_x509(cls, exc: X509Error, *, field: str | None = None) -> EnrollmentError:
        """The Django-free X.509 code's refusal, worded in the reader's language."""
        return cls(_(exc.msgid), field=field, params=exc.params)


class PolicyViolation(EnrollmentError):
    default_message: Message = _("The request is not allowed by the certificate template.")


class NotPermitted(EnrollmentError):
    default_message: Message = _("You are not allowed to do that.")

    def __init__(
        self,
        message: Message | None = None,
        *,
        field: str | None = None,
        params: dict[str, Any] | None = None,
        refusal: str = "",
    ) -> None:
        super().__init__(message, field=field, params=params)
        # Why, when it refuses someone for who they are (not an officer, outside their
        # scope, their own request: a key of permissions.REFUSALS), not for what they ask:
        # such a refusal of someone holding a role is audited as access.refused.
        self.refusal = refusal


class InvalidState(EnrollmentError):
    default_message: Message = _("That is not possible in the object's current state.")


class KeyStoreError(EnrollmentError):
    default_message: Message = _("The CA key is not available on this server.")


class ConfigurationError(EnrollmentError):
    default_message: Message = _("The PKI is not set up completely.")


class RateLimited(EnrollmentError):
    default_message: Message = _("Too many requests; try again later.")
    # Seconds until a retry can succeed, when known (the API's Retry-After header).
    retry_after: float | None = None


class Busy(EnrollmentError):
    default_message: Message = _("Another process is doing this right now; try again shortly.")


CA_CANNOT_SIGN = _("The CA cannot sign right now; please tell your administrator.")


def public_message(exc: EnrollmentError) -> str:
    """What may be shown to whoever caused it: a key store's own message names key files
    and backends, which are for the operator's log."""
    return str(CA_CANNOT_SIGN) if isinstance(exc, KeyStoreError) else exc.message
