"""The rule for a PKCS#12 password, one for the web form and the API alike."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError
from django.utils.translation import ngettext


def pkcs12_password_problems(password: str, user: Any) -> list[str]:
    """Our minimum length plus Django's validators; messages never contain the password.

    When ours fails, Django's own length rule is left out: it would repeat ours with a
    smaller number ("at least 12" and "at least 8" side by side).
    """
    minimum = settings.PKIPORTAL_PKCS12_PASSWORD_MIN_LENGTH
    problems: list[str] = []
    if len(password) < minimum:
        problems.append(
            ngettext(
                "Use at least %(count)d character.", "Use at least %(count)d characters.", minimum
            )
            % {"count": minimum}
        )
    try:
        password_validation.validate_password(password, user)
    except ValidationError as exc:
        problems.extend(
            message
            for error in exc.error_list
            if not (problems and error.code == "password_too_short")
            for message in error.messages
        )
    return problems
