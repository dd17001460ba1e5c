"""Directory (LDAP) and single sign-on (OIDC): attributes land on the account, roles mirror.

Neither django-auth-ldap nor mozilla-django-oidc is a dependency. The claim mapping is
plain code tested here; the OIDC backend test runs where mozilla-django-oidc is installed,
and the LDAP settings are read with stand-ins for the two LDAP modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from django.contrib.auth.models import Group

from accounts.sso import mirror_groups, update_account_from_claims
from enrollment import services
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

CLAIMS = {
    "sub": "0b7e-44c1",
    "preferred_username": "dora",
    "given_name": "Dora",
    "family_name": "Dupont",
    "name": "Dora Dupont-Lefèvre",
    "email": "Dora.Dupont@Example.com",
    "department": "Treasury",
    "groups": ["RA officers", "Everyone", "Domain Users"],
}


def test_claims_fill_the_account_the_certificate_is_issued_from(db):
    user = UserFactory(username="dora", first_name="", last_name="", email="")

    update_account_from_claims(user, CLAIMS)

    user.refresh_from_db()
    assert (user.first_name, user.last_name) == ("Dora", "Dupont")
    assert user.display_name == "Dora Dupont-Lefèvre"
    assert user.email == "dora.dupont@example.com"
    assert user.organizational_unit == "Treasury"
    subject = services.subject_for(user)
    assert subject.common_name == "Dora Dupont-Lefèvre"
    assert subject.email_addresses == ("dora.dupont@example.com",)


def test_only_the_role_groups_are_mirrored(db):
    user = UserFactory(username="dora")
    finance = Group.objects.create(name="Finance")  # managed by an administrator
    user.groups.add(finance)

    update_account_from_claims(user, CLAIMS)

    assert set(user.groups.values_list("name", flat=True)) == {"RA officers", "Finance"}
    assert not Group.objects.filter(name__in=["Everyone", "Domain Users"]).exists()


def test_a_role_the_directory_takes_away_is_taken_away(db):
    user = UserFactory(username="dora")
    mirror_groups(user, ["RA officers", "Key recovery agents"])

    update_account_from_claims(user, {**CLAIMS, "groups": ["Key recovery agents"]})

    assert set(user.groups.values_list("name", flat=True)) == {"Key recovery agents"}


def test_missing_or_odd_claims_leave_fields_empty_not_broken(db):
    user = UserFactory(username="odd")

    update_account_from_claims(user, {"email": "odd@example.com", "name": 7, "groups": "x"})

    user.refresh_from_db()
    assert user.display_name == ""
    assert user.email == "odd@example.com"


def test_the_oidc_backend_creates_and_refreshes_accounts(settings):
    pytest.importorskip("mozilla_django_oidc", reason="mozilla-django-oidc is not installed")
    from accounts.oidc import PortalOIDCBackend

    settings.OIDC_OP_TOKEN_ENDPOINT = "https://idp.example.com/token"
    settings.OIDC_OP_USER_ENDPOINT = "https://idp.example.com/userinfo"
    settings.OIDC_OP_JWKS_ENDPOINT = "https://idp.example.com/jwks"
    settings.OIDC_RP_CLIENT_ID = "pkiportal"
    settings.OIDC_RP_CLIENT_SECRET = "secret"
    settings.OIDC_RP_SIGN_ALGO = "RS256"
    backend = PortalOIDCBackend()

    user = backend.create_user(CLAIMS)
    renamed = backend.update_user(user, {**CLAIMS, "family_name": "Martin", "groups": []})

    assert user.username == "dora"
    assert not user.has_usable_password()
    assert renamed.last_name == "Martin"
    assert not renamed.groups.exists()
    assert backend.verify_claims(CLAIMS)
    assert not backend.verify_claims({**CLAIMS, "email_verified": False})
    assert not backend.verify_claims({"sub": "no-address"})


STAND_INS = {
    "ldap/__init__.py": "SCOPE_SUBTREE = 2\n",
    "django_auth_ldap/__init__.py": "",
    "django_auth_ldap/config.py": (
        "class LDAPSearch:\n"
        "    def __init__(self, base, scope, filterstr):\n"
        "        self.args = (base, scope, filterstr)\n"
        "class GroupOfNamesType: pass\n"
        "class NestedActiveDirectoryGroupType: pass\n"
    ),
}


def test_the_ldap_settings_come_from_the_environment(tmp_path: Path):
    for name, text in STAND_INS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path.cwd())]),
        "PKIPORTAL_VAR_DIR": str(tmp_path / "var"),
        "AUTHENTICATION_BACKENDS": "django_auth_ldap.backend.LDAPBackend",
        "AUTH_LDAP_SERVER_URI": "ldaps://dc1.example.com",
        "AUTH_LDAP_BIND_DN": "CN=pkiportal,OU=Services,DC=example,DC=com",
        "AUTH_LDAP_USER_SEARCH_BASE": "OU=People,DC=example,DC=com",
        "AUTH_LDAP_USER_FILTER": "(sAMAccountName=%(user)s)",
        "AUTH_LDAP_USER_ATTR_MAP": "first_name=givenName,last_name=sn,email=mail,"
        "display_name=displayName,organizational_unit=department",
        "AUTH_LDAP_GROUP_SEARCH_BASE": "OU=Groups,DC=example,DC=com",
        "AUTH_LDAP_GROUP_TYPE": "active_directory",
        "PKIPORTAL_RA_OFFICER_GROUP": "PKI RA Officers",
    }
    script = (
        "import json, pkiportal.settings as s; print(json.dumps({"
        "'backends': s.AUTHENTICATION_BACKENDS, 'search': s.AUTH_LDAP_USER_SEARCH.args,"
        "'map': s.AUTH_LDAP_USER_ATTR_MAP, 'mirror': s.AUTH_LDAP_MIRROR_GROUPS,"
        "'group_type': type(s.AUTH_LDAP_GROUP_TYPE).__name__}))"
    )

    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )

    found = json.loads(result.stdout)
    assert found["backends"] == [
        "axes.backends.AxesStandaloneBackend",
        "django_auth_ldap.backend.LDAPBackend",
    ]
    assert found["search"] == ["OU=People,DC=example,DC=com", 2, "(sAMAccountName=%(user)s)"]
    assert found["map"]["organizational_unit"] == "department"
    assert found["map"]["display_name"] == "displayName"
    assert found["mirror"] == ["PKI RA Officers", "Key recovery agents"]
    assert found["group_type"] == "NestedActiveDirectoryGroupType"
