"""The management commands: thin CLIs over services, clear errors, nothing half done."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

import pytest

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from enrollment.models import (
    AuditEvent,
    Certificate,
    CertificateAuthority,
    KeyRecoveryAgent,
    RevocationList,
)
from enrollment.x509 import keys, pkcs12
from enrollment.x509.crl import build_crl
from tests.conftest import ROOT_PASSPHRASE
from tests.enrollment.tools import (
    CLAIMED_EMAIL,
    CLAIMED_NAME,
    EC_P256,
    cryptography_csr,
    issue,
    openssl_csr,
    row_counts,
)
from tests.pki import OpenSSL

pytestmark = pytest.mark.django_db


def run(command: str, /, *args: str, **options: object) -> str:
    """call_command with stdout captured and returned."""
    out = StringIO()
    call_command(command, *args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    if data.startswith(b"-----BEGIN"):
        return x509.load_pem_x509_csr(data)
    return x509.load_der_x509_csr(data)


@pytest.fixture(scope="module")
def module_openssl(tmp_path_factory) -> OpenSSL:
    """An openssl working directory shared by the module's slow-to-make files."""
    return OpenSSL(tmp_path_factory.mktemp("openssl"))


@pytest.fixture(scope="module")
def rsa_key_file(module_openssl, rsa_2048_key) -> Path:
    """The session's RSA 2048 key as a file, so openssl need not generate another."""
    return module_openssl.write_key("rsa-2048-key.pem", rsa_2048_key)


@pytest.fixture(scope="module")
def agent_certificate(module_openssl, rsa_key_file) -> Path:
    """A self-signed RSA key-encipherment certificate made by `openssl req -x509`."""
    out = module_openssl.path("agent.pem")
    module_openssl.run(
        "req",
        "-x509",
        "-key",
        rsa_key_file,
        "-days",
        "30",
        "-subj",
        "/CN=Security team KRA",
        "-addext",
        "keyUsage=critical,keyEncipherment",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-out",
        out,
    )
    return out


# --- create_pki -----------------------------------------------------------------------


def create_pki(tmp_path: Path, key_name: str = "root-key.pem", **options: str) -> str:
    return run(
        "create_pki",
        root_key_out=str(tmp_path / "offline" / key_name),
        root_passphrase_file=str(tmp_path / "offline" / "root-passphrase"),
        root_key_algorithm="ec-p384",
        issuing_key_algorithm="ec-p256",
        **({"country": "GB"} | options),
    )


def test_create_pki_creates_an_offline_root_and_an_online_issuing_ca(tmp_path, settings):
    output = create_pki(tmp_path)

    root = CertificateAuthority.objects.get(slug="root")
    issuing = CertificateAuthority.objects.get(slug="issuing")
    assert root.parent is None
    assert not root.is_online
    assert root.key_reference == ""
    assert issuing.parent == root
    assert issuing.is_online
    assert (Path(settings.PKIPORTAL_KEY_DIR) / issuing.key_reference).is_file()
    issuing.certificate.verify_directly_issued_by(root.certificate)
    assert issuing.crl_url == "http://pki.example.com/pki/issuing.crl"
    assert issuing.latest_crl().number == 1
    # The root key went, encrypted, to the operator's file and nowhere else.
    passphrase = (tmp_path / "offline" / "root-passphrase").read_bytes()
    root_key_pem = (tmp_path / "offline" / "root-key.pem").read_bytes()
    assert root_key_pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    root_key = keys.load_private_key_pem(root_key_pem, passphrase)
    assert root_key.public_key() == root.certificate.public_key()
    assert "offline" in output


def test_both_cas_name_the_organisation_and_the_country(tmp_path):
    create_pki(tmp_path, country="de", organization="Beispiel GmbH")

    for ca in CertificateAuthority.objects.all():
        subject = ca.certificate.subject
        assert subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "DE"
        assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
            "Beispiel GmbH"
        )


