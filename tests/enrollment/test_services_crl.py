"""CRL services: numbers only go up, revocations reach the next CRL, expired entries leave."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from django.core import mail
from django.utils import timezone

from enrollment import keystore, services
from enrollment.exceptions import InvalidState, PolicyViolation
from enrollment.models import AuditEvent, Certificate, CrlEntry, RevocationList
from enrollment.x509 import keys
from enrollment.x509.crl import build_crl
from tests.enrollment.tools import crl_text_entries, issue, new_key, openssl_serial, row_counts

pytestmark = pytest.mark.django_db


@pytest.fixture
def signing_certificate(hierarchy, template, employee):
    # Each certificate its own key: one revoked for keyCompromise takes its key's others.
    return lambda: issue(employee, template("smime-signing"), new_key())


def in_crl(revocation_list: RevocationList, certificate: Certificate) -> bool:
    serial = int(certificate.serial, 16)
    return revocation_list.crl.get_revoked_certificate_by_serial_number(serial) is not None


def test_crl_numbers_strictly_increase(hierarchy):
    published = [services.crl_publish(ca=hierarchy.issuing) for _ in range(3)]

    assert [crl.number for crl in published] == [2, 3, 4]
    assert hierarchy.issuing.latest_crl() == published[-1]
    for crl in published:
        extension = crl.crl.extensions.get_extension_for_class(x509.CRLNumber).value
        assert extension.crl_number == crl.number
        assert crl.crl.is_signature_valid(hierarchy.issuing.certificate.public_key())
    events = AuditEvent.objects.filter(action="crl.publish")
    assert sorted(event.detail["number"] for event in events) == [1, 2, 3, 4]


def test_a_revoked_serial_is_in_the_next_crl_with_its_reason(signing_certificate, openssl):
    certificate = signing_certificate()
    services.certificate_revoke(certificate=certificate, reason="keyCompromise")

    published = services.crl_publish(ca=certificate.ca)

    _text, entries = crl_text_entries(openssl, bytes(published.der))
    entry = entries[openssl_serial(int(certificate.serial, 16))]
    assert "X509v3 CRL Reason Code" in entry
    assert "Key Compromise" in entry
    assert published.entries == 1


@pytest.mark.parametrize("reason", [None, "", "unspecified"])
def test_no_reason_means_no_reason_code_never_unspecified(reason, signing_certificate, openssl):
    certificate = signing_certificate()
    services.certificate_revoke(certificate=certificate, reason=reason)

    published = services.crl_publish(ca=certificate.ca)

    text, entries = crl_text_entries(openssl, bytes(published.der))
    assert openssl_serial(int(certificate.serial, 16)) in entries
    assert "Reason Code" not in text
    assert "Unspecified" not in text
    entry = published.crl.get_revoked_certificate_by_serial_number(int(certificate.serial, 16))
    assert len(entry.extensions) == 0


def test_a_committed_revocation_publishes_a_crl_listing_it(
    signing_certificate, django_capture_on_commit_callbacks
):
    certificate = signing_certificate()
    before = certificate.ca.latest_crl()

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.certificate_revoke(certificate=certificate, reason="superseded")

    assert len(callbacks) == 2  # the CRL and the holder's e-mail
    assert mail.outbox[0].to == [certificate.owner.email]
    after = certificate.ca.latest_crl()
    assert after.number == before.number + 1
    assert in_crl(after, certificate)
    assert not in_crl(before, certificate)


def test_a_refused_second_revocation_queues_no_crl(
    signing_certificate, django_capture_on_commit_callbacks
):
    certificate = signing_certificate()
    with django_capture_on_commit_callbacks(execute=True):
        services.certificate_revoke(certificate=certificate, reason=None)

    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(InvalidState, match="already revoked"),
    ):
        # (keyCompromise is no refusal: it makes a revoked certificate's reason keyCompromise)
        services.certificate_revoke(certificate=certificate, reason="superseded")

    assert callbacks == []
    assert certificate.ca.latest_crl().number == 2


def test_every_published_crl_keeps_a_revocation(signing_certificate):
    certificate = signing_certificate()
    services.certificate_revoke(certificate=certificate, reason="affiliationChanged")

    published = [services.crl_publish(ca=certificate.ca) for _ in range(3)]

    assert all(in_crl(crl, certificate) for crl in published)


def test_an_expired_revoked_certificate_leaves_after_one_more_crl(
    signing_certificate, time_machine
):
    expiring = signing_certificate()
    services.certificate_revoke(certificate=expiring, reason="keyCompromise")
    assert in_crl(services.crl_publish(ca=expiring.ca), expiring)

    # Past its notAfter: still listed once more, since the previous CRL was made before it
    # expired (RFC 5280 3.3), then gone.
    time_machine.move_to(expiring.not_after + timedelta(days=1), tick=False)
    still_valid = signing_certificate()
    services.certificate_revoke(certificate=still_valid, reason="superseded")
    one_more = services.crl_publish(ca=expiring.ca)
    afterwards = services.crl_publish(ca=expiring.ca)

    assert in_crl(one_more, expiring)
    assert one_more.this_update > expiring.not_after
    assert not in_crl(afterwards, expiring)
    assert in_crl(afterwards, still_valid)
    assert afterwards.entries == 1


def test_a_certificate_revoked_after_it_expired_is_on_the_next_crl_then_leaves(
    signing_certificate, time_machine, openssl
):
    """A committed revocation reaches a CRL even when the certificate had already expired."""
    expired = signing_certificate()
    time_machine.move_to(expired.not_after + timedelta(days=1), tick=False)
    routine = services.crl_publish(ca=expired.ca)  # made after notAfter: the old filter's cut
    services.certificate_revoke(certificate=expired, reason="keyCompromise")

    listing = services.crl_publish(ca=expired.ca)
    later = services.crl_publish(ca=expired.ca)

    serial = openssl_serial(int(expired.serial, 16))
    _text, entries = crl_text_entries(openssl, bytes(listing.der))
    assert "Key Compromise" in entries[serial]
    assert listing.entries == 1
    assert routine.this_update > expired.not_after
    assert CrlEntry.objects.get(certificate=expired).first_crl_number == listing.number
    _text, entries = crl_text_entries(openssl, bytes(later.der))
    assert serial not in entries
    assert later.entries == 0


def test_an_entry_is_marked_published_only_by_a_crl_that_lists_it(
    signing_certificate, time_machine, django_capture_on_commit_callbacks
):
    """The watchdog's "waiting for a CRL" clears only when the entry is really out."""
    expired = signing_certificate()
    time_machine.move_to(expired.not_after + timedelta(days=1), tick=False)
    services.crl_publish(ca=expired.ca)

    with django_capture_on_commit_callbacks(execute=True):
        services.certificate_revoke(certificate=expired, reason="superseded")

    marked = CrlEntry.objects.get(certificate=expired).first_crl_number
    listing = RevocationList.objects.get(ca=expired.ca, number=marked)
    assert in_crl(listing, expired)
    assert services.crl_publish_if_due(ca=expired.ca) is None


