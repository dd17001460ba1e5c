"""Who is on the other end of a request: the address and the user name we key it by.

django-axes (lock-outs) and the audit trail both call these, so a lock-out, an audit event
and anything else keyed by address agree on who the client was. settings.py imports
``trusted_proxies()`` at start-up, so nothing here may touch Django's settings at import.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import TYPE_CHECKING, Any

from django.conf import settings

if TYPE_CHECKING:
    from django.http import HttpRequest

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address


def trusted_proxies(entries: Iterable[str]) -> tuple[Network, ...]:
    """Parse PKIPORTAL_TRUSTED_PROXIES; ValueError names the first entry that is not an
    address or network, so a typo stops start-up instead of trusting the wrong hosts."""
    networks = []
    for entry in entries:
        try:
            # strict: "10.0.0.5/24" is refused rather than silently widened to 10.0.0.0/24.
            networks.append(ip_network(entry.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(
                f"{entry!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/24, "
                f"2001:db8::/64): {exc}"
            ) from None
    return tuple(networks)


def _parse(value: str) -> Address | None:
    """An address in canonical form, IPv4-mapped IPv6 as IPv4; None if it is not one."""
    try:
        address = ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, proxies: tuple[Network, ...]) -> bool:
    return any(address in network for network in proxies)


def client_address(request: HttpRequest) -> str | None:
    """The client's address: REMOTE_ADDR, or behind a trusted proxy the right-most
    X-Forwarded-For entry that is not a trusted proxy (entries left of it are the client's
    own claims). A malformed entry stops the walk at the last hop we can vouch for."""
    remote: str | None = request.META.get("REMOTE_ADDR") or None
    proxies: tuple[Network, ...] = getattr(settings, "PKIPORTAL_TRUSTED_PROXIES", ())
    if remote is None or not proxies:
        return remote
    hop = _parse(remote)
    if hop is None or not _trusted(hop, proxies):
        return remote  # anyone may send X-Forwarded-For; only a trusted proxy is believed
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    for entry in reversed(forwarded.split(",")) if forwarded else ():
        address = _parse(entry)
        if address is None:
            break  # skipping it would hand the choice of address to the client
        hop = address
        if not _trusted(hop, proxies):
            break
    # All trusted (a request from a proxy host itself): the left-most hop, as nginx does.
    return str(hop)


def axes_username(request: HttpRequest, credentials: Mapping[str, Any] | None) -> str | None:
    """The user name django-axes counts failures under: NFKC, stripped and case-folded.

    Directories (django-auth-ldap) match user names ignoring case and surrounding blanks,
    so "Alice", "ALICE" and " alice" reach one account and must share one failure limit.
    Local accounts that differ only in case now share a counter too: stricter, accepted.
    """
    field: str = getattr(settings, "AXES_USERNAME_FORM_FIELD", "username")  # axes' default
    if credentials:
        username = credentials.get(field)
    else:
        username = getattr(request, "data", request.POST).get(field)
    if not isinstance(username, str):
        return None
    return unicodedata.normalize("NFKC", username).strip().casefold()