def test_create_pki_takes_the_country_from_the_setting(tmp_path, settings):
    settings.PKIPORTAL_COUNTRY_NAME = "FR"

    run(
        "create_pki",
        root_key_out=str(tmp_path / "offline" / "root-key.pem"),
        root_passphrase_file=str(tmp_path / "offline" / "root-passphrase"),
        root_key_algorithm="ec-p384",
        issuing_key_algorithm="ec-p256",
    )

    root = CertificateAuthority.objects.get(slug="root")
    assert root.certificate.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "FR"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, r"must name its country.* \(S/MIME BR 7.1.4.3.1\). Give --country XX or set "
             "PKIPORTAL_COUNTRY_NAME"),
        ({"country": "GBR"}, "not a two-letter .* Fix --country 'GBR'"),
        ({"country": "GB", "organization": ""},
         r"must name its organisation \(S/MIME BR 7.1.4.3.1\).*--organization or set "
         "PKIPORTAL_ORGANIZATION_NAME"),
    ],
)  # fmt: skip
def test_create_pki_refuses_cas_without_country_or_organisation(
    tmp_path, settings, options, message
):
    """S/MIME BR 7.1.4.3.1; PKIPORTAL_COUNTRY_NAME is empty unless set."""
    assert settings.PKIPORTAL_COUNTRY_NAME == ""

    with pytest.raises(CommandError, match=message):
        call_command(
            "create_pki",
            root_key_out=str(tmp_path / "offline" / "root-key.pem"),
            root_passphrase_file=str(tmp_path / "offline" / "root-passphrase"),
            embedded_passphrase=True,
            **options,
        )

    assert not CertificateAuthority.objects.exists()
    assert not (tmp_path / "offline").exists()  # no key, no passphrase file
    assert not Path(settings.PKIPORTAL_EMBEDDED_PASSPHRASE_FILE).exists()


def test_create_pki_refuses_to_overwrite_an_existing_hierarchy(tmp_path, settings):
    create_pki(tmp_path)
    before = row_counts()
    fingerprints = set(CertificateAuthority.objects.values_list("fingerprint_sha256", flat=True))
    root_key_pem = (tmp_path / "offline" / "root-key.pem").read_bytes()
    key_files = sorted(os.listdir(settings.PKIPORTAL_KEY_DIR))

    with pytest.raises(CommandError, match="already exists"):
        create_pki(tmp_path, key_name="second-root-key.pem")

    assert row_counts() == before
    assert set(CertificateAuthority.objects.values_list("fingerprint_sha256", flat=True)) == (
        fingerprints
    )
    assert (tmp_path / "offline" / "root-key.pem").read_bytes() == root_key_pem
    assert not (tmp_path / "offline" / "second-root-key.pem").exists()
    assert sorted(os.listdir(settings.PKIPORTAL_KEY_DIR)) == key_files


def test_create_pki_writes_no_passphrase_file_when_it_refuses(tmp_path):
    create_pki(tmp_path)

    with pytest.raises(CommandError, match="already exists"):
        call_command(
            "create_pki",
            root_key_out=str(tmp_path / "other" / "root-key.pem"),
            root_passphrase_file=str(tmp_path / "other" / "root-passphrase"),
        )

    assert not (tmp_path / "other").exists()


