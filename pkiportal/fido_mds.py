"""The FIDO Metadata Service (MDS3) BLOB, verified and read (README "Second factor", "FIDO
metadata"): which security-key models exist, what they are called, and which the FIDO
Alliance reports as compromised. Plain cryptography and PyJWT, no Django: the import
command (accounts) stores what read_blob() returns.

The BLOB is a JWT whose header's ``x5c`` chain must lead to the MDS root the operator
gives (GlobalSign Root R46 for the real service since August 2026, Root CA - R3 before)
and whose signature its first certificate makes (RS256 or ES256). The path is built from
the chain's certificates, not taken as listed: the real chain ends in R46 cross-signed by
R3, which either root then verifies. Nothing is fetched: the operator downloads the BLOB,
and the CRLs of the chain's issuers with it (read_crls), since MDS3 ("Metadata BLOB object
processing rules") asks for the chain's revocation to be checked: every certificate of the
path but the trust root must be cleared by a current CRL its issuer signed. The operator may
say not to check (crls=None), which the import records.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import jwt

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID
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
# How far the clocks of a CRL's issuer and of this machine may disagree: a CRL issued a few
# minutes "from now", or whose nextUpdate passed a few minutes ago, is still current.
CRL_CLOCK_SKEW = timedelta(minutes=5)
# The CRL extensions whose meaning the check knows: a CRL with any other critical one may
# not be used to tell revocation (RFC 5280, 5.2).
_KNOWN_CRL_EXTENSIONS = frozenset(
    {
        ExtensionOID.CRL_NUMBER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.ISSUER_ALTERNATIVE_NAME,
        ExtensionOID.ISSUING_DISTRIBUTION_POINT,
        ExtensionOID.FRESHEST_CRL,
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
    }
)
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.*?-----END X509 CRL-----", re.DOTALL)


class MetadataError(ValueError):
    """A BLOB refused: its message says why, for the operator."""


class RevocationUnknown(MetadataError):
    """A certificate of the BLOB's chain that no CRL given can clear (none of its issuer's,
    or none current and signed by it): the message names each CRL needed and where its
    issuer publishes it, so that the operator can download it."""


class ChainRevoked(MetadataError):
    """A certificate of the BLOB's chain is on its issuer's CRL: the BLOB is not the FIDO
    Metadata Service's word any more, whatever its signature."""


@dataclass(frozen=True)
class CrlUsed:
    """A CRL that cleared a certificate of the BLOB's chain, as the import records it."""

    certificate: str  # the subject of the certificate it cleared
    issuer: str
    number: int | None  # its CRL number, where it has one
    this_update: datetime


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
    # The CRLs that cleared the chain, one per certificate below the root; None where the
    # operator chose not to check revocation.
    revocation: tuple[CrlUsed, ...] | None


def read_blob(
    data: bytes,
    roots: Sequence[x509.Certificate],
    *,
    now: datetime,
    crls: Sequence[x509.CertificateRevocationList] | None,
) -> Blob:
    """The BLOB's models, once its chain leads to one of ``roots`` (valid at ``now``), no
    certificate of that path is revoked according to ``crls`` (each needing one: see
    _check_revocation; None: not checked, the caller's explicit choice, hence no default)
    and its signature is its first certificate's. Entries without an AAGUID (UAF and U2F
    models, which WebAuthn keys do not name) are left out. Anything else refused:
    MetadataError (RevocationUnknown, ChainRevoked for the CRLs)."""
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
    path = _verify_chain(chain, roots, now=now)
    signer = path[0]
    revocation = None if crls is None else _check_revocation(path, crls, now=now)
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
    return _payload(payload, signer, revocation)


def read_crls(data: bytes, source: str) -> list[x509.CertificateRevocationList]:
    """The CRLs of one file: DER (one CRL) or PEM (one or more "X509 CRL" blocks, as a
    CA's download or several concatenated). Anything else refused (MetadataError naming
    ``source``), never half-read: the fields cryptography parses only when asked are asked
    here, so a damaged CRL fails now rather than during the check."""
    if b"-----BEGIN" in data:
        blocks = _PEM_CRL.findall(data)
        if data.count(b"-----BEGIN X509 CRL-----") != len(blocks):
            raise MetadataError(f"{source} holds a PEM CRL cut short (without its END line).")
        if not blocks:
            raise MetadataError(f"{source} holds no PEM CRL (-----BEGIN X509 CRL-----).")
    else:
        blocks = [data]
    crls = []
    for position, block in enumerate(blocks, start=1):
        which = f"CRL {position} of {source}" if len(blocks) > 1 else source
        try:
            crl = (
                x509.load_pem_x509_crl(block)
                if block.startswith(b"-----")
                else x509.load_der_x509_crl(block)
            )
            _ = (crl.issuer, crl.last_update_utc, crl.next_update_utc, crl.extensions)
        except (ValueError, UnsupportedAlgorithm):
            raise MetadataError(f"{which} cannot be read: it is damaged or no CRL.") from None
        crls.append(crl)
    return crls


