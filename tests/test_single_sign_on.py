"""Directory (LDAP) and single sign-on (OIDC): attributes land on the account, roles mirror.

Neither django-auth-ldap nor mozilla-django-oidc is a runtime dependency. The claim mapping
is plain code tested here; mozilla-django-oidc is a development dependency, so the OIDC
backend is tested through its authenticate() with the provider's answers stubbed, and the
LDAP settings are read with stand-ins for the two LDAP modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from accounts.oidc import PortalOIDCBackend
from accounts.session_store import SessionStore
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
    "email_verified": True,
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


@pytest.fixture
def backend(settings, monkeypatch) -> PortalOIDCBackend:
    """The backend for a provider whose token endpoint answers and whose ID token checks out."""
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = "https://idp.example.com/authorize"
    settings.OIDC_OP_TOKEN_ENDPOINT = "https://idp.example.com/token"
    settings.OIDC_OP_USER_ENDPOINT = "https://idp.example.com/userinfo"
    settings.OIDC_OP_JWKS_ENDPOINT = "https://idp.example.com/jwks"
    settings.OIDC_RP_CLIENT_ID = "pkiportal"
    settings.OIDC_RP_CLIENT_SECRET = "secret"
    settings.OIDC_RP_SIGN_ALGO = "RS256"
    settings.ROOT_URLCONF = "tests.oidc_urls"
    monkeypatch.setattr(
        PortalOIDCBackend, "get_token", lambda self, payload: {"id_token": "i", "access_token": "a"}
    )
    monkeypatch.setattr(PortalOIDCBackend, "verify_token", lambda self, token, **kwargs: {"ok": 1})
    return PortalOIDCBackend()


@pytest.fixture
def sign_in(backend, monkeypatch):
    """The callback's authenticate(), the provider's userinfo endpoint answering ``claims``."""

    def sign_in(claims: dict) -> object:
        monkeypatch.setattr(
            PortalOIDCBackend, "get_userinfo", lambda self, access, id_token, payload: claims
        )
        request = RequestFactory().get("/oidc/callback/", {"code": "c0de", "state": "st4te"})
        request.session = SessionStore()
        return backend.authenticate(request, nonce="n0nce")

    return sign_in


def snapshot(user) -> dict:
    user.refresh_from_db()
    return {
        "username": user.username,
        "names": (user.first_name, user.last_name, user.display_name),
        "email": user.email,
        "unit": user.organizational_unit,
        "flags": (user.is_superuser, user.is_staff, user.is_active),
        "groups": set(user.groups.values_list("name", flat=True)),
        "password": user.password,
    }


def test_the_oidc_backend_creates_and_refreshes_accounts(backend):
    user = backend.create_user(CLAIMS)
    renamed = backend.update_user(user, {**CLAIMS, "family_name": "Martin", "groups": []})

    assert user.username == "dora"
    assert not user.has_usable_password()
    assert renamed.last_name == "Martin"
    assert not renamed.groups.exists()
    assert backend.verify_claims(CLAIMS)
    assert not backend.verify_claims({**CLAIMS, "email_verified": False})
    assert not backend.verify_claims({"sub": "no-address"})


def test_a_sign_in_finds_the_account_by_user_name_and_refreshes_only_it(sign_in):
    dora = sign_in(CLAIMS)
    colleague = UserFactory(username="dupont", email="d.dupont@example.com")
    before = snapshot(colleague)

    again = sign_in({**CLAIMS, "family_name": "Martin", "groups": []})

    assert again.pk == dora.pk
    assert again.username == "dora"
    assert again.last_name == "Martin"
    assert not again.groups.exists()
    assert snapshot(colleague) == before
    assert get_user_model().objects.count() == 2


@pytest.fixture
def browser_sign_in(backend, monkeypatch, settings, client):
    """The browser's round trip: /oidc/authenticate/ to the provider, back to the callback."""
    settings.AUTHENTICATION_BACKENDS = [
        "axes.backends.AxesStandaloneBackend",
        "accounts.oidc.PortalOIDCBackend",
    ]

    def browser_sign_in(claims: dict):
        monkeypatch.setattr(
            PortalOIDCBackend, "get_userinfo", lambda self, access, id_token, payload: claims
        )
        to_provider = client.get("/oidc/authenticate/")
        assert to_provider.url.startswith("https://idp.example.com/authorize?")
        state = parse_qs(urlsplit(to_provider.url).query)["state"][0]
        return client.get("/oidc/callback/", {"code": "c0de", "state": state})

    return browser_sign_in


def test_the_callback_signs_the_browser_in_to_the_named_account(browser_sign_in, client):
    dora = UserFactory(username="dora", email="dora.dupont@example.com")

    response = browser_sign_in({**CLAIMS, "family_name": "Martin"})

    assert response.status_code == 302
    assert response.url == reverse("home")
    assert client.session["_auth_user_id"] == str(dora.pk)
    dora.refresh_from_db()
    assert dora.last_name == "Martin"


