"""The self-revoke form in a real browser: the "since when" date is for a key compromise.

Without JavaScript the field is always there and the server refuses a date given with
another reason (tests/enrollment/test_views_certificates.py); here the page's script
shows it only for key compromise and sends nothing from it otherwise.
"""

from __future__ import annotations

import pytest

from django.conf import settings
from django.utils import timezone

from enrollment import services
from enrollment.models import Certificate
from enrollment.x509.keys import KeyAlgorithm
from tests.browser.test_content_security_policy import session_cookie
from tests.browser.test_enrol_in_browser import CHROMIUM, chromium_page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"
    ),
]

DATE = "#id_invalidity_date"


def test_the_date_shows_only_for_key_compromise_and_is_not_sent_otherwise(
    live_server, hierarchy, template, employee
):
    certificate, _bundle = services.certificate_issue_with_server_key(
        template=template("smime-signing"),
        owner=employee,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="Revoke-Browser-Lantern-55",
    )
    since = timezone.localtime(certificate.not_before).strftime("%Y-%m-%dT%H:%M")
    cookie = {"name": settings.SESSION_COOKIE_NAME, "value": session_cookie(employee)}

    with chromium_page() as page:
        page.context.add_cookies([{**cookie, "url": live_server.url}])
        page.goto(f"{live_server.url}/certificates/{certificate.pk}/")
        page.click("#revoke summary")
        hidden_at_first = not page.is_visible(DATE)

        page.check("input[name=reason][value=keyCompromise]")
        shown_for_compromise = page.is_visible(DATE)
        page.fill(DATE, since)

        page.check("input[name=reason][value=superseded]")
        hidden_again = not page.is_visible(DATE) and page.is_disabled(DATE)
        page.check("input[name=confirm]")
        page.click("button:has-text('Revoke this certificate')")
        page.wait_for_url(f"{live_server.url}/certificates/{certificate.pk}/")
        said = page.inner_text("main")

    assert hidden_at_first
    assert shown_for_compromise
    assert hidden_again
    assert "The certificate is revoked." in said
    revoked = Certificate.objects.get(pk=certificate.pk)
    # The date typed before switching reason went nowhere.
    assert (revoked.revocation_reason, revoked.invalidity_date) == ("superseded", None)
