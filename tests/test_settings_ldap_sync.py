"""The directory leavers' sync settings: off by default; on, it needs the sign-in directory
(AUTH_LDAP_SERVER_URI) and ldap3, a filter that names the attribute holding the user name,
and a parenthesised "disabled" filter, or the portal refuses to start.

The settings module is executed afresh under a patched environment (conftest's
load_settings); python-ldap and django-auth-ldap, not installed here, are stood in for by
empty modules with the one name each the settings module takes from them.
"""

from __future__ import annotations

import sys
import types

import pytest

from django.core.exceptions import ImproperlyConfigured

from enrollment.ldap_filter import any_of, escape, user_attributes

SIGN_IN = {
    "AUTH_LDAP_SERVER_URI": "ldaps://dc1.example.com ldaps://dc2.example.com",
    "AUTH_LDAP_BIND_DN": "CN=pkiportal,OU=Services,DC=example,DC=com",
    "AUTH_LDAP_USER_SEARCH_BASE": "OU=People,DC=example,DC=com",
    "AUTH_LDAP_USER_FILTER": "(&(objectCategory=person)(sAMAccountName=%(user)s))",
}


@pytest.fixture
def django_auth_ldap(monkeypatch):
    """Stand-ins for python-ldap and django-auth-ldap (the settings only build objects)."""
    ldap = types.ModuleType("ldap")
    ldap.SCOPE_SUBTREE = 2  # type: ignore[attr-defined]
    config = types.ModuleType("django_auth_ldap.config")
    for name in ("LDAPSearch", "GroupOfNamesType", "NestedActiveDirectoryGroupType"):
        setattr(config, name, type(name, (), {"__init__": lambda self, *args: None}))
    monkeypatch.setitem(sys.modules, "ldap", ldap)
    monkeypatch.setitem(sys.modules, "django_auth_ldap", types.ModuleType("django_auth_ldap"))
    monkeypatch.setitem(sys.modules, "django_auth_ldap.config", config)


def test_it_is_off_by_default_with_no_run_scheduled(load_settings):
    loaded = load_settings()

    assert loaded["PKIPORTAL_LDAP_SYNC_LEAVERS"] is False
    assert loaded["PKIPORTAL_LDAP_SYNC_MAX_PER_RUN"] == 25
    assert loaded["PKIPORTAL_LDAP_SYNC_DISABLED_FILTER"] == (
        "(userAccountControl:1.2.840.113556.1.4.803:=2)"
    )
    assert "ldap-sync-leavers" not in loaded["CELERY_BEAT_SCHEDULE"]


def test_on_with_the_sign_in_directory_it_runs_hourly(load_settings, django_auth_ldap, tmp_path):
    secret = tmp_path / "bind"
    secret.write_text("bind-secret\n")

    loaded = load_settings(
        **SIGN_IN,
        AUTH_LDAP_BIND_PASSWORD_FILE=str(secret),
        PKIPORTAL_LDAP_SYNC_LEAVERS="true",
        PKIPORTAL_LDAP_SYNC_MAX_PER_RUN="10",
    )

    assert loaded["AUTH_LDAP_BIND_PASSWORD"] == "bind-secret"
    assert loaded["AUTH_LDAP_USER_SEARCH_BASE"] == "OU=People,DC=example,DC=com"
    assert loaded["AUTH_LDAP_USER_FILTER"] == SIGN_IN["AUTH_LDAP_USER_FILTER"]
    assert loaded["PKIPORTAL_LDAP_SYNC_MAX_PER_RUN"] == 10
    entry = loaded["CELERY_BEAT_SCHEDULE"]["ldap-sync-leavers"]
    assert entry["task"] == "enrollment.tasks.ldap_sync_leavers_task"
    assert entry["schedule"].total_seconds() == 3600


def test_on_without_the_sign_in_directory_the_portal_refuses_to_start(load_settings):
    with pytest.raises(ImproperlyConfigured, match="set AUTH_LDAP_SERVER_URI"):
        load_settings(PKIPORTAL_LDAP_SYNC_LEAVERS="true")


def test_on_without_ldap3_the_portal_refuses_to_start(load_settings, django_auth_ldap, monkeypatch):
    monkeypatch.setitem(sys.modules, "ldap3", None)  # as if not installed

    with pytest.raises(ImproperlyConfigured, match="ldap3 package is not installed"):
        load_settings(**SIGN_IN, PKIPORTAL_LDAP_SYNC_LEAVERS="true")


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"AUTH_LDAP_SERVER_URI": "ldapi:///run/slapd.sock"}, "not ldapi://"),
        ({"AUTH_LDAP_USER_FILTER": "(cn=*%(user)s*)"}, "compares none"),
        ({"AUTH_LDAP_USER_FILTER": "(1.2.840.113556.1.4.221=%(user)s)"}, "compares none"),
        ({"PKIPORTAL_LDAP_SYNC_DISABLED_FILTER": "nsAccountLock=TRUE"}, "parenthesised"),
        ({"PKIPORTAL_LDAP_SYNC_MAX_PER_RUN": "-1"}, "0 to 100000 accounts"),
        ({"PKIPORTAL_LDAP_SYNC_MAX_PER_RUN": "ten"}, "0 to 100000 accounts"),
        ({"PKIPORTAL_LDAP_SYNC_TIMEOUT": "0"}, "1 to 120 seconds"),
    ],
)
def test_a_malformed_value_stops_the_portal(load_settings, django_auth_ldap, variables, named):
    with pytest.raises(ImproperlyConfigured, match=named):
        load_settings(**{**SIGN_IN, "PKIPORTAL_LDAP_SYNC_LEAVERS": "true", **variables})


def test_an_empty_disabled_filter_is_allowed(load_settings, django_auth_ldap):
    loaded = load_settings(
        **SIGN_IN, PKIPORTAL_LDAP_SYNC_LEAVERS="true", PKIPORTAL_LDAP_SYNC_DISABLED_FILTER=""
    )

    assert loaded["PKIPORTAL_LDAP_SYNC_DISABLED_FILTER"] == ""


# --- the filter helpers (RFC 4515), no directory needed -----------------------------------


@pytest.mark.parametrize(
    ("template", "attributes"),
    [
        ("(uid=%(user)s)", ["uid"]),
        ("(&(objectCategory=person)(sAMAccountName=%(user)s))", ["sAMAccountName"]),
        ("(|(uid=%(user)s)(mail=%(user)s)(uid=%(user)s))", ["uid", "mail"]),
        ("( uid = %(user)s )", ["uid"]),
        ("(cn=*%(user)s*)", []),
        ("(uid>=%(user)s)", []),
    ],
)
def test_the_attributes_compared_with_the_user_name(template, attributes):
    assert user_attributes(template) == attributes


def test_special_characters_are_escaped():
    assert escape("a*b(c)d\\e\0") == r"a\2ab\28c\29d\5ce\00"
    assert escape("Zoë") == "Zoë"  # UTF-8 is written as it is (RFC 4515 section 3)


def test_one_filter_asks_for_many_user_names():
    assert any_of("(uid=%(user)s)", ["a", "b*"]) == r"(|(uid=a)(uid=b\2a))"
    assert any_of("(uid=%(user)s)", ["a"]) == "(uid=a)"
