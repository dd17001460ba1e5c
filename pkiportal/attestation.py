"""The WebAuthn attestation settings, read and checked (README "Second factor"): the CA
certificates a security key's attestation must chain to, and the AAGUIDs of the approved
models. Plain cryptography, no Django: the settings module runs it before Django is set up,
and turns a ValueError into ImproperlyConfigured.

Also a model's own trust anchors, as the imported FIDO metadata lists them (its metadata
statement's attestationRootCertificates), read (read_anchors) and an attestation chain
checked against them (chains_to_anchor): accounts.passkeys holds a key to its claimed
model's anchors beside the configured roots."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

_AAGUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def read_roots(path: str) -> list[bytes]:
    """The CA certificates in the PEM file at ``path``, one PEM each (py_webauthn reads one
    certificate per entry). Refused: a file that cannot be read, holds no certificate or a
    malformed one, or a certificate that is not a root CA's (basicConstraints cA, issued by
    itself): an attestation chains to its vendor's root, never to a key's own certificate,
    and an intermediate alone is no anchor to OpenSSL's check."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ValueError(f"{path!r} cannot be read: {exc.strerror or exc}") from exc
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ValueError(f"{path!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----).")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{path!r} holds a certificate that cannot be read: {exc}") from exc
    for certificate in certificates:
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
            is_ca = constraints.value.ca
        except (x509.ExtensionNotFound, ValueError):
            is_ca = False
        subject = certificate.subject.rfc4514_string()
        if not is_ca:
            raise ValueError(
                f"{subject!r} in {path!r} is not a CA certificate (basicConstraints cA): "
                "give the key vendor's attestation root CA."
            )
        if certificate.issuer != certificate.subject:
            # OpenSSL, which py_webauthn's chain check uses, trusts only self-issued roots.
            raise ValueError(
                f"{subject!r} in {path!r} is not a root (its issuer is "
                f"{certificate.issuer.rfc4514_string()!r}): give the root it chains to."
            )
    return [certificate.public_bytes(Encoding.PEM) for certificate in certificates]


def parse_aaguids(values: list[str]) -> list[str]:
    """AAGUIDs as py_webauthn writes them (lower-case, 8-4-4-4-12), each once, in order."""
    aaguids: list[str] = []
    for value in values:
        text = value.strip().lower()
        if not text:
            continue
        if not _AAGUID.fullmatch(text):
            raise ValueError(
                f"{value.strip()!r} is not an AAGUID (8-4-4-4-12 hexadecimal digits, e.g. "
                "cb69481e-8ff7-4039-93ec-0a2729a154a8)."
            )
        if text not in aaguids:
            aaguids.append(text)
    return aaguids


def read_anchors(values: Any) -> tuple[list[x509.Certificate], list[str]]:
    """The certificates of a model's attestationRootCertificates (base64 DER each, as the
    FIDO metadata gives them and the import stores them), and, for each entry that is none,
    why ("entry 2: not base64"), for the log. The stored list is the database's word, not
    the verified BLOB's (an edit in the shell, a damaged row): an entry that cannot be read
    is no anchor, never an error; a value that is not a list is one problem, no anchor."""
    if not isinstance(values, list):
        return [], [f"not a list of certificates but {type(values).__name__}"]
    anchors: list[x509.Certificate] = []
    problems: list[str] = []
    for position, value in enumerate(values, start=1):
        if not isinstance(value, str):
            problems.append(f"entry {position}: not text but {type(value).__name__}")
            continue
        try:
            # binascii.Error, and a str with other than ASCII, are ValueErrors.
            der = base64.b64decode("".join(value.split()), validate=True)
        except ValueError:
            problems.append(f"entry {position}: not base64")
            continue
        try:
            anchors.append(x509.load_der_x509_certificate(der))
        except ValueError:
            problems.append(f"entry {position}: not a DER certificate")
    return anchors, problems


def chains_to_anchor(
    chain: Sequence[bytes], anchors: Sequence[x509.Certificate], *, now: datetime
) -> bool:
    """Whether an attestation's chain (x5c: DER, the batch certificate first) leads to one of
    ``anchors``. MDS3 lets a model's anchor be a root, an intermediate CA or the batch
    certificate itself, so this is a partial-chain check: the path ends at the first anchor
    it meets, whether or not that anchor issued itself (OpenSSL, which py_webauthn's check
    uses, would insist on a self-issued root). cryptography's X.509 verifier builds the path
    from the batch certificate through the chain's other certificates (one listed but not
    on the path counts for nothing), checks every signature, every certificate's validity at
    ``now`` (the anchor's too) and that every issuer is a CA (basicConstraints cA); other
    extensions are not held to the Web PKI's rules, which attestation CAs were never made
    for (the configured roots' check weighs the chain as before). Anything unreadable or
    refused is False, never an error."""
    if not chain or not anchors:
        return False
    try:
        leaf = x509.load_der_x509_certificate(chain[0])
        intermediates = [x509.load_der_x509_certificate(der) for der in chain[1:]]
    except ValueError:
        return False
    verifier = (
        PolicyBuilder()
        .store(Store(list(anchors)))
        .time(now)
        .extension_policies(
            ca_policy=ExtensionPolicy.permit_all().require_present(
                x509.BasicConstraints, Criticality.AGNOSTIC, None
            ),
            ee_policy=ExtensionPolicy.permit_all(),
        )
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, intermediates)
    except VerificationError:
        return False
    return True
