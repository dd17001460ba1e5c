"""Web origins, for the WebAuthn settings and their deploy check (W008). Plain string
work: the settings module imports it before Django is set up."""

from __future__ import annotations

from urllib.parse import urlsplit


def https_origin(url: str, *, default_host: str = "") -> str:
    """https://host[:port] of a URL, the port left out where it is 80 or 443: where people
    sign in, over https, at an address whose http:// form may be the CRL base URL. Empty
    when the URL has no host (and no ``default_host``) or a port that is not one."""
    parts = urlsplit(url)
    host = (parts.hostname or default_host).lower()
    if not host:
        return ""
    try:
        port = parts.port
    except ValueError:
        return ""
    netloc = f"[{host}]" if ":" in host else host
    return f"https://{netloc}" + (f":{port}" if port and port not in (80, 443) else "")
