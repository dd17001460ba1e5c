"""What Django's error reports (the DEBUG page, the mails to ADMINS) show of the settings
and of the request: pkiportal.errors.SecretsHiddenReporterFilter."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from django.test import RequestFactory
from django.utils.translation import gettext_lazy
from django.views.debug import ExceptionReporter

from pkiportal.errors import SecretsHiddenReporterFilter, without_url_passwords

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
        # Celery's failover list: the next URL begins on the last one's authority.
        ("amqp://u:s1@h1;amqp://u:s2@h2", f"amqp://u:{HIDDEN}@h1;amqp://u:{HIDDEN}@h2"),
        ("redis://:s1@h1,redis://:s2@h2/0", f"redis://:{HIDDEN}@h1,redis://:{HIDDEN}@h2/0"),
        ("http://https://user:s3@host/", f"http://https://user:{HIDDEN}@host/"),
        ("postgres://u:with space@h/db", f"postgres://u:{HIDDEN}@h/db"),  # as urlsplit reads
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


@given(
    user=st.text(alphabet=st.characters(blacklist_characters="/?#@:[]\t\r\n"), max_size=8),
    password=st.text(alphabet=st.characters(blacklist_characters="/?#[]\t\r\n"), min_size=1),
    host=st.from_regex(r"[a-z][a-z0-9.-]{0,12}", fullmatch=True),
    before=st.sampled_from(["", "broker=", "x://h:6379;", "a://b@", "http://", "s://u:p@h "]),
    after=st.sampled_from(["", "/0", "?x=1", "#f", ";redis://:p2@h2", "/a@b", " next"]),
)
def test_no_password_urlsplit_reads_is_ever_shown(user, password, host, before, after):
    """Whatever surrounds it, the password urlsplit() and django-environ read out of a URL
    is not in what the report shows."""
    url = f"redis://{user}:{password}@{host}{after}"
    assert urlsplit(url).password == password
    shown = without_url_passwords(f"{before}{url}", HIDDEN)
    assert f":{password}@{host}" not in shown
