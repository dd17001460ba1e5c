"""Second factor: who must, the sign-in's second step, set-up, backup codes, the API, the
admin's reset, and that no seed or backup code is in the database in a usable form."""

from __future__ import annotations

import base64
import re
from datetime import timedelta

import pytest
import time_machine
from knox.models import AuthToken

from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import mfa
from accounts.models import BackupCodeDevice, TotpDevice
from enrollment.models import ApiToken, AuditEvent
from tests.enrollment.api_tools import (
    CERTIFICATES,
    PENDING,
    TOKEN,
    session_client,
    token_client,
)
from tests.factories import UserFactory
from tests.markers import needs_row_locks
from tests.second_factor import authenticator, code, seed_of, verified_login

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"  # tests/factories.py
PAGES = {
    "overview": "/account/",
    "verify": "/account/two-factor/verify/",
    "setup": "/account/two-factor/setup/",
}
POSTS = ["/account/two-factor/backup-codes/", "/account/two-factor/remove/"]


def signed_in_only(user) -> Client:
    """A password sign-in that has not done its second step (yet)."""
    client = Client()
    client.force_login(user)
    return client


def sign_in(client: Client, username: str, next_url: str = "/ra/requests/"):
    return client.post(
        f"/accounts/login/?next={next_url}",
        {"username": username, "password": PASSWORD, "next": next_url},
    )


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def backup_codes_on(page: str) -> list[str]:
    return re.findall(r"<code>([a-z2-9]{4}(?:-[a-z2-9]{4}){3})</code>", page)


def new_backup_codes(client: Client, current: str) -> list[str]:
    """Make new backup codes on /account/, confirming with a current code."""
    return backup_codes_on(client.post(POSTS[0], {"current_code": current}).content.decode())


def a_wrong_code(seed: bytes) -> str:
    return "000000" if code(seed) != "000000" else "111111"


@pytest.fixture
def kra_user(db):
    user = UserFactory(username="karl")
    user.groups.add(Group.objects.get_or_create(name="Key recovery agents")[0])
    return user


# --- who must -------------------------------------------------------------------------


def test_officers_agents_staff_and_superusers_must_and_employees_need_not(
    employee, officer, kra_user, admin_user
):
    staff = UserFactory(username="stan", is_staff=True)

    assert [mfa.state_for(u).required for u in (officer, kra_user, admin_user, staff)] == [True] * 4
    assert not mfa.state_for(employee).asked


@pytest.mark.parametrize(
    ("policy", "employee_must", "officer_must"),
    [("everyone", True, True), ("nobody", False, False), ("officers", False, True)],
)
def test_the_policy_setting_says_who_must(
    employee, officer, settings, policy, employee_must, officer_must
):
    settings.PKIPORTAL_MFA_REQUIRED_FOR = policy

    assert mfa.state_for(employee).required is employee_must
    assert mfa.state_for(officer).required is officer_must


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PKIPORTAL_MFA_REQUIRED_FOR", "admins"),
        ("PKIPORTAL_MFA_TRUST_SINGLE_SIGN_ON", "yes"),
        ("PKIPORTAL_MFA_KEY", "too short"),
    ],
)
def test_bad_settings_stop_the_portal(load_settings, name, value):
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match=name):
        load_settings(**{name: value})


def test_the_settings_defaults(load_settings):
    loaded = load_settings()

    assert loaded["PKIPORTAL_MFA_REQUIRED_FOR"] == "officers"
    assert loaded["PKIPORTAL_MFA_TRUST_SINGLE_SIGN_ON"] == "amr"
    assert loaded["PKIPORTAL_MFA_KEYS"] == []
    assert load_settings(PKIPORTAL_MFA_KEY="a" * 32 + ", " + "b" * 40)["PKIPORTAL_MFA_KEYS"] == [
        "a" * 32,
        "b" * 40,
    ]


# --- who may reach which page -----------------------------------------------------------


@pytest.mark.parametrize("path", [*PAGES.values()])
def test_anonymous_people_are_sent_to_sign_in(anonymous_client, path):
    response = anonymous_client.get(path)

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("path", POSTS)
def test_anonymous_posts_are_sent_to_sign_in_and_change_nothing(anonymous_client, path):
    response = anonymous_client.post(path, {"confirm": "on"})

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert not AuditEvent.objects.filter(action__startswith="mfa.").exists()


def test_an_employee_without_one_goes_anywhere_and_may_set_one_up(employee_client):
    assert employee_client.get("/certificates/").status_code == 200
    assert employee_client.get(PAGES["overview"]).status_code == 200
    assert employee_client.get(PAGES["setup"]).status_code == 200
    # Nothing to verify with: the second step sends them to set-up.
    assert employee_client.get(PAGES["verify"])["Location"].startswith(PAGES["setup"])


@pytest.mark.parametrize("path", ["/", "/ra/requests/", "/certificates/", "/admin/", "/account/"])
def test_an_officer_without_a_second_factor_is_sent_to_set_one_up(officer, path):
    response = signed_in_only(officer).get(path)

    assert response.status_code == 302
    assert response["Location"] == f"{PAGES['setup']}?next={path.replace('/', '%2F')}"


@pytest.mark.parametrize("path", ["/", "/ra/requests/", "/admin/", PAGES["setup"], "/account/"])
def test_an_officer_with_one_must_enter_a_code_first(officer, path):
    authenticator(officer)

    response = signed_in_only(officer).get(path)

    assert response.status_code == 302
    assert response["Location"].startswith(f"{PAGES['verify']}?next=")


@pytest.mark.parametrize("path", POSTS)
def test_an_unverified_officer_changes_nothing(officer, path):
    device, _seed = authenticator(officer)

    response = signed_in_only(officer).post(path, {"confirm": "on"})

    assert response.status_code == 302
    assert response["Location"] == PAGES["verify"]
    assert TotpDevice.objects.get() == device
    assert not AuditEvent.objects.filter(action__startswith="mfa.").exists()


def test_an_unverified_session_still_signs_out_and_reaches_the_public_repository(
    officer, hierarchy
):
    client = signed_in_only(officer)

    assert client.get("/pki/issuing.crt").status_code == 200
    assert client.get("/static/css/portal.css").status_code == 200
    assert client.post("/accounts/logout/").status_code == 200
    assert client.get("/certificates/")["Location"].startswith("/accounts/login/")


def test_a_verified_officer_reaches_the_ra_console_and_their_account(officer_client):
    assert officer_client.get("/ra/requests/").status_code == 200
    page = officer_client.get(PAGES["overview"])
    assert page.status_code == 200
    assert "cannot be removed" in page.content.decode()


