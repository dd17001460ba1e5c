"""kept.PerCertificate: facts kept per certificate object answer for that object only."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from enrollment.x509.kept import PerCertificate
from enrollment.x509.mail_domains import issuer_mail_domains, issuer_permits
from tests.pki import CA
from tests.x509.test_mail_domains import _issuing


def test_each_certificate_object_gets_its_own_fact_read_once(root_ca: CA, issuing_ca: CA) -> None:
    reads: list[x509.Certificate] = []

    def serial(certificate: x509.Certificate) -> int:
        reads.append(certificate)
        return certificate.serial_number

    kept = PerCertificate(serial, kept=2)
    again = x509.load_der_x509_certificate(root_ca.certificate.public_bytes(Encoding.DER))
    objects = [root_ca.certificate, issuing_ca.certificate, again]
    for _ in range(3):
        for certificate in objects:
            assert kept(certificate) == certificate.serial_number
    # Three objects, two kept: always right, and read again only after being let go.
    assert len(reads) > len(objects)
    assert [kept(issuing_ca.certificate) for _ in range(3)] == [
        issuing_ca.certificate.serial_number
    ] * 3
    assert reads[-1] is issuing_ca.certificate


def test_a_renewed_issuer_is_judged_by_its_own_constraints(root_ca: CA) -> None:
    """A CA renewed with mail domains (or without them) is another certificate object:
    the old one's name constraints are not taken for its."""
    free, narrow = _issuing(root_ca), _issuing(root_ca, mail_domains=("example.com",))
    for _ in range(2):
        assert issuer_permits(free, "eve@elsewhere.example")
        assert not issuer_permits(narrow, "eve@elsewhere.example")
        assert issuer_mail_domains(free) is None
        assert issuer_mail_domains(narrow) == ("example.com",)
