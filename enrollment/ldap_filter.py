"""LDAP search filters built from a template such as django-auth-ldap's
AUTH_LDAP_USER_FILTER, ``(sAMAccountName=%(user)s)``. Importing it needs neither Django nor
ldap3, so the settings module can check a template at start-up; only filling one in
(escaped by ldap3, RFC 4515) needs ldap3.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# "(attribute=%(user)s)": an attribute compared for equality with the user name. By name,
# not by OID: directories return attributes by name, and an entry is matched back to its
# account by what the attribute holds.
_USER_COMPARISON = re.compile(r"\(\s*([A-Za-z][A-Za-z0-9-]*)\s*=\s*%\(user\)s\s*\)")


def user_attributes(template: str) -> list[str]:
    """The attributes the template compares with the user name, in order, each once:
    an entry the directory returns is matched back to an account through them. Empty when
    the template compares none (a substring match, say)."""
    found = [match.group(1) for match in _USER_COMPARISON.finditer(template)]
    return list(dict.fromkeys(found))


def escape(value: str) -> str:
    """An assertion value with RFC 4515's special characters escaped (ldap3's own)."""
    from ldap3.utils.conv import escape_filter_chars

    return str(escape_filter_chars(value))


def any_of(template: str, usernames: Iterable[str]) -> str:
    """One filter that matches the entry of any of the user names: the template filled in
    for each, joined with OR (RFC 4515 section 2)."""
    parts = [template % {"user": escape(name)} for name in usernames]
    return parts[0] if len(parts) == 1 else "(|" + "".join(parts) + ")"
