"""An API token made in a real browser: named, shown once, copied with the button, used.

Debian's chromium driven by Playwright against the live server, under the portal's
Content-Security-Policy (copy.js is a file, not an inline script).
"""

from __future__ import annotations

import pytest
import requests

from django.conf import settings

from tests.browser.test_content_security_policy import session_cookie, violations
from tests.browser.test_enrol_in_browser import CHROMIUM, chromium_page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"
    ),
]


def test_a_token_is_created_copied_with_the_button_and_works(live_server, employee):
    cookie = {"name": settings.SESSION_COOKIE_NAME, "value": session_cookie(employee)}
    with chromium_page() as page:
        page.context.add_cookies([{**cookie, "url": live_server.url}])
        page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        console = []
        page.on("console", lambda message: console.append(message))
        page.goto(f"{live_server.url}/account/tokens/")
        page.fill("#id_label", "made in chromium")
        page.select_option("#id_lifetime_days", "7")
        page.click("button:has-text('Create token')")
        page.wait_for_selector("#new-token")

        shown = page.input_value("#new-token")
        page.click("button:has-text('Copy')")
        page.wait_for_selector("text=Copied.")
        copied = page.evaluate("() => navigator.clipboard.readText()")
        page.goto(f"{live_server.url}/account/tokens/")
        listed = page.inner_text("table.tokens")

    assert copied == shown
    assert "made in chromium" in listed
    assert shown[:15] in listed
    assert shown not in listed
    assert not violations(console)
    answer = requests.get(
        f"{live_server.url}/api/v1/certificates/",
        headers={"Authorization": f"Token {shown}"},
        timeout=10,
    )
    assert answer.status_code == 200