def test_a_verified_officer_may_not_remove_it_but_an_employee_may(officer_client, employee):
    refused = officer_client.post(POSTS[1], {"confirm": "on", "current_code": "1"}, follow=True)
    assert "not remove it" in refused.content.decode()
    assert TotpDevice.objects.count() == 1

    _device, seed = authenticator(employee)
    client = verified_login(Client(), employee)
    assert client.post(POSTS[1], {"confirm": "on", "current_code": code(seed)}).status_code == 302
    assert not TotpDevice.objects.filter(user=employee).exists()
    assert events("mfa.device_remove")[0].object_id == str(employee.pk)


def test_removing_needs_the_box_ticked(employee):
    _device, seed = authenticator(employee)
    client = verified_login(Client(), employee)

    client.post(POSTS[1], {"current_code": code(seed)})

    assert TotpDevice.objects.filter(user=employee).exists()


def test_the_forms_need_the_csrf_token(officer):
    authenticator(officer)
    client = verified_login(Client(enforce_csrf_checks=True), officer)

    assert client.post(POSTS[0]).status_code == 403
    assert client.post(PAGES["verify"], {"code": "123456"}).status_code in (302, 403)
    assert not events("mfa.backup_codes_regenerate")


# --- the whole flow through the views ------------------------------------------------------


def test_an_officer_signs_in_sets_up_an_app_and_reaches_the_ra_console(officer):
    client = Client()

    signed_in = sign_in(client, "olivia")
    assert signed_in["Location"] == f"{PAGES['setup']}?next=%2Fra%2Frequests%2F"

    page = client.get(signed_in["Location"])
    assert page.status_code == 200
    assert "no-store" in page["Cache-Control"]  # it carries the seed
    text = page.content.decode()
    assert "<svg" in text
    assert "<script" not in text.split("<main", 1)[1]
    pending = TotpDevice.objects.get(user=officer, confirmed=False)
    seed = seed_of(pending)
    assert mfa.base32_secret(pending) in text
    # A reload shows the same seed: the phone that scanned it still matches.
    assert mfa.base32_secret(pending) in client.get(PAGES["setup"]).content.decode()

    wrong = client.post(PAGES["setup"], {"code": "000000" if code(seed) != "000000" else "111111"})
    assert wrong.status_code == 400
    with time_machine.travel(timezone.now() + timedelta(seconds=3)):
        done = client.post(PAGES["setup"], {"code": code(seed), "next": "/ra/requests/"})

    assert done.status_code == 200
    assert "no-store" in done["Cache-Control"]
    codes = backup_codes_on(done.content.decode())
    assert len(codes) == 10
    assert len(set(codes)) == 10
    assert 'href="/ra/requests/"' in done.content.decode()
    assert client.get("/ra/requests/").status_code == 200
    added = events("mfa.device_add")
    assert [(e.actor_id, e.object_id, e.detail["replaced"]) for e in added] == [
        (officer.pk, str(officer.pk), False)
    ]
    # Nothing of the codes in the trail.
    assert not any(c in str(e.detail) for e in AuditEvent.objects.all() for c in codes)


def secret_on(page) -> str:
    return re.search(r'id="totp-secret">([^<]+)<', page.content.decode()).group(1)


def test_each_session_sets_up_its_own_app(officer):
    """Whoever else knows the password signs in too: they never see the seed the officer
    is about to confirm, and cannot confirm it from their session."""
    officer_session, other = Client(), Client()
    sign_in(officer_session, "olivia")
    sign_in(other, "olivia")

    mine = officer_session.get(PAGES["setup"])
    theirs = other.get(PAGES["setup"])

    assert secret_on(mine) != secret_on(theirs)
    assert secret_on(officer_session.get(PAGES["setup"])) == secret_on(mine)  # a reload
    seed = base64.b32decode(secret_on(mine).replace(" ", ""))
    assert other.post(PAGES["setup"], {"code": code(seed)}).status_code == 400
    assert officer_session.post(PAGES["setup"], {"code": code(seed)}).status_code == 200
    # Confirming drops the other session's unfinished set-up.
    assert list(TotpDevice.objects.values_list("confirmed", flat=True)) == [True]


def test_an_unfinished_set_up_expires_and_is_cleaned_up(officer, employee, settings):
    settings.PKIPORTAL_TOKEN_SIGN_IN_MINUTES = 60  # the sign-in is still recent
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        client = Client()
        sign_in(client, "olivia")
        old = secret_on(client.get(PAGES["setup"]))
        signed_in_only(employee).get(PAGES["setup"])  # someone else's, left unfinished
    later = start + timedelta(minutes=mfa.PENDING_MINUTES + 1)
    seed = base64.b32decode(old.replace(" ", ""))
    with time_machine.travel(later, tick=False):
        expired = client.post(PAGES["setup"], {"code": code(seed, at=later.timestamp())})
        assert expired.status_code == 400
        assert "This set-up expired" in expired.content.decode()
        assert secret_on(expired) != old

    assert TotpDevice.objects.filter(confirmed=True).count() == 0
    assert list(TotpDevice.objects.values_list("user__username", flat=True)) == ["olivia"]


def test_the_second_step_keeps_where_the_person_was_going(officer):
    _device, seed = authenticator(officer)
    client = Client()

    signed_in = sign_in(client, "olivia", "/ra/requests/")
    assert signed_in["Location"] == f"{PAGES['verify']}?next=%2Fra%2Frequests%2F"
    assert client.get("/ra/requests/").status_code == 302  # not yet

    verified = client.post(PAGES["verify"], {"code": code(seed), "next": "/ra/requests/"})

    assert verified["Location"] == "/ra/requests/"
    assert client.get("/ra/requests/").status_code == 200


def test_the_second_step_never_sends_people_off_site(officer):
    _device, seed = authenticator(officer)
    client = signed_in_only(officer)

    verified = client.post(PAGES["verify"], {"code": code(seed), "next": "https://evil.example/"})

    assert verified["Location"] == "/"


