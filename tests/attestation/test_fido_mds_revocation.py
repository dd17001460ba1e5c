"""The FIDO MDS BLOB's chain checked for revocation (MDS3, "Metadata BLOB object processing
rules"): manage.py import_fido_metadata --crl FILE ... needs, for each certificate of the
path below the trust root, a current CRL signed by its issuer, and refuses a BLOB whose
signing certificate or CA is on it. Without CRLs it is refused, naming the CRLs to download
and where they are published, unless --no-revocation-check, which is printed and audited.
Damaged CRL files are refused without a traceback; openssl's -crl_check_all agrees with the
verdict. The test PKI (EC keys) and helpers are test_fido_metadata's."""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from django.core.management import CommandError
from django.db import transaction

from enrollment.models import AuditEvent
from pkiportal.fido_mds import (
    ChainRevoked,
    MetadataError,
    RevocationUnknown,
    read_blob,
    read_crls,
)
from tests.attestation.test_fido_metadata import (
    Pki,
    crl_pem,
    crl_url,
    make_crl,
    make_pki,
    nothing_stored,
    payload,
    run,
    sign,
)

LEAF = "CN=mds.test,O=Test FIDO MDS"
CA = "CN=Test FIDO MDS Root CA,O=Test FIDO MDS"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("mds-revocation"))


def crl_file(tmp_path: Path, *crls: x509.CertificateRevocationList, name: str = "c.pem") -> str:
    path = tmp_path / name
    path.write_bytes(crl_pem(*crls))
    return str(path)


def blob(pki: Pki, number: int = 10) -> bytes:
    return sign(pki, payload(number), "ES256")  # signed by pki.ec_leaf, under pki.intermediate


def refused(tmp_path: Path, pki: Pki, *crl_paths: str) -> str:
    """The command's refusal with these CRL files, after checking it stored nothing."""
    with pytest.raises(CommandError) as caught:
        run(tmp_path, blob(pki), pki.root_file, crl=list(crl_paths))
    nothing_stored()
    message = str(caught.value)
    assert message.startswith("Refused, nothing imported: ")
    return message


def read(pki: Pki, crls: list[x509.CertificateRevocationList]) -> Any:
    return read_blob(blob(pki), [pki.root], now=datetime.now(UTC), crls=crls)


# --- accepted ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_current_crls_in_der_files_clear_the_chain_and_the_audit_names_them(pki, tmp_path):
    root_crl = make_crl(pki.root, pki.root_key, number=4)
    ca_crl = make_crl(pki.intermediate, pki.intermediate_key, number=77)
    files = []
    for name, crl in (("root.crl", root_crl), ("ca.crl", ca_crl)):
        (tmp_path / name).write_bytes(crl.public_bytes(Encoding.DER))
        files.append(str(tmp_path / name))

    out = run(tmp_path, blob(pki), pki.root_file, crl=files)

    assert "Imported FIDO metadata no. 10" in out
    assert f"Not revoked: {LEAF}, by the CRL no. 77 of {CA}" in out
    assert f"Not revoked: {CA}, by the CRL no. 4 of CN=Test FIDO MDS Root" in out
    detail = AuditEvent.objects.get(action="fido_metadata.import").detail
    assert detail["revocation_checked"] is True
    assert detail["crls"] == [
        {
            "certificate": LEAF,
            "issuer": CA,
            "number": 77,
            "this_update": ca_crl.last_update_utc.isoformat(),
        },
        {
            "certificate": CA,
            "issuer": "CN=Test FIDO MDS Root,O=Test FIDO MDS",
            "number": 4,
            "this_update": root_crl.last_update_utc.isoformat(),
        },
    ]


@pytest.mark.django_db
def test_a_crl_of_another_issuer_beside_the_needed_ones_is_reported_unused(pki, tmp_path):
    stranger = make_pki(tmp_path, "Stranger Root")

    out = run(
        tmp_path,
        blob(pki),
        pki.root_file,
        crl=[str(pki.crl_file), crl_file(tmp_path, *stranger.crls, name="stranger.pem")],
    )

    assert "Imported FIDO metadata no. 10" in out
    assert "Not used: the CRL of CN=Stranger Root,O=Test FIDO MDS " in out
    assert "Not used: the CRL of CN=Stranger Root CA,O=Test FIDO MDS " in out


