"""The one narrow door to CA private keys.

Only this module loads a CA key. Callers ask it to issue or sign and get certificates,
CRLs and OCSP responses back, never key objects or key bytes. Keys are not cached between
calls: a decrypted CA key lives only for the duration of one signing operation (DESIGN.md:
never cached in the clear). The "file" backend keeps each online CA key as an encrypted
PKCS#8 PEM in PKIPORTAL_KEY_DIR; the "pkcs11" backend (keystore_pkcs11.py) keeps it in an
HSM, where it is generated and signs, and which it never leaves. The offline root is always
a file the operator hands in for one operation.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography import x509

from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from enrollment import keystore_pkcs11
from enrollment.exceptions import KeyStoreError
from enrollment.keystore_pkcs11 import KeyFacts, TokenKeySelector, selector_for

__all__ = ["KeyFacts", "TokenKeySelector", "selector_for"]  # and the functions below
from enrollment.x509 import builder, crl_fast, keys, ocsp
from enrollment.x509.errors import X509Error
from enrollment.x509.policy import CertificatePolicy
from pkiportal.secret_files import create_private_file

if TYPE_CHECKING:
    from enrollment.models import CertificateAuthority


@dataclass(frozen=True)
class OfflineKey:
    """An offline CA key file handed in by the operator for one operation (the root)."""

    path: Path
    passphrase: bytes

    def __repr__(self) -> str:  # never show the passphrase in tracebacks or logs
        return f"OfflineKey(path={str(self.path)!r})"


def _write_new_secret_file(path: Path, data: bytes) -> None:
    """Create a 0600 file in a 0700 folder; never overwrite (a lost key is unrecoverable)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        create_private_file(path, data)
    except FileExistsError as exc:
        raise KeyStoreError(f"{path} already exists; refusing to overwrite a key.") from exc


class KeyBackend(Protocol):
    """What every backend does; how a new key gets in differs (file: store, HSM: generate)."""

    name: str

    def load(self, reference: str) -> keys.PrivateKey: ...

    def discard(self, reference: str) -> None: ...


# Decrypted online CA keys of this process, keyed by file, its mtime and the passphrase's
# hash: a replaced key file or a new passphrase is read afresh. Memory of the signing
# process only, like an HSM session; never Django's cache, never disk.
_PROCESS_KEYS: dict[tuple[str, tuple[int, ...], str], keys.PrivateKey] = {}


_KEY_REFERENCE = re.compile(r"[a-z0-9][a-z0-9_.-]*\.key\.pem")


