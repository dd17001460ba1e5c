"""Reading certificates another CA issued, for manage.py import_certificates.

Plain functions over ``cryptography``: load certificates from PEM, DER or PKCS#7 bundles,
check one against the CA certificate that claims to have issued it, and say what kind of
S/MIME certificate it is. Nothing here touches Django.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID

from .errors import X509Error

_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----")
_PEM_CERTIFICATE_LABELS = {b"CERTIFICATE", b"X509 CERTIFICATE"}
_PEM_PKCS7_LABELS = {b"PKCS7", b"CERTIFICATE CHAIN"}
# A certificate valid for longer than this is not one any S/MIME CA issued on purpose
# (S/MIME BR 6.3.2 allows 825 days; old enterprise CAs used up to a few years).
LONGEST_SANE_VALIDITY = timedelta(days=20 * 366)


class Verdict(enum.StrEnum):
    """What the importer makes of one certificate, before it looks for a holder."""

    OK = "ok"
    BAD_SIGNATURE = "bad_signature"
    NOT_SMIME = "not_smime"
    EXPIRED = "expired"
    NO_ISSUER = "no_issuer"
    BAD_ADDRESS = "bad_address"


def _pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(label, whole block) for each BEGIN with its matching END, in linear time: the
    next END of each label is looked up once and reused (a file of a million BEGINs and
    no END is read once per label, not once per BEGIN)."""
    blocks: list[tuple[bytes, bytes]] = []
    next_end: dict[bytes, int] = {}
    for match in _PEM_BEGIN.finditer(data):
        label = match.group(1)
        end_marker = b"-----END " + label + b"-----"
        end = next_end.get(label)
        if end is None or (end != -1 and end < match.end()):
            end = data.find(end_marker, match.end())
            next_end[label] = end
        if end == -1:
            continue
        blocks.append((label, data[match.start() : end + len(end_marker)]))
    return blocks


def load_certificates(data: bytes) -> list[x509.Certificate | X509Error]:
    """Every certificate in a PEM file (one or many blocks, text around them ignored), a
    DER certificate, or a PKCS#7 bundle (.p7b, DER or PEM), in order. A block that does
    not load is an X509Error in its place; a file that is none of these raises one."""
    if b"-----BEGIN" in data:
        found: list[x509.Certificate | X509Error] = []
        for label, block in _pem_blocks(data):
            try:
                if label in _PEM_CERTIFICATE_LABELS:
                    found.append(x509.load_pem_x509_certificate(block))
                elif label in _PEM_PKCS7_LABELS:
                    found.extend(pkcs7.load_pem_pkcs7_certificates(block))
            except (ValueError, TypeError, UnsupportedAlgorithm):
                found.append(X509Error(f"a damaged {label.decode()} block"))
        if not found:
            raise X509Error("The file holds PEM text, but no certificate.")
        return found
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        pass
    try:
        return list(pkcs7.load_der_pkcs7_certificates(data))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise X509Error(
            "Not a certificate: the file is neither PEM, DER nor a PKCS#7 bundle."
        ) from exc


def _certificate_problem(certificate: x509.Certificate) -> str | None:
    """Fields the importer reads but cryptography parses lazily: a certificate whose
    extensions do not decode is refused here rather than half way through an import."""
    try:
        _ = certificate.extensions
        _ = certificate.subject.rfc4514_string()
        _ = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        return f"unreadable certificate ({exc})"
    return None


def is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return bool(constraints.value.ca)


def check_issuer_certificate(certificate: x509.Certificate) -> None:
    """An issuer given with --issuer must be a CA certificate (basicConstraints cA)."""
    problem = _certificate_problem(certificate)
    if problem is not None:
        raise X509Error(f"The issuer certificate is an {problem}.")
    if not is_ca(certificate):
        raise X509Error(
            f"{certificate.subject.rfc4514_string()} is not a CA certificate "
            "(no basicConstraints cA=TRUE)."
        )


def issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    """The certificate names this issuer and its signature verifies with the issuer's key."""
    if certificate.issuer != issuer.subject:
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def email_addresses(certificate: x509.Certificate) -> list[str]:
    """The subjectAltName rfc822Names as the certificate has them, in order, without
    duplicates. Compare them with ascii_lower: str.lower() and SQL UPPER() fold look-alikes
    (KELVIN SIGN to k, LONG S to S) into another person's address."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    found: list[str] = []
    for address in san.value.get_values_for_type(x509.RFC822Name):
        if address not in found:
            found.append(address)
    return found


_PLAIN_ADDRESS = re.compile(r"[\x21-\x7e]+")


def address_problem(address: str) -> str | None:
    """Why an rfc822Name is refused (not plain printable ASCII, or with whitespace), or None."""
    if _PLAIN_ADDRESS.fullmatch(address) is None:
        return f"the rfc822Name {address!r} is not plain ASCII without spaces"
    return None


def ascii_lower(address: str) -> str:
    """Lower-case A-Z only: the one case folding that cannot turn one address into another."""
    return address.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def protects_email(certificate: x509.Certificate) -> bool:
    """The certificate's extendedKeyUsage names emailProtection."""
    try:
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.EMAIL_PROTECTION in eku.value


