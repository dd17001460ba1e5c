"""A software security key for tests: what a browser and an authenticator would send.

It signs with a real P-256 key and encodes with cbor2 (py_webauthn's own CBOR library), so
the portal's checks (origin, relying party id, challenge, signature, counter) run for
real. The browser test uses Chromium's own virtual authenticator instead.

Its attestation is "none" (what browsers send unless asked), "self" (packed, signed with
the credential's own key, as passkeys do) or "packed" with an x5c chain: a batch
certificate for the key's model (its AAGUID, or none named) from a vendor's AttestationCA
(its root, or an intermediate CA under it), made in the test with cryptography (EC P-256),
whose root the portal is given as a vendor's would be.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

ORIGIN = "http://localhost:8000"  # the embedded default's loopback origin
RP_ID = "localhost"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# id-fido-gen-ce-aaguid (WebAuthn 8.2.1): the model a batch certificate speaks for.
FIDO_AAGUID_OID = x509.ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4")
# A model's AAGUID, as a vendor would publish it (random: no real model's).
MODEL_AAGUID = bytes.fromhex("6d44ba9b f6ec 4e3a bb0b 2d4f4a1c77e2".replace(" ", ""))


def aaguid_text(aaguid: bytes) -> str:
    """8-4-4-4-12, as the settings and py_webauthn write it."""
    text = aaguid.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _name(common_name: str, unit: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "SE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Key Vendor"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


@dataclass(frozen=True)
class Attestation:
    """What a key of one model attests with: its batch key and certificate chain (DER,
    the batch certificate first)."""

    key: ec.EllipticCurvePrivateKey
    chain: list[bytes]


class AttestationCA:
    """A key vendor's attestation root (EC P-256), made for the test; with ``issuer``, an
    intermediate CA under it (a vendor's CA for one series), whose batch certificates come
    with it in their chain."""

    def __init__(
        self, name: str = "Test Vendor Attestation Root", issuer: AttestationCA | None = None
    ) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        subject = _name(name, "Authenticator Attestation CA")
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.certificate.subject if issuer else subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(issuer.key if issuer else self.key, hashes.SHA256())
        )
        # The CA certificates a key sends after its batch certificate: none for a root's.
        self.above: list[bytes] = [self.der, *issuer.above] if issuer else []

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(Encoding.DER)

    def attestation(self, aaguid: bytes = MODEL_AAGUID, *, names_model: bool = True) -> Attestation:
        """A batch certificate for a model (WebAuthn 8.2.1: OU "Authenticator Attestation",
        not a CA, the model's AAGUID in id-fido-gen-ce-aaguid unless not ``names_model``: the
        extension is optional, and many makers' certificates go without it)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("Test Key Series", "Authenticator Attestation"))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if names_model:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(FIDO_AAGUID_OID, b"\x04\x10" + aaguid),
                critical=False,
            )
        certificate = builder.sign(self.key, hashes.SHA256())
        return Attestation(key=key, chain=[certificate.public_bytes(Encoding.DER), *self.above])


class SoftKey:
    def __init__(
        self,
        *,
        origin: str = ORIGIN,
        rp_id: str = RP_ID,
        attestation: Attestation | str = "none",
        aaguid: bytes | None = None,
    ) -> None:
        """``attestation``: "none", "self", or a model's Attestation (packed, x5c);
        ``aaguid``: the model the key says it is (zeros for "none", else MODEL_AAGUID)."""
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = secrets.token_bytes(32)
        self.count = 0
        self.origin = origin
        self.rp_id = rp_id
        self.attestation = attestation
        if aaguid is None:
            aaguid = bytes(16) if attestation == "none" else MODEL_AAGUID
        self.aaguid = aaguid

    def _client_data(self, kind: str, options: dict[str, Any], origin: str | None) -> bytes:
        data = {
            "type": kind,
            "challenge": options["challenge"],
            "origin": origin or self.origin,
            "crossOrigin": False,
        }
        return json.dumps(data).encode()

    def _cose_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps(
            {
                1: 2,
                3: -7,
                -1: 1,
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )

    def create(
        self, options: dict[str, Any], *, origin: str | None = None, rp_id: str | None = None
    ) -> dict[str, Any]:
        """navigator.credentials.create(): a new credential, with the key's attestation."""
        client_data = self._client_data("webauthn.create", options, origin)
        auth_data = (
            hashlib.sha256((rp_id or self.rp_id).encode()).digest()
            + bytes([0x45])  # user present, user verified, attested credential data
            + struct.pack(">I", self.count)
            + self.aaguid
            + struct.pack(">H", len(self.credential_id))
            + self.credential_id
            + self._cose_key()
        )
        attestation = cbor2.dumps(
            {
                "fmt": self._format(),
                "attStmt": self._statement(auth_data, client_data),
                "authData": auth_data,
            }
        )
        return {
            "id": b64url(self.credential_id),
            "rawId": b64url(self.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation),
                "transports": ["usb", "bogus"],
            },
            "clientExtensionResults": {},
        }

    def _format(self) -> str:
        return "none" if self.attestation == "none" else "packed"

    def _statement(self, auth_data: bytes, client_data: bytes) -> dict[str, Any]:
        """WebAuthn 8.2 (packed): a signature over authData and the client data's hash, by
        the batch key (with its chain, x5c) or by the credential's own key (self)."""
        if self.attestation == "none":
            return {}
        signed = auth_data + hashlib.sha256(client_data).digest()
        if self.attestation == "self":
            return {"alg": -7, "sig": self.key.sign(signed, ec.ECDSA(hashes.SHA256()))}
        if not isinstance(self.attestation, Attestation):
            raise ValueError(f"no such attestation: {self.attestation!r}")
        return {
            "alg": -7,
            "sig": self.attestation.key.sign(signed, ec.ECDSA(hashes.SHA256())),
            "x5c": self.attestation.chain,
        }

    def get(
        self,
        options: dict[str, Any],
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        count: int | None = None,
    ) -> dict[str, Any]:
        """navigator.credentials.get(): a signed assertion; the counter grows by one."""
        self.count = self.count + 1 if count is None else count
        client_data = self._client_data("webauthn.get", options, origin)
        auth_data = (
            hashlib.sha256((rp_id or self.rp_id).encode()).digest()
            + bytes([0x05])  # user present, user verified
            + struct.pack(">I", self.count)
        )
        signature = self.key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
        return {
            "id": b64url(self.credential_id),
            "rawId": b64url(self.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": None,
            },
            "clientExtensionResults": {},
        }
