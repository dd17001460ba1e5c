"""End to end in a real browser: sign in, enrol with a portal key, download the .p12.

Debian's chromium driven by Playwright against pytest-django's live server; openssl then
opens the downloaded file. Skipped (with the reason) where /usr/bin/chromium is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from enrollment import services
from enrollment.models import Certificate, CertificateRequest
from enrollment.x509.keys import KeyAlgorithm

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SIGN_IN_PASSWORD = "correct horse battery staple"  # tests/factories.py
P12_PASSWORD = "Browser-Download-Lantern-31"

pytestmark = [
    pytest.mark.browser,
    # live_server answers from another thread, so rows must be committed; serialized
    # rollback restores the seeded templates for the tests that run after this one.
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"
    ),
]


@contextmanager
def chromium_page() -> Iterator[Page]:
    """A fresh headless chromium page; closed, with its event loop, when the block ends.

    Database checks belong after the block: while Playwright's loop runs in this thread,
    Django would open (and leave open) a second connection for them.
    """
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(30_000)
        try:
            yield page
        finally:
            context.close()
            browser.close()


def test_an_employee_signs_in_enrols_and_downloads_a_working_pkcs12(
    live_server, hierarchy, employee, openssl, tmp_path
):
    with chromium_page() as page:
        page.goto(f"{live_server.url}/accounts/login/?next=/enroll/")
        page.fill("#id_username", employee.username)
        page.fill("#id_password", SIGN_IN_PASSWORD)
        page.click("button:has-text('Sign in')")
        page.wait_for_url(f"{live_server.url}/enroll/")

        page.click("text=Get S/MIME Signing")
        page.wait_for_url(f"{live_server.url}/enroll/smime-signing/")
        page.check("input[name=key_algorithm][value=ec-p256]")
        page.fill("#id_pkcs12_password", P12_PASSWORD)
        page.fill("#id_pkcs12_password_confirm", P12_PASSWORD)
        with page.expect_download() as download_info:
            page.click("button:has-text('Generate my key and download the .p12')")
        download = download_info.value
        saved = tmp_path / download.suggested_filename
        download.save_as(saved)

        # The page's script noticed the download: it says so and stops a second submission.
        page.wait_for_selector("[data-done]", state="visible")
        assert page.is_disabled("button:has-text('Generate my key and download the .p12')")
        assert page.input_value("#id_pkcs12_password") == ""

    serial = Certificate.objects.get(owner=employee).serial
    assert download.suggested_filename == f"alice-andersson-{serial[:12]}.p12"
    info = openssl.run("pkcs12", "-info", "-noout", "-in", saved, f"-passin=pass:{P12_PASSWORD}")
    assert b"AES-256-CBC" in info.stderr
    certificate = openssl.run(
        "pkcs12", "-in", saved, f"-passin=pass:{P12_PASSWORD}", "-clcerts", "-nokeys"
    ).stdout
    assert b"Alice Andersson" in certificate
    assert Certificate.objects.filter(owner=employee).count() == 1


def test_after_downloading_an_approved_request_the_page_no_longer_offers_it(
    live_server, hierarchy, approval, employee, officer
):
    """The request page said "ready to download" and offered withdrawal until reloaded."""
    request = services.request_submit(
        requester=employee,
        template=approval("smime-dual-use"),
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    services.request_approve(request=request, officer=officer)

    with chromium_page() as page:
        page.goto(f"{live_server.url}/accounts/login/?next=/enroll/requests/{request.pk}/")
        page.fill("#id_username", employee.username)
        page.fill("#id_password", SIGN_IN_PASSWORD)
        page.click("button:has-text('Sign in')")
        page.wait_for_url(f"{live_server.url}/enroll/requests/{request.pk}/")
        assert page.inner_text(".badge") == "Approved: ready to download"
        assert page.is_visible("#withdraw")

        page.fill("#id_pkcs12_password", P12_PASSWORD)
        page.fill("#id_pkcs12_password_confirm", P12_PASSWORD)
        with page.expect_download():
            page.click("button:has-text('Generate my key and download the .p12')")
        page.wait_for_selector("[data-done]", state="visible")

        badge = page.inner_text(".badge")
        withdraw_visible = page.is_visible("#withdraw")

    assert badge == "Issued"
    assert not withdraw_visible
    request.refresh_from_db()
    assert request.state == CertificateRequest.State.ISSUED


@pytest.fixture
def kra(quick_kra):
    return quick_kra


def test_after_downloading_a_recovered_key_the_page_says_what_next(
    live_server, performed, employee
):
    """The recovery page kept "waiting for download" and an active button until reloaded."""
    found = performed.recovery
    url = f"{live_server.url}/ra/recovery/{found.pk}/"

    with chromium_page() as page:
        page.goto(f"{live_server.url}/accounts/login/?next=/ra/recovery/{found.pk}/")
        page.fill("#id_username", employee.username)
        page.fill("#id_password", SIGN_IN_PASSWORD)
        page.click("button:has-text('Sign in')")
        page.wait_for_url(url)
        assert page.inner_text("h1 .badge") == "Recovered: waiting for download"
        assert not page.is_visible("[data-done]")

        with page.expect_download() as download_info:
            page.click("button:has-text('Download the .p12 file')")
        page.wait_for_selector("[data-done]", state="visible")

        filename = download_info.value.suggested_filename
        badge = page.inner_text("h1 .badge")
        badge_class = page.get_attribute("h1 .badge", "class")
        download_row = page.inner_text("dd:has([data-show-when-downloaded])")
        button_visible = page.is_visible("button:has-text('Download the .p12 file')")
        help_visible = page.is_visible("[data-done] a[href='/help/mail-clients/']")
        revoke_visible = page.is_visible(
            f"[data-done] a[href='/certificates/{found.certificate_id}/#revoke']"
        )

    assert filename.endswith("-recovered.p12")
    assert badge == "Downloaded"
    assert badge_class == "badge recovery-downloaded"
    assert download_row == "downloaded"
    assert not button_visible
    assert help_visible
    assert revoke_visible
    found.refresh_from_db()
    assert found.state == "downloaded"
