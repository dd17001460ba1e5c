"""Resuming a bulk revocation from the RA console: a run whose worker died or whose message
was dropped (it stalls: no batch for STALL_MINUTES), or one an error stopped, goes on from
the selection its row keeps. For whom the admin's action serves, checked again; what is
already revoked is skipped; of two resumes at once one goes on, and a worker still on the
old message stops at its next batch."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
import time_machine

from django.contrib.auth.models import Group
from django.test import Client

from enrollment import bulk_revoke, services, tasks
from enrollment.exceptions import InvalidState
from enrollment.models import AuditEvent, BulkRevocationRun, Certificate
from tests.conftest import client_for
from tests.enrollment.test_compromise_concurrency import overlap
from tests.enrollment.test_request_concurrency import holding
from tests.enrollment.tools import (
    as_staff,
    deliver,
    issue,
    keep_messages,
    new_key,
    revocation_fails,
)
from tests.factories import UserFactory
from tests.markers import needs_row_locks
from tests.second_factor import verified_login

pytestmark = pytest.mark.django_db

ADDRESS = "192.0.2.77"
STALLED = timedelta(minutes=bulk_revoke.STALL_MINUTES)


@pytest.fixture
def admin_officer(officer):
    """An officer who may use the admin's action (staff, may view certificates there)."""
    return as_staff(officer, "view_certificate")


@pytest.fixture
def five(hierarchy, template, employee, colleague):
    """Five valid certificates: three batches of two."""
    return [issue(employee, template("smime-signing"), new_key()) for _ in range(3)] + [
        issue(colleague, template("smime-signing"), new_key()) for _ in range(2)
    ]


@pytest.fixture(autouse=True)
def batches_of_two(monkeypatch):
    monkeypatch.setattr(bulk_revoke, "BATCH", 2)


@pytest.fixture
def dropped(admin_officer, five, monkeypatch):
    """A run whose worker did one batch and handed the rest to a message that never ran
    (dropped after three worker deaths, or lost with the broker): its heartbeat stops."""
    run = bulk_revoke.bulk_revoke_start(
        ids=[c.pk for c in five], reason="superseded", actor=admin_officer
    )
    with monkeypatch.context() as patch:
        lost = keep_messages(patch, tasks.certificates_revoke_task)
        bulk_revoke.bulk_revoke_work(run.pk, claim=run.claim, seconds=0)
    assert len(lost) == 1
    run.refresh_from_db()
    assert (run.state, run.position, run.claim) == ("queued", 2, lost[0].task_id)
    return run


def later(run, by: timedelta = STALLED):
    """The clock ``by`` after the run's last heartbeat (by default: it has just stalled)."""
    return time_machine.travel(run.heartbeat_at + by, tick=False)


def resume(client, run, **data):
    return client.post(
        f"/ra/bulk-revocations/{run.pk}/resume/", {"confirm": "on", **data}, REMOTE_ADDR=ADDRESS
    )


def statuses(certificates) -> list[str]:
    return [Certificate.objects.get(pk=c.pk).status for c in certificates]


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("pk"))


def panel(client) -> str:
    text = client.get("/ra/").content.decode()
    section = text.split('id="bulk-revocations"', 1)[1].split("</section>", 1)[0]
    return " ".join(section.split())


# --- a stalled run --------------------------------------------------------------------


def test_a_dropped_run_stalls_ten_minutes_after_its_last_batch_and_not_before(
    dropped, admin_officer
):
    client = client_for(admin_officer)

    with later(dropped, STALLED - timedelta(seconds=1)):
        running = panel(client)
        refused = resume(client, dropped)
    with later(dropped):
        stalled = panel(client)

    assert "bulk-running" in running
    assert "Resume" not in running
    assert refused.status_code == 409
    assert f"Bulk revocation #{dropped.pk} is running or has finished" in refused.content.decode()
    assert "bulk-stalled" in stalled
    assert "2 of 5 revoked (0 skipped, 0 failed)" in stalled
    assert f'action="/ra/bulk-revocations/{dropped.pk}/resume/"' in stalled
    assert "Resume: revoke the 3 left" in stalled
    assert events(bulk_revoke.RESUMED) == []


