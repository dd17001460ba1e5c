"""What Django's error reports (the DEBUG page, the mails to ADMINS) show of the settings
and of the request: pkiportal.errors.SecretsHiddenReporterFilter."""

from __future__ import annotations

import secrets

import pytest

from django.test import RequestFactory
from django.utils.translation import gettext_lazy
from django.views.debug import ExceptionReporter

from pkiportal.errors import SecretsHiddenReporterFilter

HIDDEN = SecretsHiddenReporterFilter.cleansed_substitute


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:broker-secret@127.0.0.1:6379/0", f"redis://:{HIDDEN}@127.0.0.1:6379/0"),
        ("postgres://pki:db%40secret@db.example/pki", f"postgres://pki:{HIDDEN}@db.example/pki"),
        ("smtp+tls://mailer:mail-secret@smtp:587", f"smtp+tls://mailer:{HIDDEN}@smtp:587"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("https://pki.example/a@b", "https://pki.example/a@b"),
        ("https://pki.example:8443/a@b", "https://pki.example:8443/a@b"),
        ("redis://:p@ss-secret@h/0", f"redis://:{HIDDEN}@h/0"),  # urlsplit's user part
        ("ldap://u@h x=https://a:b-secret@c/d", f"ldap://u@h x=https://a:{HIDDEN}@c/d"),
    ],
)
def test_the_password_of_a_url_in_the_settings_is_hidden(settings, url, shown):
    settings.CELERY_BROKER_URL = url  # a name no pattern gives away

    assert SecretsHiddenReporterFilter().get_safe_settings()["CELERY_BROKER_URL"] == shown


def _fails() -> None:
    raise RuntimeError("boom")


def test_a_report_hides_the_authorization_header_and_form_fields_named_like_secrets():
    # Made at run time: a literal would show in the report as a line of this file.
    password, pin, credentials, db_password = (secrets.token_hex(8) for _ in range(4))
    request = RequestFactory().post(
        "/api/v1/enrollments/",
        {"template": "smime-signing", "pkcs12_password": password, "new_pin": pin},
        headers={"Authorization": f"Basic {credentials}"},
        DATABASE_URL=f"postgres://pki:{db_password}@db/pki",  # runserver copies os.environ
    )
    try:
        _fails()
    except RuntimeError as exc:
        # From the frame that raised: this test's own locals hold the secrets.
        reporter = ExceptionReporter(request, type(exc), exc, exc.__traceback__.tb_next)
    text = reporter.get_traceback_text() + reporter.get_traceback_html()

    assert "smime-signing" in text  # the report still shows the request
    assert "postgres://pki:" in text
    for secret in (password, pin, credentials, db_password):
        assert secret not in text


def test_a_lazy_setting_is_shown_evaluated_without_its_password(settings):
    settings.CELERY_BROKER_URL = gettext_lazy("redis://:lazy-secret@127.0.0.1:6379/0")

    shown = SecretsHiddenReporterFilter().get_safe_settings()["CELERY_BROKER_URL"]

    assert shown == f"redis://:{HIDDEN}@127.0.0.1:6379/0"


def test_long_headers_are_read_once():
    """A client chooses the headers a report shows: 100 of 8 KB each, as gunicorn allows.
    A backtracking pattern took half a minute over these; this answers at once."""
    request = RequestFactory().get("/", **{f"HTTP_X_H{i}": "a" * 8190 for i in range(100)})
    meta = SecretsHiddenReporterFilter().get_safe_request_meta(request)
    assert meta["HTTP_X_H99"] == "a" * 8190


def test_a_form_field_named_like_a_code_is_hidden():
    request = RequestFactory().post("/account/", {"backup_code": "1234-5678", "note": "shown"})
    parameters = SecretsHiddenReporterFilter().get_post_parameters(request)
    assert parameters["backup_code"] == HIDDEN
    assert parameters["note"] == "shown"
