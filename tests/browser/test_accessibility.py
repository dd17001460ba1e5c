"""Every page of the portal passes axe-core's WCAG 2.2 AA checks, as each role sees it.

axe-core is the engine most accessibility checkers are built on. axe-playwright-python
comes with it, so nothing is downloaded while the tests run. It runs in Debian's
chromium with each page's folded sections opened. It checks every page that an
anonymous visitor, an employee, an RA officer and a key recovery agent can reach with
GET. It also checks the pages people see when something goes wrong: a form shown again
with its errors, a refused or locked-out sign-in, a wrong second-factor code, and the
403 and 404 pages; and the admin's pages drawn with our templates (templates/admin/).

Then it walks every page again on a phone (390 CSS pixels, touch; PHONE_CONTEXT says why
every page), where pages take their phone layout: tables stacked into cards, less
padding, so targets' sizes and spacing (WCAG 2.5.8) and labels differ. On either screen
a page wider than the screen fails too (reflow, WCAG 1.4.10, which no axe rule checks).
And once more on the phone in German (a browser asking for it): its longer words are
where a page outgrows the screen first, and every page must say it is German
(<html lang>, WCAG 3.1.1).

Which pages: every route in the URL conf is either visited here or listed in NOT_PAGES
with the reason, and every page template is rendered, so a new page fails this test
until it is checked. All of it runs in one browser, one session per role and screen.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page

from django.conf import settings
from django.contrib.auth.models import Group
from django.test.signals import template_rendered
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.urls.exceptions import Resolver404
from django.utils import translation

from accounts import mfa
from enrollment import recovery, services
from enrollment.models import Certificate, CertificateRequest, KeyRecoveryRequest
from enrollment.permissions import templates_for
from enrollment.x509.keys import KeyAlgorithm
from tests.browser.test_content_security_policy import session_cookie
from tests.browser.test_enrol_in_browser import CHROMIUM, SIGN_IN_PASSWORD, chromium_page
from tests.browser.test_phone_layout import PHONE
from tests.enrollment.ra_fixtures import OWNER_PKCS12_PASSWORD, REASON
from tests.enrollment.tools import issue, new_key
from tests.factories import UserFactory
from tests.phone_pages import Confirmation
from tests.second_factor import code, seed_of

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"
    ),
]

# axe-core's rules for WCAG 2.0, 2.1 and 2.2 at levels A and AA. Its best practices are
# checked too: they caught the audit trail's two navigation landmarks that had no names
# to tell them apart, which no WCAG rule reports.
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]
AXE_OPTIONS = {"runOnly": {"type": "tag", "values": AXE_TAGS}, "resultTypes": ["violations"]}

# Routes with no page of ours to check, by URL name (by path for unnamed ones; "ns:"
# stands for a whole namespace).
NOT_PAGES = {
    # Answers for programs.
    "enrollment-api:": "the JSON API (its browsable pages are Django REST framework's)",
    "directory-api:": "the JSON API",
    "api-schema": "the OpenAPI schema (YAML)",
    "est:": "EST (RFC 7030): DER and PKCS#7 for enrolment clients",
    "pki-ocsp": "OCSP (DER)",
    "pki/ocsp": "OCSP (DER)",
    "pki-ocsp-get": "OCSP (DER)",
    "pki-ca-certificate": "a CA certificate (DER)",
    "pki-ca-certificate-pem": "a CA certificate (PEM)",
    "pki-ca-crl": "a CRL (DER)",
    "pki-ca-chain": "a CA chain (PKCS#7)",
    "enrollment:certificate-download": "a certificate or chain file",
    "ra:audit-export": "the audit trail as CSV or JSON lines",
    "health": "the health check (JSON)",
    "health-live": "the liveness check (plain text)",
    "metrics": "Prometheus metrics (plain text)",
    # Single sign-on, where configured: redirects to the identity provider and back.
    "oidc_authentication_init": "redirects to the identity provider",
    "oidc_authentication_callback": "redirects back from the identity provider",
    "oidc_logout": "redirects to the identity provider",
    # Drawn by Swagger UI's script with its own markup: drf-spectacular's, a third party's.
    "api-docs": "the API docs: drf-spectacular's Swagger UI",
    # Django's own templates and stylesheet, for staff: only the pages drawn with ours
    # (templates/admin/) are checked, by as_admin.
    "admin:": "Django's admin",
    "admin/password_change/": "not mounted: the 404 page, checked",
    "admin/password_change/done/": "not mounted: the 404 page, checked",
    # POST only, answered with a redirect (its message is shown on the page it goes
    # back to, checked there), a file, or JSON for the page's script.
    "accounts:sign-out-elsewhere": "POST, redirects",
    "accounts:mfa-backup-codes": "POST; its page (new codes) is checked after the set-up",
    "accounts:mfa-remove": "POST, redirects",
    "accounts:passkey-register-options": "POST, JSON for static/js/passkey.js",
    "accounts:passkey-register": "POST, JSON for static/js/passkey.js",
    "accounts:passkey-authenticate-options": "POST, JSON for static/js/passkey.js",
    "accounts:passkey-authenticate": "POST, JSON for static/js/passkey.js",
    "accounts:passkey-remove": "POST, redirects",
    "enrollment:request-withdraw": "POST, redirects",
    "enrollment:certificate-renew": "POST, redirects to the enrolment page",
    "enrollment:certificate-revoke": "POST, redirects",
    "enrollment:certificate-recover": "POST, redirects",
    "enrollment:token-revoke": "POST, redirects",
    "enrollment:token-revoke-all": "POST, redirects",
    "ra:notice-delivery": "POST, redirects",
    "ra:certificate-revoke": "POST, redirects",
    "ra:leaver-revoke": "POST, redirects",
    "ra:mailbox-active": "POST, redirects",
    "ra:recovery-accept": "POST, redirects",
    "ra:recovery-approve": "POST, redirects",
    "ra:recovery-reject": "POST, redirects",
    "ra:recovery-withdraw": "POST, redirects",
    "ra:recovery-archive": "POST, the archive file",
    "ra:recovery-perform-offline": "POST, redirects",
    "ra:recovery-download": "POST, the .p12 file",
    "ra:bulk-revoke-resume": "POST, redirects",
    "ra:rollout-remind": "POST, redirects",
    "ra:rollout-cancel": "POST, redirects",
    "choose-language": "POST, redirects back to the page it was chosen on",
}

TEMPLATES = Path(settings.BASE_DIR) / "templates"
# Page templates (not includes, mail or Swagger UI's; the admin's overrides are) no
# visit here renders.
NOT_RENDERED = {"413.html": "a request body over the cap: megabytes in a POST"}


def page_templates() -> set[str]:
    return {
        str(path.relative_to(TEMPLATES))
        for path in TEMPLATES.rglob("*.html")
        if not path.name.startswith("_")
        and path.relative_to(TEMPLATES).parts[0] != "drf_spectacular"
        and not {"includes", "email"} & set(path.parts)
    }


def routes(patterns: list[Any] | None = None, namespace: str = "", prefix: str = "") -> set[str]:
    """Every route of the URL conf by its name ("ra:audit"), or its path if it has none; a
    namespace in NOT_PAGES stands for its routes."""
    found: set[str] = set()
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            if inner in NOT_PAGES:
                found.add(inner)
            else:
                found |= routes(pattern.url_patterns, inner, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            found.add(
                f"{namespace}{pattern.name}" if pattern.name else prefix + str(pattern.pattern)
            )
    return found


def route_of(url: str) -> str | None:
    try:
        return resolve(urlsplit(url).path).view_name
    except Resolver404:
        return None


# A phone (tests/browser/test_phone_layout.py's width), as a phone shows a page: the
# page's meta viewport honoured, three device pixels to a CSS pixel, a touch screen. The
# phone layout (portal.css's max-width: 40rem) stacks tables into cards and drops padding,
# so its targets' sizes and spacing (WCAG 2.5.8), reflow (1.4.10) and the stacked tables'
# labels are what axe sees there; at the desktop's 1280 px none of that is drawn. Every
# page is walked there too, not only those an officer would open on a phone: on this
# machine (2 cores, shared) the second walk takes about 30 s (35 s when it is busy), of
# which such a shorter list saved a third, and the first full walk found a page (a new
# roll-out's key type list) wider than a phone that the phone-layout tests, which list
# their pages, had missed.
PHONE_CONTEXT: dict[str, Any] = {
    "viewport": PHONE,
    "device_scale_factor": 3,
    "is_mobile": True,
    "has_touch": True,
}
# What the phone's tab lays pages out for: its width, and whether the phone layout is on.
PHONE_LAYOUT = "() => [window.innerWidth, matchMedia('(max-width: 40rem)').matches]"

PAGE_WIDTH = "() => document.documentElement.scrollWidth"

LANG = "() => document.documentElement.lang"

# Folded sections (Revoke…, Withdraw…) opened: their forms are checked too.
OPEN_ALL = "() => document.querySelectorAll('details').forEach(d => { d.open = true; })"


@dataclass
class Scan:
    """One browser tab going through the portal as one role at a time; axe runs on each
    page it lands on, and what axe finds and which routes it saw are kept for the end."""

    page: Page
    base: str
    screen: str = "desktop"
    language: str = "en"
    role: str = "anonymous"
    axe: Axe = field(default_factory=Axe)
    found: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    checked: int = 0

    def as_role(self, role: str, cookie: str | None = None) -> None:
        self.role = role
        self.page.context.clear_cookies()
        if cookie is not None:
            session = {"name": settings.SESSION_COOKIE_NAME, "value": cookie}
            self.page.context.add_cookies([{**session, "url": self.base}])

    def words(self, english: str) -> str:
        """A button's words as this walk's language shows them."""
        with translation.override(self.language):
            return translation.gettext(english)

    def button(self, english: str, where: str = "main") -> str:
        return f"{where} button:has-text('{self.words(english)}')"

    def go(self, path: str) -> None:
        """Open a page to act on (fill in a form), not to check yet."""
        response = self.page.goto(f"{self.base}{path}")
        assert response is not None
        assert response.ok, f"{self.role} {path}: {response.status}"

    def visit(self, path: str, status: int = 200) -> None:
        response = self.page.goto(f"{self.base}{path}")
        assert response is not None
        assert response.status == status, f"{self.role} {path}: {response.status}"
        self.check(path)

    def submit(self, button: str, status: int, state: str) -> None:
        """Press a form's button and check the page it answers with. From the keyboard:
        a phone zooms out a page wider than its screen, and Playwright's click then misses
        the button, so a page that fails reflow stopped the walk instead of being listed."""
        with self.page.expect_navigation() as answered:
            self.page.locator(button).press("Enter")
        response = answered.value
        assert response is not None
        assert response.status == status, f"{self.role} {state}: {response.status}"
        self.check(f"{urlsplit(self.page.url).path} ({state})")

    def check(self, where: str) -> None:
        self.page.evaluate(OPEN_ALL)
        results = self.axe.run(self.page, options=AXE_OPTIONS).response
        self.checked += 1
        if (said := self.page.evaluate(LANG)) != self.language:
            self.found.append(f"{self.screen}, {self.role} {where}: <html lang={said!r}>")
        if (route := route_of(self.page.url)) is not None:
            self.seen.add(route)
        # Reflow (WCAG 1.4.10), which no axe rule checks: a page wider than the screen.
        # A phone's browser zooms out to show it whole, so the page is measured against the
        # screen's width, not the (widened) window's.
        screen = self.page.viewport_size
        assert screen is not None
        if (wider := self.page.evaluate(PAGE_WIDTH) - screen["width"]) > 0:
            self.found.append(
                f"{self.screen}, {self.role} {where}: reflow (WCAG 1.4.10) "
                f"the page is {wider} px wider than the screen"
            )
        for violation in results["violations"]:
            nodes = violation["nodes"]
            shown = [" ".join(node["html"].split())[:300] for node in nodes[:3]]
            shown += [f"(and {len(nodes) - 3} more)"] * (len(nodes) > 3)
            self.found.append(
                f"{self.screen}, {self.role} {where}: {violation['id']} ({violation['impact']}) "
                f"{violation['help']}" + "".join(f"\n    {html}" for html in shown)
            )

    def sign_in(self, username: str, password: str, status: int, state: str) -> None:
        self.go("/accounts/login/")
        self.page.fill("#id_username", username)
        self.page.fill("#id_password", password)
        self.submit(self.button("Sign in"), status, state)


@dataclass
class Portal:
    """What the pages show, made before the browser starts (Django refuses queries while
    Playwright's loop runs): the paths' ids, the usernames, the session cookies. A walk
    through the portal uses some of it up (the employee signs out, Mallory is locked out,
    the new officer sets up an app, the agent recovers Bob's key): each screen's walk has
    its own (``fresh``)."""

    cookies: dict[str, str]
    forgetful: str
    enrol_pages: list[str]
    busy_officer_pages: list[str]
    signing: Certificate
    archived: Certificate
    revoked: Certificate
    outdated: Certificate
    asked: KeyRecoveryRequest
    waiting: KeyRecoveryRequest
    pending: CertificateRequest
    ready: CertificateRequest
    rollout: int
    officer: str
    officer_seed: bytes
    new_officer: str
    agent_pkcs12: bytes
    agent_password: str
    admin_pages: list[Confirmation]


@pytest.fixture
def kra(quick_kra):
    return quick_kra


@pytest.fixture
def portals(
    busy_portal, admin_confirmations, template, kra, agent_user, employee, colleague, officer,
    second_officer, admin_user,
) -> dict[str, Portal]:  # fmt: skip
    """The busy portal of the phone tests (a row in every RA queue), with the admin's
    confirmation pages' long words, and: Alice's request approved, ready to download; Bob's
    archived key asked back and approved, waiting for an agent; Bob's signing certificate
    revoked; Mallory, who forgets her password. The phone's walk has its own sessions,
    Mallory, new officer and key waiting for the agent."""
    ready = services.request_approve(
        request=services.request_submit(
            requester=employee,
            template=template("smime-dual-use"),
            key_algorithm=KeyAlgorithm.EC_P256,
            channel="web",
        ),
        officer=officer,
    )
    revoked = services.certificate_revoke(
        certificate=issue(colleague, template("smime-signing"), new_key()),
        reason="keyCompromise",
        actor=officer,
    )
    roles = {"employee": employee, "officer": officer, "agent": agent_user, "admin": admin_user}

    def fresh(forgetful: str, new_officer: Any) -> dict[str, Any]:
        """What one walk uses up."""
        bobs, _bundle = services.certificate_issue_with_server_key(
            template=template("smime-encryption"),
            owner=colleague,
            key_algorithm=KeyAlgorithm.EC_P256,
            pkcs12_password=OWNER_PKCS12_PASSWORD,
        )
        waiting = recovery.recovery_approve(
            recovery=recovery.recovery_open(certificate=bobs, officer=officer, reason=REASON),
            officer=second_officer,
        )
        UserFactory(username=forgetful)
        return {
            "cookies": {role: session_cookie(user) for role, user in roles.items()},
            "forgetful": forgetful,
            "new_officer": new_officer.username,
            "waiting": waiting,
        }

    archived = Certificate.objects.get(owner=employee, template__slug="smime-encryption")
    desktop = Portal(
        **fresh("mallory", second_officer),
        enrol_pages=[f"/enroll/{t.slug}/" for t in templates_for(employee)],
        busy_officer_pages=list(busy_portal.pages()["officer"]),
        signing=Certificate.objects.get(owner=employee, template__slug="smime-signing"),
        archived=archived,
        revoked=revoked,
        # Erin's, naming the address she had an hour ago.
        outdated=Certificate.objects.get(owner__username="erin"),
        asked=KeyRecoveryRequest.objects.get(certificate=archived),
        pending=CertificateRequest.objects.get(requester=employee, state="pending"),
        ready=ready,
        rollout=busy_portal.rollout,
        officer=officer.username,
        officer_seed=seed_of(mfa.confirmed_totp(officer)),
        agent_pkcs12=kra.pkcs12,
        agent_password=kra.password,
        admin_pages=admin_confirmations,
    )
    otis = UserFactory(username="otis", first_name="Otis", last_name="Third")
    otis.groups.add(Group.objects.get(name="RA officers"))
    otto = UserFactory(username="otto", first_name="Otto", last_name="Vierter")
    otto.groups.add(Group.objects.get(name="RA officers"))
    return {
        "desktop": desktop,
        "phone": replace(desktop, **fresh("mallory-phone", otis)),
        "phone, German": replace(desktop, **fresh("mallory-de", otto)),
    }


def other_code(right: str) -> str:
    """Not the right code (nor, but for a one in a million chance, its neighbours)."""
    return f"{(int(right) + 1) % 1_000_000:06d}"


def as_anonymous(scan: Scan, portal: Portal) -> None:
    scan.as_role("anonymous")
    for path in (
        "/",
        "/accounts/login/",
        "/directory/",
        "/directory/?q=Andersson",
        "/directory/?q=nobody-by-this-name",
        f"/directory/{portal.signing.fingerprint_sha256}/",
        "/pki/",
        "/help/mail-clients/",
    ):
        scan.visit(path)
    # No card for a certificate naming an address its holder no longer has: a page says
    # why (a 404, so an address book imports no HTML for a card).
    scan.visit(f"/directory/{portal.outdated.fingerprint_sha256}.vcf", status=404)
    scan.visit("/no-such-page/", status=404)
    scan.sign_in(portal.forgetful, "not her password", 200, "a wrong password")
    for _ in range(settings.AXES_FAILURE_LIMIT - 2):
        scan.go("/accounts/login/")
        scan.page.fill("#id_username", portal.forgetful)
        scan.page.fill("#id_password", "not her password")
        with scan.page.expect_navigation():
            scan.page.click(scan.button("Sign in"))
    scan.sign_in(portal.forgetful, "not her password", 429, "locked out")


def signing_in_with_a_second_factor(scan: Scan, portal: Portal) -> None:
    """An officer's second step, with a wrong code; a new officer's first sign-in: an
    app set up, a wrong code, the backup codes."""
    scan.as_role("officer signing in")
    scan.sign_in(portal.officer, SIGN_IN_PASSWORD, 200, "the second step")
    scan.page.fill("#id_code", other_code(code(portal.officer_seed)))
    scan.submit(scan.button("Continue"), 400, "a wrong code")

    scan.as_role("new officer signing in")
    scan.sign_in(portal.new_officer, SIGN_IN_PASSWORD, 200, "no second factor yet")
    seed = base64.b32decode(scan.page.inner_text("#totp-secret").replace(" ", ""))
    scan.page.fill("#id_code", other_code(code(seed)))
    scan.submit(scan.button("Confirm"), 400, "a wrong code")
    scan.page.wait_for_timeout(1_100)  # the pause after a wrong code
    scan.page.fill("#id_code", code(seed))
    scan.submit(scan.button("Confirm"), 200, "the backup codes")


def as_employee(scan: Scan, portal: Portal) -> None:
    scan.as_role("employee", portal.cookies["employee"])
    for path in (
        "/",
        "/enroll/",
        *portal.enrol_pages,
        f"/enroll/requests/{portal.pending.pk}/",
        f"/enroll/requests/{portal.ready.pk}/",
        "/certificates/",
        f"/certificates/{portal.signing.pk}/",
        f"/certificates/{portal.archived.pk}/",
        f"/ra/recovery/{portal.asked.pk}/",
        "/directory/?q=Andersson",
        "/directory/?q=finance",
        "/account/",
        "/account/two-factor/setup/",
        "/account/two-factor/security-keys/add/",
        "/account/tokens/",
    ):
        scan.visit(path)
    scan.visit("/ra/", status=403)
    scan.visit("/certificates/999999/", status=404)
    scan.go("/enroll/smime-encryption/")  # needs no approval: a .p12 password
    scan.page.fill("#id_pkcs12_password", "password")
    scan.page.fill("#id_pkcs12_password_confirm", "password")
    scan.submit("#generate button[type=submit]", 400, "a weak PKCS#12 password")
    scan.go("/account/tokens/")
    scan.submit("#create button[type=submit]", 400, "a token without a name")
    scan.page.fill("#id_label", f"Accessibility check ({scan.screen})")  # labels are unique
    scan.submit("#create button[type=submit]", 200, "the new token")
    scan.submit("header form[action='/accounts/logout/'] button", 200, "signed out")


def as_officer(scan: Scan, portal: Portal) -> None:
    scan.as_role("officer", portal.cookies["officer"])
    for path in (
        "/",
        *portal.busy_officer_pages,
        "/ra/certificates/",
        "/ra/recovery/new/",
        f"/ra/recovery/{portal.asked.pk}/?as=officer",
        f"/ra/recovery/{portal.waiting.pk}/",
        f"/certificates/{portal.revoked.pk}/",
        "/ra/rollouts/new/",
        "/ra/audit/?run=0",  # its filters shown again with an error
        "/account/",
    ):
        scan.visit(path)
    scan.go("/ra/requests/")
    scan.submit("form.decide button[value=reject] >> nth=0", 400, "a rejection without reason")
    scan.go("/ra/rollouts/new/")
    scan.submit("main button[name=preview]", 400, "a roll-out without people")
    scan.go("/ra/mailboxes/")
    scan.submit("main form.card button[type=submit]", 400, "a mailbox without an address")


def as_agent(scan: Scan, portal: Portal) -> None:
    scan.as_role("key recovery agent", portal.cookies["agent"])
    for path in (
        "/",
        "/ra/recovery/",
        f"/ra/recovery/{portal.waiting.pk}/",
        f"/ra/recovery/{portal.waiting.pk}/perform/",
    ):
        scan.visit(path)
    upload = {
        "name": "agent.p12",
        "mimeType": "application/x-pkcs12",
        "buffer": portal.agent_pkcs12,
    }
    for password, status, state in (
        ("not the agent's password", 400, "a wrong PKCS#12 password"),
        (portal.agent_password, 200, "the key recovered"),
    ):
        scan.page.set_input_files("input[name=agent_pkcs12]", upload)
        scan.page.fill("input[name=agent_password]", password)
        scan.submit(scan.button("Recover the key"), status, state)


def as_admin(scan: Scan, portal: Portal) -> None:
    """The admin's pages drawn with our templates (templates/admin/), reached as an
    administrator does: the rows ticked in a list, the action chosen."""
    scan.as_role("administrator", portal.cookies["admin"])
    for confirmation in portal.admin_pages:
        if not confirmation.action:
            scan.visit(confirmation.path)
            continue
        scan.go(confirmation.path)
        for pk in confirmation.selected:
            scan.page.check(f"input.action-select[value='{pk}']")
        scan.page.select_option("select[name=action]", confirmation.action)
        scan.submit("button[name=index]", 200, f"the {confirmation.action} action")
    scan.visit("/admin/enrollment/keyrecoveryagent/add/")


def walk(scan: Scan, portal: Portal) -> None:
    as_anonymous(scan, portal)
    signing_in_with_a_second_factor(scan, portal)
    as_employee(scan, portal)
    as_officer(scan, portal)
    as_agent(scan, portal)
    as_admin(scan, portal)


def test_every_page_passes_wcag_22_aa_for_every_role(live_server, settings, portals):
    # Partners read the directory without signing in where the operator opens it.
    settings.PKIPORTAL_DIRECTORY_PUBLIC = True
    rendered: set[str] = set()

    def note(sender: Any, template: Any, **kwargs: Any) -> None:
        rendered.add(template.name)

    scans: list[Scan] = []
    controls: dict[str, list[str]] = {}
    template_rendered.connect(note)
    try:
        with chromium_page() as desktop:
            browser = desktop.context.browser
            assert browser is not None
            phone = browser.new_context(**PHONE_CONTEXT).new_page()
            # German's longer words, on the narrowest screen: where reflow breaks first.
            german = browser.new_context(**PHONE_CONTEXT, locale="de-DE").new_page()
            for screen, page, language in (
                ("desktop", desktop, "en"),
                ("phone", phone, "en"),
                ("phone, German", german, "de"),
            ):
                scan = Scan(page, live_server.url, screen, language)
                walk(scan, portals[screen])
                scans.append(scan)
                # The control: a field without a label is heard.
                page.evaluate(
                    "() => document.querySelector('main').append(document.createElement('input'))"
                )
                heard = len(scan.found)
                scan.check("the control")
                controls[screen] = scan.found[heard:]
                del scan.found[heard:]
            # And the phone's walk saw the phone's layout.
            phone_layout = phone.evaluate(PHONE_LAYOUT)
    finally:
        template_rendered.disconnect(note)

    for screen, control in controls.items():
        assert any(": label (critical)" in line for line in control), (screen, control)
    assert phone_layout == [PHONE["width"], True], phone_layout
    problems = []
    found = [line for scan in scans for line in scan.found]
    seen = set().union(*(scan.seen for scan in scans))
    if found:
        checked = sum(scan.checked for scan in scans)
        problems = [f"{len(found)} violations on {checked} pages:", *found]
    if unseen := sorted(routes() - NOT_PAGES.keys() - seen):
        problems.append(f"routes neither checked nor in NOT_PAGES: {unseen}")
    if unrendered := sorted(page_templates() - NOT_RENDERED.keys() - rendered):
        problems.append(f"page templates neither checked nor in NOT_RENDERED: {unrendered}")
    if problems:
        pytest.fail(
            "\n".join(["axe-core (WCAG 2.2 AA, best practices):", *problems]), pytrace=False
        )
