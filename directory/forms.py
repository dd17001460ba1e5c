"""The directory's search form: shape only (length, NUL bytes, a sane page cursor)."""

from __future__ import annotations

from django import forms

from directory.selectors import MAX_QUERY_LENGTH

MAX_CURSOR = 2**63 - 1


class SearchForm(forms.Form):
    q = forms.CharField(
        required=False,
        max_length=MAX_QUERY_LENGTH,
        label="Name, e-mail or unit",
        widget=forms.TextInput(
            attrs={
                "type": "search",
                "autocomplete": "off",
                "autofocus": True,
                "placeholder": "e.g. José, garcia@, Finance",
            }
        ),
    )
    include_inactive = forms.BooleanField(
        required=False, label="Also show expired and revoked certificates"
    )
    after = forms.IntegerField(
        required=False, min_value=1, max_value=MAX_CURSOR, widget=forms.HiddenInput
    )
