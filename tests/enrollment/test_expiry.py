"""Expiry notices: 30, 7 and 1 days before, once per threshold; the recovery-agent warning."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine

from django.conf import settings as django_settings
from django.core import mail
from django.utils import timezone

from enrollment import expiry, services
from enrollment.models import AgentExpiryWarning, AuditEvent, ExpiryNotice, KeyRecoveryAgent
from enrollment.tasks import expiry_notices_task, recovery_cleanup_task
from enrollment.x509.keys import KeyAlgorithm
from pkiportal.celery import app

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_pkcs12")]


@pytest.fixture
def kra(quick_kra):
    return quick_kra


def signing_certificate_of(owner, template):
    """A signing certificate of ``owner`` (valid 365 days)."""
    certificate, _bundle = services.certificate_issue_with_server_key(
        template=template("smime-signing"),
        owner=owner,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="Expiring-Key-Lantern-31",
    )
    return certificate


@pytest.fixture
def expiring(hierarchy, template, employee):
    """Alice's signing certificate (valid 365 days)."""
    return signing_certificate_of(employee, template)


@pytest.fixture
def run(task_at):
    """Run the daily task at a moment, with the mail it queues actually sent."""
    return lambda moment: task_at(expiry_notices_task, moment)


def owner_mails(user) -> list[str]:
    return [m.subject for m in mail.outbox if m.to == [user.email]]


def test_each_threshold_mails_the_owner_exactly_once_even_when_run_twice(expiring, employee, run):
    end = expiring.not_after
    moments = {
        "before": end - timedelta(days=31),
        "30": end - timedelta(days=30) + timedelta(hours=1),
        "29": end - timedelta(days=29),
        "7": end - timedelta(days=7) + timedelta(minutes=5),
        "1": end - timedelta(hours=23),
    }

    assert run(moments["before"])["30d"] == 0
    assert owner_mails(employee) == []
    assert run(moments["30"]) == {"30d": 1, "7d": 0, "1d": 0}
    assert run(moments["30"]) == {"30d": 0, "7d": 0, "1d": 0}  # the same day, again
    assert run(moments["29"])["30d"] == 0  # the next day
    assert run(moments["7"])["7d"] == 1
    assert run(moments["7"])["7d"] == 0
    assert run(moments["1"])["1d"] == 1
    assert run(moments["1"])["1d"] == 0

    assert owner_mails(employee) == [
        "Your certificate expires in 30 days",
        "Your certificate expires in 7 days",
        "Your certificate expires in 1 day",
    ]
    assert sorted(ExpiryNotice.objects.values_list("threshold_days", flat=True)) == [1, 7, 30]


def test_the_notice_has_a_renew_link(expiring, employee, run):
    run(expiring.not_after - timedelta(days=6))

    (notice,) = [m for m in mail.outbox if m.to == [employee.email]]
    assert f"https://portal.example.com/certificates/{expiring.pk}/" in notice.body
    assert expiring.not_after.strftime("%Y-%m-%d") in notice.body


def test_a_certificate_first_seen_late_gets_one_notice_not_a_burst(expiring, employee, run):
    """The task did not run for weeks (or the certificate was short-lived)."""
    assert run(expiring.not_after - timedelta(days=5)) == {"30d": 0, "7d": 1, "1d": 0}

    assert owner_mails(employee) == ["Your certificate expires in 5 days"]
    assert run(expiring.not_after - timedelta(days=4))["30d"] == 0


def test_a_notice_already_recorded_is_never_sent_again(expiring, employee, run):
    """The record survives restarts: a second worker, or yesterday's run, already sent it."""
    ExpiryNotice.objects.create(certificate=expiring, threshold_days=30)

    assert run(expiring.not_after - timedelta(days=20))["30d"] == 0
    assert owner_mails(employee) == []


def test_the_database_refuses_a_second_notice_for_a_threshold(expiring):
    from django.db import IntegrityError

    ExpiryNotice.objects.create(certificate=expiring, threshold_days=7)
    with pytest.raises(IntegrityError):
        ExpiryNotice.objects.create(certificate=expiring, threshold_days=7)


def test_revoked_and_expired_certificates_get_no_notice(expiring, employee, run):
    services.certificate_revoke(certificate=expiring, reason="superseded")

    assert run(expiring.not_after - timedelta(days=3))["7d"] == 0
    assert run(expiring.not_after + timedelta(days=1)) == {"30d": 0, "7d": 0, "1d": 0}
    assert owner_mails(employee) == []


