"""A security key in a real browser: Chromium's own WebAuthn (a CDP virtual authenticator,
CTAP2, platform transport, user verification) against py_webauthn on the server.

An RA officer signs in with password and app code, adds a passkey on /account/ (with a
current code, as the rules for changing a second factor ask), signs out, and signs in
again with password and the passkey alone, reaching the RA console. All of it under the
portal's Content-Security-Policy: the script is a static file.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import urlencode

import pytest

from accounts import mfa
from accounts.models import BackupCodeDevice, WebAuthnDevice
from enrollment.models import AuditEvent
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


def sign_in_with_password(
    page, url: str, username: str, *, next_url: str = "/ra/requests/", second_step: bool = True
) -> None:
    """The password step, on to the second step's page (or, with none, to ``next_url``)."""
    page.goto(f"{url}/accounts/login/?{urlencode({'next': next_url})}")
    page.fill("#id_username", username)
    page.fill("#id_password", SIGN_IN_PASSWORD)
    page.click("button:has-text('Sign in')")
    lands = f"/account/two-factor/verify/?{urlencode({'next': next_url})}"
    page.wait_for_url(f"{url}{lands if second_step else next_url}")


def virtual_authenticator(page) -> tuple[Any, dict[str, Any]]:
    """Chromium's CDP virtual authenticator (a platform passkey) for the page."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    virtual = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return cdp, virtual


def test_an_officer_adds_a_passkey_and_signs_in_with_it(live_server, officer, settings):
    settings.PKIPORTAL_WEBAUTHN_RP_ID = "localhost"
    settings.PKIPORTAL_WEBAUTHN_ORIGINS = [live_server.url]
    assert live_server.url.startswith("http://localhost:")  # a secure context for WebAuthn
    _device, seed = authenticator(officer)
    mfa._replace_backup_codes(officer)  # as the app's set-up left them: the key makes none
    url = live_server.url

    with chromium_page() as page:
        console = []
        page.on("console", lambda message: console.append(message))
        cdp, virtual = virtual_authenticator(page)

        # First sign-in: password and a code from the app.
        sign_in_with_password(page, url, officer.username)
        page.fill("#id_code", code(seed))
        page.click("button:has-text('Continue')")
        page.wait_for_url(f"{url}/ra/requests/")

        # Add a passkey, proving the present second factor with the app's next code.
        page.goto(f"{url}/account/")
        page.fill("#passkey-name", "Laptop passkey")
        page.fill("#passkey-current-code", code(seed, at=time.time() + 30))
        page.click("button:has-text('Add a security key')")
        page.wait_for_selector("text=The security key “Laptop passkey” is added.")
        listed = page.inner_text("#security-keys")
        credentials = cdp.send(
            "WebAuthn.getCredentials", {"authenticatorId": virtual["authenticatorId"]}
        )["credentials"]

        page.click("button:has-text('Sign out')")

        # Second sign-in: password, then the passkey alone.
        sign_in_with_password(page, url, officer.username)
        page.click("#use-security-key")
        page.wait_for_url(f"{url}/ra/requests/")
        heading = page.inner_text("h1")
        after = cdp.send(
            "WebAuthn.getCredentials", {"authenticatorId": virtual["authenticatorId"]}
        )["credentials"]

    assert "Laptop passkey" in listed
    assert len(credentials) == 1
    assert credentials[0]["rpId"] == "localhost"
    assert after[0]["signCount"] > credentials[0]["signCount"]
    assert heading
    device = WebAuthnDevice.objects.get(user=officer)
    assert device.name == "Laptop passkey"
    assert device.sign_count == after[0]["signCount"]
    assert device.last_used_at is not None
    actions = list(
        AuditEvent.objects.filter(action__startswith="mfa.").values_list("action", "outcome")
    )
    assert ("mfa.device_add", "success") in actions
    assert not any(outcome == "failure" for _action, outcome in actions)
    assert not violations(console)


def test_a_first_passkey_shows_its_backup_codes_once_and_they_sign_in(
    live_server, employee, settings
):
    """An employee with no second factor adds a passkey on /account/: the page shows the
    ten backup codes made with it (from the answer, never stored), and one of them later
    signs in in place of the passkey."""
    settings.PKIPORTAL_WEBAUTHN_RP_ID = "localhost"
    settings.PKIPORTAL_WEBAUTHN_ORIGINS = [live_server.url]
    url = live_server.url

    with chromium_page() as page:
        console = []
        page.on("console", lambda message: console.append(message))
        virtual_authenticator(page)
        sign_in_with_password(page, url, employee.username, next_url="/account/", second_step=False)
        page.fill("#passkey-name", "Laptop passkey")
        page.click("button:has-text('Add a security key')")
        page.wait_for_selector("[data-passkey-codes]:not([hidden])")
        shown = page.inner_text("[data-passkey-codes]")
        page.click("a:has-text('I have kept them: continue')")
        page.wait_for_selector("text=The security key “Laptop passkey” is added.")
        account = page.content()
        page.click("button:has-text('Sign out')")

        # Without the passkey at hand: a backup code instead.
        codes = re.findall(r"[a-z2-9]{4}(?:-[a-z2-9]{4}){3}", shown)
        sign_in_with_password(page, url, employee.username, next_url="/certificates/")
        page.fill("#id_code", codes[0])
        page.click("button:has-text('Continue')")
        page.wait_for_url(f"{url}/certificates/")

    assert "shown only this once" in shown
    assert len(codes) == mfa.BACKUP_CODES
    assert not any(one in account for one in codes)
    assert len(BackupCodeDevice.objects.get(user=employee).digests) == mfa.BACKUP_CODES - 1
    assert not violations(console)


def test_codes_made_on_a_page_without_their_place_stay_in_the_status_line(
    live_server, employee, settings
):
    """A page that lacks [data-passkey-codes]: the script must not navigate away from the
    only copy of the codes. It shows them in the form's status line, with a link on."""
    settings.PKIPORTAL_WEBAUTHN_RP_ID = "localhost"
    settings.PKIPORTAL_WEBAUTHN_ORIGINS = [live_server.url]
    url = live_server.url

    with chromium_page() as page:
        virtual_authenticator(page)
        sign_in_with_password(page, url, employee.username, next_url="/account/", second_step=False)
        page.evaluate("document.querySelector('[data-passkey-codes]').remove()")
        page.fill("#passkey-name", "Laptop passkey")
        page.click("button:has-text('Add a security key')")
        status = page.wait_for_selector("[data-passkey-status] >> text=shown only this once")
        shown = status.inner_text()
        time.sleep(0.5)  # a navigation away would have started by now
        still_here = page.url

    codes = re.findall(r"[a-z2-9]{4}(?:-[a-z2-9]{4}){3}", shown)
    assert len(codes) == mfa.BACKUP_CODES
    assert "I have kept them: continue" in shown
    assert still_here == f"{url}/account/"
    digests = BackupCodeDevice.objects.get(user=employee).digests
    assert all(mfa.backup_code_match(one, digests) for one in codes)
