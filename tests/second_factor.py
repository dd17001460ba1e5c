"""Signing test clients in as the portal would, second factor included.

The suite keeps the production default (PKIPORTAL_MFA_REQUIRED_FOR=officers): an officer's
or administrator's client is signed in *and* verified, as django_otp.login() leaves a
session after a right code, instead of the requirement being switched off globally.
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any

from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.oath import TOTP

from django.test import Client

from accounts import mfa
from accounts.models import TotpDevice, WebAuthnDevice


def authenticator(user: Any, seed: bytes | None = None) -> tuple[TotpDevice, bytes]:
    """Give the person a confirmed authenticator app; returns it and its seed."""
    seed = seed or secrets.token_bytes(mfa.SEED_BYTES)
    device = TotpDevice.objects.create(
        user=user, name="Authenticator app", confirmed=True, sealed_key=mfa.seal(seed)
    )
    mfa.forget_state(user)
    return device, seed


def code(seed: bytes, *, at: float | None = None) -> str:
    """The code a phone would show now (or at the Unix time ``at``)."""
    generator = TOTP(seed, TotpDevice.STEP, 0, TotpDevice.DIGITS)
    generator.time = time.time() if at is None else at
    return f"{generator.token():06d}"


def seed_of(device: TotpDevice) -> bytes:
    return base64.b32decode(mfa.base32_secret(device).replace(" ", ""))


def verified_login(client: Client, user: Any) -> Client:
    """force_login, then confirm the second factor where the person needs one: their app,
    else one of their security keys (as django_otp.login leaves the session after it),
    else a new app (someone whose role needs one and who has none yet)."""
    client.force_login(user)
    mfa.forget_state(user)
    if mfa.state_for(user).asked:
        device: Any = (
            mfa.confirmed_totp(user)
            or WebAuthnDevice.objects.filter(user=user).order_by("pk").first()
            or authenticator(user)[0]
        )
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = device.persistent_id
        session.save()
    mfa.forget_state(user)
    return client
