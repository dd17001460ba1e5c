"""Backup codes whatever the second factor: made with a first security key and shown once,
made again from /account/ by whoever has an app or a key (recent sign-in, proof of the
present factor), a way in for someone whose only key is lost (throttled as any code), and
gone with the last real factor: backup codes alone are never a second factor."""

from __future__ import annotations

import json
import re
from base64 import b64encode
from datetime import timedelta
from importlib import import_module

import pytest
import time_machine

from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import mfa, passkeys
from accounts.models import LOCKOUT_FAILURES, BackupCodeDevice, TotpDevice, WebAuthnDevice
from tests.enrollment.tools import error_report
from tests.markers import needs_row_locks
from tests.second_factor import authenticator, code, seed_of, verified_login
from tests.test_passkeys import (
    PASSWORD,
    REGISTER,
    REGISTER_OPTIONS,
    add_key,
    browser,
    events,
    key_for,
    password_only,
    post_json,
    sign_in_confirm,
    sign_in_with_key,
    without_backup_codes,
)
from tests.webauthn_authenticator import ORIGIN, RP_ID, SoftKey

pytestmark = pytest.mark.django_db

CODES = "/account/two-factor/backup-codes/"
VERIFY = "/account/two-factor/verify/"
CODE_SHAPE = re.compile(r"^[a-z2-9]{4}(?:-[a-z2-9]{4}){3}$")


@pytest.fixture(autouse=True)
def _relying_party(settings):
    settings.PKIPORTAL_WEBAUTHN_RP_ID = RP_ID
    settings.PKIPORTAL_WEBAUTHN_ORIGINS = [ORIGIN]


def key_with_codes(user) -> tuple[SoftKey, list[str]]:
    """A first key registered through the service, with the backup codes it came with."""
    key = SoftKey()
    session = import_module(django_settings.SESSION_ENGINE).SessionStore()
    options = passkeys.registration_options(session=session, user=user, name="Key")
    registered = passkeys.register(
        session=session, user=user, credential=key.create(json.loads(options)), source_address=None
    )
    mfa.forget_state(user)
    return key, registered.backup_codes


def codes_on(page: bytes) -> list[str]:
    return re.findall(r"<code>([a-z2-9]{4}(?:-[a-z2-9]{4}){3})</code>", page.decode())


def signed_in_with_key(user, key: SoftKey) -> Client:
    """A password sign-in, then the key: verified, and signed in recently."""
    client = password_only(user)
    assert sign_in_with_key(client, key).status_code == 200
    return client


def refused_back_to_the_account_page(answer) -> None:
    assert answer.status_code == 302
    assert answer["Location"] == "/account/"


# --- a first key comes with backup codes -------------------------------------------------


def test_a_first_key_comes_with_backup_codes_shown_once_and_stored_hashed(
    employee, mailoutbox, django_capture_on_commit_callbacks
):
    client = verified_login(browser(), employee)

    with django_capture_on_commit_callbacks(execute=True):
        added = add_key(client, SoftKey())

    assert added.status_code == 200
    assert "no-store" in added["Cache-Control"]
    codes = added.json()["backup_codes"]
    assert len(codes) == mfa.BACKUP_CODES == len(set(codes))
    assert all(CODE_SHAPE.match(one) for one in codes)
    stored = BackupCodeDevice.objects.get(user=employee)
    as_text = json.dumps(stored.digests)
    assert not any(one in as_text or one.replace("-", "") in as_text for one in codes)
    assert events("mfa.device_add")[-1].detail["backup_codes"] == mfa.BACKUP_CODES
    assert [m.subject for m in mailoutbox] == [
        "A security key and backup codes were added to your account"
    ]
    assert "backup codes were made" in mailoutbox[0].body
    # Shown once: the account page says how many, never which.
    page = client.get("/account/")
    assert f"Backup codes left: <strong>{mfa.BACKUP_CODES}</strong>" in page.content.decode()
    assert not any(one in page.content.decode() for one in codes)


def test_the_page_that_adds_a_key_has_the_place_the_script_shows_them(employee):
    page = verified_login(browser(), employee).get("/account/two-factor/security-keys/add/")
    assert page.status_code == 200
    assert b"data-passkey-codes hidden" in page.content
    assert b"shown only this once" in page.content
    assert b"js/passkey.js" in page.content
    assert re.search(rb"<script(?![^>]*\bsrc=)", page.content) is None  # no inline script