def test_a_failed_create_pki_leaves_no_key_files_behind(tmp_path, settings, monkeypatch):
    def fail(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr("enrollment.services.audit_record", fail)

    with pytest.raises(RuntimeError):
        create_pki(tmp_path)

    assert not CertificateAuthority.objects.exists()
    assert not (tmp_path / "offline" / "root-key.pem").exists()
    assert not [p for p in Path(settings.PKIPORTAL_KEY_DIR).glob("*.key.pem")]


# --- register_kra ---------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["PEM", "DER"])
def test_register_kra_accepts_an_rsa_certificate(encoding, agent_certificate, openssl, employee):
    path = agent_certificate
    if encoding == "DER":
        path = openssl.path("agent.der")
        openssl.run("x509", "-in", agent_certificate, "-outform", "DER", "-out", path)

    output = run("register_kra", str(path), name="Security team KRA", user="alice")

    agent = KeyRecoveryAgent.objects.get()
    assert agent.certificate == x509.load_pem_x509_certificate(agent_certificate.read_bytes())
    assert agent.name == "Security team KRA"
    assert agent.user == employee
    assert agent.is_active
    assert AuditEvent.objects.filter(action="kra.register", object_id=str(agent.pk)).exists()
    assert "Registered key recovery agent Security team KRA" in output


def test_register_kra_refuses_the_same_certificate_twice(openssl, agent_certificate):
    der = openssl.path("agent.der")
    openssl.run("x509", "-in", agent_certificate, "-outform", "DER", "-out", der)
    run("register_kra", str(agent_certificate), name="First")

    with pytest.raises(CommandError, match="already registered"):
        run("register_kra", str(der), name="Second")

    assert KeyRecoveryAgent.objects.get().name == "First"


def rsa_certificate_valid(
    openssl: OpenSSL, rsa_2048_key, *, start: timedelta, end: timedelta
) -> Path:
    """A self-signed RSA agent certificate valid from now+start to now+end."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Odd KRA")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(rsa_2048_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + start)
        .not_valid_after(now + end)
        .sign(rsa_2048_key, hashes.SHA256())
    )
    return openssl.write_pem("agent-dates.pem", certificate)


def self_signed(openssl: OpenSSL, name: str, *args: str) -> Path:
    out = openssl.path(f"{name}.pem")
    openssl.run(
        "req", "-x509", *args, "-nodes", "-keyout", openssl.path(f"{name}-key.pem"),
        "-days", "30", "-subj", f"/CN={name}", "-out", out,
    )  # fmt: skip
    return out


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("ec", "needs an RSA certificate"),
        ("expired", "has expired"),
        ("not-yet-valid", "is not valid yet"),
        ("signature-only", "does not allow keyEncipherment"),
        ("not-a-certificate", "not a PEM or DER certificate"),
    ],
)
def test_register_kra_rejects_an_unusable_certificate(
    kind, message, openssl, rsa_2048_key, rsa_key_file
):
    if kind == "ec":
        path = self_signed(openssl, "ec-agent", *EC_P256)
    elif kind == "expired":
        path = rsa_certificate_valid(
            openssl, rsa_2048_key, start=timedelta(days=-400), end=timedelta(days=-35)
        )
    elif kind == "not-yet-valid":
        path = rsa_certificate_valid(
            openssl, rsa_2048_key, start=timedelta(days=3), end=timedelta(days=400)
        )
    elif kind == "signature-only":
        path = self_signed(
            openssl, "signer", "-key", str(rsa_key_file), "-addext", "keyUsage=digitalSignature"
        )
    else:
        path = openssl.write("agent.pem", b"-----BEGIN CERTIFICATE-----\nbm9wZQ==\n")

    with pytest.raises(CommandError, match=re.escape(message)):
        run("register_kra", str(path), name="Bad agent")

    assert not KeyRecoveryAgent.objects.exists()
    assert not AuditEvent.objects.filter(action="kra.register").exists()


# --- issue_cert -----------------------------------------------------------------------


@pytest.fixture
def make_csr(openssl, rsa_key_file, ec_p384_key):
    """CSRs that ask for Mallory's name and address, made three different ways."""

    def make(kind: str) -> Path:
        if kind == "openssl EC P-256, PEM":
            return openssl_csr(openssl, "ec", *EC_P256)
        if kind == "openssl RSA 2048, DER":
            return openssl_csr(openssl, "rsa", "-key", str(rsa_key_file), der=True)
        assert kind == "cryptography EC P-384, PEM"
        return openssl.write("c.csr", cryptography_csr(ec_p384_key).public_bytes(Encoding.PEM))

    return make


@pytest.mark.parametrize(
    ("kind", "slug"),
    [
        ("openssl EC P-256, PEM", "smime-signing"),
        ("openssl RSA 2048, DER", "smime-dual-use"),
        ("cryptography EC P-384, PEM", "smime-signing"),
    ],
)
def test_issue_cert_names_the_account_not_what_the_csr_asks_for(
    kind, slug, make_csr, hierarchy, employee, tmp_path
):
    csr_path = make_csr(kind)
    out = tmp_path / "issued.pem"

    call_command(
        "issue_cert", str(csr_path), user="alice", template=slug, out=str(out), stderr=StringIO()
    )

    issued = x509.load_pem_x509_certificate(out.read_bytes())
    common_names = issued.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [attribute.value for attribute in common_names] == ["Alice Andersson"]
    san = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["alice@example.com"]
    assert CLAIMED_NAME not in issued.subject.rfc4514_string()
    assert CLAIMED_EMAIL not in issued.subject.rfc4514_string()
    assert issued.public_key() == load_csr(csr_path.read_bytes()).public_key()
    issued.verify_directly_issued_by(hierarchy.issuing.certificate)
    row = Certificate.objects.get()
    assert row.owner == employee
    assert row.template.slug == slug
    assert bytes(row.der) == issued.public_bytes(Encoding.DER)


def test_issue_cert_prints_the_certificate_without_out(make_csr, hierarchy, employee):
    output = run(
        "issue_cert", str(make_csr("openssl EC P-256, PEM")), user="alice", template="smime-signing"
    )

    issued = x509.load_pem_x509_certificate(output.encode())
    assert issued.serial_number == int(Certificate.objects.get().serial, 16)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"user": "nobody", "template": "smime-signing"}, "No user 'nobody'"),
        ({"user": "alice", "template": "nope"}, "No template 'nope'"),
        ({"user": "alice", "template": "smime-encryption"}, "does not accept a CSR"),
    ],
)
def test_issue_cert_names_a_wrong_user_or_template(options, message, make_csr, hierarchy, employee):
    csr_path = make_csr("openssl EC P-256, PEM")
    before = row_counts()

    with pytest.raises(CommandError, match=re.escape(message)):
        run("issue_cert", str(csr_path), **options)

    assert row_counts() == before


