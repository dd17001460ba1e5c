"""Publishing issued certificates to an LDAP directory, against a real slapd (tests/slapd.py).

Entries are set up, edited "by hand" and read back with ldap-utils; certificates are
compared with the openssl CLI. Nothing here is mocked.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import unicodedata
from datetime import timedelta

import pytest
import time_machine
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django.core.management import CommandError, call_command
from django.utils import timezone

from enrollment import ldap_publish, services
from enrollment.models import AuditEvent, Certificate, LdapPublication
from enrollment.tasks import ldap_publish_task, ldap_reconcile_task
from enrollment.x509 import pkcs7
from tests.enrollment.tools import issue, new_key
from tests.factories import UserFactory
from tests.slapd import PEOPLE, SERVICE_DN, SERVICE_PASSWORD

pytestmark = [pytest.mark.xdist_group("slapd"), pytest.mark.django_db]


@pytest.fixture
def directory(slapd, settings):
    """The session's slapd, emptied of people, and the portal configured to publish to it."""
    slapd.reset_people()
    settings.PKIPORTAL_LDAP_PUBLISH_URI = slapd.uri
    settings.PKIPORTAL_LDAP_PUBLISH_START_TLS = False
    settings.PKIPORTAL_LDAP_PUBLISH_BIND_DN = SERVICE_DN
    settings.PKIPORTAL_LDAP_PUBLISH_BIND_PASSWORD = SERVICE_PASSWORD
    settings.PKIPORTAL_LDAP_PUBLISH_SEARCH_BASE = PEOPLE
    settings.PKIPORTAL_LDAP_PUBLISH_FILTER = "(uid=%(user)s)"
    settings.PKIPORTAL_LDAP_PUBLISH_ATTRIBUTES = ["userCertificate;binary"]
    settings.PKIPORTAL_LDAP_PUBLISH_CERTIFICATES = "encryption"
    settings.PKIPORTAL_LDAP_PUBLISH_TIMEOUT = 5
    return slapd


@pytest.fixture
def alice_dn(directory, employee):
    return directory.add_person("alice", employee.email)


@pytest.fixture
def dual_use(hierarchy, template, employee):
    return issue(employee, template("smime-dual-use"), new_key())


@pytest.fixture
def foreign_der(openssl) -> bytes:
    """A certificate another CA issued (self-signed by openssl): never ours to remove."""
    openssl.run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", openssl.path("foreign.key"), "-subj", "/CN=Other CA user",
                "-days", "30", "-outform", "DER", "-out", openssl.path("foreign.der"))  # fmt: skip
    return openssl.path("foreign.der").read_bytes()


def openssl_sha256(openssl, der: bytes) -> str:
    """The SHA-256 fingerprint openssl reads from DER, as lower-case hex."""
    path = openssl.write("published.der", der)
    output = subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-in", str(path), "-noout", "-fingerprint",
         "-sha256"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return output.strip().split("=", 1)[1].replace(":", "").lower()


def test_it_publishes_an_issued_certificate_that_ldapsearch_and_openssl_read(
    alice_dn, dual_use, directory, openssl
):
    ldap_publish_task.delay(dual_use.owner_id).get()

    published = directory.values(alice_dn)
    assert len(published) == 1
    assert openssl_sha256(openssl, published[0]) == dual_use.fingerprint_sha256
    event = AuditEvent.objects.get(action="ldap.publish")
    assert event.detail == {"dn": alice_dn, "added": [dual_use.serial], "removed": []}


def test_it_removes_the_certificate_when_it_is_revoked(alice_dn, dual_use, directory):
    ldap_publish_task.delay(dual_use.owner_id).get()
    services.certificate_revoke(certificate=dual_use, reason="superseded")

    ldap_publish_task.delay(dual_use.owner_id).get()

    assert directory.values(alice_dn) == []
    assert AuditEvent.objects.filter(action="ldap.publish").order_by("pk").last().detail[
        "removed"
    ] == [dual_use.serial]


def test_it_leaves_other_cas_certificates_alone(directory, employee, dual_use, foreign_der):
    dn = directory.add_person("alice", employee.email, certificates=(foreign_der,))

    ldap_publish_task.delay(employee.pk).get()
    assert sorted(directory.values(dn)) == sorted([foreign_der, bytes(dual_use.der)])
    services.certificate_revoke(certificate=dual_use, reason="superseded")
    ldap_publish_task.delay(employee.pk).get()

    assert directory.values(dn) == [foreign_der]


