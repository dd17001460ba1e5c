"""Error reports (the DEBUG page and the mails to ADMINS) keep secrets out in every mode.

Django's SafeExceptionReporterFilter honours @sensitive_variables and
@sensitive_post_parameters only when DEBUG is off; a portal where people type PKCS#12 and
agent passwords hides them on the DEBUG page too. Settings are cleansed either way.
"""

from __future__ import annotations

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter


class SecretsHiddenReporterFilter(SafeExceptionReporterFilter):
    # Django's list, PIN: the HSM user PIN (PKIPORTAL_PKCS11_PIN), and OTP: the request
    # header X-OTP-Code (HTTP_X_OTP_CODE in META), an app's code or a backup code.
    hidden_settings = re.compile(
        "API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|PIN|OTP", flags=re.IGNORECASE
    )

    def is_active(self, request: Any) -> bool:
        return True