@pytest.fixture
def make_bad_csr(openssl, hierarchy):
    def make(kind: str) -> bytes:
        if kind == "garbage":
            return b"\x00\xffthis is not a certificate request at all\x07" * 8
        if kind == "garbage DER":
            return b"\x30\x82\x01\x00" + b"\xa5" * 256
        if kind == "certificate PEM":
            return hierarchy.issuing.certificate.public_bytes(Encoding.PEM)
        if kind == "certificate DER":
            return hierarchy.issuing.certificate.public_bytes(Encoding.DER)
        if kind == "broken signature":
            der = bytearray(openssl_csr(openssl, "ec", *EC_P256, der=True).read_bytes())
            der[-1] ^= 0x01  # the last octet of the signature's s
            return bytes(der)
        if kind == "RSA 1024":
            return openssl_csr(openssl, "rsa1024", "-newkey", "rsa:1024").read_bytes()
        if kind == "1 MB":
            return b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"A" * 1024 * 1024
        if kind == "secp256k1":
            return openssl_csr(
                openssl, "k1", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"
            ).read_bytes()
        assert kind == "private key"
        openssl_csr(openssl, "ec", *EC_P256)
        return openssl.path("ec-key.pem").read_bytes()

    return make


BAD_CSRS = {
    "garbage": ["neither a PEM nor a DER certificate request"],
    "garbage DER": ["not a readable certificate request"],
    "certificate PEM": ["is a certificate, not a certificate request"],
    "certificate DER": ["is a certificate, not a certificate request"],
    "broken signature": ["signature does not verify"],
    "RSA 1024": ["at least 2048 bits", "1024"],
    "1 MB": ["larger than 64 KiB"],
    "secp256k1": ["curve", "secp256k1"],
    "private key": ["private key, not a certificate request"],
}