@pytest.mark.parametrize(
    ("trust", "amr", "verified"),
    [
        ("amr", ["pwd", "mfa"], True),
        ("amr", ["hwk"], True),
        ("amr", ["pwd"], False),
        ("amr", None, False),
        ("amr", "mfa", False),  # not a list, as RFC 8176 has it
        ("always", None, True),
        ("never", ["pwd", "otp"], False),
    ],
)
def test_a_single_sign_on_counts_as_the_second_factor_when_the_provider_says_so(
    browser_sign_in, client, monkeypatch, settings, trust, amr, verified
):
    """An officer signing in through the provider: its ID token's amr claim says whether it
    checked a second factor (PKIPORTAL_MFA_TRUST_SINGLE_SIGN_ON)."""
    settings.PKIPORTAL_MFA_TRUST_SINGLE_SIGN_ON = trust
    token = {"nonce": "n0nce"} | ({} if amr is None else {"amr": amr})
    monkeypatch.setattr(PortalOIDCBackend, "verify_token", lambda self, t, **kwargs: token)

    assert browser_sign_in(CLAIMS).status_code == 302
    response = client.get("/ra/requests/")

    assert "pkiportal_oidc_amr" not in client.session  # kept only until login()
    if verified:
        assert response.status_code == 200
    else:
        assert response.status_code == 302
        assert response["Location"].startswith("/account/two-factor/setup/")


@pytest.mark.parametrize(("amr", "verified"), [(["pwd", "mfa"], True), (["pwd"], False)])
def test_a_password_sign_in_waiting_for_its_code_may_switch_to_single_sign_on(
    browser_sign_in, client, monkeypatch, settings, amr, verified
):
    """An officer typed the password, then chose the provider on the code page: the portal
    lets the provider's pages through, and that sign-in starts the second step anew."""
    from tests.second_factor import authenticator

    settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, "mozilla_django_oidc"]  # the link

    dora = UserFactory(username="dora", email="dora.dupont@example.com")
    authenticator(dora)
    client.force_login(dora)  # the password step, no code yet
    assert client.get("/ra/requests/")["Location"].startswith("/account/two-factor/verify/")
    assert (
        b"Sign in with single sign-on instead" in client.get("/account/two-factor/verify/").content
    )
    token = {"nonce": "n0nce", "amr": amr}
    monkeypatch.setattr(PortalOIDCBackend, "verify_token", lambda self, t, **kwargs: token)

    assert browser_sign_in(CLAIMS).status_code == 302
    response = client.get("/ra/requests/")

    assert client.session["_auth_user_id"] == str(dora.pk)
    if verified:
        assert response.status_code == 200
    else:
        assert response["Location"].startswith("/account/two-factor/verify/")


def test_signing_in_through_the_provider_again_is_a_recent_sign_in(
    browser_sign_in, client, settings, time_machine
):
    """mozilla-django-oidc takes a callback for the session's own person for a refresh and
    does not log in again: the provider did sign them in, so tokens may be minted (a
    person without a password has no other way to sign in again)."""
    from enrollment import recent_sign_in

    dora = UserFactory(username="dora", email="dora.dupont@example.com")
    employee_claims = {**CLAIMS, "groups": ["Everyone"]}  # no role: no second step
    assert browser_sign_in(employee_claims).status_code == 302
    key = client.session.session_key
    later = timezone.now() + timedelta(minutes=settings.PKIPORTAL_TOKEN_SIGN_IN_MINUTES + 5)
    time_machine.move_to(later)
    request = RequestFactory().get("/")
    request.session = client.session
    assert not recent_sign_in.signed_in_recently(request)

    assert browser_sign_in(employee_claims).status_code == 302

    request.session = client.session
    assert recent_sign_in.signed_in_recently(request)
    assert client.session["_auth_user_id"] == str(dora.pk)
    # A copy of the old cookie (stolen, say) shares in none of it: that session is gone.
    assert client.session.session_key != key
    stolen = SessionStore(session_key=key)
    assert "_auth_user_id" not in stolen.load()


def test_the_callback_refuses_another_accounts_address(browser_sign_in, client, admin_user):
    before = snapshot(admin_user)

    response = browser_sign_in(
        {**CLAIMS, "preferred_username": "mallory", "email": admin_user.email.upper()}
    )

    assert response.status_code == 302  # to the failure URL, signed out
    assert "_auth_user_id" not in client.session
    assert snapshot(admin_user) == before
    assert not get_user_model().objects.filter(username="mallory").exists()


