"""Second factor: who must use one, sealed TOTP seeds, backup codes, and the session.

The framework is django-otp (its Device base with throttling, OTPMiddleware and
``is_verified()``, its RFC 6238 maths); the devices are ours (accounts.models) so that no
seed or backup code sits in the database in a form a reader could use: seeds are sealed
with Fernet under a key the database does not hold, backup codes are salted digests.

A session counts as verified once it confirmed a code (django_otp.login puts the device in
it) or, per PKIPORTAL_MFA_TRUST_SINGLE_SIGN_ON, when the identity provider says it checked
a second factor. README.md, "Second factor", is the operator's side of this.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache
from hmac import compare_digest
from typing import Any
from urllib.parse import quote, urlencode

import django_otp
import segno
from django_otp import DEVICE_ID_SESSION_KEY

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY
from django.contrib.auth.models import Group
from django.contrib.sessions.backends.base import SessionBase
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.debug import sensitive_variables

from accounts.models import (
    LOCKOUT_FAILURES,
    LOCKOUT_REMINDER_FAILURES,
    MAX_THROTTLE_SECONDS,
    BackupCodeDevice,
    SecondFactorKind,
    TotpDevice,
    User,
    WebAuthnDevice,
    model_allowed,
)
from accounts.privilege import may_administer
from accounts.sessions import sessions_end
from enrollment import recent_sign_in
from enrollment.audit import audit_record
from enrollment.exceptions import NotPermitted
from pkiportal import plurals

SEED_BYTES = 20  # RFC 4226 recommends 160 bits, as django-otp's default
BACKUP_CODES = 10
BACKUP_CODE_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read off paper
BACKUP_CODE_LENGTH = 16  # 16 of 31 symbols: 79 bits
# Session keys: set by a single sign-on the provider says used a second factor; the amr
# claim of the ID token between the callback's authenticate() and login().
SSO_VERIFIED = "pkiportal_mfa_sso"
SSO_AMR = "pkiportal_oidc_amr"
# RFC 8176 methods that are, or include, a factor beyond the password.
SECOND_FACTOR_AMR = frozenset({"mfa", "otp", "hwk", "sc", "swk", "fpt", "face", "iris"})
_KDF_INFO = b"pkiportal second-factor seeds v1"
# The session's own authenticator app being set up (its pk), and for how long it is.
PENDING_SESSION_KEY = "pkiportal_mfa_pending"
PENDING_MINUTES = 15


class SecondFactorError(NotPermitted):
    """A second-factor action refused; its message is safe to show."""


# --- sealing seeds ---------------------------------------------------------------------


def _fernet_key(secret: str) -> bytes:
    """A Fernet key from any long secret (HKDF-SHA256), so operators give plain strings
    and keys derived from SECRET_KEY never equal a key Django signs with."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KDF_INFO).derive(
        secret.encode()
    )
    return base64.urlsafe_b64encode(derived)


@lru_cache(maxsize=4)
def _sealer(secrets_: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(_fernet_key(secret)) for secret in secrets_])


def _current_sealer() -> MultiFernet:
    """PKIPORTAL_MFA_KEY's keys when set (the first seals), then SECRET_KEY's and
    SECRET_KEY_FALLBACKS' (which seal only when no PKIPORTAL_MFA_KEY is set): a rotated
    SECRET_KEY still opens seeds sealed under the old, and setting PKIPORTAL_MFA_KEY for
    the first time (deploy check W006) still opens the seeds sealed before, for
    mfa_reseal to move."""
    from_secret_key = (settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS)
    keys = dict.fromkeys((*settings.PKIPORTAL_MFA_KEYS, *from_secret_key))  # ordered, once
    return _sealer(tuple(keys))


def seal(seed: bytes) -> bytes:
    return _current_sealer().encrypt(seed)


def unseal(sealed: bytes) -> bytes:
    try:
        return _current_sealer().decrypt(sealed)
    except InvalidToken:
        # The key was changed without keeping the old one: the person needs a reset.
        raise SecondFactorError(
            gettext_lazy(
                "This authenticator app can no longer be checked (the server's key changed); "
                "an administrator must reset your second factor."
            )
        ) from None


def reseal_all() -> tuple[int, int]:
    """Seal every seed under the current first key (after a key rotation); returns how many
    were resealed and how many could not be opened with any key. An unfinished set-up no
    key opens is dropped, not counted: its person simply starts again."""
    done = failed = 0
    sealer = _current_sealer()
    for device in TotpDevice.objects.only("pk", "sealed_key", "confirmed").iterator():
        try:
            resealed = sealer.rotate(bytes(device.sealed_key))
        except InvalidToken:
            if device.confirmed:
                failed += 1
            else:
                TotpDevice.objects.filter(pk=device.pk, confirmed=False).delete()
            continue
        TotpDevice.objects.filter(pk=device.pk).update(sealed_key=resealed)
        done += 1
    return done, failed


