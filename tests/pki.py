"""A throwaway PKI for tests, built once per session with enrollment.x509 (no database).

Loaded as a pytest plugin (``pytest_plugins = ["tests.pki"]``): EC keys for the CAs, one
key per algorithm shared by every end entity, and an ``openssl`` helper for interop tests.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from enrollment.x509.builder import Subject, build_end_entity, build_issuing_ca, build_root_ca
from enrollment.x509.keys import KeyAlgorithm, PrivateKey, generate_private_key
from enrollment.x509.policy import CertificatePolicy, Generation, Purpose

__all__ = [
    "ACCEPTED_ORGANIZATION_IDENTIFIERS",
    "ALICE",
    "BASE_URL",
    "CA",
    "COUNTRY",
    "LOOPBACK_BASE_URL",
    "ORGANIZATION",
    "ORGANIZATION_IDENTIFIER",
    "CertifiedKey",
    "Hierarchy",
    "KeyPool",
    "MakeEndEntity",
    "OpenSSL",
    "ec_p256_key",
    "ec_p384_key",
    "issuing_ca",
    "key_pool",
    "loopback_hierarchy",
    "make_end_entity",
    "make_hierarchy",
    "openssl",
    "pki",
    "recovery_agent",
    "root_ca",
    "rsa_2048_key",
    "rsa_issuing_ca",
    "subject_for",
]

# Public-looking URLs for pkilint; the loopback variant shows what a dev install embeds.
BASE_URL = "http://pki.example.com"
LOOPBACK_BASE_URL = "http://127.0.0.1:8000"
ORGANIZATION = "Example Org"
COUNTRY = "GB"
ORGANIZATION_IDENTIFIER = "NTRGB-12345678"
# S/MIME BR 7.1.4.2.2 (d) and Appendix A: NTR, VAT, PSD, LEI, plus GOV and INT (note 2).
ACCEPTED_ORGANIZATION_IDENTIFIERS = [
    "NTRGB-12345678",
    "NTRUS+CA-C1234567",  # a state register: a "+" subdivision, NTR and GOV only
    "VATGB-123456789",
    "PSDGB-FCA-123456",
    "LEIXG-5493001KJTIIGC8Y1R12",
    "GOVGB",
    "GOVGB+ENG",
    "INTXG",
]


def subject_for(
    given_name: str = "Alice",
    surname: str = "Example",
    *emails: str,
    include_email_in_subject: bool = False,
) -> Subject:
    """A sponsor-validated subject for a person at Example Org."""
    addresses = emails or (f"{given_name.lower()}@example.com",)
    return Subject(
        common_name=f"{given_name} {surname}",
        given_name=given_name,
        surname=surname,
        organization_name=ORGANIZATION,
        organization_identifier=ORGANIZATION_IDENTIFIER,
        country_name=COUNTRY,
        email_addresses=addresses,
        include_email_in_subject=include_email_in_subject,
    )


ALICE = subject_for()


class CertifiedKey(NamedTuple):
    certificate: x509.Certificate
    key: PrivateKey


class CA(NamedTuple):
    """A CA's certificate and key, plus the repository URLs it publishes under."""

    certificate: x509.Certificate
    key: PrivateKey
    slug: str
    base_url: str

    @property
    def crl_url(self) -> str:
        return f"{self.base_url}/pki/{self.slug}.crl"

    @property
    def certificate_url(self) -> str:
        return f"{self.base_url}/pki/{self.slug}.crt"

    @property
    def ocsp_url(self) -> str:
        return f"{self.base_url}/pki/ocsp/"


class Hierarchy(NamedTuple):
    root: CA
    issuing: CA


@dataclass
class KeyPool:
    """One key per (algorithm, slot), generated on first use; RSA keygen is the slow part."""

    _keys: dict[tuple[KeyAlgorithm, int], PrivateKey] = field(default_factory=dict)

    def get(self, algorithm: KeyAlgorithm, slot: int = 0) -> PrivateKey:
        if (algorithm, slot) not in self._keys:
            self._keys[algorithm, slot] = generate_private_key(algorithm)
        return self._keys[algorithm, slot]


