"""Forms of the second-factor pages: they check shape only; accounts.mfa checks codes."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from enrollment.forms import PortalForm


class CodeForm(PortalForm):
    code = forms.CharField(
        label=_("Code"),
        max_length=40,
        strip=True,
        error_messages={"required": _("Enter the code.")},
        widget=forms.TextInput(
            attrs={
                "autocomplete": "one-time-code",
                "autocapitalize": "none",
                "spellcheck": "false",
                "autofocus": True,
            }
        ),
    )


def _current_code_field() -> forms.CharField:
    return forms.CharField(
        label=_("A code from your current app, or an unused backup code"),
        max_length=40,
        strip=True,
        error_messages={"required": _("Enter a code of your current second factor.")},
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "autocapitalize": "none", "spellcheck": "false"}
        ),
    )


class SetupForm(CodeForm):
    """The new app's first code; replacing an app also takes a code of the existing one."""

    current_code = _current_code_field()

    def __init__(self, *args: Any, replacing: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not replacing:
            del self.fields["current_code"]


class CurrentCodeForm(PortalForm):
    """Changing a second factor takes a code of it: a stolen session has none."""

    current_code = _current_code_field()


class RemoveForm(CurrentCodeForm):
    confirm = forms.BooleanField(
        label=_("I understand that my authenticator app stops working."),
        error_messages={"required": _("Tick the box to confirm.")},
    )
