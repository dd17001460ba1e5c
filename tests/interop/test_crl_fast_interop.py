"""Real tools accept CRLs assembled from stored entry DER (enrollment/x509/crl_fast.py).

openssl parses and verifies them (`openssl crl`, `openssl verify -crl_check`), and pkilint's
lint_crl finds no error, including on a thousand entries of mixed reasons.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from cryptography import x509

from enrollment.x509 import crl_fast
from enrollment.x509.builder import random_serial
from enrollment.x509.crl import RevocationReason, RevokedEntry
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.policy import Purpose
from tests.interop.pkilint_runner import lint_crl_file, minor, serious
from tests.interop.test_openssl_verify import verify
from tests.pki import CA, MakeEndEntity, OpenSSL

pytestmark = pytest.mark.interop

STRICT_REASONS: list[RevocationReason | None] = [
    None,
    *(r for r in RevocationReason if r is not RevocationReason.CERTIFICATE_HOLD),
]


def thousand_entries(now: datetime, *extra: RevokedEntry) -> list[RevokedEntry]:
    """1,000 entries cycling through every reason a strict CRL may carry, some with an
    invalidity date, plus ``extra``."""
    entries = [
        RevokedEntry(
            random_serial(),
            now - timedelta(minutes=index + 1),
            STRICT_REASONS[index % len(STRICT_REASONS)],
            invalidity_date=now - timedelta(days=3) if index % 5 == 0 else None,
        )
        for index in range(1000 - len(extra))
    ]
    return [*entries, *extra]


def signed(ca: CA, entries: list[RevokedEntry], number: int, days: int = 7) -> bytes:
    now = datetime.now(UTC).replace(microsecond=0)
    return crl_fast.sign_crl(
        issuer_certificate=ca.certificate,
        issuer_key=ca.key,
        revoked=crl_fast.encode_entries(entries),
        crl_number=number,
        this_update=now,
        next_update=now + timedelta(days=days),
    )


def test_openssl_reads_a_thousand_mixed_entries_and_checks_the_signature(
    openssl: OpenSSL, issuing_ca: CA
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    der = signed(issuing_ca, thousand_entries(now), 41)
    openssl.write("issuing.crl", der)
    openssl.write_pem("issuing.pem", issuing_ca.certificate)

    text = openssl.run("crl", "-inform", "DER", "-in", "issuing.crl", "-noout", "-text").stdout
    checked = openssl.run(
        "crl", "-inform", "DER", "-in", "issuing.crl", "-noout", "-CAfile", "issuing.pem"
    )

    assert b"verify OK" in checked.stdout + checked.stderr
    assert len(re.findall(rb"Serial Number: ", text)) == 1000
    for reason in (b"Key Compromise", b"CA Compromise", b"Superseded", b"Privilege Withdrawn"):
        assert reason in text
    assert b"Invalidity Date" in text
    assert b"Unspecified" not in text
    assert re.search(rb"X509v3 CRL Number: \s*41", text)


def test_openssl_verify_crl_check_rejects_the_revoked_leaf_and_passes_the_other(
    openssl: OpenSSL, make_end_entity: MakeEndEntity, root_ca: CA, issuing_ca: CA
) -> None:
    revoked = make_end_entity(Purpose.SIGNING, KeyAlgorithm.EC_P256)
    kept = make_end_entity(Purpose.SIGNING, KeyAlgorithm.EC_P256)
    now = datetime.now(UTC).replace(microsecond=0)
    listed = RevokedEntry(revoked.certificate.serial_number, now, RevocationReason.SUPERSEDED)
    issuing_crl = x509.load_der_x509_crl(signed(issuing_ca, thousand_entries(now, listed), 9))
    openssl.write_crl("issuing.crl", issuing_crl)
    openssl.write_pem("revoked.pem", revoked.certificate)
    openssl.write_pem("kept.pem", kept.certificate)

    ok, output = verify(
        openssl, root_ca, issuing_ca, "kept.pem", "-crl_check", "-CRLfile", "issuing.crl"
    )
    assert ok, output
    ok, output = verify(
        openssl, root_ca, issuing_ca, "revoked.pem", "-crl_check", "-CRLfile", "issuing.crl"
    )
    assert not ok
    assert "certificate revoked" in output


@pytest.mark.parametrize("ca_name", ["issuing_ca", "rsa_issuing_ca"])
def test_pkilint_finds_no_error_in_a_thousand_mixed_entries(
    request: pytest.FixtureRequest, openssl: OpenSSL, ca_name: str
) -> None:
    ca: CA = request.getfixturevalue(ca_name)
    now = datetime.now(UTC).replace(microsecond=0)
    crl = x509.load_der_x509_crl(signed(ca, thousand_entries(now), 1000))

    findings = lint_crl_file(openssl.write_crl("issuing.crl", crl))

    assert serious(findings) == []
    assert minor(findings) == set()


def test_pkilint_accepts_an_empty_root_crl_as_an_authority_revocation_list(
    openssl: OpenSSL, root_ca: CA
) -> None:
    crl = x509.load_der_x509_crl(signed(root_ca, [], 2, days=365))

    for profile in ("PKIX", "BR"):
        findings = lint_crl_file(openssl.write_crl("root.crl", crl), kind="ARL", profile=profile)
        assert serious(findings) == []