@pytest.mark.parametrize(("kind", "words"), BAD_CSRS.items(), ids=BAD_CSRS)
def test_issue_cert_says_what_is_wrong_with_a_bad_csr_and_stores_nothing(
    kind, words, make_bad_csr, openssl, employee
):
    path = openssl.write("bad.csr", make_bad_csr(kind))
    before = row_counts()

    with pytest.raises(CommandError) as raised:
        run("issue_cert", str(path), user="alice", template="smime-signing")

    for word in words:
        assert word in str(raised.value)
    assert row_counts() == before


# --- revoke_cert ----------------------------------------------------------------------


def colon_separated(serial: str) -> str:
    """As `openssl x509 -text` prints it: octets joined by colons."""
    digits = serial.zfill(len(serial) + len(serial) % 2)
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))


@pytest.mark.parametrize(
    "spell",
    [
        pytest.param(lambda serial: serial, id="plain hex"),
        pytest.param(str.upper, id="upper-case hex"),
        pytest.param(colon_separated, id="colons"),
        pytest.param(lambda serial: "00:" + colon_separated(serial).upper(), id="00:AB:..."),
    ],
)
def test_revoke_cert_revokes_by_hex_serial_and_the_next_crl_lists_it(
    spell, hierarchy, template, employee, ec_p256_key, django_capture_on_commit_callbacks
):
    certificate = issue(employee, template("smime-signing"), ec_p256_key)

    with django_capture_on_commit_callbacks(execute=True):
        output = run("revoke_cert", spell(certificate.serial), reason="keyCompromise")

    certificate.refresh_from_db()
    assert certificate.status == Certificate.Status.REVOKED
    assert certificate.revocation_reason == "keyCompromise"
    assert "Revoked" in output
    crl = hierarchy.issuing.latest_crl()
    assert crl.number == 2
    entry = crl.crl.get_revoked_certificate_by_serial_number(int(certificate.serial, 16))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise
    )


def test_revoke_cert_rejects_an_unknown_serial(hierarchy, template, employee, ec_p256_key):
    certificate = issue(employee, template("smime-signing"), ec_p256_key)
    before = row_counts()

    with pytest.raises(CommandError, match="No certificate with serial 0badc0ffee"):
        run("revoke_cert", "0badc0ffee")

    certificate.refresh_from_db()
    assert certificate.status == Certificate.Status.VALID
    assert row_counts() == before


def test_revoke_cert_refuses_a_second_revocation(hierarchy, template, employee, ec_p256_key):
    certificate = issue(employee, template("smime-signing"), ec_p256_key)
    run("revoke_cert", certificate.serial, reason="superseded")
    certificate.refresh_from_db()
    before = row_counts()

    with pytest.raises(CommandError, match="already revoked"):  # keyCompromise would upgrade it
        run("revoke_cert", certificate.serial, reason="affiliationChanged")

    revoked_at = certificate.revoked_at
    certificate.refresh_from_db()
    assert certificate.revocation_reason == "superseded"
    assert certificate.revoked_at == revoked_at
    assert row_counts() == before


# --- regenerate_crl -------------------------------------------------------------------


def test_regenerate_crl_publishes_the_next_crl_numbers(hierarchy):
    assert "CRL #2" in run("regenerate_crl")
    assert "CRL #3" in run("regenerate_crl", ca="issuing")

    numbers = hierarchy.issuing.revocation_lists.values_list("number", flat=True)
    assert sorted(numbers) == [1, 2, 3]
    for revocation_list in hierarchy.issuing.revocation_lists.all():
        number = revocation_list.crl.extensions.get_extension_for_class(x509.CRLNumber).value
        assert number.crl_number == revocation_list.number
    assert not hierarchy.root.revocation_lists.exists()


def test_regenerate_crl_cannot_sign_for_the_offline_root(hierarchy):
    with pytest.raises(CommandError, match="offline"):
        run("regenerate_crl", ca="root")

    assert not hierarchy.root.revocation_lists.exists()


# --- sign_root_crl --------------------------------------------------------------------


