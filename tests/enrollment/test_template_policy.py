"""CertificateTemplate.policy(): kept per set of the template's values, never stale."""

from __future__ import annotations

import pytest

from enrollment.models import CertificateTemplate
from enrollment.x509.errors import PolicyError
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.policy import Generation, Purpose


def template(**fields: object) -> CertificateTemplate:
    values: dict[str, object] = {"purpose": "signing", "generation": "strict", "validity_days": 365}
    return CertificateTemplate(**{**values, **fields})


def test_an_edited_template_issues_under_its_new_values() -> None:
    edited = template()
    before = edited.policy()

    edited.validity_days = 30
    edited.allowed_key_algorithms = ["ec-p256"]
    edited.organization_policy_oid = "1.3.6.1.4.1.99999.7"
    edited.generation = "multipurpose"
    after = edited.policy()

    assert (before.validity_days, before.allowed_key_algorithms) == (365, frozenset(KeyAlgorithm))
    assert after.validity_days == 30
    assert after.allowed_key_algorithms == frozenset({KeyAlgorithm.EC_P256})
    assert after.organization_policy_oid == "1.3.6.1.4.1.99999.7"
    assert after.generation is Generation.MULTIPURPOSE
    assert template(purpose="dual_use").policy().purpose is Purpose.DUAL_USE


def test_templates_alike_share_one_policy() -> None:
    assert template().policy() is template().policy()


@pytest.mark.parametrize("allowed", [["dsa-1024"], [{"not": "hashable"}]])
def test_a_bad_key_algorithm_is_refused_every_time(allowed: list[object]) -> None:
    for _ in range(2):
        with pytest.raises(ValueError):  # noqa: PT011  (KeyAlgorithm's own refusal)
            template(allowed_key_algorithms=allowed).policy()


def test_a_bad_validity_is_refused_every_time() -> None:
    for _ in range(2):
        with pytest.raises(PolicyError, match="between 1 and 825"):
            template(validity_days=900).policy()


@pytest.mark.parametrize("days", [True, 1.0])
def test_a_validity_equal_to_a_kept_one_but_not_an_int_is_still_refused(days: object) -> None:
    """The cache's keys compare equal (1 == True == 1.0): typed keys keep them apart."""
    assert template(validity_days=1).policy().validity_days == 1
    with pytest.raises(PolicyError):
        template(validity_days=days).policy()
