"""The RA officers who may decide a request are mailed when it starts to wait for them,
once its transaction commits: one mail per request, one summary for many made at once,
never to its own requester, never anything secret."""

from __future__ import annotations

import pytest

from django.core import mail
from django.db import transaction

from enrollment import mailboxes, rollouts, services
from enrollment.models import CertificateRequest
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import Agent
from tests.enrollment.api_tools import ENROLLMENTS, csr_body, token_client
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

WAITS = "waits for your approval"
QUEUE = "https://portal.example.com/ra/requests/"


@pytest.fixture
def kra(quick_kra: Agent) -> Agent:
    return quick_kra


@pytest.fixture
def needs_approval(approval):
    return approval("smime-signing")


def submit(who, template, **kwargs) -> CertificateRequest:
    kwargs.setdefault("key_algorithm", KeyAlgorithm.EC_P256)
    return services.request_submit(requester=who, template=template, channel="web", **kwargs)


def notices() -> dict[str, list]:
    """The officers' notices by address."""
    found: dict[str, list] = {}
    for message in mail.outbox:
        if "wait for your approval" in message.subject or WAITS in message.subject:
            found.setdefault(message.to[0], []).append(message)
    return found


def test_a_pending_request_mails_each_officer_with_the_queue_and_no_secret(
    hierarchy,
    needs_approval,
    employee,
    officer,
    second_officer,
    admin_user,
    ec_p256_key,
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=True):
        request = submit(
            employee, needs_approval, csr=csr_body(ec_p256_key)["csr"], key_algorithm=None
        )

    found = notices()
    # Superusers are officers too (permissions.ra_officers); the requester is not asked.
    assert sorted(found) == sorted([officer.email, second_officer.email, admin_user.email])
    for (message,) in found.values():
        assert message.subject == f"Certificate request #{request.pk} {WAITS}"
        assert QUEUE in message.body
        assert "http://" not in message.body
        assert "Alice Andersson (alice)" in message.body
        assert needs_approval.name in message.body
        assert "via Web (/enroll/)" in message.body
        assert "their own key (CSR)" in message.body
        assert "BEGIN" not in message.body
        assert csr_body(ec_p256_key)["csr"].splitlines()[1] not in message.body


def test_one_request_s_link_opens_the_queue_at_its_card_and_a_summary_s_at_the_top(
    hierarchy, needs_approval, employee, colleague, officer, django_capture_on_commit_callbacks
):
    """On a phone the queue is a column of cards: the link of a mail about one request
    scrolls to it (the queue's rows are request-<id>); a summary's opens the queue."""
    with django_capture_on_commit_callbacks(execute=True):
        one = submit(employee, needs_approval)
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        submit(colleague, needs_approval)
        submit(employee, needs_approval)

    single, summary = notices()[officer.email]
    assert f"{QUEUE}#request-{one.pk}\n" in single.body
    assert f"{QUEUE}\n" in summary.body
    assert "#request-" not in summary.body


