"""OCSP requests read and responses built by enrollment.x509.ocsp (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp as x509_ocsp

from enrollment.x509 import ocsp
from enrollment.x509.errors import PolicyError
from tests.pki import CA, MakeEndEntity, OpenSSL

NOW = datetime(2026, 3, 1, 12, 0, 30, 123456, tzinfo=UTC)
DAY = timedelta(hours=24) - timedelta(seconds=1)
MALFORMED = x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST
HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def request_der(
    certificate: x509.Certificate,
    issuer: x509.Certificate,
    algorithm: hashes.HashAlgorithm | None = None,
    *extensions: tuple[x509.ExtensionType, bool],
) -> bytes:
    builder = x509_ocsp.OCSPRequestBuilder().add_certificate(
        certificate, issuer, algorithm or hashes.SHA1()
    )
    for value, critical in extensions:
        builder = builder.add_extension(value, critical)
    return builder.build().public_bytes(Encoding.DER)


def respond(issuing_ca: CA, query: ocsp.OcspQuery, status: ocsp.CertificateStatus) -> bytes:
    return ocsp.build_response(
        issuer_certificate=issuing_ca.certificate,
        issuer_key=issuing_ca.key,
        cert_id=query.cert_id,
        status=status,
        this_update=NOW,
        next_update=NOW + DAY,
        nonce=query.nonce,
    )


GOOD = ocsp.CertificateStatus(ocsp.Status.GOOD)
# A valid request (SHA-1 CertID and a nonce) for the mutation test.
SAMPLE_REQUEST = (
    x509_ocsp.OCSPRequestBuilder()
    .add_certificate_by_hash(b"\x01" * 20, b"\x02" * 20, 2**158 + 12345, hashes.SHA1())
    .add_extension(x509.OCSPNonce(b"\x03" * 32), False)
    .build()
    .public_bytes(Encoding.DER)
)


# --- reading requests --------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ocsp.CERT_ID_HASHES)
def test_a_request_names_the_issuing_ca_in_any_hash_we_answer_in(
    algorithm: str, issuing_ca: CA, make_end_entity: MakeEndEntity
) -> None:
    leaf = make_end_entity().certificate
    query = ocsp.parse_request(request_der(leaf, issuing_ca.certificate, HASHES[algorithm]()))

    assert query.cert_id.algorithm == algorithm
    assert query.cert_id.serial_number == leaf.serial_number
    assert query.cert_id.issuer in ocsp.issuer_cert_ids(issuing_ca.certificate)
    assert query.nonce is None


def test_the_root_and_the_issuing_ca_are_told_apart(
    root_ca: CA, issuing_ca: CA, make_end_entity: MakeEndEntity
) -> None:
    """The issuing CA's own certificate is asked about under the root's hashes."""
    leaf_query = ocsp.parse_request(
        request_der(make_end_entity().certificate, issuing_ca.certificate)
    )
    ca_query = ocsp.parse_request(request_der(issuing_ca.certificate, root_ca.certificate))

    assert ca_query.cert_id.issuer in ocsp.issuer_cert_ids(root_ca.certificate)
    assert ca_query.cert_id.issuer not in ocsp.issuer_cert_ids(issuing_ca.certificate)
    assert leaf_query.cert_id.issuer not in ocsp.issuer_cert_ids(root_ca.certificate)


@pytest.mark.parametrize("length", [1, 16, 32, 128])
def test_a_nonce_of_1_to_128_octets_is_read(
    length: int, issuing_ca: CA, make_end_entity: MakeEndEntity
) -> None:
    nonce = bytes(range(length))
    der = request_der(
        make_end_entity().certificate, issuing_ca.certificate, None, (x509.OCSPNonce(nonce), False)
    )
    assert ocsp.parse_request(der).nonce == nonce


@pytest.mark.parametrize("length", [0, 129, 1000])
def test_a_nonce_of_another_length_is_malformed(
    length: int, issuing_ca: CA, make_end_entity: MakeEndEntity
) -> None:
    """RFC 9654 2.1: rejected with malformedRequest."""
    der = request_der(
        make_end_entity().certificate,
        issuing_ca.certificate,
        None,
        (x509.OCSPNonce(b"n" * length), False),
    )
    with pytest.raises(ocsp.OcspRequestError, match=f"{length} octets") as refused:
        ocsp.parse_request(der)
    assert refused.value.status is MALFORMED


def test_an_unknown_critical_extension_is_malformed_and_a_non_critical_one_ignored(
    issuing_ca: CA, make_end_entity: MakeEndEntity
) -> None:
    """RFC 6960 4.4: unrecognised extensions are ignored unless they are critical."""
    leaf = make_end_entity().certificate
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")

    assert ocsp.parse_request(request_der(leaf, issuing_ca.certificate, None, (unknown, False)))
    with pytest.raises(ocsp.OcspRequestError, match="1.3.6.1.4.1.55555.1") as refused:
        ocsp.parse_request(request_der(leaf, issuing_ca.certificate, None, (unknown, True)))
    assert refused.value.status is MALFORMED


def test_a_request_for_two_certificates_is_malformed(
    issuing_ca: CA, make_end_entity: MakeEndEntity, openssl: OpenSSL
) -> None:
    """RFC 5019 2.1.1: one certificate per request; cryptography reads no more."""
    openssl.write_pem("issuing.pem", issuing_ca.certificate)
    openssl.run(
        "ocsp", "-issuer", "issuing.pem", "-serial", "1", "-serial", "2",
        "-no_nonce", "-reqout", "two.der",
    )  # fmt: skip
    with pytest.raises(ocsp.OcspRequestError, match="more than one certificate") as refused:
        ocsp.parse_request(openssl.path("two.der").read_bytes())
    assert refused.value.status is MALFORMED


def test_a_negative_serial_is_malformed() -> None:
    """Found by the responder's fuzz test: no response can echo it (RFC 5280 4.1.2.2).

    cryptography builds no such request, so the serial's first octet is set by hand.
    """
    positive = int.from_bytes(b"\x41" * 20, "big")
    der = (
        x509_ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(b"\x01" * 20, b"\x02" * 20, positive, hashes.SHA1())
        .build()
        .public_bytes(Encoding.DER)
    )
    integer = b"\x02\x14" + b"\x41" * 20
    assert der.count(integer) == 1
    negative = der.replace(integer, b"\x02\x14\xc1" + b"\x41" * 19)
    with pytest.raises(ocsp.OcspRequestError, match="negative") as refused:
        ocsp.parse_request(negative)
    assert refused.value.status is MALFORMED


def test_serial_zero_is_read_and_answered(issuing_ca: CA) -> None:
    """Never issued here (serials are 159 random bits), but a valid question: unknown."""
    ids = {entry[0]: entry for entry in ocsp.issuer_cert_ids(issuing_ca.certificate)}
    _, name_hash, key_hash = ids["sha1"]
    der = (
        x509_ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(name_hash, key_hash, 0, hashes.SHA1())
        .build()
        .public_bytes(Encoding.DER)
    )
    query = ocsp.parse_request(der)
    response = x509_ocsp.load_der_ocsp_response(
        respond(issuing_ca, query, ocsp.CertificateStatus(ocsp.Status.UNKNOWN))
    )
    assert response.serial_number == 0


@pytest.mark.parametrize(
    "der", [b"", b"\x30\x00", b"GET / HTTP/1.1\r\n", b"\x30\x82\xff\xff" + b"\x00" * 8]
)
def test_what_is_not_an_ocsp_request_is_malformed(der: bytes) -> None:
    with pytest.raises(ocsp.OcspRequestError, match="not a DER-encoded OCSPRequest") as refused:
        ocsp.parse_request(der)
    assert refused.value.status is MALFORMED


def test_trailing_bytes_after_a_request_are_malformed(
    issuing_ca: CA, make_end_entity: MakeEndEntity
) -> None:
    der = request_der(make_end_entity().certificate, issuing_ca.certificate)
    with pytest.raises(ocsp.OcspRequestError):
        ocsp.parse_request(der + b"\x00")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_are_read_or_refused_as_malformed(data: bytes) -> None:
    assert _read_or_refused(data) in ("read", MALFORMED)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_real_request_with_any_byte_changed_is_read_or_refused(data: st.DataObject) -> None:
    """Mutations of a valid request reach deeper than random bytes do."""
    base = bytearray(SAMPLE_REQUEST)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(base) - 1))
        base[position] = data.draw(st.integers(0, 255))
    assert _read_or_refused(bytes(base)) in ("read", MALFORMED)


def _read_or_refused(data: bytes) -> object:
    """ "read", or the status a refusal carries; any other exception escapes the test."""
    try:
        query = ocsp.parse_request(data)
    except ocsp.OcspRequestError as refused:
        return refused.status
    assert isinstance(query.cert_id.serial_number, int)
    return "read"


# --- signing responses -------------------------------------------------------------------


def test_a_good_response_is_signed_by_the_issuing_ca_and_echoes_the_certid(
    issuing_ca: CA, make_end_entity: MakeEndEntity
) -> None:
    leaf = make_end_entity().certificate
    query = ocsp.parse_request(request_der(leaf, issuing_ca.certificate, hashes.SHA256()))
    response = x509_ocsp.load_der_ocsp_response(respond(issuing_ca, query, GOOD))

    assert response.response_status is x509_ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status is x509_ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == leaf.serial_number
    assert isinstance(response.hash_algorithm, hashes.SHA256)
    assert response.issuer_name_hash == query.cert_id.issuer_name_hash
    assert response.issuer_key_hash == query.cert_id.issuer_key_hash
    # Responder ID by key hash, no certificates: the client holds the issuer (RFC 5019 2.2).
    assert response.responder_key_hash == (
        x509.SubjectKeyIdentifier.from_public_key(issuing_ca.key.public_key()).digest
    )
    assert response.responder_name is None
    assert response.certificates == []
    # Whole seconds; 24 hours counting both ends (S/MIME BR 4.9.10).
    assert response.this_update_utc == NOW.replace(microsecond=0)
    assert response.next_update_utc == NOW.replace(microsecond=0) + DAY
    assert list(response.extensions) == []
    public_key = issuing_ca.key.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))


def test_a_revoked_response_carries_the_time_and_reason(
    issuing_ca: CA, make_end_entity: MakeEndEntity
) -> None:
    query = ocsp.parse_request(request_der(make_end_entity().certificate, issuing_ca.certificate))
    revoked = ocsp.CertificateStatus(
        ocsp.Status.REVOKED, NOW - timedelta(hours=1), x509.ReasonFlags.key_compromise
    )
    response = x509_ocsp.load_der_ocsp_response(respond(issuing_ca, query, revoked))

    assert response.certificate_status is x509_ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_time_utc == (NOW - timedelta(hours=1)).replace(microsecond=0)
    assert response.revocation_reason is x509.ReasonFlags.key_compromise
    # S/MIME BR 7.3.2: no reasonCode among the single extensions.
    assert list(response.single_extensions) == []


def test_a_revocation_without_a_reason_sends_none(
    issuing_ca: CA, make_end_entity: MakeEndEntity
) -> None:
    query = ocsp.parse_request(request_der(make_end_entity().certificate, issuing_ca.certificate))
    revoked = ocsp.CertificateStatus(ocsp.Status.REVOKED, NOW)
    response = x509_ocsp.load_der_ocsp_response(respond(issuing_ca, query, revoked))

    assert response.certificate_status is x509_ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason is None


def test_an_unknown_serial_is_answered_unknown_under_the_askers_certid(issuing_ca: CA) -> None:
    ids = {entry[0]: entry for entry in ocsp.issuer_cert_ids(issuing_ca.certificate)}
    _, name_hash, key_hash = ids["sha1"]
    query = ocsp.OcspQuery(ocsp.CertId("sha1", name_hash, key_hash, 2**158 + 7))
    response = x509_ocsp.load_der_ocsp_response(
        respond(issuing_ca, query, ocsp.CertificateStatus(ocsp.Status.UNKNOWN))
    )
    assert response.certificate_status is x509_ocsp.OCSPCertStatus.UNKNOWN
    assert response.serial_number == 2**158 + 7


def test_the_nonce_is_echoed(issuing_ca: CA, make_end_entity: MakeEndEntity) -> None:
    nonce = b"\x8f" * 32
    der = request_der(
        make_end_entity().certificate, issuing_ca.certificate, None, (x509.OCSPNonce(nonce), False)
    )
    response = x509_ocsp.load_der_ocsp_response(respond(issuing_ca, ocsp.parse_request(der), GOOD))
    echoed = response.extensions.get_extension_for_class(x509.OCSPNonce)
    assert echoed.value.nonce == nonce
    assert not echoed.critical


def test_an_rsa_ca_signs_with_sha256(rsa_issuing_ca: CA, make_end_entity: MakeEndEntity) -> None:
    """S/MIME BR 7.1.3.2.1: the BasicOCSPResponse's signatureAlgorithm."""
    leaf = make_end_entity(issuer=rsa_issuing_ca).certificate
    query = ocsp.parse_request(request_der(leaf, rsa_issuing_ca.certificate))
    response = x509_ocsp.load_der_ocsp_response(respond(rsa_issuing_ca, query, GOOD))
    assert response.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSA_WITH_SHA256


