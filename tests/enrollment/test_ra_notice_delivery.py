"""Each RA officer chooses on the console how requests waiting for their approval reach
them: in summaries (the default, PKIPORTAL_RA_NOTICE_WINDOW_MINUTES), every request at
once, or none by mail. The choice is their own and no one else's; what was collected for
their summary goes out at once, or is dropped, with it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from django.core import mail
from django.test import Client

from enrollment import ra_notifications, services
from enrollment.models import ApprovalNoticeDigest, CertificateRequest
from enrollment.tasks import approval_notice_digests_task
from tests.conftest import client_for
from tests.factories import UserFactory
from tests.second_factor import verified_login

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("scheduler")]

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
URL = "/ra/notices/"
PANEL = 'id="notice-summary"'
SUMMARIES = ApprovalNoticeDigest.Delivery.SUMMARIES
IMMEDIATE = ApprovalNoticeDigest.Delivery.IMMEDIATE
NONE = ApprovalNoticeDigest.Delivery.NONE


@pytest.fixture
def choose_at(committed_at):
    """``user`` posts a choice on the console at a moment (signed in then); the response."""

    def run(moment, user, delivery, *, follow=False):
        return committed_at(
            moment, lambda: client_for(user).post(URL, {"delivery": delivery}, follow=follow)
        )

    return run


def notices() -> dict[str, list]:
    """The officers' notices by address, in the order sent."""
    found: dict[str, list] = {}
    for message in mail.outbox:
        if "for your approval" in message.subject:
            found.setdefault(message.to[0], []).append(message)
    return found


def delivery_of(user) -> str | None:
    return (
        ApprovalNoticeDigest.objects.filter(officer=user).values_list("delivery", flat=True).first()
    )


def chose(user, delivery) -> None:
    ra_notifications.approval_notice_delivery_set(officer=user, delivery=delivery)


def checked(text: str) -> list[str]:
    """The choices whose radio button is checked."""
    return re.findall(r'<input type="radio" name="delivery" value="(\w+)"[^>]* checked>', text)


def panel(page) -> str:
    text = page.content.decode()
    start = text.index(PANEL)
    return text[start : text.index("</section>", start)]


def console_at(moment, user):
    with time_machine.travel(moment, tick=False):
        return client_for(user).get("/ra/")


# --- who may choose -------------------------------------------------------------------


def test_an_anonymous_visitor_is_sent_to_sign_in_and_nothing_changes(client, officer):
    response = client.post(URL, {"delivery": NONE})

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert not ApprovalNoticeDigest.objects.exists()


@pytest.mark.parametrize("role", ["employee", "staff"])
def test_anyone_not_an_ra_officer_gets_a_403_and_nothing_changes(role, employee):
    who = employee if role == "employee" else UserFactory(is_staff=True)

    response = client_for(who).post(URL, {"delivery": NONE})

    assert response.status_code == 403
    assert not ApprovalNoticeDigest.objects.exists()


def test_an_officer_who_lost_the_role_gets_a_403(officer):
    chose(officer, SUMMARIES)
    client = client_for(officer)
    officer.groups.clear()

    assert client.post(URL, {"delivery": NONE}).status_code == 403
    assert delivery_of(officer) == SUMMARIES


def test_an_officer_without_their_second_factor_confirmed_changes_nothing(officer):
    client = Client()
    client.force_login(officer)

    response = client.post(URL, {"delivery": NONE})

    assert response.status_code == 302
    assert "/account/" in response["Location"]
    assert delivery_of(officer) is None


def test_an_officer_changes_their_own_choice_and_no_one_else_s(officer, second_officer):
    chose(second_officer, SUMMARIES)

    response = client_for(officer).post(
        URL, {"delivery": NONE, "officer": second_officer.pk, "officer_id": second_officer.pk}
    )

    assert response.status_code == 302
    assert response["Location"] == "/ra/#notice-summary"
    assert delivery_of(officer) == NONE
    assert delivery_of(second_officer) == SUMMARIES


def test_a_superuser_is_an_officer_and_may_choose(admin_user):
    assert client_for(admin_user).post(URL, {"delivery": IMMEDIATE}).status_code == 302
    assert delivery_of(admin_user) == IMMEDIATE


def test_the_choice_is_only_posted(officer):
    client = client_for(officer)

    assert client.get(URL).status_code == 405
    assert delivery_of(officer) is None


def test_the_choice_needs_the_csrf_token(officer):
    client = verified_login(Client(enforce_csrf_checks=True), officer)

    assert client.post(URL, {"delivery": NONE}).status_code == 403
    assert delivery_of(officer) is None


@pytest.mark.parametrize("given", [{}, {"delivery": "weekly"}, {"delivery": ""}])
def test_an_unknown_choice_is_refused_naming_the_field_and_changes_nothing(officer, given):
    chose(officer, IMMEDIATE)

    response = client_for(officer).post(URL, given)

    assert response.status_code == 400
    text = panel(response)
    assert "Select a valid choice" in text or "This field is required" in text
    assert delivery_of(officer) == IMMEDIATE


# --- what each choice does with a new request -----------------------------------------


