"""Security keys only (PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR): whom it covers, that only a
session confirmed with a security key opens their role while the app, a backup code or a
single sign-on open just their account page (to confirm a key there or add one), that API
tokens minted without a key carry no role power, the deploy check, the setting itself, and
what the admin shows of a person's second factors. ``keys_only`` comes from
tests/attestation/conftest.py."""

from __future__ import annotations

import time
from typing import Any

import pytest

from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ImproperlyConfigured

from accounts import mfa
from accounts.models import BackupCodeDevice, TotpDevice, WebAuthnDevice
from tests.attestation.test_api_token_attestation import minted_in_session, minted_with_basic
from tests.attestation.test_passkey_attestation import (
    OTHER_MODEL,
    approved_key,
    register_through_service,
)
from tests.enrollment.api_tools import CERTIFICATES, PENDING, TOKEN
from tests.factories import UserFactory
from tests.second_factor import authenticator, code, seed_of, verified_login
from tests.test_passkeys import (
    add_key,
    browser,
    password_only,
    sign_in_confirm,
    sign_in_with_key,
)
from tests.webauthn_authenticator import (
    MODEL_AAGUID,
    AttestationCA,
    SoftKey,
    aaguid_text,
)

pytestmark = pytest.mark.django_db

VERIFY = "/account/two-factor/verify/"
RA = "/ra/requests/"


def with_app_and_key(user) -> tuple[bytes, SoftKey]:
    """The person has an authenticator app and a security key; returns the app's seed and
    the key."""
    _device, seed = authenticator(user)
    key = SoftKey()
    register_through_service(user, key)
    return seed, key


def signed_in_with_code(user, typed: str, next_url: str = RA) -> tuple[Any, Any]:
    """Password, then the second step with a code (the app's, or a backup code)."""
    client = password_only(user)
    answer = client.post(VERIFY, {"code": typed, "next": next_url})
    assert answer.status_code == 302, answer.content
    return client, answer


def held_to_the_account_page(client) -> None:
    assert client.get(RA)["Location"] == "/account/"
    assert client.get("/certificates/")["Location"] == "/account/"
    assert client.get("/account/tokens/")["Location"] == "/account/"
    assert client.get("/admin/")["Location"] == "/account/"
    api = client.get(CERTIFICATES)
    assert api.status_code == 403
    assert api.json()["missing"] == "security_key"
    assert api.json()["url"] == "/account/"
    page = client.get("/account/")
    assert page.status_code == 200
    assert b'id="security-key-needed"' in page.content


# --- sessions --------------------------------------------------------------------------------


def test_a_covered_officer_who_confirms_with_the_app_reaches_only_the_account_page(
    officer, keys_only
):
    keys_only("roles")
    seed, _key = with_app_and_key(officer)

    client, answer = signed_in_with_code(officer, code(seed))

    assert answer["Location"] == "/account/"
    held_to_the_account_page(client)
    assert client.get("/metrics").status_code == 403  # health details: no role power either
    assert b"confirm with one of your security keys below" in client.get("/account/").content


def test_a_covered_officer_who_confirms_with_a_key_reaches_everything(officer, keys_only):
    keys_only("roles")
    _seed, key = with_app_and_key(officer)
    client = password_only(officer)

    signed_in = sign_in_with_key(client, key)

    assert signed_in.json()["redirect"] == RA
    assert client.get(RA).status_code == 200
    assert client.get(CERTIFICATES).status_code == 200
    assert b"security-key-needed" not in client.get("/account/").content


@pytest.mark.parametrize(
    "holder",
    [
        lambda: UserFactory(is_staff=True),
        lambda: UserFactory(is_staff=True, is_superuser=True),
    ],
    ids=["staff", "superuser"],
)
def test_roles_covers_staff_and_superusers_as_well(keys_only, holder):
    keys_only("roles")
    user = holder()
    seed, key = with_app_and_key(user)

    with_code, _answer = signed_in_with_code(user, code(seed), "/admin/")
    with_key = password_only(user)
    sign_in_with_key(with_key, key)

    assert with_code.get("/admin/")["Location"] == "/account/"
    assert with_key.get("/admin/").status_code == 200