@pytest.fixture
def passphrase_file(tmp_path) -> Path:
    path = tmp_path / "root-passphrase"
    path.write_bytes(ROOT_PASSPHRASE)
    return path


def test_sign_root_crl_publishes_the_roots_crl(hierarchy, passphrase_file):
    output = run(
        "sign_root_crl",
        key_file=str(hierarchy.root_key_path),
        passphrase_file=str(passphrase_file),
    )

    published = hierarchy.root.latest_crl()
    assert published.number == 1
    assert published.crl.issuer == hierarchy.root.certificate.subject
    assert published.crl.is_signature_valid(hierarchy.root.certificate.public_key())
    assert published.next_update - published.this_update == timedelta(days=365)
    assert "CRL #1" in output
    warn_from = published.next_update - timedelta(days=30)
    assert f"/health/ warns from {warn_from:%Y-%m-%d}" in output


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("wrong passphrase", "wrong passphrase"),
        ("unrelated key", "does not belong to this CA"),
        ("400 days", "--validity-days must be 1 to 365"),
    ],
)
def test_sign_root_crl_refuses(kind, message, hierarchy, passphrase_file, tmp_path, ec_p384_key):
    key_file, days = hierarchy.root_key_path, 365
    if kind == "wrong passphrase":
        passphrase_file.write_text("not the root passphrase")
    elif kind == "unrelated key":
        key_file = tmp_path / "other-key.pem"
        key_file.write_bytes(keys.encrypt_private_key_pem(ec_p384_key, ROOT_PASSPHRASE))
    else:
        days = 400
    before = row_counts()

    with pytest.raises(CommandError, match=re.escape(message)):
        run(
            "sign_root_crl",
            key_file=str(key_file),
            passphrase_file=str(passphrase_file),
            validity_days=days,
        )

    assert not hierarchy.root.revocation_lists.exists()
    assert row_counts() == before


def test_sign_root_crl_refuses_the_online_issuing_ca(hierarchy, passphrase_file):
    """--ca must name a root: the issuing CA's CRLs may last 10 days, not 12 months."""
    before = row_counts()

    with pytest.raises(CommandError, match=r"Test Issuing CA \('issuing'\) is not a root CA"):
        run(
            "sign_root_crl",
            ca="issuing",
            key_file=str(hierarchy.root_key_path),
            passphrase_file=str(passphrase_file),
        )

    assert row_counts() == before
    assert hierarchy.issuing.latest_crl().number == 1


def test_sign_root_crl_takes_the_root_by_its_slug(hierarchy, passphrase_file):
    run(
        "sign_root_crl",
        ca="root",
        key_file=str(hierarchy.root_key_path),
        passphrase_file=str(passphrase_file),
        validity_days=30,
    )

    assert hierarchy.root.latest_crl().number == 1


# --- import_crl -----------------------------------------------------------------------


def root_crl(
    hierarchy,
    number: int,
    encoding: Encoding = Encoding.DER,
    validity: timedelta = timedelta(days=365),
    age: timedelta = timedelta(0),
) -> bytes:
    """A root CRL signed "on the air-gapped machine" with the root key file, ``age`` ago."""
    root_key = keys.load_private_key_pem(
        hierarchy.root_key_path.read_bytes(), hierarchy.root_passphrase
    )
    now = timezone.now() - age
    return build_crl(
        issuer_certificate=hierarchy.root.certificate,
        issuer_key=root_key,
        entries=[],
        crl_number=number,
        this_update=now,
        next_update=now + validity,
    ).public_bytes(encoding)


def test_import_crl_publishes_a_crl_signed_offline(hierarchy, openssl):
    path = openssl.write("root.crl", root_crl(hierarchy, 5, Encoding.PEM))

    output = run("import_crl", str(path))

    published = hierarchy.root.latest_crl()
    assert published.number == 5
    assert published.crl.is_signature_valid(hierarchy.root.certificate.public_key())
    assert AuditEvent.objects.filter(action="crl.import", object_id=str(published.pk)).exists()
    assert "imported CRL #5" in output


