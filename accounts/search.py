"""Accent-folded search text for the directory: the same folding for rows and for queries.

Folding happens in Python, not in the database, so SQLite (the embedded default) and
PostgreSQL match exactly the same things and PostgreSQL indexes a plain column.
"""

from __future__ import annotations

import unicodedata

# Letters NFKD does not decompose; unaccent and people alike expect their ASCII forms.
_LETTERS = str.maketrans(
    {"æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i", "ħ": "h"}
)
# Bounded so a row always fits a btree index entry (2,704 bytes, UTF-8 up to 4 bytes a char).
MAX_SEARCH_TEXT = 500
# A query's words beyond these are ignored.
MAX_TERMS = 6
# Shorter words match the start of a word only: pg_trgm can index " jo" but not "%jo%".
SUBSTRING_MIN_LENGTH = 3


def fold(text: str) -> str:
    """Lower-case, accent-free, single-spaced: "  José  ÅSTRÖM" becomes "jose astrom"."""
    kept: list[str] = []
    for char in unicodedata.normalize("NFKD", text.casefold()):
        if char.isspace():
            kept.append(" ")
        elif not unicodedata.combining(char) and not unicodedata.category(char).startswith("C"):
            kept.append(char)
    return " ".join("".join(kept).translate(_LETTERS).split())


def directory_search_text(
    *,
    username: str,
    first_name: str,
    last_name: str,
    display_name: str,
    email: str,
    organizational_unit: str,
) -> str:
    """What the directory matches a person by; it starts with the shown name, to sort by.

    The leading space lets a short term match the start of the first word too (" jo").
    """
    shown = display_name or " ".join(p for p in (first_name, last_name) if p) or username
    names = [name for name in (first_name, last_name) if name and name not in shown]
    parts = (shown, *names, email, organizational_unit)
    return (" " + fold(" ".join(p for p in parts if p)))[:MAX_SEARCH_TEXT]


def query_words(query: str) -> list[str]:
    """A query's distinct folded words, at most MAX_TERMS of them."""
    return list(dict.fromkeys(fold(query).split()))[:MAX_TERMS]


def word_pattern(word: str) -> str:
    """What a directory_search text contains when a query word matches it."""
    return word if len(word) >= SUBSTRING_MIN_LENGTH else f" {word}"
