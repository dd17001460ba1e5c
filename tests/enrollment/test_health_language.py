"""The health checks' texts: in the officer's language on the RA console, in English in
/health/'s JSON (for monitoring), whatever the request or PKIPORTAL_LANGUAGE asks.

The German assertions need the compiled catalogue (locale/de/LC_MESSAGES/django.mo).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from django.contrib.auth.models import Group
from django.utils import timezone, translation

from enrollment import leavers, services
from enrollment.models import CertificateTemplate, LeaverRevocationRun
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

APPROVERS_EN = (
    "S/MIME Dual-use: no active RA officer is in its approvers group Payroll approvers, so "
    "only a superuser can approve or reject its requests (1 waiting)."
)
APPROVERS_DE = (
    "S/MIME Dual-use: In der Genehmigungsgruppe Payroll approvers ist kein aktiver "
    "RA-Officer, daher kann nur ein Superuser die Anträge dieser Vorlage genehmigen oder "
    "ablehnen (1 wartet)."
)
STALE_EN = "The hourly revocation of leavers' certificates last finished at"
STALE_DE = "Die stündliche Sperrung der Zertifikate ausgeschiedener Personen wurde zuletzt am"
FAILED_EN = (
    "The last run could not revoke the certificates of 2 account(s) (deactivated, or whose "
    "address changed) and 1 deactivated shared mailbox(es): KeyStoreError: the CA cannot "
    "sign. It tries again every hour."
)
FAILED_DE = (
    "Der letzte Lauf konnte die Zertifikate von 2 Konten (deaktiviert oder mit geänderter "
    "Adresse) und 1 deaktiviertes Gruppenpostfach nicht sperren: KeyStoreError: the CA "
    "cannot sign. Er versucht es stündlich erneut."
)


@pytest.fixture
def nobody(hierarchy, approval, employee) -> CertificateTemplate:
    """S/MIME Dual-use needing approval by a group with no officer in it, one request
    waiting: only a superuser can decide it."""
    group = Group.objects.create(name="Payroll approvers")
    group.user_set.add(UserFactory(username="pat"))
    chosen = approval("smime-dual-use")
    chosen.approver_group = group
    chosen.save()
    services.request_submit(
        requester=employee, template=chosen, key_algorithm=KeyAlgorithm.EC_P256, channel="web"
    )
    return chosen


@pytest.fixture
def overdue(settings) -> LeaverRevocationRun:
    """Leavers' revocation is on, its last run is hours old and could not revoke some."""
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 72
    return LeaverRevocationRun.objects.create(
        pk=1,
        ran_at=timezone.now() - leavers.STALE_AFTER - timedelta(hours=1),
        source=LeaverRevocationRun.Source.SCHEDULE,
        due=3,
        cap=50,
        failed_accounts=2,
        failed_mailboxes=1,
        error="KeyStoreError: the CA cannot sign",
    )


def test_the_ra_console_words_the_checks_details_in_the_officers_language(nobody, overdue, officer):
    page = client_for(officer).get("/ra/", HTTP_ACCEPT_LANGUAGE="de")

    text = page.content.decode()
    assert page["Content-Language"] == "de"
    assert APPROVERS_DE in text
    assert STALE_DE in text
    assert FAILED_DE in text
    for english in (APPROVERS_EN, STALE_EN, "It tries again every hour."):
        assert english not in text


def test_the_leavers_page_words_them_too(overdue, officer):
    text = client_for(officer).get("/ra/leavers/", HTTP_ACCEPT_LANGUAGE="de").content.decode()

    assert STALE_DE in text
    assert FAILED_DE in text
    assert STALE_EN not in text


def test_in_english_the_console_reads_as_it_did(nobody, overdue, officer):
    text = client_for(officer).get("/ra/", HTTP_ACCEPT_LANGUAGE="en").content.decode()

    assert APPROVERS_EN in text
    assert FAILED_EN in text


def test_health_answers_in_english_whatever_the_request_or_portal_language(
    nobody, overdue, officer, settings
):
    settings.LANGUAGE_CODE = "de"  # PKIPORTAL_LANGUAGE=de

    body = client_for(officer).get("/health/", HTTP_ACCEPT_LANGUAGE="de").json()

    checks = body["checks"]
    (approvers,) = checks["approvers"]["problems"]
    assert approvers.startswith(APPROVERS_EN)
    stale, failed = checks["leavers"]["problems"]
    assert stale.startswith(STALE_EN)
    assert failed == FAILED_EN
    assert "Sperr" not in str(body)


def test_a_check_read_outside_a_request_is_worded_where_it_is_read(nobody, overdue):
    with translation.override("de"):
        check = leavers.leaver_check()
    # Built in German surroundings, read in English: the text follows its reader.
    with translation.override("en"):
        assert str(check["problems"][1]) == FAILED_EN
    with translation.override("de"):
        assert str(check["problems"][1]) == FAILED_DE


def test_what_goes_to_logs_and_commands_is_english_text(settings):
    settings.LANGUAGE_CODE = "de"
    from enrollment import ldap_sync

    with translation.override("de"):
        said = ldap_sync.held_back_message(3, 2)

    assert type(said) is str  # not a lazy proxy: a log line or a join takes it as it is
    assert said.startswith("3 accounts are gone from the directory or disabled there")