# --- the offline root's CRL -----------------------------------------------------------


def root_offline_key(hierarchy) -> keystore.OfflineKey:
    return keystore.OfflineKey(hierarchy.root_key_path, hierarchy.root_passphrase)


def signed_root_crl(hierarchy, number: int) -> bytes:
    root_key = keys.load_private_key_pem(
        hierarchy.root_key_path.read_bytes(), hierarchy.root_passphrase
    )
    now = timezone.now()
    return build_crl(
        issuer_certificate=hierarchy.root.certificate,
        issuer_key=root_key,
        entries=[],
        crl_number=number,
        this_update=now,
        next_update=now + timedelta(days=30),
    ).public_bytes(Encoding.DER)


def test_the_root_crl_is_signed_with_the_offline_key_handed_in(hierarchy):
    published = services.crl_publish(ca=hierarchy.root, offline_key=root_offline_key(hierarchy))

    assert published.number == 1
    assert published.crl.is_signature_valid(hierarchy.root.certificate.public_key())
    assert published.next_update - published.this_update == timedelta(days=365)


def test_the_root_crl_cannot_be_signed_without_its_key(hierarchy):
    with pytest.raises(keystore.KeyStoreError, match="offline"):
        services.crl_publish(ca=hierarchy.root)

    assert not hierarchy.root.revocation_lists.exists()


