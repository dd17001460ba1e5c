"""LDAP search filters built from a template such as django-auth-ldap's
AUTH_LDAP_USER_FILTER, ``(sAMAccountName=%(user)s)``: plain string work over RFC 4515, no
Django and no ldap3, so the settings module can check a template at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# "(attribute=%(user)s)": an attribute compared for equality with the user name. By name,
# not by OID: directories return attributes by name, and an entry is matched back to its
# account by what the attribute holds.
_USER_COMPARISON = re.compile(r"\(\s*([A-Za-z][A-Za-z0-9-]*)\s*=\s*%\(user\)s\s*\)")
# RFC 4515 section 3: these must be escaped in an assertion value.
_SPECIAL = {"\\": r"\5c", "*": r"\2a", "(": r"\28", ")": r"\29", "\0": r"\00"}


def user_attributes(template: str) -> list[str]:
    """The attributes the template compares with the user name, in order, each once:
    an entry the directory returns is matched back to an account through them. Empty when
    the template compares none (a substring match, say)."""
    found = [match.group(1) for match in _USER_COMPARISON.finditer(template)]
    return list(dict.fromkeys(found))


def escape(value: str) -> str:
    """An assertion value with RFC 4515's special characters escaped."""
    return "".join(_SPECIAL.get(char, char) for char in value)


def any_of(template: str, usernames: Iterable[str]) -> str:
    """One filter that matches the entry of any of the user names: the template filled in
    for each, joined with OR (RFC 4515 section 2)."""
    parts = [template % {"user": escape(name)} for name in usernames]
    return parts[0] if len(parts) == 1 else "(|" + "".join(parts) + ")"
