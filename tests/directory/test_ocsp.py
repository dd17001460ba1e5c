"""/pki/ocsp/: the OCSP responder over the database, by POST and by GET (RFC 6960, 5019).

Public like the rest of /pki/: the same answer for anyone, no session and no CSRF token.
"""

from __future__ import annotations

import base64
import logging
from datetime import timedelta
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from django.db import OperationalError, connection
from django.test import Client
from django.utils import timezone

from enrollment import ocsp, services
from enrollment.models import Certificate, CertificateAuthority
from enrollment.x509 import builder, keys
from enrollment.x509.ocsp import issuer_cert_ids
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

OCSP = "/pki/ocsp/"
REQUEST_TYPE = "application/ocsp-request"
DAY = timedelta(hours=24) - timedelta(seconds=1)
Status = x509_ocsp.OCSPCertStatus
ResponseStatus = x509_ocsp.OCSPResponseStatus


@pytest.fixture(autouse=True)
def _nothing_kept():
    ocsp.forget_signed_responses()
    yield
    ocsp.forget_signed_responses()


@pytest.fixture
def certificate(issue, employee) -> Certificate:
    return issue(employee)


def request_for(
    certificate: x509.Certificate,
    issuer: x509.Certificate,
    *,
    algorithm: hashes.HashAlgorithm | None = None,
    nonce: bytes | None = None,
) -> bytes:
    builder_ = x509_ocsp.OCSPRequestBuilder().add_certificate(
        certificate, issuer, algorithm or hashes.SHA1()
    )
    if nonce is not None:
        builder_ = builder_.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder_.build().public_bytes(Encoding.DER)


def ask(certificate: Certificate, **options) -> bytes:
    return request_for(certificate.certificate, certificate.ca.certificate, **options)


def post(client: Client, der: bytes, **extra):
    return client.post(OCSP, der, content_type=REQUEST_TYPE, **extra)


def get(client: Client, der: bytes, **extra):
    return client.get(OCSP + quote(base64.b64encode(der).decode(), safe=""), **extra)


def parsed(response) -> x509_ocsp.OCSPResponse:
    assert response["Content-Type"] == "application/ocsp-response"
    return x509_ocsp.load_der_ocsp_response(response.content)


def verify_signature(answer: x509_ocsp.OCSPResponse, ca: CertificateAuthority) -> None:
    public_key = ca.certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(answer.signature, answer.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))


# --- statuses ----------------------------------------------------------------------------


@pytest.mark.parametrize("send", [post, get], ids=["POST", "GET"])
def test_a_valid_certificate_is_good(send, anonymous_client, certificate, hierarchy):
    response = send(anonymous_client, ask(certificate))

    assert response.status_code == 200
    answer = parsed(response)
    assert answer.response_status is ResponseStatus.SUCCESSFUL
    assert answer.certificate_status is Status.GOOD
    assert answer.serial_number == certificate.certificate.serial_number
    assert answer.next_update_utc - answer.this_update_utc == DAY
    assert abs(answer.this_update_utc - timezone.now()) < timedelta(seconds=5)
    assert answer.responder_key_hash == (
        x509.SubjectKeyIdentifier.from_public_key(hierarchy.issuing.certificate.public_key()).digest
    )
    verify_signature(answer, hierarchy.issuing)


@pytest.mark.parametrize(
    "algorithm",
    [hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()],
    ids=lambda algorithm: algorithm.name,
)
def test_a_certid_is_answered_in_the_hash_it_was_asked_in(algorithm, anonymous_client, certificate):
    answer = parsed(post(anonymous_client, ask(certificate, algorithm=algorithm)))

    assert answer.certificate_status is Status.GOOD
    assert answer.hash_algorithm.name == algorithm.name
    request = x509_ocsp.load_der_ocsp_request(ask(certificate, algorithm=algorithm))
    assert answer.issuer_name_hash == request.issuer_name_hash
    assert answer.issuer_key_hash == request.issuer_key_hash


