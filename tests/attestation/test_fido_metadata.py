"""FIDO metadata (manage.py import_fido_metadata, pkiportal.fido_mds, accounts.fido_metadata):
a BLOB signed by a test FIDO MDS PKI (made once per module with cryptography, with current
CRLs of its root and CA) is imported only when its signature and its chain to the given root
hold (the chain's revocation: test_fido_mds_revocation) and its serial number is newer; its
models' names appear where a key's model is shown; a model it reports compromised no longer
counts as approved under the attestation policy (sessions, tokens, new keys); /health/ warns
once it is past its nextUpdate. openssl checks the signature."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import jwt
import pytest
import time_machine
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts import fido_metadata
from accounts.models import FidoMetadataImport, FidoModel, WebAuthnDevice
from enrollment.models import AuditEvent
from pkiportal.fido_mds import MetadataError, RevocationUnknown, read_blob
from tests.attestation.test_api_token_attestation import (
    minted_in_session,
    refused_for_its_key,
    signed_in_with,
)
from tests.attestation.test_passkey_attestation import (
    OTHER_MODEL,
    approved_key,
    register,
    register_through_service,
    with_app,
)
from tests.enrollment.api_tools import PENDING
from tests.second_factor import verified_login
from tests.test_passkeys import browser, events, password_only, sign_in_with_key
from tests.webauthn_authenticator import MODEL_AAGUID, aaguid_text, unb64url

MODEL = aaguid_text(MODEL_AAGUID)
OTHER = aaguid_text(OTHER_MODEL)
NAME = "Test Key Series 5 NFC"


# --- a FIDO MDS PKI for the tests: root, intermediate, signing certificates ------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test FIDO MDS"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def crl_url(issuer: x509.Certificate) -> str:
    """Where the test PKI's ``issuer`` "publishes" its CRL: named in what it issues."""
    common_name = issuer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return f"http://crl.mds.test/{str(common_name).replace(' ', '-').lower()}.crl"


