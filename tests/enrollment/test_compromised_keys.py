"""A key revoked for keyCompromise: never certified again, its other certificates revoked.

S/MIME BR 6.1.1.3 (4): the CA rejects a request whose key it knows to be compromised;
4.9.1.1: every certificate of a compromised key is revoked. Keys are recognised by the
SHA-256 of their SubjectPublicKeyInfo (keys.spki_sha256), checked here against openssl.
"""

from __future__ import annotations

import hashlib
import importlib
from datetime import timedelta
from types import SimpleNamespace

import pytest

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from django.apps import apps
from django.db import connection
from django.utils import timezone

from enrollment import services
from enrollment.exceptions import InvalidState, PolicyViolation
from enrollment.models import AuditEvent, Certificate, CertificateRequest, KeyIdentity
from enrollment.x509 import keys
from tests.enrollment.api_tools import ENROLLMENTS, csr_body, token_client
from tests.enrollment.tools import crl_text_entries, issue, new_key, openssl_serial

pytestmark = pytest.mark.django_db


@pytest.fixture
def own_key():
    """A key of this test's own: the session's shared keys must not be compromised."""
    return new_key()


def test_the_key_identity_is_the_sha256_of_the_spki_openssl_prints(
    hierarchy, template, employee, own_key, openssl
):
    certificate = issue(employee, template("smime-signing"), own_key)
    pem = openssl.write_pem("cert.pem", certificate.certificate)

    public_pem = openssl.run("x509", "-in", pem, "-noout", "-pubkey").stdout
    spki = openssl.run("pkey", "-pubin", "-outform", "DER", input=public_pem).stdout

    assert certificate.spki_sha256 == hashlib.sha256(spki).hexdigest()


def test_a_compressed_ec_point_is_the_same_key():
    public_key = new_key().public_key()
    compressed = public_key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    again = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), compressed)

    assert keys.spki_sha256(again) == keys.spki_sha256(public_key)


def test_a_compromised_key_is_never_certified_again(hierarchy, template, employee, own_key):
    first = issue(employee, template("smime-signing"), own_key)
    services.certificate_revoke(certificate=first, reason="keyCompromise", actor=employee)
    requests, certificates = CertificateRequest.objects.count(), Certificate.objects.count()

    response = token_client(employee).post(ENROLLMENTS, csr_body(own_key), format="json")

    assert response.status_code == 400
    assert "compromised" in response.json()["csr"][0]
    assert (CertificateRequest.objects.count(), Certificate.objects.count()) == (
        requests,
        certificates,
    )
    with pytest.raises(PolicyViolation, match="compromised"):
        issue(employee, template("smime-dual-use"), own_key)  # any template, any path


def test_a_compromised_key_is_refused_before_it_waits_for_approval(
    hierarchy, template, approval, employee, own_key
):
    """A request that needs approval is refused at once too, not queued for an officer
    whose approval could only fail."""
    first = issue(employee, template("smime-signing"), own_key)
    services.certificate_revoke(certificate=first, reason="keyCompromise", actor=employee)
    approval("smime-signing")
    requests = CertificateRequest.objects.count()

    response = token_client(employee).post(ENROLLMENTS, csr_body(own_key), format="json")

    assert response.status_code == 400
    assert "compromised" in response.json()["csr"][0]
    assert CertificateRequest.objects.count() == requests
    fresh = token_client(employee).post(ENROLLMENTS, csr_body(new_key()), format="json")
    assert fresh.status_code == 202  # an uncompromised key still waits for approval


def test_a_key_revoked_for_another_reason_may_be_certified_again(
    hierarchy, template, employee, own_key
):
    first = issue(employee, template("smime-signing"), own_key)
    services.certificate_revoke(certificate=first, reason="superseded", actor=employee)

    again = issue(employee, template("smime-signing"), own_key)

    assert again.status == Certificate.Status.VALID


