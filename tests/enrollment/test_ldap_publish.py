"""Publishing issued certificates to an LDAP directory, against a real slapd (tests/slapd.py).

Entries are set up, edited "by hand" and read back with ldap-utils; certificates are
compared with the openssl CLI. Nothing here is mocked.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import threading
import unicodedata
from datetime import timedelta

import pytest
import time_machine
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django.contrib.auth import get_user_model
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

    assert result == {"people": 2, "differing": 2, "swept": 2, "sweep_finished": True,
                      "changed": 2, "added": 2, "removed": 1, "not_found": 0, "failed": 0,
                      "error": ""}  # fmt: skip
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


def test_a_refused_bind_is_reported_and_recorded(
    alice_dn, directory, dual_use, settings, caplog, anonymous_client
):
    """ldap3 never puts the password in its messages, so the password checks here guard
    only against the portal itself logging or recording it (its settings, the connection);
    the redaction of a message that does carry it is test_error_messages_never_carry_the_
    password's."""
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


def smime(settings) -> None:
    settings.PKIPORTAL_LDAP_PUBLISH_ATTRIBUTES = [
        "userCertificate;binary",
        "userSMIMECertificate",  # slapd refuses ;binary on it (RFC 4522: certificates only)
    ]


def print_certs(openssl, blob: bytes) -> list[str]:
    """The subjects openssl reads from a DER PKCS#7, in the order it holds them."""
    printed = subprocess.run(
        ["openssl", "pkcs7", "-inform", "DER", "-in", str(openssl.write("p.p7b", blob)),
         "-print_certs", "-noout"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return [line for line in printed.splitlines() if line.startswith("subject=")]


def signed_blob(openssl, foreign_der: bytes, ours: Certificate) -> bytes:
    """What Outlook's "Publish to GAL" writes: a signed PKCS#7 (here signed by another
    CA's certificate) that carries one of ours among others."""
    openssl.write("ours.pem", pkcs7.certificate_pem(ours.certificate))
    openssl.run("x509", "-inform", "DER", "-in", openssl.path("foreign.der"),
                "-out", openssl.path("foreign.pem"))  # fmt: skip
    openssl.write("empty.txt", b"")
    openssl.run("smime", "-sign", "-nodetach", "-binary", "-in", openssl.path("empty.txt"),
                "-signer", openssl.path("foreign.pem"), "-inkey", openssl.path("foreign.key"),
                "-certfile", openssl.path("ours.pem"), "-outform", "DER",
                "-out", openssl.path("outlook.p7s"))  # fmt: skip
    return openssl.path("outlook.p7s").read_bytes()


def test_user_smime_certificate_holds_the_leaf_alone_and_foreign_blobs_stay(
    alice_dn, directory, dual_use, settings, openssl, foreign_der
):
    """Outlook takes the first valid certificate of a blob it did not write: ours holds
    the person's certificate only. A signed blob that merely contains ours is not ours."""
    smime(settings)
    outlooks = signed_blob(openssl, foreign_der, dual_use)
    assert len(print_certs(openssl, outlooks)) == 2
    directory.modify(
        f"dn: {alice_dn}\nchangetype: modify\nadd: userSMIMECertificate\n"
        f"userSMIMECertificate:: {base64.b64encode(outlooks).decode()}\n"
    )

    ldap_publish_task.delay(dual_use.owner_id).get()

    blobs = directory.values(alice_dn, "userSMIMECertificate")
    assert len(blobs) == 2
    ours = next(blob for blob in blobs if blob != outlooks)
    assert len(print_certs(openssl, ours)) == 1  # the leaf alone: no CA to pick first
    extracted = subprocess.run(
        ["openssl", "pkcs7", "-inform", "DER", "-in", str(openssl.write("ours.p7b", ours)),
         "-print_certs"], check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert pkcs7.certificate_pem(dual_use.certificate).decode().strip() in extracted
    assert directory.values(alice_dn) == [bytes(dual_use.der)]

    services.certificate_revoke(certificate=dual_use, reason="superseded")
    ldap_publish_task.delay(dual_use.owner_id).get()

    assert directory.values(alice_dn, "userSMIMECertificate") == [outlooks]
    assert directory.values(alice_dn) == []


def test_user_smime_certificate_blobs_of_ours_are_known_by_content_not_bytes(
    alice_dn, directory, dual_use, settings, openssl
):
    """The first release wrote the certificate with its chain: still ours, replaced by the
    leaf alone, and withdrawn on revocation, although its bytes are not what we write."""
    smime(settings)
    chain = [dual_use.certificate, *(ca.certificate for ca in dual_use.ca.chain())]
    old = pkcs7.certificates_to_p7b(chain)
    assert len(print_certs(openssl, old)) == 3
    directory.modify(
        f"dn: {alice_dn}\nchangetype: modify\nadd: userSMIMECertificate\n"
        f"userSMIMECertificate:: {base64.b64encode(old).decode()}\n"
    )

    ldap_publish_task.delay(dual_use.owner_id).get()

    (blob,) = directory.values(alice_dn, "userSMIMECertificate")
    assert len(print_certs(openssl, blob)) == 1

    directory.modify(  # as if re-encoded by another tool: the same certificate, new bytes
        f"dn: {alice_dn}\nchangetype: modify\nreplace: userSMIMECertificate\n"
        f"userSMIMECertificate:: {base64.b64encode(old).decode()}\n"
    )
    services.certificate_revoke(certificate=dual_use, reason="superseded")
    ldap_publish_task.delay(dual_use.owner_id).get()

    assert directory.values(alice_dn, "userSMIMECertificate") == []


def test_the_command_reconciles_and_says_what_it_did(alice_dn, directory, dual_use, capsys):
    call_command("ldap_publish")
    assert "1 entries changed (1 certificates added" in capsys.readouterr().out
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
@given(
    name=st.one_of(
        st.text(min_size=1, max_size=40),
        st.text(min_size=0, max_size=10).map(lambda n: f"bob\x00{n}"),  # NUL, escaped \00
        st.sampled_from(["bob\x00", "\x00", "b*", "bob)(uid=*", "bo\\62"]),
    ).filter(lambda n: n.strip())
)
def test_any_user_name_finds_only_its_own_entry(directory, name):
    """Whatever a user name holds (filter syntax, NUL, any Unicode), the search matches
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


# --- reconciliation: what changed, the sweep, races ----------------------------------


class _OnLog(logging.Handler):
    """Runs `action` once, when person_sync logs its first change: a point in the middle
    of a reconciliation run, reached without patching anything."""

    def __init__(self, action) -> None:
        super().__init__(logging.INFO)
        self.action = action
        self.fired = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.fired and record.getMessage().startswith("Directory entry uid=alice"):
            self.fired = True
            self.action()


@pytest.fixture
def on_first_change():
    logger = logging.getLogger("enrollment.ldap_publish")
    installed = []

    def install(action) -> _OnLog:
        handler = _OnLog(action)
        logger.addHandler(handler)
        installed.append(handler)
        return handler

    level = logger.level
    logger.setLevel(logging.INFO)
    yield install
    logger.setLevel(level)
    for handler in installed:
        logger.removeHandler(handler)


def test_reconcile_keeps_a_certificate_issued_while_it_runs(
    directory, employee, colleague, hierarchy, template, on_first_change
):
    """The wanted set is read per person at the moment of the visit: a certificate issued
    (and published by its task) after the run began stays published."""
    alice = directory.add_person("alice", employee.email)
    bob = directory.add_person("bob", colleague.email)
    issue(employee, template("smime-dual-use"), new_key())
    earlier = issue(colleague, template("smime-dual-use"), new_key())
    later: list[Certificate] = []
    with time_machine.travel(timezone.now(), tick=False) as traveller:

        def an_hour_later_bob_renews() -> None:
            traveller.shift(timedelta(hours=1))
            later.append(issue(colleague, template("smime-dual-use"), new_key()))
            ldap_publish.person_publish(user_id=colleague.pk)  # what the worker does

        hook = on_first_change(an_hour_later_bob_renews)
        ldap_reconcile_task.delay().get()

    assert hook.fired
    assert directory.values(alice)
    assert sorted(directory.values(bob)) == sorted([bytes(earlier.der), bytes(later[0].der)])


def test_the_diff_visits_only_people_whose_certificates_changed(
    directory, employee, colleague, hierarchy, template, settings
):
    settings.PKIPORTAL_LDAP_SWEEP_BATCH = 0  # the diff alone
    alice = directory.add_person("alice", employee.email)
    directory.add_person("bob", colleague.email)
    alices = issue(employee, template("smime-dual-use"), new_key())
    issue(colleague, template("smime-dual-use"), new_key())
    assert ldap_reconcile_task.delay().get()["people"] == 2

    assert ldap_reconcile_task.delay().get()["people"] == 0  # nothing changed: no search

    services.certificate_revoke(certificate=alices, reason="superseded")  # no task: inline
    result = ldap_reconcile_task.delay().get()
    assert (result["people"], result["differing"], result["removed"]) == (1, 1, 1)
    assert directory.values(alice) == []

    # Expiry, however long ago, is a difference too.
    bobs = Certificate.objects.get(owner=colleague)
    with time_machine.travel(bobs.not_after + timedelta(days=90), tick=False):
        assert ldap_reconcile_task.delay().get()["removed"] == 1


def test_the_sweep_restores_hand_edits_a_slice_per_run_from_where_it_stopped(
    directory, employee, colleague, hierarchy, template, settings
):
    """After publication, the diff has nothing to do; a value deleted by hand comes back
    when the sweep's cursor reaches its person, one bounded batch per run."""
    carol = UserFactory(username="carol", email="carol@example.com")
    people = [employee, colleague, carol]
    dns = [directory.add_person(u.get_username(), u.email) for u in people]
    certificates = [issue(u, template("smime-dual-use"), new_key()) for u in people]
    ldap_reconcile_task.delay().get()
    for dn in dns:
        directory.modify(f"dn: {dn}\nchangetype: modify\ndelete: userCertificate;binary\n")
    settings.PKIPORTAL_LDAP_SWEEP_BATCH = 2
    LdapPublication.objects.update(sweep_after=0)

    first = ldap_reconcile_task.delay().get()
    assert (first["differing"], first["swept"], first["sweep_finished"]) == (0, 2, False)
    assert [bool(directory.values(dn)) for dn in dns] == [True, True, False]
    assert LdapPublication.objects.get().sweep_after == max(employee.pk, colleague.pk)

    second = ldap_reconcile_task.delay().get()
    assert (second["swept"], second["sweep_finished"]) == (1, True)
    assert [directory.values(dn) for dn in dns] == [[bytes(c.der)] for c in certificates]
    state = LdapPublication.objects.get()
    assert (state.sweep_after, state.swept_at is not None) == (0, True)


def test_only_one_reconciliation_runs_at_a_time(directory, employee, dual_use):
    directory.add_person("alice", employee.email)
    LdapPublication.objects.update_or_create(
        pk=1, defaults={"running_until": timezone.now() + timedelta(minutes=10)}
    )

    assert ldap_reconcile_task.delay().get() == {"skipped": "another run is in progress"}
    with pytest.raises(CommandError, match="another reconciliation run"):
        call_command("ldap_publish")

    # A lease left by a killed run lapses.
    with time_machine.travel(timezone.now() + timedelta(minutes=11), tick=False):
        assert ldap_reconcile_task.delay().get()["added"] == 1
    assert LdapPublication.objects.get().running_until is None


def test_the_reconcile_task_has_its_own_time_limit_under_the_visibility_timeout(settings):
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    assert ldap_reconcile_task.soft_time_limit > ldap_publish.RUN_SECONDS
    assert ldap_reconcile_task.soft_time_limit < ldap_reconcile_task.time_limit < visibility
    assert ldap_publish.RUN_LEASE.total_seconds() < visibility


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_person_is_published_by_one_task_at_a_time(directory, employee, hierarchy, template):
    """While one task (or the reconciliation) holds a person between its database read
    and its directory write, another waits, then reads the database after it: a
    revocation's task can no longer be undone by a slower one."""
    from django.db import connection, connections, transaction

    if connection.vendor != "postgresql":
        pytest.skip("the per-person lock is PostgreSQL's advisory lock")
    dn = directory.add_person("alice", employee.email)
    certificate = issue(employee, template("smime-dual-use"), new_key())
    locked, release, done = threading.Event(), threading.Event(), threading.Event()

    def holder() -> None:
        try:
            with transaction.atomic():
                ldap_publish._lock_person(employee.pk)
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    def publisher() -> None:
        try:
            ldap_publish.person_publish(user_id=employee.pk)
            done.set()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=holder), threading.Thread(target=publisher)]
    threads[0].start()
    assert locked.wait(10)
    threads[1].start()
    assert not done.wait(1)  # waiting for the holder
    assert directory.values(dn) == []
    release.set()
    for thread in threads:
        thread.join(10)
    assert done.is_set()
    assert directory.values(dn) == [bytes(certificate.der)]


def test_a_dropped_connection_is_reopened_once_and_the_run_goes_on(
    directory, employee, colleague, hierarchy, template, on_first_change
):
    alice = directory.add_person("alice", employee.email)
    bob = directory.add_person("bob", colleague.email)
    issue(employee, template("smime-dual-use"), new_key())
    bobs = issue(colleague, template("smime-dual-use"), new_key())
    hook = on_first_change(directory.restart)  # a DC restart mid-run drops the connection

    result = ldap_reconcile_task.delay().get()

    assert hook.fired
    assert (result["failed"], result["changed"]) == (0, 2)
    assert directory.values(alice)
    assert directory.values(bob) == [bytes(bobs.der)]


def test_people_without_an_entry_are_counted_once_each(directory, hierarchy, template,
                                                       officer_client):  # fmt: skip
    people = [
        UserFactory(username=f"nobody{n:02}") for n in range(ldap_publish.NOT_FOUND_SHOWN + 1)
    ]
    for person in people:
        issue(person, template("smime-dual-use"), new_key())
    for _ in range(2):
        for person in people:
            ldap_publish.person_publish(user_id=person.pk)
    check = officer_client.get("/health/").json()["checks"]["ldap_publish"]
    assert check["not_found"] == len(people)

    assert ldap_reconcile_task.delay().get()["not_found"] == len(people)
    assert officer_client.get("/health/").json()["checks"]["ldap_publish"]["not_found"] == len(
        people
    )


# --- an address the holder no longer has ------------------------------------------------

NEW = "alice.smith@example.com"


def change_address(user, address: str, how: str = "save") -> None:
    """As the admin or a sync saves it, or as a bulk writer rewrites it (no save())."""
    if how == "save":
        user.email = address
        user.save()
    else:
        get_user_model().objects.filter(pk=user.pk).update(email=address)


def test_a_new_certificate_for_the_new_address_replaces_the_old_addresss_at_once(
    alice_dn, directory, dual_use, employee, template
):
    """Outlook encrypts to a valid certificate of the entry. The old address's one stays
    valid for the grace period (enrollment.outdated), but is no longer the entry's: the
    task a renewal queues publishes the new one and withdraws it in one change."""
    ldap_publish_task.delay(employee.pk).get()
    change_address(employee, NEW)
    renewed = issue(employee, template("smime-dual-use"), new_key())

    ldap_publish_task.delay(employee.pk).get()  # what the issuance queued

    assert renewed.email == NEW
    assert directory.values(alice_dn) == [bytes(renewed.der)]
    event = AuditEvent.objects.filter(action="ldap.publish").order_by("pk").last()
    assert event.detail == {"dn": alice_dn, "added": [renewed.serial], "removed": [dual_use.serial]}
    assert Certificate.objects.get(pk=dual_use.pk).status == "valid"  # its grace period


@pytest.mark.parametrize("how", ["save", "update"])
def test_the_diff_withdraws_an_old_addresss_certificate_and_publishes_it_again_if_changed_back(
    alice_dn, directory, dual_use, employee, settings, how
):
    """The next run's database diff finds an address change, by whichever path it came (a
    bulk update() queues nothing), and finds it changed back: the safety net."""
    settings.PKIPORTAL_LDAP_SWEEP_BATCH = 0  # the diff alone
    ldap_reconcile_task.delay().get()
    assert directory.values(alice_dn) == [bytes(dual_use.der)]

    change_address(employee, NEW, how)
    result = ldap_reconcile_task.delay().get()
    assert (result["people"], result["differing"], result["removed"]) == (1, 1, 1)
    assert directory.values(alice_dn) == []
    assert ldap_reconcile_task.delay().get()["people"] == 0  # the diff agrees with the visit

    change_address(employee, "alice@example.com", how)  # within the grace period
    result = ldap_reconcile_task.delay().get()
    assert (result["people"], result["differing"], result["added"]) == (1, 1, 1)
    assert directory.values(alice_dn) == [bytes(dual_use.der)]
    assert ldap_reconcile_task.delay().get()["people"] == 0


def run_queued(callbacks, settings) -> None:
    """Run what the commit queued, as a worker would: inline (this process has no worker)."""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    for callback in callbacks:
        callback()


@pytest.mark.parametrize("back", [False, True])
def test_an_address_change_through_save_is_published_at_once(
    alice_dn, directory, dual_use, employee, settings, django_capture_on_commit_callbacks, back
):
    """The admin, an OIDC or LDAP sign-in save the account: its commit queues the person's
    publication, so Outlook stops offering the old address's certificate, or offers it
    again when the address changes back within the grace period, without waiting up to
    PKIPORTAL_LDAP_RECONCILE_MINUTES for the diff."""
    if back:
        change_address(employee, NEW, how="update")
    ldap_publish_task.delay(employee.pk).get()
    assert directory.values(alice_dn) == ([] if back else [bytes(dual_use.der)])

    settings.CELERY_TASK_ALWAYS_EAGER = False  # a worker takes what is queued
    with django_capture_on_commit_callbacks() as callbacks:
        change_address(employee, "alice@example.com" if back else NEW)
    assert _ldap_callbacks(callbacks) == [{employee.pk}]
    run_queued(callbacks, settings)

    assert directory.values(alice_dn) == ([bytes(dual_use.der)] if back else [])
    event = AuditEvent.objects.filter(action="ldap.publish").order_by("pk").last()
    added, removed = ([dual_use.serial], []) if back else ([], [dual_use.serial])
    assert event.detail == {"dn": alice_dn, "added": added, "removed": removed}
    assert ldap_publish.differing_people() == []  # nothing left for the diff


@pytest.mark.parametrize("back", [False, True])
def test_a_deactivation_through_save_is_published_at_once(
    alice_dn, directory, dual_use, employee, settings, django_capture_on_commit_callbacks, back
):
    """A leaver's certificates leave their entry when the account is switched off, not at
    the next reconciliation; switched back on, they are published again."""
    if back:
        get_user_model().objects.filter(pk=employee.pk).update(is_active=False)
        employee.refresh_from_db()
    ldap_publish_task.delay(employee.pk).get()
    assert directory.values(alice_dn) == ([] if back else [bytes(dual_use.der)])

    settings.CELERY_TASK_ALWAYS_EAGER = False  # a worker takes what is queued
    with django_capture_on_commit_callbacks() as callbacks:
        employee.is_active = back
        employee.save()
    assert _ldap_callbacks(callbacks) == [{employee.pk}]
    run_queued(callbacks, settings)

    assert directory.values(alice_dn) == ([bytes(dual_use.der)] if back else [])
    assert ldap_publish.differing_people() == []  # nothing left for the diff


@pytest.mark.parametrize("change", ["publication off", "case", "update", "other field"])
def test_saves_that_need_no_publication_queue_none(
    directory, employee, settings, django_capture_on_commit_callbacks, change
):
    """Publication off, a change of case (the same mailbox), a bulk update() (the diff's
    to find) and a save leaving the address be queue nothing."""
    settings.CELERY_TASK_ALWAYS_EAGER = False
    if change == "publication off":
        settings.PKIPORTAL_LDAP_PUBLISH_URI = ""
    with django_capture_on_commit_callbacks() as callbacks:
        if change == "publication off":
            change_address(employee, NEW)
        elif change == "case":
            change_address(employee, employee.email.upper())
        elif change == "update":
            change_address(employee, NEW, how="update")
        else:
            employee.display_name = "Alice S."
            employee.save()
    assert _ldap_callbacks(callbacks) == []
    if change == "publication off":
        assert get_user_model().objects.get(pk=employee.pk).email_changed_at is not None


def test_the_sweep_removes_an_old_addresss_certificate_put_back_by_hand(
    alice_dn, directory, dual_use, employee
):
    ldap_publish_task.delay(employee.pk).get()
    change_address(employee, NEW)
    ldap_publish_task.delay(employee.pk).get()
    directory.modify(
        f"dn: {alice_dn}\nchangetype: modify\nadd: userCertificate;binary\n"
        f"userCertificate;binary:: {base64.b64encode(bytes(dual_use.der)).decode()}\n"
    )

    result = ldap_reconcile_task.delay().get()

    assert (result["differing"], result["swept"], result["removed"]) == (0, 1, 1)
    assert directory.values(alice_dn) == []


def test_a_certificate_naming_no_address_stays_published_when_the_address_changes(
    alice_dn, directory, dual_use, employee
):
    """Some imported certificates name no address: no mailbox to lose, as in the directory."""
    Certificate.objects.filter(pk=dual_use.pk).update(email="", emails=[])
    ldap_reconcile_task.delay().get()

    change_address(employee, NEW)
    ldap_publish_task.delay(employee.pk).get()

    assert directory.values(alice_dn) == [bytes(dual_use.der)]
    assert ldap_reconcile_task.delay().get()["changed"] == 0
    assert ldap_publish.differing_people() == []


def test_a_change_of_case_alone_withdraws_nothing(alice_dn, directory, dual_use, employee):
    ldap_reconcile_task.delay().get()

    change_address(employee, employee.email.upper())
    ldap_publish_task.delay(employee.pk).get()

    assert directory.values(alice_dn) == [bytes(dual_use.der)]
    assert ldap_publish.differing_people() == []


# --- health -----------------------------------------------------------------------------


def test_health_warns_when_no_reconciliation_finishes_whatever_the_tasks_do(
    alice_dn, dual_use, settings, officer_client
):
    settings.CELERY_TASK_ALWAYS_EAGER = False  # a worker and beat are expected
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        ldap_publish.person_publish(user_id=dual_use.owner_id)  # publication turned on
        assert officer_client.get("/health/").json()["checks"]["ldap_publish"]["status"] == "ok"
    # Hours later every per-person task still succeeds, but no reconciliation finished.
    with time_machine.travel(start + timedelta(hours=3, minutes=1), tick=False):
        ldap_publish.person_publish(user_id=dual_use.owner_id)
        check = officer_client.get("/health/").json()["checks"]["ldap_publish"]
    assert check["status"] == "warn"
    assert "has not been reconciled since publication was turned on" in check["problems"][0]

    with time_machine.travel(start + timedelta(hours=3, minutes=2), tick=False):
        ldap_reconcile_task.apply().get()
    with time_machine.travel(start + timedelta(hours=6, minutes=3), tick=False):
        ldap_publish.person_publish(user_id=dual_use.owner_id)
        check = officer_client.get("/health/").json()["checks"]["ldap_publish"]
    assert check["status"] == "warn"
    assert "was last reconciled at" in check["problems"][0]


def test_health_without_a_broker_says_publication_needs_the_cron_job(
    alice_dn, dual_use, officer_client
):
    check = officer_client.get("/health/").json()["checks"]["ldap_publish"]
    assert check["mode"] == "cron"
    assert "manage.py ldap_publish" in check["note"]
    assert check["status"] == "ok"

    with time_machine.travel(timezone.now() + timedelta(hours=4), tick=False):
        check = officer_client.get("/health/").json()["checks"]["ldap_publish"]
    assert check["status"] == "warn"
    assert "run `manage.py ldap_publish` from cron" in check["problems"][0]


# --- queueing ---------------------------------------------------------------------------


def _ldap_callbacks(callbacks) -> list[set[int]]:
    return [c.owners for c in callbacks if getattr(c, "__module__", "") == ldap_publish.__name__
            ] + [set() for c in callbacks if getattr(c, "__qualname__", "").startswith(
                "publish_on_commit")]  # fmt: skip


def test_a_renewal_queues_one_task(directory, employee, dual_use, template, settings,
                                   django_capture_on_commit_callbacks):  # fmt: skip
    settings.CELERY_TASK_ALWAYS_EAGER = False
    with django_capture_on_commit_callbacks() as callbacks:
        services.certificate_issue(
            template=template("smime-dual-use"),
            owner=employee,
            public_key=new_key().public_key(),
            supersedes=dual_use,
        )
    assert _ldap_callbacks(callbacks) == [{employee.pk}]


def test_a_compromised_keys_revocations_queue_one_task(
    directory, employee, hierarchy, template, settings, django_capture_on_commit_callbacks
):
    key = new_key()
    first = issue(employee, template("smime-dual-use"), key)
    issue(employee, template("smime-signing"), key)
    settings.CELERY_TASK_ALWAYS_EAGER = False
    with django_capture_on_commit_callbacks() as callbacks:
        services.certificate_revoke(certificate=first, reason="keyCompromise")
    assert Certificate.objects.filter(owner=employee, status="revoked").count() == 2
    assert _ldap_callbacks(callbacks) == [{employee.pk}]


def test_the_task_does_nothing_once_publication_is_off(alice_dn, directory, dual_use, settings):
    settings.PKIPORTAL_LDAP_PUBLISH_URI = ""
    assert ldap_publish_task.delay(dual_use.owner_id).get() is None
    assert LdapPublication.objects.count() == 0
    assert directory.values(alice_dn) == []


def test_error_messages_never_carry_the_password(settings):
    """ldap3 does not echo the password; should a server or a later ldap3 do it, the
    portal's description of the error still leaves it out."""
    from ldap3.core.exceptions import LDAPBindError

    settings.PKIPORTAL_LDAP_PUBLISH_BIND_PASSWORD = "s3cret-pa55"
    described = ldap_publish.describe(LDAPBindError("bind as cn=x with s3cret-pa55 refused"))
    assert "s3cret-pa55" not in described
    assert described == "LDAPBindError: bind as cn=x with ******** refused"


def test_reset_people_removes_entries_with_non_ascii_names(directory):
    dn = directory.add_person("José Ñúñez", "jose@example.com")
    assert directory.values(dn) == []
    directory.reset_people()
    with pytest.raises(AssertionError, match="No such object"):
        directory.values(dn)