def test_an_employee_with_the_app_is_not_covered_by_roles(employee, keys_only):
    keys_only("roles")
    _device, seed = authenticator(employee)

    client, answer = signed_in_with_code(employee, code(seed), "/certificates/")

    assert answer["Location"] == "/certificates/"
    assert client.get("/certificates/").status_code == 200
    assert client.get(CERTIFICATES).status_code == 200
    assert b"security-key-needed" not in client.get("/account/").content


def test_everyone_covers_an_employee_without_a_role(employee, keys_only):
    keys_only("everyone")
    seed, key = with_app_and_key(employee)

    with_code, answer = signed_in_with_code(employee, code(seed), "/certificates/")
    with_key = password_only(employee)
    signed_in = sign_in_with_key(with_key, key)

    assert answer["Location"] == "/account/"
    held_to_the_account_page(with_code)
    assert signed_in.json()["redirect"] == RA
    assert with_key.get("/certificates/").status_code == 200


def test_with_the_option_off_the_app_opens_everything(officer):
    seed, _key = with_app_and_key(officer)
    client, answer = signed_in_with_code(officer, code(seed))
    assert answer["Location"] == RA
    assert client.get(RA).status_code == 200


def test_confirming_a_key_on_the_account_page_opens_the_session(officer, keys_only):
    keys_only("roles")
    seed, key = with_app_and_key(officer)
    client, _answer = signed_in_with_code(officer, code(seed))
    assert client.get(RA)["Location"] == "/account/"

    confirmed = sign_in_confirm(client, key)

    assert confirmed.status_code == 200
    assert confirmed.json()["redirect"] == "/account/"
    assert client.get(RA).status_code == 200
    assert b"security-key-needed" not in client.get("/account/").content
    # What a token minted now records: the key, not the app.
    _api, named = minted_in_session(client)
    assert named.second_factor_kind == "security_key"


def test_a_lost_key_backup_code_reaches_the_account_page_and_adds_a_new_key(officer, keys_only):
    keys_only("roles")
    register_through_service(officer, SoftKey())  # the key that is lost
    first, second, *_rest = mfa._replace_backup_codes(officer)

    client, answer = signed_in_with_code(officer, first)

    assert answer["Location"] == "/account/"
    held_to_the_account_page(client)
    added = add_key(client, SoftKey(), current_code=second, name="New key")
    assert added.status_code == 200, added.content
    assert WebAuthnDevice.objects.filter(user=officer, name="New key").exists()
    assert client.get(RA).status_code == 200


def test_an_officer_with_only_the_app_adds_a_key_from_the_account_page(officer, keys_only):
    keys_only("roles")
    _device, seed = authenticator(officer)
    client, _answer = signed_in_with_code(officer, code(seed))
    page = client.get("/account/")
    assert b"add a security key below" in page.content

    added = add_key(client, SoftKey(), current_code=code(seed, at=time.time() + 30))

    assert added.status_code == 200, added.content
    assert client.get(RA).status_code == 200


def test_a_single_sign_on_is_no_security_key(officer, keys_only):
    """The portal cannot tell what the provider checked: such a session is held to the
    account page, and a key confirmed there opens it."""
    keys_only("roles")
    key = SoftKey()
    register_through_service(officer, key)
    client = browser()
    client.force_login(officer)
    session = client.session
    session[mfa.SSO_VERIFIED] = True  # as mfa.note_sign_in leaves a trusted sign-on
    session.save()

    held_to_the_account_page(client)
    assert b"confirmed with single sign-on" in client.get("/account/").content
    assert sign_in_confirm(client, key).status_code == 200

    assert client.get(RA).status_code == 200
    assert not client.session.get(mfa.SSO_VERIFIED)


def test_with_the_attestation_policy_only_an_approved_key_opens_the_session(
    settings, officer, keys_only
):
    vendor = AttestationCA()
    keys_only("roles")
    seed, old = with_app_and_key(officer)  # added before the attestation policy: not proved
    settings.PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS = [vendor.pem]
    settings.PKIPORTAL_WEBAUTHN_ATTESTATION_FOR = "roles"
    client, _answer = signed_in_with_code(officer, code(seed))

    assert sign_in_confirm(client, old).status_code == 200
    assert client.get(RA)["Location"] == "/account/"
    assert client.get(CERTIFICATES).json()["missing"] == "approved_security_key"
    added = add_key(client, approved_key(vendor))  # the key confirmed just now is the proof
    assert added.status_code == 200, added.content
    assert client.get(RA).status_code == 200