def opens(device: TotpDevice) -> bool:
    """Whether a configured key opens the device's seed."""
    try:
        unseal(bytes(device.sealed_key))
    except SecondFactorError:
        return False
    return True


# --- backup codes ----------------------------------------------------------------------


def _normalise_code(code: str) -> str:
    return "".join(ch for ch in code.lower() if ch.isalnum())


def _digest(salt: str, code: str) -> str:
    return hashlib.sha256(f"{salt}${code}".encode()).hexdigest()


def backup_code_digest(code: str) -> str:
    salt = secrets.token_hex(16)
    return f"{salt}${_digest(salt, _normalise_code(code))}"


def backup_code_match(code: str, digests: Sequence[str]) -> str | None:
    """The stored digest the code matches, or None; compares with every one, in constant
    time each."""
    normal = _normalise_code(code)
    found = None
    for stored in digests:
        salt, _, digest = stored.partition("$")
        if compare_digest(_digest(salt, normal), digest) and found is None:
            found = stored
    return found


def new_backup_codes() -> list[str]:
    def one() -> str:
        raw = "".join(secrets.choice(BACKUP_CODE_ALPHABET) for _ in range(BACKUP_CODE_LENGTH))
        return "-".join(raw[i : i + 4] for i in range(0, BACKUP_CODE_LENGTH, 4))

    return [one() for _ in range(BACKUP_CODES)]


# --- who must, and what this session has done -----------------------------------------


@dataclass(frozen=True)
class State:
    required: bool  # the policy asks this person for a second factor
    enrolled: bool  # they have a confirmed authenticator app or a security key
    totp: bool = False  # a confirmed authenticator app
    passkeys: bool = False  # one or more security keys (accounts.passkeys)
    # The attestation policy covers them (PKIPORTAL_WEBAUTHN_ATTESTATION_FOR): keys they add
    # must prove an approved model, and only such keys unlock their session.
    attestation: bool = False
    # Security keys only covers them (PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR): only a session
    # confirmed with a key unlocks their role; they must have a second factor (required).
    keys_only: bool = False

    @property
    def asked(self) -> bool:
        """Whether a sign-in of theirs needs the second step."""
        return self.required or self.enrolled


def state_for(user: Any) -> State:
    """Policy and enrolment in one query, remembered on the user object for the request."""
    cached = getattr(user, "_pkiportal_mfa_state", None)
    if isinstance(cached, State):
        return cached
    if user is None or not user.is_authenticated:
        return State(required=False, enrolled=False)
    policy = settings.PKIPORTAL_MFA_REQUIRED_FOR
    roles = [settings.PKIPORTAL_RA_OFFICER_GROUP, settings.PKIPORTAL_KRA_GROUP]
    row = (
        User.objects.filter(pk=user.pk)
        .annotate(
            has_role=Exists(Group.objects.filter(user=OuterRef("pk"), name__in=roles)),
            totp=Exists(TotpDevice.objects.filter(user=OuterRef("pk"), confirmed=True)),
            passkeys=Exists(WebAuthnDevice.objects.filter(user=OuterRef("pk"))),
        )
        .values_list("is_staff", "is_superuser", "has_role", "totp", "passkeys")
        .first()
    )
    if row is None:
        return State(required=False, enrolled=False)
    is_staff, is_superuser, has_role, totp, passkeys = row
    # Who holds a role, as PKIPORTAL_MFA_REQUIRED_FOR=officers and the key policies' "roles"
    # mean it: staff, superusers, RA officers and key recovery agents.
    holds_role = bool(is_staff or is_superuser or has_role)
    if policy == "everyone":
        required = True
    elif policy == "officers":
        required = holds_role
    else:
        required = False
    keys_only = _covers(settings.PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR, holds_role)
    state = State(
        # Whom only a key may unlock must have a second factor, whatever the MFA policy.
        required=required or keys_only,
        enrolled=bool(totp or passkeys),
        totp=bool(totp),
        passkeys=bool(passkeys),
        attestation=_covers(settings.PKIPORTAL_WEBAUTHN_ATTESTATION_FOR, holds_role),
        keys_only=keys_only,
    )
    user._pkiportal_mfa_state = state
    return state


def _covers(policy_for: str, holds_role: bool) -> bool:
    """Whether a security-key policy set to ``policy_for`` ("", "roles" or "everyone":
    PKIPORTAL_WEBAUTHN_ATTESTATION_FOR, PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR) covers a
    person: one rule for both, so that they never disagree on who holds a role."""
    return policy_for == "everyone" or (policy_for == "roles" and holds_role)


def forget_state(user: Any) -> None:
    if hasattr(user, "_pkiportal_mfa_state"):
        del user._pkiportal_mfa_state


def session_verified(request: HttpRequest) -> bool:
    """Whether this session confirmed a second factor (here, or at its identity provider)."""
    user = request.user
    if getattr(request, "session", None) is not None and request.session.get(SSO_VERIFIED):
        return True
    is_verified = getattr(user, "is_verified", None)
    return bool(is_verified is not None and is_verified())


