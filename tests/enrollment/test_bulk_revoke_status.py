"""The RA console's "Bulk revocations": each run of the admin's "Revoke selected
certificates…" of the last week, its progress and state read from its row (the heartbeat
tells a stalled one), linked to the audit trail filtered to that run; for RA officers
only. Resuming a run: test_bulk_revoke_resume.py."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import time_machine

from django.contrib.auth.models import Group
from django.utils import timezone

from enrollment import bulk_revoke, services, tasks
from enrollment.exceptions import PolicyViolation
from enrollment.models import AuditEvent, BulkRevocationRun
from tests.conftest import client_for
from tests.enrollment.tools import as_staff, issue, keep_messages, new_key, revocation_fails
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_officer(officer):
    """An officer who may use the admin's action (staff, may view certificates there)."""
    return as_staff(officer, "view_certificate")


@pytest.fixture
def certificates(hierarchy, template, employee, colleague):
    """Three valid certificates, revoked two to a batch."""
    return [issue(owner, template("smime-signing"), new_key()) for owner in (employee,) * 2] + [
        issue(colleague, template("smime-signing"), new_key())
    ]


@pytest.fixture(autouse=True)
def batches_of_two(monkeypatch):
    monkeypatch.setattr(bulk_revoke, "BATCH", 2)


@pytest.fixture(autouse=True)
def queued(monkeypatch):
    """The task's messages, kept as a broker would: a run handed on is left there."""
    return keep_messages(monkeypatch, tasks.certificates_revoke_task)


def start(actor, certificates, *, skipped: int = 0, reason: str = "superseded"):
    """A confirmed selection recorded for the task (its row, its .queued event)."""
    return bulk_revoke.bulk_revoke_start(
        ids=[c.pk for c in certificates], reason=reason, actor=actor, skipped=skipped
    )


def one_batch(run) -> None:
    """A worker's first batch; it hands the rest to a message nobody takes."""
    bulk_revoke.bulk_revoke_work(run.pk, claim=run.claim, seconds=0)


def to_the_end(run) -> None:
    """What is left, by the message or request the run names now."""
    claim = BulkRevocationRun.objects.values_list("claim", flat=True).get(pk=run.pk)
    bulk_revoke.bulk_revoke_work(run.pk, claim=claim)


def panel(client) -> str:
    """The console's text from the panel's heading to the next section, spaces collapsed."""
    page = client.get("/ra/")
    assert page.status_code == 200
    text = page.content.decode()
    assert 'id="bulk-revocations"' in text
    section = text.split('id="bulk-revocations"', 1)[1].split("</section>", 1)[0]
    return " ".join(section.split())


# --- what it shows --------------------------------------------------------------------


def test_a_running_run_shows_who_when_why_and_how_far_it_has_got(admin_officer, certificates):
    """Queued with one of four already revoked, one batch of two done: running."""
    run = start(admin_officer, certificates, skipped=1, reason="keyCompromise")
    one_batch(run)

    (shown,) = bulk_revoke.bulk_revoke_runs()
    text = panel(client_for(admin_officer))

    assert (shown.run_id, shown.started_by, shown.reason) == (
        run.pk,
        "olivia",
        "Key compromise",
    )
    assert (shown.selected, shown.revoked, shown.skipped, shown.failed) == (4, 2, 1, 0)
    assert shown.state == "running"
    assert f'<a href="/ra/audit/?run={run.pk}">#{run.pk}</a>' in text
    assert "olivia" in text
    assert "Key compromise" in text
    assert "2 of 4 revoked (1 skipped, 0 failed)" in text
    assert '<span class="badge bulk-running">Running</span>' in text
    assert "/resume/" not in text  # nothing to resume


def test_a_run_not_yet_picked_up_by_a_worker_is_running_with_nothing_done(
    admin_officer, certificates
):
    start(admin_officer, certificates)

    text = panel(client_for(admin_officer))

    assert "0 of 3 revoked (0 skipped, 0 failed)" in text
    assert "bulk-running" in text


def test_a_finished_run_shows_its_totals(admin_officer, certificates):
    run = start(admin_officer, certificates)
    one_batch(run)
    services.certificate_revoke(certificate=certificates[2], reason="superseded")  # meanwhile
    to_the_end(run)

    text = panel(client_for(admin_officer))

    assert "2 of 3 revoked (1 skipped, 0 failed)" in text
    assert '<span class="badge bulk-finished">Finished</span>' in text
    assert "/resume/" not in text  # nothing to resume
    # Its end on the audit trail names the state; never resumed, it says nothing of one.
    (done,) = AuditEvent.objects.filter(action=bulk_revoke.DONE)
    assert done.detail["state"] == "done"
    assert "after_resume" not in done.detail


