"""The attestation settings: the roots file read and checked at start-up, the AAGUID list,
whom the policy covers; nonsense stops the portal, saying what was wrong. (The settings
module runs afresh: conftest's load_settings.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from django.core.exceptions import ImproperlyConfigured

from tests.webauthn_authenticator import AttestationCA

ROOTS = "PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS"
FOR = "PKIPORTAL_WEBAUTHN_ATTESTATION_FOR"
AAGUIDS = "PKIPORTAL_WEBAUTHN_ALLOWED_AAGUIDS"
AAGUID = "CB69481E-8FF7-4039-93EC-0A2729A154A8"


@pytest.fixture
def roots_file(tmp_path):
    """A PEM file of two vendors' attestation roots."""
    first, second = AttestationCA("First Vendor"), AttestationCA("Second Vendor")
    path = tmp_path / "attestation-roots.pem"
    path.write_bytes(b"# the vendors' roots\n" + first.pem + second.pem)
    return str(path), [first.pem, second.pem]


def test_by_default_no_key_is_asked_for_attestation(load_settings):
    loaded = load_settings()
    assert loaded[ROOTS] == []
    assert loaded[FOR] == ""
    assert loaded[AAGUIDS] == []


def test_the_roots_are_read_one_pem_each_and_cover_roles_by_default(load_settings, roots_file):
    path, pems = roots_file
    loaded = load_settings(**{ROOTS: path})
    assert loaded[ROOTS] == pems
    assert loaded[FOR] == "roles"


@pytest.mark.parametrize("given", ["roles", "everyone", " everyone "])
def test_the_policy_covers_roles_or_everyone(load_settings, roots_file, given):
    assert load_settings(**{ROOTS: roots_file[0], FOR: given})[FOR] == given.strip()


def test_allowed_models_are_written_as_py_webauthn_writes_them(load_settings, roots_file):
    loaded = load_settings(**{ROOTS: roots_file[0], AAGUIDS: f" {AAGUID}, ,{AAGUID.lower()}"})
    assert loaded[AAGUIDS] == [AAGUID.lower()]


def test_a_missing_roots_file_stops_the_portal(load_settings, tmp_path):
    with pytest.raises(ImproperlyConfigured, match=f"{ROOTS}: .*cannot be read"):
        load_settings(**{ROOTS: str(tmp_path / "nowhere.pem")})


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "holds no PEM certificate"),
        (b"not a certificate\n", "holds no PEM certificate"),
        (
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
            "cannot be read",
        ),
    ],
    ids=["empty", "text", "garbled"],
)
def test_a_roots_file_without_a_readable_certificate_stops_the_portal(
    load_settings, tmp_path, content, says
):
    path = tmp_path / "roots.pem"
    path.write_bytes(content)
    with pytest.raises(ImproperlyConfigured, match=f"{ROOTS}: .*{says}"):
        load_settings(**{ROOTS: str(path)})


def test_a_certificate_that_is_no_ca_stops_the_portal(load_settings, tmp_path):
    """A key's own batch certificate is no root to chain to."""
    vendor = AttestationCA()
    batch = x509.load_der_x509_certificate(vendor.attestation().chain[0])
    path = tmp_path / "roots.pem"
    path.write_bytes(vendor.pem + batch.public_bytes(Encoding.PEM))
    with pytest.raises(ImproperlyConfigured, match="is not a CA certificate"):
        load_settings(**{ROOTS: str(path)})


def test_a_certificate_without_basic_constraints_stops_the_portal(load_settings, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "No constraints")])
    now = datetime.now(UTC)
    bare = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "roots.pem"
    path.write_bytes(bare.public_bytes(Encoding.PEM))
    with pytest.raises(ImproperlyConfigured, match="CN=No constraints.*is not a CA certificate"):
        load_settings(**{ROOTS: str(path)})


@pytest.mark.parametrize("given", ["nobody", "officers", "all", "Roles"])
def test_anything_but_roles_or_everyone_stops_the_portal(load_settings, roots_file, given):
    with pytest.raises(ImproperlyConfigured, match=f'{FOR} must be "roles" or "everyone"'):
        load_settings(**{ROOTS: roots_file[0], FOR: given})


@pytest.mark.parametrize(("name", "value"), [(FOR, "roles"), (AAGUIDS, AAGUID)])
def test_a_policy_without_roots_stops_the_portal(load_settings, name, value):
    """Without roots no model can be verified: a list or a policy alone would be a promise
    the portal cannot keep."""
    with pytest.raises(ImproperlyConfigured, match=f"{name} needs {ROOTS}"):
        load_settings(**{name: value})


@pytest.mark.parametrize(
    "given",
    [
        "yubikey",
        "cb69481e8ff7403993ec0a2729a154a8",
        "{cb69481e-8ff7-4039-93ec-0a2729a154a8}",
        "cb69481e-8ff7-4039-93ec-0a2729a154a",
        "gb69481e-8ff7-4039-93ec-0a2729a154a8",
    ],
)
def test_an_aaguid_not_written_8_4_4_4_12_stops_the_portal(load_settings, roots_file, given):
    with pytest.raises(ImproperlyConfigured, match=f"{AAGUIDS}: .*is not an AAGUID"):
        load_settings(**{ROOTS: roots_file[0], AAGUIDS: f"{AAGUID},{given}"})


def test_an_intermediate_alone_stops_the_portal(load_settings, tmp_path):
    """py_webauthn's chain check (OpenSSL) anchors only at a root: an intermediate given
    alone would refuse every key, so the portal says so at start-up."""
    root = AttestationCA("Vendor Root")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    intermediate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Vendor Batch CA")]))
        .issuer_name(root.certificate.subject)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root.key, hashes.SHA256())
    )
    path = tmp_path / "roots.pem"
    path.write_bytes(intermediate.public_bytes(Encoding.PEM))
    with pytest.raises(ImproperlyConfigured, match="Vendor Batch CA.*is not a root"):
        load_settings(**{ROOTS: str(path)})