def test_the_other_certificates_of_a_compromised_key_are_revoked_with_it(
    hierarchy,
    template,
    employee,
    colleague,
    own_key,
    ec_p256_key,
    mailoutbox,
    django_capture_on_commit_callbacks,
):
    reported = issue(employee, template("smime-signing"), own_key)
    same_key = issue(employee, template("smime-dual-use"), own_key)
    other_key = issue(employee, template("smime-signing"), ec_p256_key)
    theirs = issue(colleague, template("smime-signing"), ec_p256_key)

    with django_capture_on_commit_callbacks(execute=True):  # mail goes after the commit
        services.certificate_revoke(certificate=reported, reason="keyCompromise", actor=employee)

    states = {
        c.pk: (c.status, c.revocation_reason)
        for c in Certificate.objects.filter(pk__in=[reported.pk, same_key.pk, other_key.pk])
    }
    assert states[reported.pk] == states[same_key.pk] == ("revoked", "keyCompromise")
    assert states[other_key.pk] == ("valid", "")
    assert Certificate.objects.get(pk=theirs.pk).status == "valid"
    event = AuditEvent.objects.get(action="certificate.revoke", object_id=str(same_key.pk))
    assert event.detail["same_key_as"] == reported.serial
    assert event.actor == employee
    assert [m.subject for m in mailoutbox] == ["Your certificate was revoked"] * 2
    assert {m.to[0] for m in mailoutbox} == {employee.email}


def test_a_revoked_certificates_key_reported_compromised_later_is_finished(
    hierarchy, template, employee, own_key, openssl
):
    """A superseded (or a leaver's) certificate whose key leaks afterwards: its reason
    becomes keyCompromise on the next CRL, the key's other certificates are revoked, and
    the key is never certified again. Refused as 'already revoked', it stayed usable."""
    old = issue(employee, template("smime-signing"), own_key)
    other = issue(employee, template("smime-dual-use"), own_key)
    services.certificate_revoke(certificate=old, reason="superseded", actor=employee)
    services.crl_publish(ca=old.ca)  # the superseded entry is on a CRL already
    exposed = timezone.now() - timedelta(days=3)

    services.certificate_revoke(
        certificate=old, reason="keyCompromise", actor=employee, invalidity_date=exposed
    )

    old.refresh_from_db()
    assert (old.status, old.revocation_reason) == ("revoked", "keyCompromise")
    assert Certificate.objects.get(pk=other.pk).revocation_reason == "keyCompromise"
    assert KeyIdentity.objects.get(spki_sha256=old.spki_sha256).compromised
    with pytest.raises(PolicyViolation, match="compromised"):
        issue(employee, template("smime-signing"), own_key)
    revocations = AuditEvent.objects.filter(action="certificate.revoke", object_id=str(old.pk))
    event = revocations.order_by("pk").last()
    assert event.detail["previous_reason"] == "superseded"
    published = services.crl_publish(ca=old.ca)
    _text, entries = crl_text_entries(openssl, bytes(published.der))
    entry = entries[openssl_serial(int(old.serial, 16))]
    assert "Key Compromise" in entry
    assert "Superseded" not in entry
    assert "Invalidity Date" in entry


