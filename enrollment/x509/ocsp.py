"""OCSP (RFC 6960) in RFC 5019's lightweight profile: read a request, sign a response.

Over cryptography's ``x509.ocsp``; no ASN.1 is written here. A request asks about one
certificate (RFC 5019 2.1.1; cryptography reads no more), names it by a CertID in SHA-1,
SHA-224, SHA-256, SHA-384 or SHA-512, and may carry a nonce (RFC 9654). The issuing CA
signs its own responses (RFC 6960 4.2.2.2), identified by its key hash.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from .errors import PolicyError, X509Error
from .keys import PrivateKey, signature_hash_for

# RFC 9654 2.1 (which lifted RFC 8954's 32): a nonce has 1 to 128 octets, and a responder
# that supports the extension rejects any other length with malformedRequest.
MAX_NONCE_OCTETS = 128
# S/MIME BR 4.9.10: a subscriber certificate's response is valid for at least eight hours
# and at most ten days, counting thisUpdate and nextUpdate both (an inclusive interval).
MIN_VALIDITY = timedelta(hours=8)
MAX_VALIDITY = timedelta(days=10)

# The CertID hashes cryptography builds; a client's SHA-1 is still the common one.
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
CERT_ID_HASHES: tuple[str, ...] = tuple(_HASHES)


class OcspRequestError(X509Error):
    """The request cannot be answered; ``status`` is the OCSPResponseStatus to send."""

    def __init__(self, message: str, status: ocsp.OCSPResponseStatus) -> None:
        super().__init__(message)
        self.status = status


def _malformed(message: str) -> OcspRequestError:
    return OcspRequestError(message, ocsp.OCSPResponseStatus.MALFORMED_REQUEST)


@dataclass(frozen=True, slots=True)
class CertId:
    """RFC 6960 4.1.1: which certificate a request asks about, as the client hashed it.

    ``algorithm`` is a name from CERT_ID_HASHES, or "" for a hash we do not build.
    """

    algorithm: str
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial_number: int

    @property
    def issuer(self) -> tuple[str, bytes, bytes]:
        """What names the issuing CA: matched against issuer_cert_ids()."""
        return (self.algorithm, self.issuer_name_hash, self.issuer_key_hash)


@dataclass(frozen=True, slots=True)
class OcspQuery:
    """A parsed request: the one certificate it asks about and its nonce, if any."""

    cert_id: CertId
    nonce: bytes | None = None


def parse_request(der: bytes) -> OcspQuery:
    """Read a DER OCSPRequest; OcspRequestError (malformedRequest) if it cannot be answered.

    Refused: anything that is not one DER OCSPRequest, more than one certificate in it, a
    negative serial, a nonce outside 1..128 octets (RFC 9654 2.1), and a critical extension
    other than the nonce (RFC 6960 4.4: unrecognised extensions are ignored unless critical).
    A request signature is neither required nor checked: the answer is public either way.
    """
    try:
        request = ocsp.load_der_ocsp_request(der)
    except NotImplementedError as exc:
        raise _malformed("The request asks about more than one certificate.") from exc
    except ValueError as exc:
        raise _malformed("The request is not a DER-encoded OCSPRequest.") from exc
    try:
        extensions = list(request.extensions)
    except ValueError as exc:
        raise _malformed("The request's extensions cannot be read.") from exc
    nonce: bytes | None = None
    for extension in extensions:
        if isinstance(extension.value, x509.OCSPNonce):
            nonce = extension.value.nonce
            if not 1 <= len(nonce) <= MAX_NONCE_OCTETS:
                raise _malformed(
                    f"The nonce has {len(nonce)} octets; RFC 9654 allows 1 to {MAX_NONCE_OCTETS}."
                )
        elif extension.critical:
            raise _malformed(
                f"The request carries a critical extension {extension.oid.dotted_string} "
                "this responder does not understand."
            )
    if request.serial_number < 0:
        # RFC 5280 4.1.2.2: serials are positive. Nor can a response echo a negative one.
        raise _malformed("The request's serial number is negative.")
    try:
        algorithm = request.hash_algorithm.name
    except UnsupportedAlgorithm:
        algorithm = ""
    if algorithm not in _HASHES:
        algorithm = ""
    cert_id = CertId(
        algorithm=algorithm,
        issuer_name_hash=request.issuer_name_hash,
        issuer_key_hash=request.issuer_key_hash,
        serial_number=request.serial_number,
    )
    return OcspQuery(cert_id=cert_id, nonce=nonce)


def issuer_cert_ids(certificate: x509.Certificate) -> frozenset[tuple[str, bytes, bytes]]:
    """Every (hash name, issuerNameHash, issuerKeyHash) a client may name this CA by.

    The name hash covers the CA's subject DER; the key hash, the subjectPublicKey bits of
    its certificate, which cryptography's request builder reads for us (RFC 6960 4.1.1).
    """
    subject = certificate.subject.public_bytes()
    ids = set()
    for name, algorithm in _HASHES.items():
        probe = ocsp.OCSPRequestBuilder().add_certificate(certificate, certificate, algorithm())
        name_hash = hashes.Hash(algorithm())
        name_hash.update(subject)
        ids.add((name, name_hash.finalize(), probe.build().issuer_key_hash))
    return frozenset(ids)


def may_sign_responses(certificate: x509.Certificate) -> bool:
    """Whether a CA's own key may sign OCSP responses: its keyUsage asserts digitalSignature.

    S/MIME BR 7.1.2.2 (e) and RFC 5280 4.2.1.3: keyCertSign and cRLSign cover certificates
    and CRLs only. CAs that create_pki made before the responder existed lack the bit.
    """
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return usage.digital_signature


class Status(enum.Enum):
    GOOD = ocsp.OCSPCertStatus.GOOD
    REVOKED = ocsp.OCSPCertStatus.REVOKED
    UNKNOWN = ocsp.OCSPCertStatus.UNKNOWN


@dataclass(frozen=True, slots=True)
class CertificateStatus:
    """What the CA says about one serial; a reason of None sends no revocationReason."""

    status: Status
    revocation_time: datetime | None = None
    revocation_reason: x509.ReasonFlags | None = None

    def __post_init__(self) -> None:
        if (self.status is Status.REVOKED) != (self.revocation_time is not None):
            raise PolicyError("A revocation time goes with a revoked status, and only there.")
        if self.revocation_reason is not None and self.status is not Status.REVOKED:
            raise PolicyError("Only a revoked status carries a reason.")
        if self.revocation_reason in (
            x509.ReasonFlags.unspecified,
            x509.ReasonFlags.remove_from_crl,
        ):
            # S/MIME BR 7.3 and 7.2.2: never unspecified; removeFromCRL is for delta CRLs.
            raise PolicyError(f"{self.revocation_reason.value} is not sent as a reason.")


def build_response(
    *,
    issuer_certificate: x509.Certificate,
    issuer_key: PrivateKey,
    cert_id: CertId,
    status: CertificateStatus,
    this_update: datetime,
    next_update: datetime,
    nonce: bytes | None = None,
) -> bytes:
    """A successful BasicOCSPResponse, DER, signed by the issuing CA itself.

    The CertID is echoed as the client sent it. Responder ID by key hash and no
    certificates (RFC 5019 2.2.1: the client holds the issuer). Times are whole seconds.
    """
    if issuer_key.public_key() != issuer_certificate.public_key():
        raise PolicyError("The CA private key does not belong to the CA certificate.")
    if not may_sign_responses(issuer_certificate):
        raise PolicyError(
            "This CA certificate does not assert digitalSignature, so its key may not sign "
            "OCSP responses (S/MIME BR 7.1.2.2 e)."
        )
    if cert_id.algorithm not in _HASHES:
        raise PolicyError("The CertID's hash algorithm is not one we answer in.")
    this_update, next_update = _second(this_update), _second(next_update)
    # +1 s: the BR count both ends of the interval.
    if not MIN_VALIDITY <= next_update - this_update + timedelta(seconds=1) <= MAX_VALIDITY:
        raise PolicyError("An OCSP response is valid for 8 hours to 10 days (S/MIME BR 4.9.10).")
    revocation_time = status.revocation_time
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        issuer_name_hash=cert_id.issuer_name_hash,
        issuer_key_hash=cert_id.issuer_key_hash,
        serial_number=cert_id.serial_number,
        algorithm=_HASHES[cert_id.algorithm](),
        cert_status=status.status.value,
        this_update=this_update,
        next_update=next_update,
        revocation_time=_second(revocation_time) if revocation_time is not None else None,
        revocation_reason=status.revocation_reason,
    )
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, issuer_certificate)
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    response = builder.sign(issuer_key, signature_hash_for(issuer_key))
    return response.public_bytes(Encoding.DER)


@cache
def unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    """The unsigned error response for a status other than successful (RFC 6960 4.2.1)."""
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(Encoding.DER)


def _second(moment: datetime) -> datetime:
    """Aware UTC, whole seconds: GeneralizedTime as the CRL writes it."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)
