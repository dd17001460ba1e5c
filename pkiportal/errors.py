"""Error reports (the DEBUG page and the mails to ADMINS) keep secrets out in every mode.

Django's SafeExceptionReporterFilter honours @sensitive_variables and
@sensitive_post_parameters only when DEBUG is off; a portal where people type PKCS#12 and
agent passwords hides them on the DEBUG page too. Beyond Django's filter: POST fields
named like a secret are hidden even where no view marked them (the API's form-encoded
and multipart bodies reach Django's request.POST through DRF), and so is the password
of any URL in the settings or the request's environment (a broker's or a database's
redis://:secret@host, which no setting's name gives away).
"""

from __future__ import annotations

import re
from typing import Any

from django.http import HttpRequest
from django.utils.functional import Promise
from django.views.debug import SafeExceptionReporterFilter

# Where a URL's authority (its user:password@host:port) ends, as urlsplit() reads it: not
# at a space, which a password may hold. Several URLs on one line are then read as one
# authority up to the next "/", which hides more, never less.
_AUTHORITY_END = re.compile(r"[/?#]")


def without_url_passwords(text: str, hidden: str) -> str:
    """``text`` with the password of each scheme://user:password@host in it replaced.

    The user part runs to the authority's last "@", as urlsplit() and django-environ
    read it, so a password holding an unescaped "@" is hidden whole. One pass over the
    text: the reports run this over every request header, which a client chooses (a
    pattern that backtracked took seconds per 8 KB header).
    """
    kept: list[str] = []
    done = search = 0
    while (found := text.find("://", search)) != -1:
        authority = found + 3
        end_match = _AUTHORITY_END.search(text, authority)
        end = end_match.start() if end_match else len(text)
        at = text.rfind("@", authority, end)
        colon = text.find(":", authority, at) if at != -1 else -1
        if colon == -1:
            kept.append(text[done:end])
        else:
            kept += [text[done : colon + 1], hidden, text[at:end]]
        done = end
        # The next "://" may begin on this authority's last character: "a://h:p@x;b://..."
        # ends at the "/" of b's "://", whose ":" is the authority's last.
        search = end - 1 if end > authority else end
    kept.append(text[done:])
    return "".join(kept)


class SecretsHiddenReporterFilter(SafeExceptionReporterFilter):
    # Django's list (AUTH covers the Authorization header: an API token, or Basic
    # credentials), plus PIN: the HSM user PIN (PKIPORTAL_PKCS11_PIN), and OTP: the request
    # header X-OTP-Code (HTTP_X_OTP_CODE in META), an app's code or a backup code.
    hidden_settings = re.compile(
        f"{SafeExceptionReporterFilter.hidden_settings.pattern}|PIN|OTP", flags=re.IGNORECASE
    )
    # Form fields: those names, and CODE (a second factor's code, a backup code), which as
    # a setting's name would hide LANGUAGE_CODE.
    hidden_fields = re.compile(f"{hidden_settings.pattern}|CODE", flags=re.IGNORECASE)

    def is_active(self, request: Any) -> bool:
        return True

    def get_post_parameters(self, request: HttpRequest | None) -> Any:
        parameters = super().get_post_parameters(request)
        secret = [
            name for name in parameters if isinstance(name, str) and self.hidden_fields.search(name)
        ]
        if not secret:
            return parameters
        cleansed = parameters.copy()
        for name in secret:
            cleansed[name] = self.cleansed_substitute
        return cleansed

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        cleansed = super().cleanse_setting(key, value)
        # Lazy texts too (gettext_lazy's and SimpleLazyObject's): the report shows them
        # evaluated.
        if isinstance(cleansed, str | Promise) and "://" in (text := str(cleansed)):
            hidden = without_url_passwords(text, self.cleansed_substitute)
            if hidden != text:
                return hidden
        return cleansed
