"""Role fixtures, clients and a per-test CA hierarchy on the test database.

The pure X.509 fixtures (a session-built throwaway PKI, the openssl helper) live in
tests/pki.py and are loaded here for every test.
"""

from __future__ import annotations

import os
import runpy
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import time_machine

from django.conf import settings as django_settings
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.test import Client
from django.utils import translation

from enrollment import audit, health, services
from enrollment.models import CertificateAuthority, CertificateTemplate, KeyRecoveryAgent
from enrollment.x509 import pkcs12
from enrollment.x509.keys import KeyAlgorithm, PrivateKey
from pkiportal import health as health_view
from tests.factories import UserFactory
from tests.second_factor import verified_login

# tests.enrollment.ra_fixtures: recovery, RA console and expiry fixtures (issue 6).
# tests.phone_pages: a portal with a row in every RA queue, for the phone layout's tests.
pytest_plugins = [
    "tests.pki",
    "tests.enrollment.ra_fixtures",
    "tests.phone_pages",
    "tests.slapd",
    "tests.softhsm",
]

ROOT_PASSPHRASE = b"root passphrase for tests"

# The programs the interoperability, browser and benchmark tests drive. Where one is
# missing its tests skip, so a developer's machine runs the rest; .ci/run installs them
# all and sets PKIPORTAL_TEST_REQUIRE_TOOLS, and then a missing one fails the run instead
# of taking its tests (the browser enrolment of issue 3 among them) out of it unseen.
REQUIRED_TOOLS = (
    "/usr/bin/chromium", "openssl", "certutil", "ocspclnt", "gpgsm", "jq", "promtool",
    "/usr/sbin/slapd", "ldapsearch", "softhsm2-util", "pkcs11-tool", "valgrind",
    "callgrind_control", "redis-server", "psql", "createdb", "dropdb", "/usr/sbin/rsyslogd",
)  # fmt: skip


def pytest_sessionstart(session: pytest.Session) -> None:
    if not os.environ.get("PKIPORTAL_TEST_REQUIRE_TOOLS"):
        return
    missing = [
        tool
        for tool in REQUIRED_TOOLS
        if not (Path(tool).exists() if tool.startswith("/") else shutil.which(tool))
    ]
    if missing:
        raise pytest.UsageError(
            f"PKIPORTAL_TEST_REQUIRE_TOOLS is set and these are missing: {', '.join(missing)}"
        )


@dataclass
class Hierarchy:
    root: CertificateAuthority
    issuing: CertificateAuthority
    root_key_path: Path
    root_passphrase: bytes


@pytest.fixture(autouse=True)
def _no_time_travel_left_behind():
    """A test that leaves time_machine travelling (started, never stopped) moves every
    later test of its worker in time: certificates built then start in the future for
    the real openssl, which says "not yet valid". Its own teardown names it instead."""
    yield
    if time_machine.escape_hatch.is_travelling():
        while time_machine.traveller_stack:
            time_machine.traveller_stack[-1].stop()
        pytest.fail("this test left time_machine travelling: stop it (use `with`)")


@pytest.fixture(autouse=True)
def _isolated_pki_settings(settings, tmp_path):
    """Every test gets its own key directory, passphrase, a public-looking base URL and an
    https site URL on another host, so a mail link built from the base URL shows."""
    settings.PKIPORTAL_KEY_DIR = tmp_path / "keys"
    settings.PKIPORTAL_EMBEDDED_PASSPHRASE_FILE = tmp_path / "keys" / "passphrase"
    settings.PKIPORTAL_CA_KEY_PASSPHRASE = "online CA passphrase for tests"
    settings.PKIPORTAL_BASE_URL = "http://pki.example.com"
    settings.PKIPORTAL_SITE_URL = "https://portal.example.com"
    settings.PKIPORTAL_ORGANIZATION_NAME = "Example Org"
    settings.CELERY_TASK_ALWAYS_EAGER = True
    # Role fixtures create several accounts per test; PBKDF2's 1M rounds cost ~0.3 s each.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()  # what one test's pages remembered is not another's
    health.forget_ca_key_checks()  # nor /health/'s CA key checks
    health_view.forget_broker_checks()  # nor its broker and worker pings
    audit.forget_apart()  # nor the refusals one left waiting for a transaction's end
    # Nor the language its last request was in: LocaleMiddleware leaves it active in the
    # thread, so a test reading a message outside a request would read another's language.
    translation.deactivate()


