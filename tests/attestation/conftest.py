"""The security-key policies' fixtures (PKIPORTAL_WEBAUTHN_ATTESTATION_*,
PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR), for the files here: security keys added under the
attestation policy (test_passkey_attestation.py), the API tokens minted after one
(test_api_token_attestation.py), security keys only (test_keys_only.py), and the account
page of a session either holds back (test_held_back_account_page.py). Kept in this
package so that the relying party they set for every test is set for theirs only."""

from __future__ import annotations

import pytest

from tests.webauthn_authenticator import ORIGIN, RP_ID, AttestationCA, aaguid_text


@pytest.fixture(autouse=True)
def _relying_party(settings):
    settings.PKIPORTAL_WEBAUTHN_RP_ID = RP_ID
    settings.PKIPORTAL_WEBAUTHN_ORIGINS = [ORIGIN]


@pytest.fixture
def vendor() -> AttestationCA:
    """The approved key vendor: its attestation root is what the portal is given."""
    return AttestationCA()


@pytest.fixture
def policy(settings, vendor):
    """Switch the attestation policy on, as the environment would: the vendor's root, for
    ``roles`` (the default) or ``everyone``, with a list of allowed models or none; or off
    again with ``policy(None)``."""

    def switch(attestation_for: str | None = "roles", aaguids: tuple[bytes, ...] = ()) -> None:
        settings.PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS = [vendor.pem] if attestation_for else []
        settings.PKIPORTAL_WEBAUTHN_ATTESTATION_FOR = attestation_for or ""
        settings.PKIPORTAL_WEBAUTHN_ALLOWED_AAGUIDS = [aaguid_text(a) for a in aaguids]

    return switch


@pytest.fixture
def keys_only(settings):
    """Switch security keys only on (``roles`` or ``everyone``), or off with ``""``."""

    def switch(covers: str = "roles") -> None:
        settings.PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR = covers

    return switch
