"""Build CA and S/MIME subscriber certificates.

Profiles follow S/MIME BR 7.1.2.1 (root), 7.1.2.2 (subordinate CA) and 7.1.2.3
(sponsor-validated subscriber for people, organization-validated for shared mailboxes;
strict or multipurpose generation) on top of RFC 5280.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    CertificatePoliciesOID,
    ExtendedKeyUsageOID,
    NameOID,
)

from . import der
from .errors import PolicyError, X509Error, gettext_noop
from .kept import PerCertificate
from .keys import PrivateKey, PublicKey, describe_public_key, public_key_refusal, signature_hash_for
from .mail_domains import issuer_permits, name_constraints
from .policy import CertificatePolicy, CertificateType, check_extra_ekus
from .smime_capabilities import smime_capabilities_extension

SERIAL_BITS = 159  # RFC 5280 4.1.2.2: at most 20 octets; S/MIME BR 7.1: below 2**159.
MAX_CA_VALIDITY_DAYS = 30 * 366

# RFC 5280 Appendix A upper bounds.
UB_COMMON_NAME = 64
UB_ORGANIZATION_NAME = 64
UB_NAME = 32768
UB_EMAIL_ADDRESS = 255

_COUNTRY = re.compile(r"[A-Z]{2}")
# S/MIME BR 7.1.4.2.2 (d): scheme, country, optional "+subdivision", then "-reference".
_ORGANIZATION_IDENTIFIER = re.compile(
    r"(?P<scheme>[A-Z]{3})(?P<country>[A-Z]{2})(?:\+(?P<subdivision>[A-Z0-9]{1,3}))?"
    r"(?:-(?P<reference>.+))?"
)
# Appendix A's registration schemes, plus GOV and INT of 7.1.4.2.2 (d) note 2.
_SCHEMES = frozenset({"NTR", "VAT", "PSD", "LEI", "GOV", "INT"})
_SCHEMES_WITHOUT_REFERENCE = frozenset({"GOV", "INT"})  # the reference is absent, never empty
_SCHEMES_WITH_SUBDIVISION = frozenset({"NTR", "GOV"})  # "+" state or province: these only
_GLOBAL_SCHEMES = frozenset({"LEI", "INT"})  # always country "XG"
_GLOBAL_COUNTRY = "XG"
_LEI = re.compile(r"[A-Z0-9]{18}[0-9]{2}")  # ISO 17442
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}")
_DOMAIN_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_METADATA_ONLY = re.compile(r"[\s.\-]*")  # S/MIME BR 7.1.4.2: no '.', '-', ' ' placeholders.


def random_serial() -> int:
    """A positive 159-bit serial: 158 CSPRNG bits under a fixed top bit.

    The fixed bit keeps every serial exactly 20 DER octets (RFC 5280 4.1.2.2) and well
    above the 64 random bits S/MIME BR 7.1 asks for.
    """
    return (int.from_bytes(secrets.token_bytes(20), "big") >> 2) | (1 << (SERIAL_BITS - 1))


@dataclass(frozen=True)
class Subject:
    """Who a subscriber certificate names; always taken from the account, never a CSR.

    Sponsor-validated profile (S/MIME BR 7.1.4.2.5): organizationName and
    organizationIdentifier are required, plus givenName and/or surname. Organization-
    validated (7.1.4.2.4, a shared mailbox): the same organisation attributes, no personal
    name, and a commonName that is the mailbox address or the organisation (7.1.4.2.2 a).
    """

    common_name: str
    given_name: str = ""
    surname: str = ""
    organization_name: str = ""
    country_name: str = ""
    email_addresses: tuple[str, ...] = ()
    include_email_in_subject: bool = False
    organization_identifier: str = ""
    certificate_type: CertificateType = CertificateType.SPONSOR_VALIDATED

    def normalised_emails(self) -> tuple[str, ...]:
        """Addresses checked and de-duplicated, domains lower-cased, order kept."""
        seen: dict[str, None] = {}
        for address in self.email_addresses:
            seen.setdefault(normalise_email(address), None)
        return tuple(seen)

    def to_name(self) -> x509.Name:
        """The subject DN, checked against S/MIME BR 7.1.4.2.2 and 7.1.4.2.4 or 7.1.4.2.5."""
        emails = self.normalised_emails()
        if not emails:
            raise PolicyError(
                gettext_noop("An S/MIME certificate needs at least one e-mail address.")
            )
        organization_validated = self.certificate_type is CertificateType.ORGANIZATION_VALIDATED
        if not _has_value(self.organization_name):
            raise PolicyError(
                gettext_noop(
                    "Organization-validated certificates must name the organisation "
                    "(S/MIME BR 7.1.4.2.4)."
                )
                if organization_validated
                else gettext_noop(
                    "Sponsor-validated certificates must name the organisation "
                    "(S/MIME BR 7.1.4.2.5)."
                )
            )
        if not _has_value(self.organization_identifier):
            raise PolicyError(
                gettext_noop(
                    "Organization-validated certificates need the organisation identifier, "
                    'e.g. "LEIXG-<LEI>" or "NTRGB-<company number>" (S/MIME BR 7.1.4.2.2 (d)).'
                )
                if organization_validated
                else gettext_noop(
                    "Sponsor-validated certificates need the organisation identifier, "
                    'e.g. "LEIXG-<LEI>" or "NTRGB-<company number>" (S/MIME BR 7.1.4.2.2 (d)).'
                )
            )
        if organization_validated:
            if self.given_name.strip() or self.surname.strip():
                raise PolicyError(
                    gettext_noop(
                        "Organization-validated certificates name no person: givenName and "
                        "surname SHALL NOT be present (S/MIME BR 7.1.4.2.4)."
                    )
                )
            common = self.common_name.strip()
            if common.lower() not in {e.lower() for e in emails} and common != (
                self.organization_name.strip()
            ):
                raise PolicyError(
                    gettext_noop(
                        "An organization-validated certificate's common name must be its "
                        "mailbox address or the organisation's name (S/MIME BR 7.1.4.2.2 (a))."
                    )
                )
        elif not (_has_value(self.given_name) or _has_value(self.surname)):
            raise PolicyError(
                gettext_noop(
                    "Sponsor-validated certificates need a given name or a surname "
                    "(S/MIME BR 7.1.4.2.5, note 2)."
                )
            )
        country = _check_country(self.country_name) if self.country_name else ""
        _check_organization_identifier(self.organization_identifier, country)

        attributes: list[x509.NameAttribute[str]] = []
        if country:
            attributes.append(x509.NameAttribute(NameOID.COUNTRY_NAME, country))
        attributes += [
            _attribute(NameOID.ORGANIZATION_NAME, self.organization_name, UB_ORGANIZATION_NAME),
            _attribute(NameOID.ORGANIZATION_IDENTIFIER, self.organization_identifier, UB_NAME),
        ]
        if _has_value(self.given_name):
            attributes.append(_attribute(NameOID.GIVEN_NAME, self.given_name, UB_NAME))
        if _has_value(self.surname):
            attributes.append(_attribute(NameOID.SURNAME, self.surname, UB_NAME))
        attributes.append(_attribute(NameOID.COMMON_NAME, self.common_name, UB_COMMON_NAME))
        if self.include_email_in_subject:
            # S/MIME BR 7.1.4.2.2 (h): a single mailbox, which also appears in the SAN.
            attributes.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, emails[0]))
        return x509.Name(attributes)


def normalise_email(address: str) -> str:
    """Check an ASCII mailbox address (rfc822Name, RFC 5280 4.2.1.6) and lower-case its domain."""
    address = address.strip()
    if not address.isascii():
        raise PolicyError(
            gettext_noop(
                "%(address)s is not an ASCII e-mail address; internationalised mailboxes "
                "are not supported."
            ),
            address=repr(address),
        )
    local, at, domain = address.rpartition("@")
    labels = domain.split(".")
    if (
        not at
        or not _EMAIL_LOCAL.fullmatch(local)
        or local.startswith(".")
        or local.endswith(".")
        or ".." in local
        or len(labels) < 2
        or not all(_DOMAIN_LABEL.fullmatch(label) for label in labels)
        or len(address) > UB_EMAIL_ADDRESS
    ):
        raise PolicyError(
            gettext_noop("%(address)s is not a valid e-mail address."), address=repr(address)
        )
    return f"{local}@{domain.lower()}"


def build_root_ca(
    *,
    key: PrivateKey,
    common_name: str,
    organization_name: str,
    country_name: str,
    validity_days: int = 3650,
    not_before: datetime | None = None,
    path_length: int | None = None,
    sign_ocsp: bool = False,
) -> x509.Certificate:
    """A self-signed root (S/MIME BR 7.1.2.1): no EKU, no policies, no pathLen by default.

    ``sign_ocsp`` sets digitalSignature, which the BR requires only if the CA key itself
    signs OCSP responses.
    """
    _check_key(key.public_key())
    name = _ca_name(common_name, organization_name, country_name)
    start, end = _validity(not_before, _ca_validity_days(validity_days), issuer=None)
    public_key = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_key_usage(sign_ocsp), critical=True)
        .add_extension(ski, critical=False)
        # RFC 5280 4.2.1.1 lets a self-signed CA omit the AKI; we keep it so every
        # certificate in the chain is matched the same way.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    return builder.sign(key, signature_hash_for(key))


def build_issuing_ca(
    *,
    public_key: PublicKey,
    issuer_certificate: x509.Certificate,
    issuer_key: PrivateKey,
    common_name: str,
    organization_name: str,
    country_name: str,
    validity_days: int = 1825,
    crl_url: str,
    ca_issuers_url: str,
    path_length: int = 0,
    not_before: datetime | None = None,
    extra_ekus: frozenset[x509.ObjectIdentifier] = frozenset(),
    policy_oids: Sequence[x509.ObjectIdentifier] = (CertificatePoliciesOID.ANY_POLICY,),
    sign_ocsp: bool = False,
    mail_domains: Sequence[str] = (),
) -> x509.Certificate:
    """A subordinate CA that issues S/MIME certificates (S/MIME BR 7.1.2.2).

    ``crl_url`` and ``ca_issuers_url`` are the issuer's (the root's) CRL and certificate.
    anyPolicy is the default, which S/MIME BR 7.1.6.3 allows for an affiliated sub-CA.
    ``extra_ekus`` must cover any EKU beyond emailProtection the CA's templates issue.
    ``mail_domains`` (``example.com``, ``.example.com``), when given, become a critical
    nameConstraints extension: relying parties then refuse any certificate from this CA
    for a mailbox elsewhere (RFC 5280 4.2.1.10, S/MIME BR 7.1.5).
    """
    _check_key(public_key)
    _check_issuer(issuer_certificate, issuer_key, new_ca_path_length=path_length)
    extras = frozenset(extra_ekus) - {ExtendedKeyUsageOID.EMAIL_PROTECTION}
    check_extra_ekus(extras)
    if not policy_oids:
        raise PolicyError("A subordinate CA certificate needs at least one policy OID.")
    name = _ca_name(common_name, organization_name, country_name)
    start, end = _validity(not_before, _ca_validity_days(validity_days), issuer_certificate)
    ekus = [ExtendedKeyUsageOID.EMAIL_PROTECTION, *sorted(extras, key=lambda o: o.dotted_string)]
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_certificate.subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_key_usage(sign_ocsp), critical=True)
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        .add_extension(_policies(policy_oids), critical=False)
        .add_extension(_crl_distribution_points(crl_url), critical=False)
        .add_extension(_authority_information_access(ca_issuers_url), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_identifier(issuer_certificate), critical=False)
    )
    if mail_domains:
        # RFC 5280 4.2.1.10: conforming CAs MUST mark it critical.
        builder = builder.add_extension(name_constraints(mail_domains), critical=True)
    return builder.sign(issuer_key, signature_hash_for(issuer_key))


def build_end_entity(
    *,
    public_key: PublicKey,
    subject: Subject,
    issuer_certificate: x509.Certificate,
    issuer_key: PrivateKey,
    policy: CertificatePolicy,
    crl_url: str,
    ca_issuers_url: str,
    ocsp_url: str | None = None,
    not_before: datetime | None = None,
    serial: int | None = None,
) -> x509.Certificate:
    """A sponsor- or organization-validated S/MIME subscriber certificate (S/MIME BR 7.1.2.3).

    ``crl_url`` and ``ca_issuers_url`` are the issuing CA's own CRL and certificate;
    ``ocsp_url``, when given, its OCSP responder (AIA id-ad-ocsp, S/MIME BR 7.1.2.3 c).
    Validity is the policy's, cut short at the issuer's notAfter (RFC 5280 6.1.3).
    """
    _check_key(public_key)
    if not policy.allows_key(public_key):
        allowed = ", ".join(sorted(a.label for a in policy.allowed_key_algorithms))
        raise PolicyError(
            gettext_noop("This template allows %(allowed)s keys; the key is %(key)s."),
            allowed=allowed,
            key=describe_public_key(public_key),
        )
    if subject.certificate_type is not policy.certificate_type:
        # The policy OID says which subject rules were applied: they must be the same.
        raise PolicyError(
            f"A {subject.certificate_type.value}-validated subject cannot be issued under "
            f"the {policy.certificate_type.value}-validated policy (S/MIME BR 7.1.6.1)."
        )
    name = subject.to_name()
    emails = subject.normalised_emails()
    _check_issuer(issuer_certificate, issuer_key, new_ca_path_length=None)
    for email in emails:
        # Never sign what every relying party would reject (RFC 5280 4.2.1.10).
        if not issuer_permits(issuer_certificate, email):
            raise PolicyError(
                gettext_noop(
                    "The issuing CA's name constraints do not permit %(address)s: it cannot "
                    "certify mailboxes outside its mail domains."
                ),
                address=email,
            )
    if serial is None:
        serial = random_serial()
    elif not 0 < serial < 2**SERIAL_BITS:
        raise PolicyError("A serial number must be positive and below 2**159 (RFC 5280 4.1.2.2).")
    start, end = _validity(not_before, policy.validity_days, issuer_certificate)
    issuer = _issuer_extensions(issuer_certificate, crl_url, ca_issuers_url, ocsp_url)
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        policy.key_usage_for(public_key)  # raises PolicyError, as it did for any other key
    profile = _profile_extensions(policy, key_transport=isinstance(public_key, rsa.RSAPublicKey))
    extensions = [
        *profile.leading,
        _subject_alternative_name(emails),
        profile.policies,
        issuer.crl_distribution_points,
        issuer.authority_information_access,
        x509.Extension(
            x509.SubjectKeyIdentifier.oid,
            False,
            x509.SubjectKeyIdentifier.from_public_key(public_key),
        ),
        issuer.authority_key_identifier,
        *profile.trailing,
    ]
    builder = (
        x509.CertificateBuilder(extensions=extensions)
        .subject_name(name)
        .issuer_name(issuer_certificate.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(end)
    )
    return builder.sign(issuer_key, signature_hash_for(issuer_key))


# --- extensions every certificate of a profile or of an issuer carries alike ----------------
#
# Building the extension objects and having cryptography encode them again for each
# certificate cost a third of what signing it does. These are built and encoded once (as
# UnrecognizedExtension, whose DER the builder copies as it is: byte for byte what the
# typed extension encodes to), per profile and per issuer certificate and URLs.


def _encoded(value: x509.ExtensionType, *, critical: bool) -> x509.Extension[x509.ExtensionType]:
    return x509.Extension(
        value.oid, critical, x509.UnrecognizedExtension(value.oid, value.public_bytes())
    )


# local@domain in printable ASCII, no spaces, one @: what an rfc822Name IA5String may hold
# here (x509.RFC822Name would refuse the rest too).
_PLAIN_ADDRESS = re.compile(r"[!-?A-~]+@[!-?A-~]+", re.ASCII)


def _subject_alternative_name(emails: Sequence[str]) -> x509.Extension[x509.ExtensionType]:
    """subjectAltName with each address as an rfc822Name, encoded here: DER of
    GeneralNames ::= SEQUENCE OF [1] IMPLICIT IA5String (RFC 5280 4.2.1.6).

    x509.RFC822Name checks each address with email.utils.parseaddr, ~125,000 instructions
    (1 % of an enrolment), for addresses normalise_email has already held to ASCII atoms
    and host names, which is stricter."""
    if not all(_PLAIN_ADDRESS.fullmatch(email) for email in emails):
        # normalise_email lets nothing else through; anything else is refused, never encoded.
        raise PolicyError(
            gettext_noop("An address for the certificate is not a plain ASCII mailbox.")
        )
    value = der.tlv(0x30, b"".join(der.tlv(0x81, email.encode("ascii")) for email in emails))
    oid = x509.SubjectAlternativeName.oid
    return x509.Extension(oid, False, x509.UnrecognizedExtension(oid, value))


@dataclass(frozen=True)
class _ProfileExtensions:
    """An end-entity profile's fixed extensions, in certificate order around the SAN."""

    leading: tuple[x509.Extension[x509.ExtensionType], ...]  # basicConstraints, KU, EKU
    policies: x509.Extension[x509.ExtensionType]
    trailing: tuple[x509.Extension[x509.ExtensionType], ...]  # smimeCapabilities, if any


