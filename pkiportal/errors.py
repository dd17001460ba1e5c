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
from django.views.debug import SafeExceptionReporterFilter

# user:password@ in scheme://user:password@host: the password is what is hidden.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:\s]*:)[^@\s]+@", re.IGNORECASE)


class SecretsHiddenReporterFilter(SafeExceptionReporterFilter):
    # Django's list (AUTH covers the Authorization header: an API token, or Basic
    # credentials), plus PIN: the HSM user PIN (PKIPORTAL_PKCS11_PIN), and OTP: the request
    # header X-OTP-Code (HTTP_X_OTP_CODE in META), an app's code or a backup code.
    hidden_settings = re.compile(
        f"{SafeExceptionReporterFilter.hidden_settings.pattern}|PIN|OTP", flags=re.IGNORECASE
    )

    def is_active(self, request: Any) -> bool:
        return True

    def get_post_parameters(self, request: HttpRequest | None) -> Any:
        parameters = super().get_post_parameters(request)
        secret = [name for name in parameters if self.hidden_settings.search(name)]
        if not secret:
            return parameters
        cleansed = parameters.copy()
        for name in secret:
            cleansed[name] = self.cleansed_substitute
        return cleansed

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        cleansed = super().cleanse_setting(key, value)
        if isinstance(cleansed, str):  # lazy texts too: the report shows them evaluated
            text = str(cleansed)
            hidden = _URL_PASSWORD.sub(rf"\g<head>{self.cleansed_substitute}@", text)
            if hidden != text:
                return hidden
        return cleansed
