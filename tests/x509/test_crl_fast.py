"""crl_fast: the same bytes as cryptography's builder, from entries encoded one at a time.

ECDSA signatures are randomised, so the TBSCertList is compared byte for byte and the
signature is checked by verifying it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from enrollment.x509 import crl_fast
from enrollment.x509.crl import RevocationReason, RevokedEntry, build_crl
from enrollment.x509.errors import PolicyError
from enrollment.x509.policy import Generation
from tests.pki import CA

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)

# Naive (taken as UTC), UTC and a zone east of UTC; a day of margin at both ends of the range.
moments = st.datetimes(
    min_value=datetime(1950, 1, 2),
    max_value=datetime(9998, 1, 1),
    timezones=st.sampled_from([None, UTC, timezone(timedelta(hours=5))]),
)
entries = st.builds(
    RevokedEntry,
    serial_number=st.one_of(
        st.integers(min_value=1, max_value=2**159 - 1),
        st.integers(min_value=1, max_value=300),  # short and sign-bit edge cases
    ),
    revocation_date=moments,
    reason=st.one_of(st.none(), st.sampled_from(list(RevocationReason))),
    invalidity_date=st.one_of(st.none(), moments),
)
entry_lists = st.lists(entries, max_size=40, unique_by=lambda entry: entry.serial_number)


def fast_crl(ca: CA, revoked: bytes, **options: object) -> x509.CertificateRevocationList:
    arguments: dict[str, object] = {
        "issuer_certificate": ca.certificate,
        "issuer_key": ca.key,
        "revoked": revoked,
        "crl_number": 1,
        "this_update": NOW,
        "next_update": NOW + timedelta(days=7),
    }
    arguments.update(options)
    return x509.load_der_x509_crl(crl_fast.sign_crl(**arguments))  # type: ignore[arg-type]


def reference_crl(
    ca: CA, listed: list[RevokedEntry], **options: object
) -> x509.CertificateRevocationList:
    arguments: dict[str, object] = {
        "issuer_certificate": ca.certificate,
        "issuer_key": ca.key,
        "entries": listed,
        "crl_number": 1,
        "this_update": NOW,
        "next_update": NOW + timedelta(days=7),
        "generation": Generation.MULTIPURPOSE,  # allows certificateHold, like allow_hold
    }
    arguments.update(options)
    return build_crl(**arguments)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    listed=entry_lists,
    number=st.integers(min_value=0, max_value=2**159 - 1),
    this_update=moments,
    validity=st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=400)),
    which=st.sampled_from([0, 1, 2]),
)
def test_it_makes_the_tbs_bytes_cryptography_makes_and_a_valid_signature(
    issuing_ca: CA,
    root_ca: CA,
    rsa_issuing_ca: CA,
    listed: list[RevokedEntry],
    number: int,
    this_update: datetime,
    validity: timedelta,
    which: int,
) -> None:
    """EC P-256 (SHA-256), EC P-384 (SHA-384) and RSA (PKCS#1 v1.5) CAs alike."""
    ca = (issuing_ca, root_ca, rsa_issuing_ca)[which]
    times = {
        "crl_number": number,
        "this_update": this_update,
        "next_update": this_update + validity,
    }

    reference = reference_crl(ca, listed, **times)
    fast = fast_crl(ca, crl_fast.encode_entries(listed, allow_hold=True), **times)

    assert fast.tbs_certlist_bytes == reference.tbs_certlist_bytes
    assert fast.signature_algorithm_oid == reference.signature_algorithm_oid
    assert fast.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]


def test_an_entry_is_the_element_cryptography_writes(issuing_ca: CA) -> None:
    entry = RevokedEntry(
        0x80, NOW - timedelta(hours=1), RevocationReason.KEY_COMPROMISE, NOW - timedelta(days=3)
    )
    reference = reference_crl(issuing_ca, [entry])
    encoded = crl_fast.encode_entry(entry)

    assert encoded in reference.tbs_certlist_bytes
    assert encoded[2:6] == bytes.fromhex("02020080")  # a positive 0x80 needs a leading 00


def test_the_der_round_trips_through_cryptography_unchanged(issuing_ca: CA) -> None:
    revoked = crl_fast.encode_entries(
        RevokedEntry(serial, NOW - timedelta(minutes=serial)) for serial in range(1, 2000)
    )
    der = crl_fast.sign_crl(
        issuer_certificate=issuing_ca.certificate,
        issuer_key=issuing_ca.key,
        revoked=revoked,
        crl_number=2**64,
        this_update=NOW,
        next_update=NOW + timedelta(days=7),
    )

    parsed = x509.load_der_x509_crl(der)
    assert parsed.public_bytes(Encoding.DER) == der
    assert len(parsed) == 1999
    assert parsed.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2**64


def test_an_empty_crl_has_no_revoked_certificates_field(issuing_ca: CA) -> None:
    """RFC 5280 5.1.2.6: absent, not an empty SEQUENCE."""
    fast = fast_crl(issuing_ca, b"")

    assert fast.tbs_certlist_bytes == reference_crl(issuing_ca, []).tbs_certlist_bytes
    assert len(fast) == 0


@pytest.mark.parametrize(
    ("entry", "rules", "message"),
    [
        (RevokedEntry(0, NOW), {}, "not a valid certificate serial"),
        (RevokedEntry(2**159, NOW), {}, "not a valid certificate serial"),
        (RevokedEntry(7, NOW, RevocationReason.CERTIFICATE_HOLD), {}, "certificateHold"),
        (RevokedEntry(7, NOW), {"reason_required": True}, "needs a reason code"),
        (RevokedEntry(7, datetime(1949, 12, 31, tzinfo=UTC)), {}, "after 1950"),
    ],
    ids=["serial zero", "serial too long", "hold under strict", "CA entry without reason",
         "before 1950"],
)  # fmt: skip
def test_it_refuses_entries_build_crl_refuses(
    entry: RevokedEntry, rules: dict[str, bool], message: str
) -> None:
    with pytest.raises(PolicyError, match=message):
        crl_fast.encode_entry(entry, **rules)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"crl_number": 2**159}, "CRL number"),
        ({"crl_number": -1}, "CRL number"),
        ({"next_update": NOW}, "nextUpdate must be later"),
        ({"this_update": datetime(1949, 1, 1), "next_update": NOW}, "after 1950"),
    ],
)
def test_it_refuses_what_build_crl_refuses(
    issuing_ca: CA, options: dict[str, object], message: str
) -> None:
    with pytest.raises(PolicyError, match=message):
        fast_crl(issuing_ca, b"", **options)


def test_it_refuses_a_key_of_another_ca(issuing_ca: CA, root_ca: CA) -> None:
    with pytest.raises(PolicyError, match="does not belong"):
        crl_fast.sign_crl(
            issuer_certificate=issuing_ca.certificate,
            issuer_key=root_ca.key,
            revoked=b"",
            crl_number=1,
            this_update=NOW,
            next_update=NOW + timedelta(days=1),
        )


@pytest.mark.parametrize("size", [0, 1, 127, 128, 255, 256, 65535, 65536, 2**24])
def test_lengths_use_the_minimal_der_form(size: int) -> None:
    encoded = crl_fast._length(size)
    if size < 128:
        assert encoded == bytes([size])
    else:
        assert encoded[0] == 0x80 | (len(encoded) - 1)
        assert int.from_bytes(encoded[1:], "big") == size
        assert encoded[1] != 0