@pytest.mark.parametrize("number", [1, 2])
def test_crl_import_rejects_a_number_not_newer_than_the_published_one(number, hierarchy):
    for _ in range(2):
        services.crl_publish(ca=hierarchy.root, offline_key=root_offline_key(hierarchy))
    before = row_counts()

    with pytest.raises(InvalidState, match=f"CRL number {number} is not newer than"):
        services.crl_import(ca=hierarchy.root, der=signed_root_crl(hierarchy, number))

    assert row_counts() == before
    assert hierarchy.root.latest_crl().number == 2


def test_crl_import_takes_a_newer_number_and_later_crls_continue_from_it(hierarchy):
    services.crl_publish(ca=hierarchy.root, offline_key=root_offline_key(hierarchy))

    imported = services.crl_import(ca=hierarchy.root, der=signed_root_crl(hierarchy, 7))
    next_one = services.crl_publish(ca=hierarchy.root, offline_key=root_offline_key(hierarchy))

    assert imported.number == 7
    assert next_one.number == 8
    assert hierarchy.root.latest_crl() == next_one


def crafted_crl(
    ca,
    key,
    *,
    number: int,
    validity: timedelta,
    aki: x509.AuthorityKeyIdentifier | None | bool = True,
    revoked: Iterable[x509.RevokedCertificate] = (),
) -> bytes:
    """A CRL in ``ca``'s name signed with ``key``, with fields our own builder would refuse.

    ``aki``: True for the CA's key identifier, None for none, or the extension to use.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now)
        .next_update(now + validity)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    if aki is True:
        ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)
    if aki is not None:
        builder = builder.add_extension(aki, critical=False)
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(key, hashes.SHA384()).public_bytes(Encoding.DER)


def root_key(hierarchy):
    return keys.load_private_key_pem(
        hierarchy.root_key_path.read_bytes(), hierarchy.root_passphrase
    )


def root_crl_with(hierarchy, *, number: int, validity: timedelta, **options) -> bytes:
    """A CRL signed with the root key whose fields our own builder would refuse."""
    return crafted_crl(
        hierarchy.root, root_key(hierarchy), number=number, validity=validity, **options
    )


def issuing_crl_with(hierarchy, *, number: int, validity: timedelta, **options) -> bytes:
    """The same with the online issuing CA's key (as a stolen or misused key could sign)."""
    key = keystore._ca_key(hierarchy.issuing)
    return crafted_crl(hierarchy.issuing, key, number=number, validity=validity, **options)


@pytest.mark.parametrize(
    ("number", "validity", "message"),
    [
        (3, timedelta(0), "nextUpdate is not later than its thisUpdate"),
        (2**64, timedelta(days=30), "larger than the portal can store"),
    ],
    ids=["nextUpdate equal to thisUpdate", "CRL number beyond 64 bits"],
)
def test_crl_import_refuses_a_crl_the_database_cannot_hold_with_a_clear_error(
    number, validity, message, hierarchy
):
    before = row_counts()

    with pytest.raises(PolicyViolation, match=message):
        services.crl_import(
            ca=hierarchy.root, der=root_crl_with(hierarchy, number=number, validity=validity)
        )

    assert row_counts() == before


def test_crl_import_rejects_the_issuing_cas_crl_for_the_root(hierarchy):
    issuing_crl = bytes(hierarchy.issuing.latest_crl().der)

    with pytest.raises(PolicyViolation, match="not issued by Test Root CA"):
        services.crl_import(ca=hierarchy.root, der=issuing_crl)

    assert not hierarchy.root.revocation_lists.exists()