def _certificate(
    subject: str,
    public_key: Any,
    *,
    issuer: x509.Certificate | None = None,
    issuer_key: Any = None,
    ca: bool,
    ends: datetime | None = None,
    serial: int | None = None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    issuer_name = issuer.subject if issuer is not None else _name(subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now - timedelta(days=2))
        .not_valid_after(ends or now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer.public_key() if issuer is not None else public_key
            ),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    if issuer is not None:
        point = x509.DistributionPoint(
            [x509.UniformResourceIdentifier(crl_url(issuer))], None, None, None
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_crl(
    issuer: x509.Certificate,
    issuer_key: Any,
    *revoked: x509.Certificate,
    number: int = 1,
    this_update: datetime | None = None,
    next_update: datetime | None = None,
    reason: x509.ReasonFlags = x509.ReasonFlags.key_compromise,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.CertificateRevocationList:
    """A CRL of ``issuer`` (signed with ``issuer_key``: another key makes a forged one),
    current for a week unless told, listing ``revoked`` a day ago for ``reason``."""
    now = datetime.now(UTC).replace(microsecond=0)
    this_update = this_update or now - timedelta(hours=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(this_update)
        .next_update(next_update or this_update + timedelta(days=7))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    for certificate in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(certificate.serial_number)
            .revocation_date(now - timedelta(days=1))
            .add_extension(x509.CRLReason(reason), critical=False)
            .build()
        )
    return builder.sign(issuer_key, hashes.SHA256())


def crl_pem(*crls: x509.CertificateRevocationList) -> bytes:
    return b"".join(crl.public_bytes(Encoding.PEM) for crl in crls)


@dataclass
class Pki:
    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    intermediate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey
    rsa_leaf: x509.Certificate
    rsa_key: rsa.RSAPrivateKey
    ec_leaf: x509.Certificate
    ec_key: ec.EllipticCurvePrivateKey
    root_file: Path
    crls: list[x509.CertificateRevocationList]  # the root's (for the CA) and the CA's
    crl_file: Path  # both, in one PEM file

    def signer(self, algorithm: str) -> tuple[Any, list[x509.Certificate]]:
        if algorithm == "ES256":
            return self.ec_key, [self.ec_leaf, self.intermediate]
        return self.rsa_key, [self.rsa_leaf, self.intermediate]


def make_pki(directory: Path, name: str = "Test FIDO MDS Root") -> Pki:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate(name, root_key.public_key(), issuer_key=root_key, ca=True)
    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    intermediate = _certificate(
        f"{name} CA", intermediate_key.public_key(), issuer=root, issuer_key=root_key, ca=True
    )
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())

    def leaf(key: Any) -> x509.Certificate:
        return _certificate(
            "mds.test", key.public_key(), issuer=intermediate, issuer_key=intermediate_key, ca=False
        )

    root_file = directory / "mds-root.pem"
    root_file.write_bytes(root.public_bytes(Encoding.PEM))
    crls = [make_crl(root, root_key), make_crl(intermediate, intermediate_key)]
    crl_file = directory / "mds-crls.pem"
    crl_file.write_bytes(crl_pem(*crls))
    return Pki(
        root, root_key, intermediate, intermediate_key, leaf(rsa_key), rsa_key,
        leaf(ec_key), ec_key, root_file, crls, crl_file,
    )  # fmt: skip


@pytest.fixture(scope="module")
def mds(tmp_path_factory) -> Pki:
    """The FIDO MDS PKI, made once for the module."""
    return make_pki(tmp_path_factory.mktemp("mds"))


def der64(certificate: x509.Certificate) -> str:
    return base64.b64encode(certificate.public_bytes(Encoding.DER)).decode()


def entry(
    aaguid: str = MODEL,
    description: str = NAME,
    *reports: tuple[str, str],
    roots: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A metadata entry; ``reports``: (status, effectiveDate), FIDO_CERTIFIED_L1 if none."""
    return {
        "aaguid": aaguid,
        "metadataStatement": {
            "aaguid": aaguid,
            "description": description,
            "attestationRootCertificates": list(roots),
        },
        "statusReports": [
            {"status": status, "effectiveDate": effective}
            for status, effective in (reports or (("FIDO_CERTIFIED_L1", "2024-01-10"),))
        ],
        "timeOfLastStatusChange": "2024-01-10",
    }


def payload(number: int = 10, *entries: dict[str, Any], next_update: str = "") -> dict[str, Any]:
    soon = (datetime.now(UTC).date() + timedelta(days=30)).isoformat()
    return {
        "legalHeader": "test",
        "no": number,
        "nextUpdate": next_update or soon,
        "entries": list(entries) if entries else [entry()],
    }


def sign(
    pki: Pki,
    body: Any,
    algorithm: str = "RS256",
    chain: list[x509.Certificate] | None = None,
    key: Any = None,
) -> bytes:
    """The BLOB: a JWS over ``body`` as JSON (any JSON, not only an object), or over raw
    bytes for a payload that is no JSON."""
    signing_key, default_chain = pki.signer(algorithm)
    headers = {"x5c": [der64(c) for c in (chain or default_chain)]}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return jwt.api_jws.encode(
        data, key or signing_key, algorithm=algorithm, headers=headers
    ).encode()


def run(
    tmp_path: Path, blob: bytes, root: Path | None, crls: Pki | None = None, **options: Any
) -> str:
    """The command's output; ``crls``: the CRLs of that PKI given with --crl (without them,
    or --no_revocation_check=True in ``options``, a BLOB that gets that far is refused)."""
    path = tmp_path / "blob.jwt"
    path.write_bytes(blob)
    out = StringIO()
    if root is not None:
        options["root"] = str(root)
    if crls is not None:
        options["crl"] = [str(crls.crl_file)]
    call_command("import_fido_metadata", str(path), stdout=out, stderr=out, **options)
    return out.getvalue()


def imported(pki: Pki, tmp_path: Path, *entries: dict[str, Any], number: int = 10) -> str:
    return run(tmp_path, sign(pki, payload(number, *entries)), pki.root_file, pki)


def nothing_stored() -> None:
    assert not FidoModel.objects.exists()
    assert not FidoMetadataImport.objects.exists()
    assert not AuditEvent.objects.filter(action="fido_metadata.import").exists()


def report(status: str, effective: str = "2025-03-01") -> tuple[str, str]:
    return (status, effective)


# --- the import ----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_a_blob_signed_under_the_root_is_imported_and_audited(mds, tmp_path, algorithm):
    vendor_root = base64.b64encode(b"\x30\x03\x02\x01\x01").decode()
    blob = sign(
        mds,
        payload(
            83,
            entry(MODEL, NAME, roots=(vendor_root,)),
            entry(OTHER, "Other Key", report("FIDO_CERTIFIED_L2", "2023-05-01")),
            {"aaid": "4e4e#4005", "statusReports": [], "timeOfLastStatusChange": "2020-01-01"},
        ),
        algorithm,
    )

    out = run(tmp_path, blob, mds.root_file, mds)

    assert "Imported FIDO metadata no. 83: 2 key models, 0 reported compromised" in out
    models = {m.aaguid: m for m in FidoModel.objects.all()}
    assert set(models) == {MODEL, OTHER}  # the UAF entry (an aaid) names no WebAuthn key
    assert (models[MODEL].description, models[MODEL].status) == (NAME, "FIDO_CERTIFIED_L1")
    assert models[MODEL].status_date == date(2024, 1, 10)
    assert models[MODEL].attestation_roots == [vendor_root]
    assert FidoMetadataImport.objects.get().number == 83
    event = AuditEvent.objects.get(action="fido_metadata.import")
    assert (event.actor_name, event.detail["number"], event.detail["models"]) == ("system", 83, 2)
    assert event.detail["signer"] == "CN=mds.test,O=Test FIDO MDS"
    assert event.detail["revocation_checked"] is True
    assert [(c["certificate"], c["number"]) for c in event.detail["crls"]] == [
        ("CN=mds.test,O=Test FIDO MDS", 1),
        ("CN=Test FIDO MDS Root CA,O=Test FIDO MDS", 1),
    ]


@pytest.mark.django_db
def test_the_root_comes_from_the_setting_without_root(mds, tmp_path, settings):
    settings.PKIPORTAL_FIDO_MDS_ROOT = str(mds.root_file)
    assert "no. 10" in run(tmp_path, sign(mds, payload()), None, mds)

    settings.PKIPORTAL_FIDO_MDS_ROOT = ""
    with pytest.raises(CommandError, match="give --root ROOT_PEM or set PKIPORTAL_FIDO_MDS_ROOT"):
        run(tmp_path, sign(mds, payload(11)), None)


@pytest.mark.django_db
def test_a_new_import_replaces_the_models_of_the_last(mds, tmp_path):
    imported(mds, tmp_path, entry(MODEL), entry(OTHER, "Other Key"), number=1)

    out = imported(mds, tmp_path, entry(MODEL, "Renamed"), number=2)

    assert "replacing no. 1" in out
    assert list(FidoModel.objects.values_list("aaguid", "description")) == [(MODEL, "Renamed")]
    assert list(FidoMetadataImport.objects.order_by("number").values_list("number")) == [(1,), (2,)]


@pytest.mark.django_db
@pytest.mark.parametrize("number", [7, 6], ids=["the-same", "older"])
def test_a_blob_no_newer_than_the_imported_one_is_refused(mds, tmp_path, number):
    imported(mds, tmp_path, entry(MODEL, "Current"), number=7)

    with pytest.raises(CommandError) as refused:
        imported(mds, tmp_path, entry(MODEL, "Rolled back"), number=number)

    assert f"serial number ({number}) is not greater than that of the imported one (7)" in str(
        refused.value
    )
    assert "nothing imported" in str(refused.value)
    assert list(FidoModel.objects.values_list("description", flat=True)) == ["Current"]
    assert AuditEvent.objects.filter(action="fido_metadata.import").count() == 1


@pytest.mark.django_db
def test_a_blob_whose_payload_was_altered_is_refused(mds, tmp_path):
    header, _payload, signature = sign(mds, payload(5)).decode().split(".")
    forged = jwt.utils.base64url_encode(json.dumps(payload(99)).encode()).decode()

    with pytest.raises(CommandError, match="signature does not verify"):
        run(tmp_path, f"{header}.{forged}.{signature}".encode(), mds.root_file, mds)

    nothing_stored()


@pytest.mark.django_db
def test_a_blob_signed_by_another_key_than_its_certificate_s_is_refused(mds, tmp_path):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(CommandError, match="signature does not verify"):
        run(tmp_path, sign(mds, payload(), key=other), mds.root_file, mds)
    nothing_stored()


@pytest.mark.django_db
def test_a_blob_under_another_root_is_refused(mds, tmp_path):
    stranger = make_pki(tmp_path, "Counterfeit MDS Root")

    with pytest.raises(CommandError, match="does not lead to the given FIDO MDS root"):
        run(tmp_path, sign(stranger, payload()), mds.root_file, stranger)
    with pytest.raises(CommandError, match="does not lead to the given FIDO MDS root"):
        run(tmp_path, sign(mds, payload()), stranger.root_file, mds)  # the wrong --root
    nothing_stored()


def test_a_chain_ending_in_a_cross_signed_new_root_verifies_under_either_root(mds, tmp_path):
    """As the real service's since its move from GlobalSign Root CA - R3 to Root R46: x5c
    carries the new root cross-signed by the old. The path is built, not taken as given:
    the new root alone and the old root alone both verify it. Revocation follows the path
    built: under the old root the cross-certificate needs the old root's CRL too."""
    new_key = ec.generate_private_key(ec.SECP256R1())
    new_root = _certificate("New MDS Root", new_key.public_key(), issuer_key=new_key, ca=True)
    cross = _certificate(
        "New MDS Root", new_key.public_key(), issuer=mds.root, issuer_key=mds.root_key, ca=True
    )
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(
        "New MDS CA", ca_key.public_key(), issuer=new_root, issuer_key=new_key, ca=True
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate("mds.test", leaf_key.public_key(), issuer=ca, issuer_key=ca_key, ca=False)
    blob = sign(mds, payload(), "ES256", [leaf, ca, cross], leaf_key)
    now = datetime.now(UTC)

    ca_crl, new_root_crl = make_crl(ca, ca_key), make_crl(new_root, new_key)
    old_root_crl = mds.crls[0]

    assert read_blob(blob, [new_root], now=now, crls=[ca_crl, new_root_crl]).number == 10
    under_old = read_blob(blob, [mds.root], now=now, crls=[ca_crl, new_root_crl, old_root_crl])
    assert under_old.number == 10
    assert [used.certificate for used in under_old.revocation or ()] == [
        "CN=mds.test,O=Test FIDO MDS",
        "CN=New MDS CA,O=Test FIDO MDS",
        "CN=New MDS Root,O=Test FIDO MDS",  # the cross-certificate, on the old root's CRL
    ]
    with pytest.raises(RevocationUnknown, match="CA certificate CN=New MDS Root") as missing:
        read_blob(blob, [mds.root], now=now, crls=[ca_crl, new_root_crl])
    assert crl_url(mds.root) in str(missing.value)
    with pytest.raises(MetadataError, match="does not lead to the given FIDO MDS root"):
        read_blob(blob, [make_pki(tmp_path, "Unrelated Root").root], now=now, crls=[])


@pytest.mark.django_db
def test_a_blob_whose_signing_certificate_expired_is_refused(mds, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    ended = _certificate(
        "mds.test",
        key.public_key(),
        issuer=mds.intermediate,
        issuer_key=mds.intermediate_key,
        ca=False,
        ends=datetime.now(UTC) - timedelta(days=1),
    )

    blob = sign(mds, payload(), "ES256", [ended, mds.intermediate], key)
    with pytest.raises(CommandError, match="not valid at validation time"):
        run(tmp_path, blob, mds.root_file, mds)
    nothing_stored()


@pytest.mark.django_db
def test_a_blob_is_checked_at_the_time_of_the_import(mds, tmp_path):
    """The same BLOB, imported a year and a day on, when its certificates have ended."""
    blob = sign(mds, payload())
    later = datetime.now(UTC) + timedelta(days=366)
    with (
        time_machine.travel(later),
        pytest.raises(CommandError, match="not valid at validation time"),
    ):
        run(tmp_path, blob, mds.root_file, mds)
    nothing_stored()


@pytest.mark.django_db
def test_a_root_file_that_is_no_root_is_refused(mds, tmp_path):
    leaf_file = tmp_path / "leaf.pem"
    leaf_file.write_bytes(mds.rsa_leaf.public_bytes(Encoding.PEM))
    with pytest.raises(CommandError, match="The FIDO MDS root: .* is not a CA certificate"):
        run(tmp_path, sign(mds, payload()), leaf_file, mds)
    nothing_stored()


def header_with(pki: Pki, **fields: Any) -> str:
    _key, chain = pki.signer("RS256")
    header = {"alg": "RS256", "typ": "JWT", "x5c": [der64(c) for c in chain], **fields}
    return jwt.utils.base64url_encode(json.dumps(header).encode()).decode()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("blob", "why"),
    [
        (lambda pki: b"\xff\xfe not ascii", "not a JWT"),
        (lambda pki: b"only.two", "not a JWT"),
        (lambda pki: b"!!!.e30.AAAA", "not a JWT"),  # the header is not base64url
        (lambda pki: f"{header_with(pki, alg='none')}.e30.".encode(), "signed with 'none'"),
        (lambda pki: f"{header_with(pki, alg='HS256')}.e30.AAAA".encode(), "signed with 'HS256'"),
        (lambda pki: f"{header_with(pki, x5c=[])}.e30.AAAA".encode(), "no certificate chain"),
        (lambda pki: f"{header_with(pki, x5c=['%%%'])}.e30.AAAA".encode(), "cannot be read"),
        (lambda pki: f"{header_with(pki, x5c=['AAAA'])}.e30.AAAA".encode(), "cannot be read"),
        (
            lambda pki: sign(pki, payload(), "ES256", [pki.rsa_leaf, pki.intermediate], pki.ec_key),
            "no ES256 key",
        ),
        (lambda pki: sign(pki, b"not json"), "payload cannot be read"),
        (lambda pki: sign(pki, b"[1, 2]"), "payload cannot be read"),
        (
            lambda pki: sign(pki, {"no": "10", "nextUpdate": "2030-01-01", "entries": []}),
            "no serial",
        ),
        (lambda pki: sign(pki, {"no": 1, "nextUpdate": "soon", "entries": []}), "not a date"),
        (lambda pki: sign(pki, {"no": 1, "nextUpdate": "2030-01-01"}), "no entries"),
        (lambda pki: sign(pki, payload(1, entry("not-an-aaguid"))), "not an AAGUID"),
        (lambda pki: sign(pki, payload(1, entry(roots=("%%",)))), "not base64"),
        (lambda pki: sign(pki, payload(1, entry(roots=("é",)))), "not base64"),  # not ASCII
        (
            lambda pki: sign(pki, payload(1, entry(MODEL, NAME, ("REVOKED\x00", "2025-01-01")))),
            "without a status",
        ),
        (
            lambda pki: sign(pki, payload(1, entry(MODEL, NAME, ("REVOKED", "yesterday")))),
            "not a date",
        ),
    ],  # fmt: skip
)
def test_a_malformed_blob_is_refused_and_nothing_stored(mds, tmp_path, blob, why):
    with pytest.raises(CommandError, match=why):
        run(tmp_path, blob(mds), mds.root_file, mds)
    nothing_stored()


# Any JSON at all, for the payload and within an entry.
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    ["no", "nextUpdate", "entries", "aaguid", "metadataStatement", "description",
     "attestationRootCertificates", "statusReports", "status", "effectiveDate"]
)  # fmt: skip


@st.composite
def near_payloads(draw: Any) -> Any:
    """A well-formed payload with one field somewhere replaced by any JSON value."""
    body = payload(3, entry(MODEL, NAME, report("REVOKED"), roots=("AAAA",)))
    target = draw(st.sampled_from(["payload", "entry", "statement", "report"]))
    holder = {
        "payload": body,
        "entry": body["entries"][0],
        "statement": body["entries"][0]["metadataStatement"],
        "report": body["entries"][0]["statusReports"][0],
    }[target]
    holder[draw(FIELDS)] = draw(JSON)
    return body


# The module's fixtures come with function-scoped autouse ones (the relying party's settings),
# which these tests do not use.
@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.one_of(JSON, near_payloads()))
def test_any_signed_payload_is_read_or_refused_never_a_crash(mds, body):
    blob = sign(mds, body, "ES256")
    try:
        read = read_blob(blob, [mds.root], now=datetime.now(UTC), crls=mds.crls)
    except MetadataError:
        return
    assert all(len(e.description) <= 200 and e.aaguid == e.aaguid.lower() for e in read.entries)


@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(noise=st.binary(max_size=300), cut=st.integers(min_value=0, max_value=4000))
def test_any_bytes_or_a_damaged_blob_are_refused_never_a_crash(mds, noise, cut):
    blob = sign(mds, payload(), "ES256")
    for data in (noise, blob[:cut] + noise + blob[cut + len(noise) :]):
        if (
            data.strip() == blob.strip()
        ):  # blanks around the file are no damage: read_blob strips them
            continue
        with pytest.raises(MetadataError):
            read_blob(data, [mds.root], now=datetime.now(UTC), crls=mds.crls)


@pytest.mark.django_db
@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=near_payloads())
def test_a_refused_payload_stores_nothing(mds, tmp_path, body):
    with transaction.atomic():  # each example's import rolled back for the next
        try:
            run(tmp_path, sign(mds, body), mds.root_file, mds)
        except CommandError:
            nothing_stored()
        else:  # a replacement that still makes a valid BLOB
            assert FidoMetadataImport.objects.filter(number=3).exists()
        transaction.set_rollback(True)