def test_a_stale_crl_beside_a_current_one_of_the_same_issuer_is_passed_over(pki):
    old = datetime.now(UTC) - timedelta(days=30)
    stale = make_crl(pki.intermediate, pki.intermediate_key, number=1, this_update=old)
    current = make_crl(pki.intermediate, pki.intermediate_key, number=2)

    used = read(pki, [stale, current, pki.crls[0]]).revocation

    assert [(u.certificate, u.number) for u in used] == [(LEAF, 2), (CA, 1)]


def test_a_crl_is_taken_within_the_clock_skew(pki):
    """A CRL issued two minutes "from now", or whose nextUpdate passed two minutes ago,
    is current: the CA's clock and this machine's may disagree that much."""
    now = datetime.now(UTC).replace(microsecond=0)
    ahead = make_crl(pki.intermediate, pki.intermediate_key, this_update=now + timedelta(minutes=2))
    just_past = make_crl(
        pki.root,
        pki.root_key,
        this_update=now - timedelta(days=7),
        next_update=now - timedelta(minutes=2),
    )
    assert read(pki, [ahead, just_past]).number == 10


# --- refused -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_revoked_signing_certificate_is_refused_naming_it_and_the_revocation(pki, tmp_path):
    ca_crl = make_crl(pki.intermediate, pki.intermediate_key, pki.ec_leaf, number=9)

    message = refused(tmp_path, pki, crl_file(tmp_path, pki.crls[0], ca_crl))

    yesterday = datetime.now(UTC) - timedelta(days=1)
    assert (
        f"The BLOB's signing certificate {LEAF} (serial {pki.ec_leaf.serial_number:x}) is "
        f"revoked: its issuer's CRL no. 9"
    ) in message
    assert f"lists it as revoked on {yesterday:%Y-%m-%d}" in message
    assert "reason keyCompromise" in message
    assert "--no-revocation-check" not in message  # no way around a revocation is offered


@pytest.mark.django_db
def test_a_revoked_intermediate_is_refused(pki, tmp_path):
    root_crl = make_crl(
        pki.root, pki.root_key, pki.intermediate, reason=x509.ReasonFlags.ca_compromise
    )

    message = refused(tmp_path, pki, crl_file(tmp_path, root_crl, pki.crls[1]))

    assert f"The chain's CA certificate {CA} (serial {pki.intermediate.serial_number:x})" in message
    assert "is revoked" in message
    assert "reason cACompromise" in message


def test_a_revocation_on_any_current_crl_of_the_issuer_counts(pki):
    """Two current CRLs of the CA, the older without the revocation: it is revoked."""
    older = make_crl(pki.intermediate, pki.intermediate_key, number=1)
    newer = make_crl(pki.intermediate, pki.intermediate_key, pki.ec_leaf, number=2)
    with pytest.raises(ChainRevoked, match="CRL no. 2"):
        read(pki, [older, newer, pki.crls[0]])


def test_a_revocation_on_a_stale_crl_still_refuses(pki):
    """A revocation its issuer signed is not forgotten because the CRL aged: revoked, not
    merely "needs a current CRL"."""
    old = datetime.now(UTC) - timedelta(days=30)
    stale = make_crl(pki.intermediate, pki.intermediate_key, pki.ec_leaf, this_update=old)
    current = make_crl(pki.intermediate, pki.intermediate_key, number=2)
    with pytest.raises(ChainRevoked, match="is revoked: its issuer's CRL no. 1"):
        read(pki, [current, stale, pki.crls[0]])


