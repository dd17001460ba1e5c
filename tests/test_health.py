"""/health/: a verdict for everyone, details for staff and RA officers, 503 when wrong."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from django.db import OperationalError
from django.utils import timezone

from enrollment import health, keystore, services, tasks
from enrollment.models import Certificate, CertificateAuthority, CrlEntry, ScheduledRun
from tests.conftest import client_for
from tests.enrollment.tools import issue, new_key

pytestmark = pytest.mark.django_db

REDIS_URL = os.environ.get("PKIPORTAL_TEST_REDIS_URL", "")


@pytest.fixture
def signed_root(hierarchy):
    """The root's CRL, as `sign_root_crl` makes it after create_pki."""
    return services.crl_publish(
        ca=hierarchy.root,
        offline_key=keystore.OfflineKey(hierarchy.root_key_path, hierarchy.root_passphrase),
    )


@pytest.fixture
def staff(db):
    from tests.factories import UserFactory

    return UserFactory(username="sam", is_staff=True)


def details(user):
    response = client_for(user).get("/health/")
    return response.status_code, response.json()


def test_all_well_answers_200_and_anonymous_callers_see_only_the_verdict(
    anonymous_client, signed_root
):
    response = anonymous_client.get("/health/")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.parametrize("who", ["employee", "colleague"])
def test_people_without_a_role_see_only_the_verdict(request, who, signed_root):
    status, body = details(request.getfixturevalue(who))

    assert (status, body) == (200, {"status": "ok"})


@pytest.mark.parametrize("who", ["officer", "staff", "admin_user"])
def test_officers_and_staff_see_every_check(request, who, signed_root):
    status, body = details(request.getfixturevalue(who))

    assert status == 200
    checks = body["checks"]
    assert checks["database"]["status"] == "ok"
    assert checks["broker"] == {"status": "ok", "mode": "inline"}
    assert checks["worker"] == {"status": "ok", "mode": "inline"}
    assert checks["scheduler"]["status"] == "ok"
    issuing = checks["crl"]["authorities"]["issuing"]
    assert issuing["status"] == "ok"
    assert issuing["number"] == 1
    assert issuing["unpublished_revocations"] == 0
    assert checks["crl"]["authorities"]["root"]["online"] is False


def test_a_root_without_a_crl_is_a_failure(hierarchy, officer):
    status, body = details(officer)

    assert status == 503
    assert body["status"] == "fail"
    assert body["checks"]["crl"]["authorities"]["root"]["problems"] == [
        "No CRL has been published."
    ]


def test_the_root_crl_warns_a_month_before_it_expires(signed_root, officer, time_machine):
    time_machine.move_to(signed_root.next_update - timedelta(days=29))
    services.crl_publish(ca=CertificateAuthority.objects.get(slug="issuing"))

    status, body = details(officer)

    assert status == 200
    assert body["status"] == "warn"
    root = body["checks"]["crl"]["authorities"]["root"]
    assert "sign_root_crl --ca root" in root["warnings"][0]
    assert health.root_crl_warnings() == root["warnings"]


def test_an_expired_crl_is_a_failure(signed_root, officer, time_machine):
    time_machine.move_to(signed_root.next_update + timedelta(minutes=1))
    services.crl_publish(ca=CertificateAuthority.objects.get(slug="issuing"))

    status, body = details(officer)

    assert status == 503
    assert "expired" in body["checks"]["crl"]["authorities"]["root"]["problems"][0]
    assert health.root_crl_warnings()[0].startswith("The CRL expired")


def test_a_crl_that_missed_its_refresh_is_a_failure(signed_root, officer, settings, time_machine):
    issuing = CertificateAuthority.objects.get(slug="issuing").latest_crl()
    time_machine.move_to(
        issuing.next_update - timedelta(hours=settings.PKIPORTAL_CRL_OVERLAP_HOURS)
    )

    status, body = details(officer)

    assert status == 503
    assert (
        "older than its refresh interval"
        in (body["checks"]["crl"]["authorities"]["issuing"]["problems"][0])
    )


def test_a_failed_publication_is_a_failure_until_the_next_success(signed_root, officer):
    ca = CertificateAuthority.objects.get(slug="issuing")
    services.crl_failure_record(ca=ca, error=keystore.KeyStoreError("The CA key is gone."))

    status, body = details(officer)
    assert status == 503
    issuing = body["checks"]["crl"]["authorities"]["issuing"]
    assert issuing["last_error"] == "The CA key is gone."

    services.crl_publish(ca=ca)
    assert details(officer)[0] == 200


