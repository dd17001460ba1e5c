"""Shared mailboxes: what officers see before they decide, who is told, and the gaps a
review found (an account taking a mailbox's address, an officer making themselves a
delegate, mail to delegates, expiry, renewals, roll-outs, the leavers' run, dual-use
templates, the recovery and revoke pages, the API's PATCH and ambiguous user names)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from django.contrib.auth.models import Group
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from directory import selectors as dsel
from enrollment import expiry, leavers, mailboxes, recovery, rollouts, services
from enrollment.exceptions import InvalidState, NotPermitted, PolicyViolation
from enrollment.models import (
    Certificate,
    CertificateRequest,
    ExpiryNotice,
    KeyRecoveryRequest,
    LeaverRevocationRun,
    SharedMailbox,
)
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import Agent, client_for
from tests.enrollment.api_tools import API, ENROLLMENTS, token_client
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
PASSWORD = "Mailbox-Shared-Lantern-27"
MAILBOXES = f"{API}/mailboxes/"


@pytest.fixture
def kra(quick_kra: Agent) -> Agent:
    return quick_kra


@pytest.fixture
def finance(officer, employee) -> SharedMailbox:
    return mailboxes.mailbox_create(
        email="finance@example.com", display_name="Finance", delegates=[employee], actor=officer
    )


@pytest.fixture
def officer2(db):
    user = UserFactory(username="oscar", first_name="Oscar", last_name="Second")
    user.groups.add(Group.objects.get_or_create(name="RA officers")[0])
    return user


def enrol(mailbox, who, template, *, slug="smime-encryption", renewal_of=None):
    request = services.request_submit(
        requester=who,
        template=template(slug),
        key_algorithm=KeyAlgorithm.EC_P256,
        mailbox=mailbox,
        renewal_of=renewal_of,
        channel="web",
    )
    if request.awaits_download:
        return services.request_collect(request=request, actor=who, pkcs12_password=PASSWORD)
    return request


def mailed_to(address: str) -> list[str]:
    return [m.subject for m in mail.outbox if address in m.to]


# --- 1. what the officer approves ------------------------------------------------------


def test_the_ra_queue_says_the_certificate_names_the_mailbox(
    hierarchy, kra, template, approval, finance, employee, officer2
):
    approval("smime-encryption")
    request = enrol(finance, employee, template)
    assert request.state == CertificateRequest.State.PENDING

    page = client_for(officer2).get(reverse("enrollment:ra-requests")).content.decode()
    assert "Gets: shared mailbox Finance &lt;finance@example.com&gt;, organization-validated" in (
        page
    )
    assert f"Gets: Alice Andersson, {employee.email}" not in page
    assert f'action="{reverse("enrollment:ra-decide", args=[request.pk])}"' in page

    detail = client_for(officer2).get(reverse("enrollment:request-detail", args=[request.pk]))
    assert "the shared mailbox Finance &lt;finance@example.com&gt;" in detail.content.decode()

    rows = token_client(officer2).get(f"{API}/requests/pending/").json()
    rows = rows["results"] if isinstance(rows, dict) else rows
    assert [row["mailbox"] for row in rows] == ["finance@example.com"]
    mine = token_client(employee).get(f"{ENROLLMENTS}{request.pk}/").json()
    assert mine["mailbox"] == "finance@example.com"


def test_a_personal_request_has_no_mailbox_in_the_api(hierarchy, template, approval, employee):
    request = services.request_submit(
        requester=employee,
        template=approval("smime-signing"),
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    assert token_client(employee).get(f"{ENROLLMENTS}{request.pk}/").json()["mailbox"] is None


def test_the_out_of_domain_warning_is_about_the_mailbox_address(
    hierarchy, kra, template, approval, finance, employee, officer2, settings
):
    approval("smime-encryption")
    request = enrol(finance, employee, template)
    marker = f'id="address-outside-{request.pk}"'
    # The delegate's own address is outside: nothing to say, the mailbox's is certified.
    employee.email = "alice@elsewhere.test"
    employee.save()
    settings.PKIPORTAL_MAIL_DOMAINS = ("example.com",)
    page = client_for(officer2).get(reverse("enrollment:ra-requests")).content.decode()
    assert marker not in page
    # The mailbox's address is outside: said, although the delegate's is inside.
    settings.PKIPORTAL_MAIL_DOMAINS = ("elsewhere.test",)
    page = client_for(officer2).get(reverse("enrollment:ra-requests")).content.decode()
    assert marker in page
    assert "finance@example.com" in page.split(marker)[1][:400]


def test_an_officer_who_reads_the_mailbox_gets_no_approve_button(
    hierarchy, kra, template, approval, finance, employee, officer, officer2
):
    mailboxes.mailbox_update(
        mailbox=finance, display_name="Finance", delegates=[employee, officer2], actor=officer
    )
    approval("smime-encryption")
    request = enrol(finance, employee, template)
    page = client_for(officer2).get(reverse("enrollment:ra-requests")).content.decode()
    assert f'id="delegate-of-{request.pk}"' in page
    assert f'action="{reverse("enrollment:ra-decide", args=[request.pk])}"' not in page
    page = client_for(officer).get(reverse("enrollment:ra-requests")).content.decode()
    assert f'action="{reverse("enrollment:ra-decide", args=[request.pk])}"' in page


# --- 2. an account that takes a mailbox's address ------------------------------------


def test_no_personal_certificate_for_a_mailbox_address(
    hierarchy, kra, template, finance, colleague
):
    colleague.email = "Finance@example.com"
    colleague.save()
    with pytest.raises(PolicyViolation, match="address of a shared mailbox") as refused:
        services.certificate_issue_with_server_key(
            template=template("smime-encryption"),
            owner=colleague,
            key_algorithm=KeyAlgorithm.EC_P256,
            pkcs12_password=PASSWORD,
        )
    assert refused.value.field == "email"
    assert services.account_address_problem(colleague) is not None
    response = token_client(colleague).post(
        ENROLLMENTS,
        {
            "template": "smime-signing",
            "key_algorithm": "ec-p256",
            "pkcs12_password": PASSWORD,
        },
        format="json",
    )
    assert response.status_code == 400, response.content
    assert "shared mailbox" in str(response.json()["email"])
    assert not Certificate.objects.filter(owner=colleague).exists()


def test_the_directory_hands_out_only_the_mailbox_certificates_for_its_address(
    hierarchy, kra, template, officer, employee, colleague
):
    # Bob had finance@ before the mailbox existed and holds a certificate for it.
    colleague.email = "finance@example.com"
    colleague.save()
    personal, _bundle = services.certificate_issue_with_server_key(
        template=template("smime-encryption"),
        owner=colleague,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password=PASSWORD,
    )
    colleague.email = "bob@example.com"
    colleague.save()
    box = mailboxes.mailbox_create(
        email="finance@example.com", display_name="Finance", delegates=[employee], actor=officer
    )
    shared, _bundle = enrol(box, employee, template)

    found = dsel.certificates_for_email(email="finance@example.com")
    assert [c.pk for c in found] == [shared.pk]
    # A directory sync gives Bob finance@ again: still only the mailbox's certificates.
    colleague.email = "finance@example.com"
    colleague.save()
    assert [c.pk for c in dsel.certificates_for_email(email="finance@example.com")] == [shared.pk]
    mailboxes.mailbox_set_active(mailbox=box, active=False, actor=officer)
    assert [c.pk for c in dsel.certificates_for_email(email="finance@example.com")] == [personal.pk]
    # Not once finance@ is no longer his address, though his certificate is still valid.
    colleague.email = "bob@example.com"
    colleague.save()
    assert dsel.certificates_for_email(email="finance@example.com") == []


# --- 3. an officer who makes themselves a delegate -----------------------------------


def test_an_officer_cannot_make_themselves_a_delegate(db, finance, employee, officer, officer2):
    with pytest.raises(NotPermitted, match="cannot make yourself a delegate"):
        mailboxes.mailbox_update(
            mailbox=finance, display_name="Finance", delegates=[employee, officer], actor=officer
        )
    with pytest.raises(NotPermitted, match="cannot make yourself a delegate"):
        mailboxes.mailbox_create(
            email="hr@example.com", display_name="HR", delegates=[officer], actor=officer
        )
    assert list(finance.delegates.all()) == [employee]
    mailboxes.mailbox_update(
        mailbox=finance, display_name="Finance", delegates=[employee, officer], actor=officer2
    )
    # Already one: the same officer may change the name and remove themselves.
    mailboxes.mailbox_update(
        mailbox=finance, display_name="Finance team", delegates=[employee], actor=officer
    )


def test_the_api_refuses_self_delegation(db, finance, employee, officer):
    response = token_client(officer).patch(
        f"{MAILBOXES}{finance.pk}/", {"delegates": ["alice", "olivia"]}, format="json"
    )
    assert response.status_code == 403, response.content
    assert list(finance.delegates.all()) == [employee]


def test_a_new_mailbox_and_its_delegates_are_told_who_may_hold_its_key(
    db, employee, colleague, officer, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        mailboxes.mailbox_create(
            email="HR@example.com",
            display_name="HR",
            delegates=[employee, colleague],
            actor=officer,
        )
        mailboxes.mailbox_create(email="empty@example.com", display_name="Nobody", actor=officer)

    created = "The shared mailbox hr@example.com was set up in the PKI portal"
    for address in ("hr@example.com", employee.email, colleague.email):
        assert mailed_to(address) == [created]
    body = next(m.body for m in mail.outbox if m.to == ["hr@example.com"])
    assert "Olivia Officer set it up" in body
    assert "Delegates: Alice Andersson, Bob Brown" in body
    assert mailed_to(officer.email) == []
    # No delegates yet: the mailbox itself still learns it exists in the portal.
    assert mailed_to("empty@example.com") == [
        "The shared mailbox empty@example.com was set up in the PKI portal"
    ]
    assert "Delegates: none yet" in next(
        m.body for m in mail.outbox if m.to == ["empty@example.com"]
    )


def test_delegates_and_the_mailbox_are_told_of_new_delegates_and_issuance(
    hierarchy, kra, template, finance, employee, colleague, officer, officer2,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        mailboxes.mailbox_update(
            mailbox=finance, display_name="Finance", delegates=[employee, officer], actor=officer2
        )
    changed = "The delegates of the shared mailbox finance@example.com changed"
    for address in ("finance@example.com", employee.email, officer.email):
        assert mailed_to(address) == [changed]
    assert "Added as delegates: Olivia Officer" in mail.outbox[0].body

    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        certificate, _bundle = enrol(finance, officer, template)
    issued = "A certificate was issued for the shared mailbox finance@example.com"
    for address in ("finance@example.com", employee.email, officer.email):
        assert mailed_to(address) == [issued]
    body = next(m.body for m in mail.outbox if m.to == ["finance@example.com"])
    assert certificate.serial in body
    assert "Olivia Officer collected it" in body
    assert mailed_to(colleague.email) == []


# --- 4. revocation and recovery are told to the delegates ---------------------------


def test_a_revocation_of_a_mailbox_certificate_is_mailed_to_it_and_its_delegates(
    hierarchy, kra, template, finance, employee, officer2, django_capture_on_commit_callbacks
):
    certificate, _bundle = enrol(finance, employee, template)
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(officer2).post(
            reverse("ra:certificate-revoke", args=[certificate.pk]),
            {"reason": "keyCompromise", "q": "finance", "confirm": "on"},
            follow=True,
        )
    page = response.content.decode()
    assert response.status_code == 200, page[-3000:]
    assert "The shared mailbox finance@example.com and its delegates were told" in page
    assert "The holder was told" not in page
    subject = "A certificate of the shared mailbox finance@example.com was revoked"
    assert mailed_to("finance@example.com") == [subject]
    assert mailed_to(employee.email) == [subject]


def test_every_recovery_step_of_a_mailbox_key_is_mailed_to_the_delegates(
    hierarchy, kra, template, finance, employee, colleague, officer, officer2, agent_user,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    from tests.enrollment.ra_fixtures import ACCEPT_NOTE

    certificate, _bundle = enrol(finance, employee, template)
    mailboxes.mailbox_update(
        mailbox=finance, display_name="Finance", delegates=[employee, colleague], actor=officer
    )
    with django_capture_on_commit_callbacks(execute=True):
        asked = recovery.recovery_ask(certificate=certificate, holder=colleague, reason="Need it")
        accepted = recovery.recovery_accept(recovery=asked, officer=officer, note=ACCEPT_NOTE)
        approved = recovery.recovery_approve(recovery=accepted, officer=officer2)
        recovery.recovery_perform(
            recovery=approved,
            agent_user=agent_user,
            agent_pkcs12=kra.pkcs12,
            agent_password=kra.password,
        )
    steps = [s.rsplit(": ", 1)[1] for s in mailed_to("finance@example.com")]
    assert steps == ["asked", "accepted", "approved", "ready"]
    assert [s.rsplit(": ", 1)[1] for s in mailed_to(employee.email)] == steps
    # The delegate who asked gets the ordinary mails to a key's holder, not these too.
    assert not any("shared mailbox" in s for s in mailed_to(colleague.email))


# --- 5. expiry -------------------------------------------------------------------------


def test_delegates_are_told_before_a_mailbox_certificate_expires(
    hierarchy, kra, template, finance, employee, officer, django_capture_on_commit_callbacks
):
    certificate, _bundle = enrol(finance, employee, template)
    with django_capture_on_commit_callbacks(execute=True):
        counts = expiry.expiry_notices_send(now=certificate.not_after - timedelta(days=6))
    assert counts[7] >= 1
    assert ExpiryNotice.objects.filter(certificate=certificate, threshold_days=7).exists()
    subject = "A certificate of the shared mailbox finance@example.com expires in 6 days"
    assert mailed_to("finance@example.com") == [subject]
    assert mailed_to(employee.email) == [subject]
    [summary] = [m for m in mail.outbox if officer.email in m.to]
    assert "shared mailbox Finance <finance@example.com>" in summary.body


# --- 6. a renewal outliving an affiliationChanged revocation --------------------------


def test_a_mailbox_renewal_dies_with_an_affiliation_changed_revocation(
    hierarchy, kra, template, approval, finance, employee, officer, officer2
):
    certificate, _bundle = enrol(finance, employee, template)
    approval("smime-encryption")
    renewal = enrol(finance, employee, template, renewal_of=certificate)
    services.certificate_revoke(certificate=certificate, reason="affiliationChanged", actor=officer)
    with pytest.raises(InvalidState, match="no longer valid"):
        services.request_approve(request=renewal, officer=officer2)
    renewal.refresh_from_db()
    assert renewal.state == CertificateRequest.State.PENDING


# --- 8. roll-outs ----------------------------------------------------------------------


def test_a_delegates_mailbox_request_is_not_their_own_open_request(
    hierarchy, kra, template, approval, finance, employee, officer
):
    approval("smime-encryption")
    enrol(finance, employee, template)
    found = rollouts.rollout_resolve(
        officer=officer, template=template("smime-encryption"), people="alice"
    )
    assert [u.pk for u in found.eligible] == [employee.pk]
    assert found.skipped == []


# --- 9. the leavers' run ---------------------------------------------------------------


@pytest.fixture
def closed(hierarchy, kra, template, finance, employee, officer, settings):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 72
    certificate, _bundle = enrol(finance, employee, template)
    mailboxes.mailbox_set_active(mailbox=finance, active=False, actor=officer)
    return certificate


def test_mailboxes_are_counted_apart_from_accounts(closed):
    outcome = leavers.leavers_revoke(now=timezone.now() + timedelta(hours=73))
    assert (outcome.revoked_accounts, outcome.revoked_mailboxes) == (0, 1)
    assert outcome.revoked_certificates == 1
    run = LeaverRevocationRun.objects.get()
    assert (run.revoked_accounts, run.revoked_mailboxes, run.failed_mailboxes) == (0, 1, 0)


def test_a_failing_mailbox_is_not_counted_as_an_account(closed, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mailboxes, "mailbox_revoke", broken)
    outcome = leavers.leavers_revoke(now=timezone.now() + timedelta(hours=73))
    assert (outcome.failed_accounts, outcome.failed_mailboxes) == (0, 1)
    problems = leavers.leaver_check(now=timezone.now() + timedelta(hours=73))["problems"]
    assert any("1 deactivated shared mailbox(es)" in p for p in problems)


def test_after_the_time_limit_the_run_leaves_the_mailboxes_for_the_next(
    closed, colleague, monkeypatch
):
    colleague.is_active = False
    colleague.save()
    colleague.deactivated_at = timezone.now()
    type(colleague).objects.filter(pk=colleague.pk).update(deactivated_at=timezone.now())
    personal, _bundle = services.certificate_issue_with_server_key(
        template=closed.template,
        owner=UserFactory(username="carol"),
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password=PASSWORD,
    )
    owner = personal.owner
    owner.is_active = False
    owner.save()
    type(owner).objects.filter(pk=owner.pk).update(deactivated_at=timezone.now())

    def limit(*_args, **_kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(leavers, "_revoke_account", limit)
    outcome = leavers.leavers_revoke(now=timezone.now() + timedelta(hours=73))
    closed.refresh_from_db()
    assert closed.status == Certificate.Status.VALID
    assert outcome.revoked_mailboxes == 0
    assert "time limit" in outcome.error


# --- 11. dual-use templates ------------------------------------------------------------


def test_an_archiving_dual_use_template_does_not_issue_for_a_mailbox(
    hierarchy, kra, template, finance, employee
):
    dual = template("smime-dual-use")
    dual.archive_key = True
    dual.allow_server_key = True
    dual.allow_csr = False
    dual.save()
    with pytest.raises(PolicyViolation, match="only an encryption template"):
        enrol(finance, employee, template, slug="smime-dual-use")
    assert not CertificateRequest.objects.filter(mailbox=finance).exists()


# --- 12. the RA pages ------------------------------------------------------------------


def test_the_recovery_page_offers_a_delegate_officer_no_accept_or_approve(
    hierarchy, kra, template, finance, employee, colleague, officer, officer2
):
    from tests.enrollment.ra_fixtures import ACCEPT_NOTE

    certificate, _bundle = enrol(finance, employee, template)
    mailboxes.mailbox_update(
        mailbox=finance, display_name="Finance", delegates=[employee, colleague, officer2],
        actor=officer,
    )  # fmt: skip
    asked = recovery.recovery_ask(certificate=certificate, holder=colleague, reason="Need it")
    url = reverse("ra:recovery-detail", args=[asked.pk])
    accept = reverse("ra:recovery-accept", args=[asked.pk])
    assert accept not in client_for(officer2).get(url).content.decode()
    assert accept in client_for(officer).get(url).content.decode()
    recovery.recovery_accept(recovery=asked, officer=officer, note=ACCEPT_NOTE)
    approve = reverse("ra:recovery-approve", args=[asked.pk])
    assert approve not in client_for(officer2).get(url).content.decode()
    third = UserFactory(username="tessa")
    third.groups.add(Group.objects.get(name="RA officers"))
    assert approve in client_for(third).get(url).content.decode()


def test_a_delegate_who_is_an_officer_cannot_open_the_recovery_of_the_mailbox_key(
    hierarchy, kra, template, finance, employee, officer, officer2
):
    certificate, _bundle = enrol(finance, employee, template)
    mailboxes.mailbox_update(
        mailbox=finance, display_name="Finance", delegates=[employee, officer2], actor=officer
    )

    with pytest.raises(NotPermitted, match="your own key"):
        recovery.recovery_open(
            certificate=certificate,
            officer=officer2,
            reason="Legal hold",
            deliver_to=KeyRecoveryRequest.Recipient.REQUESTER,
        )

    assert not KeyRecoveryRequest.objects.exists()


def test_the_recovery_form_delivers_a_mailbox_key_to_the_officer_by_default(
    hierarchy, kra, template, finance, employee, officer2
):
    certificate, _bundle = enrol(finance, employee, template)
    page = client_for(officer2).get(reverse("ra:recovery-new"), {"certificate": certificate.pk})
    html = page.content.decode()
    checked = html.split('value="requester"')[1].split(">")[0]
    assert "checked" in checked
    assert "checked" not in html.split('value="owner"')[1].split(">")[0]


def test_the_revoke_page_presets_cessation_for_a_deactivated_mailbox(
    hierarchy, kra, template, finance, employee, officer
):
    certificate, _bundle = enrol(finance, employee, template)
    page = client_for(officer).get(reverse("ra:certificates"), {"q": "finance"}).content.decode()
    assert 'value="cessationOfOperation" selected' not in page
    mailboxes.mailbox_set_active(mailbox=finance, active=False, actor=officer)
    page = client_for(officer).get(reverse("ra:certificates"), {"q": "finance"}).content.decode()
    row = page.split(f'id="certificate-{certificate.pk}"')[1]
    assert 'value="cessationOfOperation" selected' in row


# --- 13. the API -----------------------------------------------------------------------


def test_patch_changes_only_what_it_names(db, finance, employee, colleague, officer):
    client = token_client(officer)
    response = client.patch(f"{MAILBOXES}{finance.pk}/", {"display_name": "Money"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["delegates"] == ["alice"]
    response = client.patch(f"{MAILBOXES}{finance.pk}/", {"delegates": ["bob"]}, format="json")
    assert response.status_code == 200, response.content
    finance.refresh_from_db()
    assert finance.display_name == "Money"
    assert list(finance.delegates.all()) == [colleague]


def test_an_ambiguous_user_name_is_refused(db, finance, employee, officer):
    UserFactory(username="Sam", email="sam1@example.com")
    UserFactory(username="sam", email="sam2@example.com")
    response = token_client(officer).patch(
        f"{MAILBOXES}{finance.pk}/", {"delegates": ["SAM"]}, format="json"
    )
    assert response.status_code == 400, response.content
    assert "SAM" in str(response.json()["delegates"])
    assert list(finance.delegates.all()) == [employee]