def test_the_latest_status_report_is_the_model_s_status(mds):
    body = payload(
        1,
        entry(
            MODEL,
            NAME,
            report("FIDO_CERTIFIED_L1", "2022-01-01"),
            report("USER_VERIFICATION_BYPASS", "2024-06-01"),
            report("FIDO_CERTIFIED_L2", "2023-01-01"),
        ),
        entry(OTHER, "Undated", report("REVOKED", "2021-01-01"), ("UPDATE_AVAILABLE", None)),  # type: ignore[arg-type]
    )

    read = {
        e.aaguid: e
        for e in read_blob(
            sign(mds, body), [mds.root], now=datetime.now(UTC), crls=mds.crls
        ).entries
    }

    assert (read[MODEL].status, read[MODEL].status_date) == (
        "USER_VERIFICATION_BYPASS",
        date(2024, 6, 1),
    )
    assert (read[OTHER].status, read[OTHER].status_date) == ("REVOKED", date(2021, 1, 1))


def test_a_model_listed_twice_counts_as_its_entry_with_the_later_status(mds):
    body = payload(
        1,
        entry(MODEL, "Old name", report("FIDO_CERTIFIED_L1plus", "2025-03-01")),
        entry(MODEL, NAME, report("USER_KEY_PHYSICAL_COMPROMISE", "2025-03-01")),
        entry(MODEL, "Older", report("FIDO_CERTIFIED_L2plus", "2024-01-01")),
        entry(OTHER, "Other", roots=("AAAA\nAAAA",)),
    )

    read = read_blob(sign(mds, body), [mds.root], now=datetime.now(UTC), crls=mds.crls).entries

    assert [(e.aaguid, e.description, e.status) for e in read] == [
        (MODEL, NAME, "USER_KEY_PHYSICAL_COMPROMISE"),
        (OTHER, "Other", "FIDO_CERTIFIED_L1"),
    ]
    assert read[1].attestation_roots == ("AAAAAAAA",)