@functools.lru_cache(maxsize=64)
def _profile_extensions(policy: CertificatePolicy, *, key_transport: bool) -> _ProfileExtensions:
    """By policy (a frozen value) and whether the key encrypts by key transport (RSA) or
    by key agreement (EC), which is all its key usage depends on."""
    leading = (
        # S/MIME BR 7.1.2.3 (d) allows it; critical as RFC 5280 4.2.1.9 permits, so no
        # relying party can mistake the certificate for a CA.
        _encoded(x509.BasicConstraints(ca=False, path_length=None), critical=True),
        _encoded(policy.key_usage(key_transport=key_transport), critical=True),
        _encoded(x509.ExtendedKeyUsage(list(policy.extended_key_usages)), critical=False),
    )
    # RFC 4262: tells senders which content ciphers the holder can decrypt; it says
    # nothing useful about a signing-only key, so those certificates go without it.
    trailing = (
        (_encoded(smime_capabilities_extension(), critical=False),)
        if policy.allows_encryption
        else ()
    )
    return _ProfileExtensions(
        leading=leading,
        policies=_encoded(_policies(policy.policy_oids), critical=False),
        trailing=trailing,
    )


@dataclass(frozen=True)
class _IssuerExtensions:
    """What an issuer's certificates point back to it with."""

    issuer: x509.Certificate  # the object these were made from: the cache checks it
    crl_distribution_points: x509.Extension[x509.ExtensionType]
    authority_information_access: x509.Extension[x509.ExtensionType]
    authority_key_identifier: x509.Extension[x509.ExtensionType]