def test_it_publishes_encryption_capable_certificates_unless_told_all(
    alice_dn, directory, employee, hierarchy, template, settings
):
    signing = issue(employee, template("smime-signing"), new_key())
    ldap_publish_task.delay(employee.pk).get()
    assert directory.values(alice_dn) == []

    settings.PKIPORTAL_LDAP_PUBLISH_CERTIFICATES = "all"
    ldap_publish_task.delay(employee.pk).get()
    assert directory.values(alice_dn) == [bytes(signing.der)]


def test_without_a_broker_the_enrolment_request_never_calls_the_directory(
    alice_dn, directory, employee, hierarchy, template, django_capture_on_commit_callbacks
):
    """The embedded default runs tasks inline: publication must then wait for the
    reconciliation, not run in the request (tests/integration covers the worker)."""
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        certificate = issue(employee, template("smime-dual-use"), new_key())
    assert directory.values(alice_dn) == []
    assert len(callbacks) == 0  # the CSR path queues nothing else on commit either

    ldap_reconcile_task.delay().get()
    assert directory.values(alice_dn) == [bytes(certificate.der)]


def test_reconcile_puts_hand_edited_entries_right(
    directory, employee, colleague, hierarchy, template, foreign_der
):
    kept = issue(employee, template("smime-dual-use"), new_key())
    revoked = issue(employee, template("smime-dual-use"), new_key())
    services.certificate_revoke(certificate=revoked, reason="superseded")
    bobs = issue(colleague, template("smime-dual-use"), new_key())
    # Someone removed alice's valid certificate and put back her revoked one by hand, and
    # a foreign certificate sits beside them; bob's entry was created after his issuance.
    alice = directory.add_person(
        "alice", employee.email, certificates=(bytes(revoked.der), foreign_der)
    )
    bob = directory.add_person("bob", colleague.email)

    result = ldap_reconcile_task.delay().get()

    assert result == {"people": 2, "changed": 2, "added": 2, "removed": 1, "not_found": 0,
                      "failed": 0, "error": ""}  # fmt: skip
    assert sorted(directory.values(alice)) == sorted([bytes(kept.der), foreign_der])
    assert directory.values(bob) == [bytes(bobs.der)]
    # A second run finds nothing to do and audits nothing.
    events = AuditEvent.objects.filter(action="ldap.publish").count()
    assert ldap_reconcile_task.delay().get()["changed"] == 0
    assert AuditEvent.objects.filter(action="ldap.publish").count() == events


def test_reconcile_removes_expired_certificates_and_those_of_deactivated_accounts(
    directory, employee, colleague, hierarchy, template
):
    alice = directory.add_person("alice", employee.email)
    bob = directory.add_person("bob", colleague.email)
    expiring = issue(employee, template("smime-dual-use"), new_key())
    issue(colleague, template("smime-dual-use"), new_key())
    ldap_reconcile_task.delay().get()
    assert directory.values(alice)
    assert directory.values(bob)

    colleague.is_active = False
    colleague.save()
    with time_machine.travel(expiring.not_after + timedelta(seconds=1), tick=False):
        ldap_reconcile_task.delay().get()

    assert directory.values(alice) == []
    assert directory.values(bob) == []


def test_a_directory_that_was_down_is_caught_up_and_health_warns_meanwhile(
    alice_dn, directory, dual_use, settings, officer_client
):
    settings.PKIPORTAL_LDAP_PUBLISH_URI = "ldap://127.0.0.1:9"  # nothing listens there

    with pytest.raises(ldap_publish.DirectoryError, match="could not connect"):
        ldap_publish.person_publish(user_id=dual_use.owner_id)
    check = officer_client.get("/health/").json()["checks"]["ldap_publish"]
    assert check["status"] == "warn"
    assert "could not connect" in check["last_error"]
    assert check["last_failure"]
    assert "failed at" in check["problems"][0]

    settings.PKIPORTAL_LDAP_PUBLISH_URI = directory.uri
    assert ldap_reconcile_task.delay().get()["added"] == 1
    assert directory.values(alice_dn) == [bytes(dual_use.der)]
    assert officer_client.get("/health/").json()["checks"]["ldap_publish"]["status"] == "ok"


