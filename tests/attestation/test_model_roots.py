"""A key's claimed model held to that model's own attestation roots (the imported FIDO
metadata's attestationRootCertificates; accounts.fido_metadata.model_anchors,
pkiportal.attestation.chains_to_anchor): a genuine batch certificate under a configured root
that names no model (no id-fido-gen-ce-aaguid) could otherwise claim any model, of its own
maker or of another approved one. Where the metadata lists no roots for the model, or has no
entry for it, nothing changes. The FIDO MDS PKI and the import come from
test_fido_metadata.py; the relying party, ``vendor`` and ``policy`` from conftest.py."""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from django.contrib.auth.models import Group

from accounts import mfa, passkeys
from accounts.models import FidoModel, WebAuthnDevice
from pkiportal.attestation import chains_to_anchor, read_anchors
from tests.attestation.test_fido_metadata import (
    MODEL,
    NAME,
    OTHER,
    Pki,
    entry,
    imported,
    make_pki,
)
from tests.attestation.test_passkey_attestation import (
    OTHER_MODEL,
    nothing_stored,
    register,
    register_through_service,
    with_app,
)
from tests.second_factor import verified_login
from tests.test_passkeys import browser, events, password_only, sign_in_with_key
from tests.webauthn_authenticator import MODEL_AAGUID, AttestationCA, SoftKey

pytestmark = pytest.mark.django_db

REASON = "attestation: not the model's roots"


def root64(ca: AttestationCA) -> str:
    """A CA's certificate as the metadata lists it: base64 DER."""
    return base64.b64encode(ca.der).decode()


def key_of(
    ca: AttestationCA, aaguid: bytes = MODEL_AAGUID, *, names_model: bool = False
) -> SoftKey:
    """A genuine key from ``ca`` claiming ``aaguid``; its batch certificate names no model
    unless ``names_model`` (the extension is optional: without it the chain alone speaks)."""
    return SoftKey(attestation=ca.attestation(aaguid, names_model=names_model), aaguid=aaguid)


@pytest.fixture(scope="module")
def mds(tmp_path_factory) -> Pki:
    """The FIDO MDS PKI whose BLOBs the tests import, made once for the module."""
    return make_pki(tmp_path_factory.mktemp("mds"))


@pytest.fixture
def other_vendor() -> AttestationCA:
    return AttestationCA("Other Vendor Attestation Root")


@pytest.fixture
def two_vendors(settings, vendor, other_vendor, policy):
    """The policy on, for roles, with both vendors' roots configured (both approved makers);
    ``aaguids``: the allowed models, none for any."""

    def switch(aaguids: tuple[bytes, ...] = ()) -> None:
        policy(aaguids=aaguids)
        settings.PKIPORTAL_WEBAUTHN_ATTESTATION_ROOTS = [vendor.pem, other_vendor.pem]

    return switch


def added_or_refused(user: Any, key: SoftKey) -> str:
    """A registration through the service (no proof of the second factor to spend):
    "added", or the refusal's message."""
    try:
        register_through_service(user, key)
    except passkeys.AttestationRefused as refused:
        return str(refused)
    return "added"


def refused_for_its_model(answer: Any, user: Any) -> None:
    assert answer.status_code == 400, answer.content
    assert answer.json()["detail"] == passkeys.ATTESTATION_MAKER
    nothing_stored(user)
    event = events("mfa.verify")[-1]
    assert event.detail["reason"] == REASON
    assert (event.detail["fmt"], event.detail["aaguid"]) == ("packed", MODEL)


# --- the check, through a registration -------------------------------------------------------


@pytest.mark.parametrize("names_model", [False, True], ids=["no-aaguid-extension", "extension"])
def test_a_key_whose_chain_leads_to_its_model_s_root_is_accepted_another_maker_s_is_not(
    mds, tmp_path, officer, vendor, other_vendor, two_vendors, names_model
):
    two_vendors()
    imported(mds, tmp_path, entry(MODEL, NAME, roots=(root64(vendor),)))
    client, seed = with_app(officer)

    _options, refused = register(client, key_of(other_vendor, names_model=names_model), seed)
    refused_for_its_model(refused, officer)
    _options, added = register(client, key_of(vendor, names_model=names_model), seed)

    assert added.status_code == 200, added.content
    device = WebAuthnDevice.objects.get(user=officer)
    assert (device.aaguid, device.attested, device.approved) == (MODEL, True, True)


def test_a_model_s_anchor_may_be_an_intermediate_of_its_maker(
    mds, tmp_path, officer, vendor, policy
):
    """MDS3 lets an anchor be an intermediate CA: a series' CA under the maker's root. The
    maker's other series, under the same configured root, is not that model."""
    policy()
    series_5 = AttestationCA("Test Vendor Series 5 CA", issuer=vendor)
    series_4 = AttestationCA("Test Vendor Series 4 CA", issuer=vendor)
    imported(mds, tmp_path, entry(MODEL, NAME, roots=(root64(series_5),)))
    client, seed = with_app(officer)

    _options, refused = register(client, key_of(series_4), seed)
    refused_for_its_model(refused, officer)
    _options, added = register(client, key_of(series_5), seed)

    assert added.status_code == 200, added.content
    assert WebAuthnDevice.objects.get(user=officer).approved


