"""Security keys of approved models (WebAuthn attestation, PKIPORTAL_WEBAUTHN_ATTESTATION_*):
whom the policy covers, what a key must prove when it is added (a chain from its maker to
the configured roots, a listed model), that every refusal stores nothing, and what a
session signed in with a key of no approved model reaches (its account page, to add one).
The relying party, the vendor and ``policy`` come from tests/attestation/conftest.py."""

from __future__ import annotations

import json
from datetime import timedelta
from importlib import import_module
from typing import Any

import pytest
import time_machine

from django.conf import settings as django_settings
from django.contrib.auth.models import Group
from django.test import Client

from accounts import mfa, passkeys
from accounts.models import BackupCodeDevice, WebAuthnDevice
from tests.factories import UserFactory
from tests.second_factor import authenticator, code, verified_login
from tests.test_passkeys import (
    REGISTER,
    REGISTER_OPTIONS,
    browser,
    events,
    password_only,
    post_json,
    sign_in_confirm,
    sign_in_with_key,
)
from tests.webauthn_authenticator import MODEL_AAGUID, AttestationCA, SoftKey, aaguid_text

pytestmark = pytest.mark.django_db

OTHER_MODEL = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")


def approved_key(vendor: AttestationCA, aaguid: bytes = MODEL_AAGUID) -> SoftKey:
    return SoftKey(attestation=vendor.attestation(aaguid), aaguid=aaguid)


def with_app(user) -> tuple[Client, bytes]:
    """A verified session of someone with an authenticator app, and the app's seed (a
    current code proves the second factor for adding a key)."""
    _device, seed = authenticator(user)
    return verified_login(browser(), user), seed


def register(client: Client, key: SoftKey, seed: bytes | None = None) -> tuple[Any, Any]:
    """The page's script: the options, then the key's answer; returns both answers."""
    body = {"name": "Blue key", "current_code": code(seed) if seed else ""}
    options = post_json(client, REGISTER_OPTIONS, body)
    assert options.status_code == 200, options.content
    return options, post_json(client, REGISTER, {"credential": key.create(options.json())})


def register_through_service(user, key: SoftKey) -> WebAuthnDevice:
    session = import_module(django_settings.SESSION_ENGINE).SessionStore()
    options = passkeys.registration_options(session=session, user=user, name="Old key")
    done = passkeys.register(
        session=session, user=user, credential=key.create(json.loads(options)), source_address=None
    )
    mfa.forget_state(user)
    return done.device


def nothing_stored(user) -> None:
    """A refused key left no trace but its audit event: no key, no backup codes made, no
    device_add event."""
    assert not WebAuthnDevice.objects.filter(user=user).exists()
    assert not events("mfa.device_add")
    assert events("mfa.verify")[-1].outcome == "failure"
    assert events("mfa.verify")[-1].detail["via"] == "register"


def in_group(name: str):
    user = UserFactory()
    user.groups.add(Group.objects.get_or_create(name=name)[0])
    return user


# --- the policy off: nothing changes -----------------------------------------------------------


def test_without_roots_no_attestation_is_asked_and_keys_are_recorded_unattested(officer):
    client, seed = with_app(officer)
    options, added = register(client, SoftKey(), seed)

    assert options.json()["attestation"] == "none"
    assert added.status_code == 200, added.content
    device = WebAuthnDevice.objects.get(user=officer)
    assert (device.attested, device.attestation_format) == (False, "none")
    assert events("mfa.device_add")[-1].detail["attested"] is False
    assert client.get("/ra/requests/").status_code == 200


def test_without_roots_a_chain_is_not_checked_so_the_key_is_not_recorded_attested(officer, vendor):
    client, seed = with_app(officer)
    _options, added = register(client, approved_key(vendor), seed)
    assert added.status_code == 200
    device = WebAuthnDevice.objects.get(user=officer)
    assert (device.attested, device.attestation_format) == (False, "packed")


