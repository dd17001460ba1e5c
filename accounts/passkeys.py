"""Security keys and passkeys (WebAuthn) as a second factor, beside the authenticator app.

py_webauthn builds the options and checks what the browser returns (CBOR, COSE, the
signature, the origin and the relying party id); this module keeps the challenges and the
credentials. A challenge lives in the session that asked for it, for one purpose, is used
once (taken out before it is checked) and expires after CHALLENGE_SECONDS. An assertion
whose signature counter did not grow is a copy of the key: refused and audited.

A passkey is phishing-resistant where a code is not: the browser signs only for the
portal's own origin (PKIPORTAL_WEBAUTHN_ORIGINS) and relying party id.

Attestation (PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS): for the people the policy covers, a new
key must prove its model: a statement from its maker ("direct"), checked by py_webauthn
against the configured roots, and, where the imported FIDO metadata lists roots for the
model the key claims, leading to one of those too; of a listed AAGUID when a list is given.
"none" and self attestation prove nothing and are refused; nothing is stored for a refused
key.
"""

from __future__ import annotations

import json
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from asn1crypto.core import OctetString
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    base64url_to_bytes,
    bytes_to_base64url,
    parse_attestation_object,
    parse_authentication_credential_json,
    validate_certificate_chain,
)
from webauthn.helpers.exceptions import InvalidCertificateChain
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AttestationFormat,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)
from webauthn.registration.verify_registration_response import VerifiedRegistration

from cryptography import x509

from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext_lazy
from django.views.decorators.debug import sensitive_variables

from accounts import fido_metadata, mfa
from accounts.models import WebAuthnDevice
from accounts.sessions import sessions_end
from enrollment.audit import audit_record
from enrollment.exceptions import Message
from pkiportal.attestation import chains_to_anchor

CHALLENGE_SESSION_KEY = "pkiportal_webauthn_challenge"
CHALLENGE_SECONDS = 300
TIMEOUT_MS = 120_000  # what the browser gives the person to touch the key
# A session that, already verified, confirmed a security key again (to change its second
# factor): when, as an ISO time; used once, within CONFIRMED_SECONDS.
CONFIRMED_SESSION_KEY = "pkiportal_webauthn_confirmed"
CONFIRMED_SECONDS = 300
NAME_MAX = 64
# A credential id is at most 1023 bytes (WebAuthn 5.1): longer ones would not fit the column.
CREDENTIAL_ID_MAX_BYTES = 1023
_TRANSPORTS = {transport.value for transport in AuthenticatorTransport}


class PasskeyError(mfa.SecondFactorError):
    """A security-key ceremony refused; the message is safe to show."""


class AttestationRefused(PasskeyError):
    """A new key that does not prove an approved model, for someone the policy covers."""


# Why a key was refused under the attestation policy, as the person reads it.
ATTESTATION_NONE = _(
    "This security key did not show its make and model, which your organisation requires: "
    "when the browser asks, allow it to share them, or use an approved key."
)
ATTESTATION_SELF = _(
    "This security key vouches only for itself, not through its maker (as passkeys kept "
    "by a phone or a password manager do): your organisation requires a hardware key of "
    "an approved model."
)
ATTESTATION_CHAIN = _(
    "This security key's maker is not one your organisation approved (its attestation "
    "does not lead to their certificates): use an approved key; your IT service desk "
    "knows which models."
)
ATTESTATION_MISMATCH = _(
    "This security key claims to be another model than its maker's certificate names, so "
    "its model cannot be trusted: use an approved key; your IT service desk knows which."
)
ATTESTATION_MAKER = _(
    "This security key's certificate is not one its claimed model's maker issues (the FIDO "
    "metadata lists other certificates for that model), so its model cannot be trusted: use "
    "an approved key; your IT service desk knows which."
)
ATTESTATION_MODEL = _(
    "This security key's model is not on your organisation's list of approved keys: use "
    "one of the approved models; your IT service desk knows which."
)
ATTESTATION_COMPROMISED = _(
    "The FIDO Alliance reports this security key's model as %(report)s. Your organisation no "
    "longer accepts it: use another model; your IT service desk knows which."
)


