"""On a phone, every page fits the screen: the navigation wraps and wide tables scroll
inside themselves, so nothing drags the whole page sideways.

Measured in Debian's chromium at 390 CSS pixels, the width of a common phone.
"""

from __future__ import annotations

import pytest

from django.conf import settings

from tests.browser.test_content_security_policy import session_cookie
from tests.browser.test_enrol_in_browser import CHROMIUM, chromium_page
from tests.enrollment.tools import issue

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"
    ),
]

PHONE = {"width": 390, "height": 844}

# How far the page reaches past the right edge of the screen, in CSS pixels.
OVERFLOW = "() => document.documentElement.scrollWidth - window.innerWidth"


def test_no_page_is_wider_than_a_phone(
    live_server, hierarchy, template, kra, employee, officer, admin_user, ec_p256_key,
    archived, asked,
):  # fmt: skip
    signing = issue(employee, template("smime-signing"), ec_p256_key)
    issue(employee, template("smime-dual-use"), ec_p256_key)
    pages = {
        None: ["/", "/accounts/login/", "/pki/"],
        employee: [
            "/",
            "/enroll/",
            "/enroll/smime-signing/",
            "/certificates/",
            f"/certificates/{signing.pk}/",
            f"/certificates/{archived.certificate.pk}/",  # its key recovery, asked for
            f"/ra/recovery/{asked.pk}/",
            f"/directory/?q={employee.last_name}",
            f"/directory/{signing.fingerprint_sha256}/",
            "/account/tokens/",
        ],
        # An administrator who is also an officer has the longest navigation.
        admin_user: [
            "/ra/",
            "/ra/requests/",
            "/ra/requests/history/",
            f"/ra/certificates/?q={employee.last_name}",
            "/ra/audit/",
            "/ra/recovery/",
            f"/ra/recovery/{asked.pk}/",  # a holder's request, with its accept form
            "/ra/agents/",
        ],
    }
    cookies = {user: session_cookie(user) for user in pages if user is not None}
    wide: dict[str, int] = {}
    with chromium_page() as page:
        page.set_viewport_size(PHONE)
        for user, paths in pages.items():
            page.context.clear_cookies()
            if user is not None:
                cookie = {"name": settings.SESSION_COOKIE_NAME, "value": cookies[user]}
                page.context.add_cookies([{**cookie, "url": live_server.url}])
            for path in paths:
                response = page.goto(f"{live_server.url}{path}")
                assert response is not None
                assert response.status == 200, path
                page.wait_for_load_state("networkidle")
                wide[f"{user or 'anonymous'} {path}"] = page.evaluate(OVERFLOW)

    too_wide = {path: pixels for path, pixels in wide.items() if pixels > 0}
    assert not too_wide, f"wider than a {PHONE['width']} px phone by: {too_wide}"


# The right edge of each status badge in the person's own certificate tables.
STATUS_EDGES = """() => Array.from(document.querySelectorAll("table.stack .badge[class*=status-]"))
    .map(badge => badge.getBoundingClientRect().right)"""


def test_a_certificates_status_is_on_a_phones_screen_without_scrolling(
    live_server, hierarchy, template, employee, ec_p256_key, tmp_path
):
    """A wide table that scrolls inside itself hid the status column off the screen, so a
    revoked certificate looked like a valid one: on a phone each row is a labelled card."""
    issue(employee, template("smime-signing"), ec_p256_key)
    issue(employee, template("smime-dual-use"), ec_p256_key)
    cookie = {"name": settings.SESSION_COOKIE_NAME, "value": session_cookie(employee)}
    edges: dict[str, list[float]] = {}
    with chromium_page() as page:
        page.set_viewport_size(PHONE)
        page.context.add_cookies([{**cookie, "url": live_server.url}])
        for path in ("/", "/certificates/"):
            page.goto(f"{live_server.url}{path}")
            page.wait_for_load_state("networkidle")
            edges[path] = page.evaluate(STATUS_EDGES)
            page.screenshot(path=str(tmp_path / f"{path.strip('/') or 'home'}.png"), full_page=True)

    assert all(len(found) == 2 for found in edges.values()), edges
    assert all(edge <= PHONE["width"] for found in edges.values() for edge in found), edges