def test_summaries_is_the_default(submit_at, officer):
    """An officer who never chose: the first at once, the next collected (as before)."""
    submit_at(T0)
    collected = submit_at(T0 + timedelta(minutes=3))

    assert len(notices()[officer.email]) == 1
    digest = ApprovalNoticeDigest.objects.get(officer=officer)
    assert digest.delivery == SUMMARIES
    assert digest.waiting == [collected.pk]


def test_at_once_mails_every_request_as_it_comes_and_collects_none(
    submit_at, committed_at, officer, second_officer
):
    chose(officer, IMMEDIATE)

    made = [submit_at(T0 + timedelta(minutes=m)) for m in (0, 3, 5)]

    to_olivia = notices()[officer.email]
    assert [m.subject for m in to_olivia] == [
        f"Certificate request #{r.pk} waits for your approval" for r in made
    ]
    assert "in one summary" not in to_olivia[1].body
    digest = ApprovalNoticeDigest.objects.get(officer=officer)
    assert (digest.waiting, digest.due_at) == ([], None)
    # Oscar, on summaries, heard of the first and gets the other two from beat.
    assert len(notices()[second_officer.email]) == 1
    mail.outbox.clear()
    assert committed_at(T0 + timedelta(minutes=15), approval_notice_digests_task) == 1
    assert list(notices()) == [second_officer.email]


def test_none_by_mail_mails_nothing_and_collects_nothing(
    submit_at, committed_at, officer, second_officer
):
    chose(officer, NONE)

    submit_at(T0)
    submit_at(T0 + timedelta(minutes=3))

    assert officer.email not in notices()
    assert len(notices()[second_officer.email]) == 1
    digest = ApprovalNoticeDigest.objects.get(officer=officer)
    assert (digest.waiting, digest.due_at, digest.last_sent_at) == ([], None, None)
    assert committed_at(T0 + timedelta(minutes=15), approval_notice_digests_task) == 1
    assert officer.email not in notices()


def test_with_every_officer_on_none_no_mail_goes(submit_at, officer, second_officer):
    chose(officer, NONE)
    chose(second_officer, NONE)

    submit_at(T0)

    assert notices() == {}


@pytest.mark.parametrize("how", ["window 0", "no scheduler"])
def test_without_summaries_summaries_mean_at_once_and_none_stays_none(
    scheduler, how, submit_at, officer, second_officer
):
    if how == "window 0":
        scheduler.PKIPORTAL_RA_NOTICE_WINDOW_MINUTES = 0
    else:
        scheduler.CELERY_TASK_ALWAYS_EAGER = True
    chose(officer, NONE)

    submit_at(T0)
    submit_at(T0 + timedelta(minutes=1))

    assert len(notices()[second_officer.email]) == 2
    assert officer.email not in notices()


def confirmation(response) -> list[str]:
    assert response.redirect_chain == [("/ra/#notice-summary", 302)]
    return [str(message) for message in response.context["messages"]]


def test_choosing_summaries_confirms_summaries_where_the_portal_sends_them(choose_at, officer):
    response = choose_at(T0, officer, SUMMARIES, follow=True)

    assert confirmation(response) == ["Approval notices: in summaries."]


@pytest.mark.parametrize(
    ("how", "why"),
    [("window 0", "It sends none"), ("no scheduler", "It runs no scheduler to send summaries")],
)
def test_choosing_summaries_where_none_are_sent_confirms_what_the_officer_gets(
    scheduler, choose_at, how, why, officer
):
    """It said "Approval notices: in summaries." while every request came at once."""
    if how == "window 0":
        scheduler.PKIPORTAL_RA_NOTICE_WINDOW_MINUTES = 0
    else:
        scheduler.CELERY_TASK_ALWAYS_EAGER = True

    response = choose_at(T0, officer, SUMMARIES, follow=True)

    (said,) = confirmation(response)
    assert said == (
        f"Approval notices: in summaries, once this portal sends them. {why}, so for now "
        "every request waiting for your approval is mailed to you as it comes."
    )
    assert "Notices immediate: every request waiting for your approval" in panel(response)
    assert delivery_of(officer) == SUMMARIES  # kept for when summaries are sent


# --- changing it with requests collected ----------------------------------------------


@pytest.fixture
def collected(submit_at, officer, second_officer):
    """A first request mailed at once at 09:00, then two collected for 09:15."""
    submit_at(T0)
    made = [submit_at(T0 + timedelta(minutes=m)) for m in (2, 5)]
    mail.outbox.clear()
    return made


def test_switching_to_at_once_mails_the_collected_requests_now(
    choose_at, submit_at, committed_at, collected, officer, second_officer
):
    response = choose_at(T0 + timedelta(minutes=6), officer, IMMEDIATE, follow=True)

    assert response.redirect_chain == [("/ra/#notice-summary", 302)]
    assert "The 2 requests collected for your summary went to you now." in (
        response.content.decode()
    )
    ((summary,),) = notices().values()
    assert summary.to == [officer.email]
    assert summary.subject == "2 certificate requests wait for your approval"
    for request in collected:
        assert f"#{request.pk} " in summary.body
    assert "in one summary" not in summary.body
    digest = ApprovalNoticeDigest.objects.get(officer=officer)
    assert (digest.delivery, digest.waiting, digest.due_at) == (IMMEDIATE, [], None)
    assert digest.last_sent_at == T0 + timedelta(minutes=6)

    # Beat mails only Oscar; the next request reaches Olivia at once.
    assert committed_at(T0 + timedelta(minutes=15), approval_notice_digests_task) == 1
    assert len(notices()[officer.email]) == 1
    later = submit_at(T0 + timedelta(minutes=16))
    assert notices()[officer.email][-1].subject == (
        f"Certificate request #{later.pk} waits for your approval"
    )


