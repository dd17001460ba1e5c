"""The directory's pages as a colleague looking for whom to encrypt to sees them, in
Debian's chromium at a desktop's width and a phone's."""

from __future__ import annotations

import pytest

from django.conf import settings

from tests.browser.test_content_security_policy import session_cookie
from tests.browser.test_enrol_in_browser import CHROMIUM, chromium_page
from tests.browser.test_phone_layout import PHONE
from tests.enrollment.tools import issue

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"
    ),
]

DESKTOP = {"width": 1280, "height": 900}

# Each button's box, in page order.
BUTTONS = """() => Array.from(document.querySelectorAll(".encrypt-downloads a.button"))
    .map(button => { const box = button.getBoundingClientRect();
        return {left: box.left, right: box.right, top: box.top, bottom: box.bottom}; })"""


def apart(one: dict[str, float], other: dict[str, float], gap: float = 4) -> bool:
    """Whether two boxes are at least ``gap`` pixels apart, side by side or one above."""
    return (
        other["left"] - one["right"] >= gap
        or one["left"] - other["right"] >= gap
        or other["top"] - one["bottom"] >= gap
        or one["top"] - other["bottom"] >= gap
    )


def test_a_signing_only_pages_two_buttons_to_encrypt_to_stand_apart(
    live_server, hierarchy, template, employee, colleague, ec_p256_key
):
    """The page of a signing-only certificate offers the holder's certificate to encrypt
    to and its contact card as two buttons. Wrapped after the sentence they ran on from,
    they touched: corner to corner at a desktop's width, edge to edge on a phone."""
    signing = issue(employee, template("smime-signing"), ec_p256_key)
    issue(employee, template("smime-dual-use"), ec_p256_key)
    cookie = {"name": settings.SESSION_COOKIE_NAME, "value": session_cookie(colleague)}
    boxes: dict[int, list[dict[str, float]]] = {}
    with chromium_page() as page:
        page.context.add_cookies([{**cookie, "url": live_server.url}])
        for size in (DESKTOP, PHONE):
            page.set_viewport_size(size)
            page.goto(f"{live_server.url}/directory/{signing.fingerprint_sha256}/")
            page.wait_for_load_state("networkidle")
            boxes[size["width"]] = page.evaluate(BUTTONS)

    for width, (certificate, card) in boxes.items():
        assert apart(certificate, card), (width, certificate, card)
        assert max(certificate["right"], card["right"]) <= width, (width, certificate, card)