def session_needs_second_step(request: HttpRequest) -> bool:
    """Signed in, asked for a second factor, and not yet confirmed in this session."""
    user = request.user
    if not user.is_authenticated or session_verified(request):
        return False
    return state_for(user).asked


def session_needs_approved_key(request: HttpRequest) -> bool:
    """Verified with a security key that did not prove an approved model, by someone the
    attestation policy covers (a key from before the policy, or before they gained their
    role): the session reaches only adding an approved key (accounts.middleware). The key
    still proves the person (no password alone adds the new key), but unlocks nothing
    else. An app, a backup code or a single sign-on the provider vouched for are not keys:
    the policy says which keys count, not that a key must be used (that is
    session_needs_security_key's)."""
    if not settings.PKIPORTAL_WEBAUTHN_ATTESTATION_FOR:
        return False
    user = request.user
    if not user.is_authenticated or not session_verified(request):
        return False
    if getattr(request, "session", None) is not None and request.session.get(SSO_VERIFIED):
        return False
    device = getattr(user, "otp_device", None)  # OTPMiddleware's, or django_otp.login's
    if not isinstance(device, WebAuthnDevice) or device.approved:
        return False
    return state_for(user).attestation


def session_needs_security_key(request: HttpRequest) -> bool:
    """Verified, by someone security keys only covers (PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR),
    with something other than one of their keys: the app, a backup code, or a single
    sign-on (the portal cannot tell what the provider checked). It still proves the person,
    so a lost key is no lock-out, but the session reaches only the account page, to
    confirm with a key there or add one (accounts.middleware); their role stays shut."""
    if not settings.PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR:
        return False
    user = request.user
    if not user.is_authenticated or not session_verified(request):
        return False
    session = getattr(request, "session", None)
    single_sign_on = session is not None and bool(session.get(SSO_VERIFIED))
    device = getattr(user, "otp_device", None)  # OTPMiddleware's, or django_otp.login's
    if not single_sign_on and isinstance(device, WebAuthnDevice):
        return False  # whether the key is of an approved model: session_needs_approved_key
    return state_for(user).keys_only


def session_restriction(request: HttpRequest) -> str:
    """Why this verified session opens only the account page, as the API's ``missing``
    code: "approved_security_key" (a key of no approved model), "security_key" (no key,
    where only a key will do), or "" (nothing held back)."""
    if session_needs_approved_key(request):
        return "approved_security_key"
    if session_needs_security_key(request):
        return "security_key"
    return ""


def mark_verified_with_key(request: HttpRequest, device: WebAuthnDevice) -> None:
    """A session held to the account page (session_restriction) confirmed one of the
    person's keys there, or added one: the key is now what verified it, not the app, a
    backup code or a single sign-on before. Not a sign-in: the recent sign-in stays the
    first step's."""
    request.session.pop(SSO_VERIFIED, None)
    mark_verified(request, device)


def second_step_url_name(user: Any) -> str:
    """Where a session that has not done its second step goes: the code or key of someone
    who has one; else setting one up, a security key for whom only a key will do."""
    state = state_for(user)
    if state.enrolled:
        return "accounts:mfa-verify"
    return "accounts:passkey-setup" if state.keys_only else "accounts:mfa-setup"


@dataclass(frozen=True)
class Verification:
    """What confirmed a session's second factor, as an API token it mints records it."""

    kind: str = SecondFactorKind.NONE
    key_model: str = ""  # the key's AAGUID, when it proved its model (attested)


def session_verification(request: HttpRequest) -> Verification:
    """What confirmed this session's second factor (none: not verified). A token minted in
    it keeps this, so that the attestation policy can weigh the token as it weighs the
    session (token_needs_approved_key), also after the policy changes."""
    if not session_verified(request):
        return Verification()
    if getattr(request, "session", None) is not None and request.session.get(SSO_VERIFIED):
        return Verification(SecondFactorKind.SINGLE_SIGN_ON)
    device = getattr(request.user, "otp_device", None)
    if isinstance(device, WebAuthnDevice):
        if device.attested:
            return Verification(SecondFactorKind.ATTESTED_KEY, device.aaguid.lower())
        return Verification(SecondFactorKind.SECURITY_KEY)
    if isinstance(device, BackupCodeDevice):
        return Verification(SecondFactorKind.BACKUP_CODE)
    if isinstance(device, TotpDevice):
        return Verification(SecondFactorKind.APP)
    return Verification(SecondFactorKind.NONE)  # verified by nothing we know: not counted


def code_verification(check_kind: str) -> Verification:
    """What a code checked by check_code() was (its Check.kind): HTTP basic's second factor."""
    if check_kind == "totp":
        return Verification(SecondFactorKind.APP)
    return Verification(SecondFactorKind.BACKUP_CODE)