_ISSUER_EXTENSIONS: dict[tuple[int, str, str, str | None], _IssuerExtensions] = {}
_ISSUER_EXTENSIONS_KEPT = 16


def _issuer_extensions(
    issuer: x509.Certificate, crl_url: str, ca_issuers_url: str, ocsp_url: str | None
) -> _IssuerExtensions:
    """Kept by the issuer certificate object itself (the models keep one per CA and DER)
    and the URLs: a renewed CA is another certificate, a moved URL another key. By object,
    not by value: hashing a certificate (its DER) costs as much as building these."""
    key = (id(issuer), crl_url, ca_issuers_url, ocsp_url)
    found = _ISSUER_EXTENSIONS.get(key)
    if found is not None and found.issuer is issuer:
        return found
    made = _IssuerExtensions(
        issuer=issuer,
        crl_distribution_points=_encoded(_crl_distribution_points(crl_url), critical=False),
        authority_information_access=_encoded(
            _authority_information_access(ca_issuers_url, ocsp_url), critical=False
        ),
        authority_key_identifier=_encoded(_authority_key_identifier(issuer), critical=False),
    )
    if len(_ISSUER_EXTENSIONS) >= _ISSUER_EXTENSIONS_KEPT:
        _ISSUER_EXTENSIONS.clear()  # CA objects come and go only in tests and renewals
    _ISSUER_EXTENSIONS[key] = made
    return made


