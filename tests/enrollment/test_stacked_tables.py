"""On a phone a table of three or more columns is a stack of labelled cards (table.stack in
static/css/portal.css): each cell's data-label is shown before it, in place of the header.

This reads the markup: every such table is stacked, each label says what its column's
header says, and a column labelled in one row is labelled in every row.
tests/browser/test_phone_tables.py measures the same pages in chromium.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest

from tests.conftest import client_for

pytestmark = pytest.mark.django_db

# Columns left unlabelled on purpose, by page and header: the cell is the card's title, or
# holds a control that names itself ("Withdraw: Withdraw…" would stutter).
UNLABELLED = {
    ("/", "Template"),
    ("/certificates/", "Certificate"),
    ("/certificates/", "Withdraw"),
    ("/account/tokens/", "Revoke"),
    ("/ra/recovery/new/?q=Andersson", "Recover"),
}


@dataclass
class Table:
    classes: list[str]
    headers: list[str] = field(default_factory=list)
    # (column, its data-label or None) of every body cell that spans one column.
    cells: list[tuple[int, str | None]] = field(default_factory=list)


class Tables(HTMLParser):
    """The tables of a page (none nests another)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[Table] = []
        self.header: list[str] | None = None  # the text of the <th> being read
        self.column = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self.tables.append(Table(classes=(attributes.get("class") or "").split()))
        elif tag == "th":
            self.header = []
        elif tag == "tr":
            self.column = 0
        elif tag == "td":
            span = int(attributes.get("colspan") or 1)
            if span == 1:
                self.tables[-1].cells.append((self.column, attributes.get("data-label")))
            self.column += span

    def handle_endtag(self, tag: str) -> None:
        if tag == "th" and self.header is not None:
            self.tables[-1].headers.append(" ".join("".join(self.header).split()))
            self.header = None

    def handle_data(self, data: str) -> None:
        if self.header is not None:
            self.header.append(data)


def tables_of(page: str) -> list[Table]:
    parser = Tables()
    parser.feed(page)
    return parser.tables


def test_every_wide_table_is_stacked_with_each_label_its_columns_header(
    busy_portal, employee, officer
):
    roles = {"officer": officer, "employee": employee}
    pages = busy_portal.pages()
    problems: list[str] = []
    without: list[str] = []  # pages with no wide table
    for role, paths in pages.items():
        client = client_for(roles[role])
        for path in paths:
            response = client.get(path)
            assert response.status_code == 200, path
            wide = [
                table for table in tables_of(response.content.decode()) if len(table.headers) > 2
            ]
            if not wide:
                without.append(path)
            for table in wide:
                name = f"{path} {table.headers}"
                if "stack" not in table.classes:
                    problems.append(f"{name}: not stacked")
                    continue
                if not table.cells:
                    problems.append(f"{name}: no rows")
                labelled = set()
                for column, label in table.cells:
                    if label is None:
                        continue
                    labelled.add(column)
                    if label != table.headers[column]:
                        problems.append(f"{name}: {label!r} under {table.headers[column]!r}")
                for column, header in enumerate(table.headers):
                    if header and column not in labelled and (path, header) not in UNLABELLED:
                        problems.append(f"{name}: no cell labelled {header!r}")
                # Every row a labelled card, those the person may only read too (another
                # team's request on /ra/requests/?all=1, their own, a mailbox's they read).
                bare = {column for column, label in table.cells if label is None}
                for column in sorted(bare & labelled):
                    problems.append(f"{name}: a cell under {table.headers[column]!r} unlabelled")

    assert not problems, "\n".join(problems)
    assert without == ["/directory/?q=Andersson", "/directory/?q=finance"]  # cards already