def test_import_crl_rejects_a_crl_of_another_ca(hierarchy, openssl, root_ca):
    now = timezone.now()
    foreign = build_crl(
        issuer_certificate=root_ca.certificate,
        issuer_key=root_ca.key,
        entries=[],
        crl_number=9,
        this_update=now,
        next_update=now + timedelta(days=30),
    )
    path = openssl.write("foreign.crl", foreign.public_bytes(Encoding.DER))

    with pytest.raises(CommandError, match="was not issued by Test Root CA"):
        run("import_crl", str(path))

    assert not RevocationList.objects.filter(ca=hierarchy.root).exists()


def test_import_crl_rejects_a_crl_in_the_roots_name_signed_by_another_key(
    hierarchy, openssl, ec_p384_key
):
    now = datetime.now(UTC)
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(hierarchy.root.certificate.subject)
        .last_update(now)
        .next_update(now + timedelta(days=30))
        .add_extension(x509.CRLNumber(9), critical=False)
        .sign(ec_p384_key, hashes.SHA384())
    )
    path = openssl.write("forged.crl", forged.public_bytes(Encoding.DER))

    with pytest.raises(CommandError, match="signature does not verify"):
        run("import_crl", str(path))

    assert not RevocationList.objects.filter(ca=hierarchy.root).exists()


def test_import_crl_refuses_the_online_issuing_ca(hierarchy, openssl):
    path = openssl.write("root.crl", root_crl(hierarchy, 5))

    with pytest.raises(CommandError, match="is not a root CA"):
        run("import_crl", str(path), ca="issuing")

    assert hierarchy.issuing.latest_crl().number == 1
    assert not hierarchy.root.revocation_lists.exists()


def test_import_crl_refuses_a_root_crl_longer_than_twelve_months(hierarchy, openssl):
    path = openssl.write("root.crl", root_crl(hierarchy, 5, validity=timedelta(days=400)))

    with pytest.raises(CommandError, match=r"400 days after thisUpdate.*at most 365 days"):
        run("import_crl", str(path), ca="root")

    assert not hierarchy.root.revocation_lists.exists()


def test_import_crl_says_when_the_file_is_not_a_crl(hierarchy, openssl):
    path = openssl.write("root.crl", hierarchy.root.certificate.public_bytes(Encoding.PEM))

    with pytest.raises(CommandError, match="not a DER or PEM CRL"):
        run("import_crl", str(path))

    assert not RevocationList.objects.filter(ca=hierarchy.root).exists()


@pytest.mark.parametrize("number", [4, 5])
def test_import_crl_rejects_a_crl_number_not_newer_than_the_published_one(
    number, hierarchy, openssl
):
    run("import_crl", str(openssl.write("five.crl", root_crl(hierarchy, 5))))
    path = openssl.write("older.crl", root_crl(hierarchy, number))

    with pytest.raises(CommandError, match=f"CRL number {number} is not newer than .* 5"):
        run("import_crl", str(path))

    assert list(hierarchy.root.revocation_lists.values_list("number", flat=True)) == [5]


def test_import_crl_rejects_a_higher_number_with_an_older_this_update(hierarchy, openssl):
    """Served as the newest by its number, it would turn the clock back: a CRL never
    replaces a newer one."""
    run("import_crl", str(openssl.write("five.crl", root_crl(hierarchy, 5))))
    path = openssl.write("stale.crl", root_crl(hierarchy, 6, age=timedelta(days=2)))

    with pytest.raises(CommandError, match="thisUpdate .* is older than the published CRL's"):
        run("import_crl", str(path))

    assert list(hierarchy.root.revocation_lists.values_list("number", flat=True)) == [5]


# --- create_demo_data -----------------------------------------------------------------