def _check_revocation(
    path: list[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList],
    *,
    now: datetime,
) -> tuple[CrlUsed, ...]:
    """The CRL that clears each certificate of ``path`` (leaf first, the trust root last)
    but the root, which the operator trusts as given. A CRL counts for a certificate when
    its issuer's name is the certificate's issuer's, its issuer's key signed it, it is
    complete for it (no delta CRL, no partition meant for other certificates, no critical
    extension not understood) and current at ``now`` (CRL_CLOCK_SKEW either way); CRLs of
    other issuers are ignored. A certificate listed on a CRL its issuer signed, current or
    not, complete or a delta or partition (_speaks_for): ChainRevoked at once. Certificates
    no CRL clears: RevocationUnknown naming all of them, so that one run tells the operator
    every CRL to bring."""
    used = []
    unknown = []
    for position, (certificate, issuer) in enumerate(zip(path, path[1:], strict=False)):
        what = _certificate_words(certificate, position)
        current = []
        problems = []
        for crl in crls:
            if crl.issuer != issuer.subject:
                continue
            if not _signed_by(crl, issuer):
                problem = NOT_SIGNED_BY_ISSUER
            else:
                if _speaks_for(crl):
                    # Listed on a CRL its issuer signed: revoked, however old that CRL is,
                    # and on a delta or a partition too, which clear nothing but revoke.
                    _refuse_if_listed(crl, certificate, what)
                problem = _crl_problem(crl, certificate) or _crl_age_problem(crl, now=now)
            if problem:
                problems.append(
                    f"the one given (thisUpdate {_when(crl.last_update_utc)}) {problem}"
                )
            else:
                current.append(crl)
        if not current:
            given = f": {'; '.join(problems)}" if problems else ", and none was given"
            unknown.append(
                f"{what} needs a current CRL of its issuer {issuer.subject.rfc4514_string()}"
                f"{given}. {_published_at(certificate)}"
            )
            continue
        newest = max(current, key=lambda crl: crl.last_update_utc)
        used.append(
            CrlUsed(
                certificate=certificate.subject.rfc4514_string(),
                issuer=issuer.subject.rfc4514_string(),
                number=_crl_number(newest),
                this_update=newest.last_update_utc,
            )
        )
    if unknown:
        raise RevocationUnknown(
            "The revocation of the BLOB's chain cannot be checked:\n"
            + "\n".join(f"- {line}" for line in unknown)
        )
    return tuple(used)


def _certificate_words(certificate: x509.Certificate, position: int) -> str:
    role = "The BLOB's signing certificate" if position == 0 else "The chain's CA certificate"
    return f"{role} {certificate.subject.rfc4514_string()} (serial {certificate.serial_number:x})"


NOT_SIGNED_BY_ISSUER = (
    "is not signed by the issuer's key (forged, or another CA's of the same name)"
)


def _signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    """Whether the issuer's key signed ``crl`` (of the issuer's name): asked once per CRL
    and certificate, before anything the CRL says is taken."""
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False


def _crl_problem(crl: x509.CertificateRevocationList, certificate: x509.Certificate) -> str:
    """Why ``crl``, which its issuer signed (_signed_by), is not the issuer's complete word
    on ``certificate``, or "" where it is (then _crl_age_problem says whether it is
    today's)."""
    for extension in crl.extensions:
        if extension.oid == ExtensionOID.DELTA_CRL_INDICATOR:
            return "is a delta CRL (the complete CRL is needed)"
        if extension.critical and extension.oid not in _KNOWN_CRL_EXTENSIONS:
            return (
                f"has a critical extension this check does not know ({extension.oid.dotted_string})"
            )
    return _scope_problem(crl, certificate)


def _speaks_for(crl: x509.CertificateRevocationList) -> bool:
    """Whether an entry of ``crl``, which its issuer signed (_signed_by), for a serial is
    its issuer's word that the issuer's certificate of that serial is revoked: with no
    critical extension this check does not know (RFC 5280 5.2: such a CRL is not to be used at all),
    and not indirect nor for attribute certificates, whose entries may name another issuer's
    certificate or another kind of serial. A delta CRL or a partition for some reasons or
    some certificates does speak for the entries it has, though it clears nothing alone."""
    for extension in crl.extensions:
        if extension.critical and extension.oid not in _KNOWN_CRL_EXTENSIONS | {
            ExtensionOID.DELTA_CRL_INDICATOR
        }:
            return False
        if isinstance(extension.value, x509.IssuingDistributionPoint) and (
            extension.value.indirect_crl or extension.value.only_contains_attribute_certs
        ):
            return False
    return True