@pytest.fixture(scope="session")
def key_pool() -> KeyPool:
    return KeyPool()


@pytest.fixture(scope="session")
def rsa_2048_key(key_pool: KeyPool) -> PrivateKey:
    return key_pool.get(KeyAlgorithm.RSA_2048)


@pytest.fixture(scope="session")
def ec_p256_key(key_pool: KeyPool) -> PrivateKey:
    return key_pool.get(KeyAlgorithm.EC_P256)


@pytest.fixture(scope="session")
def ec_p384_key(key_pool: KeyPool) -> PrivateKey:
    return key_pool.get(KeyAlgorithm.EC_P384)


def _build_hierarchy(base_url: str, root_key: PrivateKey, issuing_key: PrivateKey) -> Hierarchy:
    # Start a minute back so certificates built "now" in tests fall inside the CA validity.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    root_certificate = build_root_ca(
        key=root_key,
        common_name="pkiportal Test Root CA",
        organization_name=ORGANIZATION,
        country_name=COUNTRY,
        not_before=start,
    )
    root = CA(root_certificate, root_key, "test-root", base_url)
    issuing_certificate = build_issuing_ca(
        public_key=issuing_key.public_key(),
        issuer_certificate=root_certificate,
        issuer_key=root_key,
        common_name="pkiportal Test Issuing CA",
        organization_name=ORGANIZATION,
        country_name=COUNTRY,
        crl_url=root.crl_url,
        ca_issuers_url=root.certificate_url,
        not_before=start,
        sign_ocsp=True,  # as create_pki makes it: the issuing CA signs OCSP responses
    )
    return Hierarchy(root, CA(issuing_certificate, issuing_key, "test-issuing", base_url))


@pytest.fixture(scope="session")
def make_hierarchy(key_pool: KeyPool) -> Callable[[str], Hierarchy]:
    """Root (EC P-384) and issuing CA (EC P-256) for a base URL, built once per URL."""
    built: dict[str, Hierarchy] = {}

    def make(base_url: str = BASE_URL) -> Hierarchy:
        if base_url not in built:
            built[base_url] = _build_hierarchy(
                base_url,
                key_pool.get(KeyAlgorithm.EC_P384, slot=100),
                key_pool.get(KeyAlgorithm.EC_P256, slot=100),
            )
        return built[base_url]

    return make


@pytest.fixture(scope="session")
def pki(make_hierarchy: Callable[[str], Hierarchy]) -> Hierarchy:
    return make_hierarchy(BASE_URL)


@pytest.fixture(scope="session")
def loopback_hierarchy(make_hierarchy: Callable[[str], Hierarchy]) -> Hierarchy:
    return make_hierarchy(LOOPBACK_BASE_URL)


@pytest.fixture(scope="session")
def root_ca(pki: Hierarchy) -> CA:
    return pki.root


@pytest.fixture(scope="session")
def issuing_ca(pki: Hierarchy) -> CA:
    return pki.issuing


@pytest.fixture(scope="session")
def rsa_issuing_ca(root_ca: CA, key_pool: KeyPool) -> CA:
    """An RSA 2048 issuing CA under the same root, for RSA-signed subscriber certificates."""
    key = key_pool.get(KeyAlgorithm.RSA_2048, slot=100)
    certificate = build_issuing_ca(
        public_key=key.public_key(),
        issuer_certificate=root_ca.certificate,
        issuer_key=root_ca.key,
        common_name="pkiportal Test RSA Issuing CA",
        organization_name=ORGANIZATION,
        country_name=COUNTRY,
        crl_url=root_ca.crl_url,
        ca_issuers_url=root_ca.certificate_url,
        not_before=root_ca.certificate.not_valid_before_utc,
        sign_ocsp=True,
    )
    return CA(certificate, key, "test-rsa-issuing", root_ca.base_url)