@pytest.mark.interop
@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_openssl_verifies_the_signature_and_chain_the_import_accepts(mds, tmp_path, algorithm):
    """The JWT's signature checked by openssl over its signing input, with the key of the
    x5c's first certificate (openssl reads it from the DER); ES256's raw r||s made DER."""
    token = sign(mds, payload(), algorithm)
    header, body, signature = token.split(b".")
    chain = jwt.get_unverified_header(token)["x5c"]
    for index, der in enumerate(chain):
        (tmp_path / f"{index}.der").write_bytes(base64.b64decode(der))
    raw = unb64url(signature.decode())
    if algorithm == "ES256":
        raw = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    (tmp_path / "signature").write_bytes(raw)

    def openssl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", *args], capture_output=True, text=True, timeout=30, cwd=tmp_path
        )

    assert openssl("x509", "-inform", "DER", "-in", "0.der", "-out", "leaf.pem").returncode == 0
    assert openssl("x509", "-inform", "DER", "-in", "1.der", "-out", "ca.pem").returncode == 0
    assert (
        openssl("x509", "-in", "leaf.pem", "-pubkey", "-noout", "-out", "key.pem").returncode == 0
    )
    results = {}
    for name, data in (("signed", header + b"." + body), ("forged", header + b"." + body + b"x")):
        (tmp_path / name).write_bytes(data)
        results[name] = openssl(
            "dgst", "-sha256", "-verify", "key.pem", "-signature", "signature", name
        )
    chain_check = openssl(
        "verify", "-CAfile", str(mds.root_file), "-untrusted", "ca.pem", "leaf.pem"
    )

    assert results["signed"].returncode == 0, results["signed"].stderr
    assert "Verified OK" in results["signed"].stdout
    assert results["forged"].returncode != 0
    assert chain_check.returncode == 0, chain_check.stdout + chain_check.stderr
    assert read_blob(token, [mds.root], now=datetime.now(UTC), crls=mds.crls).number == 10
    forged = jwt.utils.base64url_encode(json.dumps(payload(11)).encode())
    with pytest.raises(MetadataError, match="signature does not verify"):
        read_blob(
            header + b"." + forged + b"." + signature,
            [mds.root],
            now=datetime.now(UTC),
            crls=mds.crls,
        )