def token_needs_approved_key(user: Any, *, kind: str, key_model: str) -> bool:
    """session_needs_approved_key for an API token minted with a second factor (``kind``,
    and ``key_model`` for a key that proved its model): whoever the attestation policy
    covers gets no role power from a token minted with a key of no approved model, nor
    from one whose minting did not record what confirmed it (older than the record), as
    their session would reach only /account/. An app, a backup code or a single sign-on
    count as they do for the session."""
    if not settings.PKIPORTAL_WEBAUTHN_ATTESTATION_FOR:
        return False
    if kind in (
        SecondFactorKind.APP,
        SecondFactorKind.BACKUP_CODE,
        SecondFactorKind.SINGLE_SIGN_ON,
    ):
        return False
    if kind == SecondFactorKind.ATTESTED_KEY and model_allowed(key_model):
        return False
    return state_for(user).attestation


def token_needs_security_key(user: Any, *, kind: str) -> bool:
    """session_needs_security_key for an API token minted with a second factor (``kind``):
    whomever security keys only covers gets no role power from a token whose minting was
    confirmed by the app, a backup code (HTTP basic's X-OTP-Code included) or a single
    sign-on, nor from one older than the record of what confirmed it. Whether its key was
    of an approved model is token_needs_approved_key's."""
    if not settings.PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR:
        return False
    if kind in (SecondFactorKind.SECURITY_KEY, SecondFactorKind.ATTESTED_KEY):
        return False
    return state_for(user).keys_only


def note_sign_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """At every sign-in (password, directory or single sign-on) the second step starts
    anew: a second factor confirmed earlier in this browser does not carry over to a new
    password sign-in (the "sudo" re-sign-in for API tokens included). A single sign-on the
    provider says used a second factor counts, per PKIPORTAL_MFA_TRUST_SINGLE_SIGN_ON."""
    if not isinstance(request, HttpRequest) or getattr(request, "session", None) is None:
        return
    session = request.session
    session.pop(DEVICE_ID_SESSION_KEY, None)
    session.pop(SSO_VERIFIED, None)
    amr = session.pop(SSO_AMR, None)
    if _single_sign_on(session.get(BACKEND_SESSION_KEY, "")) and _trusted(amr):
        session[SSO_VERIFIED] = True
    if hasattr(request, "user") and getattr(request.user, "pk", None) == user.pk:
        # OTPMiddleware's lazily loaded device of the earlier sign-in, if it was loaded.
        request.user.otp_device = None  # type: ignore[union-attr]  # django-otp's, untyped


def _single_sign_on(backend_path: str) -> bool:
    if not backend_path:
        return False
    try:
        from mozilla_django_oidc.auth import OIDCAuthenticationBackend

        from django.utils.module_loading import import_string
    except ImportError:
        return False
    try:
        backend = import_string(backend_path)
    except ImportError:
        return False
    return isinstance(backend, type) and issubclass(backend, OIDCAuthenticationBackend)


def _trusted(amr: Any) -> bool:
    trust = settings.PKIPORTAL_MFA_TRUST_SINGLE_SIGN_ON
    if trust == "always":
        return True
    if trust == "never":
        return False
    return isinstance(amr, list) and any(
        isinstance(method, str) and method in SECOND_FACTOR_AMR for method in amr
    )


def mark_verified(request: HttpRequest, device: Any, *, sign_in: bool = False) -> None:
    """The session confirmed a code: a new session key (the privilege changed). Only the
    sign-in's second step (``sign_in``) counts as the sign-in for actions that ask for a
    recent one (API tokens, managing the second factor): a set-up must not, or a stolen
    session could set up an app of its own and so make itself "recently signed in"."""
    django_otp.login(request, device)
    request.session.cycle_key()
    if sign_in:
        request.session[recent_sign_in.SIGNED_IN_AT] = timezone.now().isoformat()


# --- devices ----------------------------------------------------------------------------


def confirmed_totp(user: Any) -> TotpDevice | None:
    return TotpDevice.objects.filter(user=user, confirmed=True).first()


def has_any_device(user: Any) -> bool:
    """An app, confirmed or not, backup codes or a security key: what an administrator's
    reset removes."""
    return (
        TotpDevice.objects.filter(user=user).exists()
        or BackupCodeDevice.objects.filter(user=user).exists()
        or WebAuthnDevice.objects.filter(user=user).exists()
    )


def backup_codes(user: Any) -> BackupCodeDevice | None:
    return BackupCodeDevice.objects.filter(user=user).first()


def has_backup_codes(user: Any) -> bool:
    """Whether the person has an unused backup code: a set with every code used is none
    (nothing to ask them for, and what a new key or app should replace)."""
    device = backup_codes(user)
    return device is not None and bool(device.digests)


def _codes_of(user: Any) -> tuple[bool, bool]:
    """What a code the person types can be: (a code of their app, an unused backup code)."""
    return confirmed_totp(user) is not None, has_backup_codes(user)


def current_code_label(user: Any) -> str:
    """The label of a field asking for a current code: only what the person has (someone
    with only security keys has no app to take a code from)."""
    app, codes = _codes_of(user)
    if app and codes:
        return _("A code from your current app, or an unused backup code")
    if app:
        return _("A code from your current app")
    return _("An unused backup code")