def test_officers_get_a_summary(expiring, officer, run):
    run(expiring.not_after - timedelta(days=10))

    (summary,) = [m for m in mail.outbox if m.to == [officer.email]]
    assert summary.subject == "Expiry notices: 1 certificate expires soon"
    assert "Alice Andersson" in summary.body
    assert "Within 30 days" in summary.body
    assert AuditEvent.objects.get(action="expiry.notify").detail == {"30d": 1, "7d": 0, "1d": 0}


@pytest.fixture
def bobs_expiring(hierarchy, template, colleague):
    """Bob's signing certificate: Bob is outside the Sales scope (``sales_scope``)."""
    return signing_certificate_of(colleague, template)


def test_a_scoped_officer_hears_only_of_the_people_the_scope_covers(
    expiring, bobs_expiring, sales_scope, officer, second_officer, run
):
    run(expiring.not_after - timedelta(days=10))

    (scoped,) = [m for m in mail.outbox if m.to == [officer.email]]
    (everyone,) = [m for m in mail.outbox if m.to == [second_officer.email]]
    assert scoped.subject == "Expiry notices: 1 certificate expires soon"
    assert "Alice Andersson" in scoped.body
    assert "Bob" not in scoped.body
    assert "among the people your officer scope (Sales) covers" in scoped.body
    assert everyone.subject == "Expiry notices: 2 certificates expire soon"
    assert "Alice Andersson" in everyone.body
    assert "Bob Brown" in everyone.body
    assert "officer scope" not in everyone.body


def test_a_scoped_officer_none_of_whose_people_expire_gets_no_summary(
    bobs_expiring, sales_scope, officer, second_officer, run
):
    run(bobs_expiring.not_after - timedelta(days=10))

    assert [m for m in mail.outbox if m.to == [officer.email]] == []
    assert [m.subject for m in mail.outbox if m.to == [second_officer.email]] == [
        "Expiry notices: 1 certificate expires soon"
    ]


def test_no_summary_when_nobody_was_told(expiring, officer, run):
    run(expiring.not_after - timedelta(days=100))

    assert mail.outbox == []
    assert not AuditEvent.objects.filter(action="expiry.notify").exists()


def test_the_thresholds_are_configurable(expiring, employee, run, settings):
    settings.PKIPORTAL_EXPIRY_NOTICE_DAYS = [14]

    assert run(expiring.not_after - timedelta(days=13)) == {"14d": 1}


def test_beat_runs_the_tasks_that_exist():
    schedule = django_settings.CELERY_BEAT_SCHEDULE

    assert schedule["expiry-notices"]["task"] == expiry_notices_task.name
    assert schedule["recovery-cleanup"]["task"] == recovery_cleanup_task.name
    app.loader.import_default_modules()
    assert {expiry_notices_task.name, recovery_cleanup_task.name} <= set(app.tasks)


def test_the_cleanup_task_wipes_expired_recoveries(performed):
    later = performed.recovery.download_expires_at + timedelta(minutes=1)

    with time_machine.travel(later, tick=False):
        assert recovery_cleanup_task.delay().get() == 1


# --- the last recovery agent ----------------------------------------------------------


def test_admins_are_warned_once_before_the_last_agent_expires(kra, admin_user, run):
    end = kra.agent.not_after
    run(end - timedelta(days=31))
    assert mail.outbox == []

    run(end - timedelta(days=29))
    run(end - timedelta(days=28))
    run(end - timedelta(days=1))

    warnings = [m for m in mail.outbox if "recovery agent" in m.subject]
    (warning,) = warnings
    assert warning.to == [admin_user.email]
    assert warning.subject == "The last key recovery agent certificate expires soon"
    assert "Test KRA" in warning.body
    assert "/admin/enrollment/keyrecoveryagent/add/" in warning.body
    assert AgentExpiryWarning.objects.get().agent == kra.agent
    assert AuditEvent.objects.filter(action="kra.expiry_warning").count() == 1


def test_no_warning_while_another_agent_lasts_longer(kra, template, admin_user, key_pool):
    KeyRecoveryAgent.objects.filter(pk=kra.agent.pk).update(
        not_after=timezone.now() + timedelta(days=10)
    )
    certificate = services.certificate_issue(
        template=template("smime-dual-use"),
        owner=admin_user,
        public_key=key_pool.get(KeyAlgorithm.RSA_2048, slot=301).public_key(),
    )
    services.kra_register(certificate=certificate.certificate, name="Second KRA")

    assert expiry.agent_expiry_check() is None

    KeyRecoveryAgent.objects.filter(name="Second KRA").update(is_active=False)
    assert expiry.agent_expiry_check() == kra.agent
