"""Officers hear of the first request after a quiet period at once; the requests made within
PKIPORTAL_RA_NOTICE_WINDOW_MINUTES of a notice come as one summary per officer when the
window ends (beat), without those no longer pending. A script making many requests in
many calls so mails each officer a few times, not once per request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from django.core import mail

from enrollment import ra_notifications, services
from enrollment.models import ApprovalNoticeDigest
from enrollment.tasks import approval_notice_digests_task
from tests.enrollment.api_tools import ENROLLMENTS, csr_body, token_client
from tests.enrollment.tools import new_key
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("scheduler")]

QUEUE = "https://portal.example.com/ra/requests/"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def needs_approval(hierarchy, approval):
    return approval("smime-signing")


@pytest.fixture
def beat_at(committed_at):
    """Beat's every-minute run at a moment; how many officers it mailed."""
    return lambda moment: committed_at(moment, approval_notice_digests_task)


def notices() -> dict[str, list]:
    """The officers' notices by address, in the order sent."""
    found: dict[str, list] = {}
    for message in mail.outbox:
        if "for your approval" in message.subject:
            found.setdefault(message.to[0], []).append(message)
    return found


def people(count: int) -> list:
    return [
        UserFactory(username=f"p{n}", first_name=f"P{n}", last_name="Person") for n in range(count)
    ]


def test_the_first_request_after_a_quiet_period_is_mailed_at_once(
    submit_at, employee, officer, second_officer
):
    request = submit_at(T0, employee)

    found = notices()
    assert sorted(found) == sorted([officer.email, second_officer.email])
    for (message,) in found.values():
        assert message.subject == f"Certificate request #{request.pk} waits for your approval"
        assert "Alice Andersson (alice) on 2026-03-02 09:00 UTC: " in message.body
        assert QUEUE in message.body
        assert "in the next 15 minutes come to you together, in one summary" in message.body


def test_requests_within_the_window_wait_for_the_summary(
    submit_at, beat_at, employee, officer, second_officer
):
    submit_at(T0, employee)
    first = len(mail.outbox)
    p0, p1 = people(2)
    second = submit_at(T0 + timedelta(minutes=3), p0)
    third = submit_at(T0 + timedelta(minutes=14), p1)

    assert len(mail.outbox) == first  # nobody is mailed again within the window
    # Beat before the window's end sends nothing either.
    assert beat_at(T0 + timedelta(minutes=14, seconds=59)) == 0
    assert len(mail.outbox) == first
    digest = ApprovalNoticeDigest.objects.get(officer=officer)
    assert digest.waiting == [second.pk, third.pk]
    assert digest.due_at == T0 + timedelta(minutes=15)


def test_beat_sends_each_officer_one_summary_of_what_the_window_collected(
    submit_at, beat_at, employee, officer, second_officer
):
    first = submit_at(T0, employee)
    p0, p1 = people(2)
    second = submit_at(T0 + timedelta(minutes=2), p0)
    third = submit_at(T0 + timedelta(minutes=9), p1)
    mail.outbox.clear()

    assert beat_at(T0 + timedelta(minutes=15, seconds=30)) == 2

    found = notices()
    assert sorted(found) == sorted([officer.email, second_officer.email])
    for (summary,) in found.values():
        assert summary.subject == "2 certificate requests wait for your approval"
        assert f"#{second.pk} from P0 Person (p0) on 2026-03-02 09:02 UTC" in summary.body
        assert f"#{third.pk} from P1 Person (p1) on 2026-03-02 09:09 UTC" in summary.body
        assert f"#{first.pk} " not in summary.body  # its officers already know
        assert QUEUE in summary.body
        assert "BEGIN" not in summary.body
    assert not ApprovalNoticeDigest.objects.filter(due_at__isnull=False).exists()


