"""Two senders of officers' notices at the same moment, on PostgreSQL, each with its own
connection: two beat runs (two workers), a beat run and a request's announcement, two
requests' announcements. Each officer's ApprovalNoticeDigest row is locked: a summary goes
once, a request is mailed at once or collected, never both, never twice."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from django.core import mail

from enrollment import ra_notifications, services
from enrollment.models import ApprovalNoticeDigest, CertificateRequest
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.test_compromise_concurrency import overlap
from tests.enrollment.test_request_concurrency import holding
from tests.factories import UserFactory
from tests.markers import needs_row_locks

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    needs_row_locks,
    pytest.mark.usefixtures("scheduler"),
]

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def submit(hierarchy, approval):
    """A committed request for a template that needs approval, announced after its commit
    as in production (these tests' transactions really commit)."""
    needs_approval = approval("smime-signing")

    def run(who, moment) -> CertificateRequest:
        with time_machine.travel(moment, tick=False):
            return services.request_submit(
                requester=who,
                template=needs_approval,
                key_algorithm=KeyAlgorithm.EC_P256,
                channel="web",
            )

    return run


def summaries(officer) -> list:
    return [m for m in mail.outbox if m.to == [officer.email] and "for your approval" in m.subject]


def held(work):
    """``work`` in a transaction left open, its row locks held, until released."""
    done, release = threading.Event(), threading.Event()
    return holding(work, done, release), done, release


def test_two_beat_runs_at_once_send_each_summary_once(
    submit, employee, colleague, officer, second_officer
):
    submit(employee, T0)
    collected = submit(colleague, T0 + timedelta(minutes=1))
    mail.outbox.clear()
    first, done, release = held(ra_notifications.approval_digests_send)

    with time_machine.travel(T0 + timedelta(minutes=16), tick=False):
        one, two, _ = overlap(first, done, release, ra_notifications.approval_digests_send)

    assert "error" not in one, one
    assert "error" not in two, two
    # The second skipped the rows the first held, and found none due once it committed.
    assert (one["value"], two["value"]) == (2, 0)
    for person in (officer, second_officer):
        (summary,) = summaries(person)
        assert summary.subject == f"Certificate request #{collected.pk} waits for your approval"


def test_a_request_committed_while_beat_sends_waits_and_joins_the_next_window(
    submit, employee, colleague, officer
):
    submit(employee, T0)
    collected = submit(colleague, T0 + timedelta(minutes=1))
    mail.outbox.clear()
    first, done, release = held(ra_notifications.approval_digests_send)
    latecomer = UserFactory()
    made: list[CertificateRequest] = []

    with time_machine.travel(T0 + timedelta(minutes=16), tick=False):
        sending, announcing, waited = overlap(
            first, done, release, lambda: made.append(submit(latecomer, T0 + timedelta(minutes=16)))
        )

    assert "error" not in sending, sending
    assert "error" not in announcing, announcing
    assert waited  # its announcement, on the officer's row
    (summary,) = summaries(officer)
    assert summary.subject == f"Certificate request #{collected.pk} waits for your approval"
    # The summary opened a window: the latecomer waits for the next one, mailed once.
    digest = ApprovalNoticeDigest.objects.get(officer=officer)
    assert digest.waiting == [made[0].pk]
    assert digest.due_at == T0 + timedelta(minutes=31)


def test_two_requests_committed_at_once_after_a_quiet_period_mail_once(
    submit, employee, colleague, officer, monkeypatch
):
    submit(UserFactory(), T0 - timedelta(hours=1))  # the officer's row exists, long quiet
    mail.outbox.clear()
    with monkeypatch.context() as unannounced:
        unannounced.setattr(ra_notifications, "requests_announce", lambda ids: None)
        first_request = submit(employee, T0)
        second_request = submit(colleague, T0)
    first, done, release = held(lambda: ra_notifications.requests_announce([first_request.pk]))

    with time_machine.travel(T0, tick=False):
        one, two, waited = overlap(
            first, done, release, lambda: ra_notifications.requests_announce([second_request.pk])
        )

    assert "error" not in one, one
    assert "error" not in two, two
    assert waited
    (notice,) = summaries(officer)
    assert notice.subject == f"Certificate request #{first_request.pk} waits for your approval"
    assert ApprovalNoticeDigest.objects.get(officer=officer).waiting == [second_request.pk]


def test_a_request_committed_while_an_officer_chooses_none_waits_and_is_not_mailed(
    submit, employee, officer, second_officer, monkeypatch
):
    """The choice is read under the row's lock: the announcement that waited for it sees
    "none by mail", neither mailing nor collecting for that officer."""
    submit(UserFactory(), T0 - timedelta(hours=1))  # both officers' rows exist, long quiet
    mail.outbox.clear()
    with monkeypatch.context() as unannounced:
        unannounced.setattr(ra_notifications, "requests_announce", lambda ids: None)
        made = submit(employee, T0)
    choosing, done, release = held(
        lambda: ra_notifications.approval_notice_delivery_set(
            officer=officer, delivery=ApprovalNoticeDigest.Delivery.NONE
        )
    )

    with time_machine.travel(T0, tick=False):
        chose, announced, waited = overlap(
            choosing, done, release, lambda: ra_notifications.requests_announce([made.pk])
        )

    assert "error" not in chose, chose
    assert "error" not in announced, announced
    assert waited  # on Olivia's row
    assert summaries(officer) == []
    assert ApprovalNoticeDigest.objects.get(officer=officer).waiting == []
    (notice,) = summaries(second_officer)
    assert notice.subject == f"Certificate request #{made.pk} waits for your approval"


def test_choosing_at_once_while_a_request_is_collected_mails_it_once(
    submit, employee, officer, monkeypatch
):
    """The switch waits for the announcement collecting a request, then sends it: the
    request is neither left on the row nor mailed twice."""
    submit(UserFactory(), T0)  # Olivia heard of it at 09:00: the next ones are collected
    mail.outbox.clear()
    with monkeypatch.context() as unannounced:
        unannounced.setattr(ra_notifications, "requests_announce", lambda ids: None)
        made = submit(employee, T0 + timedelta(minutes=2))
    collecting, done, release = held(lambda: ra_notifications.requests_announce([made.pk]))

    with time_machine.travel(T0 + timedelta(minutes=2), tick=False):
        announced, chose, waited = overlap(
            collecting,
            done,
            release,
            lambda: ra_notifications.approval_notice_delivery_set(
                officer=officer, delivery=ApprovalNoticeDigest.Delivery.IMMEDIATE
            ),
        )

    assert "error" not in announced, announced
    assert "error" not in chose, chose
    assert waited
    assert chose["value"] == 1
    (notice,) = summaries(officer)
    assert notice.subject == f"Certificate request #{made.pk} waits for your approval"
    digest = ApprovalNoticeDigest.objects.get(officer=officer)
    assert (digest.waiting, digest.due_at) == ([], None)