def test_switching_to_at_once_leaves_out_what_was_decided_since(
    choose_at, committed_at, collected, officer, second_officer
):
    decided, kept = collected
    committed_at(
        T0 + timedelta(minutes=5, seconds=30),
        lambda: services.request_approve(request=decided, officer=second_officer),
    )
    mail.outbox.clear()

    choose_at(T0 + timedelta(minutes=6), officer, IMMEDIATE)

    ((summary,),) = notices().values()
    assert summary.subject == f"Certificate request #{kept.pk} waits for your approval"


def test_switching_to_none_drops_the_collected_requests(
    choose_at, committed_at, collected, officer, second_officer
):
    response = choose_at(T0 + timedelta(minutes=6), officer, NONE)

    assert response.status_code == 302
    assert notices() == {}
    digest = ApprovalNoticeDigest.objects.get(officer=officer)
    assert (digest.delivery, digest.waiting, digest.due_at) == (NONE, [], None)
    # They still wait in the queue; Oscar's summary still goes.
    assert all(
        r.state == CertificateRequest.State.PENDING
        for r in CertificateRequest.objects.filter(pk__in=[r.pk for r in collected])
    )
    assert committed_at(T0 + timedelta(minutes=15), approval_notice_digests_task) == 1
    assert list(notices()) == [second_officer.email]


def test_choosing_summaries_again_keeps_what_is_collected(
    choose_at, committed_at, collected, officer
):
    choose_at(T0 + timedelta(minutes=6), officer, SUMMARIES)

    assert notices() == {}
    assert ApprovalNoticeDigest.objects.get(officer=officer).waiting == [r.pk for r in collected]
    assert committed_at(T0 + timedelta(minutes=15), approval_notice_digests_task) == 2


def test_back_to_summaries_the_next_request_is_mailed_at_once_then_collected(submit_at, officer):
    chose(officer, NONE)
    submit_at(T0)
    chose(officer, SUMMARIES)

    first = submit_at(T0 + timedelta(minutes=1))
    second = submit_at(T0 + timedelta(minutes=2))

    (notice,) = notices()[officer.email]
    assert notice.subject == f"Certificate request #{first.pk} waits for your approval"
    assert ApprovalNoticeDigest.objects.get(officer=officer).waiting == [second.pk]


def test_the_choice_is_not_on_the_audit_trail(choose_at, officer):
    """A personal preference that grants nothing, as the docstring of
    approval_notice_delivery_set says."""
    from enrollment.models import AuditEvent

    before = AuditEvent.objects.count()
    choose_at(T0, officer, NONE)

    assert AuditEvent.objects.count() == before


# --- the console panel ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("delivery", "says"),
    [
        (SUMMARIES, "Your next notice summary: no summary pending."),
        (IMMEDIATE, "Notices immediate: you chose to have every request"),
        (NONE, "No notices by mail: you chose to check the"),
    ],
)
def test_the_panel_shows_the_officer_s_choice_checked(officer, delivery, says):
    chose(officer, delivery)

    text = panel(console_at(T0, officer))

    assert says in text
    assert checked(text) == [delivery]
    assert f'<form method="post" action="{URL}"' in text
    assert "csrfmiddlewaretoken" in text


def test_an_officer_who_never_chose_sees_summaries_checked(officer):
    text = panel(console_at(T0, officer))

    assert checked(text) == [SUMMARIES]


def test_the_panel_does_not_show_collected_requests_once_none_is_chosen(
    choose_at, collected, officer, second_officer
):
    choose_at(T0 + timedelta(minutes=6), officer, NONE)

    mine = panel(console_at(T0 + timedelta(minutes=7), officer))
    oscars = panel(console_at(T0 + timedelta(minutes=7), second_officer))

    assert "requests collected" not in mine
    assert "Other officers are mailed as each of them chose." in mine
    assert "2 requests collected, goes at 09:15 UTC" in oscars
    assert checked(mine) == [NONE]
    assert checked(oscars) == [SUMMARIES]


def test_a_window_of_0_still_shows_none_by_mail(scheduler, officer):
    scheduler.PKIPORTAL_RA_NOTICE_WINDOW_MINUTES = 0
    chose(officer, NONE)

    text = panel(console_at(T0, officer))

    assert "No notices by mail" in text
    assert "Notices immediate" not in text


def test_the_mail_says_where_to_choose(submit_at, officer):
    submit_at(T0)

    (notice,) = notices()[officer.email]
    assert "on the RA console: https://portal.example.com/ra/#notice-summary" in notice.body
