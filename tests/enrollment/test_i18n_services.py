"""Refusals worded in the reader's language, and kept in English where they are stored.

These need the compiled German catalogue (locale/de/LC_MESSAGES/django.mo): without it
every message reads in English and the German assertions fail.
"""

from __future__ import annotations

import pytest

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from django.utils import translation

from enrollment import services
from enrollment.exceptions import PolicyViolation
from enrollment.models import AuditEvent, CertificateRequest, CertificateTemplate
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.api_tools import ENROLLMENTS, csr_body, token_client
from tests.enrollment.tools import cryptography_csr

pytestmark = pytest.mark.django_db

SMALL_KEY_DE = "RSA-Schlüssel müssen mindestens 2048 Bit lang sein; dieser Schlüssel hat 1024 Bit."
SMALL_KEY_EN = "RSA keys must be at least 2048 bits; this key has 1024 bits."


@pytest.fixture(scope="module")
def small_rsa_key() -> rsa.RSAPrivateKey:
    # Below S/MIME BR 6.1.5's minimum: parse_csr refuses it (keys.public_key_refusal).
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def test_a_csr_with_a_too_small_key_is_refused_in_german_and_audited_in_english(
    hierarchy, employee, small_rsa_key
):
    events_before = set(AuditEvent.objects.values_list("pk", flat=True))

    response = token_client(employee).post(
        ENROLLMENTS, csr_body(small_rsa_key), format="json", HTTP_ACCEPT_LANGUAGE="de"
    )

    assert response.status_code == 400
    assert response.json() == {"csr": [SMALL_KEY_DE]}
    assert response["Content-Language"] == "de"
    assert not CertificateRequest.objects.exists()
    # Nothing the refusal wrote, if anything, is in German: the audit trail reads one way.
    for event in AuditEvent.objects.exclude(pk__in=events_before):
        assert "Schlüssel" not in str(event.detail)


def test_the_same_refusal_reads_in_english_for_the_audit_trail(hierarchy, employee, small_rsa_key):
    csr = cryptography_csr(small_rsa_key)

    with translation.override("de"), pytest.raises(PolicyViolation) as refused:
        services.request_submit(
            requester=employee,
            template=CertificateTemplate.objects.get(slug="smime-signing"),
            csr=csr.public_bytes(Encoding.PEM),
            channel="web",
        )

    assert refused.value.field == "csr"
    with translation.override("de"):
        assert refused.value.message == SMALL_KEY_DE
        assert refused.value.english == SMALL_KEY_EN
    assert refused.value.message == SMALL_KEY_EN  # read outside: the default language


def test_a_request_failing_at_approval_is_stored_and_audited_in_english(
    hierarchy, approval, employee, officer, ec_p256_key, monkeypatch
):
    """An officer reading German approves a request whose key the template no longer
    allows: the builder's refusal reads in German, and is stored on the request and
    audited in English."""
    failures: list[str] = []
    record_failure = services._request_fail

    def spy(request, exc, *, actor):
        failures.append(exc.message)  # as the officer's language words it
        record_failure(request, exc, actor=actor)

    monkeypatch.setattr(services, "_request_fail", spy)
    approval("smime-signing")
    submitted = token_client(employee).post(ENROLLMENTS, csr_body(ec_p256_key), format="json")
    assert submitted.status_code == 202
    template = CertificateTemplate.objects.get(slug="smime-signing")
    template.allowed_key_algorithms = [KeyAlgorithm.RSA_3072.value]
    template.save(update_fields=["allowed_key_algorithms"])
    request = CertificateRequest.objects.get(pk=submitted.json()["id"])

    with translation.override("de"):
        services.request_approve(request=request, officer=officer, reason="")

    request.refresh_from_db()
    assert request.state == CertificateRequest.State.FAILED
    assert failures == ["Diese Vorlage erlaubt RSA 3072-Schlüssel; der Schlüssel ist EC P-256."]
    english = "This template allows RSA 3072 keys; the key is EC P-256."
    assert request.error == english
    failed = AuditEvent.objects.filter(outcome=AuditEvent.Outcome.FAILURE).latest("pk")
    assert failed.detail["error"] == english


def test_a_translatable_message_in_an_audit_detail_is_kept_in_english(db, employee):
    from django.utils.translation import gettext_lazy

    from enrollment.audit import audit_record

    with translation.override("de"):
        event = audit_record(
            action="test.note",
            actor=employee,
            detail={"said": gettext_lazy("You are not allowed to do that.")},
        )
    event.refresh_from_db()
    assert event.detail == {"said": "You are not allowed to do that."}
