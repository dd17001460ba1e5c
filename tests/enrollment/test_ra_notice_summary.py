"""The RA console tells the signed-in officer about their own next approval-notice summary
(ra_notifications): how many requests it holds, when it goes, links to their cards; no
summary once every collected request was decided; immediate notices with a window of 0."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext

from enrollment import ra_selectors, services
from enrollment.models import ApprovalNoticeDigest, CertificateRequest, SharedMailbox
from enrollment.tasks import approval_notice_digests_task
from tests.conftest import client_for
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("scheduler")]

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PANEL = 'id="notice-summary"'


@pytest.fixture
def collected(submit_at, employee, officer, second_officer):
    """A first request mailed at once at 09:00 to Olivia and Oscar, then three collected
    for their summaries at 09:15 (by others: both may decide them)."""
    submit_at(T0, employee)
    return [submit_at(T0 + timedelta(minutes=m), UserFactory(username=f"p{m}")) for m in (2, 5, 9)]


def console_at(moment, user):
    """The console as ``user`` sees it at a moment (signed in then: sessions end)."""
    with time_machine.travel(moment, tick=False):
        return client_for(user).get("/ra/")


def panel(page) -> str:
    text = page.content.decode()
    start = text.index(PANEL)
    return text[start : text.index("</section>", start)]


def links(ids) -> list[str]:
    return [f'href="/ra/requests/#request-{pk}"' for pk in ids]


# --- who may see it -------------------------------------------------------------------


def test_an_anonymous_visitor_is_sent_to_sign_in(client, collected):
    page = client.get("/ra/")

    assert page.status_code == 302
    assert page["Location"].startswith("/accounts/login/")


def test_an_employee_gets_a_403_and_no_summary(employee, collected):
    page = console_at(T0 + timedelta(minutes=10), employee)

    assert page.status_code == 403
    assert PANEL not in page.content.decode()
    for link in links(r.pk for r in collected):
        assert link not in page.content.decode()


def test_each_officer_sees_their_own_summary_only(submit_at, employee, officer, second_officer):
    """Olivia's own request is collected for Oscar, not for her; a row of Oscar's alone
    shows on neither of Olivia's views."""
    submit_at(T0, employee)
    others = submit_at(T0 + timedelta(minutes=1), UserFactory())
    olivias = submit_at(T0 + timedelta(minutes=2), officer)
    only_oscars = submit_at(T0 + timedelta(minutes=3), UserFactory())
    # As if only Oscar had been asked about it.
    mine = ApprovalNoticeDigest.objects.get(officer=officer)
    mine.waiting = [others.pk]
    mine.save()

    to_olivia = console_at(T0 + timedelta(minutes=4), officer)
    to_oscar = console_at(T0 + timedelta(minutes=4), second_officer)

    assert to_olivia.context["notice_summary"].request_ids == (others.pk,)
    assert to_oscar.context["notice_summary"].request_ids == (
        others.pk,
        olivias.pk,
        only_oscars.pk,
    )
    text = panel(to_olivia)
    assert "1 request collected, goes at 09:15 UTC" in text
    assert links([olivias.pk])[0] not in text
    assert links([only_oscars.pk])[0] not in text
    assert "3 requests collected, goes at 09:15 UTC" in panel(to_oscar)


# --- what it says ---------------------------------------------------------------------


def test_it_counts_the_collected_requests_says_when_and_links_their_cards(officer, collected):
    page = console_at(T0 + timedelta(minutes=10), officer)

    text = panel(page)
    assert "Your next notice summary: 3 requests collected, goes at 09:15 UTC." in text
    for link in links(r.pk for r in collected):
        assert link in text
    assert "within 15 minutes of a notice to you" in text


def test_it_shows_the_time_in_the_portal_s_time_zone(officer, collected, settings):
    settings.TIME_ZONE = "Europe/Berlin"

    text = panel(console_at(T0 + timedelta(minutes=10), officer))

    assert "goes at 10:15 CET" in text


def test_a_late_beat_shows_the_summary_as_due(officer, collected):
    text = panel(console_at(T0 + timedelta(minutes=17), officer))

    assert "3 requests collected, was due at 09:15 UTC and goes out within a minute" in text


def test_many_collected_requests_are_linked_up_to_a_limit_and_counted(
    officer, collected, monkeypatch
):
    monkeypatch.setattr(ra_selectors, "SUMMARY_PANEL_LISTS", 2)

    text = panel(console_at(T0 + timedelta(minutes=10), officer))

    assert "3 requests collected" in text
    first, second, third = links(r.pk for r in collected)
    assert first in text
    assert second in text
    assert third not in text
    assert " and 1 more" in text


def test_with_nothing_collected_no_summary_is_pending(submit_at, employee, officer):
    before = panel(console_at(T0, officer))
    submit_at(T0, employee)  # mailed at once: nothing waits for a summary
    after = panel(console_at(T0 + timedelta(minutes=1), officer))

    for text in (before, after):
        assert "Your next notice summary: no summary pending." in text
        assert "/ra/requests/#request-" not in text


def test_after_the_summary_went_none_is_pending(officer, collected, committed_at):
    committed_at(T0 + timedelta(minutes=15), approval_notice_digests_task)

    text = panel(console_at(T0 + timedelta(minutes=16), officer))

    assert "no summary pending" in text


def test_a_window_of_0_says_notices_are_immediate(scheduler, submit_at, employee, officer):
    scheduler.PKIPORTAL_RA_NOTICE_WINDOW_MINUTES = 0
    submit_at(T0, employee)
    submit_at(T0 + timedelta(minutes=1), UserFactory())

    page = console_at(T0 + timedelta(minutes=2), officer)

    assert page.context["notice_summary"].window_minutes == 0
    text = panel(page)
    assert "Notices immediate: every request waiting for your approval is mailed" in text
    assert "no broker" not in text
    assert "summary pending" not in text