def test_a_refused_bind_is_reported_without_the_password(
    alice_dn, directory, dual_use, settings, caplog, anonymous_client
):
    settings.PKIPORTAL_LDAP_PUBLISH_BIND_PASSWORD = "wrong-password-1234"
    caplog.set_level(logging.INFO)

    with pytest.raises(ldap_publish.DirectoryError) as failure:
        ldap_publish.person_publish(user_id=dual_use.owner_id)
    with pytest.raises(ldap_publish.DirectoryError):
        ldap_reconcile_task.delay().get()

    assert "invalidCredentials" in str(failure.value) or "Invalid" in str(failure.value)
    state = LdapPublication.objects.get()
    for text in (str(failure.value), caplog.text, state.error):
        assert "wrong-password-1234" not in text
        assert SERVICE_PASSWORD not in text
    assert state.failed_at is not None
    assert state.succeeded_at is None
    assert directory.values(alice_dn) == []
    # Anonymous probes learn the verdict only, not the error.
    assert "checks" not in anonymous_client.get("/health/").json()


def test_a_person_without_an_entry_is_a_warning_not_a_failure(
    directory, employee, dual_use, officer_client
):
    assert ldap_publish.person_publish(user_id=employee.pk).dn == ""
    check = officer_client.get("/health/").json()["checks"]["ldap_publish"]
    assert check["status"] == "warn"
    assert check["not_found"] == 1
    assert "alice" in check["problems"][0]
    assert ldap_reconcile_task.delay().get()["not_found"] == 1

    dn = directory.add_person("alice", employee.email)
    ldap_reconcile_task.delay().get()

    assert directory.values(dn) == [bytes(dual_use.der)]
    check = officer_client.get("/health/").json()["checks"]["ldap_publish"]
    assert check["status"] == "ok"
    assert check["not_found"] == 0


def test_two_entries_for_one_person_are_not_written(directory, employee, dual_use, settings):
    settings.PKIPORTAL_LDAP_PUBLISH_FILTER = "(mail=%(email)s)"
    first = directory.add_person("alice", employee.email)
    second = directory.add_person("alice2", employee.email)

    assert ldap_publish.person_publish(user_id=employee.pk).dn == ""

    assert directory.values(first) == directory.values(second) == []


def test_the_filter_escapes_what_the_account_holds(directory, dual_use, employee, settings):
    """A user name with filter syntax in it matches itself, not everyone (RFC 4515)."""
    directory.add_person("bob", "bob@example.com")
    employee.username = "*"
    employee.save()

    assert ldap_publish.person_publish(user_id=employee.pk).dn == ""
    assert directory.values(f"uid=bob,{PEOPLE}") == []


def test_it_can_find_people_by_address(directory, employee, dual_use, settings):
    settings.PKIPORTAL_LDAP_PUBLISH_FILTER = "(&(objectClass=inetOrgPerson)(mail=%(email)s))"
    dn = directory.add_person("a.andersson", employee.email)

    ldap_publish_task.delay(employee.pk).get()

    assert directory.values(dn) == [bytes(dual_use.der)]


