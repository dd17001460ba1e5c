"""Directory fixtures: people with certificates issued through the services (EC keys, fast).

Certificates come from services.certificate_issue with the session's EC P-256 key: real
certificates from the test CA, without the PKCS#12 key derivation that is not under test.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from accounts.search import fold
from enrollment import services
from enrollment.models import Certificate, CertificateTemplate
from enrollment.x509.keys import KeyAlgorithm, generate_private_key
from tests.factories import UserFactory


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Accounts here never sign in with a password; PBKDF2's million rounds cost 0.4 s each."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def encryption_template(db) -> CertificateTemplate:
    """An encryption-only template that takes the requester's key (so nothing to archive)."""
    return CertificateTemplate.objects.create(
        name="Test Encryption", slug="test-encryption", purpose="encryption", archive_key=False
    )


@pytest.fixture
def issue(hierarchy, template, encryption_template) -> Callable[..., Certificate]:
    # Each certificate its own key, as in life: revoking one for keyCompromise revokes
    # every certificate of its key.
    def issue(owner, slug: str = "smime-dual-use") -> Certificate:
        key = generate_private_key(KeyAlgorithm.EC_P256)
        return services.certificate_issue(
            template=template(slug), owner=owner, public_key=key.public_key()
        )

    return issue


@pytest.fixture
def person(db) -> Callable[..., object]:
    def person(first: str, last: str, unit: str = "", email: str | None = None, **extra):
        username = extra.pop("username", fold(f"{first}.{last}").replace(" ", ""))
        return UserFactory(
            username=username,
            first_name=first,
            last_name=last,
            organizational_unit=unit,
            email=email or f"{username}@example.com",
            **extra,
        )

    return person