def code_refused_message(user: Any) -> str:
    """Why a current code was refused, in terms of what the person has."""
    app, codes = _codes_of(user)
    if app and codes:
        return _("That is not a current code of your authenticator app, nor an unused backup code.")
    if app:
        return _("That is not a current code of your authenticator app.")
    if codes:
        return _("That is not an unused backup code.")
    return _(
        "You have no authenticator app and no backup code left: confirm with one of your "
        "security keys instead."
    )


def sign_in_code_refused_message(user: Any) -> str:
    """The sign-in's second step: a wrong code, or one used already, and what to enter."""
    app, codes = _codes_of(user)
    if app and codes:
        return _(
            "That code is not right, or was used already: enter the code your authenticator "
            "app shows now, or an unused backup code."
        )
    if app:
        return _(
            "That code is not right, or was used already: enter the code your authenticator "
            "app shows now."
        )
    return _("That code is not right, or was used already: enter an unused backup code.")


def lock_person(user: User) -> None:
    """Hold the person's row until the transaction ends. Every change to someone's second
    factors or backup codes takes it first, so two at once run one after the other and
    each sees what the other left (the callers say what each would otherwise miss)."""
    User.objects.select_for_update().filter(pk=user.pk).first()


def has_factor(user: Any) -> bool:
    """A confirmed app or a security key: what backup codes stand in for."""
    return (
        TotpDevice.objects.filter(user=user, confirmed=True).exists()
        or WebAuthnDevice.objects.filter(user=user).exists()
    )


def pending_totp(request: HttpRequest) -> TotpDevice:
    """The authenticator app this session is setting up: the same seed until it is
    confirmed (a reloaded page shows the QR code already scanned), for PENDING_MINUTES.

    Each session has its own: another session of the same person (whoever else knows the
    password) never sees the seed this one will confirm. Set-ups left unfinished for longer
    are deleted as new ones start.
    """
    user = request.user
    if not isinstance(user, User):  # the set-up pages are for signed-in people only
        raise SecondFactorError(gettext_lazy("Sign in to set up an authenticator app."))
    fresh = _pending_fresh(TotpDevice.objects.filter(user=user, confirmed=False))
    pending = fresh.filter(pk=request.session.get(PENDING_SESSION_KEY, -1)).first()
    if pending is not None and not opens(pending):
        pending.delete()  # sealed under a key since lost: a new seed, not a crash
        pending = None
    if pending is None:
        TotpDevice.objects.filter(confirmed=False, created_at__lt=_pending_cutoff()).delete()
        pending = TotpDevice.objects.create(
            user=user,
            name="Authenticator app",
            confirmed=False,
            sealed_key=seal(secrets.token_bytes(SEED_BYTES)),
        )
        request.session[PENDING_SESSION_KEY] = pending.pk
    return pending


def _pending_cutoff() -> Any:
    return timezone.now() - timedelta(minutes=PENDING_MINUTES)


def _pending_fresh(devices: QuerySet[TotpDevice]) -> QuerySet[TotpDevice]:
    return devices.filter(created_at__gte=_pending_cutoff())


def base32_secret(device: TotpDevice) -> str:
    """The seed for typing into an app, in groups of four (apps ignore the spaces)."""
    text = base64.b32encode(unseal(bytes(device.sealed_key))).decode("ascii").rstrip("=")
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def otpauth_url(device: TotpDevice) -> str:
    """The Key URI Format authenticator apps read from a QR code."""
    issuer = f"{settings.PKIPORTAL_ORGANIZATION_NAME} PKI".replace(":", "")
    label = f"{issuer}:{device.user.get_username()}"
    params = {
        "secret": base64.b32encode(unseal(bytes(device.sealed_key))).decode().rstrip("="),
        "issuer": issuer,
        "algorithm": "SHA1",
        "digits": TotpDevice.DIGITS,
        "period": TotpDevice.STEP,
    }
    return f"otpauth://totp/{quote(label)}?{urlencode(params, quote_via=quote)}"


def qr_svg(url: str) -> str:
    """The QR code as inline SVG: no image request, no script, fine under our CSP."""
    return segno.make(url, error="m").svg_inline(
        scale=5, border=4, dark="#000", light="#fff", title=_("QR code for your authenticator app")
    )


# Error reports (pkiportal.errors) hide these locals: typed codes and codes made. Each
# list also covers the frames below it that have no list of their own (the reporter uses
# the nearest decorated caller's): verify_token's token and text, backup_code_match's code
# and normal, _digest's code.
TYPED_CODE_LOCALS = ("code", "text", "digits", "token", "normal", "current_code", "codes")


@dataclass(frozen=True)
class Confirmation:
    codes: list[str] | None = None  # the new backup codes, once confirmed
    wrong: str = ""  # "code" (the new app's) or "current_code" (the existing device's)
    throttled_until: Any = None
    problem: str = ""  # why the current code could not be checked at all