def test_a_code_works_once_and_a_wrong_code_is_throttled_and_audited(officer):
    device, seed = authenticator(officer)
    now = timezone.now()
    with time_machine.travel(now, tick=False):
        first = signed_in_only(officer)
        right = code(seed)
        assert first.post(PAGES["verify"], {"code": right})["Location"] == "/"

        # The same code again, in another sign-in: replay refused, but no wrong code (it
        # is no guess): neither throttled nor audited.
        second = signed_in_only(officer)
        replay = second.post(PAGES["verify"], {"code": right})
        assert replay.status_code == 400
        device.refresh_from_db()
        assert device.throttling_failure_count == 0
        assert second.post(PAGES["verify"], {"code": a_wrong_code(seed)}).status_code == 400
        # Now throttled: even a right code waits a second (the form again, not an error).
        throttled = second.post(PAGES["verify"], {"code": code(seed, at=now.timestamp() + 30)})
        assert throttled.status_code == 200
        assert "Wait 1 second and try again" in throttled.content.decode()
    with time_machine.travel(now + timedelta(seconds=31), tick=False):
        later = second.post(PAGES["verify"], {"code": code(seed, at=now.timestamp() + 31)})
        assert later.status_code == 302

    failures = events("mfa.verify")
    assert [(e.outcome, e.detail["kind"], e.detail["failures"]) for e in failures] == [
        ("failure", "totp", 1)
    ]  # the throttled refusal is not an event of its own


def test_the_right_code_sent_at_once_after_a_typo_is_asked_again_after_the_wait(officer):
    """The walk-through's case: a typo, then the right code within a second or two. The
    page comes back (200, no error page) saying how long to wait, its button held back as
    long by a script file; the code is neither checked nor counted; after the wait the same
    code signs in."""
    device, seed = authenticator(officer)
    client = signed_in_only(officer)
    now = timezone.now()
    right = code(seed, at=now.timestamp())
    with time_machine.travel(now, tick=False):
        wrong = client.post(PAGES["verify"], {"code": a_wrong_code(seed), "next": "/ra/"})
        waiting = client.post(PAGES["verify"], {"code": right, "next": "/ra/"})
        not_in = client.get("/ra/")

    assert wrong.status_code == 400
    assert 'data-wait-seconds="1"' in wrong.content.decode()  # the wait starts now
    page = waiting.content.decode()
    assert waiting.status_code == 200
    assert "Wait 1 second and try again" in page
    assert "This code was not checked and does not count as wrong." in page
    assert 'name="code"' in page
    assert '<button type="submit" data-wait-seconds="1">Continue</button>' in page
    assert '<p class="wait-notice" data-wait-notice role="status"' in page  # its answers
    # ... in the page's words ({seconds} is the script's to fill in).
    assert 'data-wait-send-other="Wait {seconds} more seconds, then send your code."' in page
    assert '<script src="/static/js/wait.js" defer></script>' in page
    assert "<script>" not in page  # no inline script: the CSP refuses it
    assert not_in.status_code == 302
    assert not_in["Location"].startswith(PAGES["verify"])
    device.refresh_from_db()
    assert device.throttling_failure_count == 1  # the waiting try is not a wrong code
    assert device.last_t == -1  # nor was its code used up
    assert len(events("mfa.verify")) == 1

    with time_machine.travel(now + timedelta(seconds=2), tick=False):
        page = client.get(PAGES["verify"]).content.decode()
        done = client.post(PAGES["verify"], {"code": right, "next": "/ra/"})

    assert "data-wait-seconds" not in page
    assert "wait.js" not in page
    assert "data-wait-notice" not in page
    assert done.status_code == 302
    assert done["Location"] == "/ra/"
    assert client.get("/ra/").status_code == 200
    device.refresh_from_db()
    assert device.throttling_failure_count == 0


def code_field_value(page: str) -> str | None:
    """The value the code field is rendered with (None: an empty field)."""
    field = re.search(r'<input type="text" name="code"[^>]*>', page)
    assert field is not None, page
    value = re.search(r' value="([^"]*)"', field.group(0))
    return value.group(1) if value else None


def test_a_refused_code_leaves_the_field_and_one_sent_during_the_wait_stays(officer):
    """The field is autofocused with the caret at its start: a wrong code left in it had
    the right one typed in front of it. A code sent during the wait was not checked, so
    it stays, to be sent as it is once the button lets it."""
    _device, seed = authenticator(officer)
    client = signed_in_only(officer)
    now = timezone.now()
    wrong_code = a_wrong_code(seed)
    right = code(seed, at=now.timestamp())
    with time_machine.travel(now, tick=False):
        wrong = client.post(PAGES["verify"], {"code": wrong_code})
        waiting = client.post(PAGES["verify"], {"code": right})

    assert wrong.status_code == 400
    assert "That code is not right" in wrong.content.decode()
    assert code_field_value(wrong.content.decode()) is None
    assert waiting.status_code == 200
    assert code_field_value(waiting.content.decode()) == right


def test_the_wait_is_said_in_seconds_then_minutes(officer):
    device, seed = authenticator(officer)
    now = timezone.now()
    for failures, said in ((5, "Wait 16 seconds"), (8, "Wait 3 minutes")):
        TotpDevice.objects.filter(pk=device.pk).update(
            throttling_failure_count=failures, throttling_failure_timestamp=now
        )
        with time_machine.travel(now, tick=False):
            page = signed_in_only(officer).post(PAGES["verify"], {"code": code(seed)})
        assert page.status_code == 200
        assert said in page.content.decode()
        # Minutes: the button does not wait, so a backup code can be sent meanwhile.
        assert ("data-wait-seconds" in page.content.decode()) is (failures == 5)
    device.refresh_from_db()
    assert device.throttling_failure_count == 8


def test_a_backup_code_signs_in_while_the_app_s_codes_wait_minutes(officer):
    """Locked out of the app's codes for minutes, someone turns to a backup code: the
    page's button does not hold it back, and the code works."""
    device, seed = authenticator(officer)
    backup = mfa._replace_backup_codes(officer)[0]
    now = timezone.now()
    TotpDevice.objects.filter(pk=device.pk).update(
        throttling_failure_count=8, throttling_failure_timestamp=now
    )
    client = signed_in_only(officer)
    with time_machine.travel(now, tick=False):
        waiting = client.post(PAGES["verify"], {"code": code(seed), "next": "/ra/"})
        done = client.post(PAGES["verify"], {"code": backup, "next": "/ra/"})

    assert "Wait 3 minutes" in waiting.content.decode()
    assert "data-wait-seconds" not in waiting.content.decode()
    assert done.status_code == 302
    assert done["Location"] == "/ra/"


def test_replacing_the_app_while_waiting_shows_the_form_again(officer):
    old, old_seed = authenticator(officer)
    client = verified_login(Client(), officer)
    now = timezone.now()
    with time_machine.travel(now, tick=False):
        client.get(PAGES["setup"])
        new_seed = seed_of(TotpDevice.objects.get(confirmed=False))
        wrong = client.post(
            PAGES["setup"], {"code": code(new_seed), "current_code": a_wrong_code(old_seed)}
        )
        waiting = client.post(
            PAGES["setup"],
            {
                "code": code(new_seed, at=now.timestamp() + 30),
                "current_code": code(old_seed),
            },
        )

    assert wrong.status_code == 400
    assert waiting.status_code == 200
    assert "Wait 1 second and try again" in waiting.content.decode()
    assert 'name="current_code"' in waiting.content.decode()
    assert TotpDevice.objects.filter(confirmed=True).get() == old
    old.refresh_from_db()
    assert old.throttling_failure_count == 1


