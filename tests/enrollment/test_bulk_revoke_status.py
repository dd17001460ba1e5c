"""The RA console's "Bulk revocations": each background run of the admin's "Revoke selected
certificates…" of the last week, its progress and state read from its audit events alone,
linked to the audit trail filtered to that run; for RA officers only."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import time_machine

from django.contrib.auth.models import Group
from django.utils import timezone

from enrollment import bulk_revoke, services
from enrollment.exceptions import PolicyViolation
from enrollment.models import AuditEvent, Certificate
from tests.conftest import client_for
from tests.enrollment.tools import as_staff, issue, new_key
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


def start(actor, certificates, *, skipped: int = 0, reason: str = "superseded"):
    """A confirmed selection handed to the task (its .queued event), not yet worked on."""
    return bulk_revoke.bulk_revoke_start(
        ids=[c.pk for c in certificates], reason=reason, actor=actor, skipped=skipped
    )


def one_batch(run) -> None:
    """A worker's first batch, the rest left for later."""
    bulk_revoke.bulk_revoke_continue(run, seconds=0)


def to_the_end(run) -> None:
    bulk_revoke.bulk_revoke_continue(run)
    bulk_revoke.bulk_revoke_finish(run)


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
        run.run_id,
        "olivia",
        "Key compromise",
    )
    assert (shown.selected, shown.revoked, shown.skipped, shown.failed) == (4, 2, 1, 0)
    assert shown.state == "running"
    assert f'<a href="/ra/audit/?run={run.run_id}">#{run.run_id}</a>' in text
    assert "olivia" in text
    assert "Key compromise" in text
    assert "2 of 4 revoked (1 skipped, 0 failed)" in text
    assert '<span class="badge bulk-running">Running</span>' in text
    assert "choose the action again" not in text.lower()


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
    assert "choose the action again" not in text.lower()


def test_a_run_with_certificates_the_service_refused_finished_with_failures(
    admin_officer, certificates, monkeypatch
):
    revoke = services.certificate_revoke

    def refuse_the_second(*, certificate, **options):  # type: ignore[no-untyped-def]
        if certificate.pk == certificates[1].pk:
            raise PolicyViolation("Not this one.")
        return revoke(certificate=certificate, **options)

    monkeypatch.setattr(services, "certificate_revoke", refuse_the_second)
    to_the_end(start(admin_officer, certificates))

    text = panel(client_for(admin_officer))

    assert "2 of 3 revoked (0 skipped, 1 failed)" in text
    assert '<span class="badge bulk-failures">Finished with failures</span>' in text
    assert "The audit trail names those that could not be revoked" in text


def test_a_run_an_error_stopped_shows_the_error_and_what_to_do(
    admin_officer, certificates, monkeypatch
):
    revoke = services.certificate_revoke

    def fail_on_the_third(*, certificate, **options):  # type: ignore[no-untyped-def]
        if certificate.pk == certificates[2].pk:
            raise RuntimeError("database gone")
        return revoke(certificate=certificate, **options)

    monkeypatch.setattr(services, "certificate_revoke", fail_on_the_third)
    to_the_end(start(admin_officer, certificates))

    text = panel(client_for(admin_officer))

    assert "2 of 3 revoked (0 skipped, 0 failed); 1 not reached" in text
    assert '<span class="badge bulk-stopped">Stopped</span>' in text
    assert "Stopped by an error (RuntimeError); the log has the details." in text
    assert "database gone" not in text  # the log has it, not the page
    assert "Choose the action again on the same selection to revoke what is left." in text


def test_a_run_the_broker_refused_is_stopped_with_nothing_revoked(admin_officer, certificates):
    run = start(admin_officer, certificates)
    run.error = "It could not be queued (is the broker down?)."
    bulk_revoke.bulk_revoke_finish(run)

    text = panel(client_for(admin_officer))

    assert "0 of 3 revoked (0 skipped, 0 failed); 3 not reached" in text
    assert "It could not be queued (is the broker down?)." in text