class Throttled(PasskeyError):
    """Too many refused answers: no new challenge until ``until``."""

    def __init__(self, until: Any) -> None:
        wait = mfa.wait_in_words(mfa.seconds_until(until))
        super().__init__(
            _("Too many refused security-key answers: wait %(wait)s and try again."),
            params={"wait": wait},
        )
        self.throttled_until = until


# --- the relying party ------------------------------------------------------------------


def rp_id() -> str:
    return str(settings.PKIPORTAL_WEBAUTHN_RP_ID)


def origins() -> list[str]:
    return list(settings.PKIPORTAL_WEBAUTHN_ORIGINS)


def origin_elsewhere(request: HttpRequest) -> str | None:
    """Where security keys work, when this page was opened at another origin (the demo at
    http://127.0.0.1:8000 while the relying party is localhost): the browser would refuse
    with a bare "invalid domain", so the page points there instead. None when here."""
    allowed = origins()
    if not allowed or f"{request.scheme}://{request.get_host()}".lower() in allowed:
        return None
    return allowed[0]


def user_handle(user: Any) -> bytes:
    """An opaque, stable handle for the person (WebAuthn user.id): no name, no e-mail."""
    return salted_hmac("pkiportal.webauthn.user", str(user.pk)).digest()[:32]


# --- challenges -------------------------------------------------------------------------


def _store_challenge(session: SessionBase, purpose: str, challenge: bytes, **extra: Any) -> None:
    session[CHALLENGE_SESSION_KEY] = {
        "purpose": purpose,
        "challenge": bytes_to_base64url(challenge),
        "expires": (timezone.now() + timedelta(seconds=CHALLENGE_SECONDS)).isoformat(),
        **extra,
    }


def _take(session: SessionBase, key: str) -> Any:
    """session[key], removed: one use, even for two requests of the same session at once
    (the stored session row is locked and the value taken out of it; of concurrent
    requests, each holding its own copy of the session, only the first finds it)."""
    stored = session.pop(key, None)
    if isinstance(session, DatabaseSessionStore) and session.session_key:
        # The engine's own table (accounts.session_store's, or Django's db/cached_db one).
        rows = session.get_model_class().objects.select_for_update()
        with transaction.atomic():
            row = rows.filter(session_key=session.session_key).first()
            saved = session.decode(row.session_data) if row is not None else {}
            if saved.pop(key, None) is None:
                stored = None  # another request of this session took it already
            elif row is not None:
                row.session_data = session.encode(saved)
                row.save(update_fields=["session_data"])
    return stored


def _take_challenge(session: SessionBase, purpose: str) -> dict[str, Any]:
    """The session's challenge for this purpose, removed whatever the outcome (_take)."""
    stored = _take(session, CHALLENGE_SESSION_KEY)
    if not isinstance(stored, dict) or stored.get("purpose") != purpose:
        raise PasskeyError(_("No security-key request is waiting: start again."))
    try:
        expires = datetime.fromisoformat(str(stored["expires"]))
    except (KeyError, ValueError):
        raise PasskeyError(_("No security-key request is waiting: start again.")) from None
    if timezone.now() >= expires:
        raise PasskeyError(_("The security-key request expired: start again."))
    return stored


def _challenge_bytes(stored: dict[str, Any]) -> bytes:
    return base64url_to_bytes(str(stored["challenge"]))


# --- registration -----------------------------------------------------------------------


def devices(user: Any) -> list[WebAuthnDevice]:
    return list(WebAuthnDevice.objects.filter(user=user).order_by("created_at", "pk"))


def clean_name(name: Any) -> str:
    text = " ".join(name.split()) if isinstance(name, str) else ""
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text):
        # NUL and other control characters: PostgreSQL refuses a NUL, and none belongs in
        # a name shown in pages and mail.
        raise PasskeyError(_("The name may not contain control characters."))
    if not text:
        raise PasskeyError(_("Give the security key a name (e.g. “Blue key”, “Laptop”)."))
    if len(text) > NAME_MAX:
        raise PasskeyError(
            _("The name is too long (at most %(max)d characters)."), params={"max": NAME_MAX}
        )
    return text


