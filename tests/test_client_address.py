"""Who is on the other end: the client address behind trusted proxies, and the user name
django-axes counts failed sign-ins under (README.md, "Production" and "Configuration").

Behind a TLS proxy every request's REMOTE_ADDR is the proxy's; PKIPORTAL_TRUSTED_PROXIES
says whose X-Forwarded-For to believe, so lock-outs and audit events name the real client.
"""

from __future__ import annotations

import base64
from ipaddress import ip_network

import pytest
from axes.models import AccessAttempt

from django.test import Client, RequestFactory

from enrollment.models import AuditEvent
from pkiportal.clients import client_address

pytestmark = pytest.mark.django_db

RIGHT = "correct horse battery staple"  # tests/factories.py gives every user this password
PROXY = "10.0.0.5"
ATTACKER = "203.0.113.66"
VICTIM = "198.51.100.10"


@pytest.fixture
def behind_proxy(settings):
    settings.PKIPORTAL_TRUSTED_PROXIES = (ip_network("10.0.0.0/24"), ip_network("2001:db8::/64"))


def sign_in(username: str, password: str, **meta: str):
    return Client().post("/accounts/login/", {"username": username, "password": password}, **meta)


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def address_of(remote_addr: str, forwarded_for: str | None = None) -> str | None:
    meta = {"REMOTE_ADDR": remote_addr}
    if forwarded_for is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return client_address(RequestFactory().get("/", **meta))


# --- the client address ---------------------------------------------------------------


def test_behind_a_trusted_proxy_an_attackers_failures_do_not_lock_the_officer_out(
    behind_proxy, officer, settings
):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        sign_in("olivia", "guess", REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=ATTACKER)

    assert (
        sign_in("olivia", "guess", REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=ATTACKER).status_code
        == 429
    )
    assert (
        sign_in("olivia", RIGHT, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=VICTIM).status_code == 302
    )
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {ATTACKER}


def test_behind_a_trusted_proxy_the_audit_event_names_the_real_client(behind_proxy, employee):
    response = Client().post(
        "/api/v1/auth/token/",
        HTTP_AUTHORIZATION=basic("alice", RIGHT),
        REMOTE_ADDR=PROXY,
        HTTP_X_FORWARDED_FOR=f"192.0.2.99, {VICTIM}",
    )

    assert response.status_code == 200
    event = AuditEvent.objects.get(action="api_token.create")
    assert event.source_address == VICTIM


def test_a_forged_forwarded_for_from_an_untrusted_address_is_ignored(
    behind_proxy, officer, settings
):
    # The attacker talks to gunicorn directly and claims to be the officer's machine.
    for _ in range(settings.AXES_FAILURE_LIMIT):
        sign_in("olivia", "guess", REMOTE_ADDR=ATTACKER, HTTP_X_FORWARDED_FOR=VICTIM)

    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {ATTACKER}
    assert (
        sign_in("olivia", RIGHT, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=VICTIM).status_code == 302
    )
    # The forged header bought no fresh budget: through the proxy the attacker is locked.
    attacker_via_proxy = sign_in("olivia", RIGHT, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=ATTACKER)
    assert attacker_via_proxy.status_code == 429


def test_with_no_trusted_proxy_forwarded_for_is_ignored_as_before(officer):
    assert address_of(PROXY, VICTIM) == PROXY


@pytest.mark.parametrize(
    ("forwarded_for", "expected"),
    [
        (VICTIM, VICTIM),
        # Left of the real client is whatever the client sent: never believed.
        (f"{ATTACKER}, {VICTIM}", VICTIM),
        # A chain of trusted proxies is walked through, right to left.
        (f"{ATTACKER}, {VICTIM}, 10.0.0.9", VICTIM),
        ("2001:DB8:0:0:0:0:0:1, 2001:db8:0:1::7", "2001:db8:0:1::7"),  # canonical form
        ("::ffff:10.0.0.9, ::ffff:198.51.100.10", VICTIM),  # IPv4-mapped
        # A request from the proxy host itself: the left-most trusted hop.
        ("10.0.0.9", "10.0.0.9"),
        (None, PROXY),
        ("", PROXY),
    ],
)
def test_it_takes_the_right_most_untrusted_forwarded_for_entry(
    behind_proxy, forwarded_for, expected
):
    assert address_of(PROXY, forwarded_for) == expected


@pytest.mark.parametrize(
    ("forwarded_for", "expected"),
    [
        # Garbage the client put left of the real address is never reached.
        (f"unknown, <script>, {VICTIM}", VICTIM),
        # Garbage a trusted hop passed on stops the walk at the last hop we can vouch for,
        # rather than skipping it to a value the client chose.
        (f"{ATTACKER}, unknown", PROXY),
        (f"{ATTACKER}, not-an-ip, 10.0.0.9", "10.0.0.9"),
        (f"{ATTACKER}, {VICTIM}:4711", PROXY),
        (f"{ATTACKER}, ,", PROXY),
        ("1.2.3.4.5", PROXY),
        ("x" * 5000, PROXY),
    ],
)
def test_malformed_forwarded_for_entries_are_never_believed(behind_proxy, forwarded_for, expected):
    assert address_of(PROXY, forwarded_for) == expected


# --- the user name axes counts under --------------------------------------------------


def test_case_and_whitespace_variants_share_one_lockout_on_the_sign_in_page(employee, settings):
    for username in ["Alice", " alice ", "ALICE", "alice", "aLiCe"][: settings.AXES_FAILURE_LIMIT]:
        sign_in(username, "guess", REMOTE_ADDR="192.0.2.10")

    assert sign_in("alice", RIGHT, REMOTE_ADDR="192.0.2.10").status_code == 429
    assert sign_in("Alice", RIGHT, REMOTE_ADDR="192.0.2.10").status_code == 429
    assert list(AccessAttempt.objects.values_list("username", flat=True)) == ["alice"]


def test_case_and_whitespace_variants_share_one_lockout_on_the_api_token_endpoint(
    employee, settings
):
    client = Client()
    variants = ["Alice", " alice ", "ALICE", "alice\t", "  aLiCe"][: settings.AXES_FAILURE_LIMIT]
    codes = [
        client.post(
            "/api/v1/auth/token/", HTTP_AUTHORIZATION=basic(u, "guess"), REMOTE_ADDR="192.0.2.10"
        ).status_code
        for u in variants
    ]

    right = client.post(
        "/api/v1/auth/token/", HTTP_AUTHORIZATION=basic("alice", RIGHT), REMOTE_ADDR="192.0.2.10"
    )
    assert codes[-1] == 429
    assert right.status_code == 429
    assert list(AccessAttempt.objects.values_list("username", flat=True)) == ["alice"]


def test_a_successful_sign_in_clears_the_failures_of_every_variant(employee, settings):
    for username in ["Alice", " ALICE"]:
        sign_in(username, "guess", REMOTE_ADDR="192.0.2.10")

    assert sign_in("alice", RIGHT, REMOTE_ADDR="192.0.2.10").status_code == 302
    assert not AccessAttempt.objects.exists()