# --- helpers -------------------------------------------------------------------------------


def _has_value(value: str) -> bool:
    return not _METADATA_ONLY.fullmatch(value)


def _attribute(oid: x509.ObjectIdentifier, value: str, upper_bound: int) -> x509.NameAttribute[str]:
    value = value.strip()
    empty, too_long = _ATTRIBUTE_REFUSALS.get(oid, _OTHER_ATTRIBUTE_REFUSALS)
    if not _has_value(value):
        raise PolicyError(empty, label=oid.dotted_string)
    if len(value) > upper_bound:
        raise PolicyError(too_long, label=oid.dotted_string, limit=upper_bound)
    return x509.NameAttribute(oid, value)


# One whole sentence per attribute, so each can be translated as it reads (a person's own
# name may be too long); ``%(label)s`` is only for an attribute not listed.
_ATTRIBUTE_REFUSALS = {
    NameOID.COMMON_NAME: (
        gettext_noop("The common name is empty."),
        gettext_noop("The common name is longer than %(limit)d characters (RFC 5280)."),
    ),
    NameOID.ORGANIZATION_NAME: (
        gettext_noop("The organisation name is empty."),
        gettext_noop("The organisation name is longer than %(limit)d characters (RFC 5280)."),
    ),
    NameOID.ORGANIZATION_IDENTIFIER: (
        gettext_noop("The organisation identifier is empty."),
        gettext_noop("The organisation identifier is longer than %(limit)d characters (RFC 5280)."),
    ),
    NameOID.GIVEN_NAME: (
        gettext_noop("The given name is empty."),
        gettext_noop("The given name is longer than %(limit)d characters (RFC 5280)."),
    ),
    NameOID.SURNAME: (
        gettext_noop("The surname is empty."),
        gettext_noop("The surname is longer than %(limit)d characters (RFC 5280)."),
    ),
}
_OTHER_ATTRIBUTE_REFUSALS = (
    gettext_noop("The %(label)s is empty."),
    gettext_noop("The %(label)s is longer than %(limit)d characters (RFC 5280)."),
)