def test_a_run_with_certificates_the_service_refused_finished_with_failures(
    admin_officer, certificates
):
    with revocation_fails(certificates[1], PolicyViolation("Not this one.")):
        to_the_end(start(admin_officer, certificates))

    text = panel(client_for(admin_officer))

    assert "2 of 3 revoked (0 skipped, 1 failed)" in text
    assert '<span class="badge bulk-failures">Finished with failures</span>' in text
    assert "The audit trail names those that could not be revoked" in text
    assert AuditEvent.objects.get(action=bulk_revoke.DONE).detail["state"] == "failed"


def test_a_run_an_error_stopped_shows_the_error_and_what_to_do(admin_officer, certificates):
    with revocation_fails(certificates[2], RuntimeError("database gone")):
        to_the_end(start(admin_officer, certificates))

    text = panel(client_for(admin_officer))

    assert "2 of 3 revoked (0 skipped, 0 failed); 1 not reached" in text
    assert '<span class="badge bulk-stopped">Stopped</span>' in text
    assert "Stopped by an error (RuntimeError); the log has the details." in text
    assert "database gone" not in text  # the log has it, not the page
    assert "I am sure" in text
    assert "Resume: revoke the 1 left" in text
    assert AuditEvent.objects.get(action=bulk_revoke.DONE).detail["state"] == "stopped"


def test_a_run_the_broker_refused_is_stopped_with_nothing_revoked(
    admin_officer, certificates, settings, monkeypatch
):
    settings.CELERY_TASK_ALWAYS_EAGER = False

    def broker_down(*args, **options):  # type: ignore[no-untyped-def]
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(tasks.certificates_revoke_task, "apply_async", broker_down)
    assert bulk_revoke.bulk_revoke_queue(start(admin_officer, certificates)) is None

    text = panel(client_for(admin_officer))

    assert "0 of 3 revoked (0 skipped, 0 failed); 3 not reached" in text
    assert "It could not be queued (is the broker down?)." in text
    assert "Resume: revoke the 3 left" in text


@pytest.mark.parametrize("broker", [True, False], ids=["broker", "inline"])
def test_a_run_without_a_batch_for_ten_minutes_is_stalled(
    admin_officer, certificates, settings, broker
):
    """A worker that died, or a message dropped after three deaths, leaves the row's
    heartbeat at its last batch; so does a request cut off by the web server's timeout
    where tasks run inline: either way a batch takes seconds, not minutes."""
    settings.CELERY_TASK_ALWAYS_EAGER = not broker
    run = start(admin_officer, certificates)
    one_batch(run)
    last = BulkRevocationRun.objects.get(pk=run.pk).heartbeat_at  # the batch's commit
    assert last >= AuditEvent.objects.get(action=bulk_revoke.BATCH_DONE).created_at

    with time_machine.travel(last + timedelta(minutes=9, seconds=59), tick=False):
        before = panel(client_for(admin_officer))
    with time_machine.travel(last + timedelta(minutes=10), tick=False):
        after = panel(client_for(admin_officer))

    assert "bulk-running" in before
    assert "Resume" not in before
    assert "2 of 3 revoked (0 skipped, 0 failed)" in after
    assert "not reached" not in after  # it has not ended: one is left
    assert '<span class="badge bulk-stalled">Stalled</span>' in after
    assert "No batch for 10 minutes." in after
    assert "Resume: revoke the 1 left" in after


def test_a_queued_run_no_worker_took_is_stalled_too(admin_officer, certificates):
    run = start(admin_officer, certificates)
    queued = AuditEvent.objects.get(pk=run.pk).created_at

    with time_machine.travel(queued + timedelta(minutes=11), tick=False):
        (shown,) = bulk_revoke.bulk_revoke_runs()

    assert shown.state == "stalled"


def test_a_finished_run_never_stalls(admin_officer, certificates):
    to_the_end(start(admin_officer, certificates))

    with time_machine.travel(timezone.now() + timedelta(days=2), tick=False):
        (shown,) = bulk_revoke.bulk_revoke_runs()

    assert shown.state == "finished"