@pytest.mark.parametrize("broker", [True, False], ids=["broker", "inline"])
def test_a_run_without_a_batch_for_ten_minutes_is_possibly_stalled(
    admin_officer, certificates, settings, broker
):
    """A worker that died leaves no .done; so does a request cut off by the web server's
    timeout where tasks run inline: either way a batch takes seconds, not minutes."""
    settings.CELERY_TASK_ALWAYS_EAGER = not broker
    run = start(admin_officer, certificates)
    one_batch(run)
    last = AuditEvent.objects.filter(action=bulk_revoke.BATCH_DONE).get().created_at

    with time_machine.travel(last + timedelta(minutes=9, seconds=59), tick=False):
        before = panel(client_for(admin_officer))
    with time_machine.travel(last + timedelta(minutes=10), tick=False):
        after = panel(client_for(admin_officer))

    assert "bulk-running" in before
    assert "2 of 3 revoked (0 skipped, 0 failed)" in after
    assert '<span class="badge bulk-stalled">Possibly stalled</span>' in after
    assert "No batch for 10 minutes." in after
    assert "Choose the action again on the same selection to finish the rest." in after


def test_a_queued_run_no_worker_took_is_possibly_stalled_too(admin_officer, certificates):
    run = start(admin_officer, certificates)
    queued = AuditEvent.objects.get(pk=run.run_id).created_at

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
    to_the_end(second)
    one_batch(first)

    shown = bulk_revoke.bulk_revoke_runs()

    assert [(s.run_id, s.started_by, s.reason, s.revoked, s.state) for s in shown] == [
        (second.run_id, "root-admin", "Cessation of operation", 1, "finished"),
        (first.run_id, "olivia", "Superseded", 1, "running"),
    ]


def test_a_selection_revoked_in_the_request_is_not_a_run(admin_officer, certificates):
    """Up to PKIPORTAL_ADMIN_REVOKE_INLINE_MAX no run is recorded: nothing to follow."""
    run = bulk_revoke.Run(
        ids=[c.pk for c in certificates], reason="superseded", actor_id=admin_officer.pk, total=3
    )
    bulk_revoke.bulk_revoke_continue(run)

    page = client_for(admin_officer).get("/ra/").content.decode()

    assert Certificate.objects.filter(status="revoked").count() == 3
    assert "Bulk revocations" not in page


def test_the_runs_are_read_in_two_queries(admin_officer, certificates, django_assert_num_queries):
    for selection in (certificates[:1], certificates[1:]):
        run = start(admin_officer, selection)
        one_batch(run)
    to_the_end(run)

    with django_assert_num_queries(2):
        shown = bulk_revoke.bulk_revoke_runs()

    assert [s.state for s in shown] == ["finished", "running"]
    later = timezone.now() + timedelta(days=8)
    # None started since: nothing more to read.
    with django_assert_num_queries(1), time_machine.travel(later, tick=False):
        assert bulk_revoke.bulk_revoke_runs() == []


# --- the audit trail's run filter -----------------------------------------------------


def test_the_audit_trail_filtered_by_run_shows_that_runs_events_only(admin_officer, certificates):
    first = start(admin_officer, certificates[:2])
    second = start(admin_officer, certificates[2:])
    to_the_end(second)
    to_the_end(first)
    client = client_for(admin_officer)

    shown = client.get(f"/ra/audit/?run={first.run_id}")

    assert shown.status_code == 200
    mine = [(e.action, e.detail.get("run")) for e in shown.context["events"]]
    assert mine == [
        (bulk_revoke.DONE, first.run_id),
        (bulk_revoke.BATCH_DONE, first.run_id),
        (bulk_revoke.QUEUED, None),
    ]
    assert shown.context["events"][-1].pk == first.run_id
    exported = client.get(f"/ra/audit/export.jsonl?run={second.run_id}")
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

    assert f"?run={run.run_id}" in text


@pytest.mark.parametrize("who", ["employee", "agent", "auditor"])
def test_nobody_else_sees_the_runs_nor_their_events(request, who, admin_officer, certificates):
    run = start(admin_officer, certificates)
    client = client_for(request.getfixturevalue(who))

    for path in ("/ra/", f"/ra/audit/?run={run.run_id}"):
        response = client.get(path)
        assert response.status_code == 403, path
        assert "Bulk revocations" not in response.content.decode()


def test_anonymous_visitors_are_sent_to_sign_in(client, admin_officer, certificates):
    run = start(admin_officer, certificates)

    for path in ("/ra/", f"/ra/audit/?run={run.run_id}"):
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")