def test_the_wait_after_wrong_codes_is_capped_and_a_lockout_is_audited_once(
    officer, mailoutbox, django_capture_on_commit_callbacks
):
    from accounts.models import LOCKOUT_FAILURES, MAX_THROTTLE_SECONDS

    device, seed = authenticator(officer)
    now = timezone.now()
    wrong = a_wrong_code(seed)
    with django_capture_on_commit_callbacks(execute=True):
        for n in range(1, LOCKOUT_FAILURES + 3):  # each try after the last wait ended
            with time_machine.travel(now + timedelta(days=n), tick=False):
                mfa.check_code(user=officer, code=wrong, source_address=None, via="web")
    device.refresh_from_db()
    assert device.throttling_failure_count == LOCKOUT_FAILURES + 2

    with time_machine.travel(device.throttling_failure_timestamp, tick=False):
        allowed, info = device.verify_is_allowed()
    assert not allowed
    assert info["locked_until"] - device.throttling_failure_timestamp == timedelta(
        seconds=MAX_THROTTLE_SECONDS
    )
    later = device.throttling_failure_timestamp + timedelta(seconds=MAX_THROTTLE_SECONDS + 1)
    with time_machine.travel(later, tick=False):
        assert device.verify_is_allowed() == (True, None)
    (lockout,) = events("mfa.lockout")
    assert lockout.detail["failures"] == LOCKOUT_FAILURES
    assert [m.subject for m in mailoutbox] == [
        "Many wrong second-factor codes were entered for your account"
    ]


def test_guessing_on_past_the_lockout_is_told_again_every_day_of_it(
    officer, mailoutbox, django_capture_on_commit_callbacks
):
    """After the lock-out one guess per quarter of an hour goes on for ever: the officer
    hears of it again after each day's worth, not only at the eleventh."""
    from accounts.models import LOCKOUT_FAILURES, LOCKOUT_REMINDER_FAILURES

    device, seed = authenticator(officer)
    wrong = a_wrong_code(seed)
    now = timezone.now()
    day = 0
    for failures in (LOCKOUT_FAILURES + LOCKOUT_REMINDER_FAILURES - 2, LOCKOUT_FAILURES + 5):
        TotpDevice.objects.filter(pk=device.pk).update(throttling_failure_count=failures)
        for _ in range(2):  # each try after the last wait ended
            day += 1
            with (
                time_machine.travel(now + timedelta(days=day), tick=False),
                django_capture_on_commit_callbacks(execute=True),
            ):
                mfa.check_code(user=officer, code=wrong, source_address=None, via="web")

    # 95 and 96 past the lock-out, then 6 and 7: one reminder, at 96.
    (lockout,) = events("mfa.lockout")
    assert lockout.detail["failures"] == LOCKOUT_FAILURES + LOCKOUT_REMINDER_FAILURES
    assert [m.subject for m in mailoutbox] == [
        "Many wrong second-factor codes were entered for your account"
    ]


@needs_row_locks
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_burst_of_wrong_codes_counts_once_and_the_rest_are_throttled(officer):
    """Wrong codes sent at once all read the device unthrottled: under the row lock the
    throttle is asked again, so one counts and the rest are refused as throttled, with no
    audit event each."""
    import threading

    from django.db import connections

    device, seed = authenticator(officer)
    tries = 8
    barrier = threading.Barrier(tries)
    results = [None] * tries

    def one(i: int) -> None:
        try:
            barrier.wait()
            results[i] = mfa.check_code(
                user=officer, code=a_wrong_code(seed), source_address=None, via="t"
            )[0]
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(tries)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    device.refresh_from_db()
    assert device.throttling_failure_count == 1
    assert len(events("mfa.verify")) == 1
    assert sum(r.throttled_until is not None for r in results) == tries - 1


def test_a_backup_code_signs_in_once(officer):
    _device, seed = authenticator(officer)
    client = verified_login(Client(), officer)
    codes = new_backup_codes(client, code(seed))
    assert len(codes) == 10

    used = signed_in_only(officer).post(PAGES["verify"], {"code": codes[3].upper()})
    assert used["Location"] == "/"
    with time_machine.travel(timezone.now() + timedelta(seconds=5)):
        again = signed_in_only(officer).post(PAGES["verify"], {"code": codes[3]})

    assert again.status_code == 400
    assert len(BackupCodeDevice.objects.get(user=officer).digests) == 9
    assert events("mfa.backup_code_use")[0].detail["left"] == 9
    assert events("mfa.backup_codes_regenerate")[0].actor_id == officer.pk


def test_new_backup_codes_replace_the_old(officer):
    _device, seed = authenticator(officer)
    client = verified_login(Client(), officer)
    old = new_backup_codes(client, code(seed))
    new = new_backup_codes(client, old[5])  # a backup code confirms it too

    assert len(new) == 10
    assert not set(old) & set(new)
    assert signed_in_only(officer).post(PAGES["verify"], {"code": old[0]}).status_code == 400