def test_a_second_beat_run_mails_nobody_again(submit_at, beat_at, employee, colleague, officer):
    submit_at(T0, employee)
    submit_at(T0 + timedelta(minutes=1), colleague)
    assert beat_at(T0 + timedelta(minutes=16)) == 1
    sent = len(mail.outbox)

    assert beat_at(T0 + timedelta(minutes=17)) == 0
    assert beat_at(T0 + timedelta(hours=5)) == 0
    assert len(mail.outbox) == sent


def test_a_summary_leaves_each_officer_their_own_requests_out(
    submit_at, beat_at, employee, colleague, officer, second_officer
):
    submit_at(T0, employee)
    theirs = submit_at(T0 + timedelta(minutes=1), colleague)
    olivias = submit_at(T0 + timedelta(minutes=2), officer)
    mail.outbox.clear()

    beat_at(T0 + timedelta(minutes=16))

    (to_olivia,) = notices()[officer.email]
    (to_oscar,) = notices()[second_officer.email]
    assert to_olivia.subject == f"Certificate request #{theirs.pk} waits for your approval"
    assert f"#{olivias.pk} " not in to_olivia.body
    assert to_oscar.subject == "2 certificate requests wait for your approval"
    assert f"#{olivias.pk} from Olivia Officer" in to_oscar.body


def test_requests_no_longer_pending_are_left_out_of_the_summary(
    submit_at, beat_at, committed_at, employee, officer, second_officer
):
    submit_at(T0, employee)
    p0, p1, p2 = people(3)
    withdrawn = submit_at(T0 + timedelta(minutes=1), p0)
    rejected = submit_at(T0 + timedelta(minutes=2), p1)
    kept = submit_at(T0 + timedelta(minutes=3), p2)
    committed_at(
        T0 + timedelta(minutes=4), lambda: services.request_withdraw(request=withdrawn, actor=p0)
    )
    committed_at(
        T0 + timedelta(minutes=5),
        lambda: services.request_reject(request=rejected, officer=second_officer, reason="No."),
    )
    mail.outbox.clear()

    beat_at(T0 + timedelta(minutes=16))

    for (summary,) in notices().values():
        assert summary.subject == f"Certificate request #{kept.pk} waits for your approval"
        assert f"#{withdrawn.pk} " not in summary.body
        assert f"#{rejected.pk} " not in summary.body


def test_a_window_whose_requests_were_all_withdrawn_mails_nobody(
    submit_at, beat_at, committed_at, employee, colleague, officer
):
    submit_at(T0, employee)
    withdrawn = submit_at(T0 + timedelta(minutes=1), colleague)
    committed_at(
        T0 + timedelta(minutes=2),
        lambda: services.request_withdraw(request=withdrawn, actor=colleague),
    )
    mail.outbox.clear()

    assert beat_at(T0 + timedelta(minutes=16)) == 0
    assert notices() == {}
    # No summary went, so no window opened: the next request is mailed at once.
    later = submit_at(T0 + timedelta(minutes=20), UserFactory())
    ((message,),) = notices().values()
    assert message.subject == f"Certificate request #{later.pk} waits for your approval"


def test_a_summary_opens_the_next_window_and_a_quiet_period_ends_it(
    submit_at, beat_at, employee, officer
):
    p0, p1, p2 = people(3)
    submit_at(T0, employee)
    submit_at(T0 + timedelta(minutes=10), p0)
    beat_at(T0 + timedelta(minutes=15))
    mail.outbox.clear()

    # Within 15 minutes of the summary: collected for the next one.
    collected = submit_at(T0 + timedelta(minutes=20), p1)
    assert notices() == {}
    assert ApprovalNoticeDigest.objects.get(officer=officer).due_at == T0 + timedelta(minutes=30)
    beat_at(T0 + timedelta(minutes=30))
    ((summary,),) = notices().values()
    assert summary.subject == f"Certificate request #{collected.pk} waits for your approval"
    mail.outbox.clear()

    # 15 quiet minutes after that summary: at once again.
    prompt = submit_at(T0 + timedelta(minutes=45, seconds=1), p2)
    ((message,),) = notices().values()
    assert message.subject == f"Certificate request #{prompt.pk} waits for your approval"