@sensitive_variables(*TYPED_CODE_LOCALS)
def totp_confirm(
    *,
    user: User,
    device: TotpDevice,
    code: str,
    current_code: str | None = None,
    current_required: bool = False,
    source_address: str | None,
) -> Confirmation:
    """Confirm a new authenticator app with its first code; it replaces any earlier one,
    and fresh backup codes replace the old (returned, to be shown once).

    Replacing an app takes a current code (or a backup code) of the existing device as
    well: a stolen session must not swap the officer's phone for the thief's; so does
    ``current_required`` (someone with only keys who confirmed none just now: a backup
    code). The new code is checked first, so a wrong one does not use up a backup code.
    """
    with transaction.atomic():
        # The person's row first, as passkeys.register() and backup_codes_regenerate()
        # lock it: a first key added at the same moment is seen (it then makes no second
        # set of backup codes), instead of both making and showing a set, one dead.
        lock_person(user)
        locked = (
            _pending_fresh(TotpDevice.objects.select_for_update())
            .filter(pk=device.pk, user=user)
            .first()
        )
        if locked is None or locked.confirmed:
            raise SecondFactorError(gettext_lazy("This set-up has expired; start again."))
        if not locked.verify_token(code):
            return Confirmation(wrong="code")
        existing = TotpDevice.objects.filter(user=user, confirmed=True).exclude(pk=locked.pk)
        if current_required or existing.exists():
            check, _device = check_code(
                user=user, code=current_code or "", source_address=source_address, via="replace"
            )
            if not check.ok:
                return Confirmation(
                    wrong="current_code",
                    throttled_until=check.throttled_until,
                    problem=check.problem,
                )
        replaced = TotpDevice.objects.filter(user=user).exclude(pk=locked.pk).delete()[0] > 0
        locked.confirmed = True
        locked.save(update_fields=["confirmed"])
        codes = _replace_backup_codes(user)
        audit_record(
            action="mfa.device_add",
            actor=user,
            target=user,
            source_address=source_address,
            detail={"kind": "totp", "replaced": replaced, "backup_codes": len(codes)},
        )
        _tell(user, "replaced" if replaced else "added", source_address)
    forget_state(user)
    device.refresh_from_db()
    return Confirmation(codes=codes)


def _tell(user: User, change: str, source_address: str | None) -> None:
    """Mail the person: a second factor changed behind their back is how they learn of it."""
    from enrollment.notifications import second_factor_changed

    second_factor_changed(user, change=change, source_address=source_address)


class CodeRefused(SecondFactorError):
    """The current code asked for before changing a second factor was not right."""

    def __init__(self, message: str, *, throttled_until: Any = None) -> None:
        super().__init__(message)
        self.throttled_until = throttled_until


@sensitive_variables(*TYPED_CODE_LOCALS)
def _require_current_code(
    *, user: User, current_code: str, source_address: str | None, via: str
) -> None:
    """Changing a second factor takes a code of it, as signing in does: a session stolen
    after its sign-in has none. Wrong codes are throttled and audited as at sign-in."""
    check, _device = check_code(
        user=user, code=current_code, source_address=source_address, via=via
    )
    if check.ok:
        return
    if check.throttled_until is not None:
        raise CodeRefused(
            wait_message(check.throttled_until), throttled_until=check.throttled_until
        )
    raise CodeRefused(check.problem or code_refused_message(user))


@sensitive_variables(*TYPED_CODE_LOCALS)
def _replace_backup_codes(user: User) -> list[str]:
    codes = new_backup_codes()
    BackupCodeDevice.objects.update_or_create(
        user=user,
        defaults={
            "name": "Backup codes",
            "digests": [backup_code_digest(code) for code in codes],
            "throttling_failure_count": 0,
            "throttling_failure_timestamp": None,
        },
    )
    return codes


def check_backup_codes_allowed(user: User) -> None:
    """Backup codes stand in for an app or a security key, never for nothing: someone with
    neither gets none (asked before a proof is spent on making them, and again after)."""
    forget_state(user)
    if not state_for(user).enrolled:
        raise SecondFactorError(
            gettext_lazy("Set up an authenticator app or a security key first.")
        )


@sensitive_variables(*TYPED_CODE_LOCALS)
def backup_codes_regenerate(*, user: User, source_address: str | None) -> list[str]:
    """New backup codes for old, whatever the person's second factor (an app, keys or
    both); the caller checked a current code or a key confirmed just now. Audited and
    mailed; the codes are returned to be shown once."""
    with transaction.atomic():
        # The person's row, as removals lock it: a last key removed meanwhile is seen.
        lock_person(user)
        check_backup_codes_allowed(user)
        codes = _replace_backup_codes(user)
        audit_record(
            action="mfa.backup_codes_regenerate",
            actor=user,
            target=user,
            source_address=source_address,
            detail={"backup_codes": len(codes)},
        )
        _tell(user, "backup_codes", source_address)
    return codes


