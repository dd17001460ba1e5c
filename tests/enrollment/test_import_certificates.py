"""manage.py import_certificates: another CA's certificates and keys, made by real openssl.

The old CA is an ``openssl req -x509`` root signing with ``openssl ca``, as a migrating
organisation's scripts would; its keys come out of ``openssl pkcs12 -export``.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import pytest

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509 import ocsp

from django.core.management import call_command
from django.core.management.base import CommandError

from enrollment import recovery, services
from enrollment.exceptions import InvalidState
from enrollment.models import (
    ArchivedKey,
    AuditEvent,
    Certificate,
    CertificateAuthority,
    CrlEntry,
    KeyIdentity,
    SharedMailbox,
)
from enrollment.x509.importing import address_problem
from tests.conftest import client_for
from tests.enrollment.api_tools import token_client
from tests.enrollment.ra_fixtures import REASON
from tests.enrollment.tools import issue
from tests.factories import UserFactory

P12_PASSWORD = "old-ca export pw"

# The old CA's profiles name keyEncipherment and keyAgreement both, so that they are what
# they say for RSA and EC keys alike (importing.key_uses reads keyUsage with the key type).
OPENSSL_CNF = """
[ ca ]
default_ca = old
[ old ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
email_in_dn = no
[ anything ]
commonName = supplied
emailAddress = optional
[ smime_sign_encrypt ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment,keyAgreement
extendedKeyUsage = emailProtection
subjectAltName = email:$ENV::MAIL
[ smime_encrypt ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,keyEncipherment,keyAgreement
extendedKeyUsage = emailProtection
subjectAltName = email:$ENV::MAIL
[ client_auth ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = email:$ENV::MAIL
"""


class OldCa:
    """A CA run with the openssl CLI in a directory of its own."""

    def __init__(self, directory: Path, name: str = "Old Corp Issuing CA") -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "newcerts").mkdir(exist_ok=True)
        (directory / "index.txt").write_text("")
        (directory / "serial").write_text("1000\n")
        (directory / "openssl.cnf").write_text(OPENSSL_CNF.replace("{dir}", str(directory)))
        self.run(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
            "-out", "ca.pem", "-days", "3650", "-subj", f"/O=Old Corp/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        self.certificate = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())

    def run(self, *args: str, mail: str = "nobody@example.com") -> None:
        result = subprocess.run(
            ["openssl", *args],
            cwd=self.dir,
            capture_output=True,
            timeout=60,
            check=False,
            env={"MAIL": mail, "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")

    def issue(
        self,
        name: str,
        mail: str,
        *,
        profile: str = "smime_sign_encrypt",
        dates: tuple[str, str] | None = None,
        key: str = "ec:P-256",
    ) -> Path:
        """A leaf certificate (PEM) for ``mail``, its key in <name>.key (``key="reuse:X"``:
        the key of X's certificate)."""
        if key.startswith("reuse:"):
            other = (self.dir / f"{key.removeprefix('reuse:')}.key").read_bytes()
            (self.dir / f"{name}.key").write_bytes(other)
        elif key.startswith("ec:"):
            self.run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ec.params")
            self.run("pkcs8", "-topk8", "-nocrypt", "-in", "ec.params", "-out", f"{name}.key")
        else:
            self.run("genpkey", "-algorithm", "RSA", "-out", f"{name}.key")
        self.run(
            "req", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}", "-out", f"{name}.csr"
        )
        validity = ["-startdate", dates[0], "-enddate", dates[1]] if dates else ["-days", "365"]
        self.run(
            "ca", "-batch", "-config", "openssl.cnf", "-cert", "ca.pem", "-keyfile", "ca.key",
            "-extensions", profile, "-in", f"{name}.csr", "-out", f"{name}.pem", "-notext",
            *validity, mail=mail,
        )  # fmt: skip
        return self.dir / f"{name}.pem"

    def revoke(self, name: str, reason: str | None = None) -> None:
        reason_args = ["-crl_reason", reason] if reason else []
        self.run(
            "ca", "-config", "openssl.cnf", "-cert", "ca.pem", "-keyfile", "ca.key",
            "-revoke", f"{name}.pem", *reason_args,
        )  # fmt: skip

    def crl(self, out: str = "crl.pem", *, der: bool = False) -> Path:
        """The CA's CRL (PEM, or DER converted from it by openssl crl)."""
        self.run(
            "ca", "-config", "openssl.cnf", "-cert", "ca.pem", "-keyfile", "ca.key",
            "-gencrl", "-crldays", "30", "-out", "crl.pem",
        )  # fmt: skip
        if der:
            self.run("crl", "-in", "crl.pem", "-outform", "DER", "-out", out)
        elif out != "crl.pem":
            (self.dir / out).write_bytes((self.dir / "crl.pem").read_bytes())
        return self.dir / out

    def pkcs12(self, name: str, password: str = P12_PASSWORD, out: str = "") -> Path:
        out = out or f"{name}.p12"
        (self.dir / "pw.txt").write_text(password + "\n")
        self.run(
            "pkcs12", "-export", "-inkey", f"{name}.key", "-in", f"{name}.pem",
            "-passout", "file:pw.txt", "-out", out,
        )  # fmt: skip
        return self.dir / out


@dataclass
class Migration:
    ca: OldCa
    issuer: Path
    alice: Path  # dual-use, her key exported to alice.p12
    finance: Path  # encryption, the shared mailbox's
    stranger: Path  # nobody here has the address
    client_auth: Path  # no emailProtection
    expired: Path
    forged: Path  # names the old CA, signed by another key
    bundle: Path  # a DER .p7b of alice and stranger
    garbage: Path
    alice_p12: Path
    password_file: Path


@pytest.fixture(scope="module")
def migration(tmp_path_factory: pytest.TempPathFactory) -> Migration:
    base = tmp_path_factory.mktemp("old-ca")
    ca = OldCa(base / "ca")
    alice = ca.issue("alice", "Alice@Example.com")
    finance = ca.issue("finance", "finance@example.com", profile="smime_encrypt", key="rsa")
    stranger = ca.issue("stranger", "stranger@elsewhere.example")
    client_auth = ca.issue("vpn", "alice@example.com", profile="client_auth")
    expired = ca.issue("old", "alice@example.com", dates=("20200101000000Z", "20210101000000Z"))
    impostor = OldCa(base / "impostor")  # same name, another key
    forged = impostor.issue("forged", "alice@example.com")
    ca.run(
        "crl2pkcs7", "-nocrl", "-certfile", "alice.pem", "-certfile", "stranger.pem",
        "-outform", "DER", "-out", "bundle.p7b",
    )  # fmt: skip
    garbage = base / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    password_file = base / "passwords.txt"
    password_file.write_text(f"wrong one\n{P12_PASSWORD}\n")
    return Migration(
        ca=ca,
        issuer=ca.dir / "ca.pem",
        alice=alice,
        finance=finance,
        stranger=stranger,
        client_auth=client_auth,
        expired=expired,
        forged=forged,
        bundle=ca.dir / "bundle.p7b",
        garbage=garbage,
        alice_p12=ca.pkcs12("alice"),
        password_file=password_file,
    )


def run(*args: str | Path) -> str:
    out = StringIO()
    call_command("import_certificates", *map(str, args), stdout=out, stderr=StringIO())
    return out.getvalue()


def count(output: str, category: str) -> int:
    for line in output.splitlines():
        if line.strip().startswith(f"{category}:"):
            return int(line.split(":")[-1])
    raise AssertionError(f"no {category!r} in:\n{output}")


@pytest.fixture
def mailbox(db):
    return SharedMailbox.objects.create(email="finance@example.com", display_name="Finance")


def all_files(migration: Migration) -> list[Path]:
    return [
        migration.alice, migration.finance, migration.stranger, migration.client_auth,
        migration.expired, migration.forged, migration.garbage,
    ]  # fmt: skip


def test_imports_whats_theirs_and_reports_the_rest(hierarchy, employee, mailbox, migration):
    output = run("--issuer", migration.issuer, *all_files(migration))

    assert count(output, "imported") == 2
    assert count(output, "no matching account") == 1
    assert count(output, "bad signature") == 1
    assert "the issuer's key does not verify it" in output
    assert count(output, "not S/MIME") == 1
    assert count(output, "expired") == 1
    assert count(output, "unreadable file") == 1
    for path in all_files(migration):  # each file is reported once, by name
        assert sum(line.startswith(f"{path}:") for line in output.splitlines()) == 1
    old = CertificateAuthority.objects.get(is_imported=True)
    assert not old.is_online
    assert old.key_reference == ""
    assert old.name == "Old Corp Issuing CA"
    mine = Certificate.objects.get(owner=employee)
    assert mine.ca == old
    assert mine.template is None
    assert mine.purpose == "dual_use"
    assert mine.email == "alice@example.com"  # matched case-insensitively
    assert mine.emails == ["Alice@Example.com"]  # the subjectAltName as it is
    theirs = Certificate.objects.get(mailbox=mailbox)
    assert theirs.purpose == "encryption"
    assert theirs.owner is None
    # One event per certificate, one for the CA, one summary.
    assert AuditEvent.objects.filter(action="certificate.import").count() == 2
    assert AuditEvent.objects.filter(action="ca.import").count() == 1
    summary = AuditEvent.objects.get(action="certificate.import_run")
    assert summary.detail["certificates"]["imported"] == 2


def test_a_second_run_imports_nothing_twice(hierarchy, employee, mailbox, migration):
    run("--issuer", migration.issuer, migration.alice, migration.finance)
    output = run("--issuer", migration.issuer, migration.alice, migration.finance, migration.bundle)

    assert count(output, "imported") == 0
    assert count(output, "already present") == 3  # the bundle's alice too
    assert count(output, "no matching account") == 1  # the bundle's stranger
    assert Certificate.objects.count() == 2 + 0  # the hierarchy issued no end-entity
    assert CertificateAuthority.objects.filter(is_imported=True).count() == 1
    assert "already registered" in output


def test_dry_run_writes_nothing(hierarchy, employee, mailbox, migration, kra):
    before = (Certificate.objects.count(), CertificateAuthority.objects.count(),
              AuditEvent.objects.count(), ArchivedKey.objects.count())  # fmt: skip

    output = run(
        "--dry-run", "--issuer", migration.issuer, *all_files(migration),
        "--keys", migration.alice_p12, "--keys-password-file", migration.password_file,
    )  # fmt: skip

    assert "Dry run" in output
    assert "would register" in output
    assert count(output, "imported") == 2
    assert count(output, "archived") == 1
    after = (Certificate.objects.count(), CertificateAuthority.objects.count(),
             AuditEvent.objects.count(), ArchivedKey.objects.count())  # fmt: skip
    assert after == before


def test_expired_ones_only_when_asked(hierarchy, employee, migration):
    output = run("--issuer", migration.issuer, "--include-expired", migration.expired)

    assert count(output, "imported") == 1
    assert Certificate.objects.get(owner=employee).state == "expired"


def test_a_directory_and_a_p7b_bundle(hierarchy, employee, migration, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "bundle.p7b").write_bytes(migration.bundle.read_bytes())
    (folder / "notes.txt").write_text("ignored: not a certificate suffix")

    output = run("--issuer", migration.issuer, folder)

    assert count(output, "imported") == 1
    assert count(output, "no matching account") == 1


def test_an_issuer_that_is_no_ca_certificate_is_refused(hierarchy, migration):
    with pytest.raises(CommandError, match="not a CA certificate"):
        run("--issuer", migration.alice, migration.alice)
    with pytest.raises(CommandError, match="no certificate"):
        run("--issuer", migration.garbage, migration.alice)
    issuing = hierarchy.issuing.certificate.public_bytes(serialization.Encoding.PEM)
    path = migration.ca.dir / "ours.pem"
    path.write_bytes(issuing)
    with pytest.raises(CommandError, match="portal's own CAs"):
        run("--issuer", path, migration.alice)
    assert not CertificateAuthority.objects.filter(is_imported=True).exists()


def test_wrong_password_and_garbage_keys_are_reported(hierarchy, employee, migration, kra):
    run("--issuer", migration.issuer, migration.alice)
    wrong = migration.ca.dir / "wrong.txt"
    wrong.write_text("not the password\n")

    output = run("--keys", migration.alice_p12, migration.garbage, "--keys-password-file", wrong)

    assert count(output, "unreadable or wrong password") == 2
    assert "not the password" not in output
    assert P12_PASSWORD not in output
    assert not ArchivedKey.objects.exists()


# --- the key: archived as the portal's are, recovered through the usual flow ------------


def test_an_imported_key_is_recovered_and_opens_with_openssl(
    hierarchy, employee, migration, kra, agent_user, officer, second_officer, caplog
):
    output = run(
        "--issuer", migration.issuer, migration.alice,
        "--keys", migration.alice_p12, "--keys-password-file", migration.password_file,
    )  # fmt: skip
    assert count(output, "archived") == 1
    assert P12_PASSWORD not in output
    assert P12_PASSWORD not in caplog.text
    certificate = Certificate.objects.get(owner=employee)
    archive = ArchivedKey.objects.get(certificate=certificate)
    assert list(archive.recipients.all()) == [kra.agent]
    event = AuditEvent.objects.get(action="key.archive")
    assert event.detail["source"] == "import"

    opened = recovery.recovery_open(certificate=certificate, officer=officer, reason=REASON)
    approved = recovery.recovery_approve(recovery=opened, officer=second_officer)
    performed, password = recovery.recovery_perform(
        recovery=approved,
        agent_user=agent_user,
        agent_pkcs12=kra.pkcs12,
        agent_password=kra.password,
    )
    _done, bundle = recovery.recovery_download(recovery=performed, user=employee)

    work = migration.ca.dir
    (work / "recovered.p12").write_bytes(bundle)
    migration.ca.run(
        "pkcs12", "-in", "recovered.p12", "-passin", f"pass:{password}", "-nocerts", "-nodes",
        "-out", "recovered.key",
    )  # fmt: skip
    migration.ca.run("pkey", "-in", "recovered.key", "-pubout", "-out", "recovered.pub")
    migration.ca.run("x509", "-in", "alice.pem", "-pubkey", "-noout", "-out", "alice.pub")
    assert (work / "recovered.pub").read_bytes() == (work / "alice.pub").read_bytes()

    again = run("--keys", migration.alice_p12, "--keys-password-file", migration.password_file)
    assert count(again, "already archived") == 1


def test_a_key_for_no_imported_certificate_is_not_archived(hierarchy, migration, kra):
    output = run("--keys", migration.alice_p12, "--keys-password-file", migration.password_file)

    assert count(output, "no imported certificate") == 1
    assert not ArchivedKey.objects.exists()


# --- how the rest of the portal treats them ------------------------------------------------


@pytest.fixture
def imported(hierarchy, employee, migration) -> Certificate:
    run("--issuer", migration.issuer, migration.alice)
    return Certificate.objects.get(owner=employee)


def test_my_certificates_and_the_directory_show_them(imported, employee, colleague):
    mine = client_for(employee).get("/certificates/").content.decode()
    assert "imported from Old Corp Issuing CA" in mine

    found = client_for(colleague).get("/directory/", {"q": "alice"}).content.decode()
    assert imported.fingerprint_sha256[:8] in found.replace(":", "").lower()
    assert "imported from Old Corp Issuing CA" in found

    page = client_for(employee).get(f"/certificates/{imported.pk}/").content.decode()
    assert "Only Old Corp Issuing CA can revoke it for mail clients" in page
    assert "also revoke it at Old Corp Issuing CA" in page


def _gone_from_the_directory(certificate: Certificate, colleague) -> bool:
    from directory import selectors
    from enrollment import ldap_publish

    found = selectors.certificates_for_email(email=certificate.email)
    page = selectors.certificate_search(query="alice")
    ldap = ldap_publish.certificates_to_publish(certificate.owner) if certificate.owner else []
    return certificate not in [*found, *page.certificates, *ldap]


def test_the_holder_records_a_revocation_at_the_old_ca(
    imported, employee, colleague, mailoutbox, django_capture_on_commit_callbacks
):
    assert not _gone_from_the_directory(imported, colleague)
    client = client_for(employee)
    assert 'id="revoke"' in client.get(f"/certificates/{imported.pk}/").content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        web = client.post(
            f"/certificates/{imported.pk}/revoke/",
            {"reason": "superseded", "confirm": "on"},
            follow=True,
        )

    assert "also revoke it at Old Corp Issuing CA" in web.content.decode()
    imported.refresh_from_db()
    assert imported.status == Certificate.Status.REVOKED
    assert imported.revocation_reason == "superseded"
    assert not CrlEntry.objects.exists()  # the portal is not its CA: no CRL entry
    event = AuditEvent.objects.get(action="certificate.revoke")
    assert event.detail["recorded_only"] is True
    assert event.detail["issuer"] == "Old Corp Issuing CA"
    assert _gone_from_the_directory(imported, colleague)
    mail = next(m for m in mailoutbox if "revoked" in m.subject)
    assert "revoked there too" in mail.body


def test_an_officer_records_it_by_api_and_another_holder_may_not(
    imported, employee, officer, colleague
):
    stranger = token_client(colleague).post(
        f"/api/v1/certificates/{imported.serial}/revoke/", {"reason": "superseded"}, format="json"
    )
    assert stranger.status_code == 404
    imported.refresh_from_db()
    assert imported.status == Certificate.Status.VALID

    api = token_client(officer).post(
        f"/api/v1/certificates/{imported.serial}/revoke/", {"reason": "superseded"}, format="json"
    )

    assert api.status_code == 200
    imported.refresh_from_db()
    assert imported.status == Certificate.Status.REVOKED
    assert not CrlEntry.objects.exists()


def _key_of(ca: OldCa, name: str):
    return serialization.load_pem_private_key((ca.dir / f"{name}.key").read_bytes(), None)


def test_a_compromised_key_takes_its_imported_certificates_with_it(
    imported, employee, officer, template, migration
):
    """The same key certified here later: its keyCompromise records the imported one
    revoked too (KeyIdentity was claimed at import), with no CRL entry for it."""
    assert KeyIdentity.objects.filter(spki_sha256=imported.spki_sha256).exists()
    ours = issue(employee, template("smime-signing"), _key_of(migration.ca, "alice"))

    services.certificate_revoke(certificate=ours, reason="keyCompromise", actor=officer)

    imported.refresh_from_db()
    assert imported.status == Certificate.Status.REVOKED
    assert imported.revocation_reason == "keyCompromise"
    assert list(CrlEntry.objects.values_list("certificate", flat=True)) == [ours.pk]


def test_a_compromised_imported_key_revokes_ours_and_is_never_imported_again(
    imported, employee, officer, template, migration, tmp_path
):
    ours = issue(employee, template("smime-signing"), _key_of(migration.ca, "alice"))

    services.certificate_revoke(certificate=imported, reason="keyCompromise", actor=officer)

    ours.refresh_from_db()
    assert ours.status == Certificate.Status.REVOKED
    assert KeyIdentity.objects.get(pk=imported.spki_sha256).compromised
    # Another certificate the old CA issued for the same key is refused.
    migration.ca.run("req", "-new", "-key", "alice.key", "-subj", "/CN=again", "-out", "again.csr")
    migration.ca.run(
        "ca", "-batch", "-config", "openssl.cnf", "-cert", "ca.pem", "-keyfile", "ca.key",
        "-extensions", "smime_sign_encrypt", "-in", "again.csr",
        "-out", "again.pem", "-notext", "-days", "30",
        mail="alice@example.com",
    )  # fmt: skip
    for dry in ([], ["--dry-run"]):
        output = run(*dry, "--issuer", migration.issuer, migration.ca.dir / "again.pem")
        assert count(output, "key compromised") == 1
        assert count(output, "imported") == 0
    assert Certificate.objects.filter(ca=imported.ca).count() == 1


def test_no_crl_and_no_ocsp_for_them(imported, hierarchy, migration, anonymous_client):
    crl = x509.load_der_x509_crl(bytes(services.crl_publish(ca=hierarchy.issuing).der))
    assert crl.get_revoked_certificate_by_serial_number(int(imported.serial, 16)) is None
    with pytest.raises(InvalidState, match="signs no CRL"):
        services.crl_publish(ca=imported.ca)

    asked = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(imported.certificate, migration.ca.certificate, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    response = anonymous_client.post("/pki/ocsp/", asked, content_type="application/ocsp-request")
    answer = ocsp.load_der_ocsp_response(response.content)
    assert answer.response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED

    listing = anonymous_client.get("/pki/")
    assert listing.status_code == 200
    assert "Test Issuing CA" in listing.content.decode()  # the page does list CAs
    assert "Old Corp" not in listing.content.decode()


def test_leavers_runs_leave_them_alone(imported, employee, colleague, template, settings):
    """Past the grace period, the run revokes a leaver's portal certificate (so it did
    run) and leaves the imported one, whose holder left too, alone: nothing due for it."""
    from datetime import timedelta

    from django.utils import timezone

    from enrollment import leavers
    from tests.enrollment.tools import new_key

    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 1
    ours = issue(colleague, template("smime-signing"), new_key())
    for leaver in (employee, colleague):
        leaver.is_active = False
        leaver.save()

    outcome = leavers.leavers_revoke(now=timezone.now() + timedelta(days=2), confirmed=True)

    assert (outcome.due, outcome.revoked_accounts, outcome.revoked_certificates) == (1, 1, 1)
    ours.refresh_from_db()
    assert ours.status == Certificate.Status.REVOKED
    imported.refresh_from_db()
    assert imported.status == Certificate.Status.VALID


def test_the_expiry_notice_invites_enrolment(
    hierarchy, employee, migration, mailoutbox, django_capture_on_commit_callbacks
):
    from datetime import timedelta

    from django.utils import timezone

    from enrollment import expiry

    run("--issuer", migration.issuer, migration.alice)
    certificate = Certificate.objects.get(owner=employee)
    with django_capture_on_commit_callbacks(execute=True):
        expiry.expiry_notices_send(now=certificate.not_after - timedelta(days=5))

    mail = next(m for m in mailoutbox if "expires" in m.subject and employee.email in m.to)
    assert "issued by Old Corp Issuing CA" in mail.body
    assert "/enroll/" in mail.body
    assert timezone.now() < certificate.not_after


def test_pem_blocks_among_other_text_are_read(hierarchy, employee, migration, tmp_path):
    """As certutil -view prints them: row headers and labels around each block."""
    pem = migration.alice.read_text()
    dump = tmp_path / "issued.txt"
    dump.write_text(f"Schema:\n  Column Name\n\nRow 1:\n  Binary Certificate:\n{pem}\n\n1 Rows\n")

    output = run("--issuer", migration.issuer, dump)

    assert count(output, "imported") == 1


def test_officers_record_the_revocation_with_the_old_ca_named(imported, officer, colleague):
    client = client_for(officer)
    page = client.get("/ra/certificates/", {"q": "alice"}).content.decode()
    assert "imported from Old Corp Issuing CA" in page
    assert f"/ra/certificates/{imported.pk}/revoke/" in page
    assert "also revoke it at Old Corp Issuing CA" in page

    response = client.post(
        f"/ra/certificates/{imported.pk}/revoke/",
        {"reason": "keyCompromise", "confirm": "on", "q": "alice"},
        follow=True,
    )

    assert "also revoke it at Old Corp Issuing CA" in response.content.decode()
    imported.refresh_from_db()
    assert imported.status == Certificate.Status.REVOKED
    assert not CrlEntry.objects.exists()
    # Not an officer: refused, nothing changes.
    other = Certificate.objects.filter(pk=imported.pk)
    other.update(status="valid", revoked_at=None, revocation_reason="")
    refused = client_for(colleague).post(
        f"/ra/certificates/{imported.pk}/revoke/",
        {"reason": "keyCompromise", "confirm": "on", "q": "alice"},
    )
    assert refused.status_code in (302, 403)
    assert other.get().status == Certificate.Status.VALID


def test_the_old_ca_certificate_is_served_but_no_crl(imported, anonymous_client, migration):
    slug = imported.ca.slug

    certificate = anonymous_client.get(f"/pki/{slug}.crt")
    assert certificate.status_code == 200
    assert x509.load_der_x509_certificate(certificate.content) == migration.ca.certificate
    assert anonymous_client.get(f"/pki/{slug}.crl").status_code == 404
    body = client_for(imported.owner).get(f"/certificates/{imported.pk}/download/p7b/").content
    assert migration.ca.certificate in pkcs7.load_der_pkcs7_certificates(body)


def test_keys_without_an_agent_are_refused_before_anything_is_written(
    hierarchy, employee, migration
):
    with pytest.raises(CommandError, match="No valid key recovery agent"):
        run("--issuer", migration.issuer, migration.alice, "--keys", migration.alice_p12)

    assert not Certificate.objects.exists()
    assert not CertificateAuthority.objects.filter(is_imported=True).exists()


def test_a_damaged_block_among_good_ones_is_reported_alone(
    hierarchy, employee, migration, tmp_path
):
    damaged = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    mixed = tmp_path / "mixed.pem"
    mixed.write_text(damaged + migration.alice.read_text())

    output = run("--issuer", migration.issuer, mixed)

    assert count(output, "imported") == 1
    assert count(output, "unreadable file") == 1
    assert "mixed.pem[1]: unreadable file: a damaged CERTIFICATE block" in output


def test_a_serial_the_old_ca_issued_twice_keeps_the_first(hierarchy, employee, tmp_path):
    sloppy = OldCa(tmp_path / "sloppy", name="Sloppy CA")
    first = sloppy.issue("first", "alice@example.com")
    (sloppy.dir / "index.txt").write_text("")  # the script lost its database
    (sloppy.dir / "serial").write_text("1000\n")
    second = sloppy.issue("second", "alice@example.com")

    output = run("--issuer", sloppy.dir / "ca.pem", first, second)

    assert count(output, "imported") == 1
    assert count(output, "duplicate serial") == 1
    assert f"{second}: duplicate serial: Sloppy CA issued serial 1000 twice; kept the first" in (
        output
    )
    kept = Certificate.objects.get(ca__is_imported=True)
    assert kept.der == x509.load_pem_x509_certificate(first.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )


# --- the old CA's CRLs ---------------------------------------------------------------------


@pytest.fixture
def revoking(tmp_path) -> OldCa:
    """An old CA of this test's own: alice's current certificate, and an older one of hers
    it revoked for keyCompromise, on its CRL."""
    ca = OldCa(tmp_path / "revoking", name="Revoking CA")
    ca.issue("current", "alice@example.com")
    ca.issue("leaked", "alice@example.com")
    ca.revoke("leaked", "keyCompromise")
    return ca


def _listed(ca: OldCa, name: str) -> x509.RevokedCertificate:
    crl = x509.load_pem_x509_crl((ca.dir / "crl.pem").read_bytes())
    serial = x509.load_pem_x509_certificate((ca.dir / f"{name}.pem").read_bytes()).serial_number
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    return entry


def test_a_certificate_its_crl_lists_comes_in_revoked_and_is_never_offered(
    hierarchy, employee, colleague, revoking
):
    crl = revoking.crl("crl.der", der=True)

    output = run(
        "--issuer", revoking.dir / "ca.pem", "--crl", crl,
        revoking.dir / "current.pem", revoking.dir / "leaked.pem",
    )  # fmt: skip

    assert count(output, "imported") == 1
    assert count(output, "imported as revoked") == 1
    assert "verified with Revoking CA, 1 revoked serial number(s)" in output
    leaked = Certificate.objects.get(owner=employee, status=Certificate.Status.REVOKED)
    entry = _listed(revoking, "leaked")
    assert leaked.revoked_at == entry.revocation_date_utc
    assert leaked.revocation_reason == "keyCompromise"
    assert KeyIdentity.objects.get(pk=leaked.spki_sha256).compromised
    assert not CrlEntry.objects.exists()
    assert _gone_from_the_directory(leaked, colleague)
    current = Certificate.objects.get(owner=employee, status=Certificate.Status.VALID)
    assert not _gone_from_the_directory(current, colleague)


def test_revoked_ones_can_be_left_out(hierarchy, employee, revoking):
    output = run(
        "--issuer", revoking.dir / "ca.pem", "--crl", revoking.crl(), "--skip-revoked",
        revoking.dir / "current.pem", revoking.dir / "leaked.pem",
    )  # fmt: skip

    assert count(output, "revoked (skipped)") == 1
    assert "leaked.pem: revoked (skipped)" in output
    assert Certificate.objects.filter(owner=employee).count() == 1


def test_a_later_crl_records_ones_imported_before_as_revoked(hierarchy, employee, revoking):
    run("--issuer", revoking.dir / "ca.pem", revoking.dir / "leaked.pem")
    assert Certificate.objects.get(owner=employee).status == Certificate.Status.VALID

    output = run("--issuer", revoking.dir / "ca.pem", "--crl", revoking.crl())

    assert count(output, "present, now recorded revoked") == 1
    leaked = Certificate.objects.get(owner=employee)
    assert leaked.status == Certificate.Status.REVOKED
    assert leaked.revoked_at == _listed(revoking, "leaked").revocation_date_utc
    assert not CrlEntry.objects.exists()


def test_a_crl_that_does_not_verify_is_refused_and_nothing_written(
    hierarchy, employee, revoking, tmp_path
):
    impostor = OldCa(tmp_path / "impostor", name="Revoking CA")  # same name, another key
    forged = impostor.crl()
    garbage = tmp_path / "garbage.crl"
    garbage.write_bytes(b"not a crl")

    with pytest.raises(CommandError, match="no issuer given with --issuer verifies"):
        run("--issuer", revoking.dir / "ca.pem", "--crl", forged, revoking.dir / "leaked.pem")
    with pytest.raises(CommandError, match="neither a DER nor a PEM CRL"):
        run("--issuer", revoking.dir / "ca.pem", "--crl", garbage, revoking.dir / "leaked.pem")

    assert not Certificate.objects.exists()
    assert not CertificateAuthority.objects.filter(is_imported=True).exists()
    dry = run(
        "--dry-run", "--issuer", revoking.dir / "ca.pem", "--crl", forged,
        revoking.dir / "leaked.pem",
    )  # fmt: skip
    assert "refused" in dry
    assert "CRLs refused: 1" in dry


# --- addresses: plain ASCII, compared exactly ---------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "\u212aim@example.com",  # KELVIN SIGN: str.lower() makes it kim@
        "\u017fam@example.com",  # LONG S: SQL UPPER() makes it SAM@
        "kim@exampl\u0435.com",  # a Cyrillic e
    ],
)
def test_a_look_alike_address_is_refused_not_given_to_someone_else(hierarchy, migration, address):
    kim = UserFactory(username="kim", email="kim@example.com")
    sam = UserFactory(username="sam", email="sam@example.com")
    leaf = migration.ca.issue("lookalike", address)

    output = run("--issuer", migration.issuer, leaf)

    assert count(output, "unsafe address") == 1
    assert "not plain ASCII" in output
    assert count(output, "imported") == 0
    assert not Certificate.objects.filter(owner__in=[kim, sam]).exists()


def test_an_address_is_plain_ascii_without_whitespace():
    assert address_problem("Alice@Example.com") is None
    for bad in ("alice @example.com", "alice@example.com\n", "\talice@example.com", "al\u00efce@x"):
        assert address_problem(bad) is not None


# --- several addresses ---------------------------------------------------------------------


def _sans(*addresses: str) -> str:
    """Several rfc822Names through the config's single email:$ENV::MAIL."""
    return ",email:".join(addresses)


@pytest.mark.parametrize(
    "addresses",
    [
        ("alice@example.com", "bob@example.com"),  # two people
        ("alice@example.com", "finance@example.com"),  # a person and a shared mailbox
        ("elsewhere@partner.example", "bob@example.com", "Alice@example.com"),
    ],
)
def test_addresses_of_more_than_one_holder_are_refused(
    hierarchy, employee, colleague, mailbox, migration, addresses
):
    leaf = migration.ca.issue("shared", _sans(*addresses))

    output = run("--issuer", migration.issuer, leaf)

    assert count(output, "several holders") == 1
    assert "lead to more than one holder" in output
    assert not Certificate.objects.filter(ca__is_imported=True).exists()


def test_several_addresses_of_one_holder_are_imported(hierarchy, employee, colleague, migration):
    leaf = migration.ca.issue(
        "aliases", _sans("alice@partner.example", "Alice@Example.com", "alice@example.com")
    )

    output = run("--issuer", migration.issuer, leaf)

    assert count(output, "imported") == 1
    certificate = Certificate.objects.get(owner=employee)
    assert certificate.email == "alice@example.com"
    assert certificate.emails == ["alice@partner.example", "Alice@Example.com", "alice@example.com"]


# --- keys: one holder each, failures reported ---------------------------------------------


def test_a_key_two_holders_certificates_carry_is_archived_for_neither(
    hierarchy, employee, colleague, migration, kra
):
    bobs = migration.ca.issue("bob-with-alices-key", "bob@example.com", key="reuse:alice")
    keys_args = ["--keys", migration.alice_p12, "--keys-password-file", migration.password_file]

    dry = run("--dry-run", "--issuer", migration.issuer, migration.alice, bobs, *keys_args)
    output = run("--issuer", migration.issuer, migration.alice, bobs, *keys_args)

    for report in (dry, output):
        assert count(report, "several holders (archived for none)") == 1
        assert count(report, "archived") == 0
    assert count(output, "imported") == 2
    assert not ArchivedKey.objects.exists()


def test_a_duplicate_serial_with_its_key_given_is_reported_not_a_crash(
    hierarchy, employee, tmp_path, kra
):
    sloppy = OldCa(tmp_path / "sloppy", name="Sloppy CA")
    first = sloppy.issue("first", "alice@example.com")
    (sloppy.dir / "index.txt").write_text("")
    (sloppy.dir / "serial").write_text("1000\n")
    second = sloppy.issue("second", "alice@example.com")
    password = tmp_path / "pw.txt"
    password.write_text(P12_PASSWORD + "\n")

    output = run(
        "--issuer", sloppy.dir / "ca.pem", first, second,
        "--keys", sloppy.pkcs12("second"), "--keys-password-file", password,
    )  # fmt: skip

    assert count(output, "duplicate serial") == 1
    assert count(output, "no imported certificate") == 1
    assert count(output, "archived") == 0
    assert not ArchivedKey.objects.exists()
    stored = Certificate.objects.get(ca__is_imported=True)
    kept = x509.load_pem_x509_certificate(first.read_bytes())
    assert stored.fingerprint_sha256 == kept.fingerprint(hashes.SHA256()).hex()


# --- the order of things -------------------------------------------------------------------


def test_importing_before_create_pki_does_not_block_it(employee, migration, tmp_path, settings):
    from tests.enrollment.test_commands import create_pki

    output = run("--issuer", migration.issuer, migration.alice)
    assert count(output, "imported") == 1

    create_pki(tmp_path)

    ours = CertificateAuthority.objects.ours()
    assert set(ours.values_list("slug", flat=True)) == {"root", "issuing"}
    assert list(CertificateAuthority.objects.roots().values_list("slug", flat=True)) == ["root"]
    old = CertificateAuthority.objects.get(is_imported=True)
    assert Certificate.objects.get(owner=employee).ca == old
    with pytest.raises(CommandError, match="already exists"):
        create_pki(tmp_path / "again")


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_migrating_back_past_0031_is_refused_while_imported_cas_exist(migration):
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    run("--issuer", migration.issuer, migration.stranger)  # registers the CA, no holder
    assert CertificateAuthority.objects.filter(is_imported=True).exists()

    executor = MigrationExecutor(connection)
    with pytest.raises(RuntimeError, match="Cannot reverse enrollment 0031"):
        executor.migrate([("enrollment", "0030_leaver_run_mailbox_counts")])

    assert CertificateAuthority.objects.get(is_imported=True).name == "Old Corp Issuing CA"
    CertificateAuthority.objects.filter(is_imported=True).delete()
    executor = MigrationExecutor(connection)
    executor.migrate([("enrollment", "0030_leaver_run_mailbox_counts")])  # now it may
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


# --- PKCS#12 files: several keys, Notepad's BOM, no password --------------------------------


def test_a_pkcs12_of_several_keys_says_which_it_used(hierarchy, employee, migration, kra):
    from asn1crypto import cms, core
    from asn1crypto import pkcs12 as asn1_pkcs12

    ca = migration.ca
    ca.issue("carol", "carol@partner.example")
    parts = []
    for name in ("alice", "carol"):  # openssl puts one key in a file: join two (no MAC)
        ca.run(
            "pkcs12", "-export", "-inkey", f"{name}.key", "-in", f"{name}.pem", "-nomac",
            "-passout", f"pass:{P12_PASSWORD}", "-out", f"{name}-nomac.p12",
        )  # fmt: skip
        pfx = asn1_pkcs12.Pfx.load((ca.dir / f"{name}-nomac.p12").read_bytes())
        parts += list(pfx.authenticated_safe)
    safes = asn1_pkcs12.AuthenticatedSafe(parts).dump()
    both = ca.dir / "both.p12"
    both.write_bytes(
        asn1_pkcs12.Pfx(
            {
                "version": "v3",
                "auth_safe": cms.ContentInfo(
                    {"content_type": "data", "content": core.OctetString(safes)}
                ),
            }
        ).dump()
    )

    output = run(
        "--issuer", migration.issuer, migration.alice,
        "--keys", both, "--keys-password-file", migration.password_file,
    )  # fmt: skip

    assert "the file holds 2 private keys and 2 certificates" in output
    assert "only the key of CN=alice (serial" in output
    assert count(output, "archived") == 1


def test_a_password_file_with_a_byte_order_mark(hierarchy, employee, migration, kra, tmp_path):
    notepad = tmp_path / "pw.txt"
    notepad.write_bytes("\ufeff".encode() + P12_PASSWORD.encode() + b"\r\n")

    output = run(
        "--issuer", migration.issuer, migration.alice,
        "--keys", migration.alice_p12, "--keys-password-file", notepad,
    )  # fmt: skip

    assert count(output, "archived") == 1


def test_the_empty_password_is_always_tried(hierarchy, employee, migration, kra, tmp_path):
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not this one\n")
    empty = migration.ca.pkcs12("alice", password="", out="alice-no-password.p12")

    output = run(
        "--issuer", migration.issuer, migration.alice,
        "--keys", empty, "--keys-password-file", wrong,
    )  # fmt: skip

    assert count(output, "archived") == 1


def test_an_imported_certificate_for_an_old_address_promises_no_revocation_or_renewal(
    imported, employee, settings
):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 24
    employee.email = "alice.andersson@example.com"
    employee.save()
    client = client_for(employee)

    listing = client.get("/certificates/").content.decode()
    page = client.get(f"/certificates/{imported.pk}/").content.decode()

    assert "For your old address" in listing
    assert "Renew it for your new address" not in listing
    assert "Old Corp Issuing CA issued it: the portal does not revoke it" in listing
    assert "your old address, alice@example.com" in page
    assert "a grace period after the address changed" not in page
    assert "Renew it" not in page
    assert "The portal does not revoke it: Old Corp Issuing CA issued it" in page
    assert "/enroll/" in page


def test_an_imported_issuing_ca_is_linked_to_its_imported_root(hierarchy, employee, tmp_path):
    root = OldCa(tmp_path / "root", name="Old Corp Root CA")
    sub = OldCa(tmp_path / "sub", name="Old Corp Sub CA")
    sub.run("req", "-new", "-key", "ca.key", "-subj", "/O=Old Corp/CN=Old Corp Sub CA",
            "-out", str(root.dir / "sub.csr"))  # fmt: skip
    (root.dir / "ext.cnf").write_text(
        "[v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
    )
    root.run(
        "x509", "-req", "-in", "sub.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-set_serial", "7", "-days", "1000", "-extfile", "ext.cnf", "-extensions", "v3",
        "-out", str(sub.dir / "ca.pem"),
    )  # fmt: skip
    leaf = sub.issue("alice", "alice@example.com")

    run("--issuer", sub.dir / "ca.pem", "--issuer", root.dir / "ca.pem", leaf)

    old_sub = CertificateAuthority.objects.get(name="Old Corp Sub CA")
    old_root = CertificateAuthority.objects.get(name="Old Corp Root CA")
    assert old_sub.parent == old_root
    assert old_root.parent is None
    event = AuditEvent.objects.get(action="ca.import_link")
    assert event.detail == {
        "issuer": old_root.fingerprint_sha256,
        "fingerprint": old_sub.fingerprint_sha256,
    }
    mine = Certificate.objects.get(owner=employee)
    body = client_for(employee).get(f"/certificates/{mine.pk}/download/p7b/").content
    chain = pkcs7.load_der_pkcs7_certificates(body)
    assert old_root.certificate in chain
    assert old_sub.certificate in chain


def test_a_delta_crl_is_refused(hierarchy, employee, revoking):
    config = revoking.dir / "openssl.cnf"
    config.write_text(config.read_text() + "[delta]\n2.5.29.27 = critical,DER:02:01:01\n")
    revoking.run(
        "ca", "-config", "openssl.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-gencrl",
        "-crldays", "1", "-crlexts", "delta", "-out", "delta.pem",
    )  # fmt: skip

    with pytest.raises(CommandError, match="a delta CRL"):
        run("--issuer", revoking.dir / "ca.pem", "--crl", revoking.dir / "delta.pem")

    assert not CertificateAuthority.objects.filter(is_imported=True).exists()
