"""What a certificate template allows: purpose, generation, key types, validity and EKUs.

Key usage and extended key usage follow S/MIME BR 7.1.2.3 (e) and (f); the policy
identifiers are those S/MIME BR 7.1.6.1 reserves: sponsor-validated for people, and
organization-validated for the organisation's shared mailboxes (see CertificateType).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import CertificatePoliciesOID, ExtendedKeyUsageOID

from .errors import PolicyError, gettext_noop
from .keys import KeyAlgorithm, key_algorithm_of

SPONSOR_VALIDATED_LEGACY = x509.ObjectIdentifier("2.23.140.1.5.3.1")
SPONSOR_VALIDATED_MULTIPURPOSE = x509.ObjectIdentifier("2.23.140.1.5.3.2")
SPONSOR_VALIDATED_STRICT = x509.ObjectIdentifier("2.23.140.1.5.3.3")
ORGANIZATION_VALIDATED_MULTIPURPOSE = x509.ObjectIdentifier("2.23.140.1.5.2.2")
ORGANIZATION_VALIDATED_STRICT = x509.ObjectIdentifier("2.23.140.1.5.2.3")

# The CA/B Forum S/MIME arc; a CA's own policy OID must not hide in it (S/MIME BR 7.1.6.1).
SMIME_BR_POLICY_ARC = "2.23.140.1.5."

MAX_VALIDITY_DAYS = 825  # S/MIME BR 6.3.2, strict and multipurpose generations.

ALL_KEY_ALGORITHMS: frozenset[KeyAlgorithm] = frozenset(KeyAlgorithm)

# S/MIME BR 7.1.2.3 (f) forbids these in every generation; OCSPSigning has no place in a
# subscriber certificate either (RFC 6960 4.2.2.2 delegates it to responders only).
FORBIDDEN_EKUS: frozenset[x509.ObjectIdentifier] = frozenset(
    {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CODE_SIGNING,
        ExtendedKeyUsageOID.TIME_STAMPING,
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
        ExtendedKeyUsageOID.OCSP_SIGNING,
    }
)


class Purpose(enum.StrEnum):
    """What the key is for; decides key usage (S/MIME BR 7.1.2.3 (e))."""

    SIGNING = "signing"
    ENCRYPTION = "encryption"
    DUAL_USE = "dual_use"

    @property
    def signs(self) -> bool:
        return self is not Purpose.ENCRYPTION

    @property
    def encrypts(self) -> bool:
        return self is not Purpose.SIGNING


class Generation(enum.StrEnum):
    """S/MIME BR profile generation; legacy is no longer issuable (S/MIME BR 7.1.6.1)."""

    STRICT = "strict"
    MULTIPURPOSE = "multipurpose"


class CertificateType(enum.StrEnum):
    """Whose identity the subject carries (S/MIME BR 1.2, 7.1.4.2.3 to 7.1.4.2.6).

    A person of the organisation is sponsor-validated: their name plus the organisation.
    A shared (functional) mailbox such as finance@ has no natural person behind it: the
    organisation itself is the subject, so it is organization-validated (7.1.4.2.4:
    organizationName and organizationIdentifier SHALL, givenName/surname/pseudonym SHALL
    NOT, commonName only the organisation's name or the mailbox address, 7.1.4.2.2 a).
    Mailbox-validated (7.1.4.2.3) would forbid naming the organisation at all, so a
    partner could not tell whose finance@ it is; an Enterprise RA may validate both types
    for its own domains (1.3.2.1), as it does sponsor-validated ones.
    """

    SPONSOR_VALIDATED = "sponsor"
    ORGANIZATION_VALIDATED = "organization"


RESERVED_POLICY_OIDS: dict[tuple[CertificateType, Generation], x509.ObjectIdentifier] = {
    (CertificateType.SPONSOR_VALIDATED, Generation.STRICT): SPONSOR_VALIDATED_STRICT,
    (CertificateType.SPONSOR_VALIDATED, Generation.MULTIPURPOSE): SPONSOR_VALIDATED_MULTIPURPOSE,
    (CertificateType.ORGANIZATION_VALIDATED, Generation.STRICT): ORGANIZATION_VALIDATED_STRICT,
    (
        CertificateType.ORGANIZATION_VALIDATED,
        Generation.MULTIPURPOSE,
    ): ORGANIZATION_VALIDATED_MULTIPURPOSE,
}


def check_extra_ekus(ekus: frozenset[x509.ObjectIdentifier]) -> None:
    """Reject EKUs the S/MIME BR forbids next to emailProtection (7.1.2.2 (g), 7.1.2.3 (f))."""
    forbidden = sorted(eku.dotted_string for eku in ekus & FORBIDDEN_EKUS)
    if forbidden:
        names = ", ".join(eku_name(x509.ObjectIdentifier(oid)) for oid in forbidden)
        raise PolicyError(
            gettext_noop("S/MIME certificates may not carry the extended key usage %(ekus)s."),
            ekus=names,
        )


_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
}


def eku_name(oid: x509.ObjectIdentifier) -> str:
    """The RFC 5280 name of a well-known EKU, else its dotted OID."""
    return _EKU_NAMES.get(oid, oid.dotted_string)


@dataclass(frozen=True)
class CertificatePolicy:
    """The profile a template issues under; invalid combinations fail at construction."""

    purpose: Purpose
    generation: Generation = Generation.STRICT
    validity_days: int = 365
    allowed_key_algorithms: frozenset[KeyAlgorithm] = ALL_KEY_ALGORITHMS
    organization_policy_oid: str | None = None
    extra_ekus: frozenset[x509.ObjectIdentifier] = field(default_factory=frozenset)
    certificate_type: CertificateType = CertificateType.SPONSOR_VALIDATED

    def __post_init__(self) -> None:
        if not isinstance(self.purpose, Purpose):
            raise PolicyError(f"Unknown certificate purpose {self.purpose!r}.")
        if not isinstance(self.certificate_type, CertificateType):
            raise PolicyError(f"Unknown S/MIME certificate type {self.certificate_type!r}.")
        if not isinstance(self.generation, Generation):
            raise PolicyError(f"Unknown S/MIME generation {self.generation!r}.")
        if isinstance(self.validity_days, bool) or not isinstance(self.validity_days, int):
            raise PolicyError(gettext_noop("The validity must be a whole number of days."))
        if not 1 <= self.validity_days <= MAX_VALIDITY_DAYS:
            raise PolicyError(
                gettext_noop(
                    "The validity must be between 1 and %(maximum)d days (S/MIME BR 6.3.2); "
                    "got %(days)d."
                ),
                maximum=MAX_VALIDITY_DAYS,
                days=self.validity_days,
            )
        if not self.allowed_key_algorithms:
            raise PolicyError(gettext_noop("A template must allow at least one key algorithm."))
        if not all(isinstance(a, KeyAlgorithm) for a in self.allowed_key_algorithms):
            raise PolicyError("Allowed key algorithms must be KeyAlgorithm values.")
        if self.organization_policy_oid is not None:
            self._check_organization_policy_oid(self.organization_policy_oid)
        extras = frozenset(self.extra_ekus) - {ExtendedKeyUsageOID.EMAIL_PROTECTION}
        check_extra_ekus(extras)
        if extras and self.generation is Generation.STRICT:
            raise PolicyError(
                gettext_noop(
                    "Strict S/MIME certificates carry only the emailProtection extended key usage "
                    "(S/MIME BR 7.1.2.3 (f)); use the multipurpose generation for more."
                )
            )
        object.__setattr__(self, "extra_ekus", extras)

    @staticmethod
    def _check_organization_policy_oid(dotted: str) -> None:
        try:
            oid = x509.ObjectIdentifier(dotted)
        except ValueError as exc:
            raise PolicyError(
                gettext_noop("%(oid)s is not a valid policy OID."), oid=repr(dotted)
            ) from exc
        if oid == CertificatePoliciesOID.ANY_POLICY or (dotted + ".").startswith(
            SMIME_BR_POLICY_ARC
        ):
            raise PolicyError(
                gettext_noop(
                    "%(oid)s cannot be the organisation's own policy OID: it is reserved."
                ),
                oid=dotted,
            )

    @property
    def policy_oid(self) -> x509.ObjectIdentifier:
        """The one reserved OID for this type and generation (S/MIME BR 7.1.6.1, 7.1.6.4)."""
        return RESERVED_POLICY_OIDS[(self.certificate_type, self.generation)]

    @property
    def policy_oids(self) -> tuple[x509.ObjectIdentifier, ...]:
        """The reserved OID first, then the organisation's own OID if it has one."""
        if self.organization_policy_oid is None:
            return (self.policy_oid,)
        return (self.policy_oid, x509.ObjectIdentifier(self.organization_policy_oid))

    @property
    def allows_encryption(self) -> bool:
        return self.purpose.encrypts

    @property
    def allows_signing(self) -> bool:
        return self.purpose.signs

    @property
    def extended_key_usages(self) -> tuple[x509.ObjectIdentifier, ...]:
        """emailProtection first, then the extras in a stable order."""
        extras = sorted(self.extra_ekus, key=lambda oid: oid.dotted_string)
        return (ExtendedKeyUsageOID.EMAIL_PROTECTION, *extras)

    def allows_key(self, public_key: object) -> bool:
        return key_algorithm_of(public_key) in self.allowed_key_algorithms

    def key_usage_for(self, public_key: object) -> x509.KeyUsage:
        """Key usage bits per S/MIME BR 7.1.2.3 (e) for this key: see key_usage."""
        if isinstance(public_key, rsa.RSAPublicKey):
            return self.key_usage(key_transport=True)
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            return self.key_usage(key_transport=False)
        raise PolicyError(gettext_noop("Only RSA and EC keys can be certified."))

    def key_usage(self, *, key_transport: bool) -> x509.KeyUsage:
        """Key usage bits per S/MIME BR 7.1.2.3 (e): the SHALL bits, none of the MAYs.

        RSA encrypts by key transport (keyEncipherment), EC by key agreement (keyAgreement);
        nonRepudiation, dataEncipherment and encipherOnly/decipherOnly stay clear.
        """
        return x509.KeyUsage(
            digital_signature=self.purpose.signs,
            content_commitment=False,
            key_encipherment=key_transport and self.purpose.encrypts,
            data_encipherment=False,
            key_agreement=not key_transport and self.purpose.encrypts,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