class FileKeyBackend:
    """Encrypted PKCS#8 files in PKIPORTAL_KEY_DIR, passphrase from the environment."""

    name = "file"

    @sensitive_variables("passphrase")
    def _passphrase(self) -> bytes:
        passphrase = settings.PKIPORTAL_CA_KEY_PASSPHRASE
        if not passphrase:
            embedded = Path(settings.PKIPORTAL_EMBEDDED_PASSPHRASE_FILE)
            if embedded.exists():
                passphrase = embedded.read_text().strip()
        if not passphrase:
            raise KeyStoreError(
                "No CA key passphrase is configured: set PKIPORTAL_CA_KEY_PASSPHRASE "
                "or PKIPORTAL_CA_KEY_PASSPHRASE_FILE."
            )
        return passphrase.encode()

    def _path(self, reference: str) -> Path:
        return Path(self._file(reference))

    def _file(self, reference: str) -> str:
        """The key file's path as text: a pathlib.Path for each signature was a fifth of
        looking the key up."""
        if not _KEY_REFERENCE.fullmatch(reference):
            raise KeyStoreError(f"Invalid key reference {reference!r}.")
        return os.path.join(settings.PKIPORTAL_KEY_DIR, reference)

    # The passphrase stays out of error reports, here and in the frames below (keys holds it
    # under names of its own, and Django applies the nearest decorated caller's list).
    @sensitive_variables()
    def store(self, *, label: str, key: keys.PrivateKey) -> str:
        reference = f"{label}.key.pem"
        path = self._path(reference)
        _write_new_secret_file(path, keys.encrypt_private_key_pem(key, self._passphrase()))
        return reference

    def discard(self, reference: str) -> None:
        """Remove a key that never got a CA row (a failed create_pki)."""
        self._path(reference).unlink(missing_ok=True)

    @sensitive_variables()  # as store
    def load(self, reference: str) -> keys.PrivateKey:
        path = self._file(reference)
        passphrase = self._passphrase()
        try:
            found = os.stat(path)
            # The file's identity, not only its mtime: a key written again within the
            # clock's granularity (a few ms) keeps its mtime, and must not be taken for
            # the one cached before it.
            stamp = (
                found.st_dev,
                found.st_ino,
                found.st_size,
                found.st_mtime_ns,
                found.st_ctime_ns,
            )
            cache_key = (path, stamp, hashlib.sha256(passphrase).hexdigest())
            if settings.PKIPORTAL_CA_KEY_PROCESS_CACHE and cache_key in _PROCESS_KEYS:
                return _PROCESS_KEYS[cache_key]
            with open(path, "rb") as file:
                data = file.read()
        except OSError as exc:
            raise KeyStoreError(f"The CA key file {path} cannot be read.") from exc
        try:
            key = keys.load_private_key_pem(data, passphrase)
        except X509Error as exc:
            raise KeyStoreError(f"The CA key {path} cannot be opened: {exc.message}") from exc
        if settings.PKIPORTAL_CA_KEY_PROCESS_CACHE:
            _PROCESS_KEYS[cache_key] = key
        return key


_BACKENDS: dict[str, type[FileKeyBackend] | type[keystore_pkcs11.Pkcs11KeyBackend]] = {
    "file": FileKeyBackend,
    keystore_pkcs11.NAME: keystore_pkcs11.Pkcs11KeyBackend,
}


def _backend(name: str | None = None) -> FileKeyBackend | keystore_pkcs11.Pkcs11KeyBackend:
    name = name or settings.PKIPORTAL_KEY_BACKEND
    try:
        return _BACKENDS[name]()
    except KeyError:
        raise KeyStoreError(f"Unknown key backend {name!r}.") from None


def discard_key(backend: str, reference: str) -> None:
    """Forget a freshly stored key whose CA row was rolled back."""
    _backend(backend).discard(reference)


def _ca_key(ca: CertificateAuthority) -> keys.PrivateKey:
    if not ca.is_online or not ca.key_reference:
        raise KeyStoreError(f"{ca.name} is offline: its key is not on this server.")
    key = _backend(ca.key_backend).load(ca.key_reference)
    if _is_token_key(key) and key.public_key() != ca.certificate.public_key():
        # A token key verifies each signature with its public key (keystore_pkcs11): that
        # must be the certificate's, or a certificate's signature could fail relying parties.
        raise keystore_pkcs11.TokenSignatureInvalid()
    return key


def _is_token_key(key: keys.PrivateKey) -> bool:
    return isinstance(key, keystore_pkcs11.TokenEcKey | keystore_pkcs11.TokenRsaKey)


@sensitive_variables()  # as FileKeyBackend.store
def _offline_key(offline: OfflineKey) -> keys.PrivateKey:
    try:
        data = Path(offline.path).read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"The key file {offline.path} cannot be read.") from exc
    try:
        return keys.load_private_key_pem(data, offline.passphrase)
    except X509Error as exc:
        raise KeyStoreError(f"The key file {offline.path} cannot be opened: {exc.message}") from exc


def _check_pair(certificate: x509.Certificate, key: keys.PrivateKey) -> None:
    if certificate.public_key() != key.public_key():
        raise KeyStoreError("The key does not belong to this CA's certificate.")
    if _is_token_key(key):
        # The public half came from an object beside the key: prove the key itself.
        keystore_pkcs11.check_pair(key, certificate.public_key())


