"""Key generation, description and (de)serialisation for the key types we issue to."""

from __future__ import annotations

import enum
from typing import TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519

from .errors import X509Error, gettext_noop

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
# The hashes we sign with; narrower than HashAlgorithm so builders' sign() accepts them.
SignatureHash: TypeAlias = hashes.SHA256 | hashes.SHA384 | hashes.SHA512

RSA_PUBLIC_EXPONENT = 65537
MIN_RSA_KEY_SIZE = 2048

# S/MIME BR 6.1.5: NIST P-256, P-384 and P-521 are the only permitted curves.
ACCEPTED_CURVES: dict[str, str] = {
    "secp256r1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
}


class KeyAlgorithm(enum.StrEnum):
    """Key types a template may allow and the server may generate."""

    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"

    @property
    def label(self) -> str:
        """Human label, e.g. "RSA 2048" or "EC P-256"."""
        return _LABELS[self]

    @property
    def is_rsa(self) -> bool:
        return self in _RSA_SIZES

    @property
    def rsa_key_size(self) -> int | None:
        return _RSA_SIZES.get(self)

    @property
    def curve(self) -> ec.EllipticCurve | None:
        """The curve for EC algorithms (a fresh instance), None for RSA."""
        curve_type = _CURVES.get(self)
        return curve_type() if curve_type is not None else None


_LABELS = {
    KeyAlgorithm.RSA_2048: "RSA 2048",
    KeyAlgorithm.RSA_3072: "RSA 3072",
    KeyAlgorithm.RSA_4096: "RSA 4096",
    KeyAlgorithm.EC_P256: "EC P-256",
    KeyAlgorithm.EC_P384: "EC P-384",
}
_RSA_SIZES = {
    KeyAlgorithm.RSA_2048: 2048,
    KeyAlgorithm.RSA_3072: 3072,
    KeyAlgorithm.RSA_4096: 4096,
}
_CURVES: dict[KeyAlgorithm, type[ec.EllipticCurve]] = {
    KeyAlgorithm.EC_P256: ec.SECP256R1,
    KeyAlgorithm.EC_P384: ec.SECP384R1,
}


def generate_private_key(algorithm: KeyAlgorithm) -> PrivateKey:
    """Generate a fresh key; RSA always uses e=65537 (S/MIME BR 6.1.6)."""
    rsa_size = algorithm.rsa_key_size
    if rsa_size is not None:
        return rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=rsa_size)
    curve = algorithm.curve
    assert curve is not None
    return ec.generate_private_key(curve)