def test_an_officers_first_key_at_the_first_sign_in_comes_with_codes_that_work(officer):
    client = password_only(officer)
    added = add_key(client, SoftKey())
    assert added.status_code == 200
    codes = added.json()["backup_codes"]

    later = password_only(officer)
    used = later.post(VERIFY, {"code": codes[0], "next": "/ra/requests/"})

    assert used["Location"] == "/ra/requests/"
    assert later.get("/ra/requests/").status_code == 200


def test_a_second_key_makes_no_new_codes(employee):
    key, _codes = key_with_codes(employee)
    digests = BackupCodeDevice.objects.get(user=employee).digests
    client = signed_in_with_key(employee, key)
    assert sign_in_confirm(client, key).status_code == 200

    added = add_key(client, SoftKey(), name="Spare")

    assert added.status_code == 200
    assert "backup_codes" not in added.json()
    assert BackupCodeDevice.objects.get(user=employee).digests == digests
    assert events("mfa.device_add")[-1].detail["backup_codes"] == 0


def test_a_key_added_by_someone_with_keys_but_no_codes_brings_them(employee):
    """Keys registered before keys came with codes: the next key makes them."""
    key = key_for(employee)
    without_backup_codes(employee)
    client = signed_in_with_key(employee, key)
    assert sign_in_confirm(client, key).status_code == 200

    added = add_key(client, SoftKey(), name="Spare")

    assert len(added.json()["backup_codes"]) == mfa.BACKUP_CODES
    assert len(BackupCodeDevice.objects.get(user=employee).digests) == mfa.BACKUP_CODES


def test_codes_left_without_any_factor_are_replaced_by_a_first_key_not_revived(employee):
    """A key deleted in the shell (not through remove(), which drops the codes with the
    last factor) leaves codes behind; a first key then makes new ones, shown, and the old
    ones no longer sign in: nobody knows who holds them."""
    _key, old = key_with_codes(employee)
    WebAuthnDevice.objects.filter(user=employee).delete()
    mfa.forget_state(employee)
    client = verified_login(browser(), employee)

    added = add_key(client, SoftKey())

    assert added.status_code == 200
    new = added.json()["backup_codes"]
    assert len(new) == mfa.BACKUP_CODES
    assert not set(new) & set(old)
    assert password_only(employee).post(VERIFY, {"code": old[0]}).status_code == 400
    assert events("mfa.device_add")[-1].detail["backup_codes"] == mfa.BACKUP_CODES


def test_a_first_key_replaces_the_codes_an_app_left_behind(employee):
    """The same for codes an app left (its row deleted without remove())."""
    device, _seed = authenticator(employee)
    stranded = mfa._replace_backup_codes(employee)
    device.delete()

    _key, new = key_with_codes(employee)

    assert len(new) == mfa.BACKUP_CODES
    digests = BackupCodeDevice.objects.get(user=employee).digests
    assert mfa.backup_code_match(stranded[0], digests) is None
    assert mfa.backup_code_match(new[0], digests) is not None


def test_a_key_added_by_someone_whose_codes_are_all_used_brings_new_ones(employee):
    key, _codes = key_with_codes(employee)
    BackupCodeDevice.objects.filter(user=employee).update(digests=[])
    client = signed_in_with_key(employee, key)
    assert sign_in_confirm(client, key).status_code == 200

    added = add_key(client, SoftKey(), name="Spare")

    assert len(added.json()["backup_codes"]) == mfa.BACKUP_CODES
    assert len(BackupCodeDevice.objects.get(user=employee).digests) == mfa.BACKUP_CODES


# --- making new ones on /account/ ----------------------------------------------------------


def test_anonymous_makes_no_backup_codes():
    answer = browser().post(CODES, {"current_code": "x"})
    assert answer.status_code == 302
    assert answer["Location"].startswith("/accounts/login/")
    assert not BackupCodeDevice.objects.exists()


def test_an_employee_without_a_second_factor_gets_no_backup_codes(employee):
    client = verified_login(browser(), employee)
    page = client.get("/account/").content.decode()
    assert 'id="backup-codes"' not in page

    refused = client.post(CODES, {"current_code": "abcd-efgh-jkmn-pqrs"})

    refused_back_to_the_account_page(refused)
    assert not BackupCodeDevice.objects.exists()
    assert events("mfa.backup_codes_regenerate") == []
    assert events("mfa.verify") == []  # refused before any code was checked