# --- creating keys --------------------------------------------------------------------


@sensitive_variables()  # as FileKeyBackend.store
def create_root(
    *,
    algorithm: keys.KeyAlgorithm,
    key_path: Path,
    passphrase: bytes,
    common_name: str,
    organization_name: str,
    country_name: str,
    validity_days: int,
) -> x509.Certificate:
    """Generate the root key, write it encrypted to the operator's path, return the cert.

    The root key is never registered with a backend: the portal runs without it.
    """
    key = keys.generate_private_key(algorithm)
    certificate = builder.build_root_ca(
        key=key,
        common_name=common_name,
        organization_name=organization_name,
        country_name=country_name,
        validity_days=validity_days,
    )
    _write_new_secret_file(Path(key_path), keys.encrypt_private_key_pem(key, passphrase))
    return certificate


def create_issuing(
    *,
    label: str,
    algorithm: keys.KeyAlgorithm,
    root: CertificateAuthority,
    root_key: OfflineKey,
    common_name: str,
    organization_name: str,
    country_name: str,
    validity_days: int,
    mail_domains: Sequence[str] = (),
    existing_key: TokenKeySelector | None = None,
    allow_extractable_key: bool = False,
) -> tuple[x509.Certificate, str, str]:
    """Generate an online CA key in the backend (or take ``existing_key``, one the operator
    made in the HSM; one that can leave it only with ``allow_extractable_key``) and have
    the offline root certify it, name-constrained to ``mail_domains`` when given.

    Returns the certificate, the backend name and the key reference.
    """
    issuer_key = _offline_key(root_key)
    _check_pair(root.certificate, issuer_key)
    backend = _backend()

    def certify(public_key: keys.PublicKey) -> x509.Certificate:
        return builder.build_issuing_ca(
            public_key=public_key,
            issuer_certificate=root.certificate,
            issuer_key=issuer_key,
            common_name=common_name,
            organization_name=organization_name,
            country_name=country_name,
            validity_days=validity_days,
            crl_url=root.crl_url,
            ca_issuers_url=root.ca_issuers_url,
            # The portal's OCSP responder signs with this key (S/MIME BR 7.1.2.2 e).
            sign_ocsp=True,
            mail_domains=mail_domains,
        )

    if isinstance(backend, keystore_pkcs11.Pkcs11KeyBackend):
        if existing_key is not None:
            reference, token_key = backend.adopt(
                existing_key, allow_extractable=allow_extractable_key
            )
        else:
            reference, token_key = backend.generate(label=label, algorithm=algorithm)
        try:
            # The token signs a challenge its public key verifies before the root certifies
            # that public key: the root never vouches for a key the token does not hold.
            keystore_pkcs11.check_pair(token_key, token_key.public_key())
            certificate = certify(token_key.public_key())
        except BaseException:
            backend.discard(reference)  # only a key generated just now
            raise
        return certificate, backend.name, reference
    if existing_key is not None:
        raise KeyStoreError(
            "An existing HSM key can be used only with PKIPORTAL_KEY_BACKEND=pkcs11."
        )
    key = keys.generate_private_key(algorithm)
    certificate = certify(key.public_key())
    reference = backend.store(label=label, key=key)
    return certificate, backend.name, reference


# --- signing --------------------------------------------------------------------------


def issue_end_entity(
    ca: CertificateAuthority,
    *,
    public_key: keys.PublicKey,
    subject: builder.Subject,
    policy: CertificatePolicy,
) -> x509.Certificate:
    """Have an online CA issue an S/MIME certificate."""
    issuer_key = _ca_key(ca)
    return builder.build_end_entity(
        public_key=public_key,
        subject=subject,
        issuer_certificate=ca.certificate,
        issuer_key=issuer_key,
        policy=policy,
        crl_url=ca.crl_url,
        ca_issuers_url=ca.ca_issuers_url,
        ocsp_url=ca.ocsp_url or None,
    )


