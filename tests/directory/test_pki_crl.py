"""/pki/<ca>.crl never serves a CRL past its nextUpdate (the failure of django-ca issue 167).

An online CA signs a fresh one during the request; an offline root, or an online CA that
cannot sign, answers 503 with a body saying why, which monitoring sees.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from cryptography import x509

from django.utils import timezone

from enrollment import health, keystore, services
from enrollment.models import AuditEvent, CertificateAuthority
from enrollment.x509 import keys

pytestmark = pytest.mark.django_db


def test_an_expired_crl_of_an_online_ca_is_replaced_during_the_request(
    anonymous_client, hierarchy, time_machine
):
    stale = hierarchy.issuing.latest_crl()
    time_machine.move_to(stale.next_update + timedelta(seconds=1))

    response = anonymous_client.get("/pki/issuing.crl")

    assert response.status_code == 200
    served = x509.load_der_x509_crl(response.content)
    assert served.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    assert served.next_update_utc > timezone.now()
    assert response["ETag"] == f'"{hierarchy.issuing.pk}-2"'


def test_a_crowd_of_requests_for_an_expired_crl_publishes_once(
    anonymous_client, hierarchy, time_machine
):
    stale = hierarchy.issuing.latest_crl()
    time_machine.move_to(stale.next_update + timedelta(minutes=1))

    for _ in range(3):
        assert anonymous_client.get("/pki/issuing.crl").status_code == 200

    assert hierarchy.issuing.revocation_lists.count() == 2


def test_an_expired_root_crl_answers_503_naming_the_command(
    anonymous_client, hierarchy, time_machine
):
    crl = services.crl_publish(
        ca=hierarchy.root,
        offline_key=keystore.OfflineKey(hierarchy.root_key_path, hierarchy.root_passphrase),
    )
    time_machine.move_to(crl.next_update + timedelta(days=1))

    response = anonymous_client.get("/pki/root.crl")

    assert response.status_code == 503
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response["Cache-Control"] == "no-store"
    assert response["Retry-After"] == "300"
    body = response.content.decode()
    assert "The CRL of Test Root CA expired at" in body
    assert "sign_root_crl" in body


def test_an_online_ca_that_cannot_sign_answers_503_and_records_why(
    anonymous_client, hierarchy, time_machine, settings
):
    stale = hierarchy.issuing.latest_crl()
    time_machine.move_to(stale.next_update + timedelta(minutes=1))
    settings.PKIPORTAL_CA_KEY_PASSPHRASE = "not the passphrase"
    keystore._PROCESS_KEYS.clear()

    responses = [anonymous_client.get("/pki/issuing.crl") for _ in range(3)]

    assert [response.status_code for response in responses] == [503] * 3
    assert "signing a new one failed" in responses[0].content.decode()
    assert CertificateAuthority.objects.get(slug="issuing").crl_error_code == "KeyStoreError"
    # Recorded once, not once per request.
    assert AuditEvent.objects.filter(action="crl.publish", outcome="failure").count() == 1


def test_a_failure_made_up_for_by_another_publishers_crl_is_audited_not_shown(
    anonymous_client, hierarchy, time_machine, monkeypatch
):
    """The request's attempt rolls back, freeing the CA's row, before it records its
    failure: a publisher waiting on that row (the worker) signs a CRL meanwhile, with no
    failure to clear. Recorded without what the attempt saw under the lock, the failure
    failed /health/ and the RA console with that newer CRL being served. (Here the other
    publisher's CRL is signed inside the failing attempt, after it read the newest CRL
    under the lock, which is all the check looks at.)"""
    stale = hierarchy.issuing.latest_crl()
    time_machine.move_to(stale.next_update + timedelta(minutes=1))
    publish_if_due = services.crl_publish_if_due

    def another_publisher_signs_then_this_fails(**kwargs):
        publish_if_due(**kwargs)
        raise RuntimeError("the HSM session of this web process broke")

    monkeypatch.setattr(services, "crl_publish_if_due", another_publisher_signs_then_this_fails)

    response = anonymous_client.get("/pki/issuing.crl")

    assert response.status_code == 200
    assert response["ETag"] == f'"{hierarchy.issuing.pk}-{stale.number + 1}"'
    (issuing,) = [status for status in health.crl_status() if status.slug == "issuing"]
    assert (issuing.failed_at, issuing.problems) == (None, [])
    failed = AuditEvent.objects.get(action="crl.publish", outcome="failure")
    assert failed.detail["error_code"] == "RuntimeError"


def test_a_current_crl_is_served_without_signing_anything(anonymous_client, hierarchy):
    response = anonymous_client.get("/pki/issuing.crl")

    assert response.status_code == 200
    assert hierarchy.issuing.revocation_lists.count() == 1


def test_a_head_request_and_a_matching_etag_get_no_body(anonymous_client, hierarchy):
    head = anonymous_client.head("/pki/issuing.crl")
    again = anonymous_client.get("/pki/issuing.crl", HTTP_IF_NONE_MATCH=head["ETag"])

    assert head.status_code == 200
    assert again.status_code == 304
    assert again.content == b""
    assert again["Expires"] == head["Expires"]


def test_the_503_of_a_ca_that_cannot_sign_names_no_key_file_nor_reason(
    anonymous_client, hierarchy, time_machine, settings
):
    """The detail (the key's path, the passphrase failing) is for operators, not anyone."""
    time_machine.move_to(hierarchy.issuing.latest_crl().next_update + timedelta(minutes=1))
    settings.PKIPORTAL_CA_KEY_PASSPHRASE = "not the passphrase"
    keystore._PROCESS_KEYS.clear()

    first = anonymous_client.get("/pki/issuing.crl").content.decode()
    again = anonymous_client.get("/pki/issuing.crl").content.decode()

    recorded = CertificateAuthority.objects.get(slug="issuing").crl_error
    assert "key.pem" in recorded
    for body in (first, again):
        assert "signing a new one failed" in body
        assert "key.pem" not in body
        assert str(settings.PKIPORTAL_KEY_DIR) not in body
        assert "passphrase" not in body


@pytest.fixture
def counted(monkeypatch) -> dict[str, int]:
    """How often the revoked entries are read and a CA key is decrypted."""
    calls = {"entries": 0, "decrypts": 0}
    read_entries, decrypt = services._crl_entry_bytes, keys.load_private_key_pem

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(services, "_crl_entry_bytes", counting("entries", read_entries))
    monkeypatch.setattr(keys, "load_private_key_pem", counting("decrypts", decrypt))
    return calls


def test_a_key_that_cannot_be_opened_fails_before_the_entries_are_read(
    anonymous_client, hierarchy, time_machine, settings, counted
):
    time_machine.move_to(hierarchy.issuing.latest_crl().next_update + timedelta(minutes=1))
    settings.PKIPORTAL_CA_KEY_PASSPHRASE = "not the passphrase"
    keystore._PROCESS_KEYS.clear()

    assert anonymous_client.get("/pki/issuing.crl").status_code == 503

    assert counted == {"entries": 0, "decrypts": 1}


def test_after_a_failure_requests_answer_503_without_trying_again_for_a_minute(
    anonymous_client, hierarchy, time_machine, settings, counted
):
    """A crowd of fetchers during an outage neither decrypts nor takes the CA lock."""
    expired = hierarchy.issuing.latest_crl().next_update
    time_machine.move_to(expired + timedelta(minutes=1))
    passphrase = settings.PKIPORTAL_CA_KEY_PASSPHRASE
    settings.PKIPORTAL_CA_KEY_PASSPHRASE = "not the passphrase"
    keystore._PROCESS_KEYS.clear()

    statuses = [anonymous_client.get("/pki/issuing.crl").status_code for _ in range(10)]

    assert statuses == [503] * 10
    assert counted["decrypts"] == 1

    time_machine.move_to(expired + timedelta(minutes=2, seconds=1))
    assert anonymous_client.get("/pki/issuing.crl").status_code == 503
    assert counted["decrypts"] == 2  # a minute later, one request tries again

    settings.PKIPORTAL_CA_KEY_PASSPHRASE = passphrase  # the operator fixes the key
    time_machine.move_to(expired + timedelta(minutes=3, seconds=2))
    response = anonymous_client.get("/pki/issuing.crl")
    assert response.status_code == 200
    assert x509.load_der_x509_crl(response.content).next_update_utc > timezone.now()


def test_if_modified_since_never_hides_a_crl_signed_in_the_same_second(
    anonymous_client, hierarchy, person, issue, time_machine
):
    """Last-Modified has 1-second resolution; CRL 2 shares CRL 1's, so only ETags give 304."""
    certificate = issue(person("Jose", "Garcia"))
    first = hierarchy.issuing.latest_crl()
    time_machine.move_to(first.this_update + timedelta(milliseconds=300), tick=False)
    held = anonymous_client.get("/pki/issuing.crl")
    services.certificate_revoke(certificate=certificate, reason="keyCompromise")
    services.crl_publish_if_due(ca=hierarchy.issuing)
    assert hierarchy.issuing.latest_crl().this_update == first.this_update

    by_date = anonymous_client.get("/pki/issuing.crl", HTTP_IF_MODIFIED_SINCE=held["Last-Modified"])

    assert by_date.status_code == 200
    assert int(certificate.serial, 16) in {
        entry.serial_number for entry in x509.load_der_x509_crl(by_date.content)
    }
    by_etag = anonymous_client.get("/pki/issuing.crl", HTTP_IF_NONE_MATCH=by_date["ETag"])
    assert by_etag.status_code == 304


def test_if_modified_since_never_hides_a_crl_whose_this_update_a_slow_clock_clamped(
    anonymous_client, hierarchy, time_machine
):
    """A host behind the last publisher's clock reuses its thisUpdate (never goes back)."""
    first = hierarchy.issuing.latest_crl()
    time_machine.move_to(first.this_update + timedelta(seconds=30), tick=False)
    ahead = services.crl_publish(ca=hierarchy.issuing)
    held = anonymous_client.get("/pki/issuing.crl")
    time_machine.move_to(first.this_update + timedelta(seconds=10), tick=False)
    behind = services.crl_publish(ca=hierarchy.issuing)
    assert behind.this_update == ahead.this_update

    response = anonymous_client.get(
        "/pki/issuing.crl", HTTP_IF_MODIFIED_SINCE=held["Last-Modified"]
    )

    assert response.status_code == 200
    assert response["ETag"] == f'"{hierarchy.issuing.pk}-{behind.number}"'


def test_if_modified_since_gets_304_when_no_earlier_crl_shares_the_second(
    anonymous_client, hierarchy, time_machine
):
    first = hierarchy.issuing.latest_crl()
    time_machine.move_to(first.this_update + timedelta(seconds=5), tick=False)
    services.crl_publish(ca=hierarchy.issuing)
    held = anonymous_client.get("/pki/issuing.crl")

    again = anonymous_client.get("/pki/issuing.crl", HTTP_IF_MODIFIED_SINCE=held["Last-Modified"])

    assert again.status_code == 304
    assert again["Cache-Control"] == held["Cache-Control"]