def test_a_ca_without_digital_signature_may_not_sign_responses(root_ca: CA, issuing_ca: CA) -> None:
    """S/MIME BR 7.1.2.2 (e): the test root, like CAs made before the responder, lacks it."""
    assert not ocsp.may_sign_responses(root_ca.certificate)
    assert ocsp.may_sign_responses(issuing_ca.certificate)
    query = ocsp.parse_request(request_der(issuing_ca.certificate, root_ca.certificate))
    with pytest.raises(PolicyError, match="digitalSignature"):
        respond(root_ca, query, GOOD)


def test_a_key_that_is_not_the_cas_signs_nothing(
    issuing_ca: CA, make_end_entity: MakeEndEntity, ec_p256_key: ec.EllipticCurvePrivateKey
) -> None:
    query = ocsp.parse_request(request_der(make_end_entity().certificate, issuing_ca.certificate))
    with pytest.raises(PolicyError, match="does not belong"):
        ocsp.build_response(
            issuer_certificate=issuing_ca.certificate,
            issuer_key=ec_p256_key,
            cert_id=query.cert_id,
            status=GOOD,
            this_update=NOW,
            next_update=NOW + DAY,
        )


@pytest.mark.parametrize(
    ("span", "allowed"),
    [
        (timedelta(hours=8) - timedelta(seconds=1), True),  # 8 h counting both ends
        (timedelta(hours=8) - timedelta(seconds=2), False),
        (timedelta(days=10) - timedelta(seconds=1), True),
        (timedelta(days=10), False),
    ],
)
def test_a_response_is_valid_for_8_hours_to_10_days(
    span: timedelta, allowed: bool, issuing_ca: CA, make_end_entity: MakeEndEntity
) -> None:
    """S/MIME BR 4.9.10, whose validity interval counts thisUpdate and nextUpdate both."""
    query = ocsp.parse_request(request_der(make_end_entity().certificate, issuing_ca.certificate))

    def build() -> bytes:
        return ocsp.build_response(
            issuer_certificate=issuing_ca.certificate,
            issuer_key=issuing_ca.key,
            cert_id=query.cert_id,
            status=GOOD,
            this_update=NOW.replace(microsecond=0),
            next_update=NOW.replace(microsecond=0) + span,
        )

    if allowed:
        assert build()
    else:
        with pytest.raises(PolicyError, match="8 hours to 10 days"):
            build()


