"""The encodings openssl reads back: smimeCapabilities (RFC 4262), serials and the subject."""

from __future__ import annotations

import re

import pytest

from enrollment.x509.policy import Purpose
from tests.pki import MakeEndEntity, OpenSSL

pytestmark = pytest.mark.interop


def extension_value_offset(asn1parse_output: str, name: str) -> int:
    """Offset of the OCTET STRING that follows the extension's OBJECT line."""
    lines = asn1parse_output.splitlines()
    for index, line in enumerate(lines):
        if line.endswith(f":{name}"):
            following = lines[index + 1]
            if "BOOLEAN" in following:  # a critical flag sits between OID and value
                following = lines[index + 2]
            assert "OCTET STRING" in following
            return int(following.split(":", 1)[0])
    raise AssertionError(f"{name} not found in asn1parse output")


@pytest.mark.parametrize("purpose", [Purpose.ENCRYPTION, Purpose.DUAL_USE])
def test_smime_capabilities_list_aes_256_then_aes_128_without_parameters(
    openssl: OpenSSL, make_end_entity: MakeEndEntity, purpose: Purpose
) -> None:
    openssl.write_pem("leaf.pem", make_end_entity(purpose).certificate)
    parsed = openssl.run("asn1parse", "-in", "leaf.pem").stdout.decode()
    offset = extension_value_offset(parsed, "S/MIME Capabilities")
    value = openssl.run("asn1parse", "-in", "leaf.pem", "-strparse", str(offset)).stdout.decode()
    lines = [line.split(":", 1)[1].strip() for line in value.strip().splitlines()]
    assert [re.sub(r"\s+", " ", line) for line in lines] == [
        "d=0 hl=2 l= 26 cons: SEQUENCE",
        "d=1 hl=2 l= 11 cons: SEQUENCE",
        "d=2 hl=2 l= 9 prim: OBJECT :aes-256-cbc",
        "d=1 hl=2 l= 11 cons: SEQUENCE",
        "d=2 hl=2 l= 9 prim: OBJECT :aes-128-cbc",
    ]


def test_openssl_names_the_smime_capabilities_extension_non_critical(
    openssl: OpenSSL, make_end_entity: MakeEndEntity
) -> None:
    openssl.write_pem("leaf.pem", make_end_entity(Purpose.DUAL_USE).certificate)
    text = openssl.run("x509", "-in", "leaf.pem", "-noout", "-text").stdout.decode()
    assert re.search(r"S/MIME Capabilities: *\n", text)
    assert "S/MIME Capabilities: critical" not in text


def test_openssl_sees_a_20_octet_positive_serial(
    openssl: OpenSSL, make_end_entity: MakeEndEntity
) -> None:
    openssl.write_pem("leaf.pem", make_end_entity().certificate)
    parsed = openssl.run("asn1parse", "-in", "leaf.pem").stdout.decode()
    serial_line = next(
        line
        for line in parsed.splitlines()
        if "prim: INTEGER" in line and "d=2" in line and "l=  20" in line
    )
    assert ":-" not in serial_line  # positive
    serial = openssl.run("x509", "-in", "leaf.pem", "-noout", "-serial").stdout.decode()
    assert re.fullmatch(r"serial=[0-7][0-9A-F]{39}\n", serial)


def test_openssl_prints_the_sponsor_validated_subject(
    openssl: OpenSSL, make_end_entity: MakeEndEntity
) -> None:
    openssl.write_pem("leaf.pem", make_end_entity().certificate)
    subject = openssl.run(
        "x509", "-in", "leaf.pem", "-noout", "-subject", "-nameopt", "RFC2253"
    ).stdout.decode()
    assert subject.strip() == (
        "subject=CN=Alice Example,SN=Example,GN=Alice,"
        "organizationIdentifier=NTRGB-12345678,O=Example Org,C=GB"
    )