def test_it_lists_the_last_weeks_runs_newest_first_each_with_its_own_events(
    admin_officer, admin_user, certificates
):
    with time_machine.travel(timezone.now() - timedelta(days=7, minutes=1), tick=False):
        to_the_end(start(admin_officer, certificates[:1]))  # a week ago: gone
    first = start(admin_officer, certificates[1:2])
    second = start(admin_user, certificates[2:], reason="cessationOfOperation")
    to_the_end(second)  # first: no worker has taken it yet

    shown = bulk_revoke.bulk_revoke_runs()

    assert [(s.run_id, s.started_by, s.reason, s.revoked, s.state) for s in shown] == [
        (second.pk, "root-admin", "Cessation of operation", 1, "finished"),
        (first.pk, "olivia", "Superseded", 0, "running"),
    ]


def test_each_batch_moves_the_heartbeat_and_the_counts_on_the_row(admin_officer, certificates):
    run = start(admin_officer, certificates)
    queued_at = run.heartbeat_at

    with time_machine.travel(queued_at + timedelta(minutes=3), tick=False):
        one_batch(run)
    run.refresh_from_db()

    assert run.heartbeat_at == queued_at + timedelta(minutes=3)
    assert (run.state, run.position, run.revoked, run.batches) == ("queued", 2, 2, 1)
    assert run.finished_at is None
    with time_machine.travel(queued_at + timedelta(minutes=4), tick=False):
        to_the_end(run)
    run.refresh_from_db()
    assert (run.state, run.position, run.revoked, run.batches) == ("done", 3, 3, 2)
    assert run.finished_at == run.heartbeat_at == queued_at + timedelta(minutes=4)


def test_a_run_from_before_the_rows_is_on_the_audit_trail_only(admin_officer, certificates):
    """Upgraded from events alone: no row was made for such a run (its ids were never
    stored), so the console does not list it; its events are still found by number."""
    from enrollment.audit import audit_record

    old = audit_record(action=bulk_revoke.QUEUED, actor=admin_officer, detail={"certificates": 3})
    audit_record(action=bulk_revoke.DONE, actor=admin_officer, detail={"run": old.pk})
    client = client_for(admin_officer)

    assert bulk_revoke.bulk_revoke_runs() == []
    assert "Bulk revocations" not in client.get("/ra/").content.decode()
    found = client.get(f"/ra/audit/?run={old.pk}").context["events"]
    assert [e.action for e in found] == [bulk_revoke.DONE, bulk_revoke.QUEUED]


def test_the_runs_are_read_in_one_query(admin_officer, certificates, django_assert_num_queries):
    to_the_end(start(admin_officer, certificates[:1]))
    one_batch(start(admin_officer, certificates[1:]))

    with django_assert_num_queries(1):
        shown = bulk_revoke.bulk_revoke_runs()

    assert [s.state for s in shown] == ["finished", "finished"]
    one_batch(start(admin_officer, certificates))  # revoked by now: two skipped, one left

    with django_assert_num_queries(1):
        shown = bulk_revoke.bulk_revoke_runs()

    assert [s.state for s in shown] == ["running", "finished", "finished"]
    later = timezone.now() + timedelta(days=8)
    # None started since: nothing more to read.
    with django_assert_num_queries(1), time_machine.travel(later, tick=False):
        assert bulk_revoke.bulk_revoke_runs() == []


# --- a finished run's stored ids -----------------------------------------------------


def ids_of(run) -> list[int]:
    return BulkRevocationRun.objects.values_list("certificate_ids", flat=True).get(pk=run.pk)


def test_a_run_that_finishes_with_every_certificate_done_keeps_its_counts_not_its_ids(
    admin_officer, certificates
):
    run = start(admin_officer, certificates)
    one_batch(run)
    assert ids_of(run) == sorted(c.pk for c in certificates)  # read by each message
    to_the_end(run)
    client = client_for(admin_officer)

    text = panel(client)
    trail = client.get(f"/ra/audit/?run={run.pk}")

    assert ids_of(run) == []
    row = BulkRevocationRun.objects.get(pk=run.pk)
    assert (row.state, row.total, row.selected, row.position, row.revoked) == ("done", 3, 3, 3, 3)
    assert "3 of 3 revoked (0 skipped, 0 failed)" in text
    assert '<span class="badge bulk-finished">Finished</span>' in text
    assert [e.action for e in trail.context["events"]] == [
        bulk_revoke.DONE,
        bulk_revoke.BATCH_DONE,
        bulk_revoke.BATCH_DONE,
        bulk_revoke.QUEUED,
    ]
    # A message given back with the run's last claim finds it ended, and reads no ids.
    assert bulk_revoke.bulk_revoke_work(run.pk, claim=row.claim) is None