# --- the policy on, for roles ------------------------------------------------------------------


def test_an_officer_adds_a_key_whose_attestation_chains_to_the_configured_root(
    officer, vendor, policy, mailoutbox, django_capture_on_commit_callbacks
):
    policy()
    client, seed = with_app(officer)

    with django_capture_on_commit_callbacks(execute=True):
        options, added = register(client, approved_key(vendor), seed)

    assert options.json()["attestation"] == "direct"
    assert added.status_code == 200, added.content
    device = WebAuthnDevice.objects.get(user=officer)
    assert device.attested
    assert device.attestation_format == "packed"
    assert device.aaguid == aaguid_text(MODEL_AAGUID)
    detail = events("mfa.device_add")[-1].detail
    assert (detail["attested"], detail["attestation_format"]) == (True, "packed")
    assert "security key" in mailoutbox[-1].subject


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (lambda vendor: SoftKey(), passkeys.ATTESTATION_NONE),
        (lambda vendor: SoftKey(attestation="self"), passkeys.ATTESTATION_SELF),
        (lambda vendor: approved_key(AttestationCA("Another Vendor")), passkeys.ATTESTATION_CHAIN),
    ],
    ids=["none", "self", "another-root"],
)
def test_an_officer_s_key_that_proves_no_approved_maker_is_refused_and_nothing_stored(
    officer, vendor, policy, mailoutbox, django_capture_on_commit_callbacks, key, message
):
    policy()
    client, seed = with_app(officer)

    with django_capture_on_commit_callbacks(execute=True):
        _options, refused = register(client, key(vendor), seed)

    assert refused.status_code == 400
    assert refused.json()["detail"] == message
    nothing_stored(officer)
    assert not BackupCodeDevice.objects.filter(user=officer).exists()
    assert not mailoutbox
    assert events("mfa.verify")[-1].detail["reason"].startswith("attestation: ")


@pytest.mark.parametrize(
    ("aaguids", "accepted"),
    [((MODEL_AAGUID,), True), ((OTHER_MODEL,), False), ((OTHER_MODEL, MODEL_AAGUID), True)],
)
def test_only_a_listed_model_is_accepted_when_there_is_a_list(
    officer, vendor, policy, aaguids, accepted
):
    policy(aaguids=aaguids)
    client, seed = with_app(officer)

    _options, answer = register(client, approved_key(vendor), seed)

    if accepted:
        assert answer.status_code == 200
        assert WebAuthnDevice.objects.get(user=officer).approved
    else:
        assert answer.status_code == 400
        assert answer.json()["detail"] == passkeys.ATTESTATION_MODEL
        assert "model is not on your organisation's list" in answer.json()["detail"]
        nothing_stored(officer)
        assert events("mfa.verify")[-1].detail["aaguid"] == aaguid_text(MODEL_AAGUID)


@pytest.mark.parametrize("aaguids", [(), (MODEL_AAGUID, OTHER_MODEL)], ids=["no-list", "listed"])
def test_a_key_claiming_another_model_than_its_certificate_names_is_refused(
    officer, vendor, policy, aaguids
):
    """WebAuthn 8.2.1: the batch certificate's id-fido-gen-ce-aaguid must be the AAGUID the
    key reports; py_webauthn does not compare them."""
    policy(aaguids=aaguids)
    client, seed = with_app(officer)
    claims_other = SoftKey(attestation=vendor.attestation(MODEL_AAGUID), aaguid=OTHER_MODEL)

    _options, answer = register(client, claims_other, seed)

    assert answer.status_code == 400
    assert answer.json()["detail"] == passkeys.ATTESTATION_MISMATCH
    nothing_stored(officer)
    assert events("mfa.verify")[-1].detail["reason"] == (
        "attestation: model differs from its certificate"
    )


