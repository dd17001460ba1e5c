"""CRLs assembled from pre-encoded entries: the path that stays fast at 10^6 entries.

cryptography's builder needs one Python object per revoked certificate, which costs seconds
for a million entries. Here each entry (RFC 5280 5.1.2.6) is DER-encoded once, when the
revocation is recorded; publishing concatenates the stored bytes into the TBSCertList
(RFC 5280 5.1.2), hashes it in pieces and signs the digest with cryptography's primitives.
The output is byte for byte what ``crl.build_crl`` makes from the same input (tests check
that with hypothesis), so every rule of that module holds here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from .crl import MAX_CRL_NUMBER, RevocationReason, RevokedEntry
from .der import length as _length
from .der import tlv as _tlv
from .errors import PolicyError
from .keys import PrivateKey, PublicKey, SignatureHash, signature_hash_for

_MAX_SERIAL = 2**159
_UTC_TIME_YEARS = range(1950, 2050)  # RFC 5280 5.1.2.4: UTCTime through 2049

# RFC 5280 5.3.1 CRLReason codes (ENUMERATED); 0 (unspecified) is never written.
_REASON_CODES = {
    RevocationReason.KEY_COMPROMISE: 1,
    RevocationReason.CA_COMPROMISE: 2,
    RevocationReason.AFFILIATION_CHANGED: 3,
    RevocationReason.SUPERSEDED: 4,
    RevocationReason.CESSATION_OF_OPERATION: 5,
    RevocationReason.CERTIFICATE_HOLD: 6,
    RevocationReason.PRIVILEGE_WITHDRAWN: 9,
    RevocationReason.AA_COMPROMISE: 10,
}
_OID_CRL_REASON = bytes.fromhex("0603551d15")  # 2.5.29.21
_OID_INVALIDITY_DATE = bytes.fromhex("0603551d18")  # 2.5.29.24
_OID_CRL_NUMBER = bytes.fromhex("0603551d14")  # 2.5.29.20
_OID_AUTHORITY_KEY_IDENTIFIER = bytes.fromhex("0603551d23")  # 2.5.29.35
_VERSION_2 = bytes.fromhex("020101")  # RFC 5280 5.1.2.1: v2, since we write extensions


def _integer(value: int) -> bytes:
    """A non-negative INTEGER in its minimal two's-complement form (X.690 8.3)."""
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _utc(moment: datetime) -> datetime:
    """Naive input is taken as UTC, aware input converted, as cryptography does."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment


def _time(moment: datetime) -> bytes:
    """RFC 5280 5.1.2.4/4.1.2.5: UTCTime through 2049, GeneralizedTime after; whole seconds."""
    moment = _utc(moment)
    if moment.year in _UTC_TIME_YEARS:
        return _tlv(0x17, moment.strftime("%y%m%d%H%M%SZ").encode())
    return _generalized_time(moment)


def _generalized_time(moment: datetime) -> bytes:
    """GeneralizedTime without fractional seconds (RFC 5280 4.1.2.5.2)."""
    moment = _utc(moment)
    return _tlv(0x18, f"{moment.year:04d}{moment:%m%d%H%M%S}Z".encode())


def _extension(oid: bytes, value: bytes) -> bytes:
    """A non-critical Extension: criticality DEFAULT FALSE is omitted in DER."""
    return _tlv(0x30, oid + _tlv(0x04, value))


def encode_entry(
    entry: RevokedEntry, *, allow_hold: bool = False, reason_required: bool = False
) -> bytes:
    """One revokedCertificates element (RFC 5280 5.1.2.6) with its entry extensions (5.3).

    Applies the entry rules of ``crl.build_crl``: no certificateHold unless allowed (S/MIME
    BR 7.2.2), a reason on every entry of a CRL for CA certificates.
    """
    serial = entry.serial_number
    if not 0 < serial < _MAX_SERIAL:
        raise PolicyError(f"Serial number {serial:#x} is not a valid certificate serial.")
    reason = entry.reason
    if reason is None and reason_required:
        raise PolicyError(
            f"Revoked CA certificate {serial:#x} needs a reason code (S/MIME BR 7.2.2)."
        )
    if reason is RevocationReason.CERTIFICATE_HOLD and not allow_hold:
        raise PolicyError(
            "certificateHold may not appear in this CRL (S/MIME BR 7.2.2); "
            f"serial {serial:#x} uses it."
        )
    if _utc(entry.revocation_date).year < 1950:
        raise PolicyError("A revocation date must be after 1950.")
    extensions = b""
    if reason is not None:
        # RFC 5280 5.3.1 reasonCode, non-critical; "unspecified" is never written.
        extensions += _extension(_OID_CRL_REASON, _tlv(0x0A, bytes((_REASON_CODES[reason],))))
    if entry.invalidity_date is not None:
        # RFC 5280 5.3.2 invalidityDate, non-critical, always GeneralizedTime.
        extensions += _extension(_OID_INVALIDITY_DATE, _generalized_time(entry.invalidity_date))
    body = _integer(serial) + _time(entry.revocation_date)
    if extensions:
        body += _tlv(0x30, extensions)
    return _tlv(0x30, body)


def encode_entries(entries: Iterable[RevokedEntry], **rules: bool) -> bytes:
    """Many entries, concatenated as they appear inside revokedCertificates."""
    return b"".join(encode_entry(entry, **rules) for entry in entries)


@dataclass(frozen=True)
class SignatureAlgorithm:
    """The AlgorithmIdentifier a CA key signs CRLs with, and how to sign the digest."""

    identifier: bytes
    hash: SignatureHash


# RFC 5758 3.2 (ECDSA: parameters absent) and RFC 4055 5 (RSA PKCS#1 v1.5: NULL parameters).
_ECDSA_OIDS = {
    "sha256": "2a8648ce3d040302",
    "sha384": "2a8648ce3d040303",
    "sha512": "2a8648ce3d040304",
}
_RSA_OIDS = {
    "sha256": "2a864886f70d01010b",
    "sha384": "2a864886f70d01010c",
    "sha512": "2a864886f70d01010d",
}


def signature_algorithm_for(key: PrivateKey | PublicKey) -> SignatureAlgorithm:
    """The algorithm cryptography's builder picks for this key (keys.signature_hash_for)."""
    digest = signature_hash_for(key)
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        oid = bytes.fromhex(_ECDSA_OIDS[digest.name])
        return SignatureAlgorithm(_tlv(0x30, _tlv(0x06, oid)), digest)
    oid = bytes.fromhex(_RSA_OIDS[digest.name])
    return SignatureAlgorithm(_tlv(0x30, _tlv(0x06, oid) + b"\x05\x00"), digest)