def check_room(user: Any) -> list[WebAuthnDevice]:
    """The person's keys, refused when they have as many as they may (asked before a
    proof is spent on adding another)."""
    existing = devices(user)
    if len(existing) >= WebAuthnDevice.MAX_PER_PERSON:
        raise PasskeyError(
            ngettext_lazy(
                "You have %(count)d security key: remove one first.",
                "You have %(count)d security keys: remove one first.",
                WebAuthnDevice.MAX_PER_PERSON,
            ),
            params={"count": WebAuthnDevice.MAX_PER_PERSON},
        )
    return existing


def attestation_required(user: Any) -> bool:
    """Whether a key this person adds must prove an approved model: asked afresh (a role
    granted a moment ago counts)."""
    if not settings.PKIPORTAL_WEBAUTHN_ATTESTATION_FOR:
        return False
    mfa.forget_state(user)
    return mfa.state_for(user).attestation


def registration_options(*, session: SessionBase, user: Any, name: str) -> str:
    """The options for navigator.credentials.create(), as JSON; remembers the challenge.
    Attestation is asked for ("direct") only of people the policy covers: for others the
    browser would ask leave to share the key's model, for nothing."""
    existing = check_room(user)
    required = attestation_required(user)
    options = generate_registration_options(
        rp_id=rp_id(),
        rp_name=f"{settings.PKIPORTAL_ORGANIZATION_NAME} PKI",
        user_id=user_handle(user),
        user_name=user.get_username(),
        user_display_name=user.get_full_name() or user.get_username(),
        timeout=TIMEOUT_MS,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.PREFERRED,
        ),
        # Under the policy, a key added before it (not attested) may be added again, now
        # proving its model: only approved keys are excluded.
        exclude_credentials=[
            _descriptor(device) for device in existing if device.approved or not required
        ],
        attestation=(
            AttestationConveyancePreference.DIRECT
            if required
            else AttestationConveyancePreference.NONE
        ),
    )
    _store_challenge(session, "register", options.challenge, name=name, user=user.pk)
    return options_to_json(options)


@dataclass(frozen=True)
class Registration:
    device: WebAuthnDevice
    # Made with the key because the person had none (to be shown once), else empty.
    backup_codes: list[str] = field(default_factory=list)


@sensitive_variables(*mfa.TYPED_CODE_LOCALS)
def register(
    *, session: SessionBase, user: Any, credential: Any, source_address: str | None
) -> Registration:
    """Check the browser's answer to the session's registration challenge and keep the
    key; audited, and the person is mailed. A first factor (no app, no key before this
    one) comes with new backup codes, as an app's set-up gives them, replacing any left
    over; so does a key of someone without codes (keys from before keys came with them,
    or every code used): a lost key is then not a lock-out until an administrator resets
    it."""
    stored = _take_challenge(session, "register")
    if stored.get("user") != user.pk:
        raise PasskeyError(_("No security-key request is waiting: start again."))
    required = attestation_required(user)
    roots: list[bytes] = list(settings.PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS) if required else []
    try:
        verified = verify_registration_response(
            credential=_as_json(credential),
            expected_challenge=_challenge_bytes(stored),
            expected_rp_id=rp_id(),
            expected_origin=origins(),
            # Every format's chain to the configured roots (py_webauthn checks none, or
            # its own vendor roots, where a format has no roots given).
            pem_root_certs_bytes_by_fmt=(
                {fmt: list(roots) for fmt in AttestationFormat} if required else None
            ),
        )
    except Exception as exc:  # py_webauthn raises many types on hostile input: all a 400
        if required and _chain_refused(exc):
            _refused(
                user, source_address, via="register", why="attestation: chain", error=str(exc)[:200]
            )
            raise AttestationRefused(ATTESTATION_CHAIN) from None
        _refused(user, source_address, via="register", why=str(exc)[:200])
        raise PasskeyError(
            _(
                "The security key's answer could not be checked: try again, on this portal's "
                "own address."
            )
        ) from None
    if len(verified.credential_id) > CREDENTIAL_ID_MAX_BYTES:
        _refused(user, source_address, via="register", why="credential id too long")
        raise PasskeyError(_("The security key's credential id is too long: use another key."))
    attestation_format = AttestationFormat(verified.fmt).value
    if required:
        _check_attestation(verified, roots, user=user, source_address=source_address)
    transports = [
        t
        for t in (_field(credential, "response", "transports") or [])
        if isinstance(t, str) and t in _TRANSPORTS
    ]
    try:
        with transaction.atomic():
            # The person's row: of two registrations at once, one makes the backup codes.
            mfa.lock_person(user)
            first_factor = not mfa.has_factor(user)
            device = WebAuthnDevice.objects.create(
                user=user,
                name=clean_name(stored.get("name")),
                confirmed=True,
                credential_id=bytes_to_base64url(verified.credential_id),
                public_key=verified.credential_public_key,
                sign_count=verified.sign_count,
                transports=transports,
                aaguid=str(verified.aaguid)[:36],
                attested=required,  # and _check_attestation passed
                attestation_format=attestation_format[:32],
            )
            # Codes that outlived every factor (one removed in the shell, say) are not
            # revived by a first key: nobody knows who holds them. New ones, shown.
            keep = not first_factor and mfa.has_backup_codes(user)
            codes = [] if keep else mfa._replace_backup_codes(user)
            audit_record(
                action="mfa.device_add",
                actor=user,
                target=user,
                source_address=source_address,
                detail={
                    "kind": "webauthn",
                    "name": device.name,
                    "aaguid": device.aaguid,
                    "attested": device.attested,
                    "attestation_format": device.attestation_format,
                    "backup_codes": len(codes),
                },
            )
            mfa._tell(user, "key_added_backup_codes" if codes else "key_added", source_address)
    except IntegrityError:
        raise PasskeyError(_("This security key is registered already.")) from None
    mfa.forget_state(user)
    return Registration(device=device, backup_codes=codes)


