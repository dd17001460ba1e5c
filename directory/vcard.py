"""A vCard carrying a person's certificate, for import into an address book.

vCard 3.0 (RFC 2426) rather than 4.0 (RFC 6350): it is the version Outlook, Apple
Contacts and Thunderbird all import, while 4.0 support is uneven. The certificate goes in
``KEY;TYPE=X509;ENCODING=b:`` (RFC 2426 3.7.1), base64 DER; never a private key.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

LINE_OCTETS = 75  # RFC 2425 5.8.1: fold lines longer than 75 octets


def _escape(value: str) -> str:
    """RFC 2426 4: backslash, comma, semicolon and newlines are escaped in text values."""
    value = value.replace("\\", "\\\\").replace(",", "\\,").replace(";", "\\;")
    return value.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")


def _fold(line: str) -> list[str]:
    """Split at 75 octets without cutting a UTF-8 sequence; continuations start with a space."""
    lines: list[str] = []
    current, size, limit = "", 0, LINE_OCTETS
    for char in line:
        width = len(char.encode())
        if size + width > limit:
            lines.append(current)
            current, size, limit = " ", 1, LINE_OCTETS
        current += char
        size += width
    lines.append(current)
    return lines


def certificate_vcard(
    *,
    full_name: str,
    given_name: str,
    family_name: str,
    emails: Iterable[str],
    organization: str,
    unit: str,
    certificate_der: bytes,
) -> str:
    """One vCard 3.0 with the person's name, addresses, organisation and certificate (CRLF)."""
    properties = [
        "BEGIN:VCARD",
        "VERSION:3.0",
        f"FN:{_escape(full_name)}",
        f"N:{_escape(family_name)};{_escape(given_name)};;;",
        *(f"EMAIL;TYPE=INTERNET:{_escape(address)}" for address in emails),
    ]
    if organization or unit:
        properties.append("ORG:" + ";".join(_escape(part) for part in (organization, unit) if part))
    properties += [
        "KEY;TYPE=X509;ENCODING=b:" + base64.b64encode(certificate_der).decode("ascii"),
        "END:VCARD",
    ]
    return "".join(f"{line}\r\n" for prop in properties for line in _fold(prop))