@pytest.fixture
def hierarchy(db, tmp_path) -> Hierarchy:
    """An offline root and an online issuing CA (EC keys: fast) with a first CRL."""
    key_path = tmp_path / "offline" / "root-key.pem"
    root, issuing = services.pki_create(
        root=services.CaSpec("Test Root CA", "root", KeyAlgorithm.EC_P384, 3650),
        issuing=services.CaSpec("Test Issuing CA", "issuing", KeyAlgorithm.EC_P256, 1825),
        base_url="http://pki.example.com",
        root_key_path=key_path,
        root_passphrase=ROOT_PASSPHRASE,
        organization_name="Example Org",
        country_name="GB",
    )
    return Hierarchy(root, issuing, key_path, ROOT_PASSPHRASE)


@pytest.fixture
def template(db):
    """Look up a seeded template by slug."""
    return lambda slug: CertificateTemplate.objects.get(slug=slug)


@pytest.fixture
def approval(template):
    """Make a seeded template, by slug, need an RA officer's approval; returns it."""

    def require(slug: str) -> CertificateTemplate:
        chosen = template(slug)
        chosen.requires_approval = True
        chosen.save()
        return chosen

    return require


@pytest.fixture
def employee(db):
    return UserFactory(username="alice", first_name="Alice", last_name="Andersson")


@pytest.fixture
def colleague(db):
    return UserFactory(username="bob", first_name="Bob", last_name="Brown")


@pytest.fixture
def officer(db):
    user = UserFactory(username="olivia", first_name="Olivia", last_name="Officer")
    user.groups.add(Group.objects.get_or_create(name="RA officers")[0])
    return user


@pytest.fixture
def admin_user(db):
    return UserFactory(username="root-admin", is_staff=True, is_superuser=True)


@dataclass
class Agent:
    agent: KeyRecoveryAgent
    key: PrivateKey
    pkcs12: bytes
    password: str


@pytest.fixture
def kra(hierarchy, template) -> Agent:
    """A registered key recovery agent (RSA: CMS key transport) with its key in hand."""
    holder = UserFactory(username="karl", first_name="Karl", last_name="Keeper")
    password = secrets.token_urlsafe(12)
    certificate, bundle = services.certificate_issue_with_server_key(
        template=template("smime-dual-use"),
        owner=holder,
        key_algorithm=KeyAlgorithm.RSA_2048,
        pkcs12_password=password,
    )
    agent = services.kra_register(certificate=certificate.certificate, name="Test KRA", user=holder)
    key, _cert, _chain = pkcs12.load_pkcs12(bundle, password)
    return Agent(agent, key, bundle, password)


def client_for(user) -> Client:
    """A browser signed in as ``user``, second factor confirmed where they need one."""
    client = Client()
    if user is not None:
        verified_login(client, user)
    return client


@pytest.fixture
def anonymous_client() -> Client:
    return Client()


@pytest.fixture
def employee_client(employee) -> Client:
    return client_for(employee)


@pytest.fixture
def officer_client(officer) -> Client:
    return client_for(officer)


@pytest.fixture
def admin_client_(admin_user) -> Client:
    return client_for(admin_user)


SETTINGS_FILE = str(django_settings.BASE_DIR / "pkiportal" / "settings.py")


@pytest.fixture
def load_settings(monkeypatch, tmp_path):
    """Run pkiportal/settings.py afresh (runpy), Django's own settings untouched: no
    PKIPORTAL_ variable of the runner's leaks in, and ``load(NAME=value, ...)`` sets the
    environment variables a test is about first."""
    for name in list(os.environ):
        if name.startswith("PKIPORTAL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PKIPORTAL_VAR_DIR", str(tmp_path))

    def load(**variables: str) -> dict[str, object]:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(SETTINGS_FILE)

    return load


@pytest.fixture
def committed_at(django_capture_on_commit_callbacks):
    """Do something at a moment, with what it queues on commit (mail, CRLs) carried out;
    returns what it returned."""

    def run(moment, work):
        with (
            time_machine.travel(moment, tick=False),
            django_capture_on_commit_callbacks(execute=True),
        ):
            return work()

    return run


@pytest.fixture
def task_at(django_capture_on_commit_callbacks):
    """Run a scheduled task as beat would at a moment, with what it queues on commit
    (CRLs, mail) carried out; returns the task's result."""

    def run(task, moment):
        with (
            time_machine.travel(moment, tick=False),
            django_capture_on_commit_callbacks(execute=True),
        ):
            return task.delay().get()

    return run