def test_a_stopped_run_keeps_its_ids_to_be_resumed_and_drops_them_when_done(
    admin_officer, certificates
):
    with revocation_fails(certificates[2], RuntimeError("database gone")):
        run = start(admin_officer, certificates)
        to_the_end(run)
    assert BulkRevocationRun.objects.get(pk=run.pk).state == "stopped"
    assert ids_of(run) == sorted(c.pk for c in certificates)

    resumed = bulk_revoke.bulk_revoke_resume(run=run, actor=admin_officer)
    bulk_revoke.bulk_revoke_work(run.pk, claim=resumed.claim)

    assert BulkRevocationRun.objects.get(pk=run.pk).state == "done"
    assert ids_of(run) == []
    assert "3 of 3 revoked (0 skipped, 0 failed)" in panel(client_for(admin_officer))


def test_a_run_finished_with_failures_keeps_its_ids(admin_officer, certificates):
    with revocation_fails(certificates[1], PolicyViolation("Not this one.")):
        run = start(admin_officer, certificates)
        to_the_end(run)

    assert BulkRevocationRun.objects.get(pk=run.pk).state == "failed"
    assert ids_of(run) == sorted(c.pk for c in certificates)


# --- the audit trail's run filter -----------------------------------------------------


def test_the_audit_trail_filtered_by_run_shows_that_runs_events_only(admin_officer, certificates):
    first = start(admin_officer, certificates[:2])
    second = start(admin_officer, certificates[2:])
    to_the_end(second)
    to_the_end(first)
    client = client_for(admin_officer)

    shown = client.get(f"/ra/audit/?run={first.pk}")

    assert shown.status_code == 200
    mine = [(e.action, e.detail.get("run")) for e in shown.context["events"]]
    assert mine == [
        (bulk_revoke.DONE, first.pk),
        (bulk_revoke.BATCH_DONE, first.pk),
        (bulk_revoke.QUEUED, None),
    ]
    assert shown.context["events"][-1].pk == first.pk
    exported = client.get(f"/ra/audit/export.jsonl?run={second.pk}")
    lines = b"".join(exported.streaming_content).decode().splitlines()
    assert [json.loads(line)["action"] for line in lines] == [
        bulk_revoke.QUEUED,
        bulk_revoke.BATCH_DONE,
        bulk_revoke.DONE,
    ]


def test_a_run_filter_that_is_not_a_number_shows_nothing_and_says_why(admin_officer):
    page = client_for(admin_officer).get("/ra/audit/?run=1%20OR%201")

    assert list(page.context["events"]) == []
    assert "Enter a whole number." in page.content.decode()


def test_a_run_filter_on_an_event_that_is_not_a_run_finds_nothing(admin_officer, certificates):
    services.certificate_revoke(certificate=certificates[0], reason="superseded")
    event = AuditEvent.objects.get(action="certificate.revoke")

    page = client_for(admin_officer).get(f"/ra/audit/?run={event.pk}")

    assert list(page.context["events"]) == []


# --- who may see it -------------------------------------------------------------------


@pytest.fixture
def agent(db):
    user = UserFactory(username="karl")
    user.groups.add(Group.objects.get_or_create(name="Key recovery agents")[0])
    return user


@pytest.fixture
def auditor(db):
    """Staff who may read the audit trail in the admin: no RA officer."""
    return as_staff(UserFactory(username="audrey"), "view_auditevent")


@pytest.mark.parametrize("who", ["admin_officer", "second_officer", "admin_user"])
def test_officers_and_superusers_see_the_runs(request, who, admin_officer, certificates):
    run = start(admin_officer, certificates)

    text = panel(client_for(request.getfixturevalue(who)))

    assert f"?run={run.pk}" in text


@pytest.mark.parametrize("who", ["employee", "agent", "auditor"])
def test_nobody_else_sees_the_runs_nor_their_events(request, who, admin_officer, certificates):
    run = start(admin_officer, certificates)
    client = client_for(request.getfixturevalue(who))

    for path in ("/ra/", f"/ra/audit/?run={run.pk}"):
        response = client.get(path)
        assert response.status_code == 403, path
        assert "Bulk revocations" not in response.content.decode()


def test_anonymous_visitors_are_sent_to_sign_in(client, admin_officer, certificates):
    run = start(admin_officer, certificates)

    for path in ("/ra/", f"/ra/audit/?run={run.pk}"):
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")