class MakeEndEntity:
    """Callable factory: ``make_end_entity(purpose, key_algorithm, generation, ...)``."""

    def __init__(self, pki: Hierarchy, key_pool: KeyPool) -> None:
        self._pki = pki
        self._key_pool = key_pool

    def __call__(
        self,
        purpose: Purpose = Purpose.DUAL_USE,
        key_algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256,
        generation: Generation = Generation.STRICT,
        *,
        issuer: CA | None = None,
        subject: Subject = ALICE,
        key: PrivateKey | None = None,
        not_before: datetime | None = None,
        serial: int | None = None,
        **policy_options: Any,
    ) -> CertifiedKey:
        issuer = issuer or self._pki.issuing
        key = key or self._key_pool.get(key_algorithm)
        policy = CertificatePolicy(purpose=purpose, generation=generation, **policy_options)
        certificate = build_end_entity(
            public_key=key.public_key(),
            subject=subject,
            issuer_certificate=issuer.certificate,
            issuer_key=issuer.key,
            policy=policy,
            crl_url=issuer.crl_url,
            ca_issuers_url=issuer.certificate_url,
            not_before=not_before,
            serial=serial,
        )
        return CertifiedKey(certificate, key)


@pytest.fixture(scope="session")
def make_end_entity(pki: Hierarchy, key_pool: KeyPool) -> MakeEndEntity:
    return MakeEndEntity(pki, key_pool)


@pytest.fixture(scope="session")
def recovery_agent(make_end_entity: MakeEndEntity, key_pool: KeyPool) -> CertifiedKey:
    """A key recovery agent (KRA): RSA 2048 encryption certificate from the issuing CA.

    Not called ``kra``: tests/conftest.py uses that name for the KRA role on the database.
    """
    return make_end_entity(
        Purpose.ENCRYPTION,
        key=key_pool.get(KeyAlgorithm.RSA_2048, slot=200),
        subject=subject_for("Kim", "Recovery", "kra@example.com"),
    )


class OpenSSL:
    """Runs the real openssl CLI in a private directory; files are written there first."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / name

    def write(self, name: str, data: bytes) -> Path:
        target = self.path(name)
        target.write_bytes(data)
        return target

    def write_pem(self, name: str, *certificates: x509.Certificate) -> Path:
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)
        return self.write(name, pem)

    def write_der(self, name: str, certificate: x509.Certificate) -> Path:
        return self.write(name, certificate.public_bytes(serialization.Encoding.DER))

    def write_crl(self, name: str, crl: x509.CertificateRevocationList) -> Path:
        return self.write(name, crl.public_bytes(serialization.Encoding.PEM))

    def write_key(self, name: str, key: PrivateKey) -> Path:
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return self.write(name, pem)

    def run(
        self, *args: str | Path, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """``openssl *args``; with ``check`` a failure raises showing openssl's stderr."""
        return run_tool(["openssl", *args], cwd=self.directory, input=input, check=check)


def run_tool(
    argv: list[str | Path],
    *,
    cwd: Path,
    input: bytes | None = None,
    check: bool = True,
    text: bool = False,
) -> subprocess.CompletedProcess[Any]:
    """A command-line tool (openssl, NSS's, gpgsm), bounded in time; with ``check`` a
    failure raises showing what it printed."""
    result = subprocess.run(
        [str(part) for part in argv],
        cwd=cwd,
        input=input,
        capture_output=True,
        text=text,
        timeout=60,
        check=False,
    )
    if check and result.returncode != 0:
        printed = [
            out if text else out.decode(errors="replace") for out in (result.stdout, result.stderr)
        ]
        raise AssertionError(
            f"{' '.join(map(str, argv))} failed ({result.returncode}):\n" + "".join(printed)
        )
    return result


@pytest.fixture
def openssl(tmp_path: Path) -> OpenSSL:
    return OpenSSL(tmp_path)
