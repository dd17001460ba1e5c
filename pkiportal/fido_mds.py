"""The FIDO Metadata Service (MDS3) BLOB, verified and read (README "Second factor", "FIDO
metadata"): which security-key models exist, what they are called, and which the FIDO
Alliance reports as compromised. Plain cryptography and PyJWT, no Django: the import
command (accounts) stores what read_blob() returns.

The BLOB is a JWT whose header's ``x5c`` chain must lead to the MDS root the operator
gives (GlobalSign Root R46 for the real service since August 2026, Root CA - R3 before)
and whose signature its first certificate makes (RS256 or ES256). The path is built from
the chain's certificates, not taken as listed: the real chain ends in R46 cross-signed by
R3, which either root then verifies. Nothing is fetched: the operator downloads the BLOB;
revocation of the chain is not checked (its CRLs are online), the chain's validity is.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import jwt

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

# The statuses that say a model's keys can no longer be trusted to be what they claim, or to
# keep their keys (MDS3 "AuthenticatorStatus"): a key of such a model proves nothing.
COMPROMISED = frozenset(
    {
        "REVOKED",
        "ATTESTATION_KEY_COMPROMISE",
        "USER_VERIFICATION_BYPASS",
        "USER_KEY_REMOTE_COMPROMISE",
        "USER_KEY_PHYSICAL_COMPROMISE",
    }
)
# What the portal's pages say of each compromise, after "The FIDO Alliance reports this
# model as …": a word and why.
COMPROMISE_WORDS = {
    "REVOKED": ("revoked", "its keys are not to be trusted"),
    "ATTESTATION_KEY_COMPROMISE": (
        "compromised",
        "its maker's attestation key is known to others, so any key can claim to be one",
    ),
    "USER_VERIFICATION_BYPASS": ("compromised", "its PIN or fingerprint check can be bypassed"),
    "USER_KEY_REMOTE_COMPROMISE": ("compromised", "its keys can be extracted remotely"),
    "USER_KEY_PHYSICAL_COMPROMISE": (
        "compromised",
        "its keys can be extracted by whoever holds it",
    ),
}
# The algorithms the MDS signs with (RSA PKCS#1 v1.5 or ECDSA P-256, both over SHA-256).
ALGORITHMS = frozenset({"RS256", "ES256"})
# A status as the MDS spells them (FIDO_CERTIFIED_L1plus, REVOKED ...): what the column holds.
_STATUS = re.compile(r"[A-Za-z0-9_]{1,40}")
_AAGUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
DESCRIPTION_MAX = 200  # the metadata statement's own limit for a description


class MetadataError(ValueError):
    """A BLOB refused: its message says why, for the operator."""


@dataclass(frozen=True)
class Entry:
    """One security-key model (FIDO2: known by its AAGUID) and its latest status report."""

    aaguid: str
    description: str
    status: str  # the latest status report's, e.g. FIDO_CERTIFIED_L1, REVOKED; "" if none
    status_date: date | None
    attestation_roots: tuple[str, ...]  # base64 DER, as the BLOB carries them


@dataclass(frozen=True)
class Blob:
    number: int  # the BLOB's serial number ("no"): a later BLOB carries a greater one
    next_update: date
    signer: str  # the signing certificate's subject
    entries: tuple[Entry, ...]


def read_blob(data: bytes, roots: Sequence[x509.Certificate], *, now: datetime) -> Blob:
    """The BLOB's models, once its chain leads to one of ``roots`` (valid at ``now``) and its
    signature is its first certificate's. Entries without an AAGUID (UAF and U2F models,
    which WebAuthn keys do not name) are left out. Anything else refused: MetadataError."""
    try:
        token = data.strip().decode("ascii")
    except UnicodeDecodeError:
        raise MetadataError("The BLOB is not a JWT (it holds bytes other than ASCII).") from None
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise MetadataError(f"The BLOB is not a JWT: {exc}") from None
    algorithm = header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise MetadataError(
            f"The BLOB is signed with {algorithm!r}; the FIDO MDS signs with RS256 or ES256."
        )
    if "crit" in header or "b64" in header:
        raise MetadataError("The BLOB's header asks for JWS extensions (crit, b64) it may not.")
    chain = _x5c(header.get("x5c"))
    signer = _verify_chain(chain, roots, now=now)
    try:
        payload = jwt.decode(
            token,
            key=_signing_key(signer, algorithm),
            algorithms=[algorithm],
            # Freshness is the payload's nextUpdate, not JWT claims (the MDS sends none).
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "verify_sub": False,
                "verify_jti": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise MetadataError(
            "The BLOB's signature does not verify with its signing certificate: it was "
            "altered, or is not the FIDO Metadata Service's."
        ) from None
    except jwt.PyJWTError as exc:
        raise MetadataError(f"The BLOB's payload cannot be read: {exc}") from None
    return _payload(payload, signer)


def _signing_key(
    certificate: x509.Certificate, algorithm: str
) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """The certificate's key, if it is one ``algorithm`` signs with (P-256 for ES256)."""
    key = certificate.public_key()
    if algorithm == "RS256" and isinstance(key, rsa.RSAPublicKey):
        return key
    if (
        algorithm == "ES256"
        and isinstance(key, ec.EllipticCurvePublicKey)
        and key.curve.name == ec.SECP256R1.name
    ):
        return key
    raise MetadataError(f"The BLOB's signing certificate holds no {algorithm} key.")