@pytest.mark.parametrize(
    "aaguids", [(), (MODEL_AAGUID, OTHER_MODEL)], ids=["no-allowed-list", "listed-model"]
)
def test_another_maker_s_key_claiming_the_model_is_refused_with_or_without_a_list(
    mds, tmp_path, officer, vendor, other_vendor, two_vendors, aaguids
):
    """Its chain leads to a configured root (the other vendor is approved) and its batch
    certificate names no model; without an allowed list the model still shows on the pages
    and its "model proved" status rests on it."""
    two_vendors(aaguids)
    imported(mds, tmp_path, entry(MODEL, NAME, roots=(root64(other_vendor),)))
    client, seed = with_app(officer)

    _options, refused = register(client, key_of(vendor), seed)

    refused_for_its_model(refused, officer)
    assert "not one its claimed model's maker issues" in refused.json()["detail"]
    assert "model_roots_unreadable" not in events("mfa.verify")[-1].detail


def test_without_metadata_or_with_no_roots_for_the_model_nothing_changes(
    mds, tmp_path, officer, vendor, other_vendor, two_vendors
):
    """The configured roots alone speak for a model the metadata lists no roots for (or
    does not list): as before the metadata. Once it lists them, they count."""
    two_vendors()
    without = added_or_refused(officer, key_of(vendor))
    imported(
        mds,
        tmp_path,
        entry(MODEL, NAME, roots=()),
        entry(OTHER, "Other Key", roots=(root64(other_vendor),)),
        number=1,
    )
    no_roots = added_or_refused(officer, key_of(vendor))
    not_listed = added_or_refused(officer, key_of(vendor, bytes(range(16))))
    other_claimed = added_or_refused(officer, key_of(vendor, OTHER_MODEL))
    imported(mds, tmp_path, entry(MODEL, NAME, roots=(root64(other_vendor),)), number=2)
    now_listed = added_or_refused(officer, key_of(vendor))

    assert [without, no_roots, not_listed] == ["added"] * 3
    assert WebAuthnDevice.objects.filter(user=officer, attested=True).count() == 3
    assert other_claimed == now_listed == passkeys.ATTESTATION_MAKER
    assert WebAuthnDevice.objects.filter(user=officer).count() == 3


def test_keys_added_before_the_metadata_keep_their_status(
    mds, tmp_path, officer, vendor, other_vendor, two_vendors
):
    """Keys are not checked again (the portal keeps no attestation certificates): the README
    says what an administrator can do. Only a new key is held to the model's roots."""
    two_vendors()
    old = key_of(vendor)
    register_through_service(officer, old)
    imported(mds, tmp_path, entry(MODEL, NAME, roots=(root64(other_vendor),)))

    signed_in = password_only(officer)
    assert sign_in_with_key(signed_in, old).json()["redirect"] == "/ra/requests/"
    assert WebAuthnDevice.objects.get(user=officer).approved
    client, seed = with_app(officer)
    again = register(client, key_of(vendor), seed)[1]

    assert again.status_code == 400
    assert again.json()["detail"] == passkeys.ATTESTATION_MAKER
    assert WebAuthnDevice.objects.filter(user=officer).count() == 1


def test_only_people_the_policy_covers_are_held_to_the_model_s_roots(
    mds, tmp_path, employee, vendor, other_vendor, two_vendors
):
    """Under ``roles`` an employee's key proves nothing and is not checked (added
    unattested, as before); once the employee is an RA officer, a new key is checked."""
    two_vendors()
    imported(mds, tmp_path, entry(MODEL, NAME, roots=(root64(other_vendor),)))
    client = verified_login(browser(), employee)

    added = register(client, key_of(vendor))[1]
    assert added.status_code == 200, added.content
    assert not WebAuthnDevice.objects.get(user=employee).attested

    employee.groups.add(Group.objects.get_or_create(name="RA officers")[0])
    mfa.forget_state(employee)
    client, seed = with_app(employee)
    refused = register(client, key_of(vendor), seed)[1]

    assert refused.status_code == 400
    assert refused.json()["detail"] == passkeys.ATTESTATION_MAKER
    assert events("mfa.verify")[-1].detail["reason"] == REASON
    assert WebAuthnDevice.objects.filter(user=employee).count() == 1


# --- roots in the database that cannot be used ----------------------------------------------


NOT_DER = base64.b64encode(b"\x30\x03\x02\x01\x01").decode()