def check_country(country_name: str) -> str:
    """The two-letter country code, upper-cased; PolicyError if it is not one."""
    return _check_country(country_name)


def _check_country(country_name: str) -> str:
    country = country_name.strip().upper()
    if not _COUNTRY.fullmatch(country):
        raise PolicyError(f"{country_name!r} is not a two-letter ISO 3166-1 country code.")
    return country


def check_organization_identifier(value: str, country_name: str = "") -> None:
    """Raise PolicyError unless ``value`` is an S/MIME BR 7.1.4.2.2 (d) organizationIdentifier.

    Schemes NTR, VAT, PSD and LEI (Appendix A) carry a registration reference; GOV and INT
    (note 2) carry none. LEI and INT use country XG; the others a country that must match
    ``country_name`` when one is given. Only NTR and GOV may add a "+" subdivision.
    """
    _check_organization_identifier(value, _check_country(country_name) if country_name else "")


def _check_organization_identifier(value: str, country: str) -> None:
    match = _ORGANIZATION_IDENTIFIER.fullmatch(value.strip())
    if match is None:
        raise PolicyError(
            f"{value!r} is not an organisation identifier like NTRGB-12345678 "
            "(S/MIME BR 7.1.4.2.2 (d))."
        )
    scheme, id_country, reference = match["scheme"], match["country"], match["reference"]
    if scheme not in _SCHEMES:
        raise PolicyError(
            f"The organisation identifier {value!r} uses registration scheme {scheme}; "
            f"the S/MIME BR allow {', '.join(sorted(_SCHEMES))} (7.1.4.2.2 (d), Appendix A)."
        )
    if scheme in _GLOBAL_SCHEMES and id_country != _GLOBAL_COUNTRY:
        raise PolicyError(
            f"The organisation identifier {value!r} must use country {_GLOBAL_COUNTRY} "
            f"with scheme {scheme}, e.g. {scheme}{_GLOBAL_COUNTRY}-... (S/MIME BR 7.1.4.2.2 (d))."
        )
    if scheme not in _GLOBAL_SCHEMES and id_country == _GLOBAL_COUNTRY:
        raise PolicyError(
            f"The organisation identifier {value!r} needs the ISO 3166-1 country of the "
            f"registration scheme; {_GLOBAL_COUNTRY} is only for LEI and INT."
        )
    if match["subdivision"] is not None and scheme not in _SCHEMES_WITH_SUBDIVISION:
        raise PolicyError(
            f"The organisation identifier {value!r} names a state or province, which only "
            "the NTR and GOV schemes may (S/MIME BR 7.1.4.2.2 (d))."
        )
    if scheme in _SCHEMES_WITHOUT_REFERENCE:
        if reference is not None:
            raise PolicyError(
                f"The organisation identifier {value!r} carries a reference after '-'; "
                f"scheme {scheme} has none (S/MIME BR 7.1.4.2.2 (d), note 2)."
            )
    elif reference is None:
        raise PolicyError(f"The organisation identifier {value!r} lacks its registration number.")
    elif scheme == "LEI" and not _valid_lei(reference):
        raise PolicyError(
            f"{reference!r} in the organisation identifier is not a valid LEI "
            "(ISO 17442: 20 characters with a check digit pair)."
        )
    if country and scheme not in _GLOBAL_SCHEMES and id_country != country:
        raise PolicyError(
            f"The organisation identifier {value!r} names country {id_country} but the "
            f"certificate names {country} (S/MIME BR 7.1.4.2.2 (d), note 1)."
        )


