"""parse_csr: what it accepts, and a clear CsrError for everything it does not."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from enrollment.x509.csr import MAX_CSR_BYTES, _text_to_der, parse_csr
from enrollment.x509.errors import CsrError
from enrollment.x509.keys import KeyAlgorithm
from tests.pki import CertifiedKey, KeyPool, MakeEndEntity

CsrKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def make_csr(
    key: CsrKey,
    *,
    common_name: str = "Alice Example",
    email: str | None = None,
    san_emails: tuple[str, ...] = (),
) -> x509.CertificateSigningRequest:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if email is not None:
        attributes.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    if san_emails:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(e) for e in san_emails]), critical=False
        )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


def der(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def ec_csr(key_pool: KeyPool) -> x509.CertificateSigningRequest:
    key = key_pool.get(KeyAlgorithm.EC_P256)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return make_csr(
        key, email="alice@example.com", san_emails=("alice@example.com", "al@example.com")
    )


# --- accepted ----------------------------------------------------------------------------


def test_it_accepts_a_pem_request(ec_csr: x509.CertificateSigningRequest) -> None:
    parsed = parse_csr(pem(ec_csr))
    assert parsed.csr == ec_csr
    assert parsed.public_key == ec_csr.public_key()
    assert parsed.key_algorithm is KeyAlgorithm.EC_P256
    assert parsed.key_description == "EC P-256"


def test_it_accepts_a_der_request(ec_csr: x509.CertificateSigningRequest) -> None:
    assert parse_csr(der(ec_csr)).csr == ec_csr


def test_it_accepts_a_pem_string_with_surrounding_whitespace(
    ec_csr: x509.CertificateSigningRequest,
) -> None:
    text = "\n\n   " + pem(ec_csr).decode().replace("\n", "\r\n") + "  \n\t"
    assert parse_csr(text).csr == ec_csr


def test_it_accepts_the_new_certificate_request_label_windows_certreq_writes(
    ec_csr: x509.CertificateSigningRequest,
) -> None:
    certreq = pem(ec_csr).replace(b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST")
    assert certreq.startswith(b"-----BEGIN NEW CERTIFICATE REQUEST-----")
    assert parse_csr(certreq).csr == ec_csr


def test_it_accepts_a_pem_body_pasted_without_its_header_lines(
    ec_csr: x509.CertificateSigningRequest,
) -> None:
    body = base64.encodebytes(der(ec_csr))
    assert parse_csr(body).csr == ec_csr


def test_it_reports_the_requested_subject_and_addresses(
    ec_csr: x509.CertificateSigningRequest,
) -> None:
    parsed = parse_csr(pem(ec_csr))
    assert parsed.requested_subject == "1.2.840.113549.1.9.1=alice@example.com,CN=Alice Example"
    assert parsed.requested_emails == ("alice@example.com", "al@example.com")


def test_a_request_without_addresses_has_none(key_pool: KeyPool) -> None:
    key = key_pool.get(KeyAlgorithm.RSA_2048)
    assert isinstance(key, rsa.RSAPrivateKey)
    parsed = parse_csr(pem(make_csr(key)))
    assert parsed.requested_emails == ()
    assert parsed.key_algorithm is KeyAlgorithm.RSA_2048


def test_it_accepts_a_p521_request_when_no_template_narrows_the_keys() -> None:
    parsed = parse_csr(pem(make_csr(ec.generate_private_key(ec.SECP521R1()))))
    assert parsed.key_description == "EC P-521"
    assert parsed.key_algorithm is None


# --- rejected ----------------------------------------------------------------------------


def test_it_rejects_garbage_bytes() -> None:
    with pytest.raises(CsrError, match="neither a PEM nor a DER"):
        parse_csr(b"\x00\x01hello\xff")


def test_it_rejects_der_shaped_garbage() -> None:
    with pytest.raises(CsrError, match="not a readable certificate request"):
        parse_csr(b"\x30\x03\x02\x01\x00")


def test_it_rejects_a_request_with_an_unknown_version(
    ec_csr: x509.CertificateSigningRequest,
) -> None:
    data = der(ec_csr)
    version_at = data.index(b"\x02\x01\x00")  # INTEGER 0: PKCS#10 v1, the first TBS field
    tampered = data[:version_at] + b"\x02\x01\x05" + data[version_at + 3 :]
    with pytest.raises(CsrError, match="not a readable certificate request"):
        parse_csr(tampered)


@pytest.mark.parametrize(
    "san_der",
    [
        pytest.param(bytes.fromhex("3004a3020500"), id="x400Address"),
        pytest.param(b"\x01\x02\x03", id="not-a-sequence"),
    ],
)
def test_it_rejects_a_signed_request_whose_san_cannot_be_read(
    key_pool: KeyPool, san_der: bytes
) -> None:
    # cryptography cannot build these SANs, so the extension value is given as raw DER.
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .add_extension(
            x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, san_der), False
        )
        .sign(key_pool.get(KeyAlgorithm.EC_P256), hashes.SHA256())
    )
    with pytest.raises(CsrError, match="extensions cannot be read"):
        parse_csr(der(csr))


def test_it_rejects_an_empty_upload() -> None:
    with pytest.raises(CsrError):
        parse_csr(b"   ")


def test_it_rejects_a_blob_larger_than_64_kib(ec_csr: x509.CertificateSigningRequest) -> None:
    blob = pem(ec_csr) + b" " * (1024 * 1024)
    assert len(blob) > MAX_CSR_BYTES
    with pytest.raises(CsrError, match="larger than 64 KiB"):
        parse_csr(blob)


def test_it_says_a_pem_certificate_is_not_a_request(make_end_entity: MakeEndEntity) -> None:
    certificate = make_end_entity().certificate.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CsrError, match="This is a certificate, not a certificate request"):
        parse_csr(certificate)


def test_it_says_a_der_certificate_is_not_a_request(make_end_entity: MakeEndEntity) -> None:
    certificate = make_end_entity().certificate.public_bytes(serialization.Encoding.DER)
    with pytest.raises(CsrError, match="This is a certificate, not a certificate request"):
        parse_csr(certificate)


def test_it_warns_when_someone_uploads_a_private_key(key_pool: KeyPool) -> None:
    key_pem = key_pool.get(KeyAlgorithm.EC_P256).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(CsrError, match="private key, not a certificate request"):
        parse_csr(key_pem)


def test_it_names_an_unexpected_pem_label() -> None:
    with pytest.raises(CsrError, match="'PKCS7'"):
        parse_csr(b"-----BEGIN PKCS7-----\nMAA=\n-----END PKCS7-----\n")


def test_it_rejects_a_truncated_pem(ec_csr: x509.CertificateSigningRequest) -> None:
    with pytest.raises(CsrError, match="BEGIN/END lines do not match"):
        parse_csr(pem(ec_csr)[:-40])


@pytest.mark.parametrize("algorithm", [KeyAlgorithm.RSA_2048, KeyAlgorithm.EC_P256])
def test_it_rejects_a_request_whose_signature_does_not_verify(
    key_pool: KeyPool, algorithm: KeyAlgorithm
) -> None:
    key = key_pool.get(algorithm)
    data = bytearray(der(make_csr(key)))
    data[-1] ^= 0x01  # the last byte belongs to the signature
    with pytest.raises(CsrError, match="does not prove possession"):
        parse_csr(bytes(data))


def test_it_rejects_rsa_1024_naming_the_size() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(CsrError, match="at least 2048 bits; this key has 1024 bits"):
        parse_csr(pem(make_csr(key)))


def test_it_rejects_rsa_exponent_3() -> None:
    key = rsa.generate_private_key(public_exponent=3, key_size=2048)
    with pytest.raises(CsrError, match="exponent 65537; this key uses 3"):
        parse_csr(pem(make_csr(key)))


@pytest.mark.parametrize(
    ("curve", "name"), [(ec.SECP256K1(), "secp256k1"), (ec.SECP224R1(), "secp224r1")]
)
def test_it_rejects_curves_outside_nist_p256_p384_p521(curve: ec.EllipticCurve, name: str) -> None:
    with pytest.raises(CsrError, match=f"this key uses {name}"):
        parse_csr(pem(make_csr(ec.generate_private_key(curve))))


def test_it_rejects_ed25519() -> None:
    with pytest.raises(CsrError, match="Ed25519 keys are not supported"):
        parse_csr(pem(make_csr(ed25519.Ed25519PrivateKey.generate())))


def test_it_rejects_a_key_the_template_does_not_allow(
    ec_csr: x509.CertificateSigningRequest,
) -> None:
    allowed = frozenset({KeyAlgorithm.RSA_2048, KeyAlgorithm.RSA_3072})
    with pytest.raises(CsrError, match="key is EC P-256; this template allows RSA 2048, RSA 3072"):
        parse_csr(pem(ec_csr), allowed_key_algorithms=allowed)


def test_a_template_key_list_excludes_p521() -> None:
    csr = make_csr(ec.generate_private_key(ec.SECP521R1()))
    with pytest.raises(CsrError, match="EC P-521"):
        parse_csr(pem(csr), allowed_key_algorithms=frozenset(KeyAlgorithm))


def test_it_accepts_a_key_the_template_allows(ec_csr: x509.CertificateSigningRequest) -> None:
    parsed = parse_csr(pem(ec_csr), allowed_key_algorithms=frozenset({KeyAlgorithm.EC_P256}))
    assert parsed.key_algorithm is KeyAlgorithm.EC_P256


def test_every_message_is_plain_text_without_internals(make_end_entity: MakeEndEntity) -> None:
    certified: CertifiedKey = make_end_entity()
    with pytest.raises(CsrError) as caught:
        parse_csr(certified.certificate.public_bytes(serialization.Encoding.DER))
    assert "Traceback" not in caught.value.message
    assert "asn1" not in caught.value.message.lower()
    assert str(caught.value) == caught.value.message


# --- fuzzing -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=4096))
def test_arbitrary_bytes_raise_only_csr_errors(data: bytes) -> None:
    with pytest.raises(CsrError) as caught:
        parse_csr(data)
    assert caught.value.message


def test_a_signature_bit_string_claiming_unused_bits_is_refused(key_pool: KeyPool) -> None:
    """Found by the flip test below: cryptography accepts 1-7 unused bits that are zero."""
    key = key_pool.get(KeyAlgorithm.EC_P256)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    # ECDSA signs afresh each time: take a signature whose last bit is clear, so that the
    # claim of one unused bit is one cryptography itself would accept.
    csr = next(c for c in (make_csr(key) for _ in range(64)) if not c.signature[-1] & 1)
    data = bytearray(der(csr))
    unused_bits_octet = len(data) - len(csr.signature) - 1
    assert data[unused_bits_octet] == 0
    data[unused_bits_octet] = 1
    assert x509.load_der_x509_csr(bytes(data)).is_signature_valid  # the library's view

    with pytest.raises(CsrError, match="not DER-encoded"):
        parse_csr(bytes(data))


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_corrupted_requests_raise_only_csr_errors(
    ec_csr: x509.CertificateSigningRequest, position: int, flip: int
) -> None:
    data = bytearray(der(ec_csr))
    data[position % len(data)] ^= flip
    # Every byte is signed, is the signature, or frames them: no flip survives.
    with pytest.raises(CsrError) as caught:
        parse_csr(bytes(data))
    assert caught.value.message


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=2000))
def test_arbitrary_text_raises_only_csr_errors(text: str) -> None:
    with pytest.raises(CsrError):
        parse_csr(
            "-----BEGIN CERTIFICATE REQUEST-----\n" + text + "\n-----END CERTIFICATE REQUEST-----"
        )


@pytest.mark.parametrize("digest", ["sha1", "md5"])
def test_a_request_signed_with_a_broken_hash_says_so(openssl, digest: str) -> None:
    """openssl req -sha1 makes a request whose signature is fine but SHA-1: say that, not
    that the signature does not verify (cryptography declines to verify SHA-1 at all)."""
    out = openssl.path(f"{digest}.csr")
    made = openssl.run(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", openssl.path("k.pem"),
        f"-{digest}", "-subj", "/CN=Old Tool", "-out", out, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"this openssl refuses to sign with {digest}")

    with pytest.raises(CsrError, match=rf"signed with {digest.upper()}, which is no longer"):
        parse_csr(out.read_bytes())


# --- PEM text to DER: the same answers as the single pattern it replaced --------------------

_ONE_PATTERN = re.compile(rb"-----BEGIN ([A-Z0-9 #]+)-----(.*?)-----END \1-----", re.DOTALL)


def _text_to_der_by_one_pattern(raw: bytes) -> bytes | str:
    """What _text_to_der answered before (DER, or the refusal's message): the block found
    by one pattern, its body decoded line by line."""
    if b"-----BEGIN" not in raw:
        return "not pem"
    match = _ONE_PATTERN.search(raw)
    if match is None:
        return "The PEM data is incomplete: the BEGIN/END lines do not match."
    label = match[1]
    if label in (b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"):
        return "certificate"
    if b"PRIVATE KEY" in label:
        return "private key"
    if label not in (b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"):
        return f"label {label.decode('ascii')}"
    lines = [line for line in match[2].splitlines() if line.strip() and b":" not in line]
    try:
        return base64.b64decode(b"".join(lines), validate=False)
    except ValueError:
        return "The PEM body is not valid base64."


def _text_to_der_now(raw: bytes) -> bytes | str:
    if b"-----BEGIN" not in raw:
        return "not pem"
    try:
        return _text_to_der(raw)
    except CsrError as exc:
        message = exc.message
    if message.startswith("This is a certificate"):
        return "certificate"
    if message.startswith("This is a private key"):
        return "private key"
    if message.startswith("Expected a CERTIFICATE REQUEST"):
        return "label " + message.split("'")[1]
    return message


_PEM_PIECES = st.sampled_from(
    [
        b"-----BEGIN CERTIFICATE REQUEST-----",
        b"-----END CERTIFICATE REQUEST-----",
        b"-----BEGIN NEW CERTIFICATE REQUEST-----",
        b"-----END NEW CERTIFICATE REQUEST-----",
        b"-----BEGIN CERTIFICATE-----",
        b"-----END CERTIFICATE-----",
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----",
        b"-----BEGIN X-----",
        b"-----END X-----",
        b"-----BEGIN ",
        b"-----END ",
        b"-----",
        b"--",
        b"CERTIFICATE REQUEST",
        b"BEGIN CERTIFICATE REQUEST-----",
        b"Proc-Type: 4,ENCRYPTED",
        b"\n",
        b"\r\n",
        b" ",
        b"MIIBxz",
        b"CCAW0",
        b"AA==",
        b"=",
        b"\x00\xff",
    ]
)


@settings(max_examples=400)
@given(st.lists(_PEM_PIECES | st.binary(max_size=6), max_size=14).map(b"".join))
# A BEGIN line without its END whose dashes start the next BEGIN line.
@example(b"-----BEGIN X-----BEGIN CERTIFICATE REQUEST-----AA==-----END CERTIFICATE REQUEST-----")
def test_pem_text_gives_what_the_one_pattern_gave(raw: bytes) -> None:
    assert _text_to_der_now(raw) == _text_to_der_by_one_pattern(raw)


def test_a_pem_body_with_rfc_1421_headers_decodes_without_them(
    ec_csr: x509.CertificateSigningRequest,
) -> None:
    pem = ec_csr.public_bytes(serialization.Encoding.PEM)
    head, _, rest = pem.partition(b"\n")
    with_headers = head + b"\nProc-Type: 4,CRL\nContent-Domain: RFC822\n\n" + rest
    assert _text_to_der(with_headers) == ec_csr.public_bytes(serialization.Encoding.DER)
