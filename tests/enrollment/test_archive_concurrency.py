"""A key recovery agent deactivated while a certificate is being issued, on PostgreSQL.

Issuance reads the usable agents before it signs. A deactivation committed in between
must not receive the archive; one that comes after the archive's share lock must wait
for it, so its audit event counts the archive.
"""

from __future__ import annotations

import threading

import pytest

from django.db import connection

from enrollment import keystore, services
from enrollment.exceptions import ConfigurationError
from enrollment.models import ArchivedKey, AuditEvent, Certificate, KeyRecoveryAgent
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.test_crl_concurrency import run_threads
from tests.enrollment.test_kra_deactivate import second_agent  # noqa: F401 - a fixture
from tests.markers import needs_row_locks

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    needs_row_locks,
]


def deactivate_while_signing(monkeypatch, agent: KeyRecoveryAgent) -> None:
    signing = keystore.issue_end_entity

    def sign_then_deactivate(*args, **kwargs):
        issued = signing(*args, **kwargs)
        # In a thread of its own: its own connection, its own transaction, committed.
        assert run_threads(lambda: services.kra_deactivate(agent=agent, reason="Left.")) == []
        return issued

    monkeypatch.setattr(keystore, "issue_end_entity", sign_then_deactivate)


def issue_archived(template, employee):
    return services.certificate_issue_with_server_key(
        template=template("smime-encryption"),
        owner=employee,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="orange kettle sails",
    )


def test_the_archive_leaves_out_an_agent_deactivated_during_issuance(
    monkeypatch,
    kra,
    second_agent,  # noqa: F811 - the imported fixture
    template,
    employee,
    fast_pkcs12,  # noqa: F811 - fixture
):
    deactivate_while_signing(monkeypatch, kra.agent)

    certificate, _bundle = issue_archived(template, employee)

    archive = ArchivedKey.objects.get(certificate=certificate)
    assert list(archive.recipients.all()) == [second_agent]


def test_without_an_agent_left_nothing_is_issued(monkeypatch, kra, template, employee, fast_pkcs12):
    deactivate_while_signing(monkeypatch, kra.agent)
    before = Certificate.objects.count()

    with pytest.raises(ConfigurationError, match="deactivated while"):
        issue_archived(template, employee)

    assert Certificate.objects.count() == before
    assert not ArchivedKey.objects.exists()


def test_a_deactivation_after_the_archive_waits_for_it_and_counts_it(
    monkeypatch, kra, template, employee, fast_pkcs12
):
    archiving = services._key_archive
    started = threading.Event()
    deactivated = threading.Event()

    def archive_then_let_deactivate(**kwargs):
        archived = archiving(**kwargs)  # the agent's row is share-locked from here

        def deactivate() -> None:
            started.set()
            services.kra_deactivate(agent=kra.agent, reason="Left.")
            deactivated.set()

        thread = threading.Thread(target=lambda: (deactivate(), connection.close()))
        thread.start()
        started.wait(timeout=10)
        assert not deactivated.wait(timeout=0.5)  # held back by the share lock
        archive_then_let_deactivate.thread = thread
        return archived

    monkeypatch.setattr(services, "_key_archive", archive_then_let_deactivate)

    issue_archived(template, employee)
    archive_then_let_deactivate.thread.join(timeout=30)

    assert deactivated.is_set()
    event = AuditEvent.objects.get(action="kra.deactivate")
    assert event.detail["archives_only_it_opens"] == 1  # the archive made meanwhile