def _valid_lei(reference: str) -> bool:
    """ISO 17442: 18 characters and two check digits, ISO 7064 MOD 97-10 over the whole."""
    if not _LEI.fullmatch(reference):
        return False
    return int("".join(str(int(character, 36)) for character in reference)) % 97 == 1


def check_ca_subject(organization_name: str, country_name: str) -> None:
    """S/MIME BR 7.1.4.3.1: root and subordinate CA certificates name O and C."""
    if not country_name.strip():
        raise PolicyError(
            "A CA certificate must name its country, a two-letter ISO 3166-1 code "
            "(S/MIME BR 7.1.4.3.1)."
        )
    _check_country(country_name)
    if not _has_value(organization_name):
        raise PolicyError("A CA certificate must name its organisation (S/MIME BR 7.1.4.3.1).")


def _ca_name(common_name: str, organization_name: str, country_name: str) -> x509.Name:
    """CA subject DN: C, O and CN, all three required (S/MIME BR 7.1.4.3.1)."""
    check_ca_subject(organization_name, country_name)
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, _check_country(country_name)),
            _attribute(NameOID.ORGANIZATION_NAME, organization_name, UB_ORGANIZATION_NAME),
            _attribute(NameOID.COMMON_NAME, common_name, UB_COMMON_NAME),
        ]
    )