def test_replacing_the_app_takes_a_code_of_the_old_one_and_drops_it(
    officer, mailoutbox, django_capture_on_commit_callbacks
):
    _old, old_seed = authenticator(officer)
    client = verified_login(Client(), officer)
    now = timezone.now()

    with time_machine.travel(now, tick=False):
        page = client.get(PAGES["setup"])
        assert page.status_code == 200
        assert 'name="current_code"' in page.content.decode()
        new_seed = seed_of(TotpDevice.objects.get(confirmed=False))
        # The new app's code alone is not enough, nor a wrong code of the old one.
        missing = client.post(PAGES["setup"], {"code": code(new_seed)})
        assert missing.status_code == 400
    later = now.timestamp() + 30
    with time_machine.travel(later, tick=False):
        wrong = client.post(
            PAGES["setup"],
            {"code": code(new_seed, at=later), "current_code": a_wrong_code(old_seed)},
        )
        assert wrong.status_code == 400
        assert "not a current code" in wrong.content.decode()
    assert TotpDevice.objects.filter(confirmed=True).get() == _old
    assert events("mfa.verify")[-1].detail["via"] == "replace"
    later = now.timestamp() + 90
    with (
        time_machine.travel(later, tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        done = client.post(
            PAGES["setup"],
            {"code": code(new_seed, at=later), "current_code": code(old_seed, at=later)},
        )

    assert done.status_code == 200
    pending = TotpDevice.objects.get()
    assert pending.confirmed
    assert seed_of(pending) == new_seed
    assert events("mfa.device_add")[0].detail["replaced"] is True
    assert [m.subject for m in mailoutbox] == ["Your authenticator app was replaced"]
    assert mailoutbox[0].to == [officer.email]
    with time_machine.travel(later + 60):
        refused = signed_in_only(officer).post(PAGES["verify"], {"code": code(old_seed)})
    assert refused.status_code == 400


def test_a_stale_verified_session_neither_replaces_the_app_nor_mints_a_token(officer):
    """A session cookie stolen hours after its sign-in: the set-up page sends it to sign
    in again, before it shows a seed, and nothing it does counts as a recent sign-in."""
    old_device, old_seed = authenticator(officer)
    client = Client()
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        sign_in(client, "olivia")
        assert client.post(PAGES["verify"], {"code": code(old_seed)}).status_code == 302
    with time_machine.travel(start + timedelta(hours=6), tick=False):
        page = client.get(PAGES["setup"])
        posted = client.post(PAGES["setup"], {"code": "123456", "current_code": "123456"})
        minted = client.post("/account/tokens/new/", {"label": "thief", "lifetime_days": 90})

    for response in (page, posted, minted):
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")
    assert not TotpDevice.objects.filter(confirmed=False).exists()  # no seed shown
    assert list(TotpDevice.objects.all()) == [old_device]
    assert not AuthToken.objects.exists()


def test_setting_up_an_app_does_not_count_as_a_recent_sign_in(employee, settings):
    window = settings.PKIPORTAL_TOKEN_SIGN_IN_MINUTES
    client = Client()
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        sign_in(client, "alice")
    set_up_at = start + timedelta(minutes=window - 2)
    with time_machine.travel(set_up_at, tick=False):
        client.get(PAGES["setup"])
        seed = seed_of(TotpDevice.objects.get(user=employee, confirmed=False))
        done = client.post(PAGES["setup"], {"code": code(seed, at=set_up_at.timestamp())})
        assert done.status_code == 200
    with time_machine.travel(start + timedelta(minutes=window + 1), tick=False):
        minted = client.post("/account/tokens/new/", {"label": "x", "lifetime_days": 7})

    assert minted["Location"].startswith("/accounts/login/")
    assert not AuthToken.objects.exists()
    # A stale session of someone with none set up cannot start one either.
    with time_machine.travel(start + timedelta(hours=2), tick=False):
        stale = Client()
        stale.force_login(UserFactory(username="newbie"))
    with time_machine.travel(start + timedelta(hours=5), tick=False):
        assert stale.get(PAGES["setup"])["Location"].startswith("/accounts/login/")
    assert not TotpDevice.objects.filter(user__username="newbie").exists()


@pytest.mark.parametrize("path", POSTS)
def test_backup_codes_and_removal_take_a_current_code_and_a_recent_sign_in(
    employee, path, mailoutbox, django_capture_on_commit_callbacks
):
    device, seed = authenticator(employee)
    mfa._replace_backup_codes(employee)
    digests = BackupCodeDevice.objects.get().digests
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        client = verified_login(Client(), employee)
        no_code = client.post(path, {"confirm": "on"})
        wrong = client.post(path, {"confirm": "on", "current_code": a_wrong_code(seed)})
    with time_machine.travel(start + timedelta(hours=3), tick=False):
        stale = client.post(path, {"confirm": "on", "current_code": code(seed)})
    assert stale["Location"].startswith("/accounts/login/")
    for refused in (no_code, wrong):
        assert refused["Location"] == PAGES["overview"]
    assert TotpDevice.objects.get() == device
    assert BackupCodeDevice.objects.get().digests == digests
    assert [e.detail["via"] for e in events("mfa.verify")] == [
        "backup_codes" if path == POSTS[0] else "remove"
    ]
    assert not mailoutbox

    with (
        time_machine.travel(start + timedelta(seconds=5), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        done = verified_login(Client(), employee).post(
            path, {"confirm": "on", "current_code": code(seed)}
        )

    if path == POSTS[0]:
        assert len(backup_codes_on(done.content.decode())) == 10
        assert BackupCodeDevice.objects.get().digests != digests
        assert [m.subject for m in mailoutbox] == ["New backup codes were made for your account"]
    else:
        assert done["Location"] == PAGES["overview"]
        assert not TotpDevice.objects.exists()
        assert [m.subject for m in mailoutbox] == ["Your second factor was removed"]


@pytest.mark.parametrize("path", POSTS)
def test_a_change_sent_while_waiting_says_how_long_and_changes_nothing(employee, path):
    device, seed = authenticator(employee)
    mfa._replace_backup_codes(employee)
    digests = BackupCodeDevice.objects.get().digests
    now = timezone.now()
    with time_machine.travel(now, tick=False):
        client = verified_login(Client(), employee)
        client.post(path, {"confirm": "on", "current_code": a_wrong_code(seed)})
        waiting = client.post(path, {"confirm": "on", "current_code": code(seed)})
        page = client.get(waiting["Location"]).content.decode()

    assert waiting["Location"] == PAGES["overview"]
    assert waiting["Retry-After"] == "1"
    assert "Wait 1 second and try again" in page
    assert TotpDevice.objects.get() == device
    assert BackupCodeDevice.objects.get().digests == digests
    device.refresh_from_db()
    assert device.throttling_failure_count == 1


def test_a_new_password_sign_in_asks_for_the_code_again(officer):
    """The second factor of an earlier sign-in in this browser does not carry over."""
    client = verified_login(Client(), officer)
    assert client.get("/ra/requests/").status_code == 200

    sign_in(client, "olivia")

    assert client.get("/ra/requests/")["Location"].startswith(PAGES["verify"])


def test_an_employee_who_set_one_up_is_asked_at_every_sign_in(employee):
    _device, seed = authenticator(employee)
    client = Client()

    signed_in = sign_in(client, "alice", "/certificates/")

    assert signed_in["Location"] == f"{PAGES['verify']}?next=%2Fcertificates%2F"
    assert client.get("/certificates/").status_code == 302
    assert client.post(PAGES["verify"], {"code": code(seed)})["Location"] == "/"


def test_axes_still_counts_wrong_passwords_before_any_second_step(officer, settings):
    authenticator(officer)
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post("/accounts/login/", {"username": "olivia", "password": "guess"})

    assert sign_in(client, "olivia").status_code == 429


# --- nothing usable in the database ----------------------------------------------------------


def test_the_seed_and_backup_codes_are_not_in_the_database_in_clear(officer):
    device, seed = authenticator(officer)
    client = verified_login(Client(), officer)
    codes = new_backup_codes(client, code(seed))
    with connection.cursor() as cursor:
        cursor.execute("SELECT sealed_key FROM accounts_totpdevice WHERE id = %s", [device.pk])
        (raw,) = cursor.fetchone()
        cursor.execute("SELECT CAST(digests AS TEXT) FROM accounts_backupcodedevice")
        (digests,) = cursor.fetchone()
    stored = bytes(raw)

    for form in (seed, seed.hex().encode(), base64.b32encode(seed), base64.b64encode(seed)):
        assert form not in stored
    assert stored.startswith(b"gAAAAA")  # a Fernet token
    assert mfa.unseal(stored) == seed
    for one in codes:
        assert one not in digests
        assert one.replace("-", "") not in digests


def test_a_rotated_secret_key_still_opens_seeds_and_reseal_moves_them(officer, settings):
    device, seed = authenticator(officer)
    old = settings.SECRET_KEY
    settings.SECRET_KEY = "a brand new secret key " * 3
    settings.SECRET_KEY_FALLBACKS = [old]

    assert mfa.unseal(bytes(TotpDevice.objects.get().sealed_key)) == seed
    assert mfa.reseal_all() == (1, 0)

    settings.SECRET_KEY_FALLBACKS = []
    assert mfa.unseal(bytes(TotpDevice.objects.get().sealed_key)) == seed


def test_following_the_deploy_checks_hint_keeps_everyone_s_second_factor(officer, settings):
    """W006: set PKIPORTAL_MFA_KEY, run mfa_reseal. Seeds sealed under SECRET_KEY's key
    still open, move to the new key, and then open without SECRET_KEY."""
    from io import StringIO

    from django.core.management import call_command

    from enrollment.checks import second_factor_key_is_its_own

    _device, seed = authenticator(officer)
    (warning,) = second_factor_key_is_its_own()
    assert "PKIPORTAL_MFA_KEY" in warning.hint
    assert "mfa_reseal" in warning.hint
    settings.PKIPORTAL_MFA_KEYS = ["an own key of at least thirty-two chars!!"]

    out = StringIO()
    call_command("mfa_reseal", stdout=out)
    assert "Resealed 1 " in out.getvalue()
    with time_machine.travel(timezone.now() + timedelta(seconds=1)):
        assert (
            signed_in_only(officer).post(PAGES["verify"], {"code": code(seed)})["Location"] == "/"
        )
    settings.SECRET_KEY = "a brand new secret key, the old one is gone " * 2
    assert mfa.unseal(bytes(TotpDevice.objects.get().sealed_key)) == seed


def test_a_lost_key_makes_the_code_unverifiable_not_a_crash(
    officer, employee, settings, admin_client_
):
    settings.PKIPORTAL_MFA_KEYS = ["a key of at least thirty-two characters, lost"]
    _device, seed = authenticator(officer)
    mfa._replace_backup_codes(officer)
    client = Client(raise_request_exception=False)
    sign_in(client, "olivia")
    pending_elsewhere = Client(raise_request_exception=False)
    sign_in(pending_elsewhere, "alice")  # mid set-up when the key is lost
    assert pending_elsewhere.get(PAGES["setup"]).status_code == 200
    settings.PKIPORTAL_MFA_KEYS = ["another key of at least thirty-two characters"]

    with pytest.raises(mfa.SecondFactorError, match="reset"):
        mfa.unseal(bytes(TotpDevice.objects.get(user=officer).sealed_key))
    page = client.post(PAGES["verify"], {"code": code(seed)})
    assert page.status_code == 400
    assert "an administrator must reset your second factor" in page.content.decode()
    api = token_client(None).post(TOKEN, **basic("olivia", HTTP_X_OTP_CODE=code(seed)))
    assert api.status_code == 403
    assert api.json()["missing"] == "second_factor_reset"
    # The set-up under the lost key makes way for a new one.
    assert pending_elsewhere.get(PAGES["setup"]).status_code == 200
    assert mfa.opens(TotpDevice.objects.get(user=employee))
    # mfa_reseal names the confirmed app only.
    assert mfa.reseal_all() == (2, 1)  # the administrator's and alice's open
    change = admin_client_.get(f"/admin/accounts/user/{officer.pk}/change/").content.decode()
    assert reset_url(officer) in change


def test_the_admin_offers_a_reset_for_an_unfinished_set_up(officer, admin_client_):
    client = Client()
    sign_in(client, "olivia")
    client.get(PAGES["setup"])

    change = admin_client_.get(f"/admin/accounts/user/{officer.pk}/change/").content.decode()

    assert "Authenticator app: set-up not finished" in change
    assert reset_url(officer) in change
    assert admin_client_.post(reset_url(officer)).status_code == 302
    assert not TotpDevice.objects.filter(user=officer).exists()


# --- the API ------------------------------------------------------------------------------


def basic(username: str, **headers: str) -> dict[str, str]:
    credentials = base64.b64encode(f"{username}:{PASSWORD}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {credentials}", **headers}


def test_basic_auth_mints_for_an_officer_only_with_a_code(officer):
    _device, seed = authenticator(officer)
    api = token_client(None)

    missing = api.post(TOKEN, **basic("olivia"))
    assert missing.status_code == 401
    assert missing.json()["missing"] == "second_factor"
    assert "X-OTP-Code" in missing.json()["detail"]
    assert missing["X-OTP-Code"] == "required"

    wrong = api.post(TOKEN, **basic("olivia", HTTP_X_OTP_CODE="12345x"))
    assert wrong.status_code == 401
    assert not AuthToken.objects.exists()

    with time_machine.travel(timezone.now() + timedelta(seconds=3)):
        minted = api.post(TOKEN, **basic("olivia", HTTP_X_OTP_CODE=code(seed)))
    assert minted.status_code == 200
    assert AuthToken.objects.get().user == officer
    assert [e.detail["via"] for e in events("mfa.verify")] == ["api"]


def test_basic_auth_is_throttled_per_device(officer):
    _device, seed = authenticator(officer)
    api = token_client(None)
    now = timezone.now()
    with time_machine.travel(now, tick=False):
        api.post(
            TOKEN,
            **basic("olivia", HTTP_X_OTP_CODE="000000" if code(seed) != "000000" else "111111"),
        )
        throttled = api.post(TOKEN, **basic("olivia", HTTP_X_OTP_CODE=code(seed)))

    assert throttled.status_code == 429
    assert throttled["Retry-After"] == "1"
    assert not AuthToken.objects.exists()


@pytest.mark.parametrize(
    ("failures", "said", "retry_after"), [(1, "1 second", "1"), (8, "3 minutes", "128")]
)
def test_basic_auth_says_the_wait_in_the_words_the_pages_use(officer, failures, said, retry_after):
    """It said "try again in 1 seconds", and a 128-second wait in seconds where the
    sign-in page says minutes."""
    device, seed = authenticator(officer)
    now = timezone.now()
    TotpDevice.objects.filter(pk=device.pk).update(
        throttling_failure_count=failures, throttling_failure_timestamp=now
    )
    with time_machine.travel(now, tick=False):
        throttled = token_client(None).post(TOKEN, **basic("olivia", HTTP_X_OTP_CODE=code(seed)))

    assert throttled.status_code == 429
    assert throttled.json() == {"detail": f"Too many wrong codes: try again in {said}."}
    assert throttled["Retry-After"] == retry_after  # seconds, whatever the words


def test_an_officer_without_a_second_factor_mints_nothing(officer):
    refused = token_client(None).post(TOKEN, **basic("olivia"))

    assert refused.status_code == 403
    assert refused.json()["missing"] == "second_factor"


def test_an_employee_mints_with_the_password_alone(employee):
    assert token_client(None).post(TOKEN, **basic("alice")).status_code == 200


def test_an_unverified_session_is_refused_with_json_naming_the_second_factor(officer):
    authenticator(officer)
    client = session_client(None)
    client.force_login(officer)

    for response in (client.get(CERTIFICATES), client.post(TOKEN)):
        assert response.status_code == 403
        body = response.json()
        assert body["missing"] == "second_factor"
        assert body["url"] == PAGES["verify"]
    assert not AuthToken.objects.exists()


def test_a_verified_session_mints_and_a_token_works_whatever_the_session(officer):
    client = session_client(officer)

    assert client.get(CERTIFICATES).status_code == 200
    assert client.post(TOKEN).status_code == 200
    assert token_client(officer).get(CERTIFICATES).status_code == 200


def token_of(response) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
    return client


def test_a_token_minted_without_a_second_factor_has_no_officer_power(employee):
    """Minted by an employee with the password alone; then they become an RA officer: the
    promotion deletes the token (accounts.privilege.start_afresh)."""
    minted = token_client(None).post(TOKEN, **basic("alice"))
    assert minted.status_code == 200
    assert not ApiToken.objects.get().second_factor
    employee.groups.add(Group.objects.get_or_create(name="RA officers")[0])
    old = token_of(minted)

    refused = old.get(PENDING)

    assert refused.status_code == 401
    assert not ApiToken.objects.exists()
    # The same token minted with the second factor may.
    _device, seed = authenticator(employee)
    again = token_client(None).post(TOKEN, **basic("alice", HTTP_X_OTP_CODE=code(seed)))
    assert ApiToken.objects.get(auth_token__token_key=again.json()["prefix"]).second_factor
    assert token_of(again).get(PENDING).status_code == 200


def test_tokens_from_before_the_second_factor_count_as_minted_without_it(officer, employee):
    """A token from before the migration (knox's row alone) and an employee's."""
    old, clear = AuthToken.objects.create(user=officer)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {clear}")

    assert ApiToken.objects.get(auth_token=old).second_factor is False
    assert client.get(PENDING).status_code == 403
    assert client.get(CERTIFICATES).status_code == 403  # an officer's view of the list
    # An employee's password-only token does what employees do.
    assert (
        token_of(token_client(None).post(TOKEN, **basic("alice"))).get(CERTIFICATES).status_code
        == 200
    )


def test_a_verified_session_mints_a_token_with_the_second_factor(officer, employee):
    session_client(officer).post(TOKEN)
    session_client(employee).post(TOKEN)

    assert dict(ApiToken.objects.values_list("auth_token__user__username", "second_factor")) == {
        "olivia": True,
        "alice": False,
    }


def test_the_verified_moment_counts_as_the_recent_sign_in(officer, settings):
    """A token from a session asks for a recent sign-in: with a second factor, that is the
    moment the code was confirmed, not the password's."""
    _device, seed = authenticator(officer)
    client = Client()
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        sign_in(client, "olivia")
    later = start + timedelta(minutes=settings.PKIPORTAL_TOKEN_SIGN_IN_MINUTES - 1)
    with time_machine.travel(later, tick=False):
        client.post(PAGES["verify"], {"code": code(seed, at=later.timestamp())})
    with time_machine.travel(later + timedelta(minutes=5), tick=False):
        page = client.post("/account/tokens/new/", {"label": "ci", "lifetime_days": 7})

    assert page.status_code == 200
    assert AuthToken.objects.filter(user=officer).count() == 1


# --- the administrator's reset ---------------------------------------------------------------


def reset_url(user) -> str:
    return f"/admin/accounts/user/{user.pk}/two-factor/reset/"


def test_an_administrator_resets_someone_elses_second_factor(admin_client_, admin_user, officer):
    authenticator(officer)
    verified_login(Client(), officer)  # backup codes too
    mfa._replace_backup_codes(officer)

    change = admin_client_.get(f"/admin/accounts/user/{officer.pk}/change/").content.decode()
    assert reset_url(officer) in change
    assert "Yes, reset it" in admin_client_.get(reset_url(officer)).content.decode()
    done = admin_client_.post(reset_url(officer))

    assert done.status_code == 302
    assert not TotpDevice.objects.filter(user=officer).exists()
    assert not BackupCodeDevice.objects.filter(user=officer).exists()
    (event,) = events("mfa.reset")
    assert (event.actor_id, event.object_id, event.detail) == (
        admin_user.pk,
        str(officer.pk),
        {"removed": True, "via": "admin", "sessions_ended": 1},
    )
    # Next sign-in (as the account is now: the reset raised its session generation): set
    # up a new one.
    officer.refresh_from_db()
    assert signed_in_only(officer).get("/")["Location"].startswith(PAGES["setup"])


def sessions_of(user) -> int:
    from accounts.sessions import session_keys_of

    return len(session_keys_of(user))


def signed_out(client: Client) -> bool:
    """The client's next page asks it to sign in: its session is gone."""
    response = client.get("/certificates/")
    return response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_a_reset_ends_every_session_of_the_person(admin_client_, admin_user, officer, employee):
    authenticator(officer)
    phone, laptop = verified_login(Client(), officer), verified_login(Client(), officer)
    bystander = verified_login(Client(), employee)
    assert sessions_of(officer) == 2

    assert admin_client_.post(reset_url(officer)).status_code == 302

    assert sessions_of(officer) == 0
    assert signed_out(phone)
    assert signed_out(laptop)
    # Nobody else is signed out: the administrator, another person.
    assert not signed_out(bystander)
    assert admin_client_.get(f"/admin/accounts/user/{officer.pk}/change/").status_code == 200
    (event,) = events("mfa.reset")
    assert event.detail["sessions_ended"] == 2


def test_a_reset_signs_out_a_person_whose_role_needs_no_second_factor(admin_client_, employee):
    # Without the reset ending it, this session would go on as before: an employee is
    # asked for a code only while they have an app, and the reset just removed it.
    authenticator(employee)
    stolen = verified_login(Client(), employee)

    admin_client_.post(reset_url(employee))

    assert signed_out(stolen)


def test_a_reset_with_nothing_to_remove_still_ends_the_sessions(admin_client_, employee):
    client = verified_login(Client(), employee)

    admin_client_.post(reset_url(employee))

    assert signed_out(client)


def test_removing_ones_own_second_factor_ends_ones_other_sessions(employee, colleague):
    _device, seed = authenticator(employee)
    here, elsewhere = verified_login(Client(), employee), verified_login(Client(), employee)
    other_person = verified_login(Client(), colleague)

    assert here.post(POSTS[1], {"confirm": "on", "current_code": code(seed)}).status_code == 302

    assert signed_out(elsewhere)
    assert not signed_out(here)
    assert not signed_out(other_person)
    assert sessions_of(employee) == 1
    assert events("mfa.device_remove")[0].detail["sessions_ended"] == 1


def test_nobody_resets_their_own(admin_client_, admin_user):
    assert admin_client_.post(reset_url(admin_user)).status_code == 403
    assert TotpDevice.objects.filter(user=admin_user).exists()
    assert not events("mfa.reset")


def test_staff_without_the_permission_or_below_a_superuser_may_not(admin_user, officer, employee):
    """Staff who may change accounts reset an employee's, never a privileged account's
    (accounts.privilege): with its password they would be that officer or superuser."""
    from django.contrib.auth.models import Permission

    authenticator(officer)
    authenticator(employee)
    staff = UserFactory(username="stan", is_staff=True)
    client = verified_login(Client(), staff)
    assert client.post(reset_url(employee)).status_code == 403

    staff.user_permissions.add(Permission.objects.get(codename="change_user"))
    staff.refresh_from_db()  # gaining the permission ended the session: sign in again
    client = verified_login(Client(), staff)
    authenticator(admin_user)
    assert client.post(reset_url(admin_user)).status_code == 403
    assert client.post(reset_url(officer)).status_code == 403
    assert client.post(reset_url(employee)).status_code == 302
    assert TotpDevice.objects.filter(user=admin_user).exists()
    assert TotpDevice.objects.filter(user=officer).exists()
    assert not TotpDevice.objects.filter(user=employee).exists()
    assert verified_login(Client(), admin_user).post(reset_url(officer)).status_code == 302
    assert not TotpDevice.objects.filter(user=officer).exists()


@pytest.mark.parametrize("who", ["anonymous", "employee", "officer"])
def test_non_staff_never_reach_the_reset(who, employee, officer, admin_user):
    authenticator(admin_user)
    client = {
        "anonymous": Client(),
        "employee": verified_login(Client(), employee),
        "officer": verified_login(Client(), officer),
    }[who]

    response = client.post(reset_url(admin_user))

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert TotpDevice.objects.filter(user=admin_user).exists()


def test_an_unverified_administrator_cannot_use_the_admin(admin_user, officer):
    authenticator(officer)
    authenticator(admin_user)

    response = signed_in_only(admin_user).post(reset_url(officer))

    assert response.status_code == 302
    assert response["Location"] == PAGES["verify"]
    assert TotpDevice.objects.filter(user=officer).exists()


def test_the_deploy_check_warns_while_seeds_hang_on_secret_key(settings):
    from enrollment.checks import second_factor_key_is_its_own

    settings.PKIPORTAL_MFA_KEYS = []
    assert [w.id for w in second_factor_key_is_its_own()] == ["pkiportal.W006"]
    settings.PKIPORTAL_MFA_KEYS = ["k" * 32]
    assert second_factor_key_is_its_own() == []


def test_mfa_reseal_moves_seeds_to_a_new_key_and_names_the_unopenable(officer, settings):
    from io import StringIO

    from django.core.management import CommandError, call_command

    _device, seed = authenticator(officer)
    settings.PKIPORTAL_MFA_KEYS = ["new key " * 5]
    out = StringIO()
    call_command("mfa_reseal", stdout=out)
    assert "Resealed 1" in out.getvalue()

    settings.SECRET_KEY = "another secret key, the old one is gone " * 2
    assert mfa.unseal(bytes(TotpDevice.objects.get().sealed_key)) == seed
    settings.PKIPORTAL_MFA_KEYS = ["yet another key " * 3]
    with pytest.raises(CommandError, match="could not be opened"):
        call_command("mfa_reseal", stdout=out)


def test_before_the_second_step_the_navigation_offers_only_signing_out(officer):
    """Every other page sends back to the second step: offering the RA console there only
    loops (and tells an onlooker which roles the account holds)."""
    _device, seed = authenticator(officer)
    client = signed_in_only(officer)

    waiting = client.get(PAGES["verify"]).content.decode()
    nav = waiting.split("<nav>", 1)[1].split("</nav>", 1)[0]
    assert "Sign out olivia" in nav
    assert "RA console" not in nav
    assert "My certificates" not in nav
    assert "Directory" not in nav

    client.post(PAGES["verify"], {"code": code(seed)})
    nav = client.get("/").content.decode().split("<nav>", 1)[1].split("</nav>", 1)[0]
    assert "RA console" in nav
    assert "My certificates" in nav


def test_the_account_page_shows_what_certificates_carry_and_the_roles(employee, officer):
    employee.display_name = "Alice Andersson"
    employee.organizational_unit = "Finance"
    employee.save()

    page = verified_login(Client(), employee).get("/account/").content.decode()
    you = page.split('id="you"', 1)[1].split("</section>", 1)[0]

    assert "Alice Andersson" in you
    assert employee.email in you
    assert "Finance" in you
    assert "Employee" in you
    assert "RA officer" not in you

    officers = verified_login(Client(), officer).get("/account/").content.decode()
    assert "RA officer" in officers.split('id="you"', 1)[1].split("</section>", 1)[0]