def test_create_demo_data_is_idempotent_and_prints_the_logins(settings, tmp_path):
    settings.VAR_DIR = tmp_path

    first = run("create_demo_data", key_algorithm="ec-p256")
    after_first = row_counts()
    users = get_user_model().objects.count()
    second = run("create_demo_data", key_algorithm="ec-p256")

    assert row_counts() == after_first
    assert get_user_model().objects.count() == users == 5
    assert after_first["CertificateAuthority"] == 2
    assert after_first["KeyRecoveryAgent"] == 1
    for login in ("alice", "alice-demo-2026", "karl", "karl-demo-2026", "admin-demo-2026"):
        assert login in first
        assert login in second
    password = re.search(r"password: (\S+)", first)
    assert password is not None
    assert "password: " not in second
    assert "password shown when it was made" in second
    # The printed password opens the agent's PKCS#12, whose certificate is the agent's.
    key, certificate, _chain = pkcs12.load_pkcs12(
        (tmp_path / "demo" / "kra.p12").read_bytes(), password[1]
    )
    assert KeyRecoveryAgent.objects.get().certificate == certificate
    assert isinstance(key.public_key(), keys.rsa.RSAPublicKey)
    assert CertificateAuthority.objects.get(slug="root").latest_crl() is not None
    assert Certificate.objects.filter(owner__username="alice").count() == 2
    # S/MIME BR 7.1.4.3.1: the demo CAs name a country, the demo value when none is set.
    for ca in CertificateAuthority.objects.all():
        assert ca.certificate.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == (
            "US"
        )


def test_the_demo_officers_get_an_authenticator_whose_printed_key_signs_them_in(settings, tmp_path):
    """olivia, karl and admin must confirm a code: the demo prints each one's key, every
    run, and a code made from it completes their sign-in."""
    import base64

    from django.test import Client

    from accounts.models import TotpDevice
    from tests.second_factor import code

    settings.VAR_DIR = tmp_path
    first = run("create_demo_data", key_algorithm="ec-p256")
    second = run("create_demo_data", key_algorithm="ec-p256")

    keys = dict(re.findall(r"^  (\w+) +key ([A-Z2-7]+)$", first, re.MULTILINE))
    assert set(keys) == {"olivia", "karl", "admin"}
    assert dict(re.findall(r"^  (\w+) +key ([A-Z2-7]+)$", second, re.MULTILINE)) == keys
    assert TotpDevice.objects.filter(confirmed=True).count() == 3
    client = Client()
    signed_in = client.post(
        "/accounts/login/", {"username": "olivia", "password": "olivia-demo-2026"}
    )
    assert signed_in["Location"].startswith("/account/two-factor/verify/")
    seed = base64.b32decode(keys["olivia"])
    assert client.post("/account/two-factor/verify/", {"code": code(seed)}).status_code == 302
    assert client.get("/ra/requests/").status_code == 200


def test_create_demo_data_uses_the_configured_country(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    settings.PKIPORTAL_COUNTRY_NAME = "NL"
    settings.PKIPORTAL_ORGANIZATION_IDENTIFIER = "NTRNL-12345678"

    run("create_demo_data", key_algorithm="ec-p256")

    root = CertificateAuthority.objects.get(slug="root")
    assert root.certificate.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "NL"


def test_a_new_passphrase_file_is_never_readable_by_others(tmp_path, monkeypatch):
    """Created 0600, not narrowed after writing: in an existing directory others may read
    (umask 022), the passphrase was theirs for a moment."""
    import os

    from enrollment.management.commands import _helpers

    shared = tmp_path / "etc"
    shared.mkdir(mode=0o755)
    target = shared / "root-passphrase"
    modes: list[int] = []
    opened = os.fdopen

    def watched(descriptor, *args, **kwargs):
        modes.append(os.fstat(descriptor).st_mode & 0o777)  # before a byte is written
        return opened(descriptor, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", watched)
    old_umask = os.umask(0o022)
    try:
        value = _helpers.new_passphrase_file(str(target))
    finally:
        os.umask(old_umask)

    assert modes == [0o600]
    assert target.read_bytes() == value
    assert target.stat().st_mode & 0o777 == 0o600
