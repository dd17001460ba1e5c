"""The template filters that hand the pages' values to whole translated sentences.

A sentence is translated whole, so a value inside it (a list of mailboxes, of CAs, a
state) arrives as one, already escaped and in the reader's language."""

from __future__ import annotations

from types import SimpleNamespace

from django.utils import translation

from enrollment.templatetags.portal import (
    certificate_state,
    invitation_status,
    join_mailboxes,
    join_names,
)


def test_mailboxes_are_joined_and_escaped_once() -> None:
    boxes = [
        SimpleNamespace(display_name="Sales <EU>", email="sales@example.com"),
        SimpleNamespace(display_name="Support", email="help@example.com"),
    ]
    assert join_mailboxes(boxes) == (
        "Sales &lt;EU&gt; &lt;sales@example.com&gt;, Support &lt;help@example.com&gt;"
    )


def test_a_chain_is_named_as_before() -> None:
    chain = [SimpleNamespace(name="Issuing CA"), SimpleNamespace(name="Root CA")]
    assert join_names(chain) == "Issuing CA and Root CA"
    assert join_names(chain[:1]) == "Issuing CA"
    assert join_names([]) == ""


def test_states_read_as_the_badges_did_in_english() -> None:
    with translation.override("en"):
        assert [certificate_state(s) for s in ("valid", "revoked", "expired")] == [
            "Valid",
            "Revoked",
            "Expired",
        ]
        assert certificate_state("unheard-of") == "Unheard-of"
        assert invitation_status("declined") == "declined"
        assert invitation_status("pending") == "pending"