def test_a_listed_model_with_a_chain_from_another_root_is_still_refused(officer, policy):
    """The AAGUID is the key's own word: only a verified chain makes it count."""
    policy(aaguids=(MODEL_AAGUID,))
    client, seed = with_app(officer)
    _options, answer = register(client, approved_key(AttestationCA("Counterfeit")), seed)
    assert answer.status_code == 400
    assert answer.json()["detail"] == passkeys.ATTESTATION_CHAIN
    nothing_stored(officer)


@pytest.mark.parametrize(
    "holder",
    [
        lambda: in_group("RA officers"),
        lambda: in_group("Key recovery agents"),
        lambda: UserFactory(is_staff=True),
        lambda: UserFactory(is_staff=True, is_superuser=True),
    ],
    ids=["ra-officer", "key-recovery-agent", "staff", "superuser"],
)
def test_roles_covers_officers_recovery_agents_staff_and_superusers(vendor, policy, holder):
    policy("roles")
    user = holder()
    client, seed = with_app(user)

    refused = register(client, SoftKey(), seed)[1]
    options, added = register(client, approved_key(vendor), seed)

    assert refused.status_code == 400
    assert options.json()["attestation"] == "direct"
    assert added.status_code == 200
    assert WebAuthnDevice.objects.get(user=user).attested


def test_an_employee_without_a_role_is_not_covered_by_roles(employee, vendor, policy):
    policy("roles")
    client = verified_login(browser(), employee)

    options, added = register(client, SoftKey())

    assert options.json()["attestation"] == "none"
    assert added.status_code == 200
    device = WebAuthnDevice.objects.get(user=employee)
    assert not device.attested
    assert client.get("/certificates/").status_code == 200


def test_everyone_covers_an_employee_without_a_role(employee, vendor, policy):
    policy("everyone")
    client = verified_login(browser(), employee)

    options, refused = register(client, SoftKey())

    assert options.json()["attestation"] == "direct"
    assert refused.status_code == 400
    assert refused.json()["detail"] == passkeys.ATTESTATION_NONE
    nothing_stored(employee)
    assert not BackupCodeDevice.objects.filter(user=employee).exists()
    added = register(client, approved_key(vendor))[1]
    assert added.status_code == 200
    assert WebAuthnDevice.objects.get(user=employee).attested
    assert "backup_codes" in added.json()  # a first factor, as without the policy


def test_an_officer_without_a_second_factor_sets_up_an_approved_key_as_the_first(
    officer, vendor, policy
):
    policy()
    client = password_only(officer)
    refused = register(client, SoftKey())[1]
    assert refused.status_code == 400
    assert client.get("/ra/requests/").status_code == 302  # still in the set-up step
    nothing_stored(officer)

    added = register(client, approved_key(vendor))[1]

    assert added.status_code == 200
    assert client.get("/ra/requests/").status_code == 200


# --- a key of no approved model, held by someone the policy covers -------------------------------


def an_employee_with_an_old_key_becomes_an_officer(employee, policy) -> SoftKey:
    """A key added while the person held no role (so not asked to prove its model); then
    they are made an RA officer."""
    policy("roles")
    key = SoftKey()
    register_through_service(employee, key)
    employee.groups.add(Group.objects.get_or_create(name="RA officers")[0])
    mfa.forget_state(employee)
    return key


def test_signing_in_with_a_key_of_no_approved_model_opens_only_the_account_page(employee, policy):
    key = an_employee_with_an_old_key_becomes_an_officer(employee, policy)
    client = password_only(employee)

    signed_in = sign_in_with_key(client, key)

    assert signed_in.status_code == 200
    assert signed_in.json()["redirect"] == "/account/"
    assert client.get("/ra/requests/")["Location"] == "/account/"
    assert client.get("/certificates/")["Location"] == "/account/"
    assert client.get("/account/tokens/")["Location"] == "/account/"
    assert client.post("/account/two-factor/backup-codes/")["Location"] == "/account/"
    api = client.get("/api/v1/certificates/")
    assert api.status_code == 403
    assert api.json()["missing"] == "approved_security_key"
    page = client.get("/account/")
    assert page.status_code == 200
    assert b'id="approved-key-needed"' in page.content
    assert b"model not proved" in page.content