def test_removing_the_key_the_session_signed_in_with_keeps_it_open_with_another_key(
    officer, keys_only
):
    keys_only("roles")
    _seed, first = with_app_and_key(officer)
    second = SoftKey()
    register_through_service(officer, second)
    client = password_only(officer)
    sign_in_with_key(client, first)
    used = WebAuthnDevice.objects.filter(user=officer).order_by("pk").first()
    assert sign_in_confirm(client, second).status_code == 200  # the proof for the removal

    removed = client.post(f"/account/two-factor/security-keys/{used.pk}/remove/")

    assert removed["Location"] == "/account/"
    assert not WebAuthnDevice.objects.filter(pk=used.pk).exists()
    assert client.get(RA).status_code == 200


def test_setting_up_an_app_in_a_session_a_key_verified_keeps_it_open(officer, keys_only):
    keys_only("roles")
    key = SoftKey()
    register_through_service(officer, key)
    client = password_only(officer)
    sign_in_with_key(client, key)
    assert sign_in_confirm(client, key).status_code == 200  # the proof for the set-up
    assert client.get("/account/two-factor/setup/").status_code == 200
    seed = seed_of(TotpDevice.objects.get(user=officer, confirmed=False))

    set_up = client.post("/account/two-factor/setup/", {"code": code(seed)})

    assert set_up.status_code == 200
    assert mfa.confirmed_totp(officer) is not None
    assert client.get(RA).status_code == 200


# --- the second step's pages -------------------------------------------------------------------


def test_the_second_step_offers_the_key_first_and_says_a_code_opens_the_account_page_only(
    officer, employee, keys_only
):
    keys_only("roles")
    with_app_and_key(officer)
    with_app_and_key(employee)

    covered = password_only(officer).get(VERIFY).content.decode()
    not_covered = password_only(employee).get(VERIFY).content.decode()

    assert covered.index('id="use-security-key"') < covered.index('name="code"')
    assert "Lost your security key?" in covered
    assert 'id="code-opens-account-only"' in covered
    assert 'id="code-opens-account-only"' not in not_covered
    assert "Or enter a code" in not_covered


def test_a_covered_officer_without_a_second_factor_is_sent_to_add_a_key(officer, keys_only):
    keys_only("roles")
    client = browser()

    signed_in = client.post(
        "/accounts/login/?next=/ra/requests/",
        {"username": "olivia", "password": "correct horse battery staple"},
    )

    assert signed_in["Location"].startswith("/account/two-factor/security-keys/add/")
    assert client.get("/account/two-factor/setup/")["Location"].startswith(
        "/account/two-factor/security-keys/add/"
    )
    page = client.get("/account/two-factor/security-keys/add/").content
    assert b"requires a security key for you" in page
    assert b"Use an authenticator app instead" not in page


def test_keys_only_asks_a_second_factor_even_where_the_mfa_policy_asks_none(
    settings, officer, keys_only
):
    settings.PKIPORTAL_MFA_REQUIRED_FOR = "nobody"
    keys_only("roles")
    client = password_only(officer)
    assert client.get(RA)["Location"].startswith("/account/two-factor/security-keys/add/")


# --- API tokens --------------------------------------------------------------------------------


def test_a_token_minted_with_the_app_has_no_role_power_while_the_option_covers_its_owner(
    officer, keys_only
):
    seed, _key = with_app_and_key(officer)
    api, named = minted_with_basic(officer, code(seed))
    assert named.second_factor_kind == "app"
    assert api.get(PENDING).status_code == 200  # the option off: as before

    keys_only("roles")
    refused = api.get(PENDING)

    assert refused.status_code == 403
    assert refused.json()["missing"] == "security_key_token"
    assert "security key" in refused.json()["detail"]
    assert refused.json()["url"] == "/account/tokens/"
    assert api.get(CERTIFICATES).status_code == 403  # an officer's view of the list

    keys_only("")
    assert api.get(PENDING).status_code == 200


def test_a_token_minted_with_a_backup_code_has_no_role_power_either(officer, keys_only):
    keys_only("roles")
    authenticator(officer)
    [backup, *_rest] = mfa._replace_backup_codes(officer)

    api, _named = minted_with_basic(officer, backup)

    assert api.get(PENDING).json()["missing"] == "security_key_token"