def key_uses(certificate: x509.Certificate) -> tuple[bool, bool]:
    """Whether S/MIME can sign with its key, and encrypt to it, as its keyUsage and its
    key type allow together.

    keyUsage alone misleads: RSA is encrypted to by key transport (keyEncipherment), EC,
    X25519 and X448 by key agreement (keyAgreement, RFC 5753 and 8418); Ed25519, Ed448
    and DSA only sign. An EC certificate with keyEncipherment (a common misissuance) can
    no more be encrypted to than a signing-only one, and a mail client given it fails.
    No keyUsage (RFC 5280 allows it) means whatever its key can do."""
    key = certificate.public_key()
    try:
        usage: x509.KeyUsage | None = certificate.extensions.get_extension_for_class(
            x509.KeyUsage
        ).value
    except x509.ExtensionNotFound:
        usage = None
    signing_key = isinstance(key, _SIGNING_KEYS)
    signs = signing_key and (usage is None or usage.digital_signature or usage.content_commitment)
    if isinstance(key, rsa.RSAPublicKey):
        encrypts = usage is None or usage.key_encipherment
    elif isinstance(key, _AGREEMENT_KEYS):
        encrypts = usage is None or usage.key_agreement
    else:
        encrypts = False
    return signs, encrypts


_SIGNING_KEYS = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
    dsa.DSAPublicKey,
)
_AGREEMENT_KEYS = (ec.EllipticCurvePublicKey, x25519.X25519PublicKey, x448.X448PublicKey)


def purpose(certificate: x509.Certificate) -> str:
    """signing, encryption or dual_use (CertificateTemplate.Purpose values): what
    key_uses allows. One that allows neither is "signing": never offered to encrypt to
    (classify refuses to import such a certificate at all)."""
    signs, encrypts = key_uses(certificate)
    if encrypts:
        return "dual_use" if signs else "encryption"
    return "signing"


@dataclass(frozen=True)
class Classified:
    verdict: Verdict
    issuer_index: int | None = None
    reason: str = ""


def classify(
    certificate: x509.Certificate, issuers: list[x509.Certificate], *, now: datetime
) -> Classified:
    """Which of ``issuers`` signed it, and whether it is an S/MIME certificate in date.

    A bad signature (the certificate names an issuer we were given, whose key does not
    verify it) is told apart from a certificate of an issuer nobody gave us."""
    problem = _certificate_problem(certificate)
    if problem is not None:
        return Classified(Verdict.BAD_SIGNATURE, reason=problem)
    named = [i for i, issuer in enumerate(issuers) if issuer.subject == certificate.issuer]
    if not named:
        return Classified(
            Verdict.NO_ISSUER,
            reason=f"issued by {certificate.issuer.rfc4514_string()}, not given with --issuer",
        )
    signer = next((i for i in named if issued_by(certificate, issuers[i])), None)
    if signer is None:
        return Classified(Verdict.BAD_SIGNATURE, reason="the issuer's key does not verify it")
    not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if not_after <= not_before or not_after - not_before > LONGEST_SANE_VALIDITY:
        return Classified(
            Verdict.BAD_SIGNATURE,
            signer,
            f"its validity period ({not_before:%Y-%m-%d} to {not_after:%Y-%m-%d}) is not sane",
        )
    if is_ca(certificate):
        return Classified(Verdict.NOT_SMIME, signer, "a CA certificate")
    if not protects_email(certificate):
        return Classified(Verdict.NOT_SMIME, signer, "no emailProtection extended key usage")
    if not any(key_uses(certificate)):
        return Classified(
            Verdict.NOT_SMIME,
            signer,
            "its key usage lets its key neither sign nor be encrypted to",
        )
    addresses = email_addresses(certificate)
    if not addresses:
        return Classified(Verdict.NOT_SMIME, signer, "no rfc822Name in subjectAltName")
    for address in addresses:
        if (problem := address_problem(address)) is not None:
            return Classified(Verdict.BAD_ADDRESS, signer, problem)
    if not_after <= now:
        return Classified(Verdict.EXPIRED, signer, f"expired on {not_after:%Y-%m-%d}")
    return Classified(Verdict.OK, signer)


# --- the old CA's revocation lists ----------------------------------------------------------


@dataclass(frozen=True)
class Revocation:
    """One CRL entry: when, why (the RFC 5280 reason's name, "" for none) and since when
    the key may have been in other hands."""

    revoked_at: datetime
    reason: str
    invalidity_date: datetime | None


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL, DER or PEM; X509Error for anything else."""
    for loader in (x509.load_der_x509_crl, x509.load_pem_x509_crl):
        try:
            return loader(data)
        except ValueError:
            continue
    raise X509Error("Not a CRL: the file is neither a DER nor a PEM CRL.")


def crl_signer(crl: x509.CertificateRevocationList, issuers: list[x509.Certificate]) -> int | None:
    """The index of the issuer that signed this CRL (by name and signature), or None."""
    for index, issuer in enumerate(issuers):
        if crl.issuer != issuer.subject:
            continue
        try:
            if crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                return index
        except (TypeError, ValueError, UnsupportedAlgorithm):
            continue
    return None


def crl_revocations(crl: x509.CertificateRevocationList) -> dict[int, Revocation]:
    """Each listed serial number's revocation. X509Error for a delta CRL (its entries may
    take certificates back, removeFromCRL) or an entry that does not decode."""
    found: dict[int, Revocation] = {}
    try:
        if any(isinstance(e.value, x509.DeltaCRLIndicator) for e in crl.extensions):
            raise X509Error("a delta CRL: give the old CA's full CRL")
        for entry in crl:
            reason = ""
            invalidity: datetime | None = None
            for extension in entry.extensions:
                if isinstance(extension.value, x509.CRLReason):
                    reason = extension.value.reason.value
                elif isinstance(extension.value, x509.InvalidityDate):
                    invalidity = extension.value.invalidity_date_utc
            if reason == "removeFromCRL":  # only meaningful in a delta CRL
                continue
            found[entry.serial_number] = Revocation(
                entry.revocation_date_utc, "" if reason == "unspecified" else reason, invalidity
            )
    except (ValueError, TypeError) as exc:
        raise X509Error(f"a CRL entry does not decode ({exc})") from None
    return found