def test_without_a_broker_notices_are_immediate_and_say_why(scheduler, officer):
    scheduler.CELERY_TASK_ALWAYS_EAGER = True

    text = panel(console_at(T0, officer))

    assert "Notices immediate" in text
    assert "(this portal runs no scheduler to send summaries)" in text


def test_an_officer_without_an_address_is_told_no_notice_reaches_them(officer, collected):
    officer.email = ""
    officer.save()

    text = panel(console_at(T0 + timedelta(minutes=10), officer))

    assert "has no e-mail address" in text
    assert "requests collected" not in text


# --- requests decided before the summary goes -------------------------------------------


def test_requests_decided_before_the_summary_leave_the_panel_and_the_summary(
    committed_at, collected, officer, second_officer
):
    approved, rejected, kept = collected
    committed_at(
        T0 + timedelta(minutes=10),
        lambda: services.request_approve(request=approved, officer=officer),
    )
    committed_at(
        T0 + timedelta(minutes=11),
        lambda: services.request_reject(request=rejected, officer=second_officer, reason="No."),
    )
    mail.outbox.clear()

    text = panel(console_at(T0 + timedelta(minutes=12), officer))
    assert "1 request collected, goes at 09:15 UTC" in text
    kept_link, approved_link, rejected_link = links([kept.pk, approved.pk, rejected.pk])
    assert kept_link in text
    assert approved_link not in text
    assert rejected_link not in text

    assert committed_at(T0 + timedelta(minutes=15), approval_notice_digests_task) == 2
    for message in mail.outbox:
        assert message.subject == f"Certificate request #{kept.pk} waits for your approval"
        assert f"#{approved.pk} " not in message.body
        assert f"#{rejected.pk} " not in message.body


def test_a_window_whose_requests_were_all_decided_mails_nobody(
    committed_at, collected, officer, second_officer
):
    first, second, third = collected
    decisions = [
        lambda: services.request_approve(request=first, officer=officer),
        lambda: services.request_approve(request=second, officer=second_officer),
        lambda: services.request_reject(request=third, officer=officer, reason="Not needed."),
    ]
    for n, decide in enumerate(decisions):
        committed_at(T0 + timedelta(minutes=10, seconds=n), decide)
    mail.outbox.clear()

    assert "no summary pending" in panel(console_at(T0 + timedelta(minutes=12), officer))
    assert committed_at(T0 + timedelta(minutes=15), approval_notice_digests_task) == 0
    assert mail.outbox == []


def test_a_request_of_a_mailbox_the_officer_now_reads_is_not_shown(officer, collected):
    """As beat leaves it out of their summary: a delegate does not decide it."""
    box = SharedMailbox.objects.create(email="finance@example.com", display_name="Finance")
    box.delegates.add(officer)
    CertificateRequest.objects.filter(pk=collected[0].pk).update(mailbox=box)

    summary = console_at(T0 + timedelta(minutes=10), officer).context["notice_summary"]

    assert summary.request_ids == (collected[1].pk, collected[2].pk)


# --- cost -----------------------------------------------------------------------------


def test_the_summary_is_read_in_four_queries_however_many_were_collected(
    submit_at, collected, officer, django_assert_num_queries
):
    """The officer's row by its key (their choice, what waits), then the collected
    requests, the approvers groups and officer scopes' groups the officer is in (one
    statement; in none here) and the mailboxes they read."""
    box = SharedMailbox.objects.create(email="finance@example.com", display_name="Finance")
    box.delegates.add(UserFactory())
    CertificateRequest.objects.filter(pk=collected[0].pk).update(mailbox=box)

    with django_assert_num_queries(4), time_machine.travel(T0 + timedelta(minutes=10)):
        few = ra_selectors.approval_notice_summary(officer)
    more = [submit_at(T0 + timedelta(minutes=10, seconds=n), UserFactory()) for n in range(5)]
    with django_assert_num_queries(4), time_machine.travel(T0 + timedelta(minutes=11)):
        many = ra_selectors.approval_notice_summary(officer)

    assert few.count == 3
    assert many.request_ids == tuple(r.pk for r in [*collected, *more])


def test_a_window_of_0_or_nothing_collected_reads_only_the_officer_s_row(
    scheduler, submit_at, employee, officer, django_assert_num_queries
):
    """Their choice is read either way: "none by mail" is shown with a window of 0 too."""
    submit_at(T0, employee)  # mailed at once: nothing collected
    with django_assert_num_queries(1):
        assert ra_selectors.approval_notice_summary(officer).count == 0

    scheduler.PKIPORTAL_RA_NOTICE_WINDOW_MINUTES = 0

    with django_assert_num_queries(1):
        assert ra_selectors.approval_notice_summary(officer).window_minutes == 0


def test_the_console_makes_no_more_queries_for_more_collected_requests(
    submit_at, collected, officer
):
    def console_queries(moment) -> int:
        with time_machine.travel(moment, tick=False):
            client = client_for(officer)
            with CaptureQueriesContext(connection) as queries:
                assert client.get("/ra/").status_code == 200
        return len(queries.captured_queries)

    few = console_queries(T0 + timedelta(minutes=10))
    for n in range(5):
        submit_at(T0 + timedelta(minutes=10, seconds=n), UserFactory())
    many = console_queries(T0 + timedelta(minutes=11))

    assert many == few