def tbs_certlist(
    *,
    issuer: x509.Name,
    signature_algorithm: SignatureAlgorithm,
    this_update: datetime,
    next_update: datetime,
    crl_number: int,
    authority_key_identifier: bytes,
    revoked: bytes,
) -> tuple[bytes, bytes, bytes]:
    """TBSCertList (RFC 5280 5.1.2) as (head, revoked, tail): the entries are never copied.

    ``revoked`` is the concatenation of ``encode_entry`` results; an empty CRL omits the
    revokedCertificates field, as RFC 5280 5.1.2.6 requires.
    """
    aki = _tlv(0x30, _tlv(0x80, authority_key_identifier))  # keyIdentifier [0] IMPLICIT
    # RFC 5280 5.2.3 cRLNumber and 5.2.1 authorityKeyIdentifier, both non-critical.
    crl_extensions = _tlv(
        0x30,
        _extension(_OID_CRL_NUMBER, _integer(crl_number))
        + _extension(_OID_AUTHORITY_KEY_IDENTIFIER, aki),
    )
    tail = _tlv(0xA0, crl_extensions)
    fields = (
        _VERSION_2
        + signature_algorithm.identifier
        + issuer.public_bytes()
        + _time(this_update)
        + _time(next_update)
    )
    revoked_header = (b"\x30" + _length(len(revoked))) if revoked else b""
    content_length = len(fields) + len(revoked_header) + len(revoked) + len(tail)
    head = b"\x30" + _length(content_length) + fields + revoked_header
    return head, revoked, tail


def sign_pieces(key: PrivateKey, algorithm: SignatureAlgorithm, pieces: Sequence[bytes]) -> bytes:
    """Sign the concatenation of ``pieces`` without building it: hash, then sign the digest."""
    hasher = hashes.Hash(algorithm.hash)
    for piece in pieces:
        hasher.update(piece)
    digest = hasher.finalize()
    prehashed = utils.Prehashed(algorithm.hash)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(digest, ec.ECDSA(prehashed))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(digest, padding.PKCS1v15(), prehashed)
    raise PolicyError("CRLs are signed with RSA or EC keys only.")


def certificate_list(
    tbs: Sequence[bytes], algorithm: SignatureAlgorithm, signature: bytes
) -> bytes:
    """CertificateList (RFC 5280 5.1.1): tbsCertList, signatureAlgorithm, signatureValue."""
    tail = algorithm.identifier + _tlv(0x03, b"\x00" + signature)
    size = sum(len(piece) for piece in tbs) + len(tail)
    return b"".join((b"\x30", _length(size), *tbs, tail))


def sign_crl(
    *,
    issuer_certificate: x509.Certificate,
    issuer_key: PrivateKey,
    revoked: bytes,
    crl_number: int,
    this_update: datetime,
    next_update: datetime,
) -> bytes:
    """A signed CRL in DER from pre-encoded entries, with the checks of ``crl.build_crl``."""
    if issuer_key.public_key() != issuer_certificate.public_key():
        raise PolicyError("The CA private key does not belong to the CA certificate.")
    if not 0 <= crl_number < MAX_CRL_NUMBER:
        raise PolicyError("The CRL number must be between 0 and 2**159 (RFC 5280 5.2.3).")
    if _utc(next_update).replace(tzinfo=None) <= _utc(this_update).replace(tzinfo=None):
        raise PolicyError("The CRL's nextUpdate must be later than its thisUpdate.")
    if _utc(this_update).year < 1950:
        raise PolicyError("The CRL's thisUpdate must be after 1950.")
    try:
        ski = issuer_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound as exc:
        raise PolicyError("The CA certificate has no subject key identifier.") from exc
    algorithm = signature_algorithm_for(issuer_key)
    tbs = tbs_certlist(
        issuer=issuer_certificate.subject,
        signature_algorithm=algorithm,
        this_update=this_update,
        next_update=next_update,
        crl_number=crl_number,
        authority_key_identifier=ski.value.digest,
        revoked=revoked,
    )
    return certificate_list(tbs, algorithm, sign_pieces(issuer_key, algorithm, tbs))