def test_a_session_that_has_not_done_its_second_step_makes_none(officer):
    _key, codes = key_with_codes(officer)
    digests = BackupCodeDevice.objects.get(user=officer).digests
    answer = password_only(officer).post(CODES, {"current_code": codes[0]})
    assert answer["Location"].startswith("/account/two-factor/verify/")
    assert BackupCodeDevice.objects.get(user=officer).digests == digests


def test_making_them_takes_a_recent_sign_in(officer):
    key, codes = key_with_codes(officer)
    client = signed_in_with_key(officer, key)
    digests = BackupCodeDevice.objects.get(user=officer).digests
    with time_machine.travel(timezone.now() + timedelta(hours=3), tick=False):
        stale = client.post(CODES, {"current_code": codes[0]})
    assert stale["Location"].startswith("/accounts/login/")
    assert BackupCodeDevice.objects.get(user=officer).digests == digests


def test_making_them_takes_the_csrf_token_and_a_post(officer):
    _key, codes = key_with_codes(officer)
    verified = verified_login(browser(enforce_csrf_checks=True), officer)
    digests = BackupCodeDevice.objects.get(user=officer).digests

    assert verified.post(CODES, {"current_code": codes[0]}).status_code == 403
    assert verified.get(CODES).status_code == 405
    assert BackupCodeDevice.objects.get(user=officer).digests == digests


def test_an_officer_with_only_a_key_makes_new_codes_with_a_backup_code(
    officer, mailoutbox, django_capture_on_commit_callbacks
):
    key, old = key_with_codes(officer)
    client = signed_in_with_key(officer, key)
    page = client.get("/account/").content.decode()
    assert "Make new backup codes" in page
    assert 'name="current_code"' in page

    with django_capture_on_commit_callbacks(execute=True):
        made = client.post(CODES, {"current_code": old[0]})

    assert made.status_code == 200
    assert "no-store" in made["Cache-Control"]
    new = codes_on(made.content)
    assert len(new) == mfa.BACKUP_CODES
    assert not set(new) & set(old)
    assert events("mfa.backup_codes_regenerate")[-1].detail == {"backup_codes": 10}
    assert [e.detail["via"] for e in events("mfa.backup_code_use")] == ["backup_codes"]
    assert [m.subject for m in mailoutbox] == ["New backup codes were made for your account"]
    # The old codes, used or not, no longer sign in; a new one does, once.
    assert password_only(officer).post(VERIFY, {"code": old[5]}).status_code == 400
    with time_machine.travel(timezone.now() + timedelta(seconds=5)):  # past the wait
        assert password_only(officer).post(VERIFY, {"code": new[0]})["Location"] == "/"
    # Shown once: not on the account page, nor anywhere after.
    assert not any(one in client.get("/account/").content.decode() for one in new)


def test_someone_with_keys_and_no_codes_makes_them_after_confirming_a_key(employee):
    key = key_for(employee)
    without_backup_codes(employee)
    client = signed_in_with_key(employee, key)
    page = client.get("/account/").content.decode()
    assert "You have no backup codes" in page
    assert "Confirm with one of your security keys first" in page

    unconfirmed = client.post(CODES)
    refused_back_to_the_account_page(unconfirmed)
    assert not BackupCodeDevice.objects.exists()

    assert sign_in_confirm(client, key).status_code == 200
    made = client.post(CODES)

    assert made.status_code == 200
    assert len(codes_on(made.content)) == mfa.BACKUP_CODES
    assert not passkeys.has_confirmed(client.session)  # the confirmation was used
    again = client.post(CODES)
    refused_back_to_the_account_page(again)


def test_a_wrong_code_makes_none_and_is_throttled_and_audited(officer):
    key, _codes = key_with_codes(officer)
    client = signed_in_with_key(officer, key)
    digests = BackupCodeDevice.objects.get(user=officer).digests

    wrong = client.post(CODES, {"current_code": "2222-3333-4444-5555"})
    throttled = client.post(CODES, {"current_code": "2222-3333-4444-5555"})

    refused_back_to_the_account_page(wrong)
    refused_back_to_the_account_page(throttled)
    assert int(throttled["Retry-After"]) >= 1
    assert BackupCodeDevice.objects.get(user=officer).digests == digests
    assert [(e.detail["kind"], e.detail["via"]) for e in events("mfa.verify")] == [
        ("backup_code", "backup_codes")
    ]


