"""Replacing the issuing CA: create_issuing_ca makes its successor under the offline root,
switch_issuing_ca (or the admin) moves the templates, and the old CA goes on serving what
it issued. The default CA is an explicit flag, set at the upgrade, free on the hot path.

Chains and CRLs are checked with the openssl CLI, not by reading our own output back.
"""

from __future__ import annotations

import base64
import re
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from enrollment import keystore, services
from enrollment.exceptions import InvalidState, PolicyViolation
from enrollment.models import (
    AuditEvent,
    Certificate,
    CertificateAuthority,
    CertificateTemplate,
    RevocationList,
)
from enrollment.ra_admin import plan_token
from enrollment.x509 import keys
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import ROOT_PASSPHRASE, client_for
from tests.enrollment.api_tools import (
    ENROLLMENTS,
    PASSWORD,
    certificate_url,
    csr_body,
    csr_pem,
    server_key_body,
    token_client,
)
from tests.enrollment.tools import issue, new_key, row_counts
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

G2 = {"slug": "issuing-g2", "name": "Test Issuing CA G2"}


def run(command: str, /, *args: str, **options: object) -> str:
    out = StringIO()
    call_command(command, *args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


@pytest.fixture
def passphrase_file(tmp_path) -> Path:
    path = tmp_path / "root-passphrase"
    path.write_bytes(ROOT_PASSPHRASE)
    return path


def create_issuing_ca(hierarchy, passphrase_file, **options: object) -> str:
    return run(
        "create_issuing_ca",
        root_key_file=str(hierarchy.root_key_path),
        root_passphrase_file=str(passphrase_file),
        **(G2 | options),
    )


@pytest.fixture
def successor(hierarchy) -> CertificateAuthority:
    """A second issuing CA under the same root, created as the command does; not switched."""
    return services.issuing_ca_create(
        spec=services.CaSpec(G2["name"], G2["slug"], KeyAlgorithm.EC_P256, 1825),
        root=hierarchy.root,
        root_key=keystore.OfflineKey(hierarchy.root_key_path, ROOT_PASSPHRASE),
        base_url="http://pki.example.com",
        organization_name="Example Org",
        country_name="GB",
    )


@pytest.fixture
def switched(successor) -> CertificateAuthority:
    services.issuing_ca_switch(to=successor)
    return successor


def key_files(settings) -> set[str]:
    return {path.name for path in Path(settings.PKIPORTAL_KEY_DIR).glob("*")}


def pem(openssl, name: str, ca: CertificateAuthority) -> Path:
    return openssl.write_pem(name, ca.certificate)


# --- create_issuing_ca ----------------------------------------------------------------


def test_it_creates_an_online_issuing_ca_under_the_root_and_moves_no_template(
    hierarchy, passphrase_file, settings, openssl
):
    output = create_issuing_ca(hierarchy, passphrase_file)

    new = CertificateAuthority.objects.get(slug="issuing-g2")
    assert (new.name, new.parent, new.is_online, new.is_default) == (
        "Test Issuing CA G2",
        hierarchy.root,
        True,
        False,
    )
    assert new.crl_url == "http://pki.example.com/pki/issuing-g2.crl"
    assert new.ca_issuers_url == "http://pki.example.com/pki/issuing-g2.crt"
    assert isinstance(new.certificate.public_key(), ec.EllipticCurvePublicKey)
    assert new.certificate.public_key().curve.name == "secp256r1"
    subject = new.certificate.subject
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Example Org"
    assert subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "GB"
    # Its key went to the key store, encrypted; the root key went nowhere.
    assert key_files(settings) == {"issuing.key.pem", "issuing-g2.key.pem"}
    assert new.key_reference == "issuing-g2.key.pem"
    assert b"ENCRYPTED" in (Path(settings.PKIPORTAL_KEY_DIR) / new.key_reference).read_bytes()
    keystore.check_ca_key(new)
    assert new.latest_crl().number == 1
    # Nothing switched: every template still issues from the first CA.
    assert CertificateAuthority.objects.get(is_default=True) == hierarchy.issuing
    assert not CertificateTemplate.objects.filter(issuing_ca__isnull=False).exists()
    assert "run `manage.py switch_issuing_ca issuing-g2`" in output
    event = AuditEvent.objects.get(action="ca.create", object_id=str(new.pk))
    assert event.actor_name == "system"
    assert event.detail["parent"] == "root"
    assert event.detail["key_algorithm"] == "ec-p256"
    assert event.detail["fingerprint_sha256"] == new.fingerprint_sha256

    # openssl agrees: the root certifies it, as an S/MIME issuing CA.
    verified = openssl.run(
        "verify", "-CAfile", pem(openssl, "root.pem", hierarchy.root), pem(openssl, "g2.pem", new)
    )
    assert b"g2.pem: OK" in verified.stdout
    text = openssl.run("x509", "-in", "g2.pem", "-noout", "-text").stdout.decode()
    assert "CA:TRUE, pathlen:0" in text
    assert "URI:http://pki.example.com/pki/root.crl" in text  # the root's CRL lists it
    assert "CA Issuers - URI:http://pki.example.com/pki/root.crt" in text


def test_it_offers_the_key_types_create_pki_offers_with_ec_p256_by_default(
    hierarchy, passphrase_file
):
    from enrollment.management.commands import create_issuing_ca, create_pki

    assert create_issuing_ca.ALGORITHMS == create_pki.ALGORITHMS
    run(
        "create_issuing_ca",
        root_key_file=str(hierarchy.root_key_path),
        root_passphrase_file=str(passphrase_file),
        slug="issuing-rsa",
        name="Test RSA Issuing CA",
        key_algorithm="rsa-2048",
    )

    public_key = CertificateAuthority.objects.get(slug="issuing-rsa").certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    assert public_key.key_size == 2048


def test_its_name_and_slug_default_to_the_year_and_its_subject_to_the_roots(
    hierarchy, passphrase_file, time_machine
):
    time_machine.move_to("2027-06-01 12:00:00+00:00", tick=False)

    run(
        "create_issuing_ca",
        root_key_file=str(hierarchy.root_key_path),
        root_passphrase_file=str(passphrase_file),
    )

    new = CertificateAuthority.objects.get(slug="issuing-2027")
    assert new.name == "Example Org S/MIME Issuing CA 2027"
    assert new.subject == "CN=Example Org S/MIME Issuing CA 2027,O=Example Org,C=GB"


def test_its_validity_ends_with_the_roots_and_it_says_so(hierarchy, passphrase_file):
    output = create_issuing_ca(hierarchy, passphrase_file, validity_days=5000)

    new = CertificateAuthority.objects.get(slug="issuing-g2")
    assert new.not_after == hierarchy.root.not_after
    assert "cut to the root's end" in output


def test_with_make_default_the_templates_move_at_once(hierarchy, passphrase_file):
    output = create_issuing_ca(hierarchy, passphrase_file, make_default=True)

    new = CertificateAuthority.objects.get(slug="issuing-g2")
    assert CertificateAuthority.objects.get(is_default=True) == new
    assert "Templates moved from Test Issuing CA to Test Issuing CA G2" in output
    assert AuditEvent.objects.filter(action="ca.switch").count() == 1


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong passphrase", "wrong passphrase"),
        ("another root's key", "does not belong to this CA"),
        ("no key file", "does not exist"),
        ("slug taken", "slug 'issuing' exists already"),
        ("name taken", "named 'Test Issuing CA' exists already"),
        ("bad slug", "lower-case letters, digits and hyphens"),
        ("not a root", "is not a root CA"),
        ("http base URL only", "must be plain http://"),
        ("no validity", "A CA validity must be between 1 and"),
        ("a name too long for a certificate", "name must be 1 to 64 printable characters"),
        ("a name with a NUL", "name must be 1 to 64 printable characters"),
        ("an organisation with a line break", "organisation must be 1 to 64 printable"),
        ("no country", "country"),
    ],
)
def test_it_refuses_and_writes_nothing(
    case, message, hierarchy, passphrase_file, settings, tmp_path, ec_p384_key
):
    options: dict[str, object] = {}
    key_file = hierarchy.root_key_path
    if case == "wrong passphrase":
        passphrase_file.write_text("not the root passphrase")
    elif case == "another root's key":
        key_file = tmp_path / "other-root-key.pem"
        key_file.write_bytes(keys.encrypt_private_key_pem(ec_p384_key, ROOT_PASSPHRASE))
    elif case == "no key file":
        key_file = tmp_path / "nowhere.pem"
    elif case == "slug taken":
        options["slug"] = "issuing"
    elif case == "name taken":
        options["name"] = "Test Issuing CA"
    elif case == "bad slug":
        options["slug"] = "Issuing/../x"
    elif case == "not a root":
        options["root"] = "issuing"
    elif case == "http base URL only":
        options["base_url"] = "https://pki.example.com"
    elif case == "no validity":
        options["validity_days"] = 0
    elif case == "a name too long for a certificate":
        options["name"] = "N" * 65
    elif case == "a name with a NUL":
        options["name"] = "Issuing\x00CA"
    elif case == "an organisation with a line break":
        options["organization"] = "Example\nOrg"
    else:
        options["country"] = "Great Britain"
    before, files = row_counts(), key_files(settings)

    with pytest.raises(CommandError, match=re.escape(message)):
        run(
            "create_issuing_ca",
            root_key_file=str(key_file),
            root_passphrase_file=str(passphrase_file),
            **(G2 | options),
        )

    assert row_counts() == before
    assert key_files(settings) == files


