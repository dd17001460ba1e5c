"""Forms of the second-factor pages: they check shape only; accounts.mfa checks codes."""

from __future__ import annotations

from django import forms

from enrollment.forms import PortalForm


class CodeForm(PortalForm):
    code = forms.CharField(
        label="Code",
        max_length=40,
        strip=True,
        error_messages={"required": "Enter the code."},
        widget=forms.TextInput(
            attrs={
                "autocomplete": "one-time-code",
                "autocapitalize": "none",
                "spellcheck": "false",
                "autofocus": True,
            }
        ),
    )


class RemoveForm(PortalForm):
    confirm = forms.BooleanField(
        label="I understand that signing in then takes my password only.",
        error_messages={"required": "Tick the box to confirm."},
    )