@pytest.mark.parametrize(
    "extension",
    [
        x509.DeltaCRLIndicator(1),
        x509.IssuingDistributionPoint(None, None, True, False, None, False, False),
        x509.IssuingDistributionPoint(
            [x509.UniformResourceIdentifier("http://crl.mds.test/part-2.crl")],
            None,
            False,
            False,
            None,
            False,
            False,
        ),
        x509.IssuingDistributionPoint(
            None,
            None,
            False,
            False,
            frozenset({x509.ReasonFlags.key_compromise, x509.ReasonFlags.ca_compromise}),
            False,
            False,
        ),
    ],  # fmt: skip
    ids=["delta", "user-certificates-only", "other-partition", "some-reasons"],
)
def test_a_revocation_on_a_delta_or_partition_crl_refuses_beside_a_current_base(pki, extension):
    """Found by review: a delta or a partition clears nothing alone, but an entry on one
    its issuer signed is the issuer's word that the certificate is revoked; with a current
    base CRL that does not list it yet, the import was accepted."""
    base = make_crl(pki.intermediate, pki.intermediate_key, number=1)
    listing = make_crl(
        pki.intermediate, pki.intermediate_key, pki.ec_leaf, number=2,
        extensions=[(extension, True)],
    )  # fmt: skip
    with pytest.raises(ChainRevoked, match="is revoked: its issuer's CRL no. 2"):
        read(pki, [base, listing, pki.crls[0]])


def test_a_delta_s_remove_from_crl_entry_is_no_revocation(pki):
    """removeFromCRL in a delta says a hold ended: the certificate is not revoked."""
    base = make_crl(pki.intermediate, pki.intermediate_key, number=1)
    delta = make_crl(
        pki.intermediate, pki.intermediate_key, pki.ec_leaf, number=2,
        reason=x509.ReasonFlags.remove_from_crl,
        extensions=[(x509.DeltaCRLIndicator(1), True)],
    )  # fmt: skip
    assert read(pki, [base, delta, pki.crls[0]]).number == 10


@pytest.mark.parametrize(
    "extension",
    [
        x509.IssuingDistributionPoint(None, None, False, False, None, True, False),
        x509.IssuingDistributionPoint(None, None, False, False, None, False, True),
        x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"),
    ],
    ids=["indirect", "attribute-certificates", "unknown-critical"],
)
def test_an_entry_on_a_crl_that_may_name_another_s_serial_does_not_revoke(pki, extension):
    """An indirect CRL's entries may be another issuer's certificates, an attribute
    certificates' CRL has another kind of serial, and a CRL with a critical extension this
    check does not know is not to be used (RFC 5280 5.2): none revokes by serial alone."""
    base = make_crl(pki.intermediate, pki.intermediate_key, number=1)
    other = make_crl(
        pki.intermediate, pki.intermediate_key, pki.ec_leaf, number=2,
        extensions=[(extension, True)],
    )  # fmt: skip
    assert read(pki, [base, other, pki.crls[0]]).number == 10


def test_a_forged_crl_listing_the_certificate_does_not_revoke_it(pki):
    forged = make_crl(pki.intermediate, ec.generate_private_key(ec.SECP256R1()), pki.ec_leaf)
    current = make_crl(pki.intermediate, pki.intermediate_key, number=2)
    assert read(pki, [forged, current, pki.crls[0]]).number == 10


@pytest.mark.django_db
def test_without_crls_the_import_is_refused_naming_each_crl_and_both_ways_on(pki, tmp_path):
    message = refused(tmp_path, pki)

    assert "The revocation of the BLOB's chain cannot be checked" in message
    assert f"The BLOB's signing certificate {LEAF}" in message
    assert f"needs a current CRL of its issuer {CA}, and none was given" in message
    assert f"Its issuer publishes it at {crl_url(pki.intermediate)}." in message
    assert f"The chain's CA certificate {CA}" in message
    assert f"Its issuer publishes it at {crl_url(pki.root)}." in message
    assert "give it with --crl FILE" in message
    assert "--no-revocation-check" in message


@pytest.mark.django_db
def test_crls_of_another_issuer_only_are_refused_as_missing(pki, tmp_path):
    stranger = make_pki(tmp_path, "Stranger Root")

    message = refused(tmp_path, pki, str(stranger.crl_file))

    assert f"needs a current CRL of its issuer {CA}, and none was given. Its issuer" in message
    assert crl_url(pki.intermediate) in message
    assert crl_url(pki.root) in message