def test_officers_are_not_asked_to_approve_their_own_request(
    hierarchy, needs_approval, officer, second_officer, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        submit(officer, needs_approval)

    assert list(notices()) == [second_officer.email]


def test_an_officer_alone_with_their_own_request_gets_no_mail(
    hierarchy, needs_approval, officer, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        submit(officer, needs_approval)

    assert notices() == {}


def test_inactive_officers_and_other_people_are_not_mailed(
    hierarchy, needs_approval, employee, colleague, officer, second_officer, kra,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    second_officer.is_active = False
    second_officer.save()

    with django_capture_on_commit_callbacks(execute=True):
        submit(employee, needs_approval)

    assert list(notices()) == [officer.email]


def test_requests_that_need_no_approval_mail_no_officer(
    hierarchy, template, employee, officer, ec_p256_key, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        issued = submit(
            employee,
            template("smime-signing"),
            csr=csr_body(ec_p256_key)["csr"],
            key_algorithm=None,
        )
        approved = submit(employee, template("smime-signing"))

    assert issued.state == CertificateRequest.State.ISSUED
    assert approved.state == CertificateRequest.State.APPROVED
    assert notices() == {}


def test_an_api_request_is_announced_with_its_channel(
    hierarchy, needs_approval, employee, officer, ec_p256_key, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = token_client(employee).post(ENROLLMENTS, csr_body(ec_p256_key), format="json")

    assert response.status_code == 202
    ((message,),) = notices().values()
    assert message.to == [officer.email]
    assert f"#{response.json()['id']} from Alice Andersson" in message.body
    assert "via REST API" in message.body


def test_nothing_is_mailed_before_the_commit(hierarchy, needs_approval, employee, officer):
    """Inside the test's transaction, which never commits, no callback runs."""
    submit(employee, needs_approval)

    assert notices() == {}


def test_many_requests_in_one_transaction_make_one_summary(
    hierarchy, needs_approval, officer, second_officer, django_capture_on_commit_callbacks
):
    people = [
        UserFactory(username=f"p{n}", first_name=f"P{n}", last_name="Person") for n in range(4)
    ]

    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        made = [submit(person, needs_approval) for person in people]

    found = notices()
    assert sorted(found) == sorted([officer.email, second_officer.email])
    for (summary,) in found.values():
        assert summary.subject == "4 certificate requests wait for your approval"
        assert QUEUE in summary.body
        for request, person in zip(made, people, strict=True):
            assert f"#{request.pk} from P{person.username[1:]} Person ({person.username})" in (
                summary.body
            )


def test_a_summary_leaves_each_officer_their_own_requests_out(
    hierarchy, needs_approval, employee, officer, second_officer, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        theirs = submit(employee, needs_approval)
        olivias = submit(officer, needs_approval)

    found = notices()
    (to_olivia,) = found[officer.email]
    (to_oscar,) = found[second_officer.email]
    assert to_olivia.subject == f"Certificate request #{theirs.pk} {WAITS}"
    assert f"#{olivias.pk} " not in to_olivia.body
    assert to_oscar.subject == "2 certificate requests wait for your approval"
    assert f"#{olivias.pk} from Olivia Officer" in to_oscar.body


def test_a_long_summary_counts_what_it_does_not_list(
    hierarchy, needs_approval, officer, settings, monkeypatch, django_capture_on_commit_callbacks
):
    from enrollment import ra_notifications

    monkeypatch.setattr(ra_notifications, "SUMMARY_LISTS", 2)
    people = [UserFactory() for _ in range(3)]

    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        made = [submit(person, needs_approval) for person in people]

    ((summary,),) = notices().values()
    assert summary.subject == "3 certificate requests wait for your approval"
    assert f"#{made[1].pk} " in summary.body
    assert f"#{made[2].pk} " not in summary.body
    assert "... and 1 more." in summary.body


def test_a_rolled_back_request_is_not_announced_and_later_ones_still_are(
    hierarchy, needs_approval, employee, colleague, officer, django_capture_on_commit_callbacks
):
    """A rolled-back request leaves no queued mail behind it, and takes none of the later
    requests' with it."""

    def submit_then_fail(who):
        with transaction.atomic():
            submit(who, needs_approval)
            raise RuntimeError("the caller's transaction fails")

    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError):
            submit_then_fail(employee)
        with transaction.atomic():
            with pytest.raises(RuntimeError):
                submit_then_fail(colleague)  # a savepoint of this transaction
            kept = submit(colleague, needs_approval)

    ((message,),) = notices().values()
    assert message.subject == f"Certificate request #{kept.pk} {WAITS}"
    assert CertificateRequest.objects.get().pk == kept.pk


def test_a_request_withdrawn_before_the_commit_is_not_announced(
    hierarchy, needs_approval, employee, officer, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        request = submit(employee, needs_approval)
        services.request_withdraw(request=request, actor=employee)

    assert notices() == {}


def test_a_roll_out_asks_no_officer_it_approves_as_it_invites(
    hierarchy, needs_approval, officer, second_officer, django_capture_on_commit_callbacks
):
    people = [UserFactory() for _ in range(3)]

    with django_capture_on_commit_callbacks(execute=True):
        rollout = rollouts.rollout_create(
            officer=officer,
            template=needs_approval,
            people="\n".join(person.username for person in people),
        )

    assert rollouts.rollout_counts(rollout)["invited"] == 3
    assert notices() == {}


def test_a_mailbox_delegate_is_not_asked_to_approve_its_request(
    hierarchy, kra, approval, employee, officer, second_officer, django_capture_on_commit_callbacks
):
    encryption = approval("smime-encryption")
    finance = mailboxes.mailbox_create(
        email="finance@example.com",
        display_name="Finance",
        delegates=[employee, second_officer],
        actor=officer,
    )

    with django_capture_on_commit_callbacks(execute=True):
        request = submit(employee, encryption, mailbox=finance)

    ((message,),) = notices().values()
    assert message.to == [officer.email]
    assert f"#{request.pk} from Alice Andersson (alice)" in message.body
    assert "for the shared mailbox finance@example.com" in message.body