def test_revocations_waiting_too_long_for_a_crl_are_a_failure(
    signed_root, officer, employee, template, ec_p256_key, time_machine, monkeypatch
):
    from enrollment import tasks

    monkeypatch.setattr(tasks, "_send_crl_publish", lambda ca_id: None)  # the message is lost
    certificate = issue(employee, template("smime-signing"), ec_p256_key)
    services.certificate_revoke(certificate=certificate, reason=None)
    assert details(officer)[0] == 200  # seconds old: the queued task is still coming

    time_machine.move_to(timezone.now() + timedelta(minutes=11))
    status, body = details(officer)

    assert status == 503
    issuing = body["checks"]["crl"]["authorities"]["issuing"]
    assert issuing["unpublished_revocations"] == 1
    assert "waited for a CRL" in issuing["problems"][0]
    assert CrlEntry.objects.get().first_crl_number is None


def test_an_old_revocation_made_keycompromise_is_not_a_late_crl(
    signed_root, officer, employee, template, time_machine, monkeypatch
):
    """Its entry is queued again for the next CRL: it has waited since then, not since its
    revocation. Counted from revoked_at, /health/ failed until the next CRL."""
    certificate = issue(employee, template("smime-signing"), new_key())
    services.certificate_revoke(certificate=certificate, reason="superseded")  # published
    time_machine.move_to(timezone.now() + timedelta(days=3))
    services.crl_publish(ca=CertificateAuthority.objects.get(slug="issuing"))
    monkeypatch.setattr(tasks, "_send_crl_publish", lambda ca_id: None)  # the task is to come

    services.certificate_revoke(certificate=certificate, reason="keyCompromise")

    status, body = details(officer)
    assert status == 200, body
    issuing = body["checks"]["crl"]["authorities"]["issuing"]
    assert issuing["unpublished_revocations"] == 1
    queued = Certificate.objects.get(pk=certificate.pk).queued_for_crl_at
    assert issuing["oldest_unpublished"] == queued.isoformat()

    time_machine.move_to(timezone.now() + timedelta(minutes=11))  # and it never came
    status, body = details(officer)
    assert status == 503
    assert "waited for a CRL" in body["checks"]["crl"]["authorities"]["issuing"]["problems"][0]


def test_an_entry_queued_by_an_older_process_waits_since_its_revocation(
    signed_root, officer, employee, template, ec_p256_key, time_machine, monkeypatch
):
    """Revoked by a process from before migration 0034 (no queued time): revoked_at."""
    monkeypatch.setattr(tasks, "_send_crl_publish", lambda ca_id: None)
    certificate = issue(employee, template("smime-signing"), ec_p256_key)
    services.certificate_revoke(certificate=certificate, reason=None)
    Certificate.objects.filter(pk=certificate.pk).update(queued_for_crl_at=None)
    time_machine.move_to(timezone.now() + timedelta(minutes=11))

    status, body = details(officer)

    assert status == 503
    assert "waited for a CRL" in body["checks"]["crl"]["authorities"]["issuing"]["problems"][0]