def _ca_validity_days(days: int) -> int:
    if not 1 <= days <= MAX_CA_VALIDITY_DAYS:
        raise PolicyError(f"A CA validity must be between 1 and {MAX_CA_VALIDITY_DAYS} days.")
    return days


def _utc(moment: datetime) -> datetime:
    """Aware UTC; naive values are taken as UTC, as cryptography does."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _validity(
    not_before: datetime | None, days: int, issuer: x509.Certificate | None
) -> tuple[datetime, datetime]:
    """notBefore and notAfter, both inclusive (RFC 5280 4.1.2.5): ``days`` * 86400 s in all."""
    start = _utc(not_before if not_before is not None else datetime.now(UTC)).replace(microsecond=0)
    end = start + timedelta(days=days) - timedelta(seconds=1)
    if issuer is not None:
        facts = _issuer_facts(issuer)
        if start < facts.not_before:
            raise PolicyError(
                gettext_noop("The certificate would start before its issuing CA certificate.")
            )
        if start >= facts.not_after:
            raise PolicyError(gettext_noop("The issuing CA certificate has expired."))
        end = min(end, facts.not_after)
    return start, end


def _check_key(public_key: object) -> None:
    """A key S/MIME BR 6.1.5 lets us certify, or a PolicyError saying why not."""
    refusal = public_key_refusal(public_key)
    if refusal is not None:
        raise PolicyError(refusal.msgid, **refusal.params)


def _check_issuer(
    certificate: x509.Certificate, key: PrivateKey, *, new_ca_path_length: int | None
) -> None:
    """The issuer must be a CA allowed to sign certificates, and ``key`` must be its key.

    ``new_ca_path_length`` is set when the new certificate is itself a CA (RFC 5280 4.2.1.9).
    """
    if key.public_key() != certificate.public_key():
        raise X509Error("The CA private key does not belong to the CA certificate.")
    facts = _issuer_facts(certificate)
    if not facts.is_ca:
        raise PolicyError("The issuer certificate is not a CA certificate.")
    if not facts.signs_certificates:
        raise PolicyError("The issuer certificate is not allowed to sign certificates.")
    path_length = facts.path_length
    if new_ca_path_length is not None and path_length is not None:
        if path_length == 0:
            raise PolicyError("The issuer's path length constraint forbids another CA below it.")
        if new_ca_path_length >= path_length:
            raise PolicyError(
                f"The new CA's path length must be below its issuer's ({path_length})."
            )


@dataclass(frozen=True)
class _IssuerFacts:
    is_ca: bool  # has basicConstraints and key usage at all
    signs_certificates: bool  # cA and keyCertSign
    path_length: int | None
    not_before: datetime
    not_after: datetime


def _read_issuer_facts(certificate: x509.Certificate) -> _IssuerFacts:
    extensions = certificate.extensions
    try:
        constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
        key_usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        is_ca, signs, path_length = False, False, None
    else:
        is_ca, signs = True, constraints.ca and key_usage.key_cert_sign
        path_length = constraints.path_length
    return _IssuerFacts(
        is_ca=is_ca,
        signs_certificates=signs,
        path_length=path_length,
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
    )


# What each issuance reads of its issuer, kept per certificate object (kept.py).
_issuer_facts = PerCertificate(_read_issuer_facts)


def _ca_key_usage(sign_ocsp: bool) -> x509.KeyUsage:
    """keyCertSign, cRLSign; digitalSignature only for OCSP (S/MIME BR 7.1.2.1 b, 7.1.2.2 e)."""
    return x509.KeyUsage(
        digital_signature=sign_ocsp,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _policies(oids: Sequence[x509.ObjectIdentifier]) -> x509.CertificatePolicies:
    # No qualifiers: S/MIME BR 7.1.2.3 (a) permits but does not require a CPS pointer.
    return x509.CertificatePolicies([x509.PolicyInformation(oid, None) for oid in oids])


def _http_url(url: str, what: str) -> str:
    """Strict and multipurpose profiles allow only http URIs (S/MIME BR 7.1.2.3 (b), (c))."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or not url.isascii():
        raise PolicyError(f"The {what} must be a plain http:// URL; got {url!r}.")
    return url


