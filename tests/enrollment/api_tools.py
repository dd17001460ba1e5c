"""Helpers for the API tests: role clients (token or session), URLs, CSR bodies."""

from __future__ import annotations

import base64
from typing import Any

from knox.models import AuthToken

from cryptography.hazmat.primitives.serialization import Encoding

from rest_framework.test import APIClient

from accounts import mfa
from accounts.models import SecondFactorKind
from enrollment.models import ApiToken, Certificate, CertificateRequest
from enrollment.x509.keys import PrivateKey
from tests.enrollment.tools import cryptography_csr
from tests.second_factor import verified_login

API = "/api/v1"
ENROLLMENTS = f"{API}/enrollments/"
CERTIFICATES = f"{API}/certificates/"
PENDING = f"{API}/requests/pending/"
TOKEN = f"{API}/auth/token/"
LOGOUT = f"{API}/auth/logout/"
LOGOUT_ALL = f"{API}/auth/logoutall/"
PASSWORD = "orange kettle sails at dawn"  # passes every password validator


def token_client(user: Any) -> APIClient:
    """A client authenticated as a script would be: a knox token, no session, no CSRF."""
    client = APIClient()
    if user is not None:
        instance, token = AuthToken.objects.create(user=user)
        # As the portal mints one now: with a second factor whoever is asked for one (their
        # app, as verified_login's session would confirm it).
        mfa.forget_state(user)
        asked = mfa.state_for(user).asked
        ApiToken.objects.filter(auth_token=instance).update(
            second_factor=asked, second_factor_kind=SecondFactorKind.APP if asked else ""
        )
        mfa.forget_state(user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def session_client(user: Any, *, enforce_csrf: bool = False) -> APIClient:
    """A client authenticated as a browser would be: a session cookie."""
    client = APIClient(enforce_csrf_checks=enforce_csrf)
    if user is not None:
        verified_login(client, user)
    return client


def enrollment_url(pk: int) -> str:
    return f"{ENROLLMENTS}{pk}/"


def certificate_url(serial: str) -> str:
    return f"{CERTIFICATES}{serial}/"


def request_url(pk: int, verb: str) -> str:
    return f"{API}/requests/{pk}/{verb}/"


def csr_pem(key: PrivateKey) -> str:
    return cryptography_csr(key).public_bytes(Encoding.PEM).decode("ascii")


def csr_base64_der(key: PrivateKey) -> str:
    return base64.b64encode(cryptography_csr(key).public_bytes(Encoding.DER)).decode("ascii")


def csr_body(key: PrivateKey, template: str = "smime-signing") -> dict[str, str]:
    return {"template": template, "csr": csr_pem(key)}


def server_key_body(
    template: str = "smime-dual-use", algorithm: str = "ec-p256", fmt: str = "modern"
) -> dict[str, str]:
    return {
        "template": template,
        "key_algorithm": algorithm,
        "pkcs12_password": PASSWORD,
        "pkcs12_format": fmt,
    }


def stored_counts() -> tuple[int, int]:
    """Certificates and requests: a rejected call leaves both unchanged."""
    return Certificate.objects.count(), CertificateRequest.objects.count()