def test_resuming_a_stalled_run_finishes_it_skipping_what_is_revoked(dropped, admin_officer, five):
    """Without a broker (the demo) the task runs in the resume's request, to the end."""
    services.certificate_revoke(certificate=five[3], reason="keyCompromise")  # meanwhile

    with later(dropped):
        response = resume(client := client_for(admin_officer), dropped)

    assert response.status_code == 302
    assert response["Location"] == "/ra/#bulk-revocations"
    assert statuses(five) == ["revoked"] * 5
    assert Certificate.objects.get(pk=five[3].pk).revocation_reason == "keyCompromise"
    # Each revoked once: two by the first worker, one by someone, two after the resume.
    assert len(events("certificate.revoke")) == 5
    dropped.refresh_from_db()
    assert (dropped.state, dropped.position, dropped.resumes) == ("done", 5, 1)
    assert (dropped.revoked, dropped.skipped, dropped.failed) == (4, 1, 0)
    (resumed,) = events(bulk_revoke.RESUMED)
    assert (resumed.actor, resumed.source_address) == (admin_officer, ADDRESS)
    assert resumed.detail == {"run": dropped.pk, "resumes": 1, "done": 2, "of": 5}
    (done,) = events(bulk_revoke.DONE)
    assert (done.outcome, done.detail["revoked"], done.detail["not_reached"]) == ("success", 4, 0)
    follow = client.get(response["Location"])
    assert [str(m) for m in follow.context["messages"]] == [
        f"Bulk revocation #{dropped.pk} resumed and finished: 4 of 5 revoked in all."
    ]
    audit = client.get(f"/ra/audit/?run={dropped.pk}").context["events"]
    assert [e.action for e in audit] == [
        bulk_revoke.DONE,
        bulk_revoke.BATCH_DONE,
        bulk_revoke.BATCH_DONE,
        bulk_revoke.RESUMED,
        bulk_revoke.BATCH_DONE,
        bulk_revoke.QUEUED,
    ]


def test_with_a_broker_the_resume_queues_the_run_number_alone(
    dropped, admin_officer, five, settings, monkeypatch
):
    """The message is the run's number under a new id (the run's claim): ~700 KB of ids
    for 100,000 certificates used to travel in it. The dropped message, should it come
    back after all, no longer names the run and does nothing."""
    settings.CELERY_TASK_ALWAYS_EAGER = False
    queued = keep_messages(monkeypatch, tasks.certificates_revoke_task)
    old_claim = dropped.claim

    client = client_for(admin_officer)
    with later(dropped):
        response = resume(client, dropped)

    dropped.refresh_from_db()
    (message,) = queued
    assert message.args == (dropped.pk,)
    assert len(json.dumps(message.args)) < 20
    assert message.task_id == dropped.claim != old_claim
    assert statuses(five) == ["revoked", "revoked", "valid", "valid", "valid"]
    follow = client.get(response["Location"])
    assert [str(m) for m in follow.context["messages"]] == [
        f"Bulk revocation #{dropped.pk} resumed: the 3 certificates left are revoked in the "
        "background, 2 at a time."
    ]

    assert deliver(tasks.certificates_revoke_task, type(message)((dropped.pk,), old_claim)) is None
    assert statuses(five)[2:] == ["valid"] * 3
    outcome = deliver(tasks.certificates_revoke_task, message)

    assert outcome["state"] == "done"
    assert statuses(five) == ["revoked"] * 5


def test_with_the_broker_down_the_resumed_run_is_stopped_and_the_officer_told(
    dropped, admin_officer, settings, monkeypatch
):
    settings.CELERY_TASK_ALWAYS_EAGER = False

    def broker_down(*args, **options):  # type: ignore[no-untyped-def]
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(tasks.certificates_revoke_task, "apply_async", broker_down)

    client = client_for(admin_officer)
    with later(dropped):
        response = resume(client, dropped)

    dropped.refresh_from_db()
    assert (dropped.state, dropped.error) == (
        "stopped",
        "It could not be queued (is the broker down?).",
    )
    follow = client.get(response["Location"])
    assert [str(m) for m in follow.context["messages"]] == [
        f"Bulk revocation #{dropped.pk} could not be handed to the background worker (is the "
        "broker down?): nothing more was revoked. Try again in a moment."
    ]