def test_an_unreachable_broker_is_a_failure(signed_root, officer, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens there

    status, body = details(officer)

    assert status == 503
    assert body["checks"]["broker"]["status"] == "fail"
    assert body["checks"]["worker"] == {"status": "fail", "error": "The broker is unreachable."}


@pytest.mark.integration
@pytest.mark.skipif(not REDIS_URL, reason="PKIPORTAL_TEST_REDIS_URL is not set")
def test_a_broker_without_a_worker_is_a_failure(signed_root, officer, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.CELERY_BROKER_URL = REDIS_URL.rsplit("/", 1)[0] + "/14"  # no worker listens on 14

    status, body = details(officer)

    assert status == 503
    assert body["checks"]["broker"]["status"] == "ok"
    assert body["checks"]["worker"] == {
        "status": "fail",
        "error": "No Celery worker answered a ping.",
    }


def count_pings(monkeypatch) -> dict[str, int]:
    """How often /health/ pings the broker and a worker; the pings themselves are real."""
    from pkiportal import health as health_view

    pings = {"broker": 0, "worker": 0}
    for name in pings:
        real = getattr(health_view, f"_{name}")

        def counting(real=real, name=name):
            pings[name] += 1
            return real()

        monkeypatch.setattr(health_view, f"_{name}", counting)
    return pings


def test_anonymous_calls_share_one_broker_ping_per_period(
    signed_root, officer, anonymous_client, settings, monkeypatch
):
    """A flood of anonymous calls must not have every one wait on the broker's timeouts;
    callers allowed details are shown a fresh ping."""
    from pkiportal import health as health_view

    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    pings = count_pings(monkeypatch)

    answers = [anonymous_client.get("/health/") for _ in range(3)]

    assert [(a.status_code, a.json()) for a in answers] == [(503, {"status": "fail"})] * 3
    assert pings == {"broker": 1, "worker": 0}
    status, body = details(officer)
    assert (status, body["checks"]["broker"]["status"]) == (503, "fail")
    assert pings["broker"] == 2
    monkeypatch.setattr(health_view, "BROKER_CHECK_SECONDS", 0.0)  # the period is over
    assert anonymous_client.get("/health/").status_code == 503
    assert pings["broker"] == 3


@pytest.mark.integration
@pytest.mark.skipif(not REDIS_URL, reason="PKIPORTAL_TEST_REDIS_URL is not set")
def test_anonymous_calls_share_one_worker_ping_per_period(
    signed_root, anonymous_client, settings, monkeypatch
):
    from pkiportal import health as health_view

    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.CELERY_BROKER_URL = REDIS_URL
    pings = count_pings(monkeypatch)

    first = anonymous_client.get("/health/")
    second = anonymous_client.get("/health/")

    assert (second.status_code, second.json()) == (first.status_code, first.json())
    assert pings == {"broker": 1, "worker": 1}
    monkeypatch.setattr(health_view, "BROKER_CHECK_SECONDS", 0.0)
    anonymous_client.get("/health/")
    assert pings == {"broker": 2, "worker": 2}


@pytest.fixture
def database_down(monkeypatch):
    """/health/'s own connection refuses every query, as an unreachable server would."""
    from pkiportal import health as health_view

    class Broken:
        def cursor(self):
            raise OperationalError("connection refused")

    monkeypatch.setattr(health_view, "connection", Broken())


def test_an_unreachable_database_is_a_failure(anonymous_client, database_down):
    response = anonymous_client.get("/health/")

    assert response.status_code == 503
    assert response.json() == {"status": "fail"}


# --- beat -----------------------------------------------------------------------------


@pytest.fixture
def broker_configured(settings):
    """A portal with a broker (nothing listens: only the beat check matters here)."""
    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"


def test_without_a_broker_beat_is_not_used_and_never_a_failure(signed_root, officer, time_machine):
    time_machine.move_to(timezone.now() + timedelta(hours=2))  # no watchdog run, ever

    status, body = details(officer)

    assert (status, body["status"]) == (200, "ok")
    assert body["checks"]["scheduler"] == {
        "status": "ok",
        "mode": "not used",
        "detail": "No broker is configured: tasks run inline and there is no beat.",
    }


def test_each_watchdog_run_is_recorded_as_beats_heartbeat(hierarchy, time_machine):
    time_machine.move_to(timezone.now(), tick=False)

    tasks.crl_watchdog_task()

    assert ScheduledRun.objects.get(name="crl-watchdog").last_run_at == timezone.now()
    time_machine.shift(timedelta(minutes=5))
    tasks.crl_watchdog_task()
    assert ScheduledRun.objects.get().last_run_at == timezone.now()


def test_beat_is_failing_three_watchdog_periods_after_the_last_run(
    hierarchy, settings, time_machine
):
    settings.PKIPORTAL_CRL_WATCHDOG_MINUTES = 5
    time_machine.move_to("2026-03-06 17:00:00+00:00", tick=False)
    tasks.crl_watchdog_task()

    time_machine.shift(timedelta(minutes=15))
    assert health.beat_status() == {
        "status": "ok",
        "last_run": "2026-03-06T17:00:00+00:00",
        "every_minutes": 5,
    }

    time_machine.shift(timedelta(minutes=1))
    status = health.beat_status()
    assert status["status"] == "fail"
    assert status["last_run"] == "2026-03-06T17:00:00+00:00"
    assert "last ran at 2026-03-06 17:00 UTC, 16 minutes ago" in status["error"]
    assert "celery -A pkiportal beat" in status["error"]


def test_a_beat_that_never_ran_is_a_warning_not_a_failure(hierarchy, settings):
    """A fresh beat first runs the watchdog one period after it starts (Celery's interval
    schedule); failing meanwhile would take every web process out of a load balancer."""
    assert health.beat_status() == {
        "status": "warn",
        "last_run": None,
        "every_minutes": settings.PKIPORTAL_CRL_WATCHDOG_MINUTES,
        "warning": "Beat has never run the CRL watchdog (due every 5 minutes): is "
        "`celery -A pkiportal beat` running?",
    }


def test_a_one_minute_watchdog_is_said_in_the_singular(hierarchy, settings, time_machine):
    settings.PKIPORTAL_CRL_WATCHDOG_MINUTES = 1
    never = health.beat_status()["warning"]
    ScheduledRun.objects.create(name=health.WATCHDOG_RUN, last_run_at=timezone.now())
    time_machine.move_to(timezone.now() + timedelta(minutes=3, seconds=30))
    late = health.beat_status()

    assert "(due every 1 minute):" in never
    assert late["status"] == "fail"
    assert ", 3 minutes ago; beat runs it every 1 minute:" in late["error"]


def test_with_a_broker_health_fails_on_a_stopped_beat_and_names_its_last_run(
    signed_root, officer, broker_configured, time_machine
):
    tasks.crl_watchdog_task()
    time_machine.move_to(timezone.now() + timedelta(hours=1))

    status, body = details(officer)

    assert status == 503
    scheduler = body["checks"]["scheduler"]
    assert scheduler["status"] == "fail"
    assert scheduler["last_run"] == ScheduledRun.objects.get().last_run_at.isoformat()
    assert "60 minutes ago" in scheduler["error"]


def test_with_a_broker_beat_is_not_checked_without_the_database(
    officer, broker_configured, database_down, monitoring_token, anonymous_client
):
    response = anonymous_client.get(
        "/health/", headers={"Authorization": f"Bearer {monitoring_token}"}, secure=True
    )

    assert response.json()["checks"]["scheduler"] == {
        "status": "fail",
        "error": "The database is unreachable.",
    }


# --- the monitoring token -------------------------------------------------------------

MONITORING_TOKEN = "m0nitor-" + "x" * 40


@pytest.fixture
def monitoring_token(settings):
    settings.PKIPORTAL_HEALTH_TOKEN = MONITORING_TOKEN
    return MONITORING_TOKEN


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
def test_a_monitoring_system_with_the_token_sees_every_check(
    anonymous_client, signed_root, monitoring_token, scheme
):
    response = anonymous_client.get(
        "/health/", headers={"Authorization": f"{scheme} {monitoring_token}"}, secure=True
    )

    assert response.status_code == 200
    assert response.json()["checks"]["crl"]["authorities"]["issuing"]["status"] == "ok"


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {MONITORING_TOKEN[:-1]}",
        f"Bearer {MONITORING_TOKEN}x",
        f"Token {MONITORING_TOKEN}",
        f"Basic {MONITORING_TOKEN}",
        "Bearer ",
        "Bearer",
        f"Bearer {MONITORING_TOKEN[:-1]}é",
    ],
)
def test_a_wrong_token_sees_only_the_verdict(
    anonymous_client, signed_root, monitoring_token, header
):
    response = anonymous_client.get("/health/", headers={"Authorization": header}, secure=True)

    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_without_a_configured_token_no_bearer_sees_details(anonymous_client, signed_root, settings):
    settings.PKIPORTAL_HEALTH_TOKEN = ""

    for header in ("Bearer ", "Bearer", f"Bearer {MONITORING_TOKEN}"):
        response = anonymous_client.get("/health/", headers={"Authorization": header}, secure=True)
        assert response.json() == {"status": "ok"}