def remove_devices(user: User) -> int:
    """Every second factor of the person's: their app, security keys and backup codes."""
    removed = TotpDevice.objects.filter(user=user).delete()[0]
    removed += WebAuthnDevice.objects.filter(user=user).delete()[0]
    BackupCodeDevice.objects.filter(user=user).delete()
    forget_state(user)
    return removed


@sensitive_variables(*TYPED_CODE_LOCALS)
def second_factor_remove(
    *,
    user: User,
    current_code: str,
    source_address: str | None,
    session: SessionBase | None = None,
) -> bool:
    """A person removes their own authenticator app, given a current code of it. Their
    security keys stay (they are removed one by one), and so do their backup codes while a
    key does (drop_backup_codes_without_factor); someone whose role needs a second factor
    may remove the app only while a key remains. Their other
    sessions end (as a password change ends them): one signed in with the app must not
    carry on without it; ``session``, the one removing it, stays signed in.
    Returns whether keys remain."""
    if confirmed_totp(user) is None:
        raise SecondFactorError(gettext_lazy("You have no authenticator app to remove."))
    _refuse_leaving_nothing(user)
    _require_current_code(
        user=user, current_code=current_code, source_address=source_address, via="remove"
    )
    with transaction.atomic():
        # The person's row, as accounts.passkeys.remove() locks it: a key removed at the
        # same time is counted after, not beside, this.
        lock_person(user)
        forget_state(user)
        _refuse_leaving_nothing(user)
        removed = TotpDevice.objects.filter(user=user).delete()[0]
        codes = drop_backup_codes_without_factor(user)
        if not removed:
            raise SecondFactorError(gettext_lazy("You have no authenticator app to remove."))
        keys = WebAuthnDevice.objects.filter(user=user).count()
        ended = sessions_end(user, keep=session)
        audit_record(
            action="mfa.device_remove",
            actor=user,
            target=user,
            source_address=source_address,
            detail={
                "kind": "totp",
                "backup_codes": bool(codes),
                "security_keys_kept": keys,
                "via": "self",
                "sessions_ended": ended,
            },
        )
        _tell(user, "app_removed" if keys else "removed", source_address)
    forget_state(user)
    return bool(keys)


def drop_backup_codes_without_factor(user: User) -> bool:
    """Backup codes belong to the second factor as a whole, not to the app: they stay
    while an app or a security key does, and go with the last of them (returns whether
    they went). Left behind, they would be a second factor of their own: one an officer
    could keep, and one a password thief could use after the person thought it gone."""
    if has_factor(user):
        return False
    return BackupCodeDevice.objects.filter(user=user).delete()[0] > 0


def _refuse_leaving_nothing(user: User) -> None:
    if state_for(user).required and not WebAuthnDevice.objects.filter(user=user).exists():
        raise SecondFactorError(
            gettext_lazy(
                "Your role needs a second factor: you can replace your authenticator app, or "
                "add a security key first, not remove it."
            )
        )


def may_reset(actor: Any, target: Any) -> bool:
    """Whoever may change the account in the admin may reset its second factor (they could
    set its password as well), never their own, and only a superuser a privileged account's
    (accounts.privilege)."""
    return bool(
        actor.is_authenticated
        and actor.is_active
        and actor.is_staff
        and actor.has_perm("accounts.change_user")
        and actor.pk != target.pk
        and may_administer(actor, target)
    )


def second_factor_reset(*, actor: User, target: User, source_address: str | None) -> bool:
    """An administrator removes someone's lost second factor; they set up a new one at
    their next sign-in. Every session of theirs ends, whatever was removed: whoever holds
    the lost phone may hold a signed-in browser too. Audited; returns whether there was
    anything to remove."""
    if not may_reset(actor, target):
        raise SecondFactorError(gettext_lazy("You may not reset this account's second factor."))
    with transaction.atomic():
        removed = remove_devices(target)
        ended = sessions_end(target)
        audit_record(
            action="mfa.reset",
            actor=actor,
            target=target,
            source_address=source_address,
            detail={"removed": bool(removed), "via": "admin", "sessions_ended": ended},
        )
        if removed:
            _tell(target, "reset", source_address)
    return bool(removed)


def seconds_until(moment: datetime | None) -> int:
    """Whole seconds (at least 1) a throttled person waits, for messages and Retry-After."""
    if moment is None:
        return 1
    return max(1, math.ceil((moment - timezone.now()).total_seconds()))


def wait_in_words(seconds: int) -> str:
    """How long a throttled person waits, as pages and the API say it: in seconds up to
    two minutes, then in whole minutes, rounded up."""
    if seconds < 120:
        return plurals.seconds(seconds)
    return plurals.minutes(math.ceil(seconds / 60))