def test_user_smime_certificate_holds_a_pkcs7_that_openssl_reads(
    alice_dn, directory, dual_use, settings, openssl
):
    settings.PKIPORTAL_LDAP_PUBLISH_ATTRIBUTES = [
        "userCertificate;binary",
        "userSMIMECertificate",  # slapd refuses ;binary on it (RFC 4522: certificates only)
    ]
    # What Outlook's "Publish to GAL" might have left: a PKCS#7 of ours, but not one the
    # portal wrote (no chain); never removed.
    outlooks = pkcs7.certificates_to_p7b([dual_use.certificate])
    directory.modify(
        f"dn: {alice_dn}\nchangetype: modify\nadd: userSMIMECertificate\n"
        f"userSMIMECertificate:: {base64.b64encode(outlooks).decode()}\n"
    )

    ldap_publish_task.delay(dual_use.owner_id).get()

    blobs = directory.values(alice_dn, "userSMIMECertificate")
    assert len(blobs) == 2
    ours = next(blob for blob in blobs if blob != outlooks)
    printed = subprocess.run(
        ["openssl", "pkcs7", "-inform", "DER", "-in", str(openssl.write("p.p7b", ours)),
         "-print_certs", "-noout"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert printed.count("subject=") == 3  # the certificate, the issuing CA, the root
    assert directory.values(alice_dn) == [bytes(dual_use.der)]

    services.certificate_revoke(certificate=dual_use, reason="superseded")
    ldap_publish_task.delay(dual_use.owner_id).get()

    assert directory.values(alice_dn, "userSMIMECertificate") == [outlooks]
    assert directory.values(alice_dn) == []


def test_the_command_reconciles_and_says_what_it_did(alice_dn, directory, dual_use, capsys):
    call_command("ldap_publish")
    assert "1 people checked, 1 entries changed (1 certificates added" in capsys.readouterr().out
    assert directory.values(alice_dn) == [bytes(dual_use.der)]

    call_command("ldap_publish", "--user", "alice")
    assert "added nothing, removed nothing" in capsys.readouterr().out


def test_the_command_refuses_when_publication_is_off(settings, db):
    settings.PKIPORTAL_LDAP_PUBLISH_URI = ""
    with pytest.raises(CommandError, match="PKIPORTAL_LDAP_PUBLISH_URI"):
        call_command("ldap_publish")


def test_health_says_off_when_not_configured(settings, officer_client):
    settings.PKIPORTAL_LDAP_PUBLISH_URI = ""
    check = officer_client.get("/health/").json()["checks"]["ldap_publish"]
    assert check == {"status": "ok", "mode": "off"}


def test_reconcile_visits_only_holders_of_recent_certificates(directory, db):
    UserFactory(username="nobody")  # holds no certificate: never looked up
    assert ldap_reconcile_task.delay().get()["people"] == 0
    assert Certificate.objects.count() == 0
    assert LdapPublication.objects.get().reconciled_at <= timezone.now()


@pytest.mark.parametrize("how", ["starttls", "ldaps"])
def test_tls_connections_verify_the_directory_certificate(
    alice_dn, directory, dual_use, settings, how
):
    if how == "starttls":
        settings.PKIPORTAL_LDAP_PUBLISH_URI = f"ldap://localhost:{directory.port}"
        settings.PKIPORTAL_LDAP_PUBLISH_START_TLS = True
    else:
        settings.PKIPORTAL_LDAP_PUBLISH_URI = directory.ldaps_uri
    # A CA the system does not trust: refused, nothing written.
    with pytest.raises(ldap_publish.DirectoryError, match="could not connect"):
        ldap_publish.person_publish(user_id=dual_use.owner_id)
    assert directory.values(alice_dn) == []

    settings.PKIPORTAL_LDAP_PUBLISH_CA_FILE = str(directory.ca_file)
    ldap_publish.person_publish(user_id=dual_use.owner_id)

    assert directory.values(alice_dn) == [bytes(dual_use.der)]


def test_the_ra_console_warns_officers_only(alice_dn, dual_use, settings, officer_client,
                                            employee_client):  # fmt: skip
    settings.PKIPORTAL_LDAP_PUBLISH_BIND_PASSWORD = "wrong-password-1234"
    with pytest.raises(ldap_publish.DirectoryError):
        ldap_publish.person_publish(user_id=dual_use.owner_id)

    page = officer_client.get("/ra/").content.decode()

    assert "Certificates are not reaching the company directory." in page
    assert "invalidCredentials" in page
    assert "wrong-password-1234" not in page
    assert employee_client.get("/ra/").status_code == 403


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.text(min_size=1, max_size=40).filter(lambda n: n.strip() and "\x00" not in n))
def test_any_user_name_finds_only_its_own_entry(directory, name):
    """Whatever a user name holds (filter syntax, NUL-free Unicode), the search matches
    that name or nothing: never someone else's entry, never an error but "not found"."""
    directory.reset_people()
    bob = directory.add_person("bob", "bob@example.com")
    user = UserFactory.build(username=name)

    with ldap_publish.connect() as connection:
        try:
            entry = connection.find(user)
        except ldap_publish.PersonNotFound:
            entry = None

    # LDAP compares uids ignoring case and surrounding spaces (RFC 4518 preparation).
    folded = unicodedata.normalize("NFKC", name).strip().casefold()
    assert entry is None or (entry.dn == bob and folded == "bob")
