"""The audit trail: append-only in the app, tamper-evident in the database."""

from __future__ import annotations

from io import StringIO

import pytest

from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from enrollment import services
from enrollment.audit import audit_chain_breaks, audit_record
from enrollment.models import AuditEvent
from enrollment.x509.keys import KeyAlgorithm

pytestmark = pytest.mark.django_db


@pytest.fixture
def events(hierarchy, template, employee):
    """A real trail: CA creation, a CRL, an issuance and a revocation."""
    certificate, _ = services.certificate_issue_with_server_key(
        template=template("smime-signing"),
        owner=employee,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="a long pkcs12 password",
    )
    services.certificate_revoke(certificate=certificate, reason="keyCompromise", actor=employee)
    return list(AuditEvent.objects.order_by("id"))


def verify() -> str:
    out = StringIO()
    call_command("verify_audit_chain", stdout=out)
    return out.getvalue()


def test_each_event_links_to_the_one_before(events):
    assert len(events) >= 5
    assert events[0].previous_hash == ""
    for before, after in zip(events, events[1:], strict=False):
        assert after.previous_hash == before.hash
    assert f"intact: {len(events)} events" in verify()


def test_the_verify_command_names_a_row_altered_in_the_database(events):
    victim = events[2]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE enrollment_auditevent SET actor_name = %s WHERE id = %s", ["mallory", victim.pk]
        )

    with pytest.raises(
        CommandError, match=f"broken at event {victim.pk} .*does not match its hash"
    ):
        verify()


def test_the_verify_command_names_the_row_after_a_removed_one(events):
    removed, follower = events[1], events[2]
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM enrollment_auditevent WHERE id = %s", [removed.pk])

    with pytest.raises(CommandError, match=f"broken at event {follower.pk} .*does not link"):
        verify()


def test_removing_the_newest_events_is_noticed(events):
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM enrollment_auditevent WHERE id = %s", [events[-1].pk])

    assert [b.problem for b in audit_chain_breaks()] == ["the newest events were removed"]


def test_the_app_cannot_update_or_delete_events(events):
    event = AuditEvent.objects.get(pk=events[0].pk)
    event.action = "nothing.happened"

    with pytest.raises(PermissionDenied):
        event.save()
    with pytest.raises(PermissionDenied):
        event.delete()
    with pytest.raises(PermissionDenied):
        AuditEvent.objects.filter(pk=event.pk).update(action="x")
    with pytest.raises(PermissionDenied):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get(pk=event.pk).action == events[0].action


def test_details_hash_the_same_after_a_database_round_trip(db):
    event = audit_record(action="test.detail", detail={"b": [1, "two"], "a": {"x": None}})

    assert list(audit_chain_breaks()) == []
    assert AuditEvent.objects.get(pk=event.pk).hash == event.hash