def test_it_refuses_to_run_without_the_root_key_file(hierarchy, passphrase_file):
    with pytest.raises(CommandError, match="--root-key-file"):
        run("create_issuing_ca", root_passphrase_file=str(passphrase_file), **G2)

    assert CertificateAuthority.objects.count() == 2


def test_it_needs_a_root_made_by_create_pki(db, tmp_path, passphrase_file):
    with pytest.raises(CommandError, match="There is no root CA: create the hierarchy"):
        run(
            "create_issuing_ca",
            root_key_file=str(tmp_path / "root-key.pem"),
            root_passphrase_file=str(passphrase_file),
        )


def test_a_failure_after_the_key_was_stored_leaves_no_key_file(
    hierarchy, passphrase_file, settings, monkeypatch
):
    def fail(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr("enrollment.services.audit_record", fail)
    before, files = row_counts(), key_files(settings)

    with pytest.raises(RuntimeError):
        create_issuing_ca(hierarchy, passphrase_file)

    assert row_counts() == before
    assert key_files(settings) == files


def test_an_expired_root_cannot_certify_a_successor(
    hierarchy, passphrase_file, settings, time_machine
):
    time_machine.move_to(hierarchy.root.not_after)
    files = key_files(settings)

    with pytest.raises(CommandError, match="has expired"):
        create_issuing_ca(hierarchy, passphrase_file)

    assert not CertificateAuthority.objects.filter(slug="issuing-g2").exists()
    assert key_files(settings) == files


# --- switch_issuing_ca ----------------------------------------------------------------


def test_switching_makes_the_successor_the_default_and_audits_it(successor, hierarchy, template):
    pinned = template("smime-encryption")
    pinned.issuing_ca = hierarchy.issuing
    pinned.save()

    output = run("switch_issuing_ca", "issuing-g2")

    assert CertificateAuthority.objects.get(is_default=True) == successor
    assert CertificateTemplate.objects.get(pk=pinned.pk).issuing_ca == successor
    assert not CertificateTemplate.objects.filter(issuing_ca=hierarchy.issuing).exists()
    switch = AuditEvent.objects.get(action="ca.switch")
    assert switch.object_id == str(successor.pk)
    assert switch.detail == {
        "from": "issuing",
        "to": "issuing-g2",
        "default": True,
        "templates": ["smime-dual-use", "smime-encryption", "smime-signing"],
    }
    change = AuditEvent.objects.get(action="template.change", object_id=str(pinned.pk))
    assert change.detail["changes"] == {"issuing_ca": ["issuing", "issuing-g2"]}
    assert "Test Issuing CA keeps publishing its CRL" in output


def test_switching_from_a_ca_that_is_not_the_default_moves_only_its_templates(
    successor, hierarchy, passphrase_file, template
):
    other = services.issuing_ca_create(
        spec=services.CaSpec("Test RSA Issuing CA", "issuing-rsa", KeyAlgorithm.EC_P256, 365),
        root=hierarchy.root,
        root_key=keystore.OfflineKey(hierarchy.root_key_path, ROOT_PASSPHRASE),
        base_url="http://pki.example.com",
        organization_name="Example Org",
        country_name="GB",
    )
    pinned = template("smime-signing")
    pinned.issuing_ca = other
    pinned.save()

    run("switch_issuing_ca", "issuing-g2", from_ca="issuing-rsa")

    assert CertificateTemplate.objects.get(pk=pinned.pk).issuing_ca == successor
    assert CertificateAuthority.objects.get(is_default=True) == hierarchy.issuing
    assert AuditEvent.objects.get(action="ca.switch").detail["templates"] == ["smime-signing"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("the root", "is not an online issuing CA"),
        ("the same CA", "Templates already issue from Test Issuing CA"),
        ("no such CA", "No CA with slug 'nowhere'"),
        ("an expired CA", "expired on"),
        ("a CA too near its end", "would last 10 days instead of 365 days"),
        ("a CA whose key is gone", "cannot be read"),
    ],
)
def test_switching_refuses_a_ca_that_cannot_issue_and_changes_nothing(
    case, message, successor, hierarchy, settings, time_machine
):
    slug = {"the root": "root", "the same CA": "issuing", "no such CA": "nowhere"}.get(
        case, "issuing-g2"
    )
    if case == "an expired CA":
        time_machine.move_to(successor.not_after)
    elif case == "a CA too near its end":
        time_machine.move_to(successor.not_after - timedelta(days=10), tick=False)
    elif case == "a CA whose key is gone":
        (Path(settings.PKIPORTAL_KEY_DIR) / successor.key_reference).unlink()
    before = row_counts()

    with pytest.raises(CommandError, match=re.escape(message)):
        run("switch_issuing_ca", slug)

    assert row_counts() == before
    assert CertificateAuthority.objects.get(is_default=True) == hierarchy.issuing


