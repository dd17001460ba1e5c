"""Read and check a PKCS#10 certificate signing request from a browser, openssl or certreq."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from .errors import CsrError, gettext_noop
from .keys import (
    KeyAlgorithm,
    PublicKey,
    describe_public_key,
    key_algorithm_of,
    public_key_refusal,
)

MAX_CSR_BYTES = 64 * 1024
_UNSUPPORTED_KEY = gettext_noop("The request's public key uses an unsupported algorithm.")

_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 #]+)-----")
_CSR_LABELS = frozenset({b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"})
_CERTIFICATE_LABELS = frozenset({b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"})
_BASE64_ONLY = re.compile(rb"[A-Za-z0-9+/=\s]+")
# Errors cryptography raises for bytes it cannot make sense of (InvalidVersion is no
# ValueError: a fuzzed version field shows it).
_PARSE_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion)


@dataclass(frozen=True)
class ParsedCsr:
    """A CSR whose signature verified and whose key we are willing to certify.

    ``requested_subject`` and ``requested_emails`` are what the requester asked for:
    informative only, since issued names come from the account (DESIGN.md).
    """

    csr: x509.CertificateSigningRequest
    public_key: PublicKey
    requested_subject: str
    requested_emails: tuple[str, ...]

    @property
    def key_algorithm(self) -> KeyAlgorithm | None:
        return key_algorithm_of(self.public_key)

    @property
    def key_description(self) -> str:
        return describe_public_key(self.public_key)


def parse_csr(
    data: bytes | str, *, allowed_key_algorithms: frozenset[KeyAlgorithm] | None = None
) -> ParsedCsr:
    """Parse PEM (either label) or DER, check proof of possession and the key.

    Every failure is a CsrError whose message says what was wrong.
    """
    raw = data.encode("utf-8", errors="replace") if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_CSR_BYTES:
        raise CsrError(
            gettext_noop("The certificate request is larger than 64 KiB; that is not a CSR.")
        )
    # DER is taken as is: stripping "whitespace" could eat bytes of its signature.
    der = raw if raw[:1] == b"\x30" else _text_to_der(raw.strip())
    try:
        csr = x509.load_der_x509_csr(der)
    except _PARSE_ERRORS as exc:
        if _is_certificate(der):
            raise _certificate_not_request() from exc
        raise CsrError(
            gettext_noop("The data is not a readable certificate request (PKCS#10).")
        ) from exc

    try:
        public_key = csr.public_key()
    except _PARSE_ERRORS as exc:
        raise CsrError(_UNSUPPORTED_KEY) from exc
    refusal = public_key_refusal(public_key)
    if refusal is not None:
        raise CsrError(refusal.msgid, **refusal.params)
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise CsrError(_UNSUPPORTED_KEY)
    # The signature BIT STRING ends the DER; its first content octet counts unused bits.
    # cryptography reads past a non-zero count when those bits are zero, so a request
    # re-encoded with one would otherwise be taken: a signature is whole octets (DER).
    if der[len(der) - len(csr.signature) - 1] != 0:
        raise CsrError(
            gettext_noop(
                "The request's signature is not DER-encoded (its bit string claims unused "
                "bits); create a new request."
            )
        )
    try:
        digest = csr.signature_hash_algorithm
        signature_ok = csr.is_signature_valid
    except _PARSE_ERRORS as exc:
        raise CsrError(
            gettext_noop("The request is signed with an unsupported signature algorithm.")
        ) from exc
    if isinstance(digest, hashes.SHA1 | hashes.MD5):
        # cryptography never verifies these, which would otherwise read as a bad signature.
        raise CsrError(
            gettext_noop(
                "The request is signed with %(hash)s, which is no longer accepted; create it "
                "again with SHA-256 (openssl req -sha256, certreq with HashAlgorithm = sha256)."
            ),
            hash=digest.name.upper(),
        )
    if not signature_ok:
        raise CsrError(
            gettext_noop(
                "The request's signature does not verify, so it does not prove possession of "
                "the private key; create a new request."
            )
        )
    if allowed_key_algorithms is not None and key_algorithm_of(public_key) not in (
        allowed_key_algorithms
    ):
        allowed = ", ".join(sorted(a.label for a in allowed_key_algorithms))
        raise CsrError(
            gettext_noop("The request's key is %(key)s; this template allows %(allowed)s."),
            key=describe_public_key(public_key),
            allowed=allowed,
        )
    try:
        subject = csr.subject  # a new Name, parsed again, for every read
        requested_subject = subject.rfc4514_string()
        requested_emails = _requested_emails(csr, subject)
    except x509.DuplicateExtension as exc:
        raise CsrError(gettext_noop("The request repeats an extension.")) from exc
    except (*_PARSE_ERRORS, x509.UnsupportedGeneralNameType) as exc:
        raise CsrError(gettext_noop("The request's subject or extensions cannot be read.")) from exc
    return ParsedCsr(
        csr=csr,
        public_key=public_key,
        requested_subject=requested_subject,
        requested_emails=requested_emails,
    )


def _text_to_der(raw: bytes) -> bytes:
    """DER from PEM (every label gets its own answer) or a bare base64 body."""
    if b"-----BEGIN" in raw:
        block = _pem_block(raw)
        if block is None:
            raise CsrError(
                gettext_noop("The PEM data is incomplete: the BEGIN/END lines do not match.")
            )
        label, body = block
        if label in _CERTIFICATE_LABELS:
            raise _certificate_not_request()
        if b"PRIVATE KEY" in label:
            raise CsrError(
                gettext_noop(
                    "This is a private key, not a certificate request. Never upload a private "
                    "key; upload the CSR made from it."
                )
            )
        if label not in _CSR_LABELS:
            raise CsrError(
                gettext_noop("Expected a CERTIFICATE REQUEST, got a PEM block labelled %(label)s."),
                label=repr(label.decode("ascii")),
            )
        return _base64(body)
    if raw and _BASE64_ONLY.fullmatch(raw):
        return _base64(raw)  # PEM body pasted without its BEGIN/END lines
    raise CsrError(gettext_noop("The data is neither a PEM nor a DER certificate request."))


def _pem_block(raw: bytes) -> tuple[bytes, bytes] | None:
    """The label and body of the first PEM block: what
    ``-----BEGIN (label)-----(.*?)-----END (label)-----`` (DOTALL) finds, a BEGIN line at
    a time. That pattern tried the END line at every byte of the body, in Python's regex
    engine: half the cost of reading a CSR's PEM."""
    start = 0
    while (begin := _PEM_BEGIN.search(raw, start)) is not None:
        label = begin[1]  # runs up to the first "-": the only label that can match here
        end = raw.find(b"-----END " + label + b"-----", begin.end())
        if end >= 0:
            return label, raw[begin.end() : end]
        start = begin.start() + 1
    return None


