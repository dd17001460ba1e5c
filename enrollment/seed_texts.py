"""The seeded templates' descriptions (migration 0002), marked for the catalogue.

A description is the organisation's text, shown as written. Until someone edits one,
it is still ours, word for word: those are shown in the reader's language
(|seeded_text in templates/). An edited description matches none and stays as written.
"""

from __future__ import annotations

from django.utils.translation import gettext, gettext_noop

SEEDED = frozenset(
    {
        gettext_noop(
            "Sign and receive encrypted e-mail with one key (the classic 'User' template). "
            "The key is not archived."
        ),
        gettext_noop(
            "Receive encrypted e-mail. The portal generates the key and archives a copy "
            "encrypted to the key recovery agents, so mail stays readable if the key is lost."
        ),
        gettext_noop("Sign your e-mail. The key is never archived: only you hold it."),
    }
)


def seeded_text(text: str) -> str:
    """``text`` in the reader's language if it is one of ours, else as written."""
    return gettext(text) if text in SEEDED else text
