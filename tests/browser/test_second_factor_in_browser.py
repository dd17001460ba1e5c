"""An RA officer's first sign-in in a real browser: password, then an authenticator app
set up from the page (the key read off it, the code computed as a phone would), the backup
codes shown once, and on to the RA console. Under the portal's Content-Security-Policy:
the QR code is inline SVG, no script, no inline style."""

from __future__ import annotations

import base64

import pytest

from django.utils import timezone

from accounts.models import TotpDevice
from tests.browser.test_content_security_policy import violations
from tests.browser.test_enrol_in_browser import CHROMIUM, SIGN_IN_PASSWORD, chromium_page
from tests.second_factor import authenticator, code

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"
    ),
]


def test_an_officer_sets_up_an_authenticator_app_and_reaches_the_ra_console(live_server, officer):
    with chromium_page() as page:
        console = []
        page.on("console", lambda message: console.append(message))
        page.goto(f"{live_server.url}/accounts/login/?next=/ra/requests/")
        page.fill("#id_username", officer.username)
        page.fill("#id_password", SIGN_IN_PASSWORD)
        page.click("button:has-text('Sign in')")
        page.wait_for_url(f"{live_server.url}/account/two-factor/setup/?next=%2Fra%2Frequests%2F")
        qr = page.locator("figure.qr svg").bounding_box()
        key = page.inner_text("#totp-secret").replace(" ", "")
        # What the phone shows for that key now.
        page.fill("#id_code", code(base64.b32decode(key)))
        page.click("button:has-text('Confirm')")
        page.wait_for_selector("ol.backup-codes")
        backup_codes = page.locator("ol.backup-codes li").count()
        page.click("text=I have kept them: continue")
        page.wait_for_url(f"{live_server.url}/ra/requests/")
        heading = page.inner_text("h1")

    assert qr is not None
    assert qr["width"] >= 150  # large enough to scan
    assert backup_codes == 10
    assert heading
    assert not violations(console)


def test_a_code_sent_while_waiting_gets_the_form_back_with_its_button_held(live_server, officer):
    """After wrong codes the next is checked only after a pause. A code sent in it (here
    by a page without the script, or a quick hand) gets the form again, not an error
    page: it says how long, and static/js/wait.js holds the button back as long, under
    the Content-Security-Policy. Then the code signs in."""
    device, seed = authenticator(officer)
    # Four wrong codes just now: eight seconds' wait, set before the browser starts.
    TotpDevice.objects.filter(pk=device.pk).update(
        throttling_failure_count=4, throttling_failure_timestamp=timezone.now()
    )
    with chromium_page() as page:
        console = []
        page.on("console", lambda message: console.append(message))
        page.goto(f"{live_server.url}/accounts/login/?next=/ra/requests/")
        page.fill("#id_username", officer.username)
        page.fill("#id_password", SIGN_IN_PASSWORD)
        page.click("button:has-text('Sign in')")
        page.wait_for_url("**/account/two-factor/verify/**")
        page.fill("#id_code", code(seed))
        with page.expect_navigation() as sent:
            page.click("button:has-text('Continue')")
        status = sent.value.status if sent.value else None
        message = page.inner_text(".errorlist")
        held = page.get_attribute("button[data-wait-seconds]", "aria-disabled")
        counting = page.inner_text("button[data-wait-seconds]")
        page.wait_for_selector("button[data-wait-seconds]:not([aria-disabled])", timeout=15_000)
        label = page.inner_text("button[data-wait-seconds]")
        page.fill("#id_code", code(seed))
        page.click("button:has-text('Continue')")
        page.wait_for_url(f"{live_server.url}/ra/requests/")

    assert status == 200
    assert message.startswith("Wait ")
    assert "This code was not checked" in message
    assert held == "true"
    assert "(wait " in counting
    assert label == "Continue"
    assert not violations(console)