def key_algorithm_of(public_key: object) -> KeyAlgorithm | None:
    """The KeyAlgorithm a key belongs to, or None (e.g. P-521, RSA 2560, Ed25519)."""
    if isinstance(public_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        public_key = public_key.public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.public_numbers().e != RSA_PUBLIC_EXPONENT:
            return None
        for algorithm, size in _RSA_SIZES.items():
            if public_key.key_size == size:
                return algorithm
        return None
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        for algorithm, curve_type in _CURVES.items():
            if isinstance(public_key.curve, curve_type):
                return algorithm
    return None


def describe_public_key(public_key: object) -> str:
    """A short user-facing description of any key: "RSA 3072", "EC P-521", "Ed25519"."""
    if isinstance(public_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        public_key = public_key.public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        name = public_key.curve.name
        return f"EC {ACCEPTED_CURVES.get(name, name)}"
    if isinstance(public_key, dsa.DSAPublicKey):
        return f"DSA {public_key.key_size}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(public_key, x25519.X25519PublicKey):
        return "X25519"
    if isinstance(public_key, x448.X448PublicKey):
        return "X448"
    return "an unknown key type"


def public_key_refusal(public_key: object) -> X509Error | None:
    """Why a key may not be certified (S/MIME BR 6.1.5, 6.1.6), or None if it may: an
    X509Error whose msgid and params a caller raises again as its own kind of error, so the
    refusal reaches the requester in their language."""
    if isinstance(public_key, rsa.RSAPublicKey):
        size = public_key.key_size
        if size < MIN_RSA_KEY_SIZE:
            return X509Error(
                gettext_noop(
                    "RSA keys must be at least %(minimum)d bits; this key has %(size)d bits."
                ),
                minimum=MIN_RSA_KEY_SIZE,
                size=size,
            )
        if size % 8:
            return X509Error(
                gettext_noop(
                    "RSA key sizes must be a multiple of 8 bits; this key has %(size)d bits."
                ),
                size=size,
            )
        exponent = public_key.public_numbers().e
        if exponent != RSA_PUBLIC_EXPONENT:
            return X509Error(
                gettext_noop(
                    "RSA keys must use the public exponent %(expected)d; this key uses %(found)d."
                ),
                expected=RSA_PUBLIC_EXPONENT,
                found=exponent,
            )
        return None
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        name = public_key.curve.name
        if name not in ACCEPTED_CURVES:
            return X509Error(
                gettext_noop(
                    "EC keys must use one of the curves P-256, P-384 or P-521; "
                    "this key uses %(curve)s."
                ),
                curve=name,
            )
        return None
    return X509Error(
        gettext_noop("%(key)s keys are not supported; use RSA or EC (P-256/P-384)."),
        key=describe_public_key(public_key),
    )


def public_key_problem(public_key: object) -> str | None:
    """Why a key may not be certified (S/MIME BR 6.1.5, 6.1.6), in English, or None."""
    refusal = public_key_refusal(public_key)
    return refusal.message if refusal is not None else None


def spki_sha256(public_key: PublicKey) -> str:
    """SHA-256 of the key's SubjectPublicKeyInfo in DER, as lowercase hex: the key's
    identity whatever certificate or CSR carries it. Re-encoded from the key, so a
    compressed and an uncompressed EC point (or any other spelling) give the same value."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return digest.finalize().hex()


def signature_hash_for(key: PrivateKey | PublicKey) -> SignatureHash:
    """The hash a CA key signs with, matched to its strength (S/MIME BR 7.1.3.2)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if key.curve.key_size >= 521:
            return hashes.SHA512()
        if key.curve.key_size >= 384:
            return hashes.SHA384()
    return hashes.SHA256()


def encrypt_private_key_pem(key: PrivateKey, passphrase: bytes) -> bytes:
    """PKCS#8 PEM under the best encryption cryptography offers; never returns clear keys."""
    if not passphrase:
        raise X509Error(gettext_noop("A passphrase is required to encrypt a private key."))
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.BestAvailableEncryption(passphrase),
    )


def load_private_key_pem(data: bytes, passphrase: bytes | None) -> PrivateKey:
    """Load an RSA or EC private key from PEM, mapping every failure to an X509Error."""
    return _load_private_key(data, passphrase, der=False)


def load_private_key(data: bytes, passphrase: bytes | None) -> PrivateKey:
    """An RSA or EC private key from PEM or DER (PKCS#8, encrypted or not, or the
    traditional forms), as `openssl pkey` and `openssl cms -decrypt` write them."""
    return _load_private_key(data, passphrase, der=b"-----BEGIN" not in data)


def _load_private_key(data: bytes, passphrase: bytes | None, *, der: bool) -> PrivateKey:
    form = "DER" if der else "PEM"
    load = serialization.load_der_private_key if der else serialization.load_pem_private_key
    try:
        key = load(data, password=passphrase)
    except TypeError as exc:
        if passphrase is None:
            raise X509Error(
                gettext_noop("The private key is encrypted; a passphrase is required.")
            ) from exc
        raise X509Error(
            gettext_noop("The private key is not encrypted; do not give a passphrase.")
        ) from exc
    except ValueError as exc:
        if passphrase is not None:
            raise X509Error(
                gettext_noop(
                    "The private key could not be decrypted: wrong passphrase or damaged file."
                )
            ) from exc
        raise X509Error(
            gettext_noop("The data is not a readable %(form)s private key."), form=form
        ) from exc
    except UnsupportedAlgorithm as exc:
        raise X509Error(gettext_noop("The private key uses an unsupported algorithm.")) from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise X509Error(
            gettext_noop("%(key)s private keys are not supported; use RSA or EC."),
            key=describe_public_key(key.public_key()),
        )
    return key