def _chain_refused(exc: BaseException) -> bool:
    """Whether py_webauthn refused the answer because the attestation's certificates do
    not chain to the roots given (it raises its InvalidRegistrationResponse while handling
    an InvalidCertificateChain), not because the answer itself is bad."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, InvalidCertificateChain):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _check_attestation(
    verified: VerifiedRegistration, roots: list[bytes], *, user: Any, source_address: str | None
) -> None:
    """A verified registration's attestation, held to the policy: a statement of the
    key's maker (certificates, not "none" nor self attestation) whose chain leads to the
    configured roots, of a listed model when a list is given. The chain is checked again
    with the configured roots alone: for some formats (apple, android-key) py_webauthn
    also trusts its own vendor roots, which are not the organisation's choice.

    The model (AAGUID) is the key's own word: the configured roots prove only that some
    approved maker made the key, and a batch certificate without id-fido-gen-ce-aaguid
    (_certificate_names_model) names no model. So where the imported FIDO metadata lists
    attestation roots for the model the key claims (fido_metadata.model_anchors), the chain
    must also lead to one of them (chains_to_anchor: a root, an intermediate or the batch
    certificate, as MDS3 allows), or the key is refused: else a genuine key of one model, or
    of another approved maker, could pass for any model. This holds with or without
    PKIPORTAL_WEBAUTHN_ALLOWED_AAGUIDS: the model's name on the pages and the "model proved"
    status of the key and of its sessions' API tokens rest on the AAGUID too. Without an
    entry for the model, or with one that lists no roots, the configured roots alone speak,
    as before; keys added before are not checked again."""
    fmt = AttestationFormat(verified.fmt).value
    refusal: tuple[str, Message] | None = None
    params: dict[str, Any] = {}
    detail: dict[str, Any] = {}
    if verified.fmt == AttestationFormat.NONE:
        refusal = ("attestation: none", ATTESTATION_NONE)
    else:
        chain = parse_attestation_object(verified.attestation_object).att_stmt.x5c
        if not chain:
            refusal = ("attestation: self", ATTESTATION_SELF)
        else:
            try:
                validate_certificate_chain(x5c=chain, pem_root_certs_bytes=list(roots))
            except InvalidCertificateChain:
                refusal = ("attestation: chain", ATTESTATION_CHAIN)
            else:
                listed = fido_metadata.model_anchors(str(verified.aaguid))
                if not _certificate_names_model(chain[0], verified.aaguid):
                    refusal = (
                        "attestation: model differs from its certificate",
                        ATTESTATION_MISMATCH,
                    )
                elif listed is not None and not chains_to_anchor(
                    chain, listed.anchors, now=timezone.now()
                ):
                    refusal = ("attestation: not the model's roots", ATTESTATION_MAKER)
                    if listed.unreadable:
                        detail["model_roots_unreadable"] = listed.unreadable
    allowed = settings.PKIPORTAL_WEBAUTHN_ALLOWED_AAGUIDS
    model = str(verified.aaguid).lower()
    if refusal is None and allowed and model not in allowed:
        refusal = ("attestation: model not allowed", ATTESTATION_MODEL)
    if refusal is None and model in (compromised := fido_metadata.compromised_models()):
        refusal = ("attestation: model reported compromised", ATTESTATION_COMPROMISED)
        params = {"report": fido_metadata.compromise(compromised[model])}
    if refusal is None:
        return
    why, message = refusal
    _refused(
        user, source_address, via="register", why=why, fmt=fmt, aaguid=verified.aaguid, **detail
    )
    raise AttestationRefused(message, params=params)


# id-fido-gen-ce-aaguid: the model a key maker's batch certificate speaks for.
FIDO_GEN_CE_AAGUID = x509.ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4")


def _certificate_names_model(certificate_der: bytes, aaguid: str | bytes) -> bool:
    """WebAuthn 8.2.1: where the attestation certificate names a model (its
    id-fido-gen-ce-aaguid extension, an OCTET STRING), it must be the one the key says it
    is. py_webauthn does not check it; without it, the AAGUID list would trust the key's
    word for its model beside a genuine certificate of another. Without the extension the
    chain alone speaks for the key, as the specification allows: to the configured roots,
    and to the model's own where the imported metadata lists them (_check_attestation)."""
    try:
        extension = x509.load_der_x509_certificate(
            certificate_der
        ).extensions.get_extension_for_oid(FIDO_GEN_CE_AAGUID)
    except x509.ExtensionNotFound:
        return True
    except ValueError:
        return False
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        return False
    try:
        named = OctetString.load(value.value, strict=True).native
    except ValueError:
        return False
    return isinstance(named, bytes) and named == _aaguid_bytes(aaguid)