def test_a_session_confirmed_with_the_app_mints_no_token(officer, keys_only):
    keys_only("roles")
    seed, _key = with_app_and_key(officer)
    client, _answer = signed_in_with_code(officer, code(seed))

    refused = client.post(TOKEN, {"label": "ci"}, content_type="application/json")

    assert refused.status_code == 403
    assert refused.json()["missing"] == "security_key"


def test_a_token_minted_after_a_key_sign_in_keeps_its_power(officer, keys_only):
    keys_only("roles")
    _seed, key = with_app_and_key(officer)
    client = password_only(officer)
    sign_in_with_key(client, key)

    api, named = minted_in_session(client)

    assert named.second_factor_kind == "security_key"
    assert api.get(PENDING).status_code == 200


def test_the_tokens_page_names_a_token_minted_without_a_key(officer, keys_only):
    keys_only("roles")
    seed, key = with_app_and_key(officer)
    _api, by_app = minted_with_basic(officer, code(seed))
    client = password_only(officer)
    sign_in_with_key(client, key)

    page = client.get("/account/tokens/")

    assert f'id="token-{by_app.pk}-no-role-power"'.encode() in page.content
    assert b"your organisation requires a security key for you" in page.content


def test_an_employee_s_app_token_keeps_employee_power_under_everyone(employee, keys_only):
    keys_only("everyone")
    seed, _key = with_app_and_key(employee)
    api, _named = minted_with_basic(employee, code(seed))
    assert api.get(CERTIFICATES).status_code == 200
    assert "missing" not in api.get(PENDING).json()


# --- the deploy check and the setting ----------------------------------------------------------


def test_the_deploy_check_is_silent_while_the_option_is_off(settings):
    from enrollment.checks import keys_only_can_be_met

    settings.PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR = ""
    settings.PKIPORTAL_WEBAUTHN_RP_ID = "localhost"
    assert keys_only_can_be_met() == []


def test_the_deploy_check_is_silent_where_keys_work(settings):
    from enrollment.checks import keys_only_can_be_met

    settings.PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR = "roles"
    settings.PKIPORTAL_SITE_URL = "https://pki.example.com"
    settings.PKIPORTAL_WEBAUTHN_RP_ID = "pki.example.com"
    settings.PKIPORTAL_WEBAUTHN_ORIGINS = ["https://pki.example.com"]
    assert keys_only_can_be_met() == []


@pytest.mark.parametrize(
    ("rp_id", "origins", "says"),
    [
        ("localhost", ["https://localhost", "http://localhost:8000"], "only a browser on this"),
        ("other.example", ["https://pki.example.com"], "is not under it"),
        ("pki.example.com", ["http://pki.example.com"], "is not https"),
    ],
    ids=["localhost", "another-relying-party", "plain-http"],
)
def test_the_deploy_check_warns_where_keys_cannot_work(settings, rp_id, origins, says):
    from enrollment.checks import keys_only_can_be_met

    settings.PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR = "everyone"
    settings.PKIPORTAL_SITE_URL = "https://pki.example.com"
    settings.PKIPORTAL_WEBAUTHN_RP_ID = rp_id
    settings.PKIPORTAL_WEBAUTHN_ORIGINS = origins

    (warning,) = keys_only_can_be_met()

    assert warning.id == "pkiportal.W018"
    assert says in warning.msg
    assert "PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR=everyone" in warning.msg


def test_the_option_is_off_by_default(load_settings):
    assert load_settings()["PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR"] == ""


@pytest.mark.parametrize("given", ["roles", " everyone ", ""])
def test_the_option_covers_roles_or_everyone(load_settings, given):
    loaded = load_settings(PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR=given)
    assert loaded["PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR"] == given.strip()


@pytest.mark.parametrize("given", ["officers", "yes", "Roles", "roles,everyone"])
def test_a_bad_value_stops_the_portal(load_settings, given):
    with pytest.raises(ImproperlyConfigured, match="PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR"):
        load_settings(PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR=given)


# --- the admin ---------------------------------------------------------------------------------