def test_the_token_shows_details_when_the_database_is_down(
    anonymous_client, monitoring_token, database_down
):
    response = anonymous_client.get(
        "/health/", headers={"Authorization": f"Bearer {monitoring_token}"}, secure=True
    )

    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == {"status": "fail", "error": "OperationalError: connection refused"}
    assert checks["crl"] == {"status": "fail", "error": "The database is unreachable."}


def test_the_token_never_appears_in_the_answer(anonymous_client, signed_root, monitoring_token):
    response = anonymous_client.get(
        "/health/", headers={"Authorization": f"Bearer {monitoring_token}"}, secure=True
    )

    assert monitoring_token not in response.content.decode()


# --- the monitoring token over plain HTTP ----------------------------------------------------


@pytest.mark.parametrize("path", ["/health/", "/health/live/", "/metrics"])
@pytest.mark.parametrize(
    "header",
    [f"Bearer {MONITORING_TOKEN}", f"bearer {MONITORING_TOKEN}", "Bearer wrong", "Bearer "],
)
def test_the_token_over_plain_http_is_refused_alike_right_or_wrong(
    anonymous_client, signed_root, monitoring_token, path, header
):
    """Plain HTTP gives the same 403 whatever the token: it tells nobody whether one is
    valid, and a 401 would only invite the credential again, as plainly."""
    response = anonymous_client.get(path, headers={"Authorization": header})

    assert response.status_code == 403
    assert "over HTTPS only" in response.content.decode()
    assert b"checks" not in response.content
    assert b"pkiportal_" not in response.content
    assert "WWW-Authenticate" not in response
    assert monitoring_token not in response.content.decode()