def _x5c(value: Any) -> list[x509.Certificate]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise MetadataError("The BLOB's header carries no certificate chain (x5c).")
    chain = []
    for position, text in enumerate(value, start=1):
        try:
            chain.append(x509.load_der_x509_certificate(base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError):
            raise MetadataError(
                f"Certificate {position} of the BLOB's chain (x5c) cannot be read."
            ) from None
    return chain


def _verify_chain(
    chain: list[x509.Certificate], roots: Sequence[x509.Certificate], *, now: datetime
) -> x509.Certificate:
    """The signing certificate, once it chains to a root through the others, every
    certificate valid at ``now``. Its CAs are held to the Web PKI's rules (the MDS chain is
    GlobalSign's); the signing certificate's extensions (a TLS server's, for the real
    service) are not: it signs a JWT, not a TLS handshake."""
    if not roots:
        raise MetadataError("No FIDO MDS root is given to check the BLOB's chain against.")
    verifier = (
        PolicyBuilder()
        .store(Store(list(roots)))
        .time(now)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all()
        )
        .build_client_verifier()
    )
    try:
        verifier.verify(chain[0], chain[1:])
    except VerificationError as exc:
        raise MetadataError(
            f"The BLOB's certificate chain does not lead to the given FIDO MDS root: {exc}"
        ) from None
    return chain[0]


def _payload(payload: dict[str, Any], signer: x509.Certificate) -> Blob:
    number = payload.get("no")
    if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < 2**63:
        raise MetadataError("The BLOB has no serial number (no).")
    next_update = _date(payload.get("nextUpdate"), "The BLOB's nextUpdate")
    if next_update is None:
        raise MetadataError("The BLOB has no nextUpdate.")
    raw = payload.get("entries")
    if not isinstance(raw, list):
        raise MetadataError("The BLOB has no entries.")
    entries: dict[str, Entry] = {}
    for position, item in enumerate(raw, start=1):
        entry = _entry(item, position)
        if entry is None:
            continue
        # A model listed twice counts as its entry with the later status (a compromise
        # over another status of the same day): refusing the whole BLOB for it would keep
        # every other model's news out.
        kept = entries.get(entry.aaguid)
        if kept is None or _weight(entry) >= _weight(kept):
            entries[entry.aaguid] = entry
    return Blob(
        number=number,
        next_update=next_update,
        signer=signer.subject.rfc4514_string(),
        entries=tuple(entries.values()),
    )


def _weight(entry: Entry) -> tuple[date, bool]:
    return (entry.status_date or date.min, entry.status in COMPROMISED)


def _entry(item: Any, position: int) -> Entry | None:
    where = f"Entry {position}"
    if not isinstance(item, dict):
        raise MetadataError(f"{where} is not an object.")
    aaguid = item.get("aaguid")
    if aaguid is None:
        return None  # a UAF (aaid) or U2F (key identifiers) model: no WebAuthn key names it
    if not isinstance(aaguid, str) or not _AAGUID.fullmatch(aaguid.lower()):
        raise MetadataError(f"{where}'s aaguid is not an AAGUID.")
    statement = item.get("metadataStatement", {})
    if not isinstance(statement, dict):
        raise MetadataError(f"{where}'s metadataStatement is not an object.")
    description = statement.get("description", "")
    if not isinstance(description, str):
        raise MetadataError(f"{where}'s description is not text.")
    listed = statement.get("attestationRootCertificates", [])
    if not isinstance(listed, list) or not all(isinstance(root, str) for root in listed):
        raise MetadataError(f"{where}'s attestationRootCertificates is not a list of text.")
    roots = ["".join(root.split()) for root in listed]  # line breaks are no part of base64
    for root in roots:
        try:
            base64.b64decode(root, validate=True)
        except binascii.Error:
            raise MetadataError(f"{where} has an attestation root that is not base64.") from None
    status, status_date = _latest_status(item.get("statusReports", []), where)
    # Control characters have no place in a name shown on pages (PostgreSQL refuses NUL).
    description = "".join(ch for ch in description if ch.isprintable()).strip()
    return Entry(
        aaguid=aaguid.lower(),
        description=description[:DESCRIPTION_MAX],
        status=status,
        status_date=status_date,
        attestation_roots=tuple(roots),
    )


def _latest_status(reports: Any, where: str) -> tuple[str, date | None]:
    """The status report with the latest effectiveDate (of those on one date, or without
    one, the last listed): what the FIDO Alliance says of the model today."""
    if not isinstance(reports, list):
        raise MetadataError(f"{where}'s statusReports is not a list.")
    latest: tuple[date, int, str, date | None] | None = None
    for index, report in enumerate(reports):
        status = report.get("status") if isinstance(report, dict) else None
        if not isinstance(status, str) or not _STATUS.fullmatch(status):
            raise MetadataError(f"{where} has a status report without a status.")
        effective = _date(report.get("effectiveDate"), f"{where}'s effectiveDate")
        key = (effective or date.min, index, status, effective)
        if latest is None or key[:2] >= latest[:2]:
            latest = key
    if latest is None:
        return "", None
    return latest[2], latest[3]


def _date(value: Any, what: str) -> date | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MetadataError(f"{what} is not a date.")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise MetadataError(f"{what} ({value[:40]!r}) is not a date.") from None