def test_the_keys_certificates_revoked_for_another_reason_become_key_compromise(
    hierarchy, template, employee, own_key, openssl, time_machine
):
    """Relying parties checking an old signature learn from every certificate of the key
    that it leaked, not only from the one reported; a superseded or a leaver's certificate
    kept its old reason. Each is upgraded as a direct report would (audited, queued for
    the next CRL with its original revocation date)."""
    superseded = issue(employee, template("smime-signing"), own_key)
    affiliation = issue(employee, template("smime-dual-use"), own_key)
    reported = issue(employee, template("smime-signing"), own_key)
    services.certificate_revoke(certificate=superseded, reason="superseded")
    services.certificate_revoke(certificate=affiliation, reason="affiliationChanged")
    earlier = {
        c.pk: c.revoked_at
        for c in Certificate.objects.filter(pk__in=[superseded.pk, affiliation.pk])
    }
    time_machine.move_to(timezone.now() + timedelta(days=2))
    exposed = timezone.now() - timedelta(days=5)

    services.certificate_revoke(
        certificate=reported, reason="keyCompromise", actor=employee, invalidity_date=exposed
    )

    stored = {c.pk: c for c in Certificate.objects.filter(spki_sha256=reported.spki_sha256)}
    assert {c.revocation_reason for c in stored.values()} == {"keyCompromise"}
    for certificate, previous in ((superseded, "superseded"), (affiliation, "affiliationChanged")):
        assert stored[certificate.pk].revoked_at == earlier[certificate.pk]
        assert stored[certificate.pk].invalidity_date == exposed
        assert stored[certificate.pk].queued_for_crl_at > earlier[certificate.pk]
        event = AuditEvent.objects.filter(
            action="certificate.revoke", object_id=str(certificate.pk)
        ).latest("pk")
        assert event.actor == employee
        assert event.detail == {
            "reason": "keyCompromise",
            "serial": certificate.serial,
            "previous_reason": previous,
            "same_key_as": reported.serial,
        }
    published = services.crl_publish(ca=reported.ca)
    _text, entries = crl_text_entries(openssl, bytes(published.der))
    for certificate in stored.values():
        entry = entries[openssl_serial(int(certificate.serial, 16))]
        assert "Key Compromise" in entry
        assert "Superseded" not in entry
        assert "Affiliation Changed" not in entry
        assert "Invalidity Date" in entry
    assert published.crl.get_revoked_certificate_by_serial_number(
        int(superseded.serial, 16)
    ).revocation_date_utc == earlier[superseded.pk].replace(microsecond=0)


@pytest.mark.parametrize("first", ["keyCompromise", "superseded"])
def test_revoking_a_revoked_certificate_again_is_refused_unless_it_reports_a_compromise(
    hierarchy, template, employee, own_key, first
):
    certificate = issue(employee, template("smime-signing"), own_key)
    services.certificate_revoke(certificate=certificate, reason=first, actor=employee)
    again = "keyCompromise" if first == "keyCompromise" else "affiliationChanged"

    with pytest.raises(InvalidState, match="already revoked"):
        services.certificate_revoke(certificate=certificate, reason=again, actor=employee)


def test_existing_certificates_get_their_key_identity(hierarchy, template, employee, own_key):
    certificate = issue(employee, template("smime-signing"), own_key)
    Certificate.objects.filter(pk=certificate.pk).update(spki_sha256="")
    migration = importlib.import_module("enrollment.migrations.0011_certificate_key_identity")

    migration.key_identities(apps, SimpleNamespace(connection=connection))

    stored = Certificate.objects.get(pk=certificate.pk).spki_sha256
    assert stored == keys.spki_sha256(own_key.public_key())


def test_every_certified_key_has_its_row_and_a_compromise_marks_it(
    hierarchy, template, employee, own_key
):
    spki = keys.spki_sha256(own_key.public_key())
    first = issue(employee, template("smime-signing"), own_key)
    issue(employee, template("smime-dual-use"), own_key)  # the same key, claimed again

    assert list(KeyIdentity.objects.values_list("spki_sha256", "compromised")) == [(spki, False)]
    services.certificate_revoke(certificate=first, reason="keyCompromise", actor=employee)
    assert KeyIdentity.objects.get(pk=spki).compromised


def test_existing_keys_get_their_rows(hierarchy, template, employee, own_key, ec_p256_key):
    compromised = issue(employee, template("smime-signing"), own_key)
    services.certificate_revoke(certificate=compromised, reason="keyCompromise", actor=employee)
    issue(employee, template("smime-signing"), ec_p256_key)
    KeyIdentity.objects.all().delete()
    migration = importlib.import_module("enrollment.migrations.0013_key_identities")

    migration.keys_from_certificates(apps, SimpleNamespace(connection=connection))

    assert dict(KeyIdentity.objects.values_list("spki_sha256", "compromised")) == {
        keys.spki_sha256(own_key.public_key()): True,
        keys.spki_sha256(ec_p256_key.public_key()): False,
    }