@pytest.mark.parametrize(
    ("reason", "flag"),
    [
        ("keyCompromise", x509.ReasonFlags.key_compromise),
        ("superseded", x509.ReasonFlags.superseded),
    ],
)
def test_a_revoked_certificate_answers_as_its_crl_entry_says(
    reason, flag, anonymous_client, certificate, hierarchy
):
    services.certificate_revoke(certificate=certificate, reason=reason, actor=None)
    crl = services.crl_publish(ca=hierarchy.issuing).crl
    entry = crl.get_revoked_certificate_by_serial_number(certificate.certificate.serial_number)

    answer = parsed(post(anonymous_client, ask(certificate)))

    assert answer.certificate_status is Status.REVOKED
    assert answer.revocation_reason is flag
    assert entry is not None
    assert answer.revocation_time_utc == entry.revocation_date_utc
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is flag
    assert answer.this_update_utc >= answer.revocation_time_utc


def test_a_revocation_without_a_reason_has_none_in_the_answer(anonymous_client, certificate):
    services.certificate_revoke(certificate=certificate, reason=None, actor=None)

    answer = parsed(post(anonymous_client, ask(certificate)))

    assert answer.certificate_status is Status.REVOKED
    assert answer.revocation_reason is None


def test_a_revocation_is_answered_at_once_though_good_was_just_signed(
    anonymous_client, certificate
):
    """The process keeps signed answers by the status they attest: none goes stale."""
    first = get(anonymous_client, ask(certificate))
    assert parsed(first).certificate_status is Status.GOOD
    assert get(anonymous_client, ask(certificate)).content == first.content  # kept

    services.certificate_revoke(certificate=certificate, reason="keyCompromise", actor=None)

    # Even to a client (or cache) revalidating the good answer it holds.
    again = get(anonymous_client, ask(certificate), HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 200
    assert parsed(again).certificate_status is Status.REVOKED
    assert again["ETag"] != first["ETag"]
    assert parsed(post(anonymous_client, ask(certificate))).certificate_status is Status.REVOKED


def test_an_expired_certificate_keeps_its_status(anonymous_client, certificate, time_machine):
    """S/MIME BR 4.10.1: a revocation stays after expiry; the rows keep both statuses."""
    services.certificate_revoke(certificate=certificate, reason="superseded", actor=None)
    time_machine.move_to(certificate.not_after + timedelta(days=1))

    answer = parsed(post(anonymous_client, ask(certificate)))

    assert answer.certificate_status is Status.REVOKED


def test_a_serial_the_ca_never_issued_is_unknown_and_logged(
    anonymous_client, certificate, hierarchy, caplog
):
    """Never "good" (S/MIME BR 4.9.10), and logged, as the BR ask CAs to watch for them."""
    ids = {item[0]: item for item in issuer_cert_ids(hierarchy.issuing.certificate)}
    _, name_hash, key_hash = ids["sha1"]
    der = (
        x509_ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(name_hash, key_hash, 2**158 + 99, hashes.SHA1())
        .build()
        .public_bytes(Encoding.DER)
    )
    with caplog.at_level(logging.WARNING, logger="enrollment.ocsp"):
        response = post(anonymous_client, der)

    answer = parsed(response)
    assert answer.certificate_status is Status.UNKNOWN
    assert answer.serial_number == 2**158 + 99
    verify_signature(answer, hierarchy.issuing)
    assert "never issued" in caplog.text
    assert format(2**158 + 99, "x")[:48] in caplog.text


def test_each_signature_is_logged_as_the_br_ask_and_a_kept_answer_signs_nothing(
    anonymous_client, certificate, caplog
):
    """S/MIME BR 5.4.1 asks CAs to record the signing of OCSP responses."""
    with caplog.at_level(logging.INFO, logger="enrollment.ocsp"):
        post(anonymous_client, ask(certificate))
        post(anonymous_client, ask(certificate))  # the kept answer

    signed = [r for r in caplog.records if "signed" in r.getMessage()]
    assert len(signed) == 1
    assert signed[0].levelno == logging.INFO
    assert certificate.serial[:16] in signed[0].getMessage().replace(":", "").lower()


def unknown_serial_request(hierarchy, serial: int) -> bytes:
    ids = {item[0]: item for item in issuer_cert_ids(hierarchy.issuing.certificate)}
    _, name_hash, key_hash = ids["sha1"]
    return (
        x509_ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(name_hash, key_hash, serial, hashes.SHA1())
        .build()
        .public_bytes(Encoding.DER)
    )


def test_a_flood_of_unknown_serials_is_logged_once_a_minute_and_never_kept(
    anonymous_client, certificate, hierarchy, caplog, time_machine
):
    """Anyone may ask about made-up serials: neither the log nor the kept answers fill up."""
    time_machine.move_to(timezone.now(), tick=False)
    with caplog.at_level(logging.WARNING, logger="enrollment.ocsp"):
        for serial in range(1000, 1005):
            assert (
                parsed(
                    post(anonymous_client, unknown_serial_request(hierarchy, serial))
                ).certificate_status
                is Status.UNKNOWN
            )
        assert caplog.text.count("never issued") == 1
        time_machine.shift(ocsp.UNKNOWN_LOG_INTERVAL)
        post(anonymous_client, unknown_serial_request(hierarchy, 2000))

    assert caplog.text.count("never issued") == 2
    assert "and about 4 more unknown serials" in caplog.text
    assert len(ocsp._KEPT) == 0
    post(anonymous_client, ask(certificate))
    assert len(ocsp._KEPT) == 1  # a "good" is kept, as before


# --- what the responder does not answer ---------------------------------------------------


def test_a_ca_the_portal_does_not_know_is_unauthorized(
    anonymous_client, hierarchy, pki, make_end_entity
):
    """The session's throwaway CA has no row here."""
    leaf = make_end_entity().certificate
    response = post(anonymous_client, request_for(leaf, pki.issuing.certificate))

    assert response.status_code == 200
    assert parsed(response).response_status is ResponseStatus.UNAUTHORIZED
    assert response["Cache-Control"] == "no-store"


def test_the_offline_roots_certificates_are_unauthorized(anonymous_client, hierarchy):
    """The root's key is offline: the issuing CA's status is on the root's CRL only."""
    der = request_for(hierarchy.issuing.certificate, hierarchy.root.certificate)

    for send in (post, get):
        answer = parsed(send(anonymous_client, der))
        assert answer.response_status is ResponseStatus.UNAUTHORIZED


def test_a_ca_whose_certificate_forbids_ocsp_signing_is_unauthorized(
    anonymous_client, certificate, hierarchy, caplog
):
    """A CA made before the responder: the same name and key, no digitalSignature.

    Requests name it exactly as before (same hashes), but S/MIME BR 7.1.2.2 (e) keeps its
    key from signing responses.
    """
    root_key = keys.load_private_key_pem(
        hierarchy.root_key_path.read_bytes(), hierarchy.root_passphrase
    )
    issuing = hierarchy.issuing
    old = builder.build_issuing_ca(
        public_key=issuing.certificate.public_key(),
        issuer_certificate=hierarchy.root.certificate,
        issuer_key=root_key,
        common_name=issuing.certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[
            0
        ].value,
        organization_name="Example Org",
        country_name="GB",
        crl_url=hierarchy.root.crl_url,
        ca_issuers_url=hierarchy.root.ca_issuers_url,
    )
    assert old.subject == issuing.certificate.subject
    CertificateAuthority.objects.filter(pk=issuing.pk).update(
        der=old.public_bytes(Encoding.DER), fingerprint_sha256="ab" * 32
    )

    with caplog.at_level(logging.WARNING, logger="enrollment.ocsp"):
        answer = parsed(post(anonymous_client, ask(certificate)))

    assert answer.response_status is ResponseStatus.UNAUTHORIZED
    assert "does not assert digitalSignature" in caplog.text


def test_garbage_is_a_malformed_request(anonymous_client, hierarchy):
    response = post(anonymous_client, b"\x30\x03\x02\x01\x05 and more")

    assert response.status_code == 200
    assert parsed(response).response_status is ResponseStatus.MALFORMED_REQUEST
    assert response["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["!!!not-base64!!!", "TUlJ", "%ZZ%ZZ"])
def test_a_get_path_that_is_no_request_is_a_malformed_request(path, anonymous_client, hierarchy):
    response = anonymous_client.get(OCSP + path)

    assert response.status_code == 200
    assert parsed(response).response_status is ResponseStatus.MALFORMED_REQUEST
    assert response["Cache-Control"] == "no-store"


def test_a_request_for_two_certificates_is_malformed(anonymous_client, hierarchy, openssl):
    """One certificate per request (RFC 5019 2.1.1); clients send one, openssl may not."""
    openssl.write_pem("issuing.pem", hierarchy.issuing.certificate)
    openssl.run(
        "ocsp", "-issuer", "issuing.pem", "-serial", "0x1", "-serial", "0x2",
        "-no_nonce", "-reqout", "two.der",
    )  # fmt: skip

    answer = parsed(post(anonymous_client, openssl.path("two.der").read_bytes()))

    assert answer.response_status is ResponseStatus.MALFORMED_REQUEST


def test_a_negative_serial_is_a_malformed_request_not_a_server_error(anonymous_client, certificate):
    """What the fuzz test below first found: cryptography cannot echo a negative serial."""
    der = ask(certificate)
    serial = certificate.certificate.serial_number.to_bytes(20, "big")
    integer = b"\x02\x14" + serial
    assert der.count(integer) == 1
    negative = der.replace(integer, b"\x02\x14" + bytes([serial[0] | 0x80]) + serial[1:])

    for send in (post, get):
        response = send(anonymous_client, negative)
        assert response.status_code == 200
        assert parsed(response).response_status is ResponseStatus.MALFORMED_REQUEST


# --- nonces --------------------------------------------------------------------------------


def test_a_nonce_is_echoed_and_makes_a_fresh_answer(anonymous_client, certificate):
    first = parsed(post(anonymous_client, ask(certificate, nonce=b"\x01" * 32)))
    second = parsed(post(anonymous_client, ask(certificate, nonce=b"\x02" * 32)))

    assert first.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"\x01" * 32
    assert second.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"\x02" * 32
    assert first.certificate_status is second.certificate_status is Status.GOOD


def test_an_answer_without_a_nonce_carries_none(anonymous_client, certificate):
    assert list(parsed(post(anonymous_client, ask(certificate))).extensions) == []


def test_a_nonce_over_128_octets_is_a_malformed_request(anonymous_client, certificate):
    """RFC 9654 2.1; 128 octets themselves are echoed."""
    too_long = parsed(post(anonymous_client, ask(certificate, nonce=b"n" * 129)))
    longest = parsed(post(anonymous_client, ask(certificate, nonce=b"n" * 128)))

    assert too_long.response_status is ResponseStatus.MALFORMED_REQUEST
    assert longest.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * 128


def test_a_get_with_a_nonce_is_not_for_caches(anonymous_client, certificate):
    response = get(anonymous_client, ask(certificate, nonce=b"\x07" * 16))

    assert parsed(response).certificate_status is Status.GOOD
    assert response["Cache-Control"] == "no-store"
    assert not response.has_header("ETag")


# --- HTTP ----------------------------------------------------------------------------------


def test_get_answers_carry_rfc_5019_caching_headers(anonymous_client, certificate, settings):
    settings.PKIPORTAL_OCSP_MAX_AGE_SECONDS = 300

    response = get(anonymous_client, ask(certificate))

    answer = parsed(response)
    assert response["Cache-Control"] == "public, max-age=300, no-transform, must-revalidate"
    assert response["Last-Modified"] == answer.this_update_utc.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert response["ETag"].startswith('"')
    assert len(response["ETag"]) == 34
    assert response.has_header("Expires")


def test_a_matching_etag_gets_304_with_the_same_caching_headers(anonymous_client, certificate):
    first = get(anonymous_client, ask(certificate))

    again = get(anonymous_client, ask(certificate), HTTP_IF_NONE_MATCH=first["ETag"])

    assert again.status_code == 304
    assert again.content == b""
    assert again["ETag"] == first["ETag"]
    assert again["Cache-Control"] == first["Cache-Control"]


def test_if_modified_since_alone_never_gets_304(anonymous_client, certificate):
    """Two answers signed in one second share Last-Modified: a revocation must not be
    taken for "not modified"."""
    first = get(anonymous_client, ask(certificate))

    again = get(anonymous_client, ask(certificate), HTTP_IF_MODIFIED_SINCE=first["Last-Modified"])

    assert again.status_code == 200


def test_max_age_never_reaches_past_the_time_a_newer_answer_is_due(
    anonymous_client, certificate, time_machine, settings
):
    """24-hour answers are replaced after 16 hours (S/MIME BR 4.9.10: 8 hours before
    nextUpdate); the kept one is handed out until then, caches no longer than that."""
    settings.PKIPORTAL_OCSP_MAX_AGE_SECONDS = 3600
    time_machine.move_to(timezone.now(), tick=False)
    first = get(anonymous_client, ask(certificate))
    signed_at = parsed(first).this_update_utc

    time_machine.move_to(signed_at + timedelta(hours=16) - timedelta(seconds=90), tick=False)
    late = get(anonymous_client, ask(certificate))
    assert late.content == first.content
    assert late["Cache-Control"] == "public, max-age=90, no-transform, must-revalidate"

    time_machine.move_to(signed_at + timedelta(hours=16), tick=False)
    renewed = get(anonymous_client, ask(certificate))
    assert parsed(renewed).this_update_utc == signed_at + timedelta(hours=16)
    assert renewed["Cache-Control"] == "public, max-age=3600, no-transform, must-revalidate"


def test_the_validity_follows_the_setting(anonymous_client, certificate, settings):
    settings.PKIPORTAL_OCSP_VALIDITY_HOURS = 8

    answer = parsed(post(anonymous_client, ask(certificate)))

    assert answer.next_update_utc - answer.this_update_utc == timedelta(hours=8, seconds=-1)


def test_post_answers_are_not_stored(anonymous_client, certificate):
    response = post(anonymous_client, ask(certificate))

    assert response["Cache-Control"] == "no-store"


def test_post_without_the_trailing_slash_is_answered(anonymous_client, certificate):
    response = anonymous_client.post("/pki/ocsp", ask(certificate), content_type=REQUEST_TYPE)

    assert parsed(response).certificate_status is Status.GOOD


@pytest.mark.parametrize(
    "shape",
    [
        lambda b64: b64,  # not URL-encoded: "/" and "+" as they are
        lambda b64: "/" + quote(b64, safe=""),  # a client appending "/" to ".../ocsp/"
        lambda b64: quote(b64.rstrip("="), safe=""),  # padding dropped
        lambda b64: b64.replace("+", "-").replace("/", "_"),  # base64url
        lambda b64: quote(quote(b64, safe=""), safe=""),  # URL-encoded twice
    ],
    ids=["raw", "double-slash", "unpadded", "base64url", "encoded-twice"],
)
def test_get_tolerates_what_clients_and_proxies_do_to_the_path(
    shape, anonymous_client, certificate
):
    der = ask(certificate, nonce=b"\xfb\xff" * 20)  # base64 with "+" and "/" in it
    b64 = base64.b64encode(der).decode()
    assert "/" in b64
    assert "+" in b64

    response = anonymous_client.get(OCSP + shape(b64))

    assert parsed(response).certificate_status is Status.GOOD


def test_head_answers_like_get(anonymous_client, certificate):
    der = ask(certificate)
    path = OCSP + quote(base64.b64encode(der).decode(), safe="")

    response = anonymous_client.head(path)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/ocsp-response"


@pytest.mark.parametrize(
    "content_type", ["application/octet-stream", "text/plain", "application/x-www-form-urlencoded"]
)
def test_post_with_another_content_type_is_415(content_type, anonymous_client, certificate):
    response = anonymous_client.post(OCSP, ask(certificate), content_type=content_type)

    assert response.status_code == 415
    assert "application/ocsp-request" in response.content.decode()
    assert response["Cache-Control"] == "no-store"


def test_post_without_a_content_type_is_415(anonymous_client, certificate):
    response = anonymous_client.generic("POST", OCSP, ask(certificate), content_type="")

    assert response.status_code == 415


def test_a_post_body_over_4096_bytes_is_413(anonymous_client, hierarchy):
    response = post(anonymous_client, b"\x30" * 4097)

    assert response.status_code == 413
    assert "4096 bytes" in response.content.decode()


def test_a_post_declaring_more_than_4096_bytes_is_413_before_reading(anonymous_client, hierarchy):
    response = post(anonymous_client, b"\x30\x00", CONTENT_LENGTH="1000000")

    assert response.status_code == 413


def test_a_get_request_over_4096_bytes_is_414(anonymous_client, hierarchy):
    der = b"\x30" * 4097
    response = anonymous_client.get(OCSP + quote(base64.b64encode(der).decode(), safe=""))

    assert response.status_code == 414


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
def test_the_post_url_answers_post_only(method, anonymous_client, hierarchy):
    response = getattr(anonymous_client, method)(OCSP)

    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert "OCSP responder" in response.content.decode()


@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_a_request_in_the_path_answers_get_and_head_only(method, anonymous_client, certificate):
    path = OCSP + quote(base64.b64encode(ask(certificate)).decode(), safe="")

    response = getattr(anonymous_client, method)(path)

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"


# --- who may ask: anyone, the same answer ---------------------------------------------------


def test_anyone_gets_the_same_answer_without_a_csrf_token(
    certificate, employee, colleague, officer
):
    """Mail clients send no cookie and no token: the endpoint is public and changes nothing."""
    strict = Client(enforce_csrf_checks=True)
    answers = [
        parsed(post(client, ask(certificate))).certificate_status
        for client in (strict, client_for(employee), client_for(colleague), client_for(officer))
    ]
    assert answers == [Status.GOOD] * 4
    assert Certificate.objects.get(pk=certificate.pk).status == "valid"


# --- when the CA cannot answer --------------------------------------------------------------


def test_an_unreadable_ca_key_answers_try_later(anonymous_client, certificate, hierarchy, settings):
    """Never a 500: the client asks again or falls back to the CRL."""
    (settings.PKIPORTAL_KEY_DIR / hierarchy.issuing.key_reference).unlink()

    response = post(anonymous_client, ask(certificate))

    assert response.status_code == 503
    assert response["Retry-After"] == "60"
    assert response["Cache-Control"] == "no-store"
    assert parsed(response).response_status is ResponseStatus.TRY_LATER


def test_a_wrong_key_passphrase_answers_try_later_over_get_too(
    anonymous_client, certificate, settings
):
    settings.PKIPORTAL_CA_KEY_PASSPHRASE = "not the passphrase"

    response = get(anonymous_client, ask(certificate))

    assert response.status_code == 503
    assert parsed(response).response_status is ResponseStatus.TRY_LATER
    assert response["Cache-Control"] == "no-store"


def test_a_database_that_does_not_answer_means_try_later(anonymous_client, certificate):
    der = ask(certificate)

    def refuse(execute, sql, params, many, context):
        raise OperationalError("connection refused")

    with connection.execute_wrapper(refuse):
        response = post(anonymous_client, der)

    assert response.status_code == 503
    assert parsed(response).response_status is ResponseStatus.TRY_LATER


def test_a_bug_still_gives_the_client_an_ocsp_answer(
    anonymous_client, certificate, monkeypatch, caplog
):
    """internalError, HTTP 500 for monitoring, the traceback in the log."""

    def broken(query, now):
        raise RuntimeError("a bug")

    monkeypatch.setattr(ocsp, "_answer", broken)
    with caplog.at_level(logging.ERROR):
        response = post(anonymous_client, ask(certificate))

    assert response.status_code == 500
    assert parsed(response).response_status is ResponseStatus.INTERNAL_ERROR
    assert "answering a request failed" in caplog.text


# --- the responder's URL in what the CA issues -----------------------------------------------


def test_create_pki_gives_the_issuing_ca_the_responder_and_the_right_to_sign_for_it(hierarchy):
    assert hierarchy.issuing.ocsp_url == "http://pki.example.com/pki/ocsp/"
    assert hierarchy.root.ocsp_url == ""
    usage = hierarchy.issuing.certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.value.digital_signature
    # The issuing CA's own certificate names no responder: the root's key is offline.
    aia = hierarchy.issuing.certificate.extensions.get_extension_for_class(
        x509.AuthorityInformationAccess
    )
    assert [d.access_method for d in aia.value] == [AuthorityInformationAccessOID.CA_ISSUERS]


def test_issued_certificates_name_the_responder_that_answers_for_them(
    anonymous_client, certificate, hierarchy
):
    aia = certificate.certificate.extensions.get_extension_for_class(
        x509.AuthorityInformationAccess
    ).value
    assert [(d.access_method, d.access_location.value) for d in aia] == [
        (AuthorityInformationAccessOID.OCSP, "http://pki.example.com/pki/ocsp/"),
        (AuthorityInformationAccessOID.CA_ISSUERS, "http://pki.example.com/pki/issuing.crt"),
    ]
    assert aia[0].access_location.value.endswith(OCSP)


def test_a_ca_without_a_responder_url_issues_without_one(issue, employee, hierarchy):
    CertificateAuthority.objects.filter(pk=hierarchy.issuing.pk).update(ocsp_url="")

    issued = issue(employee)

    aia = issued.certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    assert [d.access_method for d in aia.value] == [AuthorityInformationAccessOID.CA_ISSUERS]


# --- hostile input --------------------------------------------------------------------------

FUZZ = hypothesis_settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _well_formed_or_refused(response) -> None:
    assert response.status_code != 500
    if response.status_code == 200:
        answer = parsed(response)
        assert answer.response_status in (
            ResponseStatus.SUCCESSFUL,
            ResponseStatus.MALFORMED_REQUEST,
            ResponseStatus.UNAUTHORIZED,
        )
    else:
        assert 400 <= response.status_code < 500, response.status_code


@FUZZ
@given(body=st.binary(max_size=5000))
def test_any_post_body_gets_an_ocsp_answer_or_a_4xx(anonymous_client, hierarchy, body):
    _well_formed_or_refused(post(anonymous_client, body))


@FUZZ
@given(data=st.data())
def test_a_real_request_with_bytes_changed_gets_an_ocsp_answer_or_a_4xx(
    anonymous_client, certificate, data
):
    der = bytearray(ask(certificate, nonce=b"\x11" * 16))
    for _ in range(data.draw(st.integers(1, 4))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    _well_formed_or_refused(post(anonymous_client, bytes(der)))
    _well_formed_or_refused(get(anonymous_client, bytes(der)))


@FUZZ
@given(path=st.text(min_size=1, max_size=300))
def test_any_get_path_gets_an_ocsp_answer_or_a_4xx(anonymous_client, hierarchy, path):
    _well_formed_or_refused(anonymous_client.get(OCSP + quote(path, safe="/")))


# --- how long a signed answer is handed out ---------------------------------------------------


@pytest.mark.parametrize(
    ("hours", "reused_for"),
    [
        (8, timedelta(hours=4)),  # below 16 hours: renewed before half the validity
        (15, timedelta(hours=7, minutes=30)),
        (16, timedelta(hours=8)),  # from 16 hours: 8 hours before nextUpdate...
        (24, timedelta(hours=16)),
        (240, timedelta(days=4)),  # ...and at most four days after thisUpdate
    ],
)
def test_a_signed_answer_is_reused_only_as_long_as_the_br_allow(hours, reused_for, settings):
    """S/MIME BR 4.9.10 (3) and (4)."""
    settings.PKIPORTAL_OCSP_VALIDITY_HOURS = hours

    assert ocsp.validity() == timedelta(hours=hours) - timedelta(seconds=1)
    assert ocsp.reuse_limit(ocsp.validity()) == reused_for
