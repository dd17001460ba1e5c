"""No private key is ever stored in the database in the clear (DESIGN.md, rules that never bend).

The demo installation is built exactly as `make run` builds it, then every column of every
table is read back raw and searched for private keys in every shape we can think of.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from django.core.management import call_command
from django.db import connection

from enrollment.models import (
    ArchivedKey,
    AuditEvent,
    CertificateAuthority,
    KeyRecoveryAgent,
)
from enrollment.x509 import cms, keys, pkcs12
from enrollment.x509.keys import PrivateKey

pytestmark = pytest.mark.django_db


# --- the scanner ----------------------------------------------------------------------


def database_values() -> Iterator[tuple[str, object]]:
    """("table.column", value) for every column of every row of every table, read raw."""
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            columns = [column[0] for column in cursor.description]
            for row in cursor.fetchall():
                for column, value in zip(columns, row, strict=True):
                    yield f"{table}.{column}", value


def as_bytes(value: object) -> bytes:
    if isinstance(value, memoryview):
        return value.tobytes()
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict | list):  # a JSON column the driver decoded for us
        return json.dumps(value).encode()
    return str(value).encode()


def is_clear_der_private_key(data: bytes) -> bool:
    try:
        serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def scan(needles: dict[str, bytes]) -> list[str]:
    """Every place a private key shows: PEM, clear DER, or one of the known keys' forms."""
    findings = []
    for where, value in database_values():
        if value is None:
            continue
        data = as_bytes(value)
        if b"PRIVATE KEY" in data:
            findings.append(f"{where}: a PEM private key")
        if isinstance(value, bytes | bytearray | memoryview) and is_clear_der_private_key(data):
            findings.append(f"{where}: a clear DER private key")
        findings += [f"{where}: {name}" for name, needle in needles.items() if needle in data]
    return findings


def key_needles(label: str, key: PrivateKey) -> dict[str, bytes]:
    """A key as PKCS#8 and traditional DER and its secret numbers, each raw, hex and base64."""
    forms = {
        "PKCS#8 DER": key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption()),
        "traditional DER": key.private_bytes(
            Encoding.DER, PrivateFormat.TraditionalOpenSSL, NoEncryption()
        ),
    }
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.private_numbers()
        secrets = {"d": numbers.d, "p": numbers.p, "q": numbers.q}
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        secrets = {"private scalar": key.private_numbers().private_value}
    size = (key.key_size + 7) // 8
    forms |= {name: value.to_bytes(size, "big").lstrip(b"\0") for name, value in secrets.items()}
    needles = {}
    for name, raw in forms.items():
        needles[f"{label} {name}"] = raw
        needles[f"{label} {name} (hex)"] = raw.hex().encode()
        needles[f"{label} {name} (HEX)"] = raw.hex().upper().encode()
        needles[f"{label} {name} (base64)"] = base64.b64encode(raw).rstrip(b"=")
        needles[f"{label} {name} (base64url)"] = base64.urlsafe_b64encode(raw).rstrip(b"=")
    return needles


# --- the demo installation ------------------------------------------------------------


def online_ca_passphrase(settings) -> bytes:
    passphrase = settings.PKIPORTAL_CA_KEY_PASSPHRASE
    if not passphrase:
        passphrase = Path(settings.PKIPORTAL_EMBEDDED_PASSPHRASE_FILE).read_text().strip()
    return passphrase.encode()


def test_no_private_key_is_stored_in_the_clear(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    out = StringIO()
    call_command("create_demo_data", stdout=out)
    password = re.search(r"password: (\S+)", out.getvalue())
    assert password is not None, out.getvalue()

    issuing = CertificateAuthority.objects.get(slug="issuing")
    issuing_key = keys.load_private_key_pem(
        (Path(settings.PKIPORTAL_KEY_DIR) / issuing.key_reference).read_bytes(),
        online_ca_passphrase(settings),
    )
    root_key = keys.load_private_key_pem(
        (tmp_path / "offline" / "root-key.pem").read_bytes(),
        (tmp_path / "offline" / "root-passphrase").read_bytes().strip(),
    )
    kra_key, kra_certificate, _chain = pkcs12.load_pkcs12(
        (tmp_path / "demo" / "kra.p12").read_bytes(), password[1]
    )
    # Archival must still happen, or this test would pass for the wrong reason: Alice's
    # encryption key is in the database, as an envelope only the agent's key opens.
    archived = ArchivedKey.objects.get(certificate__owner__username="alice")
    envelope = bytes(archived.envelope)
    alice_key = cms.recover_private_key(
        envelope, recipient_certificate=kra_certificate, recipient_key=kra_key
    )
    assert alice_key.public_key() == archived.certificate.certificate.public_key()
    assert issuing_key.public_key() == issuing.certificate.public_key()
    assert KeyRecoveryAgent.objects.get().certificate == kra_certificate

    needles = (
        key_needles("issuing CA key", issuing_key)
        | key_needles("root CA key", root_key)
        | key_needles("KRA key", kra_key)
        | key_needles("Alice's archived encryption key", alice_key)
    )

    assert scan(needles) == []
    # The scan did read the binary columns: the envelope is among what it saw.
    assert any(as_bytes(value) == envelope for _where, value in database_values())


# --- the scanner finds what it should -------------------------------------------------


def rsa_pem(key: PrivateKey) -> str:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


def leak(kind: str, key: rsa.RSAPrivateKey) -> str:
    """Store the key the way a careless change might; return what the scan should say."""
    if kind == "PEM in an audit event":
        AuditEvent.objects.create(action="debug", detail={"key": rsa_pem(key)})
        return "enrollment_auditevent.detail: a PEM private key"
    if kind == "clear DER in a binary column":
        der = key.private_bytes(Encoding.DER, PrivateFormat.TraditionalOpenSSL, NoEncryption())
        KeyRecoveryAgent.objects.update(der=der)
        return "enrollment_keyrecoveryagent.der: a clear DER private key"
    if kind == "prime as hex in a text column":
        prime = key.private_numbers().p
        AuditEvent.objects.create(action="debug", object_repr=format(prime, "x"))
        return "enrollment_auditevent.object_repr: KRA key p (hex)"
    assert kind == "PKCS#8 as base64 in JSON"
    der = key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    AuditEvent.objects.create(action="debug", detail={"k": base64.b64encode(der).decode()})
    return "enrollment_auditevent.detail: KRA key PKCS#8 DER (base64)"


@pytest.mark.parametrize(
    "kind",
    [
        "PEM in an audit event",
        "clear DER in a binary column",
        "prime as hex in a text column",
        "PKCS#8 as base64 in JSON",
    ],
)
def test_the_scan_finds_a_stored_key(kind, kra):
    needles = key_needles("KRA key", kra.key)
    assert scan(needles) == []

    expected = leak(kind, kra.key)

    assert expected in scan(needles)
