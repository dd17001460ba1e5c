"""The admin's "revoke selected certificates": a confirmation page (reason, "I am sure",
the number typed for more than one) before anything is revoked, for RA officers and
superusers only, each revocation through the service, audited with the address."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from django.contrib.messages import get_messages
from django.utils import timezone

from enrollment import bulk_revoke, ra_admin, services, tasks
from enrollment.models import AuditEvent, BulkRevocationRun, Certificate
from tests.conftest import client_for
from tests.enrollment.tools import (
    Message,
    as_staff,
    deliver,
    issue,
    keep_messages,
    new_key,
    revocation_fails,
)
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

CERTIFICATES = "/admin/enrollment/certificate/"
ADDRESS = "192.0.2.45"


def staff_with_view(user):
    """Staff who may open the certificate list (the admin shows no list without it)."""
    return as_staff(user, "view_certificate")


@pytest.fixture
def admin_officer(officer):
    return staff_with_view(officer)


@pytest.fixture
def viewer(db):
    return staff_with_view(UserFactory(username="viewer"))


@pytest.fixture
def three(hierarchy, template, employee, colleague):
    """Three valid certificates of two people."""
    return [
        issue(employee, template("smime-signing"), new_key()),
        issue(employee, template("smime-dual-use"), new_key()),
        issue(colleague, template("smime-signing"), new_key()),
    ]


def ask(client, pks, *, query: str = "", **extra):
    """The changelist's action form, or the confirmation page's form with ``post``."""
    data = {"action": "revoke", "_selected_action": [str(pk) for pk in pks], **extra}
    return client.post(CERTIFICATES + query, data, REMOTE_ADDR=ADDRESS)


def confirm(client, pks, **fields):
    data = {"post": "yes", "reason": "superseded", "confirm": "on", **fields}
    return ask(client, pks, **data)


def offered(client) -> set[str]:
    form = client.get(CERTIFICATES).context["action_form"]
    return set() if form is None else {value for value, _ in form.fields["action"].choices}


def statuses(certificates) -> list[str]:
    return [Certificate.objects.get(pk=c.pk).status for c in certificates]


def shown(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


# --- who may --------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["admin_officer", "admin_user"])
def test_officers_and_superusers_are_offered_it_and_revoke(request, who, three):
    client = client_for(request.getfixturevalue(who))

    assert "revoke" in offered(client)
    response = confirm(client, [three[0].pk])

    assert response.status_code == 302
    assert statuses(three) == ["revoked", "valid", "valid"]


def test_staff_who_may_only_view_certificates_are_not_offered_it(viewer, three):
    client = client_for(viewer)

    assert "revoke" not in offered(client)
    response = confirm(client, [c.pk for c in three], count="3")

    assert response.status_code == 200  # the list again: "No action selected"
    assert statuses(three) == ["valid"] * 3
    assert not AuditEvent.objects.filter(action="certificate.revoke").exists()


def test_an_officer_who_is_not_staff_never_reaches_the_admin(officer, three):
    response = confirm(client_for(officer), [three[0].pk])

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert statuses(three) == ["valid"] * 3


def test_the_old_one_click_superseded_action_is_gone(admin_officer, three):
    client = client_for(admin_officer)

    assert "revoke_superseded" not in offered(client)
    response = client.post(
        CERTIFICATES, {"action": "revoke_superseded", "_selected_action": [three[0].pk]}
    )

    assert response.status_code == 302
    assert shown(response) == ["No action selected."]
    assert statuses(three) == ["valid"] * 3


# --- the confirmation page ------------------------------------------------------------


def test_choosing_the_action_asks_first_and_revokes_nothing(admin_officer, three):
    response = ask(client_for(admin_officer), [c.pk for c in three])

    assert response.status_code == 200
    assert statuses(three) == ["valid"] * 3
    text = response.content.decode()
    assert "Revoke <strong>3 certificates</strong>?" in text
    first = three[0]
    for shown_text in (
        first.common_name,
        first.email,
        "alice",
        first.template.name,
        first.serial,
        f"{first.not_before:%Y-%m-%d} to {first.not_after:%Y-%m-%d}",
    ):
        assert shown_text in text
    assert 'name="count"' in text  # more than one: type the number
    assert 'name="confirm"' in text
    # The reasons are the RA page's, none chosen in advance.
    reasons = response.context["form"].fields["reason"].choices
    assert reasons[0] == ("", "Choose a reason…")
    assert reasons[1:] == list(Certificate.RevocationReasonChoice.choices)
    select = text.split('name="reason"', 1)[1].split("</select>", 1)[0]
    assert select.count(" selected>") == 1
    assert '<option value="" selected>' in select


def test_it_revokes_each_with_the_reason_given_audited_with_the_address(admin_officer, three):
    response = confirm(
        client_for(admin_officer), [c.pk for c in three], reason="privilegeWithdrawn", count="3"
    )

    assert response.status_code == 302
    assert response["Location"] == CERTIFICATES
    revoked = Certificate.objects.filter(pk__in=[c.pk for c in three])
    assert {(c.status, c.revocation_reason) for c in revoked} == {("revoked", "privilegeWithdrawn")}
    events = AuditEvent.objects.filter(action="certificate.revoke")
    assert events.count() == 3
    assert {(e.actor, e.source_address) for e in events} == {(admin_officer, ADDRESS)}
    assert shown(response) == [
        "Revoked 3 certificates (privilege withdrawn); skipped 0 (already revoked or "
        "expired). Their holders (a shared mailbox's delegates) were told by e-mail; the "
        "next CRL lists them."
    ]


def test_already_revoked_and_expired_ones_are_skipped_and_counted(admin_officer, three):
    Certificate.objects.filter(pk=three[0].pk).update(
        status="revoked", revoked_at=timezone.now(), revocation_reason="superseded"
    )
    Certificate.objects.filter(pk=three[1].pk).update(not_after=timezone.now() - timedelta(days=1))
    client = client_for(admin_officer)

    page = ask(client, [c.pk for c in three])
    assert "Revoke <strong>1 certificate</strong>?" in page.content.decode()
    assert "2 of the selected certificates are already revoked or expired" in (
        page.content.decode()
    )
    assert "count" not in page.context["form"].fields  # one to revoke: nothing to type
    response = confirm(client, [c.pk for c in three], reason="keyCompromise")

    assert response.status_code == 302
    assert statuses(three) == ["revoked", "valid", "revoked"]
    assert Certificate.objects.get(pk=three[0].pk).revocation_reason == "superseded"
    assert shown(response)[0].startswith(
        "Revoked 1 certificate (key compromise); skipped 2 (already revoked or expired)."
    )


def test_when_none_can_be_revoked_it_says_so_and_asks_nothing(admin_officer, three):
    Certificate.objects.filter(pk=three[0].pk).update(
        status="revoked", revoked_at=timezone.now(), revocation_reason="superseded"
    )

    response = ask(client_for(admin_officer), [three[0].pk])

    assert response.status_code == 302
    assert shown(response) == [
        "No certificate revoked: the 1 selected certificate is already revoked or expired."
    ]


@pytest.mark.parametrize(
    ("missing", "fields", "error"),
    [
        ("reason", {"reason": ""}, "Choose a reason."),
        ("confirm", {"confirm": ""}, "This field is required."),
        ("count", {"count": ""}, "Type the number of certificates to revoke."),
        ("count", {"count": "2"}, "2 is not the number of certificates that would be revoked"),
        ("invalidity_date", {"invalidity_date": "yesterday"}, "Give a date and time"),
    ],
)
def test_without_each_confirmation_nothing_is_revoked(admin_officer, three, missing, fields, error):
    response = confirm(client_for(admin_officer), [c.pk for c in three], **{"count": "3", **fields})

    assert response.status_code == 400
    assert error in " ".join(response.context["form"].errors[missing])
    assert statuses(three) == ["valid"] * 3
    assert not AuditEvent.objects.filter(action="certificate.revoke").exists()


def test_an_invalidity_date_the_service_refuses_is_shown_on_the_form(admin_officer, three):
    later = timezone.localtime() + timedelta(days=2)

    response = confirm(
        client_for(admin_officer),
        [c.pk for c in three],
        reason="keyCompromise",
        count="3",
        invalidity_date=f"{later:%Y-%m-%dT%H:%M}",
    )

    assert response.status_code == 400
    assert "cannot be in the future" in " ".join(response.context["form"].errors["invalidity_date"])
    assert statuses(three) == ["valid"] * 3


def test_a_large_selection_lists_the_first_and_counts_the_rest(admin_officer, three, monkeypatch):
    monkeypatch.setattr(ra_admin, "REVOKE_SHOWN", 2)

    response = ask(client_for(admin_officer), [c.pk for c in three])

    assert len(response.context["rows"]) == 2
    assert "… and 1 more (the first 2 of 3 are listed)." in response.content.decode()
    assert three[2].serial not in response.content.decode()


def test_select_all_is_checked_against_the_selection_as_it_is_when_confirmed(
    admin_officer, three, template, colleague
):
    """Every certificate the filters match; one issued after the page was shown makes the
    number typed wrong, and nothing is revoked."""
    client = client_for(admin_officer)
    across = {"select_across": "1"}
    query = "?status__exact=valid"

    page = ask(client, [three[0].pk], query=query, **across)
    assert page.context["count"] == 3
    assert 'name="select_across" value="1"' in page.content.decode()
    late = issue(colleague, template("smime-dual-use"), new_key())

    stale = confirm(client, [three[0].pk], query=query, count="3", **across)
    assert stale.status_code == 400
    assert statuses([*three, late]) == ["valid"] * 4

    done = confirm(client, [three[0].pk], query=query, count="4", **across)
    assert done.status_code == 302
    assert done["Location"] == CERTIFICATES + query
    assert statuses([*three, late]) == ["revoked"] * 4


# --- a large selection, in the background ---------------------------------------------


@pytest.fixture
def above(settings):
    """Three certificates are more than the admin revokes in the request."""
    settings.PKIPORTAL_ADMIN_REVOKE_INLINE_MAX = 2


@pytest.fixture
def crl_tasks(monkeypatch):
    """The CAs whose CRL task was queued, one entry per queueing."""
    sent: list[int] = []
    monkeypatch.setattr(tasks, "_send_crl_publish", sent.append)
    return sent


@pytest.fixture
def queued(monkeypatch):
    """The task's messages, as a broker would keep them for a worker (nothing runs)."""
    return keep_messages(monkeypatch, tasks.certificates_revoke_task)


