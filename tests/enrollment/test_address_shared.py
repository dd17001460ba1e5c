"""Two active accounts with one address: no certificate names it until one is corrected.

A certificate binds the address to its holder's key and the directory hands it out by
address, so whichever account got one could sign as the other and read what is
encrypted for them. The address is the account's (a directory sync, single sign-on, an
admin's typo); services.address_taken refuses it at every issuance, as it refuses a
shared mailbox's address.
"""

from __future__ import annotations

import pytest

from cryptography.hazmat.primitives.serialization import Encoding

from django.contrib.auth.models import Group

from enrollment import rollouts, services
from enrollment.exceptions import PolicyViolation
from enrollment.models import Certificate, CertificateRequest
from tests.enrollment.api_tools import ENROLLMENTS, csr_body, token_client
from tests.enrollment.tools import cryptography_csr, new_key
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def impostor(employee):
    """An account whose address an edit made the same as Alice's, in another case."""
    return UserFactory(username="mallory", email=f"  {employee.email.upper()} ")


def enrol(person, template):
    return services.request_submit(
        requester=person,
        template=template("smime-signing"),
        csr=cryptography_csr(new_key()).public_bytes(Encoding.PEM),
        channel="api",
    )


@pytest.mark.parametrize("way", ["as it comes", "the locked way"])
def test_neither_account_is_certified_for_the_shared_address(
    hierarchy, template, employee, impostor, monkeypatch, way
):
    if way == "the locked way":  # on PostgreSQL the unlocked way issues unless it declines
        monkeypatch.setattr(services, "_csr_issued_unlocked", lambda **kwargs: (None, None))

    for person in (impostor, employee):
        with pytest.raises(PolicyViolation, match="Another account has the address") as refused:
            enrol(person, template)
        assert refused.value.field == "email"

    assert not Certificate.objects.exists()
    assert not CertificateRequest.objects.exists()


def test_the_api_says_which_field_and_why(hierarchy, employee, impostor):
    response = token_client(impostor).post(ENROLLMENTS, csr_body(new_key()), format="json")

    assert response.status_code == 400
    assert "administrator must correct" in response.json()["email"][0]
    assert not Certificate.objects.exists()


def test_a_deactivated_account_keeps_no_one_from_their_old_address(
    hierarchy, template, employee, impostor
):
    """A leaver's address goes to a newcomer: the old, deactivated account is no bar."""
    impostor.is_active = False
    impostor.save()

    issued = enrol(employee, template)

    assert issued.certificate.emails == [employee.email]


def test_the_enrolment_pages_say_so_up_front(employee, impostor):
    assert "Another account" in (services.account_address_problem(employee) or "")
    assert services.account_address_problem(UserFactory(username="carol")) is None


def test_a_roll_out_skips_people_whose_address_another_account_has(
    hierarchy, template, employee, impostor, officer
):
    colleague = UserFactory(username="bob")
    group = Group.objects.create(name="Finance")
    group.user_set.add(employee, colleague)

    resolved = rollouts.rollout_resolve(
        officer=officer, template=template("smime-signing"), group=group
    )

    assert resolved.eligible == [colleague]
    assert [skip.reason for skip in resolved.skipped] == [rollouts.Reason.ADDRESS_SHARED]


@pytest.mark.parametrize("stray", ["\t", "\n", "\xa0", "\u2003"])
def test_an_address_with_stray_white_space_is_refused_not_cleaned(
    hierarchy, template, employee, stray
):
    """The database trims spaces only; Python's strip() went further, so an account
    'alice@example.com<tab>' and Alice's own were told apart by one and certified for one
    address by the other. Such an address is now the administrator's to correct."""
    padded = UserFactory(username="mallory", email=employee.email + stray)

    with pytest.raises(PolicyViolation, match="holds a character no e-mail address may"):
        enrol(padded, template)
    assert "holds a character" in (services.account_address_problem(padded) or "")
    assert enrol(employee, template).certificate.emails == [employee.email]


def test_a_look_alike_letter_is_refused(hierarchy, template, employee):
    """The Kelvin sign lower-cases to an ASCII k in Python, not in SQLite's LOWER()."""
    kelvin = UserFactory(username="kelvin", email="\u212aate@example.com")
    UserFactory(username="kate", email="kate@example.com")

    with pytest.raises(PolicyViolation, match="holds a character no e-mail address may"):
        enrol(kelvin, template)


def test_an_account_without_an_address_is_told_so_not_that_it_is_taken(
    hierarchy, template, employee
):
    """Every account without an address has the same empty one."""
    UserFactory(username="service", email="")
    nobody = UserFactory(username="nobody", email="")

    with pytest.raises(PolicyViolation) as refused:
        enrol(nobody, template)
    assert "Another account" not in refused.value.message
    assert refused.value.message == services.NO_ADDRESS