@pytest.mark.django_db
def test_a_crl_signed_by_another_key_than_the_issuer_s_is_refused(pki, tmp_path):
    """A CRL in the CA's name but not by its key (forged, one without the revocation)."""
    forged = make_crl(pki.intermediate, ec.generate_private_key(ec.SECP256R1()))

    message = refused(tmp_path, pki, crl_file(tmp_path, pki.crls[0], forged))

    assert f"The BLOB's signing certificate {LEAF}" in message
    assert "is not signed by the issuer's key" in message
    assert crl_url(pki.intermediate) in message
    assert f"The chain's CA certificate {CA}" not in message  # the root's CRL was good


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("when", "why"),
    [
        ({"this_update": datetime.now(UTC) - timedelta(days=10)}, "is stale (its nextUpdate, "),
        (
            {
                "this_update": datetime.now(UTC) - timedelta(days=1),
                "next_update": datetime.now(UTC) - timedelta(minutes=10),
            },
            "is stale",
        ),
        ({"this_update": datetime.now(UTC) + timedelta(hours=1)}, "is not yet valid"),
    ],
    ids=["a-week-old", "just-past-the-skew", "from-the-future"],
)
def test_a_crl_that_is_not_current_is_refused(pki, tmp_path, when, why):
    ca_crl = make_crl(pki.intermediate, pki.intermediate_key, **when)

    message = refused(tmp_path, pki, crl_file(tmp_path, pki.crls[0], ca_crl))

    assert f"The BLOB's signing certificate {LEAF}" in message
    assert why in message
    assert crl_url(pki.intermediate) in message


@pytest.mark.parametrize(
    ("extension", "critical", "why"),
    [
        (x509.DeltaCRLIndicator(1), True, "is a delta CRL"),
        (
            x509.IssuingDistributionPoint(None, None, False, True, None, False, False),
            True,
            "lists CA certificates only",
        ),
        (
            x509.IssuingDistributionPoint(
                [x509.UniformResourceIdentifier("http://crl.mds.test/part-2.crl")],
                None,
                False,
                False,
                None,
                False,
                False,
            ),
            True,
            "is a partition for other certificates",
        ),
        (
            x509.IssuingDistributionPoint(None, None, False, False, None, True, False),
            True,
            "is a partial CRL",
        ),
        (
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"),
            True,
            re.escape("has a critical extension this check does not know (1.3.6.1.4.1.99999.1)"),
        ),
    ],  # fmt: skip
    ids=["delta", "ca-only", "other-partition", "indirect", "unknown-critical"],
)
def test_a_crl_that_does_not_cover_the_certificate_does_not_clear_it(pki, extension, critical, why):
    ca_crl = make_crl(pki.intermediate, pki.intermediate_key, extensions=[(extension, critical)])
    with pytest.raises(RevocationUnknown, match=why):
        read(pki, [pki.crls[0], ca_crl])


def test_a_partition_crl_for_the_certificate_s_own_distribution_point_clears_it(pki):
    own = x509.IssuingDistributionPoint(
        [x509.UniformResourceIdentifier(crl_url(pki.intermediate))],
        None, False, False, None, False, False,
    )  # fmt: skip
    users_only = x509.IssuingDistributionPoint(None, None, True, False, None, False, False)
    for scope in (own, users_only):
        ca_crl = make_crl(pki.intermediate, pki.intermediate_key, extensions=[(scope, True)])
        assert read(pki, [pki.crls[0], ca_crl]).number == 10


# --- the escape hatch --------------------------------------------------------------------


@pytest.mark.django_db
def test_no_revocation_check_imports_with_a_loud_warning_and_audits_it(pki, tmp_path):
    out = run(tmp_path, blob(pki), pki.root_file, no_revocation_check=True)

    assert "WARNING: --no-revocation-check: the revocation of the BLOB's signing chain is NOT" in (
        " ".join(out.split())
    )
    assert "Imported FIDO metadata no. 10" in out
    assert "Not revoked" not in out
    detail = AuditEvent.objects.get(action="fido_metadata.import").detail
    assert (detail["revocation_checked"], detail["crls"]) == (False, [])


@pytest.mark.django_db
def test_no_revocation_check_and_crls_together_are_refused(pki, tmp_path):
    with pytest.raises(CommandError, match="Give either --crl .* or --no-revocation-check"):
        run(tmp_path, blob(pki), pki.root_file, crl=[str(pki.crl_file)], no_revocation_check=True)
    nothing_stored()