# --- names where a key's model is shown ----------------------------------------------------------


@pytest.mark.django_db
def test_the_account_page_names_each_key_s_model_in_one_query(
    mds, tmp_path, officer, vendor, policy
):
    policy()
    imported(mds, tmp_path, entry(MODEL, NAME), entry(OTHER, "Other Key"))
    register_through_service(officer, approved_key(vendor))
    client = verified_login(browser(), officer)

    with CaptureQueriesContext(connection) as one_key:
        page = client.get("/account/").content.decode()
    for _more in range(3):
        register_through_service(officer, approved_key(vendor, OTHER_MODEL))
    with CaptureQueriesContext(connection) as four_keys:
        many = client.get("/account/").content.decode()

    assert f'<span title="AAGUID {MODEL}">{NAME}</span>, added ' in page
    assert many.count(">Other Key</span>") == 3
    assert many.count(", approved model") == 4
    model_reads = [
        [q for q in queries if "accounts_fidomodel" in q["sql"]] for queries in (one_key, four_keys)
    ]
    assert len(model_reads[0]) == len(model_reads[1]) <= 2  # names, and compromised models


@pytest.mark.django_db
def test_without_metadata_the_pages_show_the_aaguid_as_before(
    officer, vendor, policy, admin_client_
):
    policy()
    register_through_service(officer, approved_key(vendor))

    page = verified_login(browser(), officer).get("/account/").content.decode()
    admin = admin_client_.get(f"/admin/accounts/user/{officer.pk}/change/").content.decode()

    assert 'title="AAGUID' not in page
    assert ", approved model" in page
    assert f"attested (packed), model {MODEL}: approved model" in admin


