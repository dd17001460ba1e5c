"""build_crl: numbering, reason codes under S/MIME BR 7.2.2, dates and signatures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptography import x509

from enrollment.x509.builder import random_serial
from enrollment.x509.crl import RevocationReason, RevokedEntry, build_crl, crl_is_current
from enrollment.x509.errors import PolicyError
from enrollment.x509.policy import Generation
from tests.pki import CA

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


def crl_for(
    ca: CA, entries: list[RevokedEntry], **options: object
) -> x509.CertificateRevocationList:
    arguments: dict[str, object] = {
        "issuer_certificate": ca.certificate,
        "issuer_key": ca.key,
        "entries": entries,
        "crl_number": 1,
        "this_update": NOW,
        "next_update": NOW + timedelta(days=7),
    }
    arguments.update(options)
    return build_crl(**arguments)  # type: ignore[arg-type]


def test_an_empty_crl_is_signed_by_the_ca_with_number_and_aki(issuing_ca: CA) -> None:
    crl = crl_for(issuing_ca, [], crl_number=42)
    assert len(crl) == 0
    assert crl.issuer == issuing_ca.certificate.subject
    assert crl.is_signature_valid(issuing_ca.certificate.public_key())  # type: ignore[arg-type]
    number = crl.extensions.get_extension_for_class(x509.CRLNumber)
    assert (number.critical, number.value.crl_number) == (False, 42)
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = issuing_ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ski.value.digest


def test_it_records_this_and_next_update(issuing_ca: CA) -> None:
    crl = crl_for(issuing_ca, [])
    assert crl.last_update_utc == NOW
    assert crl.next_update_utc == NOW + timedelta(days=7)


def test_entries_carry_serial_date_and_reason(issuing_ca: CA) -> None:
    serial = random_serial()
    revoked_at = NOW - timedelta(hours=3)
    crl = crl_for(issuing_ca, [RevokedEntry(serial, revoked_at, RevocationReason.KEY_COMPROMISE)])
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert entry.revocation_date_utc == revoked_at
    reason = entry.extensions.get_extension_for_class(x509.CRLReason)
    assert (reason.critical, reason.value.reason) == (False, x509.ReasonFlags.key_compromise)


def test_an_entry_without_reason_has_no_reason_code_at_all(issuing_ca: CA) -> None:
    serial = random_serial()
    crl = crl_for(issuing_ca, [RevokedEntry(serial, NOW)])
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert len(entry.extensions) == 0


def test_unspecified_is_not_a_reason_we_can_write() -> None:
    assert "unspecified" not in {r.value for r in RevocationReason}
    assert {r.flag for r in RevocationReason}.isdisjoint(
        {x509.ReasonFlags.unspecified, x509.ReasonFlags.remove_from_crl}
    )


@pytest.mark.parametrize(
    "reason", [r for r in RevocationReason if r is not RevocationReason.CERTIFICATE_HOLD]
)
def test_every_reason_is_written_as_its_rfc_5280_flag(
    issuing_ca: CA, reason: RevocationReason
) -> None:
    serial = random_serial()
    crl = crl_for(issuing_ca, [RevokedEntry(serial, NOW, reason)])
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert (
        entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
        == {
            "keyCompromise": "key_compromise",
            "cACompromise": "ca_compromise",
            "affiliationChanged": "affiliation_changed",
            "superseded": "superseded",
            "cessationOfOperation": "cessation_of_operation",
            "privilegeWithdrawn": "privilege_withdrawn",
            "aACompromise": "aa_compromise",
        }[reason.value]
    )


def test_invalidity_date_is_written_when_known(issuing_ca: CA) -> None:
    serial = random_serial()
    compromised = NOW - timedelta(days=2)
    entry_in = RevokedEntry(
        serial, NOW, RevocationReason.KEY_COMPROMISE, invalidity_date=compromised
    )
    entry = crl_for(issuing_ca, [entry_in]).get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    invalidity = entry.extensions.get_extension_for_class(x509.InvalidityDate)
    assert not invalidity.critical
    assert invalidity.value.invalidity_date_utc == compromised


def test_it_rejects_certificate_hold_under_strict(issuing_ca: CA) -> None:
    entry = RevokedEntry(random_serial(), NOW, RevocationReason.CERTIFICATE_HOLD)
    with pytest.raises(PolicyError, match="certificateHold may not appear"):
        crl_for(issuing_ca, [entry])


def test_it_allows_certificate_hold_for_multipurpose(issuing_ca: CA) -> None:
    serial = random_serial()
    entry = RevokedEntry(serial, NOW, RevocationReason.CERTIFICATE_HOLD)
    crl = crl_for(issuing_ca, [entry], generation=Generation.MULTIPURPOSE)
    revoked = crl.get_revoked_certificate_by_serial_number(serial)
    assert revoked is not None
    assert revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.certificate_hold
    )


def test_a_crl_of_ca_certificates_requires_a_reason_for_every_entry(root_ca: CA) -> None:
    with pytest.raises(PolicyError, match="needs a reason code"):
        crl_for(root_ca, [RevokedEntry(random_serial(), NOW)], revokes_ca_certificates=True)


def test_a_crl_of_ca_certificates_never_holds(root_ca: CA) -> None:
    entry = RevokedEntry(random_serial(), NOW, RevocationReason.CERTIFICATE_HOLD)
    with pytest.raises(PolicyError, match="certificateHold"):
        crl_for(root_ca, [entry], generation=Generation.MULTIPURPOSE, revokes_ca_certificates=True)


def test_next_update_must_follow_this_update(issuing_ca: CA) -> None:
    with pytest.raises(PolicyError, match="nextUpdate must be later"):
        crl_for(issuing_ca, [], next_update=NOW)


@pytest.mark.parametrize("number", [-1, 2**159])
def test_it_rejects_crl_numbers_outside_20_octets(issuing_ca: CA, number: int) -> None:
    with pytest.raises(PolicyError, match="CRL number"):
        crl_for(issuing_ca, [], crl_number=number)


def test_it_rejects_a_serial_listed_twice(issuing_ca: CA) -> None:
    serial = random_serial()
    with pytest.raises(PolicyError, match="appears twice"):
        crl_for(issuing_ca, [RevokedEntry(serial, NOW), RevokedEntry(serial, NOW)])


@pytest.mark.parametrize("serial", [0, -3, 2**159])
def test_it_rejects_serials_that_cannot_be_certificates(issuing_ca: CA, serial: int) -> None:
    with pytest.raises(PolicyError, match="not a valid certificate serial"):
        crl_for(issuing_ca, [RevokedEntry(serial, NOW)])


def test_it_refuses_a_key_that_is_not_the_cas(issuing_ca: CA, root_ca: CA) -> None:
    with pytest.raises(PolicyError, match="does not belong"):
        crl_for(issuing_ca, [], issuer_key=root_ca.key)


def test_dates_in_other_time_zones_are_written_in_utc(issuing_ca: CA) -> None:
    serial = random_serial()
    berlin_summer = timezone(timedelta(hours=2))
    revoked_at = datetime(2030, 6, 1, 10, 30, tzinfo=berlin_summer)
    crl = crl_for(
        issuing_ca,
        [RevokedEntry(serial, revoked_at)],
        this_update=NOW.astimezone(berlin_summer),
        next_update=(NOW + timedelta(days=1)).astimezone(berlin_summer),
    )
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert entry.revocation_date_utc == datetime(2030, 6, 1, 8, 30, tzinfo=UTC)
    assert crl.last_update_utc == NOW


def test_naive_dates_are_taken_as_utc(issuing_ca: CA) -> None:
    serial = random_serial()
    naive = datetime(2030, 6, 1, 9, 0)
    crl = crl_for(
        issuing_ca,
        [RevokedEntry(serial, naive)],
        this_update=NOW.replace(tzinfo=None),
        next_update=(NOW + timedelta(days=1)).replace(tzinfo=None),
    )
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert entry.revocation_date_utc == naive.replace(tzinfo=UTC)
    assert crl.last_update_utc == NOW


def test_a_crl_is_current_between_this_and_next_update(issuing_ca: CA) -> None:
    crl = crl_for(issuing_ca, [])
    assert crl_is_current(crl, NOW)
    assert crl_is_current(crl, NOW + timedelta(days=6, hours=23))
    assert not crl_is_current(crl, NOW + timedelta(days=7))
    assert not crl_is_current(crl, NOW - timedelta(seconds=1))


def test_the_root_signs_its_crl_with_its_own_key(root_ca: CA, issuing_ca: CA) -> None:
    entry = RevokedEntry(issuing_ca.certificate.serial_number, NOW, RevocationReason.CA_COMPROMISE)
    crl = crl_for(root_ca, [entry], revokes_ca_certificates=True)
    assert crl.issuer == root_ca.certificate.subject
    assert crl.is_signature_valid(root_ca.certificate.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(issuing_ca.certificate.serial_number)


def test_entries_can_come_from_a_generator(issuing_ca: CA) -> None:
    serials = [random_serial() for _ in range(50)]
    crl = crl_for(issuing_ca, (RevokedEntry(s, NOW) for s in serials))  # type: ignore[arg-type]
    assert sorted(r.serial_number for r in crl) == sorted(serials)


@settings(max_examples=30, deadline=None)
@given(
    serials=st.sets(st.integers(min_value=1, max_value=2**159 - 1), max_size=40),
    reasons=st.lists(
        st.sampled_from([None, *list(RevocationReason)[:3]]), min_size=40, max_size=40
    ),
)
def test_every_entry_appears_once_with_its_reason(
    issuing_ca: CA, serials: set[int], reasons: list[RevocationReason | None]
) -> None:
    entries = [RevokedEntry(s, NOW, r) for s, r in zip(sorted(serials), reasons, strict=False)]
    crl = crl_for(issuing_ca, entries)
    assert len(crl) == len(entries)
    for entry in entries:
        revoked = crl.get_revoked_certificate_by_serial_number(entry.serial_number)
        assert revoked is not None
        reasons_found = [
            e.value.reason for e in revoked.extensions if isinstance(e.value, x509.CRLReason)
        ]
        assert reasons_found == ([] if entry.reason is None else [entry.reason.flag])
