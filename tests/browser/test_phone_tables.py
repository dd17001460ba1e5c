"""On a phone, an officer deciding from the RA console, or anyone reading a list, reaches
every row's state and buttons without scrolling sideways; so does an administrator reading
what an admin action is about to revoke, deactivate or move.

A wide table that scrolls inside its box keeps the page itself phone-wide, but leaves its
right-hand columns (the state, the Approve and Reject buttons) past the screen's edge.
Each page is loaded at 390 CSS pixels in Debian's chromium, as the role that uses it and
with rows in every table (tests/phone_pages.py), and every cell and every control in a
table is measured; every row of a stacked table must be a card with its cells labelled,
those the person may only read (another team's request, shown on asking) included.
"""

from __future__ import annotations

import pytest

from django.conf import settings

from tests.browser.test_content_security_policy import session_cookie
from tests.browser.test_enrol_in_browser import CHROMIUM, chromium_page
from tests.browser.test_phone_layout import OVERFLOW, PHONE

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"
    ),
]

# Folded sections (Withdraw…, Revoke…) opened: their forms must fit too.
OPEN_ALL = (
    """() => document.querySelectorAll("details").forEach(details => { details.open = true; })"""
)

# Every cell of every table, and everything in one that a person reads or presses, that
# reaches past either edge of the screen.
OFF_SCREEN = """() => {
    const width = window.innerWidth;
    const shown = "td, a, button, input:not([type=hidden]), select, summary, .badge";
    return Array.from(document.querySelectorAll("table")).flatMap(table =>
        Array.from(table.querySelectorAll(shown)).filter(element => {
            const box = element.getBoundingClientRect();
            return box.width > 1 && (box.left < 0 || box.right > width + 0.5);
        }).map(element => {
            const box = element.getBoundingClientRect();
            const text = (element.textContent || element.value || element.name || "").trim();
            return `${element.tagName.toLowerCase()} "${text.slice(0, 40)}" `
                + `${Math.round(box.left)}..${Math.round(box.right)}`;
        }));
}"""

# Every cell whose content is wider than the cell: text that will not wrap (a long word,
# a nowrap span) runs out of its card, which the scrolling box around the table hides from
# the two checks above (neither the page nor the cell's own box is too wide).
SPILLING = """() => Array.from(document.querySelectorAll("table td")).filter(cell =>
    cell.getBoundingClientRect().width > 1 && cell.scrollWidth > cell.clientWidth + 1
).map(cell => `td "${(cell.textContent || "").trim().slice(0, 40)}" holds `
    + `${cell.scrollWidth - cell.clientWidth} px more than it shows`)"""

# Every row of a stacked table that is not a card on the screen, and every labelled cell
# whose label is not shown before it: a row the person may only read (another team's
# request on /ra/requests/?all=1, their own) is a labelled card like the rows they act on.
NOT_CARDS = """() => Array.from(document.querySelectorAll("table.stack tbody tr")).flatMap(row => {
    const name = row.id || (row.textContent || "").trim().slice(0, 30);
    if (getComputedStyle(row).display !== "block") return [`row "${name}" is no card`];
    return Array.from(row.querySelectorAll(":scope > td[data-label]")).filter(cell =>
        getComputedStyle(cell).display !== "none"
        && getComputedStyle(cell, "::before").content !== `"${cell.dataset.label}: "`
    ).map(cell => `row "${name}": its "${cell.dataset.label}" is unlabelled`);
})"""

# How many elements each selector finds: the controls that must be on the page at all.
FOUND = "(selectors) => selectors.map(selector => document.querySelectorAll(selector).length)"


def test_every_tables_cells_and_controls_are_on_a_phones_screen(
    live_server, busy_portal, employee, officer
):
    roles = {"officer": officer, "employee": employee}
    pages = busy_portal.pages()
    cookies = {role: session_cookie(roles[role]) for role in pages}
    problems: dict[str, list[str]] = {}
    with chromium_page() as page:
        page.set_viewport_size(PHONE)
        for role, paths in pages.items():
            page.context.clear_cookies()
            cookie = {"name": settings.SESSION_COOKIE_NAME, "value": cookies[role]}
            page.context.add_cookies([{**cookie, "url": live_server.url}])
            for path, controls in paths.items():
                response = page.goto(f"{live_server.url}{path}")
                assert response is not None
                assert response.status == 200, path
                page.wait_for_load_state("networkidle")
                found = page.evaluate(FOUND, controls)
                wrong = [f"no {c}" for c, n in zip(controls, found, strict=True) if not n]
                if (pixels := page.evaluate(OVERFLOW)) > 0:
                    wrong.append(f"page {pixels} px too wide")
                page.evaluate(OPEN_ALL)
                if (pixels := page.evaluate(OVERFLOW)) > 0:
                    wrong.append(f"page {pixels} px too wide, folded sections open")
                off = page.evaluate(OFF_SCREEN)
                wrong += off[:4] + [f"and {len(off) - 4} more off the screen"] * (len(off) > 4)
                wrong += page.evaluate(SPILLING)[:4]
                wrong += page.evaluate(NOT_CARDS)[:4]
                if wrong:
                    problems[path] = wrong

    assert not problems, f"at {PHONE['width']} px: {problems}"


def test_the_admins_confirmation_pages_fit_a_phone(live_server, admin_confirmations, admin_user):
    """A serial, an address or a slug in the list of what is about to change made these
    pages wider than the screen; each is reached as a person does, ticking rows in the list
    and choosing the action, and measured as the pages above."""
    cookie = {"name": settings.SESSION_COOKIE_NAME, "value": session_cookie(admin_user)}
    problems: dict[str, list[str]] = {}
    with chromium_page() as page:
        page.set_viewport_size(PHONE)
        page.context.add_cookies([{**cookie, "url": live_server.url}])
        for confirmation in admin_confirmations:
            if confirmation.action:
                page.goto(f"{live_server.url}{confirmation.path}")
                for pk in confirmation.selected:
                    page.check(f"input.action-select[value='{pk}']")
                page.select_option("select[name=action]", confirmation.action)
                with page.expect_navigation() as asked:
                    page.click("button[name=index]")
                response = asked.value
            else:
                response = page.goto(f"{live_server.url}{confirmation.path}")
            assert response is not None
            assert response.status == 200, confirmation
            page.wait_for_load_state("networkidle")
            name = f"{confirmation.path} {confirmation.action}".strip()
            wrong = []
            if page.locator("#changelist").count():
                wrong.append("back on the list: the action refused")
            if confirmation.action and not page.locator("#content-main table td").count():
                wrong.append("no rows listed")
            if (pixels := page.evaluate(OVERFLOW)) > 0:
                wrong.append(f"page {pixels} px too wide")
            wrong += page.evaluate(OFF_SCREEN)[:4]
            wrong += page.evaluate(SPILLING)[:4]
            if wrong:
                problems[name] = wrong

    assert not problems, f"at {PHONE['width']} px: {problems}"