@pytest.mark.django_db
def test_the_admin_names_the_model_with_its_aaguid(
    mds, tmp_path, officer, vendor, policy, admin_client_
):
    policy()
    imported(mds, tmp_path, entry(MODEL, NAME))
    key = approved_key(vendor)
    register_through_service(officer, key)
    _api, token = minted_in_session(signed_in_with(officer, key))

    user_page = admin_client_.get(f"/admin/accounts/user/{officer.pk}/change/").content.decode()
    token_page = admin_client_.get(
        f"/admin/enrollment/apitoken/{token.pk}/change/"
    ).content.decode()

    assert f"attested (packed), model {NAME} ({MODEL}): approved model" in user_page
    assert f"security key, model proved ({NAME} ({MODEL}))" in token_page


# --- a model reported compromised ------------------------------------------------------------


@pytest.mark.django_db
def test_a_model_reported_compromised_stops_opening_the_session_and_the_page_says_why(
    mds, tmp_path, officer, vendor, policy
):
    policy()
    key = approved_key(vendor)
    register_through_service(officer, key)
    before = password_only(officer)
    assert sign_in_with_key(before, key).json()["redirect"] == "/ra/requests/"
    api, _token = minted_in_session(before)
    assert api.get(PENDING).status_code == 200

    out = imported(mds, tmp_path, entry(MODEL, NAME, report("ATTESTATION_KEY_COMPROMISE")))
    client = password_only(officer)

    assert "1 reported compromised" in out
    assert "no longer count as approved under the attestation policy: 1." in out
    assert sign_in_with_key(client, key).json()["redirect"] == "/account/"
    assert client.get("/ra/requests/")["Location"] == "/account/"
    assert client.get("/api/v1/certificates/").json()["missing"] == "approved_security_key"
    refused_for_its_key(api.get(PENDING))  # the token minted with it, too
    page = client.get("/account/").content.decode()
    assert 'id="approved-key-needed"' in page
    assert (
        "the FIDO Alliance reports the model of the key you signed in with as compromised "
        "(ATTESTATION_KEY_COMPROMISE since 2025-03-01): its maker&#x27;s attestation key is "
        "known to others"
    ) in page
    assert "The FIDO Alliance reports this model as compromised (ATTESTATION_KEY_COMPROMISE" in page
    assert "It does not open your role" in page
    assert not WebAuthnDevice.objects.get(user=officer).approved