def test_a_message_given_back_after_its_worker_died_goes_on_where_the_row_says(
    admin_officer, five, monkeypatch, settings
):
    """A worker killed mid-run: the broker hands the same message (same id) out again,
    and it is still the run's, so it goes on from the last committed batch."""
    settings.CELERY_TASK_ALWAYS_EAGER = False
    queued = keep_messages(monkeypatch, tasks.certificates_revoke_task)
    run = bulk_revoke.bulk_revoke_start(
        ids=[c.pk for c in five], reason="superseded", actor=admin_officer
    )
    bulk_revoke.bulk_revoke_queue(run)
    # Nothing in the worker survives SIGKILL.
    with revocation_fails(five[2], SystemExit("SIGKILL")), pytest.raises(SystemExit):
        deliver(tasks.certificates_revoke_task, queued[0])
    run.refresh_from_db()
    assert (run.state, run.position) == ("running", 2)

    deliver(tasks.certificates_revoke_task, queued[0])

    run.refresh_from_db()
    assert (run.state, run.revoked, run.batches) == ("done", 5, 3)
    assert len(events("certificate.revoke")) == 5


def test_a_worker_on_the_old_message_stops_at_its_next_batch(admin_officer, five, monkeypatch):
    """A worker slow enough to be taken for dead goes on after the run was resumed: the
    run's row no longer names its message, so it stops before its next batch's first
    revocation, and only the resumed message finishes the run."""
    run = bulk_revoke.bulk_revoke_start(
        ids=[c.pk for c in five], reason="superseded", actor=admin_officer
    )
    account = bulk_revoke._actor
    checks = []

    def resumed_after_the_first_batch(row):  # type: ignore[no-untyped-def]
        checks.append(row.position)
        if len(checks) == 2:  # as if resumed by another officer meanwhile
            BulkRevocationRun.objects.filter(pk=row.pk).update(claim="resumed", state="queued")
        return account(row)

    monkeypatch.setattr(bulk_revoke, "_actor", resumed_after_the_first_batch)

    bulk_revoke.bulk_revoke_work(run.pk, claim=run.claim)

    run.refresh_from_db()
    assert statuses(five) == ["revoked", "revoked", "valid", "valid", "valid"]
    assert (run.state, run.position, run.claim) == ("queued", 2, "resumed")
    assert events(bulk_revoke.DONE) == []
    bulk_revoke.bulk_revoke_work(run.pk, claim="resumed")
    assert statuses(five) == ["revoked"] * 5


# --- a stopped run --------------------------------------------------------------------


def test_a_run_stopped_by_a_lost_right_is_resumed_in_the_resuming_officers_name(
    admin_officer, second_officer, five
):
    run = bulk_revoke.bulk_revoke_start(
        ids=[c.pk for c in five], reason="superseded", actor=admin_officer
    )
    admin_officer.groups.clear()  # olivia is no longer an RA officer
    bulk_revoke.bulk_revoke_work(run.pk, claim=run.claim)
    run.refresh_from_db()
    assert (run.state, run.position) == ("stopped", 0)
    other = as_staff(second_officer, "view_certificate")
    client = client_for(other)
    assert "Resume: revoke the 5 left" in panel(client)  # stopped: at once, no waiting

    response = resume(client, run)

    assert response.status_code == 302
    assert statuses(five) == ["revoked"] * 5
    assert {e.actor for e in events("certificate.revoke")} == {other}
    run.refresh_from_db()
    assert (run.state, run.error, run.started_by, run.actor) == ("done", "", admin_officer, other)
    assert events(bulk_revoke.RESUMED)[0].detail["stopped_by"] == (
        "olivia may no longer revoke certificates from the admin."
    )
    text = panel(client)
    assert '<td data-label="By">olivia<br><span class="muted">resumed by oscar</span>' in text


def test_an_error_stopped_run_is_resumed_at_once(admin_officer, five):
    with revocation_fails(five[2], RuntimeError("database gone")):
        run = bulk_revoke.bulk_revoke_start(
            ids=[c.pk for c in five], reason="superseded", actor=admin_officer
        )
        bulk_revoke.bulk_revoke_work(run.pk, claim=run.claim)

    response = resume(client_for(admin_officer), run)

    assert response.status_code == 302
    assert statuses(five) == ["revoked"] * 5
    assert [e.outcome for e in events(bulk_revoke.DONE)] == ["failure", "success"]