def _base64(body: bytes) -> bytes:
    # PEM bodies may carry RFC 1421 headers (certreq does not, but old tools do). Without
    # any, the body decodes as it is: the decoder skips line ends as it skips blank lines.
    lines = (
        [line for line in body.splitlines() if line.strip() and b":" not in line]
        if b":" in body
        else [body]
    )
    try:
        return base64.b64decode(b"".join(lines), validate=False)
    except (binascii.Error, ValueError) as exc:
        raise CsrError(gettext_noop("The PEM body is not valid base64.")) from exc


def _is_certificate(der: bytes) -> bool:
    try:
        x509.load_der_x509_certificate(der)
    except _PARSE_ERRORS:
        return False
    return True


def _certificate_not_request() -> CsrError:
    return CsrError(
        gettext_noop(
            "This is a certificate, not a certificate request (CSR). Upload the request "
            "your mail client or openssl created."
        )
    )


def _requested_emails(csr: x509.CertificateSigningRequest, subject: x509.Name) -> tuple[str, ...]:
    """emailAddress attributes of the ``subject`` (the CSR's), then rfc822Names of a
    requested SAN."""
    found: dict[str, None] = {}
    for attribute in subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        if isinstance(attribute.value, str):
            found.setdefault(attribute.value, None)
    for extension in csr.extensions:  # most requests have none: no ExtensionNotFound
        if extension.oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            assert isinstance(extension.value, x509.SubjectAlternativeName)
            for address in extension.value.get_values_for_type(x509.RFC822Name):
                found.setdefault(address, None)
    return tuple(found)