def worker(message):
    """A worker runs the message: the task, under the message's id."""
    return deliver(tasks.certificates_revoke_task, message)


def the_run() -> BulkRevocationRun:
    return BulkRevocationRun.objects.get()


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("pk"))


def test_above_the_threshold_the_task_revokes_them_with_one_crl_task(
    admin_officer, three, above, crl_tasks, monkeypatch, django_capture_on_commit_callbacks
):
    """Without a broker the task runs here, to the end: every certificate revoked and
    audited in the officer's name, one batch, one CRL task for it (not one each). Its
    message carries the run's number alone, under the run's claim as its id."""
    handed: list[tuple] = []
    apply_async = tasks.certificates_revoke_task.apply_async

    stored = []

    def hand(args, task_id=None, **options):  # type: ignore[no-untyped-def]
        handed.append((args, options, task_id))
        stored.append(the_run().certificate_ids)  # as the message finds the row
        return apply_async(args, task_id=task_id, **options)

    monkeypatch.setattr(tasks.certificates_revoke_task, "apply_async", hand)

    with django_capture_on_commit_callbacks(execute=True):
        response = confirm(client_for(admin_officer), [c.pk for c in three], count="3")

    assert response.status_code == 302
    run = the_run()
    assert handed == [((run.pk,), {}, run.claim)]
    assert stored == [sorted(c.pk for c in three)]  # in the row, not the message
    assert run.certificate_ids == []  # finished, every one done: the row drops them
    assert (run.state, run.revoked, run.position, run.total) == ("done", 3, 3, 3)
    assert statuses(three) == ["revoked"] * 3
    revocations = events("certificate.revoke")
    assert {(e.actor, e.source_address) for e in revocations} == {(admin_officer, ADDRESS)}
    assert len(revocations) == 3
    assert crl_tasks == [three[0].ca_id]
    start, batch, done = (
        events(bulk_revoke.QUEUED),
        events(bulk_revoke.BATCH_DONE),
        events(bulk_revoke.DONE),
    )
    assert [e.detail for e in start] == [
        {
            "certificates": 3,
            "skipped": 0,
            "reason": "superseded",
            "invalidity_date": None,
            "batch_size": bulk_revoke.BATCH,
        }
    ]
    assert [e.detail["serials"] for e in batch] == [[c.serial for c in three]]
    assert [(e.detail["done"], e.detail["of"], e.detail["run"]) for e in batch] == [
        (3, 3, start[0].pk)
    ]
    assert [(e.outcome, e.actor, e.detail) for e in done] == [
        (
            "success",
            admin_officer,
            {
                "run": start[0].pk,
                "state": "done",  # never resumed: no after_resume
                "certificates": 3,
                "revoked": 3,
                "skipped": 0,
                "failed": 0,
                "imported": 0,
                "not_reached": 0,
            },
        )
    ]
    assert shown(response) == [
        "Revoked 3 certificates (superseded); skipped 0 (already revoked or expired). Their "
        "holders (a shared mailbox's delegates) were told by e-mail; the next CRL lists them."
    ]