def test_a_stopped_then_resumed_run_reads_stopped_resumed_finished_after_resume(
    admin_officer, second_officer, five
):
    """Two .done events for one run read as two ends: the first says it stopped, the
    last that it finished after a resume, and by whom the run was started."""
    with revocation_fails(five[2], RuntimeError("database gone")):
        run = bulk_revoke.bulk_revoke_start(
            ids=[c.pk for c in five], reason="superseded", actor=admin_officer
        )
        bulk_revoke.bulk_revoke_work(run.pk, claim=run.claim)
    other = as_staff(second_officer, "view_certificate")
    client = client_for(other)

    assert resume(client, run).status_code == 302

    stopped, finished = events(bulk_revoke.DONE)
    (resumed,) = events(bulk_revoke.RESUMED)
    assert (stopped.outcome, stopped.actor, stopped.detail["state"]) == (
        "failure",
        admin_officer,
        "stopped",
    )
    assert "after_resume" not in stopped.detail
    assert resumed.actor == other
    assert resumed.detail["stopped_by"].startswith("Stopped by an error (RuntimeError)")
    assert (finished.outcome, finished.actor) == ("success", other)
    assert finished.detail["state"] == "done"
    assert (finished.detail["after_resume"], finished.detail["started_by"]) == (1, "olivia")
    trail = client.get(f"/ra/audit/?run={run.pk}").content.decode()
    assert "state=stopped" in trail
    # (jsonb orders the keys its own way: each on its own.)
    for shown in ("state=stopped", "state=done", "after_resume=1", "started_by=olivia"):
        assert shown in trail
    # The console shows the run once, in its final state.
    text = panel(client)
    assert text.count(f'id="bulk-run-{run.pk}"') == 1
    assert '<span class="badge bulk-finished">Finished</span>' in text
    assert "Stopped" not in text
    assert "resumed by oscar" in text


# --- what it refuses ------------------------------------------------------------------


def test_a_finished_run_is_not_resumed(admin_officer, five):
    run = bulk_revoke.bulk_revoke_start(ids=[five[0].pk], reason="superseded", actor=admin_officer)
    bulk_revoke.bulk_revoke_work(run.pk, claim=run.claim)

    with later(run, timedelta(days=1)):
        response = resume(client_for(admin_officer), run)

    assert response.status_code == 409
    assert "is running or has finished: nothing to resume" in response.content.decode()
    assert events(bulk_revoke.RESUMED) == []


def test_without_i_am_sure_nothing_is_resumed(dropped, admin_officer):
    with later(dropped):
        response = resume(client_for(admin_officer), dropped, confirm="")
        text = " ".join(response.content.decode().split())

    assert response.status_code == 400
    assert "Tick “I am sure” to resume it." in text
    assert f'aria-describedby="resume-errors-{dropped.pk}" autofocus' in text
    assert BulkRevocationRun.objects.get(pk=dropped.pk).resumes == 0
    assert events(bulk_revoke.RESUMED) == []


def test_an_unknown_run_is_not_found(admin_officer, db):
    assert resume(client_for(admin_officer), BulkRevocationRun(pk=999999)).status_code == 404


def test_it_takes_a_post(dropped, admin_officer):
    with later(dropped):
        response = client_for(admin_officer).get(f"/ra/bulk-revocations/{dropped.pk}/resume/")

    assert response.status_code == 405
    assert BulkRevocationRun.objects.get(pk=dropped.pk).resumes == 0


def test_it_needs_the_csrf_token(dropped, admin_officer):
    client = Client(enforce_csrf_checks=True)
    verified_login(client, admin_officer)

    with later(dropped):
        response = resume(client, dropped)

    assert response.status_code == 403
    assert BulkRevocationRun.objects.get(pk=dropped.pk).resumes == 0


# --- who may --------------------------------------------------------------------------


@pytest.fixture
def officer_outside_the_admin(db):
    """An RA officer who is no staff: the console is theirs, the admin's action is not."""
    user = UserFactory(username="otto")
    user.groups.add(Group.objects.get_or_create(name="RA officers")[0])
    return user


@pytest.fixture
def officer_without_the_permission(db):
    """Staff and an RA officer, but may not view certificates in the admin."""
    user = as_staff(UserFactory(username="owen"))
    user.groups.add(Group.objects.get_or_create(name="RA officers")[0])
    return user


@pytest.fixture
def auditor(db):
    """Staff who may view certificates in the admin, but no RA officer."""
    return as_staff(UserFactory(username="audrey"), "view_certificate", "view_auditevent")