def an_officer_with_every_factor(settings) -> tuple[Any, bytes, list[str]]:
    """An app, an attested key of an approved model, a key that proved none, ten backup
    codes (one used)."""
    vendor = AttestationCA()
    settings.PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS = [vendor.pem]
    settings.PKIPORTAL_WEBAUTHN_ATTESTATION_FOR = "everyone"
    officer = UserFactory(username="olga")
    officer.groups.add(Group.objects.get_or_create(name="RA officers")[0])
    _device, seed = authenticator(officer)
    register_through_service(officer, approved_key(vendor))
    WebAuthnDevice.objects.filter(user=officer).update(name="Blue <b>key</b>")
    settings.PKIPORTAL_WEBAUTHN_ATTESTATION_FOR = ""
    register_through_service(officer, SoftKey())
    settings.PKIPORTAL_WEBAUTHN_ATTESTATION_FOR = "roles"
    codes = mfa._replace_backup_codes(officer)
    backup = BackupCodeDevice.objects.get(user=officer)
    backup.digests = backup.digests[1:]
    backup.save()
    return officer, seed, codes


def test_the_admin_shows_each_second_factor_and_no_secret(settings, admin_user, keys_only):
    keys_only("roles")
    officer, seed, codes = an_officer_with_every_factor(settings)
    # Both options cover the administrator too: an approved key of theirs.
    vendor = AttestationCA("Administrators' Vendor")
    settings.PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS = [
        *settings.PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS,
        vendor.pem,
    ]
    admin_key = approved_key(vendor)
    register_through_service(admin_user, admin_key)
    admin = password_only(admin_user)
    sign_in_with_key(admin, admin_key)

    page = admin.get(f"/admin/accounts/user/{officer.pk}/change/").content.decode()

    assert "Authenticator app: confirmed, set up " in page
    assert "Backup codes: 9 unused." in page
    assert "Security key “Blue &lt;b&gt;key&lt;/b&gt;”: added " in page  # escaped
    assert f"attested (packed), model {aaguid_text(MODEL_AAGUID)}: approved model" in page
    assert "Security key “Old key”: added " in page
    assert "not attested (attestation none): model not proved" in page
    assert "only a session confirmed with a security key opens more than their account page" in page
    assert "their keys must prove an approved model" in page
    # No seed (in any form), no backup code, no digest, no key material.
    device = TotpDevice.objects.get(user=officer)
    assert mfa.base32_secret(device).replace(" ", "") not in page.replace(" ", "")
    assert seed.hex() not in page
    assert not any(c in page for c in codes)
    for digest in BackupCodeDevice.objects.get(user=officer).digests:
        assert digest.split("$")[1] not in page
    for key in WebAuthnDevice.objects.filter(user=officer):
        assert key.credential_id not in page
    assert "sealed" not in page.lower()


@pytest.mark.parametrize(
    ("allowed", "summary"),
    [
        ((), "app, 2 keys (1 approved)"),
        ((MODEL_AAGUID,), "app, 2 keys (1 approved)"),
        ((OTHER_MODEL,), "app, 2 keys"),  # a model taken off the list counts no more
    ],
    ids=["any-model", "listed", "taken-off-the-list"],
)
def test_the_admin_list_counts_each_account_s_factors(
    settings, admin_client_, employee, allowed, summary
):
    an_officer_with_every_factor(settings)
    settings.PKIPORTAL_WEBAUTHN_ALLOWED_AAGUIDS = [aaguid_text(a) for a in allowed]

    page = admin_client_.get("/admin/accounts/user/")

    assert page.status_code == 200
    rows = {user.username: user for user in page.context["cl"].result_list}
    admin_row = page.context["cl"].model_admin.second_factor_summary
    assert admin_row(rows["olga"]) == summary
    assert admin_row(rows["alice"]) == "none"
    assert summary in page.content.decode()


def test_an_employee_or_staff_without_permission_sees_no_one_s_second_factors(settings, employee):
    officer, _seed, _codes = an_officer_with_every_factor(settings)
    url = f"/admin/accounts/user/{officer.pk}/change/"
    staff = UserFactory(username="helpdesk", is_staff=True)

    as_employee = verified_login(browser(), employee).get(url)
    as_staff = verified_login(browser(), staff).get(url)

    assert as_employee.status_code == 302
    assert as_employee["Location"].startswith("/admin/login/")
    assert as_staff.status_code == 403


def test_staff_who_may_view_accounts_see_them_read_only(settings):
    officer, _seed, _codes = an_officer_with_every_factor(settings)
    staff = UserFactory(username="auditor", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_user"))

    page = verified_login(browser(), staff).get(f"/admin/accounts/user/{officer.pk}/change/")

    assert page.status_code == 200
    assert "Backup codes: 9 unused." in page.content.decode()
    assert "Reset it…" not in page.content.decode()