def test_one_persons_new_codes_leave_anothers_alone(officer, colleague):
    _key, officer_codes = key_with_codes(officer)
    colleague_key, _codes = key_with_codes(colleague)
    client = signed_in_with_key(colleague, colleague_key)
    # The officer's backup code is no proof for the colleague's account.
    refused = client.post(CODES, {"current_code": officer_codes[0]})
    refused_back_to_the_account_page(refused)
    assert sign_in_confirm(client, colleague_key).status_code == 200
    made = client.post(CODES)
    assert len(codes_on(made.content)) == mfa.BACKUP_CODES
    assert not set(codes_on(made.content)) & set(officer_codes)
    assert len(BackupCodeDevice.objects.get(user=officer).digests) == mfa.BACKUP_CODES
    assert password_only(officer).post(VERIFY, {"code": officer_codes[0]}).status_code == 302


def test_someone_with_an_app_still_makes_them_with_an_app_code(employee):
    _device, seed = authenticator(employee)
    client = verified_login(browser(), employee)
    made = client.post(CODES, {"current_code": code(seed)})
    assert made.status_code == 200
    assert len(codes_on(made.content)) == mfa.BACKUP_CODES


def test_someone_who_lost_their_only_key_sets_up_an_app_with_a_backup_code(
    officer, mailoutbox, django_capture_on_commit_callbacks
):
    _key, codes = key_with_codes(officer)
    client = password_only(officer)
    assert client.post(VERIFY, {"code": codes[0]}).status_code == 302  # the key is lost
    page = client.get("/account/two-factor/setup/")
    assert page.status_code == 200
    assert b'name="current_code"' in page.content
    seed = seed_of(TotpDevice.objects.get(user=officer, confirmed=False))
    now = timezone.now()

    with time_machine.travel(now, tick=False):
        # A wrong code of the new app spends no backup code; no backup code, no app.
        wrong_app = client.post(
            "/account/two-factor/setup/", {"code": "000000", "current_code": codes[1]}
        )
        missing = client.post("/account/two-factor/setup/", {"code": code(seed)})
    assert wrong_app.status_code == 400
    assert missing.status_code == 400
    assert len(mfa.backup_codes(officer).digests) == mfa.BACKUP_CODES - 1
    assert mfa.confirmed_totp(officer) is None

    later = now + timedelta(seconds=31)
    with (
        time_machine.travel(later, tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        done = client.post(
            "/account/two-factor/setup/",
            {"code": code(seed, at=later.timestamp()), "current_code": codes[1]},
        )

    assert done.status_code == 200
    assert mfa.confirmed_totp(officer) is not None
    new = codes_on(done.content)
    assert len(new) == mfa.BACKUP_CODES
    assert not set(new) & set(codes)
    assert [e.detail["via"] for e in events("mfa.backup_code_use")] == ["web", "replace"]
    assert [m.subject for m in mailoutbox] == ["An authenticator app was set up for your account"]


# --- a backup code spent to add a key ----------------------------------------------------------


def test_a_cancelled_key_ceremony_does_not_burn_the_backup_code_that_proved_it(officer):
    """The code proves the present factor before the browser asks for the key; if the
    person cancels that dialogue (or touches the wrong key) the retry, within the five
    minutes, needs no new code. The key's registration uses the proof up."""
    key, codes = key_with_codes(officer)
    client = signed_in_with_key(officer, key)
    now = timezone.now()

    with time_machine.travel(now, tick=False):
        first = post_json(client, REGISTER_OPTIONS, {"name": "Spare", "current_code": codes[0]})
        # The browser's dialogue is cancelled: the challenge goes unanswered. Again:
        retry = post_json(client, REGISTER_OPTIONS, {"name": "Spare"})
        page = client.get("/account/two-factor/security-keys/add/").content
        added = post_json(client, REGISTER, {"credential": SoftKey().create(retry.json())})
        after = post_json(client, REGISTER_OPTIONS, {"name": "Third"})

    assert first.status_code == 200
    assert retry.status_code == 200, retry.content
    assert b'name="current_code"' not in page
    assert added.status_code == 200
    assert WebAuthnDevice.objects.filter(user=officer).count() == 2
    assert len(mfa.backup_codes(officer).digests) == mfa.BACKUP_CODES - 1  # one spent
    assert after.status_code == 400  # one key per proof
    assert "Enter a code of your current second factor" in after.json()["detail"]


def test_the_proof_for_adding_a_key_lasts_five_minutes_and_only_for_that(officer):
    key, codes = key_with_codes(officer)
    client = signed_in_with_key(officer, key)
    device = WebAuthnDevice.objects.get(user=officer)
    now = timezone.now()
    with time_machine.travel(now, tick=False):
        assert post_json(client, REGISTER_OPTIONS, {"name": "Spare", "current_code": codes[0]})
        # Not a confirmation of the key for other changes: removing one still asks.
        removal = client.post(f"/account/two-factor/security-keys/{device.pk}/remove/")
    refused_back_to_the_account_page(removal)
    assert WebAuthnDevice.objects.filter(pk=device.pk).exists()
    later = now + timedelta(seconds=passkeys.CONFIRMED_SECONDS + 1)
    with time_machine.travel(later, tick=False):
        expired = post_json(client, REGISTER_OPTIONS, {"name": "Spare"})
    assert expired.status_code == 400
    assert "Enter a code of your current second factor" in expired.json()["detail"]


# --- a set with every code used is no set -------------------------------------------------------


def test_someone_with_only_keys_and_every_code_used_is_asked_for_no_code(employee):
    key, _codes = key_with_codes(employee)
    BackupCodeDevice.objects.filter(user=employee).update(digests=[])
    client = signed_in_with_key(employee, key)

    overview = client.get("/account/").content.decode()
    add_page = client.get("/account/two-factor/security-keys/add/").content.decode()
    app_setup = client.get("/account/two-factor/setup/")

    assert 'name="current_code"' not in overview
    assert "You have no backup codes" in overview
    assert "Confirm with one of your security keys first" in overview
    assert 'name="current_code"' not in add_page
    refused_back_to_the_account_page(app_setup)
    assert not TotpDevice.objects.filter(user=employee).exists()
    # Confirming a key is the way: then the app's set-up page opens.
    assert sign_in_confirm(client, key).status_code == 200
    assert client.get("/account/two-factor/setup/").status_code == 200


# --- signing in with a backup code, for someone with only keys --------------------------------


def test_someone_with_only_a_key_signs_in_with_a_backup_code(officer):
    _key, codes = key_with_codes(officer)
    client = password_only(officer)

    page = client.get(f"{VERIFY}?next=/ra/requests/")
    used = client.post(VERIFY, {"code": codes[2].upper(), "next": "/ra/requests/"})

    assert b"Use my security key" in page.content
    assert b'name="code"' in page.content
    assert b"Enter one of your backup codes" in page.content
    assert b"authenticator app on your phone" not in page.content
    assert used["Location"] == "/ra/requests/"
    assert client.get("/ra/requests/").status_code == 200
    assert events("mfa.backup_code_use")[-1].detail == {"left": 9, "via": "web"}
    again = password_only(officer).post(VERIFY, {"code": codes[2]})
    assert again.status_code == 400


def test_backup_codes_of_someone_with_only_a_key_are_throttled_and_lock_out_once(
    officer, mailoutbox, django_capture_on_commit_callbacks
):
    _key, codes = key_with_codes(officer)
    device = BackupCodeDevice.objects.get(user=officer)
    client = password_only(officer)
    now = timezone.now()

    with time_machine.travel(now, tick=False):
        # Six digits are no app's code here: a guess at a backup code, counted as one.
        wrong = client.post(VERIFY, {"code": "123456"})
        right_but_waiting = client.post(VERIFY, {"code": codes[0]})
    device.refresh_from_db()
    assert wrong.status_code == 400
    assert right_but_waiting.status_code == 200  # the form again, saying how long to wait
    assert "Wait 1 second and try again" in right_but_waiting.content.decode()
    assert device.throttling_failure_count == 1
    assert [(e.detail["kind"], e.detail["failures"]) for e in events("mfa.verify")] == [
        ("backup_code", 1)
    ]

    BackupCodeDevice.objects.filter(pk=device.pk).update(
        throttling_failure_count=LOCKOUT_FAILURES - 1
    )
    with (
        time_machine.travel(now + timedelta(days=1), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        client = password_only(officer)
        assert client.post(VERIFY, {"code": "2222-3333-4444-5555"}).status_code == 400
        assert client.get("/ra/requests/").status_code == 302
    (lockout,) = events("mfa.lockout")
    assert lockout.detail["kind"] == "backup_code"
    assert lockout.detail["failures"] == LOCKOUT_FAILURES
    assert [m.subject for m in mailoutbox] == [
        "Many wrong second-factor codes were entered for your account"
    ]


def test_with_every_code_used_the_code_form_goes(officer):
    key_with_codes(officer)
    BackupCodeDevice.objects.filter(user=officer).update(digests=[])
    client = password_only(officer)
    assert b'name="code"' not in client.get(VERIFY).content
    assert client.post(VERIFY, {"code": "2222-3333-4444-5555"}).status_code == 400
    assert events("mfa.verify") == []


def test_http_basic_still_sends_someone_with_only_keys_to_the_browser(officer):
    _key, codes = key_with_codes(officer)
    answer = APIClient().post(
        "/api/v1/auth/token/",
        {"label": "script"},
        format="json",
        HTTP_AUTHORIZATION=f"Basic {b64encode(f'{officer.username}:{PASSWORD}'.encode()).decode()}",
        HTTP_X_OTP_CODE=codes[0],
    )
    assert answer.status_code == 403
    assert answer.json()["missing"] == "second_factor_session"
    assert len(BackupCodeDevice.objects.get(user=officer).digests) == mfa.BACKUP_CODES


# --- the last real factor takes the codes with it ----------------------------------------------


def test_removing_the_last_key_drops_the_backup_codes(
    employee, mailoutbox, django_capture_on_commit_callbacks
):
    key, codes = key_with_codes(employee)
    client = signed_in_with_key(employee, key)
    assert sign_in_confirm(client, key).status_code == 200
    device = WebAuthnDevice.objects.get(user=employee)

    with django_capture_on_commit_callbacks(execute=True):
        removed = client.post(f"/account/two-factor/security-keys/{device.pk}/remove/")

    refused_back_to_the_account_page(removed)
    assert not WebAuthnDevice.objects.filter(user=employee).exists()
    assert mfa.backup_codes(employee) is None
    assert events("mfa.device_remove")[-1].detail["backup_codes"] is True
    assert [m.subject for m in mailoutbox] == ["Your second factor was removed"]
    assert "backup codes" in mailoutbox[0].body
    page = client.get("/account/").content.decode()
    assert "your backup codes no longer work" in page
    assert 'id="backup-codes"' not in page
    # Signing in takes the password only; a kept code is nothing now. (A new sign-in: the
    # removal raised the session generation, which the fixture's copy does not know.)
    employee.refresh_from_db()
    later = password_only(employee)
    assert later.get("/certificates/").status_code == 200
    check, _device = mfa.check_code(user=employee, code=codes[0], source_address=None, via="t")
    assert not check.ok


def test_removing_one_of_two_keys_keeps_the_codes(employee):
    key, _codes = key_with_codes(employee)
    key_for(employee)
    client = signed_in_with_key(employee, key)
    assert sign_in_confirm(client, key).status_code == 200
    device = WebAuthnDevice.objects.filter(user=employee).order_by("pk").first()

    client.post(f"/account/two-factor/security-keys/{device.pk}/remove/")

    assert WebAuthnDevice.objects.filter(user=employee).count() == 1
    assert len(mfa.backup_codes(employee).digests) == mfa.BACKUP_CODES
    assert events("mfa.device_remove")[-1].detail["backup_codes"] is False


def test_an_officer_cannot_keep_backup_codes_alone(officer):
    """Their only key stays, backup codes or not; codes alone never satisfy the policy."""
    key, codes = key_with_codes(officer)
    client = signed_in_with_key(officer, key)
    device = WebAuthnDevice.objects.get(user=officer)

    refused = client.post(
        f"/account/two-factor/security-keys/{device.pk}/remove/", {"current_code": codes[0]}
    )

    refused_back_to_the_account_page(refused)
    assert WebAuthnDevice.objects.filter(pk=device.pk).exists()
    assert len(mfa.backup_codes(officer).digests) == mfa.BACKUP_CODES  # no code spent
    # Codes left behind some other way (an administrator deleting the key in the shell)
    # count for nothing: the officer is sent to set up a real factor.
    WebAuthnDevice.objects.filter(user=officer).delete()
    mfa.forget_state(officer)
    state = mfa.state_for(officer)
    assert state.required
    assert not state.enrolled
    stranded = password_only(officer)
    assert stranded.get("/ra/requests/")["Location"].startswith("/account/two-factor/setup/")
    assert stranded.post(VERIFY, {"code": codes[1]})["Location"].startswith(
        "/account/two-factor/setup/"
    )


def test_removing_the_app_of_someone_without_keys_drops_the_codes(employee):
    _device, seed = authenticator(employee)
    mfa._replace_backup_codes(employee)
    client = verified_login(browser(), employee)
    removed = client.post(
        "/account/two-factor/remove/", {"current_code": code(seed), "confirm": "on"}
    )
    refused_back_to_the_account_page(removed)
    assert mfa.backup_codes(employee) is None
    assert events("mfa.device_remove")[-1].detail["backup_codes"] is True


# --- a first app and a first key at the same moment ---------------------------------------------


@needs_row_locks
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_first_key_added_while_a_first_app_is_confirmed_makes_no_second_set(
    employee, monkeypatch
):
    """PostgreSQL, two connections: the app's confirmation holds the person's row (as a
    key's registration does) until it commits, so the key added meanwhile waits, then sees
    the app and keeps its codes: one set made, one shown, and it works. Before, both made
    and showed a set, and only the one committed last worked."""
    import secrets
    import threading
    import time

    from django.db import connections

    seed = secrets.token_bytes(mfa.SEED_BYTES)
    pending = TotpDevice.objects.create(
        user=employee, name="Authenticator app", confirmed=False, sealed_key=mfa.seal(seed)
    )
    real_tell = mfa._tell
    inside = threading.Event()
    outcome: dict[str, mfa.Confirmation] = {}

    def slow_tell(user, change, source_address):  # inside totp_confirm's transaction
        if threading.current_thread().name == "app":
            inside.set()
            time.sleep(1.0)  # the key's registration reaches its lock meanwhile
        real_tell(user, change, source_address)

    monkeypatch.setattr(mfa, "_tell", slow_tell)

    def confirm_app() -> None:
        try:
            outcome["app"] = mfa.totp_confirm(
                user=employee, device=pending, code=code(seed), source_address=None
            )
        finally:
            connections.close_all()

    app = threading.Thread(target=confirm_app, name="app")
    app.start()
    assert inside.wait(timeout=10)
    _key, key_codes = key_with_codes(employee)
    app.join(timeout=10)

    app_codes = outcome["app"].codes
    assert app_codes is not None
    assert len(app_codes) == mfa.BACKUP_CODES
    assert key_codes == []  # the app's set stands; none made (or shown) with the key
    digests = BackupCodeDevice.objects.get(user=employee).digests
    assert all(mfa.backup_code_match(one, digests) for one in app_codes)


# --- typed codes stay out of error reports ------------------------------------------------------


def _hashing_fails(salt: str, code: str) -> str:
    raise RuntimeError("the code could not be hashed")


def test_an_error_report_hides_a_backup_code_sent_in_json_to_add_a_key(officer, monkeypatch):
    """passkey_register_options reads the code from a JSON body, which
    sensitive_post_parameters does not cover; the view, the proof and check_code hold it
    as locals (body, current_code, code, text, digits), verify_token and the hashing too."""
    key, codes = key_with_codes(officer)
    client = signed_in_with_key(officer, key)
    monkeypatch.setattr(mfa, "_digest", _hashing_fails)

    with error_report(RuntimeError) as report:
        post_json(client, REGISTER_OPTIONS, {"name": "Spare", "current_code": codes[3]})

    assert "passkey_register_options" in report.text
    assert "check_code" in report.text
    assert "backup_code_match" in report.text
    assert codes[3] not in report.text
    assert codes[3].replace("-", "") not in report.text


def test_an_error_report_hides_a_backup_code_sent_in_the_otp_header(employee, monkeypatch):
    authenticator(employee)
    codes = mfa._replace_backup_codes(employee)
    monkeypatch.setattr(mfa, "_digest", _hashing_fails)
    credentials = b64encode(f"{employee.username}:{PASSWORD}".encode()).decode()

    with error_report(RuntimeError) as report:
        APIClient().post(
            "/api/v1/auth/token/",
            {"label": "script"},
            format="json",
            HTTP_AUTHORIZATION=f"Basic {credentials}",
            HTTP_X_OTP_CODE=codes[0],
        )

    assert "HTTP_X_OTP_CODE" in report.text
    assert "check_code" in report.text
    assert codes[0] not in report.text
    assert codes[0].replace("-", "") not in report.text


def test_an_error_report_hides_the_new_apps_code_and_the_backup_code_proving_the_key(
    officer, monkeypatch
):
    """The app's set-up form is posted (sensitive_post_parameters); the codes also pass
    through totp_confirm and check_code as locals."""
    key, codes = key_with_codes(officer)
    client = signed_in_with_key(officer, key)
    assert client.get("/account/two-factor/setup/").status_code == 200
    seed = seed_of(TotpDevice.objects.get(user=officer, confirmed=False))
    monkeypatch.setattr(mfa, "_digest", _hashing_fails)
    app_code = code(seed)

    with error_report(RuntimeError) as report:
        client.post("/account/two-factor/setup/", {"code": app_code, "current_code": codes[4]})

    assert "totp_confirm" in report.text
    assert codes[4] not in report.text
    assert codes[4].replace("-", "") not in report.text
    assert f"'{app_code}'" not in report.text


# --- a wrong code is explained in terms of what the person has ---------------------------------

WRONG = "2222-3333-4444-5555"  # the shape of a backup code, none of anyone's


def _app_and_codes(user) -> None:
    authenticator(user)
    mfa._replace_backup_codes(user)


def _app_only(user) -> None:
    authenticator(user)


def _key_and_codes(user) -> None:
    key_with_codes(user)


HAS = {"app and codes": _app_and_codes, "app only": _app_only, "key and codes": _key_and_codes}


@pytest.mark.parametrize(
    ("has", "wanted"),
    [
        ("app and codes", "the code your authenticator app shows now, or an unused backup code"),
        ("app only", "the code your authenticator app shows now"),
        ("key and codes", "an unused backup code"),
    ],
)
def test_a_wrong_code_at_sign_in_says_what_the_person_can_enter(employee, has, wanted):
    HAS[has](employee)

    wrong = password_only(employee).post(VERIFY, {"code": WRONG})

    assert wrong.status_code == 400
    page = wrong.content.decode()
    assert f"That code is not right, or was used already: enter {wanted}." in page


@pytest.mark.parametrize(
    ("has", "message", "label"),
    [
        (
            "app and codes",
            "That is not a current code of your authenticator app, nor an unused backup code.",
            "A code from your current app, or an unused backup code",
        ),
        (
            "app only",
            "That is not a current code of your authenticator app.",
            "A code from your current app<",
        ),
        ("key and codes", "That is not an unused backup code.", "An unused backup code"),
    ],
)
def test_a_wrong_current_code_says_what_the_person_has(employee, has, message, label):
    HAS[has](employee)
    client = verified_login(browser(), employee)

    refused = client.post(CODES, {"current_code": WRONG}, follow=True)

    page = refused.content.decode()
    assert message in page
    assert label in page  # the field asks for what they have too
    if has == "key and codes":
        assert "app" not in page[page.index('id="backup-codes"') :].split("</section>")[0]


def test_a_wrong_backup_code_to_set_up_an_app_says_backup_code_only(employee):
    """Someone with only a key (lost) proves it with a backup code to set up an app."""
    _key, _codes = key_with_codes(employee)
    client = verified_login(browser(), employee)
    page = client.get("/account/two-factor/setup/").content.decode()
    assert "An unused backup code" in page
    seed = seed_of(TotpDevice.objects.get(user=employee, confirmed=False))

    wrong = client.post("/account/two-factor/setup/", {"code": code(seed), "current_code": WRONG})

    assert wrong.status_code == 400
    text = wrong.content.decode()
    assert "That is not an unused backup code. Wait for the new app" in text
    assert "present app" not in text
