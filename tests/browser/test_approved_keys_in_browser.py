"""The attestation policy in a real browser: Chromium's virtual authenticator is of no
model the organisation approved (its attestation, whatever Chromium makes it, does not
chain to the configured root), so under the policy an officer's new passkey is refused
with a message naming why, and a passkey added before the policy signs in to the account
page only, which says what to do."""

from __future__ import annotations

import time

import pytest

from accounts import mfa
from accounts.models import WebAuthnDevice
from enrollment.models import AuditEvent
from tests.browser.test_content_security_policy import violations
from tests.browser.test_enrol_in_browser import CHROMIUM, chromium_page
from tests.browser.test_passkey_in_browser import sign_in_with_password, virtual_authenticator
from tests.second_factor import authenticator, code
from tests.webauthn_authenticator import AttestationCA

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"
    ),
]


def test_an_officer_s_passkey_of_no_approved_model_is_refused_and_an_old_one_opens_only_the_account(
    live_server, officer, settings
):
    settings.PKIPORTAL_WEBAUTHN_RP_ID = "localhost"
    settings.PKIPORTAL_WEBAUTHN_ORIGINS = [live_server.url]
    _device, seed = authenticator(officer)
    backup_codes = mfa._replace_backup_codes(officer)
    url = live_server.url

    with chromium_page() as page:
        console = []
        page.on("console", lambda message: console.append(message))
        virtual_authenticator(page)

        # Before the policy: a passkey added as any key is.
        sign_in_with_password(page, url, officer.username)
        page.fill("#id_code", code(seed))
        page.click("button:has-text('Continue')")
        page.wait_for_url(f"{url}/ra/requests/")
        page.goto(f"{url}/account/")
        page.fill("#passkey-name", "Laptop passkey")
        page.fill("#passkey-current-code", code(seed, at=time.time() + 30))
        page.click("button:has-text('Add a security key')")
        page.wait_for_selector("text=The security key “Laptop passkey” is added.")

        # The organisation approves one vendor's keys, for roles: the passkey from before
        # signs in to the account page only, which says why.
        settings.PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS = [AttestationCA().pem]
        settings.PKIPORTAL_WEBAUTHN_ATTESTATION_FOR = "roles"
        page.click("button:has-text('Sign out')")
        sign_in_with_password(page, url, officer.username)
        page.click("#use-security-key")
        page.wait_for_url(f"{url}/account/")
        notice = page.inner_text("#approved-key-needed")
        navigation = page.inner_text("header nav")
        page.goto(f"{url}/ra/requests/")
        sent_back = page.url

        # There, a passkey of no approved model is refused, saying why.
        page.fill("#passkey-name", "Second passkey")
        page.fill("#passkey-current-code", backup_codes[0])
        page.click("button:has-text('Add a security key')")
        refused = page.wait_for_selector("[data-passkey-status] >> text=organisation").inner_text()

    assert "This security key" in refused
    assert "Your organisation requires" in notice
    assert "RA console" not in navigation
    assert sent_back == f"{url}/account/"
    assert list(WebAuthnDevice.objects.filter(user=officer).values_list("name", "attested")) == [
        ("Laptop passkey", False)
    ]
    reasons = [
        event.detail.get("reason", "")
        for event in AuditEvent.objects.filter(action="mfa.verify", outcome="failure")
    ]
    assert len(reasons) == 1
    assert reasons[0].startswith("attestation: ")
    assert not violations(console)
