"""The smimeCapabilities certificate extension (RFC 4262), encoded by cryptography's ASN.1 API."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat import asn1

SMIME_CAPABILITIES_OID = x509.ObjectIdentifier("1.2.840.113549.1.9.15")
AES256_CBC_OID = x509.ObjectIdentifier("2.16.840.1.101.3.4.1.42")
AES128_CBC_OID = x509.ObjectIdentifier("2.16.840.1.101.3.4.1.2")

# Strongest first: RFC 8551 2.7 has receivers list ciphers in order of preference.
DEFAULT_CIPHERS: tuple[x509.ObjectIdentifier, ...] = (AES256_CBC_OID, AES128_CBC_OID)


@asn1.sequence
class _SmimeCapability:
    # RFC 3565 3: AES capabilities carry no parameters, so the field is left out entirely.
    capability_id: x509.ObjectIdentifier


@asn1.sequence
class _Holder:
    capabilities: list[_SmimeCapability]


def smime_capabilities_der(
    ciphers: tuple[x509.ObjectIdentifier, ...] = DEFAULT_CIPHERS,
) -> bytes:
    """DER of SMIMECapabilities ::= SEQUENCE OF SMIMECapability.

    cryptography encodes only SEQUENCE types at the top level, so we encode a one-field
    holder and take its single member: the holder's own header is the only byte we drop.
    """
    holder = asn1.encode_der(
        _Holder(capabilities=[_SmimeCapability(capability_id=c) for c in ciphers])
    )
    # A short-form SEQUENCE header is two octets: tag 0x30 and a length below 128.
    if holder[0] != 0x30 or holder[1] != len(holder) - 2:
        raise ValueError("smimeCapabilities grew past a short-form length; list fewer ciphers")
    return holder[2:]


def smime_capabilities_extension(
    ciphers: tuple[x509.ObjectIdentifier, ...] = DEFAULT_CIPHERS,
) -> x509.UnrecognizedExtension:
    """The extension value to add non-critically (S/MIME BR 7.1.2.3 (i))."""
    return x509.UnrecognizedExtension(SMIME_CAPABILITIES_OID, smime_capabilities_der(ciphers))
