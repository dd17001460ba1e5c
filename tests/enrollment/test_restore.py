"""After a restore from an older backup: the published CRL's revocations come back and the
CRL numbers carry on above it (enrollment.restore, `manage.py resume_after_restore`)."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
import time_machine

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from django.core.management import CommandError, call_command
from django.utils import timezone

from enrollment import keystore, restore, services
from enrollment.exceptions import PolicyViolation
from enrollment.models import (
    AuditEvent,
    Certificate,
    CrlEntry,
    KeyIdentity,
    RevocationList,
)
from enrollment.x509.keys import KeyAlgorithm, generate_private_key
from tests.enrollment.tools import issue, openssl_serial

pytestmark = pytest.mark.django_db

REASON = Certificate.RevocationReasonChoice


def _forget_since(ca, number: int, *certificates: Certificate) -> None:
    """What a restore of a backup taken at CRL #number does: later CRLs are gone and the
    certificates revoked since are valid again; ``Certificate.delete`` for ones issued since."""
    RevocationList.objects.filter(ca=ca, number__gt=number).delete()
    for certificate in certificates:
        CrlEntry.objects.filter(certificate=certificate).delete()
        Certificate.objects.filter(pk=certificate.pk).update(
            status=Certificate.Status.VALID, revoked_at=None, revocation_reason="",
            invalidity_date=None,
        )  # fmt: skip
    KeyIdentity.objects.update(compromised=False)


@pytest.fixture
def before_the_failure(hierarchy, template, employee, colleague):
    """Three certificates at the backup (CRL #1); two revoked and one more issued and
    revoked after it, all on CRL #2, the last one published before the failure."""
    signing = template("smime-signing")
    kept, compromised, left, early = (
        issue(owner, signing, generate_private_key(KeyAlgorithm.EC_P256))
        for owner in (employee, colleague, employee, colleague)
    )
    services.certificate_revoke(certificate=early, reason=REASON.SUPERSEDED)
    backup_crl = services.crl_publish(ca=hierarchy.issuing)  # the backup holds #2
    compromised_at = services.certificate_revoke(
        certificate=compromised,
        reason=REASON.KEY_COMPROMISE,
        invalidity_date=compromised.not_before,
    )
    services.certificate_revoke(certificate=left, reason=REASON.AFFILIATION_CHANGED)
    after_backup = issue(colleague, signing, generate_private_key(KeyAlgorithm.EC_P256))
    services.certificate_revoke(certificate=after_backup, reason=REASON.SUPERSEDED)
    published = services.crl_publish(ca=hierarchy.issuing)
    revoked = {
        c.serial: (c.revoked_at, c.revocation_reason, c.invalidity_date)
        for c in Certificate.objects.filter(status=Certificate.Status.REVOKED)
    }
    _forget_since(hierarchy.issuing, backup_crl.number, compromised, left, after_backup)
    CrlEntry.objects.filter(certificate=after_backup).delete()
    Certificate.objects.filter(pk=after_backup.pk).delete()
    return {
        "crl": bytes(published.der),
        "number": published.number,
        "backup_number": backup_crl.number,
        "kept": kept,
        "early": early,
        "compromised": compromised_at,
        "left": left,
        "unknown": after_backup.serial,
        "revoked": revoked,
    }


def test_the_published_revocations_come_back_with_their_times_and_reasons(
    hierarchy, before_the_failure
):
    facts = before_the_failure
    assert Certificate.objects.filter(status=Certificate.Status.REVOKED).count() == 1  # early

    done = restore.resume_after_restore(ca=hierarchy.issuing, der=facts["crl"])

    assert sorted(done.revoked_again) == sorted([facts["compromised"].serial, facts["left"].serial])
    assert done.unknown == [facts["unknown"]]
    assert (done.already_revoked, done.corrected) == (1, [])  # revoked before the backup
    for serial in done.revoked_again:
        again = Certificate.objects.get(serial=serial)
        assert again.status == Certificate.Status.REVOKED
        original_at, reason, invalidity = facts["revoked"][serial]
        # A CRL keeps times to the second.
        assert again.revoked_at == original_at.replace(microsecond=0)
        assert again.revocation_reason == reason
        assert again.invalidity_date == (
            invalidity.replace(microsecond=0) if invalidity is not None else None
        )
    facts["kept"].refresh_from_db()
    assert facts["kept"].status == Certificate.Status.VALID
    assert KeyIdentity.objects.get(spki_sha256=facts["compromised"].spki_sha256).compromised


def test_the_next_crl_is_numbered_above_the_published_one_and_lists_the_revocations(
    hierarchy, before_the_failure, openssl
):
    facts = before_the_failure

    done = restore.resume_after_restore(ca=hierarchy.issuing, der=facts["crl"])

    assert done.published.number == facts["number"] + restore.NUMBER_MARGIN
    assert hierarchy.issuing.latest_crl().pk == done.published.pk
    openssl.write_pem("issuing.pem", hierarchy.issuing.certificate)
    openssl.write("new.crl", bytes(done.published.der))
    shown = openssl.run(
        "crl", "-inform", "DER", "-in", "new.crl", "-CAfile", "issuing.pem", "-noout", "-text"
    )
    text = shown.stdout.decode()
    assert "verify OK" in shown.stderr.decode() + text
    assert re.search(rf"X509v3 CRL Number:\s*\n\s*{done.published.number}\b", text)
    for serial in [*done.revoked_again, facts["early"].serial]:
        assert f"Serial Number: {openssl_serial(int(serial, 16))}" in text
    assert "Key Compromise" in text
    assert "Affiliation Changed" in text


def test_the_resumption_and_each_revocation_again_are_audited(hierarchy, before_the_failure):
    facts = before_the_failure

    done = restore.resume_after_restore(ca=hierarchy.issuing, der=facts["crl"])

    event = AuditEvent.objects.get(action="crl.resume")
    assert event.detail["imported_number"] == facts["number"]
    assert event.detail["database_number"] == facts["backup_number"]
    assert event.detail["published_number"] == done.published.number
    assert event.detail["unknown_serials"] == [facts["unknown"]]
    again = AuditEvent.objects.filter(
        action="certificate.revoke", detail__restored_from_crl=facts["number"]
    )
    assert again.count() == 2


def test_a_portal_that_published_again_before_the_resume_still_gets_everything_back(
    hierarchy, before_the_failure
):
    """The restored portal ran first: it reused the lost numbers, and someone revoked a
    listed certificate again, later and for a weaker reason."""
    facts = before_the_failure
    services.crl_publish(ca=hierarchy.issuing)
    services.crl_publish(ca=hierarchy.issuing)  # now at the supplied CRL's number
    with time_machine.travel(timezone.now() + timedelta(hours=1), tick=False):
        later = services.certificate_revoke(
            certificate=facts["compromised"], reason=REASON.SUPERSEDED
        )
    database_number = hierarchy.issuing.latest_crl().number
    assert database_number > facts["number"]

    done = restore.resume_after_restore(ca=hierarchy.issuing, der=facts["crl"])

    assert done.revoked_again == [facts["left"].serial]
    assert done.corrected == [facts["compromised"].serial]
    again = Certificate.objects.get(pk=later.pk)
    original_at, reason, invalidity = facts["revoked"][again.serial]
    assert again.revocation_reason == REASON.KEY_COMPROMISE
    assert again.revoked_at == original_at.replace(microsecond=0) < later.revoked_at
    assert again.invalidity_date == invalidity.replace(microsecond=0)
    assert KeyIdentity.objects.get(spki_sha256=again.spki_sha256).compromised
    assert done.published.number == database_number + restore.NUMBER_MARGIN
    listed = x509.load_der_x509_crl(bytes(done.published.der))
    entry = listed.get_revoked_certificate_by_serial_number(int(again.serial, 16))
    assert entry is not None
    assert entry.revocation_date_utc == again.revoked_at
    assert AuditEvent.objects.filter(action="certificate.revocation_restored").count() == 1


def test_resuming_twice_changes_nothing_more_but_the_number(hierarchy, before_the_failure):
    first = restore.resume_after_restore(ca=hierarchy.issuing, der=before_the_failure["crl"])

    second = restore.resume_after_restore(ca=hierarchy.issuing, der=before_the_failure["crl"])

    assert (second.revoked_again, second.corrected) == ([], [])
    assert second.already_revoked == 3
    assert second.published.number == first.published.number + restore.NUMBER_MARGIN


def test_serials_are_looked_up_in_chunks(hierarchy, before_the_failure, monkeypatch):
    """PostgreSQL takes at most 65,535 parameters per statement: a large CRL must not
    meet that limit."""
    monkeypatch.setattr(restore, "SERIALS_PER_QUERY", 1)
    locked: list[int] = []
    lock = services.lock_in_order

    def counted(rows):
        if rows.model is Certificate:  # the restore's; its CRL locks CRL entries with it too
            locked.append(rows.count())
        return lock(rows)

    monkeypatch.setattr(services, "lock_in_order", counted)

    done = restore.resume_after_restore(ca=hierarchy.issuing, der=before_the_failure["crl"])

    assert len(done.revoked_again) == 2
    assert done.already_revoked == 1
    assert locked == [1, 1, 1]  # the rows it may revoke are locked in chunks too


def test_a_certificate_revoked_while_the_restore_waits_for_it_is_taken_back(
    hierarchy, before_the_failure, monkeypatch
):
    """A revocation commits while the restore waits for that row: read again under the
    lock, the certificate is revoked already, and its published facts are put back
    rather than the whole restore failing with 'already revoked'."""
    left = before_the_failure["left"]
    lock = services.lock_in_order

    def revoked_meanwhile(certificates):
        services.certificate_revoke(certificate=left, reason=REASON.SUPERSEDED)
        monkeypatch.setattr(services, "lock_in_order", lock)
        lock(certificates)

    monkeypatch.setattr(services, "lock_in_order", revoked_meanwhile)

    done = restore.resume_after_restore(ca=hierarchy.issuing, der=before_the_failure["crl"])

    assert left.serial not in done.revoked_again
    assert done.already_revoked == 2
    left.refresh_from_db()
    assert left.revocation_reason == REASON.AFFILIATION_CHANGED  # as published


def test_the_resume_queues_no_crl_task_of_its_own(
    hierarchy, before_the_failure, django_capture_on_commit_callbacks
):
    """Its CRL is published in its transaction: a task per revocation would wait on an
    unreachable broker after the commit, once for each."""
    with django_capture_on_commit_callbacks() as callbacks:
        restore.resume_after_restore(ca=hierarchy.issuing, der=before_the_failure["crl"])

    names = [getattr(callback, "__qualname__", "") for callback in callbacks]
    assert not any("crl" in name.lower() for name in names), names


def test_another_cas_crl_or_garbage_is_refused_and_nothing_changes(hierarchy, before_the_failure):
    root_crl = services.crl_publish(
        ca=hierarchy.root,
        offline_key=keystore.OfflineKey(hierarchy.root_key_path, hierarchy.root_passphrase),
    )
    count = RevocationList.objects.count()

    with pytest.raises(PolicyViolation, match="not issued by"):
        restore.resume_after_restore(ca=hierarchy.issuing, der=bytes(root_crl.der))
    for garbage in (b"", b"\x30\x03\x02\x01\x00", before_the_failure["crl"][:-7]):
        with pytest.raises(PolicyViolation):
            restore.resume_after_restore(ca=hierarchy.issuing, der=garbage)
    with pytest.raises(PolicyViolation, match="offline"):
        restore.resume_after_restore(ca=hierarchy.root, der=bytes(root_crl.der))

    assert RevocationList.objects.count() == count
    assert Certificate.objects.filter(status=Certificate.Status.REVOKED).count() == 1  # early


def test_the_command_says_what_it_did_and_warns_of_unknown_serials(
    hierarchy, before_the_failure, tmp_path
):
    crl_file = tmp_path / "issuing.crl"
    pem = x509.load_der_x509_crl(before_the_failure["crl"]).public_bytes(Encoding.PEM)
    crl_file.write_bytes(pem)  # PEM, as `openssl crl` writes it
    out, err = io.StringIO(), io.StringIO()

    call_command("resume_after_restore", str(crl_file), "--ca", "issuing", stdout=out, stderr=err)

    number = before_the_failure["number"]
    assert f"CRL #{number} read (this database's newest: #{number - 1})" in out.getvalue()
    assert "revoked again: 2; already revoked here: 1" in out.getvalue()
    assert f"published CRL #{number + restore.NUMBER_MARGIN}" in out.getvalue()
    assert before_the_failure["unknown"] in err.getvalue()
    with pytest.raises(CommandError, match="offline"):
        call_command("resume_after_restore", str(crl_file), "--ca", "root", stdout=out)
    with pytest.raises(CommandError, match="Cannot read"):
        call_command("resume_after_restore", str(tmp_path / "missing.crl"), "--ca", "issuing")
