"""DER's tag-length-value framing (X.690 8.1), for the few structures we encode by hand:
the fast CRL (crl_fast), the subjectAltName (builder) and EST's CSR attributes (est)."""

from __future__ import annotations


def length(size: int) -> bytes:
    """A DER length: short form below 128, else the minimal long form (X.690 8.1.3)."""
    if size < 0x80:
        return bytes((size,))
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def tlv(tag: int, content: bytes) -> bytes:
    """One element: its (single-octet) tag, its length, its content."""
    return bytes((tag,)) + length(len(content)) + content