def test_the_confirmation_page_says_it_will_run_in_the_background(
    admin_officer, three, above, settings
):
    """ "More than 2 are not revoked while you wait" read as if some would not be revoked."""
    settings.CELERY_TASK_ALWAYS_EAGER = False  # a broker, and a worker behind it
    page = ask(client_for(admin_officer), [c.pk for c in three])

    assert (
        "A selection of more than 2 is not revoked while you wait: these 3 are revoked in the "
        "background, 50 at a time."
    ) in " ".join(page.content.decode().split())


def test_without_a_worker_the_page_says_it_is_revoked_while_you_wait(
    admin_officer, three, above, settings
):
    """The demo has no broker: the task runs in the request, so nothing is "in the
    background" and the page must not promise it."""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    page = " ".join(ask(client_for(admin_officer), [c.pk for c in three]).content.decode().split())

    assert "These 3 are revoked 50 at a time while you wait" in page
    assert "in the background" not in page


def test_at_the_threshold_it_is_revoked_in_the_request_and_recorded_as_a_run(
    admin_officer, three, settings, queued, crl_tasks, django_capture_on_commit_callbacks
):
    """No message: the request works on the run itself. The run is recorded as one from
    the background is (row, .queued, .batch, .done), so the console lists both alike."""
    settings.PKIPORTAL_ADMIN_REVOKE_INLINE_MAX = 3

    page = ask(client_for(admin_officer), [c.pk for c in three])
    with django_capture_on_commit_callbacks(execute=True):
        response = confirm(client_for(admin_officer), [c.pk for c in three], count="3")

    assert "in the background" not in page.content.decode()
    assert response.status_code == 302
    assert queued == []
    assert statuses(three) == ["revoked"] * 3
    run = the_run()
    assert (run.state, run.revoked, run.batches, run.actor) == ("done", 3, 1, admin_officer)
    assert [e.action for e in AuditEvent.objects.filter(
        action__startswith="certificate.bulk_revoke").order_by("pk")] == [
        bulk_revoke.QUEUED, bulk_revoke.BATCH_DONE, bulk_revoke.DONE
    ]  # fmt: skip
    assert crl_tasks == [three[0].ca_id]  # one batch: one CRL task, not one per certificate
    assert shown(response)[0].startswith("Revoked 3 certificates (superseded); skipped 0")
    console = client_for(admin_officer).get("/ra/").content.decode()
    assert f'<a href="/ra/audit/?run={run.pk}">#{run.pk}</a>' in console