def test_another_accounts_address_does_not_sign_in_as_it(sign_in):
    # The provider's user "mallory" carries the superuser's address (in another case).
    admin = UserFactory(
        username="admin",
        first_name="Ada",
        last_name="Admin",
        email="admin@example.com",
        is_staff=True,
        is_superuser=True,
    )
    admin.groups.add(Group.objects.get_or_create(name="Key recovery agents")[0])
    before = snapshot(admin)
    mallory = {
        **CLAIMS,
        "sub": "ffff-0001",
        "preferred_username": "mallory",
        "given_name": "Mallory",
        "family_name": "Mallet",
        "name": "Mallory Mallet",
        "email": "Admin@Example.COM",
        "groups": ["RA officers"],
    }

    assert sign_in(mallory) is None

    # Refused, not given a second account under that address: the directory hands out
    # certificates by address, so mallory would receive mail encrypted to the admin.
    assert list(get_user_model().objects.values_list("username", flat=True)) == ["admin"]
    assert snapshot(admin) == before


def test_an_address_taken_from_another_account_is_refused_at_refresh(sign_in):
    mallory = sign_in({**CLAIMS, "preferred_username": "mallory", "email": "m@x.org"})
    UserFactory(username="admin", email="admin@example.com", is_superuser=True)

    refreshed = sign_in({**CLAIMS, "preferred_username": "mallory", "email": "admin@example.com"})

    assert refreshed is None
    mallory.refresh_from_db()
    assert mallory.email == "m@x.org"


def test_a_local_account_of_the_same_user_name_is_signed_into(sign_in):
    # The documented choice: local and single sign-on accounts share the user names.
    local = UserFactory(username="dora", first_name="Old", email="dora@old.example.com")
    local.groups.add(Group.objects.get_or_create(name="Key recovery agents")[0])

    user = sign_in(CLAIMS)

    assert user.pk == local.pk
    user.refresh_from_db()
    assert (user.first_name, user.email) == ("Dora", "dora.dupont@example.com")
    assert user.check_password("correct horse battery staple")  # left as it was
    assert set(user.groups.values_list("name", flat=True)) == {"RA officers"}


@pytest.mark.parametrize("verified", [False, None, "true", 1, "missing"])
def test_an_address_not_verified_as_true_is_refused(sign_in, verified):
    claims = {**CLAIMS, "email_verified": verified}
    if verified == "missing":
        del claims["email_verified"]
    existing = UserFactory(username="dora", first_name="Old", email="dora@old.example.com")
    before = snapshot(existing)

    assert sign_in(claims) is None
    assert sign_in({**claims, "preferred_username": "newcomer"}) is None

    assert snapshot(existing) == before
    assert not get_user_model().objects.filter(username="newcomer").exists()


def test_trusting_the_providers_addresses_accepts_only_a_missing_claim(sign_in, settings):
    settings.OIDC_TRUST_PROVIDER_EMAIL = True
    unsaid = {key: value for key, value in CLAIMS.items() if key != "email_verified"}

    user = sign_in(unsaid)

    assert user.username == "dora"
    assert user.email == "dora.dupont@example.com"
    assert sign_in({**CLAIMS, "email_verified": False}) is None


@pytest.mark.parametrize("username", ["missing", "", 42, "x" * 151])
def test_a_sign_in_without_a_usable_user_name_is_refused(sign_in, username):
    # Without one, mozilla-django-oidc would derive the name from the e-mail address.
    claims = {**CLAIMS, "preferred_username": username}
    if username == "missing":
        del claims["preferred_username"]

    assert sign_in(claims) is None
    assert not get_user_model().objects.exists()


def test_the_username_claim_is_configurable(sign_in, settings):
    settings.OIDC_CLAIM_USERNAME = "sub"
    first = sign_in(CLAIMS)

    again = sign_in({**CLAIMS, "preferred_username": "someone-else"})

    assert first.username == again.username == "0b7e-44c1"
    assert get_user_model().objects.count() == 1


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


@pytest.mark.parametrize(("value", "trusted"), [(None, False), ("true", True)])
def test_the_oidc_settings_come_from_the_environment(tmp_path: Path, value, trusted):
    env = {
        **os.environ,
        "PKIPORTAL_VAR_DIR": str(tmp_path / "var"),
        "AUTHENTICATION_BACKENDS": "accounts.oidc.PortalOIDCBackend",
        "OIDC_RP_CLIENT_ID": "pkiportal",
        "OIDC_OP_AUTHORIZATION_ENDPOINT": "https://idp.example.com/authorize",
        "OIDC_OP_TOKEN_ENDPOINT": "https://idp.example.com/token",
        "OIDC_OP_USER_ENDPOINT": "https://idp.example.com/userinfo",
        "OIDC_CLAIM_USERNAME": "upn",
    }
    env.pop("OIDC_TRUST_PROVIDER_EMAIL", None)
    if value is not None:
        env["OIDC_TRUST_PROVIDER_EMAIL"] = value
    script = (
        "import json, pkiportal.settings as s; print(json.dumps({"
        "'apps': s.INSTALLED_APPS, 'claim': s.OIDC_CLAIM_USERNAME,"
        "'trust': s.OIDC_TRUST_PROVIDER_EMAIL}))"
    )

    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )

    found = json.loads(result.stdout)
    assert "mozilla_django_oidc" in found["apps"]
    assert found["claim"] == "upn"
    assert found["trust"] is trusted