def _crl_distribution_points(crl_url: str) -> x509.CRLDistributionPoints:
    uri = x509.UniformResourceIdentifier(_http_url(crl_url, "CRL distribution point"))
    return x509.CRLDistributionPoints(
        [x509.DistributionPoint(full_name=[uri], relative_name=None, reasons=None, crl_issuer=None)]
    )


def _authority_information_access(
    ca_issuers_url: str, ocsp_url: str | None = None
) -> x509.AuthorityInformationAccess:
    """caIssuers, and the OCSP responder first when there is one (RFC 5280 4.2.2.1).

    Both plain http (S/MIME BR 7.1.2.3 c): a status check must not need a TLS connection
    whose own checks could need it.
    """
    issuers = x509.UniformResourceIdentifier(_http_url(ca_issuers_url, "CA issuers URL"))
    descriptions = [x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, issuers)]
    if ocsp_url:
        responder = x509.UniformResourceIdentifier(_http_url(ocsp_url, "OCSP responder URL"))
        descriptions.insert(
            0, x509.AccessDescription(AuthorityInformationAccessOID.OCSP, responder)
        )
    return x509.AuthorityInformationAccess(descriptions)


def _authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """keyIdentifier only, copied from the issuer's SKI (S/MIME BR 7.1.2.2 (h), 7.1.2.3 (g))."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        issuer_key = issuer.public_key()
        if not isinstance(issuer_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise PolicyError("The issuer certificate's key type is not supported.") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