@pytest.mark.django_db
def test_a_later_status_that_is_no_compromise_gives_the_approval_back(
    mds, tmp_path, officer, vendor, policy
):
    policy()
    key = approved_key(vendor)
    register_through_service(officer, key)
    imported(mds, tmp_path, entry(MODEL, NAME, report("USER_VERIFICATION_BYPASS")), number=1)
    assert sign_in_with_key(password_only(officer), key).json()["redirect"] == "/account/"

    imported(
        mds,
        tmp_path,
        entry(
            MODEL,
            NAME,
            report("USER_VERIFICATION_BYPASS"),
            report("FIDO_CERTIFIED_L1", "2025-09-01"),
        ),
        number=2,
    )

    assert sign_in_with_key(password_only(officer), key).json()["redirect"] == "/ra/requests/"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "status", ["REVOKED", "ATTESTATION_KEY_COMPROMISE", "USER_VERIFICATION_BYPASS",
               "USER_KEY_REMOTE_COMPROMISE", "USER_KEY_PHYSICAL_COMPROMISE"],
)  # fmt: skip
def test_a_key_of_a_compromised_model_is_refused_when_added(
    mds, tmp_path, officer, vendor, policy, status
):
    policy()
    imported(mds, tmp_path, entry(MODEL, NAME, report(status)))
    client, seed = with_app(officer)

    _options, refused = register(client, approved_key(vendor), seed)
    _options, other = register(client, approved_key(vendor, OTHER_MODEL), seed)

    assert refused.status_code == 400
    assert refused.json()["detail"].startswith(
        "The FIDO Alliance reports this security key's model as "
    )
    assert f"({status} since 2025-03-01)" in refused.json()["detail"]
    assert other.status_code == 200  # a model the metadata does not report
    assert list(WebAuthnDevice.objects.filter(user=officer).values_list("aaguid", flat=True)) == [
        OTHER
    ]
    assert events("mfa.verify")[-1].detail["reason"] == "attestation: model reported compromised"