def test_the_person_adds_an_approved_key_and_the_session_opens(employee, vendor, policy):
    old = an_employee_with_an_old_key_becomes_an_officer(employee, policy)
    client = password_only(employee)
    assert sign_in_with_key(client, old).status_code == 200
    assert sign_in_confirm(client, old).status_code == 200  # the present key proves the change

    refused = register(client, SoftKey())[1]
    assert refused.status_code == 400
    nothing_added = WebAuthnDevice.objects.filter(user=employee).count()
    assert client.get("/ra/requests/").status_code == 302
    assert sign_in_confirm(client, old).status_code == 200
    new = approved_key(vendor)
    options, added = register(client, new)

    assert nothing_added == 1
    assert options.json()["excludeCredentials"] == []  # the old key may come again, attested
    assert added.status_code == 200, added.content
    assert client.get("/ra/requests/").status_code == 200
    assert b"approved-key-needed" not in client.get("/account/").content
    assert WebAuthnDevice.objects.filter(user=employee, attested=True).count() == 1

    # Signing in again: with the approved key everything opens; with the old, the account page.
    with_old = password_only(employee)
    assert sign_in_with_key(with_old, old).json()["redirect"] == "/account/"
    with_new = password_only(employee)
    assert sign_in_with_key(with_new, new).json()["redirect"] == "/ra/requests/"
    assert with_new.get("/ra/requests/").status_code == 200


def test_the_old_key_can_be_removed_from_the_account_page(employee, vendor, policy):
    old = an_employee_with_an_old_key_becomes_an_officer(employee, policy)
    client = password_only(employee)
    assert sign_in_with_key(client, old).status_code == 200
    assert sign_in_confirm(client, old).status_code == 200
    assert register(client, approved_key(vendor))[1].status_code == 200
    assert sign_in_confirm(client, old).status_code == 200
    device = WebAuthnDevice.objects.get(user=employee, attested=False)

    removed = client.post(f"/account/two-factor/security-keys/{device.pk}/remove/")

    assert removed.status_code == 302
    assert not WebAuthnDevice.objects.filter(pk=device.pk).exists()
    assert client.get("/ra/requests/").status_code == 200


def test_signing_out_is_open_to_such_a_session(employee, policy):
    key = an_employee_with_an_old_key_becomes_an_officer(employee, policy)
    client = password_only(employee)
    assert sign_in_with_key(client, key).status_code == 200
    assert client.get("/certificates/")["Location"] == "/account/"
    signed_out = client.post("/accounts/logout/")
    assert signed_out.status_code == 200  # the sign-out page, not a redirect to /account/
    assert "_auth_user_id" not in client.session


def test_an_authenticator_app_still_opens_the_session(employee, policy):
    """The policy says which keys count, not that a key must be used."""
    key = an_employee_with_an_old_key_becomes_an_officer(employee, policy)
    _device, seed = authenticator(employee)
    with_key = password_only(employee)
    assert sign_in_with_key(with_key, key).json()["redirect"] == "/account/"
    client = password_only(employee)
    answer = client.post("/account/two-factor/verify/", {"code": code(seed), "next": "/ra/"})
    assert answer.status_code == 302
    assert client.get("/ra/requests/").status_code == 200


def test_a_model_taken_off_the_list_stops_opening_the_session(employee, vendor, policy):
    policy("everyone", aaguids=(MODEL_AAGUID,))
    key = approved_key(vendor)
    register_through_service(employee, key)
    assert WebAuthnDevice.objects.get(user=employee).approved
    first = password_only(employee)
    assert sign_in_with_key(first, key).json()["redirect"] == "/ra/requests/"

    policy("everyone", aaguids=(OTHER_MODEL,))
    client = password_only(employee)

    assert sign_in_with_key(client, key).json()["redirect"] == "/account/"
    assert client.get("/certificates/")["Location"] == "/account/"