def test_a_request_after_the_window_ends_takes_what_beat_has_not_sent_with_it(
    submit_at, beat_at, employee, colleague, officer
):
    """Beat runs every minute: a request in between gets one mail, not two."""
    submit_at(T0, employee)
    collected = submit_at(T0 + timedelta(minutes=5), colleague)
    mail.outbox.clear()

    later = submit_at(T0 + timedelta(minutes=15, seconds=20), UserFactory())

    ((message,),) = notices().values()
    assert message.subject == "2 certificate requests wait for your approval"
    assert f"#{collected.pk} " in message.body
    assert f"#{later.pk} " in message.body
    assert beat_at(T0 + timedelta(minutes=16)) == 0


def test_a_script_making_many_requests_in_many_calls_mails_each_officer_twice(
    committed_at, beat_at, needs_approval, employee, officer, second_officer, settings
):
    settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE = 10
    client = token_client(employee)

    for n in range(8):
        response = committed_at(
            T0 + timedelta(seconds=20 * n),
            lambda: client.post(ENROLLMENTS, csr_body(new_key()), format="json"),
        )
        assert response.status_code == 202
    beat_at(T0 + timedelta(minutes=15))

    found = notices()
    assert sorted(found) == sorted([officer.email, second_officer.email])
    for first, summary in found.values():
        assert "waits for your approval" in first.subject
        assert summary.subject == "7 certificate requests wait for your approval"
        assert "via REST API" in summary.body


def test_an_officer_who_left_gets_no_summary(
    submit_at, beat_at, employee, colleague, officer, second_officer
):
    submit_at(T0, employee)
    submit_at(T0 + timedelta(minutes=1), colleague)
    second_officer.is_active = False
    second_officer.save()
    mail.outbox.clear()

    assert beat_at(T0 + timedelta(minutes=16)) == 1
    assert list(notices()) == [officer.email]


def test_a_window_of_0_mails_every_request_as_it_comes(
    scheduler, submit_at, beat_at, employee, colleague, officer
):
    scheduler.PKIPORTAL_RA_NOTICE_WINDOW_MINUTES = 0

    made = [submit_at(T0 + timedelta(minutes=m), who) for m, who in ((0, employee), (1, colleague))]

    sent = notices()[officer.email]
    assert [m.subject for m in sent] == [
        f"Certificate request #{r.pk} waits for your approval" for r in made
    ]
    assert "in one summary" not in sent[0].body
    assert beat_at(T0 + timedelta(minutes=30)) == 0
    assert len(notices()[officer.email]) == 2


def test_without_a_scheduler_every_request_is_mailed_as_it_comes(
    scheduler, submit_at, employee, colleague, officer
):
    """The embedded default runs no beat: a summary would never go."""
    scheduler.CELERY_TASK_ALWAYS_EAGER = True

    submit_at(T0, employee)
    submit_at(T0 + timedelta(minutes=1), colleague)

    assert len(notices()[officer.email]) == 2
    assert not ApprovalNoticeDigest.objects.filter(due_at__isnull=False).exists()


def test_beat_runs_the_task_every_minute(settings):
    from pkiportal.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["approval-notice-digests"]

    assert entry["task"] in app.tasks
    assert entry["schedule"] == timedelta(minutes=1)


def test_the_window_follows_the_setting_and_the_scheduler(scheduler):
    scheduler.PKIPORTAL_RA_NOTICE_WINDOW_MINUTES = 30
    assert ra_notifications.notice_window() == timedelta(minutes=30)
    scheduler.CELERY_TASK_ALWAYS_EAGER = True
    assert ra_notifications.notice_window() == timedelta(0)