def test_with_a_broker_the_officer_is_told_it_runs_and_where_to_follow_it(
    admin_officer, three, above, queued
):
    client = client_for(admin_officer)
    response = confirm(client, [c.pk for c in three], reason="keyCompromise", count="3")

    assert response.status_code == 302
    assert statuses(three) == ["valid"] * 3  # the worker has not run yet
    run = events(bulk_revoke.QUEUED)[0].pk
    assert the_run().pk == run
    assert [(m.args, m.task_id) for m in queued] == [((run,), the_run().claim)]
    message = shown(response)
    assert message == [
        "Revoking 3 certificates (key compromise) in the background, 50 at a time; skipped 0 "
        '(already revoked or expired). The <a href="/ra/#bulk-revocations">RA console</a> '
        f'shows how far it has got, and the <a href="/ra/audit/?run={run}">audit trail</a> '
        "has each batch. Should it stall or stop early, resume it there: it revokes what is "
        "left."
    ]

    listing = client.get(CERTIFICATES).content.decode()
    assert f'<a href="/ra/audit/?run={run}">audit trail</a>' in listing
    audit = client.get(f"/ra/audit/?run={run}")
    assert [e.action for e in audit.context["events"]] == [bulk_revoke.QUEUED]

    outcome = worker(queued[0])

    assert statuses(three) == ["revoked"] * 3
    assert outcome == {
        "run": run,
        "state": "done",
        "revoked": 3,
        "skipped": 0,
        "failed": 0,
        "not_reached": 0,
    }
    assert [e.outcome for e in events(bulk_revoke.DONE)] == ["success"]