# --- damaged CRL files -------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("content", "why"),
    [
        (lambda pki: b"", "cannot be read: it is damaged or no CRL"),
        (lambda pki: pki.crls[1].public_bytes(Encoding.DER)[:-20], "damaged or no CRL"),
        (lambda pki: crl_pem(*pki.crls)[:-40], "holds a PEM CRL cut short"),  # the 2nd END
        (
            lambda pki: crl_pem(pki.crls[0]).replace(b"MI", b"M!", 1) + crl_pem(pki.crls[1]),
            "CRL 1 of '.*' cannot be read",
        ),
        (lambda pki: pki.root.public_bytes(Encoding.PEM), "holds no PEM CRL"),
        (lambda pki: pki.root.public_bytes(Encoding.DER), "damaged or no CRL"),
    ],
    ids=["empty", "truncated-der", "truncated-pem", "bad-base64", "a-certificate", "der-cert"],
)
def test_a_damaged_crl_file_is_refused(pki, tmp_path, content, why):
    path = tmp_path / "damaged.crl"
    path.write_bytes(content(pki))
    assert re.search(why, refused(tmp_path, pki, str(path)))


@pytest.mark.django_db
def test_a_crl_file_that_cannot_be_opened_is_refused(pki, tmp_path):
    with pytest.raises(CommandError, match="cannot be read: No such file"):
        run(tmp_path, blob(pki), pki.root_file, crl=[str(tmp_path / "missing.crl")])
    nothing_stored()


@pytest.mark.django_db
@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    noise=st.binary(max_size=300),
    cut=st.integers(min_value=0, max_value=400),
    pem=st.booleans(),
)
def test_any_bytes_or_a_damaged_crl_are_refused_never_a_crash(pki, tmp_path, noise, cut, pem):
    """Random bytes as the CA's CRL file, or its CRL (DER or PEM) with bytes overwritten:
    refused with a message (CommandError), never a traceback, never taken; unless the
    damage missed the CRL (bytes after a PEM block), which then clears the chain."""
    good = pki.crls[1].public_bytes(Encoding.PEM if pem else Encoding.DER)
    root_only = crl_file(tmp_path, pki.crls[0], name="root.pem")
    damaged = good[:cut] + noise + good[cut + len(noise) :]
    for index, data in enumerate((noise, damaged)):
        path = tmp_path / f"hostile-{index}.crl"
        path.write_bytes(data)
        try:
            intact = [c.public_bytes(Encoding.DER) for c in read_crls(data, "hostile")] == [
                pki.crls[1].public_bytes(Encoding.DER)
            ]
        except MetadataError:
            intact = False
        with transaction.atomic():  # each import rolled back for the next
            if intact:
                out = run(tmp_path, blob(pki), pki.root_file, crl=[root_only, str(path)])
                assert "Imported" in out
            else:
                with pytest.raises(CommandError, match="^Refused, nothing imported: "):
                    run(tmp_path, blob(pki), pki.root_file, crl=[root_only, str(path)])
            transaction.set_rollback(True)


# --- openssl agrees ----------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("revoked", ["none", "signing", "intermediate"])
def test_openssl_crl_check_all_agrees_with_the_verdict(pki, tmp_path, revoked):
    on_root_crl = [pki.intermediate] if revoked == "intermediate" else []
    on_ca_crl = [pki.ec_leaf] if revoked == "signing" else []
    root_crl = make_crl(pki.root, pki.root_key, *on_root_crl)
    ca_crl = make_crl(pki.intermediate, pki.intermediate_key, *on_ca_crl)
    files = {
        "root.pem": pki.root.public_bytes(Encoding.PEM),
        "ca.pem": pki.intermediate.public_bytes(Encoding.PEM),
        "leaf.pem": pki.ec_leaf.public_bytes(Encoding.PEM),
        "root.crl": crl_pem(root_crl),
        "ca.crl": crl_pem(ca_crl),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    verified = subprocess.run(
        ["openssl", "verify", "-crl_check_all", "-CAfile", "root.pem", "-untrusted", "ca.pem",
         "-CRLfile", "root.crl", "-CRLfile", "ca.crl", "leaf.pem"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip
    try:
        read(pki, [root_crl, ca_crl])
        ours = True
    except ChainRevoked:
        ours = False

    output = verified.stdout + verified.stderr
    assert (verified.returncode == 0) == ours, output
    assert ours == (revoked == "none")
    if not ours:
        assert "certificate revoked" in output