def test_crl_import_refuses_a_crl_already_past_its_next_update(hierarchy, time_machine):
    stale = root_crl_with(hierarchy, number=3, validity=timedelta(days=1))
    time_machine.move_to(timezone.now() + timedelta(days=2))
    before = row_counts()

    with pytest.raises(PolicyViolation, match="expired .* stale list"):
        services.crl_import(ca=hierarchy.root, der=stale)

    assert row_counts() == before


# --- S/MIME BR 4.9.7 intervals, key identifier and certificateHold on import -----------


@pytest.mark.parametrize(
    ("which", "validity"),
    [("root", timedelta(days=365)), ("issuing", timedelta(days=10))],
    ids=["root: 12 months", "issuing: 10 days"],
)
def test_crl_import_takes_a_crl_at_the_longest_interval_the_br_allow(which, validity, hierarchy):
    ca = getattr(hierarchy, which)
    make = root_crl_with if which == "root" else issuing_crl_with

    imported = services.crl_import(ca=ca, der=make(hierarchy, number=40, validity=validity))

    assert imported.number == 40
    assert imported.next_update - imported.this_update == validity
    assert ca.latest_crl() == imported


@pytest.mark.parametrize(
    ("which", "validity", "message"),
    [
        ("root", timedelta(days=365, seconds=1), "a root CA's CRL it may be at most 365 days"),
        ("root", timedelta(days=730), "730 days after thisUpdate"),
        (
            "issuing",
            timedelta(days=10, seconds=1),
            "10 days, 0:00:01 after thisUpdate; for a "
            "subscriber-issuing CA's CRL it may be at most 10 days",
        ),
        ("issuing", timedelta(days=365), "365 days after thisUpdate"),
    ],
    ids=["root: 12 months + 1 s", "root: 2 years", "issuing: 10 days + 1 s", "issuing: 1 year"],
)
def test_crl_import_refuses_a_crl_longer_than_the_br_allow_for_that_ca(
    which, validity, message, hierarchy
):
    ca = getattr(hierarchy, which)
    make = root_crl_with if which == "root" else issuing_crl_with
    before = row_counts()

    with pytest.raises(PolicyViolation, match=rf"{message}.*\(S/MIME BR 4\.9\.7\)"):
        services.crl_import(ca=ca, der=make(hierarchy, number=40, validity=validity))

    assert row_counts() == before


def test_crl_import_refuses_a_crl_without_an_authority_key_identifier(hierarchy):
    der = root_crl_with(hierarchy, number=40, validity=timedelta(days=30), aki=None)

    with pytest.raises(PolicyViolation, match=r"no authorityKeyIdentifier \(RFC 5280 5.2.1\)"):
        services.crl_import(ca=hierarchy.root, der=der)

    assert not hierarchy.root.revocation_lists.exists()


def test_crl_import_refuses_a_crl_whose_key_identifier_names_another_key(hierarchy, ec_p384_key):
    """Name and signature are the root's, the key identifier is not: relying parties
    matching CRLs by key identifier would never find it."""
    other = x509.AuthorityKeyIdentifier.from_issuer_public_key(ec_p384_key.public_key())
    der = root_crl_with(hierarchy, number=40, validity=timedelta(days=30), aki=other)

    with pytest.raises(PolicyViolation, match="authorityKeyIdentifier does not name Test Root"):
        services.crl_import(ca=hierarchy.root, der=der)

    assert not hierarchy.root.revocation_lists.exists()


def revoked_entry(serial: int, reason: x509.ReasonFlags | None) -> x509.RevokedCertificate:
    """A CRL entry with that reasonCode, or none."""
    builder = (
        x509.RevokedCertificateBuilder()
        .serial_number(serial)
        .revocation_date(datetime.now(UTC).replace(microsecond=0))
    )
    if reason is not None:
        builder = builder.add_extension(x509.CRLReason(reason), critical=False)
    return builder.build()