def _aaguid_bytes(aaguid: str | bytes) -> bytes:
    """py_webauthn gives the AAGUID as its 8-4-4-4-12 text."""
    return aaguid if isinstance(aaguid, bytes) else uuid.UUID(aaguid).bytes


def check_removable(user: Any, device_id: int) -> WebAuthnDevice:
    """The person's key, if they may remove it: the last second factor of someone whose
    role needs one stays. Asked before a proof is spent, and again under the lock."""
    device = WebAuthnDevice.objects.filter(pk=device_id, user=user).first()
    if device is None:
        raise PasskeyError(_("That security key is not yours, or is gone already."))
    others = WebAuthnDevice.objects.filter(user=user).exclude(pk=device.pk).exists()
    if not others and mfa.confirmed_totp(user) is None and mfa.state_for(user).required:
        raise PasskeyError(
            _(
                "Your role needs a second factor and this key is your only one: add another "
                "key or an authenticator app first."
            )
        )
    return device


@dataclass(frozen=True)
class Removal:
    name: str
    last: bool  # no key and no app remain: signing in takes the password only
    backup_codes_dropped: bool  # they went with the last second factor


def remove(
    *,
    user: Any,
    device_id: int,
    source_address: str | None,
    session: SessionBase | None = None,
) -> Removal:
    """Remove one of the person's keys (the caller checked a current code or key); the
    last second factor of someone whose role needs one stays. With the last key of
    someone who has no app go their backup codes (mfa.drop_backup_codes_without_factor),
    and their other sessions end, as when the app is removed (mfa.second_factor_remove):
    one signed in with the key must not carry on without any second factor; ``session``,
    the one removing it, stays signed in."""
    with transaction.atomic():
        # The person's row first: two removals at once count the other keys one after the
        # other, so they cannot take someone's last two keys together.
        mfa.lock_person(user)
        mfa.forget_state(user)
        device = check_removable(user, device_id)
        name = device.name
        device.delete()
        dropped = mfa.drop_backup_codes_without_factor(user)
        mfa.forget_state(user)
        last = not mfa.state_for(user).enrolled
        detail: dict[str, Any] = {
            "kind": "webauthn",
            "name": name,
            "via": "self",
            "backup_codes": dropped,
        }
        if last:
            detail["sessions_ended"] = sessions_end(user, keep=session)
        audit_record(
            action="mfa.device_remove",
            actor=user,
            target=user,
            source_address=source_address,
            detail=detail,
        )
        mfa._tell(user, "removed" if last else "key_removed", source_address)
    mfa.forget_state(user)
    return Removal(name=name, last=last, backup_codes_dropped=dropped)


