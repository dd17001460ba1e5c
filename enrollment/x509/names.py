"""Distinguished names as people read them: openssl's short names, not dotted OIDs."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

# Short names for the attributes RFC 4514 leaves as dotted numbers (what openssl prints).
READABLE_ATTRIBUTES = {
    NameOID.GIVEN_NAME: "GN",
    NameOID.SURNAME: "SN",
    NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier",
    NameOID.EMAIL_ADDRESS: "E",
}


def readable_name(name: x509.Name) -> str:
    """RFC 4514 with short names: "SN=Keeper", not "2.5.4.4=Keeper"."""
    return name.rfc4514_string(READABLE_ATTRIBUTES)


def printable(text: str) -> str:
    """Characters that are not printable as escapes (\\x00, \\u202e): what a CSR asked
    for is shown to officers, and a right-to-left override must not reorder it."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def readable_rfc4514(text: str) -> str:
    """A stored RFC 4514 string the same way; one that does not parse is shown as it is.

    Parsing decodes what storing escaped (an attribute given as #hex), so the result is
    escaped again."""
    try:
        return printable(readable_name(x509.Name.from_rfc4514_string(text)))
    except ValueError:
        return printable(text)
