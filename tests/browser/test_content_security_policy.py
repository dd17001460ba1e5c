"""Every page works under the Content-Security-Policy, in a real browser.

The policy forbids inline script and style and anything from another origin; a page that
still used one would lose it silently. Chromium reports each blocked load or inline
script on the console, so each page is opened as the role that sees it and the console
must stay free of policy violations. A deliberate violation at the end shows the
listener hears them.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import ConsoleMessage, Page

from django.conf import settings
from django.test import Client

from tests.browser.test_enrol_in_browser import CHROMIUM, chromium_page
from tests.enrollment.tools import issue
from tests.second_factor import verified_login

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"
    ),
]


def violations(messages: list[ConsoleMessage]) -> list[str]:
    return [m.text for m in messages if "Content Security Policy" in m.text]


def session_cookie(user) -> str:
    """A session made by Django's test client, to hand to the browser: made before the
    browser starts, since Django refuses queries while Playwright's loop runs."""
    client = Client()
    verified_login(client, user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def visit(page: Page, url: str, ready: str) -> None:
    response = page.goto(url)
    assert response is not None
    assert response.status == 200, url
    assert "default-src 'self'" in response.headers["content-security-policy"], url
    page.wait_for_selector(ready)
    page.wait_for_load_state("networkidle")


def test_every_page_runs_without_a_policy_violation(
    live_server, hierarchy, template, kra, employee, officer, admin_user, ec_p256_key,
    archived, asked,
):  # fmt: skip
    certificate = issue(employee, template("smime-signing"), ec_p256_key)
    fingerprint = certificate.fingerprint_sha256
    pages = {
        None: [
            ("/accounts/login/", "#id_username"),
            (f"/directory/?q={employee.last_name}", "main"),
        ],
        employee: [
            ("/", "main"),
            ("/enroll/", "main"),
            ("/enroll/smime-signing/", "#id_pkcs12_password"),
            ("/certificates/", "main"),
            (f"/certificates/{certificate.pk}/", "main"),
            (f"/certificates/{archived.certificate.pk}/", "#recover"),
            (f"/ra/recovery/{asked.pk}/", "#withdraw"),
            (f"/directory/{fingerprint}/", "main"),
            ("/api/v1/certificates/", ".response-info"),  # DRF's browsable API
            ("/api/v1/docs/", ".opblock"),  # Swagger UI, drawn by its script
        ],
        officer: [
            ("/ra/", "main"),
            ("/ra/requests/", "main"),
            (f"/ra/certificates/?q={employee.last_name}", "main"),
            ("/ra/audit/", "main"),
            ("/ra/recovery/", "main"),
            (f"/ra/recovery/{asked.pk}/?as=officer", "#accept"),
            ("/ra/agents/", "main"),
        ],
        admin_user: [
            ("/admin/", "#content"),
            ("/admin/enrollment/certificate/?q=alice", "#result_list"),
            (f"/admin/enrollment/certificate/{certificate.pk}/change/", "#content"),
            (f"/admin/accounts/user/{employee.pk}/change/", "#content-main"),
            ("/admin/enrollment/keyrecoveryagent/", "#result_list"),
            ("/admin/enrollment/certificatetemplate/add/", "#content-main"),
        ],
    }
    cookies = {user: session_cookie(user) for user in pages if user is not None}
    seen: dict[str, list[str]] = {}
    with chromium_page() as page:
        messages: list[ConsoleMessage] = []
        page.on("console", lambda message: messages.append(message))
        for user, paths in pages.items():
            page.context.clear_cookies()
            if user is not None:
                cookie = {"name": settings.SESSION_COOKIE_NAME, "value": cookies[user]}
                page.context.add_cookies([{**cookie, "url": live_server.url}])
            for path, ready in paths:
                before = len(messages)
                visit(page, f"{live_server.url}{path}", ready)
                seen[path] = violations(messages[before:])

        # The control: an inline script and an image from elsewhere are refused, and heard.
        before = len(messages)
        page.evaluate(
            """() => {
                const script = document.createElement("script");
                script.textContent = "window.injected = true";
                document.body.append(script);
                const image = document.createElement("img");
                image.src = "http://192.0.2.1/pixel.png";
                document.body.append(image);
            }"""
        )
        page.wait_for_timeout(200)
        control = violations(messages[before:])
        injected = page.evaluate("() => window.injected === true")

    failing = {path: found for path, found in seen.items() if found}
    assert not failing, "\n".join(f"{path}: {found}" for path, found in failing.items())
    assert len(seen) == sum(len(paths) for paths in pages.values())
    assert not injected
    assert any("script-src" in text for text in control), control
    assert any("img-src" in text for text in control), control