def wait_message(until: datetime | None) -> str:
    """What a page says to a code sent while its device waits after a wrong one: how long,
    and that this code was neither checked nor counted (after one typo the wait is a
    second or two, and the right code typed at once must not read as a lock-out)."""
    wait = wait_in_words(seconds_until(until))
    return _(
        "Wait %(wait)s and try again: after a wrong code, the next one is checked only after "
        "a pause, longer after each wrong one. This code was not checked and does not count "
        "as wrong."
    ) % {"wait": wait}


@dataclass(frozen=True)
class Check:
    ok: bool
    throttled_until: Any = None  # a datetime when refused for too many wrong codes
    kind: str = ""  # "totp" or "backup_code"
    backup_codes_left: int | None = None
    problem: str = ""  # the device cannot be checked at all (its seed's key is lost)
    replayed: bool = False  # a code of the app used already: refused, not counted as wrong
    # After a wrong code: when the device checks the next (a page waits with its button).
    next_try_at: Any = None


@sensitive_variables(*TYPED_CODE_LOCALS)
def check_code(*, user: User, code: str, source_address: str | None, via: str) -> tuple[Check, Any]:
    """Check a code from the person's authenticator app or one of their backup codes.

    Each device throttles wrong codes (django-otp: 1, 2, 4 ... seconds, at most
    MAX_THROTTLE_SECONDS); a wrong code is
    audited (mfa.verify, failure) as it comes, a refusal while throttled is not (it costs
    the guesser nothing and would only flood the trail). A code of the app used already
    (TotpDevice.replayed) is refused without counting as wrong. Returns the check and the
    device.
    """
    text = code.strip()
    digits = text.replace(" ", "")
    six_digits = len(digits) == TotpDevice.DIGITS and digits.isascii() and digits.isdigit()
    # Six digits are an app's code, for someone with an app; for someone with only keys
    # they are a guess at a backup code, so their throttle counts it.
    totp = confirmed_totp(user) if six_digits else None
    kind = "totp" if totp is not None else "backup_code"
    device: Any = totp if totp is not None else backup_codes(user)
    if device is None:
        check = Check(ok=False, kind=kind)
    else:
        allowed, info = device.verify_is_allowed()
        if not allowed:
            return Check(
                ok=False, kind=kind, throttled_until=(info or {}).get("locked_until")
            ), None
        with transaction.atomic():
            # As django_otp.verify_token, with the row locked; and the throttle asked again
            # under the lock: of a burst of wrong codes read as allowed above, the first
            # counts and the rest are refused as throttled (429, no audit event each).
            locked = type(device).objects.select_for_update().filter(pk=device.pk).first()
            if locked is None:
                return Check(ok=False, kind=kind), None
            allowed, info = locked.verify_is_allowed()
            if not allowed:
                return Check(
                    ok=False, kind=kind, throttled_until=(info or {}).get("locked_until")
                ), None
            try:
                ok = locked.verify_token(digits if kind == "totp" else text)
            except SecondFactorError as exc:  # the seed's key is lost: nothing to check
                return Check(ok=False, kind=kind, problem=exc.message), None
            if not ok and getattr(locked, "replayed", False):
                # A code used already (a client sending the same header again): no wrong
                # code, so neither throttled nor audited as one.
                return Check(ok=False, kind=kind, replayed=True), None
        verified = locked if ok else None
        if verified is not None:
            left = None
            if kind == "backup_code":
                left = len(verified.digests)
                audit_record(
                    action="mfa.backup_code_use",
                    actor=user,
                    target=user,
                    source_address=source_address,
                    detail={"left": left, "via": via},
                )
            return Check(ok=True, kind=kind, backup_codes_left=left), verified
        check = Check(ok=False, kind=kind)
    failures = 0
    if device is not None:
        device.refresh_from_db(fields=["throttling_failure_count", "throttling_failure_timestamp"])
        failures = device.throttling_failure_count
        _allowed, info = device.verify_is_allowed()
        check = replace(check, next_try_at=(info or {}).get("locked_until"))
    audit_record(
        action="mfa.verify",
        actor=user,
        target=user,
        outcome="failure",
        source_address=source_address,
        detail={"kind": kind, "failures": failures, "via": via},
    )
    note_lockout(user, kind=kind, failures=failures, source_address=source_address)
    return check, None


def note_lockout(user: User, *, kind: str, failures: int, source_address: str | None) -> None:
    """At LOCKOUT_FAILURES refusals in a row (wrong codes, refused security-key answers),
    and again after each LOCKOUT_REMINDER_FAILURES more (the count only grows until a
    right one): someone with the password is guessing, one code every quarter of an hour,
    about 1 % a month against a six-digit code. The person and the trail learn of it, not
    once but every day it goes on."""
    past = failures - LOCKOUT_FAILURES
    if past < 0 or past % LOCKOUT_REMINDER_FAILURES:
        return
    audit_record(
        action="mfa.lockout",
        actor=user,
        target=user,
        outcome="failure",
        source_address=source_address,
        detail={"kind": kind, "failures": failures, "wait_seconds": MAX_THROTTLE_SECONDS},
    )
    _tell(user, "locked", source_address)
