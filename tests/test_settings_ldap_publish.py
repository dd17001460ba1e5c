"""The LDAP publication settings: off by default, on with a URI and a search base, the
bind password from a file, and every malformed value refused at start-up.

The settings module is executed afresh under a patched environment (conftest's
load_settings); Django's own settings object is not touched.
"""

from __future__ import annotations

import pytest

from django.core.exceptions import ImproperlyConfigured

ON = {
    "PKIPORTAL_LDAP_PUBLISH_URI": "ldaps://dc1.example.com",
    "PKIPORTAL_LDAP_PUBLISH_SEARCH_BASE": "OU=People,DC=example,DC=com",
}


def test_it_is_off_by_default_with_no_reconciliation_scheduled(load_settings):
    loaded = load_settings()

    assert loaded["PKIPORTAL_LDAP_PUBLISH_URI"] == ""
    assert "ldap-reconcile" not in loaded["CELERY_BEAT_SCHEDULE"]


def test_a_uri_and_base_turn_it_on_with_hourly_reconciliation(load_settings, tmp_path):
    secret = tmp_path / "bind"
    secret.write_text("s3cret-from-a-file\n")
    loaded = load_settings(
        **ON,
        PKIPORTAL_LDAP_PUBLISH_BIND_PASSWORD_FILE=str(secret),
        PKIPORTAL_LDAP_PUBLISH_FILTER="(sAMAccountName=%(user)s)",
        PKIPORTAL_LDAP_PUBLISH_ATTRIBUTES="userCertificate,userSMIMECertificate",
    )

    assert loaded["PKIPORTAL_LDAP_PUBLISH_BIND_PASSWORD"] == "s3cret-from-a-file"
    assert loaded["PKIPORTAL_LDAP_PUBLISH_ATTRIBUTES"] == [
        "userCertificate",
        "userSMIMECertificate",
    ]
    assert loaded["PKIPORTAL_LDAP_PUBLISH_CERTIFICATES"] == "encryption"
    entry = loaded["CELERY_BEAT_SCHEDULE"]["ldap-reconcile"]
    assert entry["task"] == "enrollment.tasks.ldap_reconcile_task"
    assert entry["schedule"].total_seconds() == 3600


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"PKIPORTAL_LDAP_PUBLISH_URI": "http://dc1.example.com"}, "must start with ldap://"),
        ({"PKIPORTAL_LDAP_PUBLISH_START_TLS": "true"}, "ldaps:// is"),
        ({"PKIPORTAL_LDAP_PUBLISH_SEARCH_BASE": ""}, "SEARCH_BASE is required"),
        ({"PKIPORTAL_LDAP_PUBLISH_FILTER": "(uid=%(login)s)"}, "%(user)s and %(email)s"),
        ({"PKIPORTAL_LDAP_PUBLISH_FILTER": "(uid=alice)"}, "parenthesised LDAP filter"),
        ({"PKIPORTAL_LDAP_PUBLISH_FILTER": "uid=%(user)s"}, "parenthesised LDAP filter"),
        ({"PKIPORTAL_LDAP_PUBLISH_ATTRIBUTES": "mail"}, "takes userCertificate"),
        ({"PKIPORTAL_LDAP_PUBLISH_CERTIFICATES": "signing"}, '"encryption" or "all"'),
        ({"PKIPORTAL_LDAP_PUBLISH_TIMEOUT": "0"}, "1 to 120"),
        ({"PKIPORTAL_LDAP_RECONCILE_MINUTES": "1"}, "5 to 1440"),
        ({"PKIPORTAL_LDAP_PUBLISH_BIND_PASSWORD_FILE": "/nonexistent/bind"}, "cannot be read"),
    ],
)
def test_a_malformed_value_stops_the_portal(load_settings, variables, named):
    with pytest.raises(ImproperlyConfigured, match=named.replace("(", r"\(").replace(")", r"\)")):
        load_settings(**{**ON, **variables})
