"""The organization-validated profile of shared mailboxes (S/MIME BR 7.1.4.2.4)."""

from __future__ import annotations

import dataclasses

import pytest

from cryptography import x509
from cryptography.x509.oid import NameOID

from enrollment.x509.builder import Subject
from enrollment.x509.errors import PolicyError
from enrollment.x509.policy import (
    ORGANIZATION_VALIDATED_MULTIPURPOSE,
    ORGANIZATION_VALIDATED_STRICT,
    CertificateType,
    Generation,
    Purpose,
)

MAILBOX = Subject(
    common_name="finance@example.com",
    organization_name="Example Org",
    country_name="GB",
    organization_identifier="NTRGB-12345678",
    email_addresses=("finance@example.com",),
    certificate_type=CertificateType.ORGANIZATION_VALIDATED,
)
OV = CertificateType.ORGANIZATION_VALIDATED


def test_the_subject_names_the_organisation_and_the_mailbox_only():
    name = MAILBOX.to_name()
    assert [a.oid for a in name] == [
        NameOID.COUNTRY_NAME,
        NameOID.ORGANIZATION_NAME,
        NameOID.ORGANIZATION_IDENTIFIER,
        NameOID.COMMON_NAME,
    ]
    assert name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "finance@example.com"


@pytest.mark.parametrize("field", ["given_name", "surname"])
def test_a_personal_name_is_refused(field):
    with pytest.raises(PolicyError, match="SHALL NOT"):
        dataclasses.replace(MAILBOX, **{field: "Alice"}).to_name()


@pytest.mark.parametrize("common_name", ["Finance team", "other@example.com", "Alice Andersson"])
def test_the_common_name_is_the_mailbox_or_the_organisation(common_name):
    with pytest.raises(PolicyError, match="common name"):
        dataclasses.replace(MAILBOX, common_name=common_name).to_name()
    assert dataclasses.replace(MAILBOX, common_name="Example Org").to_name()


@pytest.mark.parametrize("missing", ["organization_name", "organization_identifier"])
def test_the_organisation_is_required(missing):
    with pytest.raises(PolicyError, match="Organization-validated"):
        dataclasses.replace(MAILBOX, **{missing: ""}).to_name()


@pytest.mark.parametrize(
    ("generation", "oid"),
    [(Generation.STRICT, ORGANIZATION_VALIDATED_STRICT),
     (Generation.MULTIPURPOSE, ORGANIZATION_VALIDATED_MULTIPURPOSE)],
)  # fmt: skip
def test_the_policy_oid_is_the_organization_validated_one(make_end_entity, generation, oid):
    leaf = make_end_entity(
        Purpose.ENCRYPTION, generation=generation, subject=MAILBOX, certificate_type=OV
    ).certificate
    policies = leaf.extensions.get_extension_for_class(x509.CertificatePolicies).value
    assert [p.policy_identifier for p in policies] == [oid]


def test_a_subject_and_a_policy_of_different_types_are_refused(make_end_entity):
    with pytest.raises(PolicyError, match="cannot be issued under"):
        make_end_entity(Purpose.ENCRYPTION, subject=MAILBOX)  # sponsor-validated policy
