"""The Content-Security-Policy header: strict everywhere, one narrow exception.

tests/browser/test_content_security_policy.py shows in Chromium that every page works
under it; these tests pin the header itself on each kind of response.
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import client_for
from tests.enrollment.api_tools import CERTIFICATES, session_client, token_client

pytestmark = pytest.mark.django_db


def directives(response) -> dict[str, str]:
    header = response["Content-Security-Policy"]
    parts = (part.strip().split(None, 1) for part in header.split(";") if part.strip())
    return {name: value for name, value in parts}


def assert_strict(policy: dict[str, str]) -> None:
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["object-src"] == "'none'"
    assert policy["base-uri"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["form-action"] == "'self'"


def test_pages_forbid_inline_script_and_style(anonymous_client, employee):
    for response in (
        anonymous_client.get("/accounts/login/"),
        client_for(employee).get("/enroll/"),
        client_for(employee).get("/certificates/"),
    ):
        assert response.status_code == 200
        policy = directives(response)
        assert_strict(policy)
        assert "style-src-attr" not in policy
        assert "unsafe" not in response["Content-Security-Policy"]


def test_api_answers_carry_the_strict_policy_too(employee):
    response = token_client(employee).get(CERTIFICATES)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert_strict(directives(response))
    assert "unsafe" not in response["Content-Security-Policy"]


def test_only_the_browsable_api_may_use_inline_style_attributes(employee):
    response = session_client(employee).get(CERTIFICATES, HTTP_ACCEPT="text/html")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    policy = directives(response)
    assert policy["style-src-attr"] == "'unsafe-inline'"
    assert policy["script-src"] == "'self'"  # scripts stay as strict
    assert policy["style-src"] == "'self'"


def test_the_api_docs_load_swagger_ui_from_here_without_inline_script(employee):
    client = client_for(employee)

    page = client.get("/api/v1/docs/")
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.content.decode(), re.S)

    assert page.status_code == 200
    assert scripts
    assert all('src="' in attributes and not body.strip() for attributes, body in scripts)
    sources = [re.search(r'src="([^"]+)"', attributes)[1] for attributes, _body in scripts]
    assert all(src.startswith("/") for src in sources), sources  # nothing from a CDN
    start_up = client.get(sources[-1])
    assert start_up.status_code == 200
    assert start_up["Content-Type"].startswith("application/javascript")
    assert b"SwaggerUIBundle" in start_up.content


def test_violation_reports_go_where_the_operator_says(load_settings, monkeypatch):
    loaded = load_settings(CSP_REPORT_URI="https://reports.example.com/csp")

    configured = loaded["CONTENT_SECURITY_POLICY"]["DIRECTIVES"]

    assert configured["report-uri"] == ["https://reports.example.com/csp"]
    monkeypatch.delenv("CSP_REPORT_URI")
    assert "report-uri" not in load_settings()["CONTENT_SECURITY_POLICY"]["DIRECTIVES"]


# The header texts are built once per settings and reused (pkiportal.csp): these pin that
# the reuse never carries one response's policy over to another.


def test_a_changed_policy_is_served_at_once(employee, settings):
    client = token_client(employee)
    assert directives(client.get(CERTIFICATES))["img-src"] == "'self' data:"

    settings.CONTENT_SECURITY_POLICY = {"DIRECTIVES": {"default-src": ["'none'"]}}
    settings.CONTENT_SECURITY_POLICY_REPORT_ONLY = {
        "DIRECTIVES": {"default-src": ["'self'"], "report-uri": ["/csp-report/"]}
    }
    response = client.get(CERTIFICATES)

    assert response["Content-Security-Policy"] == "default-src 'none'"
    assert response["Content-Security-Policy-Report-Only"] == (
        "default-src 'self'; report-uri /csp-report/"
    )


def test_prefixes_excluded_later_go_without_the_header_at_once(employee, settings):
    client = token_client(employee)
    assert "Content-Security-Policy" in client.get(CERTIFICATES)

    settings.CONTENT_SECURITY_POLICY_REPORT_ONLY = {
        "DIRECTIVES": {"default-src": ["'self'"]},
        "EXCLUDE_URL_PREFIXES": ["/api/v1/certificates/"],
    }
    excluded = client.get(CERTIFICATES)
    settings.CONTENT_SECURITY_POLICY = {
        **settings.CONTENT_SECURITY_POLICY,
        "EXCLUDE_URL_PREFIXES": ["/api/v1/certificates/"],
    }
    both = client.get(CERTIFICATES)
    del settings.CONTENT_SECURITY_POLICY_REPORT_ONLY
    settings.CONTENT_SECURITY_POLICY = {
        key: value
        for key, value in settings.CONTENT_SECURITY_POLICY.items()
        if key != "EXCLUDE_URL_PREFIXES"
    }
    again = client.get(CERTIFICATES)

    assert "Content-Security-Policy-Report-Only" not in excluded
    assert "img-src 'self' data:" in excluded["Content-Security-Policy"]
    assert "Content-Security-Policy" not in both
    assert "Content-Security-Policy-Report-Only" not in both
    assert "img-src 'self' data:" in again["Content-Security-Policy"]
    assert "Content-Security-Policy-Report-Only" not in again


def test_the_browsable_exception_does_not_leak_into_other_answers(employee):
    browsable = session_client(employee).get(CERTIFICATES, HTTP_ACCEPT="text/html")
    plain = token_client(employee).get(CERTIFICATES)
    browsable_again = session_client(employee).get(CERTIFICATES, HTTP_ACCEPT="text/html")

    assert directives(browsable)["style-src-attr"] == "'unsafe-inline'"
    assert "style-src-attr" not in directives(plain)
    assert directives(browsable_again)["style-src-attr"] == "'unsafe-inline'"


def test_a_view_that_uses_a_nonce_gets_it_in_its_own_header(rf, settings):
    from csp.constants import NONCE, SELF

    from django.http import HttpResponse

    from pkiportal.csp import PortalCSPMiddleware

    settings.CONTENT_SECURITY_POLICY = {"DIRECTIVES": {"script-src": [SELF, NONCE]}}

    def view(request):
        if request.path == "/nonce/":
            return HttpResponse(f"<script nonce='{request.csp_nonce}'></script>")
        return HttpResponse("no script")

    middleware = PortalCSPMiddleware(view)
    plain_before = middleware(rf.get("/"))
    first, second = middleware(rf.get("/nonce/")), middleware(rf.get("/nonce/"))
    plain_after = middleware(rf.get("/"))
    nonces = [re.search(r"nonce='([^']+)'", r.content.decode())[1] for r in (first, second)]

    assert nonces[0] != nonces[1]
    for response, nonce in zip((first, second), nonces, strict=True):
        assert directives(response)["script-src"] == f"'self' 'nonce-{nonce}'"
    for response in (plain_before, plain_after):
        assert directives(response)["script-src"] == "'self'"