def test_with_the_broker_down_nothing_is_revoked_and_the_officer_is_told(
    admin_officer, three, above, monkeypatch, caplog, settings
):
    settings.CELERY_TASK_ALWAYS_EAGER = False  # a broker is configured, and down

    def broker_down(*args, **options):  # type: ignore[no-untyped-def]
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(tasks.certificates_revoke_task, "apply_async", broker_down)

    response = confirm(client_for(admin_officer), [c.pk for c in three], count="3")

    assert response.status_code == 302
    assert statuses(three) == ["valid"] * 3
    assert shown(response) == [
        "Nothing revoked: the revocation of 3 certificates could not be handed to the "
        "background worker. Try again in a moment."
    ]
    assert "Could not queue bulk revocation" in caplog.text
    (done,) = events(bulk_revoke.DONE)
    assert (done.outcome, done.detail["not_reached"]) == ("failure", 3)
    run = the_run()
    assert (run.state, run.error) == ("stopped", "It could not be queued (is the broker down?).")


def test_those_revoked_or_expired_by_the_time_their_batch_comes_are_skipped(
    admin_officer, three, template, colleague, above, queued
):
    fourth = issue(colleague, template("smime-dual-use"), new_key())
    Certificate.objects.filter(pk=fourth.pk).update(
        status="revoked", revoked_at=timezone.now(), revocation_reason="superseded"
    )
    selection = [c.pk for c in [*three, fourth]]
    confirm(client_for(admin_officer), selection, count="3")
    services.certificate_revoke(certificate=three[1], reason="privilegeWithdrawn")

    outcome = worker(queued[0])

    assert statuses(three) == ["revoked"] * 3
    assert Certificate.objects.get(pk=three[1].pk).revocation_reason == "privilegeWithdrawn"
    assert (outcome["revoked"], outcome["skipped"]) == (2, 2)
    (done,) = events(bulk_revoke.DONE)
    assert (done.detail["revoked"], done.detail["skipped"]) == (2, 2)