def test_the_token_is_never_compared_over_plain_http(
    anonymous_client, signed_root, monitoring_token, monkeypatch
):
    from pkiportal import health as health_view

    compared = []
    real = health_view.hmac.compare_digest

    def counting(given, expected):
        compared.append(given)
        return real(given, expected)

    monkeypatch.setattr(health_view.hmac, "compare_digest", counting)
    for header in (f"Bearer {monitoring_token}", "Bearer wrong"):
        anonymous_client.get("/health/", headers={"Authorization": header})
    assert compared == []

    anonymous_client.get(
        "/health/", headers={"Authorization": f"Bearer {monitoring_token}"}, secure=True
    )
    assert len(compared) == 1


def test_without_a_configured_token_a_bearer_over_plain_http_is_refused_too(
    anonymous_client, signed_root, settings
):
    """Whether a token is configured makes no difference either."""
    settings.PKIPORTAL_HEALTH_TOKEN = ""

    response = anonymous_client.get("/health/", headers={"Authorization": f"Bearer {'x' * 40}"})

    assert response.status_code == 403


def test_https_behind_a_proxy_that_says_so_is_https(
    anonymous_client, signed_root, monitoring_token, settings
):
    """USE_X_FORWARDED_PROTO: the proxy ends TLS and tells Django."""
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

    response = anonymous_client.get(
        "/health/",
        headers={"Authorization": f"Bearer {monitoring_token}", "X-Forwarded-Proto": "https"},
    )

    assert response.status_code == 200
    assert "checks" in response.json()


def test_the_token_over_plain_http_is_taken_where_the_operator_allows_it(
    anonymous_client, signed_root, monitoring_token, settings
):
    settings.PKIPORTAL_MONITORING_ALLOW_HTTP = True

    right = anonymous_client.get(
        "/health/", headers={"Authorization": f"Bearer {monitoring_token}"}
    )
    wrong = anonymous_client.get("/health/", headers={"Authorization": "Bearer wrong"})

    assert right.status_code == 200
    assert "checks" in right.json()
    assert (wrong.status_code, wrong.json()) == (200, {"status": "ok"})


def test_officers_sessions_over_plain_http_still_see_details(signed_root, officer):
    """Only the bearer token is refused: a session's cookie is SECURE_COOKIES' business."""
    status, body = details(officer)

    assert status == 200
    assert "checks" in body


# --- /health/live/: for load balancers -------------------------------------------------


def test_the_load_balancers_check_stays_up_when_only_a_crl_has_expired(
    signed_root, officer, anonymous_client, time_machine
):
    """/health/ fails, but no node can fix an expired root CRL by being taken out, and
    taking them all out would stop /pki/ serving the CRLs and CA certificates too."""
    time_machine.move_to(signed_root.next_update + timedelta(minutes=1))

    assert anonymous_client.get("/health/").status_code == 503
    response = anonymous_client.get("/health/live/")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Cache-Control"].startswith("max-age=0")


def test_the_load_balancers_check_fails_without_the_database(anonymous_client, database_down):
    response = anonymous_client.get("/health/live/")

    assert response.status_code == 503
    assert response.json() == {"status": "fail"}


@pytest.mark.parametrize(("who", "details"), [("officer", True), ("employee", False)])
def test_only_staff_and_officers_see_the_live_checks_details(request, signed_root, who, details):
    body = client_for(request.getfixturevalue(who)).get("/health/live/").json()

    assert ("checks" in body) == details
    if details:
        assert body["checks"]["database"]["status"] == "ok"


def test_the_live_check_takes_no_post(anonymous_client, hierarchy):
    assert anonymous_client.post("/health/live/").status_code == 405


@pytest.mark.parametrize("who", ["officer", "staff"])
@pytest.mark.parametrize("path", ["/health/", "/metrics"])
def test_a_password_alone_buys_no_details(request, who, path, signed_root):
    """The second-factor middleware lets /health/ and /metrics through unconfirmed, for
    probes: a session that typed the password of an officer or a member of staff but not
    their code sees the verdict only, as anyone does."""
    from django.test import Client

    from accounts import mfa
    from tests.second_factor import authenticator

    person = request.getfixturevalue(who)
    authenticator(person)
    browser = Client()
    browser.force_login(person)  # the password step, no code yet
    mfa.forget_state(person)

    response = browser.get(path)

    if path == "/health/":
        assert response.json() == {"status": "ok"}
    else:
        assert response.status_code == 403
        assert b"pkiportal_" not in response.content
