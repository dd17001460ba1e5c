"""The directory's search form: shape only (length, NUL bytes, a sane page cursor)."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from directory.selectors import MAX_CURSOR_LENGTH, MAX_QUERY_LENGTH


class SearchForm(forms.Form):
    q = forms.CharField(
        required=False,
        max_length=MAX_QUERY_LENGTH,
        label=_("Name, e-mail or unit"),
        widget=forms.TextInput(
            attrs={
                "type": "search",
                "autocomplete": "off",
                "autofocus": True,
                # Translators: what to search for: a name, the start of an address, a unit.
                "placeholder": _("e.g. José, garcia@, Finance"),
            }
        ),
    )
    include_inactive = forms.BooleanField(
        required=False, label=_("Also show expired and revoked certificates")
    )
    after = forms.CharField(  # the signed cursor of a `next` link; selectors checks it
        required=False, max_length=MAX_CURSOR_LENGTH, widget=forms.HiddenInput
    )