@pytest.mark.parametrize(
    ("stored", "unreadable"),
    [
        (["%% not base64 %%"], 1),
        (["é"], 1),  # not ASCII
        ([NOT_DER], 1),
        ([17, None], 2),
        ("MIIB", 1),  # not a list
        ({"root": "MIIB"}, 1),
    ],
    ids=["not-base64", "not-ascii", "not-der", "not-text", "a-string", "an-object"],
)
def test_stored_roots_that_cannot_be_read_refuse_the_model_s_keys_and_are_logged(
    mds, tmp_path, officer, vendor, policy, caplog, stored, unreadable
):
    """The row's word, not the verified BLOB's (the import refuses what is not base64): no
    500, no anchor; the key cannot prove the model, and the log says which root and why."""
    policy()
    imported(mds, tmp_path, entry(MODEL, NAME, roots=(root64(vendor),)))
    FidoModel.objects.filter(aaguid=MODEL).update(attestation_roots=stored)
    client, seed = with_app(officer)

    with caplog.at_level(logging.WARNING, logger="accounts.fido_metadata"):
        _options, refused = register(client, key_of(vendor), seed)

    refused_for_its_model(refused, officer)
    assert events("mfa.verify")[-1].detail["model_roots_unreadable"] == unreadable
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "accounts.fido_metadata" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == unreadable
    assert all(f"attestation root of model {MODEL} cannot be used" in w for w in warnings)


def test_a_root_that_is_no_certificate_imported_from_a_blob_is_no_anchor(
    mds, tmp_path, officer, vendor, policy, caplog
):
    """The import checks base64 only: a readable root beside it still counts."""
    policy()
    imported(mds, tmp_path, entry(MODEL, NAME, roots=(NOT_DER, root64(vendor))), number=1)

    with caplog.at_level(logging.WARNING, logger="accounts.fido_metadata"):
        added = added_or_refused(officer, key_of(vendor))
    imported(mds, tmp_path, entry(MODEL, NAME, roots=(NOT_DER,)), number=2)
    refused = added_or_refused(officer, key_of(vendor))

    assert added == "added"
    assert f"model {MODEL} cannot be used (entry 1: not a DER certificate)" in caplog.text
    assert refused == passkeys.ATTESTATION_MAKER
    event = events("mfa.verify")[-1]
    assert (event.detail["reason"], event.detail["model_roots_unreadable"]) == (REASON, 1)


# --- the partial-chain check itself ---------------------------------------------------------


def test_read_anchors_keeps_the_certificates_and_says_why_of_the_others(vendor):
    anchors, problems = read_anchors([root64(vendor), "AA AA\nAA==", 3, "%"])
    assert [a.subject for a in anchors] == [vendor.certificate.subject]
    assert problems == [
        "entry 2: not a DER certificate",
        "entry 3: not text but int",
        "entry 4: not base64",
    ]


def test_an_anchor_may_be_a_root_an_intermediate_or_the_batch_certificate(vendor):
    from cryptography import x509

    series = AttestationCA("Test Vendor Series 5 CA", issuer=vendor)
    other = AttestationCA("Other Vendor Attestation Root")
    chain = series.attestation().chain  # the batch certificate, then the series' CA
    batch = x509.load_der_x509_certificate(chain[0])
    now = datetime.now(UTC)

    assert chains_to_anchor(chain, [vendor.certificate], now=now)
    assert chains_to_anchor(chain, [series.certificate], now=now)
    assert chains_to_anchor(chain[:1], [series.certificate], now=now)  # the CA not sent
    assert chains_to_anchor(chain, [batch], now=now)
    assert chains_to_anchor(chain, [other.certificate, vendor.certificate], now=now)
    assert not chains_to_anchor(chain, [other.certificate], now=now)
    assert not chains_to_anchor(chain[:1], [vendor.certificate], now=now)  # a link missing
    assert not chains_to_anchor(chain, [], now=now)
    assert not chains_to_anchor([], [vendor.certificate], now=now)
    assert not chains_to_anchor([b"\x30\x00"], [vendor.certificate], now=now)


def test_a_listed_anchor_off_the_path_counts_for_nothing(vendor):
    """A chain may carry the model's anchor without leading to it: the path is built from
    the batch certificate, not taken as sent."""
    series_5 = AttestationCA("Test Vendor Series 5 CA", issuer=vendor)
    series_4 = AttestationCA("Test Vendor Series 4 CA", issuer=vendor)
    chain = [*series_4.attestation().chain, series_5.der]
    now = datetime.now(UTC)

    assert not chains_to_anchor(chain, [series_5.certificate], now=now)
    assert chains_to_anchor(chain, [series_4.certificate], now=now)


def test_an_anchor_or_chain_out_of_its_validity_leads_nowhere(vendor):
    chain = vendor.attestation().chain
    end = vendor.certificate.not_valid_after_utc

    assert not chains_to_anchor(chain, [vendor.certificate], now=end + timedelta(days=1))
    before = vendor.certificate.not_valid_before_utc - timedelta(days=1)
    assert not chains_to_anchor(chain, [vendor.certificate], now=before)
