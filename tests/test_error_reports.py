"""What Django's error reports (the DEBUG page, the mails to ADMINS) show of the settings
and of the request: pkiportal.errors.SecretsHiddenReporterFilter."""

from __future__ import annotations

import secrets

import pytest

from django.test import RequestFactory
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