def test_crl_import_refuses_a_crl_with_a_certificate_on_hold(hierarchy):
    entry = revoked_entry
    der = root_crl_with(
        hierarchy,
        number=40,
        validity=timedelta(days=30),
        revoked=[
            entry(0x1234, x509.ReasonFlags.key_compromise),
            entry(0xABCDEF, x509.ReasonFlags.certificate_hold),
        ],
    )
    before = row_counts()

    with pytest.raises(PolicyViolation, match=r"serial abcdef on hold \(certificateHold\)"):
        services.crl_import(ca=hierarchy.root, der=der)

    assert row_counts() == before


CA_REASONS = [
    x509.ReasonFlags.key_compromise,
    x509.ReasonFlags.ca_compromise,
    x509.ReasonFlags.affiliation_changed,
    x509.ReasonFlags.superseded,
    x509.ReasonFlags.cessation_of_operation,
    x509.ReasonFlags.privilege_withdrawn,
]


def test_crl_import_takes_a_root_crl_with_every_reason_the_br_allow_for_ca_certificates(
    hierarchy,
):
    revoked = [revoked_entry(0x100 + i, reason) for i, reason in enumerate(CA_REASONS)]
    der = root_crl_with(hierarchy, number=40, validity=timedelta(days=30), revoked=revoked)

    imported = services.crl_import(ca=hierarchy.root, der=der)

    assert imported.entries == len(CA_REASONS)
    assert hierarchy.root.latest_crl() == imported


def test_crl_import_refuses_a_root_crl_entry_without_a_reason_code(hierarchy):
    """S/MIME BR 7.2.2: an entry for a CA certificate must say why it was revoked."""
    der = root_crl_with(
        hierarchy,
        number=40,
        validity=timedelta(days=30),
        revoked=[
            revoked_entry(0x1234, x509.ReasonFlags.superseded),
            revoked_entry(0xBEEF, None),
        ],
    )
    before = row_counts()

    with pytest.raises(PolicyViolation, match=r"entry for serial beef has no reasonCode"):
        services.crl_import(ca=hierarchy.root, der=der)

    assert row_counts() == before


@pytest.mark.parametrize(
    "reason",
    [
        x509.ReasonFlags.unspecified,
        x509.ReasonFlags.remove_from_crl,
        x509.ReasonFlags.aa_compromise,
    ],
)
def test_crl_import_refuses_a_reason_code_the_br_do_not_allow(reason, hierarchy):
    der = root_crl_with(
        hierarchy,
        number=40,
        validity=timedelta(days=30),
        revoked=[revoked_entry(0xC0FFEE, reason)],
    )
    before = row_counts()

    with pytest.raises(PolicyViolation, match=rf"serial c0ffee the reason {reason.value}, which"):
        services.crl_import(ca=hierarchy.root, der=der)

    assert row_counts() == before


def test_crl_import_of_a_subscriber_crl_accepts_no_reason_but_refuses_ca_compromise(hierarchy):
    """A subscriber CRL may leave the reason out (unspecified); cACompromise names a CA."""
    without_reason = issuing_crl_with(
        hierarchy, number=40, validity=timedelta(days=5), revoked=[revoked_entry(0x77, None)]
    )
    ca_compromise = issuing_crl_with(
        hierarchy,
        number=41,
        validity=timedelta(days=5),
        revoked=[revoked_entry(0x78, x509.ReasonFlags.ca_compromise)],
    )

    assert services.crl_import(ca=hierarchy.issuing, der=without_reason).entries == 1
    with pytest.raises(PolicyViolation, match=r"serial 78 the reason cACompromise, which"):
        services.crl_import(ca=hierarchy.issuing, der=ca_compromise)
    assert hierarchy.issuing.latest_crl().number == 40


@pytest.mark.parametrize(
    ("which", "validity"),
    [("root", timedelta(days=366)), ("issuing", timedelta(days=11))],
)
def test_crl_publish_refuses_an_interval_longer_than_the_br_allow(which, validity, hierarchy):
    ca = getattr(hierarchy, which)
    offline_key = root_offline_key(hierarchy) if which == "root" else None
    before = row_counts()

    with pytest.raises(PolicyViolation, match=r"\(S/MIME BR 4\.9\.7\)"):
        services.crl_publish(ca=ca, offline_key=offline_key, validity=validity)

    assert row_counts() == before