def test_enter_pressed_while_the_button_waits_is_answered_and_sends_the_code_after(
    live_server, officer
):
    """Enter (or a click) during the pause used to be dropped without a sign: the button
    was disabled. Now the form's status line says how much longer, and the code the person
    asked to send is sent when the pause ends, with nothing more to press."""
    device, seed = authenticator(officer)
    # Four wrong codes just now: eight seconds' wait, set before the browser starts.
    TotpDevice.objects.filter(pk=device.pk).update(
        throttling_failure_count=4, throttling_failure_timestamp=timezone.now()
    )
    with chromium_page() as page:
        console = []
        page.on("console", lambda message: console.append(message))
        page.goto(f"{live_server.url}/accounts/login/?next=/ra/requests/")
        page.fill("#id_username", officer.username)
        page.fill("#id_password", SIGN_IN_PASSWORD)
        page.click("button:has-text('Sign in')")
        page.wait_for_url("**/account/two-factor/verify/**")
        page.fill("#id_code", code(seed))
        with page.expect_navigation():
            page.press("#id_code", "Enter")  # during the wait: the form comes back, waiting
        page.wait_for_selector("button[data-wait-seconds]:has-text('(wait ')")
        silent = page.inner_text("[data-wait-notice]")
        page.press("#id_code", "Enter")
        said = page.inner_text("[data-wait-notice]")
        role = page.get_attribute("[data-wait-notice]", "role")
        still_here = page.url
        page.click("button[data-wait-seconds]", force=True)  # a click is answered too
        clicked = page.inner_text("[data-wait-notice]")
        page.wait_for_url(f"{live_server.url}/ra/requests/", timeout=15_000)

    assert silent == ""
    assert said.startswith("Wait ")
    assert said.endswith(" more seconds: your code is sent then.")
    assert clicked.startswith("Wait ")
    assert role == "status"  # announced by screen readers, not only shown
    assert "/account/two-factor/verify/" in still_here
    assert not violations(console)


def test_a_code_changed_after_enter_in_the_wait_is_not_sent_on_its_own(live_server, officer):
    """A code edited after the try may be half typed when the pause ends: only the code
    the person asked to send is sent by itself; this one waits for Enter."""
    device, seed = authenticator(officer)
    # Four wrong codes just now: eight seconds' wait (the sign-in before takes a few).
    TotpDevice.objects.filter(pk=device.pk).update(
        throttling_failure_count=4, throttling_failure_timestamp=timezone.now()
    )
    with chromium_page() as page:
        page.goto(f"{live_server.url}/accounts/login/?next=/ra/requests/")
        page.fill("#id_username", officer.username)
        page.fill("#id_password", SIGN_IN_PASSWORD)
        page.click("button:has-text('Sign in')")
        page.wait_for_url("**/account/two-factor/verify/**")
        page.fill("#id_code", code(seed))
        with page.expect_navigation():
            page.press("#id_code", "Enter")
        page.wait_for_selector("button[data-wait-seconds]:has-text('(wait ')")
        page.press("#id_code", "Enter")
        said = page.inner_text("[data-wait-notice]")
        page.press("#id_code", "End")
        page.press("#id_code", "Backspace")
        cleared = page.inner_text("[data-wait-notice]")
        page.wait_for_selector("button[data-wait-seconds]:not([aria-disabled])", timeout=15_000)
        page.wait_for_timeout(1_000)  # time for a send that should not happen
        after = page.url
        page.fill("#id_code", code(seed))
        page.press("#id_code", "Enter")
        page.wait_for_url(f"{live_server.url}/ra/requests/")

    assert said.startswith("Wait ")
    assert cleared == ""
    assert "/account/two-factor/verify/" in after


def test_the_wait_is_counted_down_in_the_persons_language(live_server, officer):
    """static/js/wait.js takes its words from the page: an officer who chose German sees
    the countdown and the status line in German, under the same policy."""
    officer.language = "de"
    officer.save(update_fields=["language"])
    device, seed = authenticator(officer)
    TotpDevice.objects.filter(pk=device.pk).update(
        throttling_failure_count=4, throttling_failure_timestamp=timezone.now()
    )
    with chromium_page() as page:
        console = []
        page.on("console", lambda message: console.append(message))
        page.goto(f"{live_server.url}/accounts/login/?next=/ra/requests/")
        page.fill("#id_username", officer.username)
        page.fill("#id_password", SIGN_IN_PASSWORD)
        page.click("button:has-text('Sign in')")
        page.wait_for_url("**/account/two-factor/verify/**")
        page.fill("#id_code", code(seed))
        with page.expect_navigation():
            page.click("button:has-text('Weiter')")
        counting = page.inner_text("button[data-wait-seconds]")
        page.fill("#id_code", code(seed))
        page.press("#id_code", "Enter")  # during the wait: said, and sent when it ends
        said = page.inner_text("[data-wait-notice]")
        page.wait_for_url(f"{live_server.url}/ra/requests/", timeout=15_000)

    assert counting.startswith("Weiter (noch "), counting
    assert said.startswith("Noch "), said
    assert "Ihr Code wird dann gesendet" in said, said
    assert not violations(console)