def test_a_default_ca_cannot_be_an_offline_or_second_one(successor, hierarchy):
    """The database itself keeps one default, and only an online issuing CA."""
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        CertificateAuthority.objects.filter(pk=successor.pk).update(is_default=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        CertificateAuthority.objects.filter(pk=hierarchy.issuing.pk).update(is_online=False)


# --- issuing from the successor, and the old CA's certificates --------------------------


def test_after_the_switch_enrolment_issues_from_the_successor_and_openssl_verifies_it(
    switched, hierarchy, employee, openssl
):
    response = token_client(employee).post(ENROLLMENTS, csr_body(new_key()), format="json")

    assert response.status_code == 201
    body = response.json()
    assert Certificate.objects.get(serial=body["serial"]).ca == switched
    openssl.write("leaf.pem", body["certificate"].encode())
    openssl.write("chain.pem", "".join(body["chain"]).encode())
    root, new, old = (
        pem(openssl, "root.pem", hierarchy.root),
        pem(openssl, "new.pem", switched),
        pem(openssl, "old.pem", hierarchy.issuing),
    )
    verify = ("verify", "-CAfile", root, "-purpose", "smimesign")
    assert b"leaf.pem: OK" in openssl.run(*verify, "-untrusted", new, "leaf.pem").stdout
    # The chain the answer carries is the successor's, and the old intermediate will not do.
    assert b"leaf.pem: OK" in openssl.run(*verify, "-untrusted", "chain.pem", "leaf.pem").stdout
    refused = openssl.run(*verify, "-untrusted", old, "leaf.pem", check=False)
    assert refused.returncode != 0
    text = openssl.run("x509", "-in", "leaf.pem", "-noout", "-text").stdout.decode()
    assert "URI:http://pki.example.com/pki/issuing-g2.crl" in text
    assert "CA Issuers - URI:http://pki.example.com/pki/issuing-g2.crt" in text


def test_the_successor_names_the_responder_and_answers_ocsp_for_what_it_issues(
    switched, template, employee, anonymous_client
):
    """A successor is how an issuing CA made before OCSP gets a responder (README, OCSP):
    its key usage allows signing answers, and what it issues names /pki/ocsp/."""
    leaf = issue(employee, template("smime-signing"), new_key())
    assert leaf.ca == switched
    aia = leaf.certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    responders = [
        d.access_location.value
        for d in aia.value
        if d.access_method == AuthorityInformationAccessOID.OCSP
    ]
    assert responders == ["http://pki.example.com/pki/ocsp/"]
    asked = (
        x509_ocsp.OCSPRequestBuilder()
        .add_certificate(leaf.certificate, switched.certificate, hashes.SHA1())
        .build()
        .public_bytes(Encoding.DER)
    )

    response = anonymous_client.post("/pki/ocsp/", asked, content_type="application/ocsp-request")

    answer = x509_ocsp.load_der_ocsp_response(response.content)
    assert answer.response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.certificate_status == x509_ocsp.OCSPCertStatus.GOOD
    switched.certificate.public_key().verify(
        answer.signature, answer.tbs_response_bytes, ec.ECDSA(answer.signature_hash_algorithm)
    )


def test_renewing_a_certificate_of_the_old_ca_gets_one_from_the_successor(
    hierarchy, employee, template, successor, django_capture_on_commit_callbacks
):
    old = issue(employee, template("smime-signing"), new_key())
    services.issuing_ca_switch(to=successor)

    with django_capture_on_commit_callbacks(execute=True):
        response = token_client(employee).post(
            f"{certificate_url(old.serial)}renew/", {"csr": csr_pem(new_key())}, format="json"
        )

    assert response.status_code == 201
    assert Certificate.objects.get(serial=response.json()["serial"]).ca == successor
    old.refresh_from_db()
    assert (old.status, old.revocation_reason) == ("revoked", "superseded")
    latest = hierarchy.issuing.latest_crl()
    assert latest.number == 2  # the superseded one is on the old CA's CRL
    assert latest.crl.get_revoked_certificate_by_serial_number(old.certificate.serial_number)


def test_the_old_cas_certificates_stay_revocable_and_its_crl_is_served_and_refreshed(
    hierarchy,
    employee,
    template,
    successor,
    openssl,
    task_at,
    officer,
    django_capture_on_commit_callbacks,
):
    from django.utils import timezone

    from enrollment import tasks

    old = issue(employee, template("smime-signing"), new_key())
    services.issuing_ca_switch(to=successor)

    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(officer).post(
            f"/ra/certificates/{old.pk}/revoke/",
            {"reason": "keyCompromise", "confirm": "on"},
        )
    assert response.status_code == 302, response.content

    # The revocation's CRL (published inline here) is the old CA's, signed by its key.
    served = client_for(None).get("/pki/issuing.crl")
    assert served.status_code == 200
    openssl.write("issuing.crl", served.content)
    pem(openssl, "old.pem", hierarchy.issuing)
    checked = openssl.run(
        "crl", "-inform", "DER", "-in", "issuing.crl", "-CAfile", "old.pem", "-noout", "-text"
    )
    assert b"verify OK" in checked.stderr + checked.stdout
    assert format(old.certificate.serial_number, "X") in checked.stdout.decode()
    # The successor's CRL does not list it.
    assert not RevocationList.objects.get(
        ca=successor
    ).crl.get_revoked_certificate_by_serial_number(old.certificate.serial_number)

    # Beat's refresh goes on for both CAs.
    numbers = {ca.slug: ca.latest_crl().number for ca in (hierarchy.issuing, successor)}
    published = task_at(tasks.crl_publish_scheduled_task, timezone.now())
    assert set(published) == {hierarchy.issuing.pk, successor.pk}
    assert hierarchy.issuing.latest_crl().number == numbers["issuing"] + 1
    assert successor.latest_crl().number == numbers["issuing-g2"] + 1


def test_pki_serves_both_cas_certificates_chains_and_crls(hierarchy, switched, openssl):
    anonymous = client_for(None)
    pem(openssl, "root.pem", hierarchy.root)
    for ca in (hierarchy.issuing, switched):
        crt = anonymous.get(f"/pki/{ca.slug}.crt")
        assert (crt.status_code, crt["Content-Type"]) == (200, "application/pkix-cert")
        assert crt.content == bytes(ca.der)
        crl = anonymous.get(f"/pki/{ca.slug}.crl")
        assert (crl.status_code, crl["Content-Type"]) == (200, "application/pkix-crl")
        chain = anonymous.get(f"/pki/{ca.slug}-chain.p7b")
        openssl.write(f"{ca.slug}.p7b", chain.content)
        printed = openssl.run(
            "pkcs7", "-inform", "DER", "-in", f"{ca.slug}.p7b", "-print_certs", "-noout"
        ).stdout.decode()
        found = re.findall(r"subject=.*?CN = ([^\n]+)", printed)
        assert sorted(found) == sorted(["Test Root CA", ca.name])
    page = anonymous.get("/pki/").content.decode()
    assert "Test Issuing CA G2</h2>\n  <p>Issuing CA, issued by Test Root CA: issues new" in page
    assert "Test Issuing CA</h2>\n  <p>Issuing CA, issued by Test Root CA: not issuing" in page


def _chain_subjects(openssl, name: str, data: bytes, *command: str) -> list[str]:
    openssl.write(name, data)
    printed = openssl.run(*command).stdout.decode()
    return re.findall(r"subject=.*?CN ?= ?([^\n,]+)", printed)


def test_each_certificate_comes_with_its_own_issuers_chain(
    hierarchy, employee, template, successor, openssl
):
    """.p7b downloads (own page and directory) and the PKCS#12 carry the right intermediate."""
    old = issue(employee, template("smime-signing"), new_key())
    services.issuing_ca_switch(to=successor)
    new = issue(employee, template("smime-signing"), new_key())
    me = client_for(employee)

    for certificate, issuer in ((old, "Test Issuing CA"), (new, "Test Issuing CA G2")):
        leaf = certificate.common_name
        for url in (
            f"/certificates/{certificate.pk}/download/p7b/",
            f"/directory/{certificate.fingerprint_sha256}.p7b",
        ):
            response = me.get(url)
            assert response.status_code == 200, url
            found = _chain_subjects(
                openssl,
                "chain.p7b",
                response.content,
                "pkcs7", "-inform", "DER", "-in", "chain.p7b", "-print_certs", "-noout",
            )  # fmt: skip
            # A SignedData's certificates are a DER SET OF: sorted, not in chain order.
            assert sorted(found) == sorted([leaf, issuer, "Test Root CA"]), url
        page = me.get(f"/certificates/{certificate.pk}/").content.decode()
        assert f"<dt>Issued by</dt><dd>{issuer}</dd>" in page
        directory = me.get(f"/directory/{certificate.fingerprint_sha256}/").content.decode()
        assert f">{issuer}</a> ← <a" in directory

    # A portal-made key after the switch: the PKCS#12 carries the successor.
    p12 = token_client(employee).post(ENROLLMENTS, server_key_body(), format="json").json()
    found = _chain_subjects(
        openssl,
        "me.p12",
        base64.b64decode(p12["pkcs12"]),
        "pkcs12", "-in", "me.p12", "-passin", f"pass:{PASSWORD}", "-nokeys", "-cacerts",
    )  # fmt: skip
    assert sorted(found) == ["Test Issuing CA G2", "Test Root CA"]


def test_a_csr_enrolment_still_costs_five_statements_on_postgresql_and_twelve_on_sqlite(
    hierarchy, employee, django_assert_num_queries
):
    """As tests/enrollment/test_api_enrollments.py: the default CA's flag costs nothing."""
    client = token_client(employee)
    client.post(ENROLLMENTS, csr_body(new_key()), format="json")

    with django_assert_num_queries(5 if connection.vendor == "postgresql" else 12):
        response = client.post(ENROLLMENTS, csr_body(new_key()), format="json")

    assert response.status_code == 201


# --- the admin ------------------------------------------------------------------------

CAS = "/admin/enrollment/certificateauthority/"


def staff(*codenames: str):
    user = UserFactory(username=f"staff-{len(codenames)}", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def switch_in_admin(client, *pks: int, **extra: str):
    return client.post(CAS, {"action": "switch_templates", "_selected_action": list(pks), **extra})


def confirm_switch(client, pk: int):
    """As a browser: the action's confirmation page, then its form ticked and posted."""
    page = switch_in_admin(client, pk)
    assert page.status_code == 200, page.content[:300]
    return switch_in_admin(client, pk, post="yes", confirm="on", plan=page.context["plan_token"])


def confirmation_for(ca: CertificateAuthority) -> dict[str, str]:
    """What the confirmation page would post back, without having been shown it."""
    plan = services.issuing_ca_switch_preview(to=ca)
    return {"post": "yes", "confirm": "on", "plan": plan_token(plan)}


def offered(client) -> set[str]:
    form = client.get(CAS).context["action_form"]
    return set() if form is None else {value for value, _label in form.fields["action"].choices}


def nothing_switched(hierarchy, before: dict[str, int]) -> bool:
    return (
        row_counts() == before
        and CertificateAuthority.objects.get(is_default=True) == hierarchy.issuing
        and not AuditEvent.objects.filter(action__in=["ca.switch", "template.change"]).exists()
    )


@pytest.fixture
def pinned(hierarchy, template) -> CertificateTemplate:
    """S/MIME Encryption names the default CA; the other templates follow the default."""
    found = template("smime-encryption")
    found.issuing_ca = hierarchy.issuing
    found.save()
    return found


def test_an_administrator_switches_templates_in_the_admin(successor, hierarchy, pinned, admin_user):
    client = client_for(admin_user)

    response = confirm_switch(client, successor.pk)

    assert response.status_code == 302
    assert CertificateAuthority.objects.get(is_default=True) == successor
    assert CertificateTemplate.objects.get(pk=pinned.pk).issuing_ca == successor
    event = AuditEvent.objects.get(action="ca.switch")
    assert (event.actor, event.source_address) == (admin_user, "127.0.0.1")
    assert event.detail == {
        "from": "issuing",
        "to": "issuing-g2",
        "default": True,
        "templates": ["smime-dual-use", "smime-encryption", "smime-signing"],
    }
    (change,) = AuditEvent.objects.filter(action="template.change")
    assert (change.actor, change.object_id) == (admin_user, str(pinned.pk))
    assert change.detail["changes"] == {"issuing_ca": ["issuing", "issuing-g2"]}
    listed = client.get(response["Location"]).content.decode()
    assert (
        "Test Issuing CA G2 issues from now on for: S/MIME Dual-use, S/MIME Encryption, "
        "S/MIME Signing. Certificates already issued keep their CA"
    ) in listed
    assert "smime-" not in listed.split('class="messagelist"')[1].split("</ul>")[0]


def test_the_action_lists_what_would_move_and_changes_nothing(
    successor, hierarchy, pinned, admin_user
):
    client = client_for(admin_user)
    before = row_counts()

    page = switch_in_admin(client, successor.pk)

    assert page.status_code == 200
    assert page.templates[0].name == "admin/enrollment/certificateauthority/switch.html"
    text = page.content.decode()
    assert "It becomes the default CA instead of <strong>Test Issuing CA</strong>" in text
    rows = [
        [" ".join(re.sub(r"<[^>]+>", " ", cell).split()) for cell in row]
        for row in re.findall(
            r"<tr><td[^>]*>(.*?)</td>\s*<td[^>]*>(.*?)</td>\s*<td[^>]*>(.*?)</td></tr>", text
        )
    ]
    assert [(name.split()[-1], before, after) for name, before, after in rows] == [
        ("smime-encryption", "Test Issuing CA", "Test Issuing CA G2"),
        (
            "smime-dual-use",
            "Test Issuing CA (the default CA: it names none)",
            "Test Issuing CA G2 (the new default)",
        ),
        (
            "smime-signing",
            "Test Issuing CA (the default CA: it names none)",
            "Test Issuing CA G2 (the new default)",
        ),
    ]
    assert 'name="csrfmiddlewaretoken"' in text
    assert f'href="{CAS}" class="button cancel-link"' in text
    assert nothing_switched(hierarchy, before)
    # Cancelling follows the link back to the list; a GET never runs an action.
    assert client.get(CAS).status_code == 200
    as_get = client.get(CAS, {"action": "switch_templates", "_selected_action": successor.pk})
    assert as_get.status_code == 302  # the admin's "?e=1": not a filter it knows
    assert nothing_switched(hierarchy, before)


def test_a_confirmation_without_the_tick_changes_nothing(successor, hierarchy, admin_user):
    client = client_for(admin_user)
    before = row_counts()
    token = switch_in_admin(client, successor.pk).context["plan_token"]

    response = switch_in_admin(client, successor.pk, post="yes", plan=token)

    assert response.status_code == 400
    assert "Tick the box to confirm." in response.content.decode()
    assert nothing_switched(hierarchy, before)


def test_a_confirmation_needs_the_csrf_token(successor, hierarchy, admin_user):
    client = client_for(admin_user)
    client.handler.enforce_csrf_checks = True
    before = row_counts()

    response = switch_in_admin(client, successor.pk, **confirmation_for(successor))

    assert response.status_code == 403
    assert nothing_switched(hierarchy, before)


def test_a_switch_whose_templates_changed_since_the_page_is_shown_again(
    successor, hierarchy, template, admin_user
):
    """The page listed what moves; a template pinned meanwhile would move unseen."""
    client = client_for(admin_user)
    before = row_counts()
    token = switch_in_admin(client, successor.pk).context["plan_token"]
    late = template("smime-signing")
    late.issuing_ca = hierarchy.issuing
    late.save()

    again = switch_in_admin(client, successor.pk, post="yes", confirm="on", plan=token)

    assert again.status_code == 400
    assert "has changed since the page was shown" in again.content.decode()
    assert not again.context["form"].is_bound  # its box unticked: confirm what is shown
    assert nothing_switched(hierarchy, before)
    confirmed = switch_in_admin(
        client, successor.pk, post="yes", confirm="on", plan=again.context["plan_token"]
    )
    assert confirmed.status_code == 302
    assert CertificateTemplate.objects.get(pk=late.pk).issuing_ca == successor


@pytest.mark.parametrize(
    "permissions",
    [
        ("view_certificateauthority",),
        ("view_certificateauthority", "change_certificateauthority"),
        ("view_certificateauthority", "change_certificatetemplate"),
    ],
)
def test_staff_without_both_change_permissions_cannot_switch(successor, hierarchy, permissions):
    client = client_for(staff(*permissions))
    before = row_counts()

    asked = switch_in_admin(client, successor.pk)
    confirmed = switch_in_admin(client, successor.pk, **confirmation_for(successor))

    assert "switch_templates" not in offered(client)
    for response in (asked, confirmed):
        assert response.status_code in (200, 302)  # the list again: "No action selected"
        assert "plan_token" not in (response.context or {})
    assert nothing_switched(hierarchy, before)


def test_staff_with_both_change_permissions_may_switch(successor, hierarchy):
    client = client_for(
        staff(
            "view_certificateauthority",
            "change_certificateauthority",
            "change_certificatetemplate",
        )
    )

    assert "switch_templates" in offered(client)
    assert confirm_switch(client, successor.pk).status_code == 302
    assert CertificateAuthority.objects.get(is_default=True) == successor


@pytest.mark.parametrize("who", ["anonymous", "employee", "officer"])
def test_people_who_are_not_staff_never_reach_the_action(request, who, successor, hierarchy):
    user = None if who == "anonymous" else request.getfixturevalue(who)
    client = client_for(user)
    before = row_counts()

    for extra in ({}, confirmation_for(successor)):
        response = switch_in_admin(client, successor.pk, **extra)
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]
    assert nothing_switched(hierarchy, before)


def test_the_admin_switches_to_one_ca_at_a_time_and_says_why_it_refuses(
    successor, hierarchy, admin_user
):
    client = client_for(admin_user)

    two = switch_in_admin(client, successor.pk, hierarchy.issuing.pk)
    assert "Choose exactly one issuing CA." in client.get(two["Location"]).content.decode()
    root = switch_in_admin(client, hierarchy.root.pk)
    assert "is not an online issuing CA" in client.get(root["Location"]).content.decode()

    assert CertificateAuthority.objects.get(is_default=True) == hierarchy.issuing
    assert not AuditEvent.objects.filter(action="ca.switch").exists()


def test_a_template_can_name_only_an_online_issuing_ca(successor, hierarchy, admin_user):
    page = client_for(admin_user).get("/admin/enrollment/certificatetemplate/add/")

    choices = {
        str(value) for value, _label in page.context["adminform"].form.fields["issuing_ca"].choices
    }
    assert {str(hierarchy.issuing.pk), str(successor.pk)} <= choices
    assert str(hierarchy.root.pk) not in choices


# --- the upgrade ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_upgrade_makes_the_ca_enrolment_used_the_explicit_default():
    executor = MigrationExecutor(connection)
    executor.migrate([("enrollment", "0019_recovery_asked_by_holder")])
    old = executor.loader.project_state(("enrollment", "0019_recovery_asked_by_holder")).apps
    Authority = old.get_model("enrollment", "CertificateAuthority")
    now = timezone.now()

    def make(name: str, parent=None, **fields):
        slug = name.lower().replace(" ", "-")
        fields.setdefault("key_reference", f"{slug}.key.pem")
        return Authority.objects.create(
            name=name,
            slug=slug,
            parent=parent,
            crl_url=f"http://pki.example.com/pki/{slug}.crl",
            ca_issuers_url=f"http://pki.example.com/pki/{slug}.crt",
            der=b"0",
            fingerprint_sha256=slug.ljust(64, "0"),
            subject=f"CN={name}",
            not_before=now,
            not_after=now + timedelta(days=1),
            **fields,
        )

    root = make("Root", is_online=False, key_reference="", crl_validity_days=365)
    make("Zeta Issuing CA", root)
    make("Alpha Issuing CA", root)

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    defaults = CertificateAuthority.objects.filter(is_default=True)
    assert list(defaults.values_list("name", flat=True)) == ["Alpha Issuing CA"]


@given(slug=st.text(max_size=60), name=st.text(max_size=80))
@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_bad_slug_or_name_is_refused_before_the_root_key_is_read(hierarchy, slug, name):
    """Whatever an operator types that cannot be a slug or a CA's name: a refusal naming
    it, never a crash, and before the root key file is read (this one does not exist)."""
    bad_name = not name.strip() or len(name.strip()) > 64 or not name.strip().isprintable()
    assume(not _ok_slug(slug) or bad_name)
    before = row_counts()

    with pytest.raises((PolicyViolation, InvalidState)) as refused:
        services.issuing_ca_create(
            spec=services.CaSpec(name, slug, KeyAlgorithm.EC_P256, 365),
            root=hierarchy.root,
            root_key=keystore.OfflineKey(Path("/nonexistent/root-key.pem"), ROOT_PASSPHRASE),
            base_url="http://pki.example.com",
            organization_name="Example Org",
            country_name="GB",
        )

    assert refused.value.field in ("slug", "name")
    assert row_counts() == before


def _ok_slug(slug: str) -> bool:
    return re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?", slug) is not None