def test_a_failure_stops_the_run_keeps_earlier_batches_and_choosing_it_again_finishes(
    admin_officer, three, template, colleague, above, monkeypatch, caplog
):
    """Batches of two: the second fails and is rolled back whole; the officer is told,
    the log says why; the same selection chosen again revokes what is left (resuming the
    run does too: test_bulk_revoke_resume.py)."""
    monkeypatch.setattr(bulk_revoke, "BATCH", 2)
    five = [*three, *(issue(colleague, template("smime-signing"), new_key()) for _ in range(2))]
    client = client_for(admin_officer)

    with revocation_fails(five[2], RuntimeError("database gone")):
        response = confirm(client, [c.pk for c in five], count="5")

    assert statuses(five) == ["revoked", "revoked", "valid", "valid", "valid"]
    assert shown(response)[0].startswith("Revoked 2 certificates (superseded); skipped 0")
    (start,) = events(bulk_revoke.QUEUED)
    assert shown(response)[-1] == (
        "Stopped by an error (RuntimeError); the log has the details. 3 certificates not "
        f'reached: resume run #{start.pk} on the <a href="/ra/#bulk-revocations">RA '
        "console</a> to revoke them."
    )
    assert f"Bulk revocation {start.pk} stopped after 2 certificates" in caplog.text
    assert "RuntimeError: database gone" in caplog.text  # with its traceback
    (done,) = events(bulk_revoke.DONE)
    assert done.outcome == "failure"
    assert (done.detail["revoked"], done.detail["not_reached"]) == (2, 3)
    assert len(events(bulk_revoke.BATCH_DONE)) == 1

    again = confirm(client, [c.pk for c in five], count="3")

    assert statuses(five) == ["revoked"] * 5
    assert shown(again)[-1].startswith("Revoked 3 certificates (superseded); skipped 2")


def test_a_worker_revokes_for_a_while_then_queues_the_rest(
    admin_officer, three, above, queued, monkeypatch
):
    monkeypatch.setattr(bulk_revoke, "BATCH", 2)
    monkeypatch.setattr(bulk_revoke, "RUN_SECONDS", 0)  # one batch, then the rest
    confirm(client_for(admin_officer), [c.pk for c in three], count="3")

    first = worker(queued[0])

    assert statuses(three) == ["revoked", "revoked", "valid"]
    run = the_run()
    assert (first["state"], first["not_reached"]) == ("queued", 1)
    assert (run.position, run.claim) == (2, queued[1].task_id)
    assert queued[1].args == (run.pk,)  # the same run, a new message
    assert queued[1].task_id != queued[0].task_id
    assert events(bulk_revoke.DONE) == []
    assert worker(queued[0]) is None  # the first message, given again: no longer the run's

    worker(queued[1])

    assert statuses(three) == ["revoked"] * 3
    assert [e.detail["revoked"] for e in events(bulk_revoke.DONE)] == [3]


def test_a_batch_cut_off_at_the_time_limit_is_queued_again_with_the_rest(
    admin_officer, three, above, queued, monkeypatch
):
    revoke = services.certificate_revoke

    def time_is_up(*, certificate, **options):  # type: ignore[no-untyped-def]
        if certificate.pk == three[1].pk:
            raise SoftTimeLimitExceeded()
        return revoke(certificate=certificate, **options)

    confirm(client_for(admin_officer), [c.pk for c in three], count="3")
    monkeypatch.setattr(services, "certificate_revoke", time_is_up)

    worker(queued[0])

    assert statuses(three) == ["valid"] * 3  # the batch rolled back
    assert the_run().position == 0  # with its place: queued again, with the rest
    assert queued[1].args == queued[0].args
    monkeypatch.setattr(services, "certificate_revoke", revoke)
    worker(queued[1])
    assert statuses(three) == ["revoked"] * 3


def test_an_invalidity_date_the_service_refuses_is_shown_before_anything_is_queued(
    admin_officer, three, above, queued
):
    later = timezone.localtime() + timedelta(days=2)

    response = confirm(
        client_for(admin_officer),
        [c.pk for c in three],
        reason="keyCompromise",
        count="3",
        invalidity_date=f"{later:%Y-%m-%dT%H:%M}",
    )

    assert response.status_code == 400
    assert "cannot be in the future" in " ".join(response.context["form"].errors["invalidity_date"])
    assert queued == []
    assert not AuditEvent.objects.filter(action__startswith="certificate.bulk_revoke").exists()
    assert not BulkRevocationRun.objects.exists()


