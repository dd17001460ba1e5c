"""With the keyboard only: the first Tab offers a way past the navigation to the page.

An RA officer's header holds eight links and a button before the content; the skip
link saves them on every page.
"""

from __future__ import annotations

import pytest

from django.conf import settings

from tests.browser.test_content_security_policy import session_cookie
from tests.browser.test_enrol_in_browser import CHROMIUM, chromium_page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"
    ),
]

FOCUSED = "() => document.activeElement.id || document.activeElement.textContent.trim()"


def test_the_first_tab_skips_the_navigation_to_the_content(live_server, hierarchy, officer):
    cookie = {"name": settings.SESSION_COOKIE_NAME, "value": session_cookie(officer)}
    with chromium_page() as page:
        page.context.add_cookies([{**cookie, "url": live_server.url}])
        page.goto(f"{live_server.url}/ra/")

        page.keyboard.press("Tab")
        skip = page.evaluate(FOCUSED)
        visible = page.locator("a.skip").bounding_box()
        page.keyboard.press("Enter")
        landed = page.evaluate(FOCUSED)
        page.keyboard.press("Tab")
        after = page.evaluate(FOCUSED)

    assert skip == "Skip to the content"
    assert visible is not None
    assert visible["y"] >= 0  # on screen once focused
    assert landed == "content"
    assert after == "Console"  # the RA navigation inside the page, not the header