def _crl_age_problem(crl: x509.CertificateRevocationList, *, now: datetime) -> str:
    """Why ``crl`` is not current at ``now`` (CRL_CLOCK_SKEW either way), or ""."""
    if crl.last_update_utc > now + CRL_CLOCK_SKEW:
        return "is not yet valid (issued in the future: check this machine's clock)"
    if crl.next_update_utc is None:
        return "names no nextUpdate, so whether it is current cannot be told"
    if crl.next_update_utc < now - CRL_CLOCK_SKEW:
        return f"is stale (its nextUpdate, {_when(crl.next_update_utc)}, has passed)"
    return ""


def _scope_problem(crl: x509.CertificateRevocationList, certificate: x509.Certificate) -> str:
    """Why ``crl``'s issuing distribution point leaves ``certificate`` out (RFC 5280,
    6.3.3 (b)), or "": a partitioned CRL lists only the certificates of its partition."""
    try:
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        return ""
    if idp.indirect_crl or idp.only_some_reasons or idp.only_contains_attribute_certs:
        return "is a partial CRL (indirect, or for some reasons or attribute certificates only)"
    try:
        is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, ValueError):
        is_ca = False
    if idp.only_contains_ca_certs and not is_ca:
        return "lists CA certificates only"
    if idp.only_contains_user_certs and is_ca:
        return "lists end-entity certificates only"
    if idp.relative_name is not None:
        return "is a partition this check cannot match (a relative distribution point name)"
    if idp.full_name is not None and not set(idp.full_name) & set(
        _distribution_points(certificate)
    ):
        return "is a partition for other certificates (its distribution point is not this one's)"
    return ""


def _refuse_if_listed(
    crl: x509.CertificateRevocationList, certificate: x509.Certificate, what: str
) -> None:
    try:
        entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
        if entry is None:
            return
        revoked_on = _when(entry.revocation_date_utc)
        try:
            flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            flag = None
        if flag is x509.ReasonFlags.remove_from_crl:
            return  # a delta's word that a hold ended: not revoked
        reason = flag.value if flag is not None else "no reason given"
    except ValueError:
        raise MetadataError(
            f"The CRL of {crl.issuer.rfc4514_string()} cannot be read: it is damaged."
        ) from None
    number = _crl_number(crl)
    raise ChainRevoked(
        f"{what} is revoked: its issuer's CRL"
        f"{f' no. {number}' if number is not None else ''} (thisUpdate "
        f"{_when(crl.last_update_utc)}) lists it as revoked on {revoked_on}, reason "
        f"{reason}. This BLOB is not to be trusted; download the current BLOB."
    )


def _crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None


def _distribution_points(certificate: x509.Certificate) -> list[x509.GeneralName]:
    """The full names of the certificate's CRL distribution points (their URLs)."""
    try:
        points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [name for point in points for name in point.full_name or ()]


def _published_at(certificate: x509.Certificate) -> str:
    urls = [
        name.value
        for name in _distribution_points(certificate)
        if isinstance(name, x509.UniformResourceIdentifier)
    ]
    if not urls:
        return (
            "The certificate names no CRL distribution point: ask its issuer where its CRL is "
            "published."
        )
    return f"Its issuer publishes it at {' or '.join(urls)}."


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


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
) -> list[x509.Certificate]:
    """The path built (the signing certificate first, the root last), once the signing
    certificate chains to a root through the others, every certificate valid at ``now``.
    Its CAs are held to the Web PKI's rules (the MDS chain is GlobalSign's); the signing
    certificate's extensions (a TLS server's, for the real service) are not: it signs a JWT,
    not a TLS handshake."""
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
        verified = verifier.verify(chain[0], chain[1:])
    except VerificationError as exc:
        raise MetadataError(
            f"The BLOB's certificate chain does not lead to the given FIDO MDS root: {exc}"
        ) from None
    return list(verified.chain)


def _payload(
    payload: dict[str, Any], signer: x509.Certificate, revocation: tuple[CrlUsed, ...] | None
) -> Blob:
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
        revocation=revocation,
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
        except ValueError:  # binascii.Error, or text that is not even ASCII
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