def test_a_key_compromise_in_the_background_revokes_the_keys_other_certificates(
    admin_officer, hierarchy, template, employee, colleague, above, queued
):
    key = new_key()
    selected = [issue(employee, template("smime-signing"), key)] + [
        issue(colleague, template(slug), new_key()) for slug in ("smime-signing", "smime-dual-use")
    ]
    other = issue(employee, template("smime-dual-use"), key)  # same key, not selected
    Certificate.objects.filter(pk=other.pk).update(
        status="revoked", revoked_at=timezone.now(), revocation_reason="superseded"
    )
    confirm(client_for(admin_officer), [c.pk for c in selected], reason="keyCompromise", count="3")

    worker(queued[0])

    assert statuses(selected) == ["revoked"] * 3
    assert Certificate.objects.get(pk=other.pk).revocation_reason == "keyCompromise"


# --- who may, in the background -------------------------------------------------------


def test_staff_without_the_revoke_permission_queue_nothing(viewer, three, settings, queued):
    settings.PKIPORTAL_ADMIN_REVOKE_INLINE_MAX = 0

    response = confirm(client_for(viewer), [c.pk for c in three], count="3")

    assert response.status_code == 200  # the list again: "No action selected"
    assert queued == []
    assert statuses(three) == ["valid"] * 3
    assert not AuditEvent.objects.filter(action__startswith="certificate.bulk_revoke").exists()
    assert not BulkRevocationRun.objects.exists()


def test_an_officer_who_is_not_staff_queues_nothing(officer, three, settings, queued):
    settings.PKIPORTAL_ADMIN_REVOKE_INLINE_MAX = 0

    response = confirm(client_for(officer), [three[0].pk])

    assert response["Location"].startswith("/admin/login/")
    assert queued == []
    assert statuses(three) == ["valid"] * 3


@pytest.mark.parametrize(
    "loses",
    [
        lambda user: user.groups.clear(),  # no longer an RA officer
        lambda user: type(user).objects.filter(pk=user.pk).update(is_staff=False),
        lambda user: type(user).objects.filter(pk=user.pk).update(is_active=False),
        lambda user: user.user_permissions.clear(),  # may no longer view certificates
    ],
    ids=["officer", "staff", "active", "view"],
)
def test_the_task_checks_the_officer_again_and_stops_if_they_lost_the_right(
    admin_officer, three, above, queued, loses
):
    confirm(client_for(admin_officer), [c.pk for c in three], count="3")
    loses(admin_officer)

    outcome = worker(queued[0])

    assert statuses(three) == ["valid"] * 3
    assert outcome["state"] == "stopped"
    assert the_run().error == "olivia may no longer revoke certificates from the admin."
    (done,) = events(bulk_revoke.DONE)
    assert (done.outcome, done.detail["not_reached"]) == ("failure", 3)
    assert not events("certificate.revoke")


def test_a_superuser_queues_and_the_task_revokes(admin_user, three, above, queued):
    confirm(client_for(admin_user), [c.pk for c in three], count="3")

    worker(queued[0])

    assert statuses(three) == ["revoked"] * 3
    assert {e.actor for e in events("certificate.revoke")} == {admin_user}


def test_a_message_from_before_the_run_rows_is_logged_and_not_continued(three, caplog):
    """Queued before the upgrade, it carried the selection itself and names no row."""
    old = {"ids": [c.pk for c in three], "reason": "superseded", "actor_id": 1, "run_id": 7}

    assert deliver(tasks.certificates_revoke_task, Message((old,), "before-0039")) is None

    assert statuses(three) == ["valid"] * 3
    assert "Bulk revocation 7: a message from before the upgrade, not continued" in caplog.text