# --- authentication ---------------------------------------------------------------------


def authentication_options(*, session: SessionBase, user: Any) -> str:
    """The options for navigator.credentials.get(), for the person's own keys only."""
    existing = devices(user)
    if not existing:
        raise PasskeyError(_("You have no security key."))
    for device in existing:
        allowed, info = device.verify_is_allowed()
        if not allowed:
            raise Throttled((info or {}).get("locked_until"))
    options = generate_authentication_options(
        rp_id=rp_id(),
        timeout=TIMEOUT_MS,
        allow_credentials=[_descriptor(device) for device in existing],
        user_verification=UserVerificationRequirement.PREFERRED,
    )
    _store_challenge(session, "authenticate", options.challenge, user=user.pk)
    return options_to_json(options)


def authenticate(
    *, session: SessionBase, user: Any, credential: Any, source_address: str | None, via: str
) -> WebAuthnDevice:
    """Check an assertion against the session's challenge and the person's key; counts a
    use. A counter that did not grow is a cloned key: refused, audited (mfa.webauthn_clone)."""
    stored = _take_challenge(session, "authenticate")
    if stored.get("user") != user.pk:
        raise PasskeyError(_("No security-key request is waiting: start again."))
    try:
        parsed = parse_authentication_credential_json(_as_json(credential))
        raw_id = bytes_to_base64url(parsed.raw_id)
    except Exception:  # malformed JSON or base64: a 400, not a 500
        raw_id = ""
    # Refusals are audited after the transaction, so that rolling it back keeps them.
    refusal: tuple[str, dict[str, Any]] | None = None
    with transaction.atomic():
        device = (
            WebAuthnDevice.objects.select_for_update()
            .filter(user=user, credential_id=raw_id)
            .first()
            if raw_id
            else None
        )
        if device is None:
            refusal = ("unknown", {"why": "unknown credential"})
        else:
            try:
                # The counter is checked below, under the lock, to tell a clone from a
                # forgery: py_webauthn's own check would not say which.
                verified = verify_authentication_response(
                    credential=_as_json(credential),
                    expected_challenge=_challenge_bytes(stored),
                    expected_rp_id=rp_id(),
                    expected_origin=origins(),
                    credential_public_key=bytes(device.public_key),
                    credential_current_sign_count=0,
                )
            except Exception as exc:  # as in register(): hostile input is a 400
                refusal = ("invalid", {"why": str(exc)[:200]})
            else:
                new_count = verified.new_sign_count
                if (new_count > 0 or device.sign_count > 0) and new_count <= device.sign_count:
                    refusal = (
                        "clone",
                        {
                            "name": device.name,
                            "stored_count": device.sign_count,
                            "sign_count": new_count,
                        },
                    )
                else:
                    device.sign_count = new_count
                    device.last_used_at = timezone.now()
                    device.save(update_fields=["sign_count", "last_used_at"])
                    WebAuthnDevice.objects.filter(user=user).update(
                        throttling_failure_count=0, throttling_failure_timestamp=None
                    )
    if refusal is None and device is not None:
        return device
    _throttle(user, source_address)
    kind, detail = refusal or ("unknown", {"why": "unknown credential"})
    if kind == "clone":
        audit_record(
            action="mfa.webauthn_clone",
            actor=user,
            target=user,
            outcome="failure",
            source_address=source_address,
            detail={**detail, "via": via},
        )
        mfa._tell(user, "key_cloned", source_address)
        raise PasskeyError(
            _(
                "This security key's counter went backwards, as a copied key's does: it was "
                "refused. Use another key or a code, and tell your administrator."
            )
        )
    _refused(user, source_address, via=via, why=str(detail["why"]))
    if kind == "unknown":
        raise PasskeyError(_("That security key is not registered to your account."))
    raise PasskeyError(
        _(
            "The security key's answer could not be checked: try again, on this portal's own "
            "address."
        )
    )