def sign_ocsp_response(
    ca: CertificateAuthority,
    *,
    cert_id: ocsp.CertId,
    status: ocsp.CertificateStatus,
    this_update: datetime,
    next_update: datetime,
    nonce: bytes | None = None,
) -> bytes:
    """Have an online CA sign its own OCSP response about one of its serials; DER.

    Takes the answer, not bytes to sign: the response is built here from the CA's own
    certificate, so this door signs nothing but an OCSP response.
    """
    return ocsp.build_response(
        issuer_certificate=ca.certificate,
        issuer_key=_ca_key(ca),
        cert_id=cert_id,
        status=status,
        this_update=this_update,
        next_update=next_update,
        nonce=nonce,
    )


class CrlSign(Protocol):
    def __call__(
        self, *, revoked: bytes, crl_number: int, this_update: datetime, next_update: datetime
    ) -> bytes: ...


def crl_signer(ca: CertificateAuthority, *, offline_key: OfflineKey | None = None) -> CrlSign:
    """Open the CA key now; the returned function signs one CRL with it (see sign_crl_der).

    A publisher opens the key before it reads every revoked entry (0.4 s, ~220 MB at a
    million), so a key that cannot be opened costs nothing else. The key stays in here.
    """
    if offline_key is not None:
        issuer_key = _offline_key(offline_key)
        _check_pair(ca.certificate, issuer_key)
    else:
        issuer_key = _ca_key(ca)

    def sign(
        *, revoked: bytes, crl_number: int, this_update: datetime, next_update: datetime
    ) -> bytes:
        return crl_fast.sign_crl(
            issuer_certificate=ca.certificate,
            issuer_key=issuer_key,
            revoked=revoked,
            crl_number=crl_number,
            this_update=this_update,
            next_update=next_update,
        )

    return sign


def sign_crl_der(
    ca: CertificateAuthority,
    *,
    revoked: bytes,
    crl_number: int,
    this_update: datetime,
    next_update: datetime,
    offline_key: OfflineKey | None = None,
) -> bytes:
    """Sign a CRL assembled from stored entry DER (crl_fast); returns the CRL in DER.

    Takes the entries, not a TBS to sign: the TBSCertList is built here from the CA's own
    certificate, so this door cannot be used to have the CA sign anything but a CRL.
    """
    return crl_signer(ca, offline_key=offline_key)(
        revoked=revoked, crl_number=crl_number, this_update=this_update, next_update=next_update
    )


def ensure_embedded_passphrase() -> bool:
    """Write a random CA key passphrase for the embedded default if none is configured."""
    if settings.PKIPORTAL_CA_KEY_PASSPHRASE:
        return False
    path = Path(settings.PKIPORTAL_EMBEDDED_PASSPHRASE_FILE)
    if path.exists():
        return False
    _write_new_secret_file(path, secrets.token_urlsafe(32).encode())
    return True


# How long /health/'s check waits while another thread is in the HSM.
HEALTH_WAIT_SECONDS = keystore_pkcs11.HEALTH_WAIT_SECONDS


def check_ca_key(ca: CertificateAuthority, *, patience: float | None = None) -> None:
    """Raise KeyStoreError unless the online CA's key loads and matches its certificate
    (an HSM key: the token is reachable, logged in, and signs a challenge with it).
    ``patience``: seconds to wait for an HSM busy with another call (default: signing's)."""
    with keystore_pkcs11.waiting_at_most(patience or keystore_pkcs11.SIGN_WAIT_SECONDS):
        _check_pair(ca.certificate, _ca_key(ca))


def ca_key_facts(ca: CertificateAuthority) -> KeyFacts | None:
    """What the HSM says of an online CA's key (private, sensitive, extractable, made in
    the token), None for files."""
    if ca.key_backend != keystore_pkcs11.NAME or not ca.key_reference:
        return None
    return keystore_pkcs11.Pkcs11KeyBackend().facts(ca.key_reference)