@pytest.mark.parametrize(
    ("who", "status"),
    [
        ("employee", 403),
        ("auditor", 403),
        ("officer_outside_the_admin", 403),
        ("officer_without_the_permission", 403),
    ],
)
def test_who_may_not_resume_a_run(request, dropped, who, status):
    with later(dropped):
        response = resume(client_for(request.getfixturevalue(who)), dropped)

    assert response.status_code == status
    dropped.refresh_from_db()
    assert (dropped.state, dropped.resumes, dropped.position) == ("queued", 0, 2)
    assert events(bulk_revoke.RESUMED) == []


def test_anonymous_visitors_are_sent_to_sign_in(client, dropped):
    with later(dropped):
        response = resume(client, dropped)

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert BulkRevocationRun.objects.get(pk=dropped.pk).resumes == 0


@pytest.mark.parametrize("who", ["officer_outside_the_admin", "officer_without_the_permission"])
def test_officers_who_may_not_resume_see_the_run_but_no_resume_button(request, dropped, who):
    with later(dropped):
        text = panel(client_for(request.getfixturevalue(who)))

    assert "bulk-stalled" in text
    assert "/resume/" not in text
    assert "An officer who may revoke certificates in the admin can resume it." in text


@pytest.mark.parametrize("who", ["admin_officer", "admin_user", "staff_officer"])
def test_officers_in_the_admin_and_superusers_resume_it(request, dropped, five, who):
    if who == "staff_officer":
        user = as_staff(request.getfixturevalue("second_officer"), "change_certificate")
    else:
        user = request.getfixturevalue(who)

    with later(dropped):
        response = resume(client_for(user), dropped)

    assert response.status_code == 302
    assert statuses(five) == ["revoked"] * 5
    (resumed,) = events(bulk_revoke.RESUMED)
    assert resumed.actor == user


def test_the_service_checks_the_right_too(dropped, officer_outside_the_admin):
    from enrollment.exceptions import NotPermitted

    with later(dropped), pytest.raises(NotPermitted):
        bulk_revoke.bulk_revoke_resume(run=dropped, actor=officer_outside_the_admin)


# --- two resumes at once --------------------------------------------------------------


@needs_row_locks
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_resumes_at_once_resume_it_once(dropped, admin_officer, admin_user):
    """Two officers press Resume together, each request on its own connection: the first
    holds the run's row until it commits; the second skips the locked row, so it finds no
    run to resume and is refused at once: one message, one .resumed."""
    done, release = threading.Event(), threading.Event()

    def first() -> BulkRevocationRun:
        return bulk_revoke.bulk_revoke_resume(run=dropped, actor=admin_officer)

    def second() -> BulkRevocationRun:
        return bulk_revoke.bulk_revoke_resume(run=dropped, actor=admin_user)

    with later(dropped):
        one, two, waited = overlap(holding(first, done, release), done, release, second)

    assert "error" not in one, one
    assert not waited  # refused while the first still held the row
    assert isinstance(two.get("error"), InvalidState), two
    run = BulkRevocationRun.objects.get(pk=dropped.pk)
    assert (run.resumes, run.actor, run.claim) == (1, admin_officer, one["value"].claim)
    assert [e.actor for e in events(bulk_revoke.RESUMED)] == [admin_officer]
    # Once the first has committed, the run is queued with a fresh heartbeat: not stalled.
    with later(dropped), pytest.raises(InvalidState):
        bulk_revoke.bulk_revoke_resume(run=dropped, actor=admin_user)


@needs_row_locks
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_batch_stuck_past_the_stall_time_is_not_resumed_under_it(dropped, admin_officer):
    """A batch holds the run's row from its start to its commit: one that waits on locks
    longer than the stall time looks stalled, but a resume then is refused at once (the
    officer's request does not hang on the row), and the batch's worker goes on."""
    done, release = threading.Event(), threading.Event()

    def batch_in_progress() -> None:
        BulkRevocationRun.objects.select_for_update().filter(pk=dropped.pk).get()

    with later(dropped):
        stuck, refused, waited = overlap(
            holding(batch_in_progress, done, release),
            done,
            release,
            lambda: bulk_revoke.bulk_revoke_resume(run=dropped, actor=admin_officer),
        )

    assert "error" not in stuck, stuck
    assert not waited
    assert isinstance(refused.get("error"), InvalidState), refused
    assert BulkRevocationRun.objects.get(pk=dropped.pk).resumes == 0