# --- a fresh confirmation, for changing the second factor -------------------------------


def note_confirmed(session: SessionBase) -> None:
    session[CONFIRMED_SESSION_KEY] = timezone.now().isoformat()


def take_confirmed(session: SessionBase) -> bool:
    """Whether this session confirmed a security key in the last CONFIRMED_SECONDS; used
    once, also by two requests of the session at once (_take: the session row locked)."""
    return take_confirmation(session) is not None


def take_confirmation(session: SessionBase) -> str | None:
    """As take_confirmed, but the confirmation's time, for restore_confirmation: a change
    that takes it before checking something else the person typed (an app's set-up takes
    it, then checks the new app's first code) gives it back when that is wrong."""
    stamp = _take(session, CONFIRMED_SESSION_KEY)
    return stamp if _fresh(stamp) else None


def restore_confirmation(session: SessionBase, stamp: str) -> None:
    """Put back a confirmation taken for a change that did not happen, with its own time
    (a typo must neither spend it nor make it last longer). Written with the session at the
    end of the request: until then, a concurrent change finds it taken."""
    session[CONFIRMED_SESSION_KEY] = stamp


def has_confirmed(session: SessionBase) -> bool:
    return _fresh(session.get(CONFIRMED_SESSION_KEY))


# A session that proved its second factor to add a key (a code, or a confirmed key used
# up): when. The WebAuthn ceremony that follows may be cancelled or fail (a wrong key, a
# closed dialogue); its retries within CONFIRMED_SECONDS need no second proof, so that a
# cancelled ceremony does not burn a backup code. For adding a key only; the key's
# registration uses it up.
ADD_PROVED_SESSION_KEY = "pkiportal_webauthn_add_proved"


def note_proved_for_adding(session: SessionBase) -> None:
    session[ADD_PROVED_SESSION_KEY] = timezone.now().isoformat()


def has_proved_for_adding(session: SessionBase) -> bool:
    return _fresh(session.get(ADD_PROVED_SESSION_KEY))


def forget_proved_for_adding(session: SessionBase) -> None:
    session.pop(ADD_PROVED_SESSION_KEY, None)


def _fresh(stamp: Any) -> bool:
    if not isinstance(stamp, str):
        return False
    try:
        at = datetime.fromisoformat(stamp)
    except ValueError:
        return False
    return timezone.now() - at < timedelta(seconds=CONFIRMED_SECONDS)


# --- helpers ----------------------------------------------------------------------------


def _descriptor(device: WebAuthnDevice) -> PublicKeyCredentialDescriptor:
    transports = [AuthenticatorTransport(t) for t in device.transports if t in _TRANSPORTS]
    return PublicKeyCredentialDescriptor(
        id=base64url_to_bytes(device.credential_id), transports=transports or None
    )


def _as_json(credential: Any) -> str:
    if not isinstance(credential, dict):
        raise PasskeyError(_("The security key's answer is missing."))
    return json.dumps(credential)


def _field(credential: Any, *path: str) -> Any:
    value = credential
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, list) else None


def _throttle(user: Any, source_address: str | None) -> None:
    """One more refused answer on each of the person's keys (the next challenge waits);
    a run of them is a lock-out, as for wrong codes (mfa.note_lockout)."""
    failures = 0
    with transaction.atomic():
        for device in WebAuthnDevice.objects.select_for_update().filter(user=user):
            device.throttle_increment(commit=True)  # type: ignore[no-untyped-call]  # django-otp is unannotated
            failures = max(failures, device.throttling_failure_count)
    mfa.note_lockout(user, kind="webauthn", failures=failures, source_address=source_address)


def _refused(user: Any, source_address: str | None, *, via: str, why: str, **detail: Any) -> None:
    """Audited: an answer refused (``detail``: what a refused key's attestation said)."""
    audit_record(
        action="mfa.verify",
        actor=user,
        target=user,
        outcome="failure",
        source_address=source_address,
        detail={"kind": "webauthn", "via": via, "reason": why, **detail},
    )