def test_without_the_policy_an_officer_s_unattested_key_opens_everything(officer):
    key = SoftKey()
    register_through_service(officer, key)
    client = password_only(officer)
    assert sign_in_with_key(client, key).json()["redirect"] == "/ra/requests/"
    assert client.get("/ra/requests/").status_code == 200


def test_an_employee_s_unattested_key_opens_everything_under_roles(employee, policy):
    policy("roles")
    key = SoftKey()
    register_through_service(employee, key)
    client = password_only(employee)
    assert sign_in_with_key(client, key).json()["redirect"] == "/ra/requests/"
    assert client.get("/certificates/").status_code == 200


def test_such_a_session_sees_no_health_details_until_it_adds_an_approved_key(
    employee, vendor, policy
):
    """Health details and metrics, for staff and officers, ask for a session that holds
    its role's second factor (pkiportal.health.may_see_details)."""
    old = an_employee_with_an_old_key_becomes_an_officer(employee, policy)
    client = password_only(employee)
    assert sign_in_with_key(client, old).status_code == 200

    refused = client.get("/metrics")
    assert sign_in_confirm(client, old).status_code == 200
    assert register(client, approved_key(vendor))[1].status_code == 200
    allowed = client.get("/metrics")

    assert refused.status_code == 403
    assert allowed.status_code == 200


# --- the deploy check --------------------------------------------------------------------------


def test_the_deploy_check_warns_of_a_root_that_ends_within_30_days(settings, vendor):
    from enrollment.checks import attestation_roots_are_current

    settings.PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS = [vendor.pem]
    assert attestation_roots_are_current() == []

    end = vendor.certificate.not_valid_after_utc
    with time_machine.travel(end - timedelta(days=29), tick=False):
        ending = attestation_roots_are_current()
    with time_machine.travel(end + timedelta(days=1), tick=False):
        ended = attestation_roots_are_current()

    assert [w.id for w in ending] == ["pkiportal.W017"]
    assert "Test Vendor Attestation Root" in ending[0].msg
    assert " expires on " in ending[0].msg
    assert " expired on " in ended[0].msg


def test_the_deploy_check_is_silent_without_roots(settings):
    from enrollment.checks import attestation_roots_are_current

    settings.PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS = []
    assert attestation_roots_are_current() == []


@pytest.mark.parametrize(
    ("value", "names_it"),
    [
        (b"\x04\x10" + MODEL_AAGUID, True),
        (b"\x04\x10" + OTHER_MODEL, False),
        (b"\x04\x11" + MODEL_AAGUID + b"\x00", False),  # 17 bytes: no AAGUID
        (b"\x04\x10" + MODEL_AAGUID + b"\x00", False),  # trailing data
        (b"\x02\x01\x00", False),  # not an OCTET STRING
        (b"", False),
        (None, True),  # no extension: the chain alone speaks for the key
    ],
)
def test_the_certificate_s_model_is_read_strictly(vendor, value, names_it):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding

    builder = (
        x509.CertificateBuilder()
        .subject_name(vendor.certificate.subject)
        .issuer_name(vendor.certificate.subject)
        .public_key(vendor.key.public_key())
        .serial_number(1)
        .not_valid_before(vendor.certificate.not_valid_before_utc)
        .not_valid_after(vendor.certificate.not_valid_after_utc)
    )
    if value is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(passkeys.FIDO_GEN_CE_AAGUID, value), critical=False
        )
    der = builder.sign(vendor.key, hashes.SHA256()).public_bytes(Encoding.DER)

    assert passkeys._certificate_names_model(der, MODEL_AAGUID) is names_it