@pytest.mark.parametrize(
    "status",
    [
        lambda: ocsp.CertificateStatus(ocsp.Status.GOOD, NOW),
        lambda: ocsp.CertificateStatus(ocsp.Status.REVOKED),
        lambda: ocsp.CertificateStatus(ocsp.Status.GOOD, None, x509.ReasonFlags.superseded),
        lambda: ocsp.CertificateStatus(ocsp.Status.REVOKED, NOW, x509.ReasonFlags.unspecified),
    ],
    ids=["good-with-time", "revoked-without-time", "good-with-reason", "unspecified"],
)
def test_inconsistent_statuses_are_refused(status: object) -> None:
    with pytest.raises(PolicyError):
        status()  # type: ignore[operator]


@pytest.mark.parametrize(
    "status",
    [
        x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
        x509_ocsp.OCSPResponseStatus.UNAUTHORIZED,
        x509_ocsp.OCSPResponseStatus.TRY_LATER,
        x509_ocsp.OCSPResponseStatus.INTERNAL_ERROR,
    ],
)
def test_unsuccessful_responses_carry_only_their_status(
    status: x509_ocsp.OCSPResponseStatus,
) -> None:
    assert x509_ocsp.load_der_ocsp_response(ocsp.unsuccessful(status)).response_status is status