@pytest.mark.django_db
@pytest.mark.parametrize("status", ["FIDO_CERTIFIED_L1", "UPDATE_AVAILABLE", "NOT_FIDO_CERTIFIED"])
def test_other_statuses_change_nothing(mds, tmp_path, officer, vendor, policy, status):
    policy()
    imported(mds, tmp_path, entry(MODEL, NAME, report(status)))
    client, seed = with_app(officer)
    assert register(client, approved_key(vendor), seed)[1].status_code == 200
    assert WebAuthnDevice.objects.get(user=officer).approved


@pytest.mark.django_db
def test_without_the_policy_a_compromised_model_is_only_reported(mds, tmp_path, officer):
    """The key opens the session as before (no policy weighs models); its page says it."""
    from tests.webauthn_authenticator import SoftKey

    key = SoftKey(aaguid=MODEL_AAGUID)
    register_through_service(officer, key)
    imported(mds, tmp_path, entry(MODEL, NAME, report("REVOKED")))
    client = password_only(officer)

    assert sign_in_with_key(client, key).json()["redirect"] == "/ra/requests/"
    page = client.get("/account/").content.decode()
    assert "The FIDO Alliance reports this model as revoked (REVOKED since 2025-03-01)" in page
    assert "It does not open your role" not in page


@pytest.mark.django_db
def test_the_admin_list_counts_no_key_of_a_compromised_model_as_approved(
    mds, tmp_path, officer, vendor, policy, admin_client_
):
    policy()
    register_through_service(officer, approved_key(vendor))
    register_through_service(officer, approved_key(vendor, OTHER_MODEL))
    imported(mds, tmp_path, entry(MODEL, NAME, report("USER_KEY_REMOTE_COMPROMISE")))

    page = admin_client_.get("/admin/accounts/user/")
    detail = admin_client_.get(f"/admin/accounts/user/{officer.pk}/change/").content.decode()

    rows = {user.username: user for user in page.context["cl"].result_list}
    assert page.context["cl"].model_admin.second_factor_summary(rows["olivia"]) == (
        "2 keys (1 approved)"
    )
    assert (
        f"model {NAME} ({MODEL}): not approved: the FIDO Alliance reports it as compromised "
        "(USER_KEY_REMOTE_COMPROMISE since 2025-03-01)"
    ) in detail


@pytest.mark.django_db
def test_the_compromised_models_are_read_once_per_request(mds, tmp_path, officer, vendor, policy):
    policy()
    for aaguid in (MODEL_AAGUID, OTHER_MODEL, OTHER_MODEL):
        register_through_service(officer, approved_key(vendor, aaguid))
    imported(mds, tmp_path, entry(MODEL, NAME, report("REVOKED")))
    client = verified_login(browser(), officer)

    with CaptureQueriesContext(connection) as queries:
        page = client.get("/account/")
    compromised_reads = [
        q for q in queries if "accounts_fidomodel" in q["sql"] and '"status" IN' in q["sql"]
    ]

    assert page.status_code == 200
    assert page.content.decode().count("data-model-compromised") == 1
    assert len(compromised_reads) == 1
    # Outside a request nothing is remembered: an import is seen at once.
    FidoModel.objects.update(status="FIDO_CERTIFIED_L1")
    assert fido_metadata.compromised_models() == {}


# --- stale metadata --------------------------------------------------------------------------


@pytest.mark.django_db
def test_health_warns_once_the_metadata_is_past_its_next_update(mds, tmp_path, settings):
    settings.PKIPORTAL_HEALTH_TOKEN = "t" * 40

    def check() -> dict[str, Any]:
        monitoring = {"Authorization": f"Bearer {'t' * 40}"}
        body = Client().get("/health/", headers=monitoring, secure=True).json()
        return body["checks"]["fido_metadata"]

    assert check() == {"status": "ok", "mode": "not imported"}
    due = datetime.now(UTC).date() + timedelta(days=2)
    run(tmp_path, sign(mds, payload(4, next_update=due.isoformat())), mds.root_file, mds)
    assert check()["status"] == "ok"
    assert check()["next_update"] == due.isoformat()

    with time_machine.travel(datetime.now(UTC) + timedelta(days=4)):
        late = check()

    assert late["status"] == "warn"
    assert f"was due to be replaced on {due:%Y-%m-%d}" in late["problems"][0]


@pytest.mark.django_db
def test_an_import_past_its_next_update_is_taken_with_a_warning(mds, tmp_path):
    out = run(tmp_path, sign(mds, payload(4, next_update="2020-01-01")), mds.root_file, mds)
    assert "This BLOB was due to be replaced on 2020-01-01" in out
    assert FidoMetadataImport.objects.get().number == 4
