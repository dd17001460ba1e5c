"""The issuing CA's key in an HSM (PKCS#11), against a real SoftHSM2 token.

Keys are made by the portal's commands or by OpenSC's pkcs11-tool; what the token signs
is checked with the openssl CLI against the root, never by reading our output back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from enrollment import health, keystore, keystore_pkcs11, services
from enrollment.exceptions import KeyStoreError
from enrollment.models import AuditEvent, Certificate, CertificateAuthority, CertificateTemplate
from enrollment.x509 import builder, crl_fast
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import ROOT_PASSPHRASE, client_for
from tests.enrollment.api_tools import ENROLLMENTS, csr_body, token_client
from tests.enrollment.tools import issue, new_key
from tests.pki import subject_for

pytestmark = pytest.mark.django_db


def run(command: str, /, **options: object) -> str:
    out = StringIO()
    call_command(command, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


@pytest.fixture
def hsm_hierarchy(hsm, hierarchy):
    """create_pki's hierarchy with PKIPORTAL_KEY_BACKEND=pkcs11: the issuing key in the token."""
    return hierarchy


@pytest.fixture
def passphrase_file(tmp_path):
    path = tmp_path / "root-passphrase"
    path.write_bytes(ROOT_PASSPHRASE)
    return path


def pem(openssl, name, *certificates):
    return str(openssl.write_pem(name, *certificates))


def spki(key) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


# --- creating the key -----------------------------------------------------------------


def test_create_pki_generates_the_issuing_key_in_the_token_never_extractable(
    hsm, db, tmp_path, settings, passphrase_file, openssl
):
    output = run(
        "create_pki",
        root_key_out=str(tmp_path / "root.pem"),
        root_passphrase_file=str(passphrase_file),
        root_key_algorithm="ec-p384",
        issuing_key_algorithm="ec-p256",
        country="GB",
        no_name_constraints=True,
    )

    issuing = CertificateAuthority.objects.get(slug="issuing")
    assert issuing.key_backend == "pkcs11"
    assert issuing.key_reference.startswith("pkcs11:object=pkiportal-issuing;id=%")
    assert not (settings.PKIPORTAL_KEY_DIR / "issuing.key.pem").exists()
    assert "generated in the token, never extractable" in output
    # OpenSC's view of the token: sensitive, made there, signing only, no way out.
    listed = hsm.tool("--list-objects", "--type", "privkey")
    assert "label:      pkiportal-issuing" in listed
    assert "Access:     sensitive, always sensitive, never extractable, local" in listed
    usage = listed.split("Usage:", 1)[1].splitlines()[0].strip()
    assert usage == "sign"
    facts = keystore.ca_key_facts(issuing)
    assert facts.as_dict() == {
        "label": "pkiportal-issuing", "id": facts.id, "private": "yes", "sensitive": "yes",
        "always_sensitive": "yes", "extractable": "no", "never_extractable": "yes",
        "local": "yes",
    }  # fmt: skip
    event = AuditEvent.objects.get(action="ca.create", object_id=str(issuing.pk))
    assert event.detail["key_facts"] == facts.as_dict()
    assert event.detail["key_reference"] == issuing.key_reference
    # The token will not hand the value out, whoever asks.
    refused = hsm.tool("--read-object", "--type", "privkey", "--label", "pkiportal-issuing",
                       check=False)  # fmt: skip
    assert "BEGIN" not in refused
    with pytest.raises(KeyStoreError, match="HSM"):
        keystore._ca_key(issuing).private_bytes()
    # The same public key in the token and in the certificate the root signed.
    key_id = keystore_pkcs11.TokenKeySelector.from_uri(issuing.key_reference).id.hex()
    assert _token_public_der(hsm, key_id, openssl) == spki(issuing.certificate.public_key())
    root = CertificateAuthority.objects.get(slug="root")
    verified = openssl.run(
        "verify", "-CAfile", pem(openssl, "root.pem", root.certificate),
        pem(openssl, "issuing.pem", issuing.certificate),
    )  # fmt: skip
    assert b"issuing.pem: OK" in verified.stdout
    # Its first CRL was signed in the token, and openssl checks it against the CA.
    openssl.write("first.crl", issuing.latest_crl().der)
    checked = openssl.run(
        "crl", "-inform", "DER", "-in", "first.crl", "-CAfile", "issuing.pem", "-noout"
    )
    assert b"verify OK" in checked.stdout + checked.stderr


def test_create_issuing_ca_uses_a_key_the_operator_made_with_pkcs11_tool(
    hierarchy, hsm, passphrase_file, openssl
):
    hsm.tool("--keypairgen", "--key-type", "EC:prime256v1", "--label", "operator-ca-key",
             "--id", "a1b2c3", "--usage-sign")  # fmt: skip

    output = run(
        "create_issuing_ca",
        root_key_file=str(hierarchy.root_key_path),
        root_passphrase_file=str(passphrase_file),
        slug="issuing-hsm",
        name="Test Issuing CA HSM",
        hsm_key_label="operator-ca-key",
    )

    ca = CertificateAuthority.objects.get(slug="issuing-hsm")
    assert ca.key_backend == "pkcs11"
    assert ca.key_reference == "pkcs11:object=operator-ca-key;id=%a1%b2%c3;type=private"
    assert "label 'operator-ca-key', id a1b2c3" in output
    keystore.check_ca_key(ca)
    openssl.write("token.der", _token_public_der(hsm, "a1b2c3", openssl))
    token_key = openssl.run("pkey", "-pubin", "-inform", "DER", "-in", "token.der").stdout
    certified = openssl.run(
        "x509", "-in", pem(openssl, "ca.pem", ca.certificate), "-noout", "-pubkey"
    ).stdout
    assert token_key == certified
    event = AuditEvent.objects.get(action="ca.create", object_id=str(ca.pk))
    assert event.detail["key_backend"] == "pkcs11"
    assert event.detail["key_reference"] == ca.key_reference
    assert event.detail["key_algorithm"] == "ec-p256"
    # The CA's key stays where the operator put it when the CA goes on to sign.
    verified = openssl.run(
        "verify", "-CAfile", pem(openssl, "root.pem", hierarchy.root.certificate), "ca.pem"
    )
    assert b"ca.pem: OK" in verified.stdout


def _token_public_der(hsm, key_id: str, openssl) -> bytes:
    path = openssl.path(f"{key_id}.pub.der")
    hsm.tool("--read-object", "--type", "pubkey", "--id", key_id, "--output-file", str(path))
    return path.read_bytes()


def _adopt(hierarchy, passphrase_file, slug: str, **options: object) -> str:
    return run(
        "create_issuing_ca",
        root_key_file=str(hierarchy.root_key_path),
        root_passphrase_file=str(passphrase_file),
        slug=slug,
        name=f"Test Issuing CA {slug}",
        **options,
    )


def test_an_extractable_key_the_operator_made_is_refused(hierarchy, hsm, passphrase_file):
    hsm.tool("--keypairgen", "--key-type", "EC:prime256v1", "--label", "wrappable",
             "--id", "e1e1", "--usage-sign", "--extractable")  # fmt: skip
    assert "extractable" in hsm.tool("--list-objects", "--type", "privkey", "--id", "e1e1")

    with pytest.raises(
        CommandError, match=r"can be wrapped out of the token \(CKA_EXTRACTABLE yes\)"
    ):
        _adopt(hierarchy, passphrase_file, "issuing-wrap", hsm_key_label="wrappable")

    assert not CertificateAuthority.objects.filter(slug="issuing-wrap").exists()
    assert "e1e1" in hsm.tool("--list-objects", "--type", "privkey")  # the operator's stays


def test_an_extractable_key_is_taken_only_when_allowed_and_then_loudly(
    hierarchy, hsm, passphrase_file
):
    hsm.tool("--keypairgen", "--key-type", "EC:prime256v1", "--label", "wrappable",
             "--id", "e2e2", "--usage-sign", "--extractable")  # fmt: skip

    output = _adopt(
        hierarchy, passphrase_file, "issuing-wrap", hsm_key_id="e2e2", allow_extractable_key=True
    )

    ca = CertificateAuthority.objects.get(slug="issuing-wrap")
    # CKA_LOCAL alone says where it was made: in the token, and extractable all the same.
    assert "label 'wrappable', id e2e2: generated in the token, EXTRACTABLE" in output
    assert "WARNING: this CA key may exist outside the HSM" in output
    event = AuditEvent.objects.get(action="ca.create", object_id=str(ca.pk))
    assert event.detail["allow_extractable_key"] is True
    assert event.detail["key_facts"]["extractable"] == "yes"
    assert event.detail["key_facts"]["never_extractable"] == "no"
    assert event.detail["key_facts"]["local"] == "yes"
    keystore.check_ca_key(ca)


def test_allowing_an_extractable_key_needs_a_key_to_allow(hierarchy, hsm, passphrase_file):
    with pytest.raises(CommandError, match="--allow-extractable-key is for a key you name"):
        _adopt(hierarchy, passphrase_file, "issuing-gen", allow_extractable_key=True)


def _token_keypair(label: str, key_id: bytes, **private: object) -> None:
    """A P-256 key pair made through the PKCS#11 API with attributes pkcs11-tool does not
    offer (as an HSM's own tools can)."""
    import pkcs11

    attribute = pkcs11.Attribute
    session = keystore_pkcs11._state().session
    parameters = session.create_domain_parameters(
        pkcs11.KeyType.EC, {attribute.EC_PARAMS: bytes.fromhex("06082a8648ce3d030107")},
        local=True,
    )  # fmt: skip
    template = {attribute.TOKEN: True, attribute.SIGN: True, attribute.SENSITIVE: True,
                attribute.PRIVATE: True, attribute.EXTRACTABLE: False}  # fmt: skip
    template.update({getattr(attribute, name): value for name, value in private.items()})
    parameters.generate_keypair(
        id=key_id, label=label, store=True,
        capabilities=pkcs11.MechanismFlag.SIGN | pkcs11.MechanismFlag.VERIFY,
        private_template=template, public_template={attribute.TOKEN: True},
    )  # fmt: skip


def test_a_key_that_signs_without_login_is_refused_even_when_extractable_is_allowed(
    hierarchy, hsm, passphrase_file
):
    _token_keypair("public-ca", b"\x77\x77", PRIVATE=False)
    # Any process that reaches the token has it sign, without the user PIN.
    assert "public-ca" in hsm.tool("--list-objects", "--type", "privkey", login=False)

    with pytest.raises(CommandError, match=r"it is not private \(CKA_PRIVATE no\)"):
        _adopt(
            hierarchy, passphrase_file, "issuing-public", hsm_key_label="public-ca",
            allow_extractable_key=True,
        )  # fmt: skip

    assert not CertificateAuthority.objects.filter(slug="issuing-public").exists()


def test_a_key_the_token_will_not_say_is_unextractable_counts_as_extractable(
    hierarchy, hsm, passphrase_file, monkeypatch
):
    """A token that refuses to read CKA_EXTRACTABLE: "unknown", never "never extractable"."""
    import pkcs11

    hsm.tool("--keypairgen", "--key-type", "EC:prime256v1", "--label", "mute",
             "--id", "3333", "--usage-sign")  # fmt: skip
    real = keystore_pkcs11._attribute

    def refusing(obj, name):
        return None if name == pkcs11.Attribute.EXTRACTABLE else real(obj, name)

    monkeypatch.setattr(keystore_pkcs11, "_attribute", refusing)

    with pytest.raises(CommandError, match=r"CKA_EXTRACTABLE unknown"):
        _adopt(hierarchy, passphrase_file, "issuing-mute", hsm_key_label="mute")
    output = _adopt(
        hierarchy, passphrase_file, "issuing-mute", hsm_key_label="mute",
        allow_extractable_key=True,
    )  # fmt: skip

    assert "extractability unknown" in output
    assert "never extractable" not in output


def test_create_pki_refuses_a_weak_operator_key_cleanly(hsm, db, tmp_path, passphrase_file):
    hsm.tool("--keypairgen", "--key-type", "rsa:1024", "--label", "weak", "--id", "0bad",
             "--usage-sign")  # fmt: skip

    with pytest.raises(CommandError, match="RSA"):
        run(
            "create_pki",
            root_key_out=str(tmp_path / "root.pem"),
            root_passphrase_file=str(passphrase_file),
            country="GB",
            no_name_constraints=True,
            hsm_key_label="weak",
        )

    assert not CertificateAuthority.objects.exists()
    assert not (tmp_path / "root.pem").exists()
    assert "0bad" in hsm.tool("--list-objects", "--type", "privkey")  # the operator's stays


def test_an_existing_key_can_be_chosen_by_id_alone(hierarchy, hsm, passphrase_file):
    hsm.tool("--keypairgen", "--key-type", "EC:prime256v1", "--label", "by-id",
             "--id", "0d0e", "--usage-sign")  # fmt: skip

    run(
        "create_issuing_ca",
        root_key_file=str(hierarchy.root_key_path),
        root_passphrase_file=str(passphrase_file),
        slug="issuing-by-id",
        name="Test Issuing CA By Id",
        hsm_key_id="0d0e",
    )

    ca = CertificateAuthority.objects.get(slug="issuing-by-id")
    assert ca.key_reference == "pkcs11:object=by-id;id=%0d%0e;type=private"


def test_an_existing_key_that_is_missing_creates_nothing(hierarchy, hsm, passphrase_file):
    before = CertificateAuthority.objects.count()

    with pytest.raises(CommandError, match="no private key with label 'no-such-key'"):
        run(
            "create_issuing_ca",
            root_key_file=str(hierarchy.root_key_path),
            root_passphrase_file=str(passphrase_file),
            slug="issuing-none",
            hsm_key_label="no-such-key",
        )

    assert CertificateAuthority.objects.count() == before


def test_an_existing_key_is_refused_with_the_file_backend(hierarchy, passphrase_file):
    with pytest.raises(CommandError, match="need PKIPORTAL_KEY_BACKEND=pkcs11"):
        run(
            "create_issuing_ca",
            root_key_file=str(hierarchy.root_key_path),
            root_passphrase_file=str(passphrase_file),
            slug="issuing-x",
            hsm_key_label="anything",
        )


def test_a_failed_creation_destroys_the_key_it_generated_and_no_other(
    hsm_hierarchy, hsm, passphrase_file
):
    """The key is generated before the root certifies it: a validity the builder refuses
    fails after it exists."""
    with pytest.raises(CommandError, match="validity"):
        run(
            "create_issuing_ca",
            root_key_file=str(hsm_hierarchy.root_key_path),
            root_passphrase_file=str(passphrase_file),
            slug="issuing-fails",
            validity_days=999999,
        )

    assert "pkiportal-issuing-fails" not in hsm.tool("--list-objects")
    assert "pkiportal-issuing" in hsm.tool("--list-objects")  # the hierarchy's own key


def test_a_second_key_with_the_same_label_is_refused(hsm_hierarchy, hsm):
    hsm.tool("--keypairgen", "--key-type", "EC:prime256v1", "--label", "pkiportal-issuing-2",
             "--id", "0202", "--usage-sign")  # fmt: skip

    with pytest.raises(KeyStoreError, match="already holds a key labelled 'pkiportal-issuing-2'"):
        services.issuing_ca_create(
            spec=services.CaSpec("Test Issuing CA 2", "issuing-2", KeyAlgorithm.EC_P256, 365),
            root=hsm_hierarchy.root,
            root_key=keystore.OfflineKey(hsm_hierarchy.root_key_path, ROOT_PASSPHRASE),
            base_url="http://pki.example.com",
            organization_name="Example Org",
            country_name="GB",
        )

    assert "0202" in hsm.tool("--list-objects", "--type", "privkey")  # the operator's stays


# --- signing --------------------------------------------------------------------------


def test_an_enrolment_through_the_api_is_signed_in_the_token(hsm_hierarchy, employee, openssl):
    response = token_client(employee).post(ENROLLMENTS, csr_body(new_key()), format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    openssl.write("leaf.pem", body["certificate"].encode())
    openssl.write("chain.pem", "".join(body["chain"]).encode())
    verified = openssl.run(
        "verify", "-CAfile", pem(openssl, "root.pem", hsm_hierarchy.root.certificate),
        "-untrusted", "chain.pem", "-purpose", "smimesign", "leaf.pem",
    )  # fmt: skip
    assert b"leaf.pem: OK" in verified.stdout
    leaf = x509.load_pem_x509_certificate(body["certificate"].encode())
    assert leaf.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256
    leaf.verify_directly_issued_by(hsm_hierarchy.issuing.certificate)


def test_a_crl_with_a_revocation_is_signed_in_the_token(hsm_hierarchy, employee, template, openssl):
    certificate = issue(employee, template("smime-signing"), new_key())
    services.certificate_revoke(certificate=certificate, actor=employee, reason="superseded")
    services.crl_publish(ca=hsm_hierarchy.issuing)

    crl = hsm_hierarchy.issuing.latest_crl()
    openssl.write("issuing.crl", crl.der)
    pem(openssl, "issuing.pem", hsm_hierarchy.issuing.certificate)
    checked = openssl.run(
        "crl", "-inform", "DER", "-in", "issuing.crl", "-CAfile", "issuing.pem", "-noout", "-text"
    )
    printed = (checked.stdout + checked.stderr).decode()
    assert "verify OK" in printed
    assert x509.load_der_x509_crl(crl.der).get_revoked_certificate_by_serial_number(
        certificate.certificate.serial_number
    )
    assert f"Serial Number: {certificate.certificate.serial_number:X}" in printed


def test_an_ocsp_response_is_signed_in_the_token(hsm_hierarchy, employee, template, openssl):
    leaf = issue(employee, template("smime-signing"), new_key())
    pem(openssl, "root.pem", hsm_hierarchy.root.certificate)
    pem(openssl, "issuing.pem", hsm_hierarchy.issuing.certificate)
    pem(openssl, "leaf.pem", leaf.certificate)
    openssl.run("ocsp", "-issuer", "issuing.pem", "-cert", "leaf.pem", "-reqout", "req.der")

    response = client_for(None).post(
        "/pki/ocsp/",
        data=openssl.path("req.der").read_bytes(),
        content_type="application/ocsp-request",
    )

    assert response.status_code == 200
    openssl.write("resp.der", response.content)
    result = openssl.run(
        "ocsp", "-respin", "resp.der", "-issuer", "issuing.pem", "-cert", "leaf.pem",
        "-CAfile", "root.pem", "-no_nonce", "-resp_text",
    )  # fmt: skip
    printed = (result.stdout + result.stderr).decode()
    assert "Response verify OK" in printed
    assert "leaf.pem: good" in printed


def test_the_token_signs_what_the_builder_would_with_a_file_key(hsm_hierarchy):
    """No TBS surgery: cryptography's builder calls the token key's sign() with the TBS it
    built, so the certificate is the builder's own. Same serial, time and issuer: every
    field but the signature's value is what a file key would get, AKI from the issuer."""
    issuing = hsm_hierarchy.issuing
    token_key = keystore._ca_key(issuing)
    assert isinstance(token_key, ec.EllipticCurvePrivateKey)
    subject_key = new_key()
    policy = CertificateTemplate.objects.get(slug="smime-signing").policy()
    moment = issuing.certificate.not_valid_before_utc + timedelta(minutes=1)
    made = builder.build_end_entity(
        public_key=subject_key.public_key(),
        subject=subject_for(),
        issuer_certificate=issuing.certificate,
        issuer_key=token_key,
        policy=policy,
        crl_url=issuing.crl_url,
        ca_issuers_url=issuing.ca_issuers_url,
        not_before=moment,
        serial=4242,
    )

    made.verify_directly_issued_by(issuing.certificate)
    aki = made.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = issuing.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def test_an_rsa_key_generated_in_the_token_signs_pkcs1_v15(hsm, hierarchy, openssl):
    ca = services.issuing_ca_create(
        spec=services.CaSpec("Test RSA Issuing CA", "issuing-rsa", KeyAlgorithm.RSA_2048, 365),
        root=hierarchy.root,
        root_key=keystore.OfflineKey(hierarchy.root_key_path, ROOT_PASSPHRASE),
        base_url="http://pki.example.com",
        organization_name="Example Org",
        country_name="GB",
    )

    assert isinstance(ca.certificate.public_key(), rsa.RSAPublicKey)
    keystore.check_ca_key(ca)
    openssl.write("rsa.crl", ca.latest_crl().der)
    checked = openssl.run(
        "crl", "-inform", "DER", "-in", "rsa.crl", "-noout",
        "-CAfile", pem(openssl, "rsa-ca.pem", ca.certificate),
    )  # fmt: skip
    assert b"verify OK" in checked.stdout + checked.stderr
    assert "Usage:      sign" in hsm.tool("--list-objects", "--type", "privkey", "--label",
                                          "pkiportal-issuing-rsa")  # fmt: skip


def test_an_rsa_key_whose_token_keeps_the_exponent_on_the_public_object_only(
    hierarchy, hsm, passphrase_file, openssl, monkeypatch
):
    """Some tokens keep no CKA_PUBLIC_EXPONENT on the private key object (SoftHSM does,
    and needs it to sign: it is hidden here): the public key object beside it has it."""
    import pkcs11

    hsm.tool("--keypairgen", "--key-type", "rsa:2048", "--label", "no-exponent",
             "--id", "e0", "--usage-sign")  # fmt: skip
    from pkcs11 import _pkcs11

    read = _pkcs11.Object.__getitem__

    def without_exponent(obj, name):  # what such a token answers to C_GetAttributeValue
        if name == pkcs11.Attribute.PUBLIC_EXPONENT and isinstance(obj, pkcs11.PrivateKey):
            raise pkcs11.AttributeTypeInvalid()
        return read(obj, name)

    monkeypatch.setattr(_pkcs11.Object, "__getitem__", without_exponent)

    _adopt(hierarchy, passphrase_file, "issuing-no-e", hsm_key_id="e0")

    ca = CertificateAuthority.objects.get(slug="issuing-no-e")
    assert ca.certificate.public_key().public_numbers().e == 65537
    openssl.write("no-e.crl", ca.latest_crl().der)
    checked = openssl.run(
        "crl", "-inform", "DER", "-in", "no-e.crl", "-noout",
        "-CAfile", pem(openssl, "no-e-ca.pem", ca.certificate),
    )  # fmt: skip
    assert b"verify OK" in checked.stdout + checked.stderr


def test_threads_of_one_process_sign_at_once_and_enter_the_library_one_by_one(
    hsm_hierarchy, monkeypatch
):
    """The library is initialised without OS locking: the process lock must let one thread
    in at a time (python-pkcs11's own per-operation lock alone would let several in)."""
    import pkcs11

    issuing = hsm_hierarchy.issuing
    keystore.check_ca_key(issuing)
    inside, most, guard = 0, 0, threading.Lock()
    real_sign = pkcs11.types.SignMixin.sign

    def sign(self, data, **kwargs):
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        try:
            time.sleep(0.002)  # in the library: another thread gets its chance to enter
            return real_sign(self, data, **kwargs)
        finally:
            with guard:
                inside -= 1

    monkeypatch.setattr(pkcs11.types.SignMixin, "sign", sign)
    now = timezone.now()

    def crl(number: int) -> bytes:
        return keystore.sign_crl_der(
            issuing, revoked=b"", crl_number=1000 + number, this_update=now,
            next_update=now + timedelta(days=1),
        )  # fmt: skip

    with ThreadPoolExecutor(max_workers=8) as pool:
        signed = list(pool.map(crl, range(32)))

    assert most == 1
    for der in signed:
        assert x509.load_der_x509_crl(der).is_signature_valid(issuing.certificate.public_key())


@pytest.mark.parametrize("reset_on_fork", ["true", "false"])
def test_forked_children_sign_whatever_the_module_does_on_fork(softhsm, tmp_path, reset_on_fork):
    """In a fresh Python with a token of its own (SoftHSM reads library.reset_on_fork once
    per process): a child forked after its parent signed, after it closed its session
    (the library initialised, nothing inherited to reuse: a module that does not reset
    says "already initialised"), and while another thread of the parent is in the token
    (its lock is held by a thread the child does not have)."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "softhsm_fork.py"), str(tmp_path),
         reset_on_fork],
        capture_output=True, text=True, timeout=120,
        env={key: value for key, value in os.environ.items() if key != "SOFTHSM2_CONF"},
    )  # fmt: skip

    assert done.stdout.splitlines()[-3:] == [
        "after_signing ok",
        "after_forgetting ok",
        "while_a_thread_is_in_the_token ok",
    ], done.stdout + done.stderr
    assert done.returncode == 0


def test_a_session_the_token_closed_is_opened_again(hsm_hierarchy):
    issuing = hsm_hierarchy.issuing
    keystore.check_ca_key(issuing)
    keystore_pkcs11._STATE.session.close()  # logged out and closed under us

    keystore.check_ca_key(issuing)

    assert keystore_pkcs11._STATE.pid == os.getpid()


def test_a_p384_key_in_the_token_signs_certificates_and_crls_with_sha384(
    hsm, hierarchy, employee, openssl
):
    ca = services.issuing_ca_create(
        spec=services.CaSpec("Test P-384 Issuing CA", "issuing-384", KeyAlgorithm.EC_P384, 365),
        root=hierarchy.root,
        root_key=keystore.OfflineKey(hierarchy.root_key_path, ROOT_PASSPHRASE),
        base_url="http://pki.example.com",
        organization_name="Example Org",
        country_name="GB",
    )
    policy = CertificateTemplate.objects.get(slug="smime-signing").policy()
    leaf = keystore.issue_end_entity(
        ca, public_key=new_key().public_key(), subject=subject_for(), policy=policy
    )

    assert leaf.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384
    pem(openssl, "root.pem", hierarchy.root.certificate)
    pem(openssl, "ca384.pem", ca.certificate)
    pem(openssl, "leaf384.pem", leaf)
    verified = openssl.run(
        "verify", "-CAfile", "root.pem", "-untrusted", "ca384.pem", "leaf384.pem"
    )
    assert b"leaf384.pem: OK" in verified.stdout
    crl = x509.load_der_x509_crl(ca.latest_crl().der)
    assert crl.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384
    openssl.write("ca384.crl", ca.latest_crl().der)
    checked = openssl.run(
        "crl", "-inform", "DER", "-in", "ca384.crl", "-CAfile", "ca384.pem", "-noout"
    )
    assert b"verify OK" in checked.stdout + checked.stderr


def test_an_rsa_token_key_signs_each_digest_info_and_refuses_the_rest(hsm, openssl):
    """SHA-256/384/512 (OCSP and CRLs may ask for any), whole or prehashed, each checked
    by openssl against the public key the token itself hands out (pkcs11-tool)."""
    _, key = keystore_pkcs11.Pkcs11KeyBackend().generate(
        label="rsa-digests", algorithm=KeyAlgorithm.RSA_2048
    )
    key_id = hsm.tool("--list-objects", "--type", "pubkey").split("ID:", 1)[1].split()[0]
    openssl.write("rsa.der", _token_public_der(hsm, key_id, openssl))
    openssl.run("pkey", "-pubin", "-inform", "DER", "-in", "rsa.der", "-out", "rsa.pem")
    openssl.write("data", b"data")

    for algorithm in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
        digest = hashes.Hash(algorithm)
        digest.update(b"data")
        for signature in (
            key.sign(b"data", padding.PKCS1v15(), algorithm),
            key.sign(digest.finalize(), padding.PKCS1v15(), utils.Prehashed(algorithm)),
        ):
            openssl.write("data.sig", signature)
            verified = openssl.run(
                "dgst", f"-{algorithm.name}", "-verify", "rsa.pem", "-signature", "data.sig",
                "data",
            )  # fmt: skip
            assert b"Verified OK" in verified.stdout

    with pytest.raises(KeyStoreError, match="not sha1"):
        key.sign(b"data", padding.PKCS1v15(), hashes.SHA1())
    sha3 = hashes.Hash(hashes.SHA3_256())
    sha3.update(b"data")
    # As long as SHA-256: it was signed under SHA-256's DigestInfo.
    with pytest.raises(KeyStoreError, match="not sha3-256"):
        key.sign(sha3.finalize(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA3_256()))


def test_the_crl_fast_path_hashes_on_the_host_and_signs_the_digest(hsm_hierarchy):
    issuing = hsm_hierarchy.issuing
    key = keystore._ca_key(issuing)
    algorithm = crl_fast.signature_algorithm_for(key)
    pieces = [b"a" * 1000, b"b" * 1000]

    signature = crl_fast.sign_pieces(key, algorithm, pieces)

    issuing.certificate.public_key().verify(signature, b"".join(pieces), ec.ECDSA(algorithm.hash))


# --- what goes wrong, said clearly and without the PIN -----------------------------------


def test_a_wrong_pin_is_named_and_never_shown(hsm_hierarchy, settings):
    keystore_pkcs11.forget_process_state()
    settings.PKIPORTAL_PKCS11_PIN = "9999-wrong-pin-9999"

    with pytest.raises(KeyStoreError) as raised:
        keystore.check_ca_key(hsm_hierarchy.issuing)

    assert "wrong PIN" in raised.value.message
    assert "9999-wrong-pin-9999" not in str(raised.value)
    assert "9999-wrong-pin-9999" not in repr(raised.value.__context__)


def test_a_missing_token_is_named(hsm_hierarchy, settings):
    keystore_pkcs11.forget_process_state()
    settings.PKIPORTAL_PKCS11_TOKEN_LABEL = "no-such-token"

    with pytest.raises(KeyStoreError, match="No HSM token with label 'no-such-token'"):
        keystore.check_ca_key(hsm_hierarchy.issuing)


def test_a_key_deleted_from_the_token_is_named(hsm_hierarchy, hsm):
    keystore_pkcs11.forget_process_state()
    key_id = keystore_pkcs11.TokenKeySelector.from_uri(hsm_hierarchy.issuing.key_reference).id
    hsm.tool("--delete-object", "--type", "privkey", "--id", key_id.hex())

    with pytest.raises(KeyStoreError, match="no private key with label 'pkiportal-issuing'"):
        keystore.check_ca_key(hsm_hierarchy.issuing)


def test_a_token_key_of_another_ca_is_refused_as_not_matching(hsm_hierarchy, hsm):
    hsm.tool("--keypairgen", "--key-type", "EC:prime256v1", "--label", "stranger",
             "--id", "5a5a", "--usage-sign")  # fmt: skip
    issuing = hsm_hierarchy.issuing
    issuing.key_reference = "pkcs11:object=stranger;id=%5a%5a;type=private"

    with pytest.raises(KeyStoreError, match="does not belong to this CA's certificate"):
        keystore.check_ca_key(issuing)


def test_the_public_object_is_not_trusted_to_prove_the_pair(hsm_hierarchy, monkeypatch):
    """check_ca_key has the token sign a challenge: a token whose private key is not the
    one beside the public object (here: signatures by a stranger's key) cannot pass."""
    issuing = hsm_hierarchy.issuing
    stranger = new_key()

    def stranger_signs(reference: str, digest: bytes, mechanism: str) -> bytes:
        der = stranger.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        r, s = utils.decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    monkeypatch.setattr(keystore_pkcs11, "_token_sign", stranger_signs)

    with pytest.raises(KeyStoreError, match="does not belong to this CA's certificate"):
        keystore.check_ca_key(issuing)


def _stranger_signs(monkeypatch) -> None:
    """The token answers with signatures by another key (a swapped key, a faulty HSM)."""
    stranger = new_key()

    def stranger_signs(reference: str, digest: bytes, mechanism: str) -> bytes:
        der = stranger.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        r, s = utils.decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    monkeypatch.setattr(keystore_pkcs11, "_token_sign", stranger_signs)


def test_a_token_signature_that_does_not_verify_never_reaches_a_certificate(
    hsm_hierarchy, employee, monkeypatch
):
    keystore.check_ca_key(hsm_hierarchy.issuing)
    _stranger_signs(monkeypatch)
    before = Certificate.objects.count()

    response = token_client(employee).post(ENROLLMENTS, csr_body(new_key()), format="json")

    assert response.status_code == 503, response.content
    assert Certificate.objects.count() == before


def test_the_token_proves_it_holds_the_key_before_the_root_certifies_it(
    hsm, hierarchy, monkeypatch
):
    certified = []
    real_build = builder.build_issuing_ca

    def build_issuing_ca(**kwargs):
        certified.append(kwargs["public_key"])
        return real_build(**kwargs)

    monkeypatch.setattr(builder, "build_issuing_ca", build_issuing_ca)
    _stranger_signs(monkeypatch)

    with pytest.raises(KeyStoreError, match="does not belong to this CA's certificate"):
        services.issuing_ca_create(
            spec=services.CaSpec("Test Issuing CA X", "issuing-x", KeyAlgorithm.EC_P256, 365),
            root=hierarchy.root,
            root_key=keystore.OfflineKey(hierarchy.root_key_path, ROOT_PASSPHRASE),
            base_url="http://pki.example.com",
            organization_name="Example Org",
            country_name="GB",
        )

    assert certified == []  # the root signed nothing for it
    assert "pkiportal-issuing-x" not in hsm.tool("--list-objects")  # and the key is gone


@pytest.mark.parametrize(
    "reference",
    [
        "pkcs11:object=x;id=\u20ac",  # not ASCII: RFC 7512 percent-encodes
        "pkcs11:object=%ff%fe;type=private",  # a label that is not UTF-8
        "pkcs11:type=private",  # names no key
        "issuing.key.pem",
    ],
)
def test_a_malformed_key_reference_fails_health_and_never_crashes_it(
    hsm_hierarchy, officer, reference
):
    issuing = hsm_hierarchy.issuing
    issuing.key_reference = reference
    issuing.save(update_fields=["key_reference"])

    response = client_for(officer).get("/health/")

    assert response.status_code == 503
    entry = response.json()["checks"]["ca_keys"]["authorities"]["issuing"]
    assert entry["status"] == "fail"
    assert "Invalid PKCS#11 key reference" in entry["error"] or "Name the key" in entry["error"]


def test_a_key_reference_survives_any_label_and_id():
    for label in ["a;b=c", "100%", "é€", "x?pin-value=1", " sp ", ""]:
        for key_id in [b"", b"\x00\xff;%", bytes(range(256))]:
            if label or key_id:
                selector = keystore_pkcs11.TokenKeySelector(label=label, id=key_id)
                assert keystore_pkcs11.TokenKeySelector.from_uri(selector.uri()) == selector


def test_an_ec_token_key_refuses_weak_and_unknown_hashes(hsm_hierarchy):
    key = keystore._ca_key(hsm_hierarchy.issuing)
    sha3 = hashes.Hash(hashes.SHA3_256())
    sha3.update(b"data")

    with pytest.raises(KeyStoreError, match="SHA-256, SHA-384 or SHA-512 only, not sha1"):
        key.sign(b"data", ec.ECDSA(hashes.SHA1()))
    # As long as a SHA-256 digest: it must not be signed as one.
    with pytest.raises(KeyStoreError, match="not sha3-256"):
        key.sign(sha3.finalize(), ec.ECDSA(utils.Prehashed(hashes.SHA3_256())))


def test_without_python_pkcs11_the_error_says_what_to_install(hsm_hierarchy, monkeypatch):
    keystore_pkcs11.forget_process_state()
    monkeypatch.setitem(sys.modules, "pkcs11", None)

    with pytest.raises(KeyStoreError, match="python-pkcs11 is not installed"):
        keystore.check_ca_key(hsm_hierarchy.issuing)


def test_the_file_backend_never_imports_python_pkcs11(hierarchy, monkeypatch):
    monkeypatch.setitem(sys.modules, "pkcs11", None)

    keystore.check_ca_key(hierarchy.issuing)


# --- /health/ -------------------------------------------------------------------------


def test_health_signs_a_challenge_with_the_hsm_key(hsm_hierarchy, officer):
    response = client_for(officer).get("/health/")

    check = response.json()["checks"]["ca_keys"]
    assert check == {
        "status": "ok",
        "authorities": {"issuing": {"status": "ok", "backend": "pkcs11"}},
    }


def test_health_fails_naming_the_lost_key_and_never_the_pin(hsm_hierarchy, hsm, officer):
    keystore_pkcs11.forget_process_state()
    key_id = keystore_pkcs11.TokenKeySelector.from_uri(hsm_hierarchy.issuing.key_reference).id
    hsm.tool("--delete-object", "--type", "privkey", "--id", key_id.hex())

    response = client_for(officer).get("/health/")

    assert response.status_code == 503
    entry = response.json()["checks"]["ca_keys"]["authorities"]["issuing"]
    assert entry["status"] == "fail"
    assert "no private key with label 'pkiportal-issuing'" in entry["error"]
    assert hsm.pin not in response.content.decode()


def _count_token_signatures(monkeypatch) -> list[str]:
    signed: list[str] = []
    real = keystore_pkcs11._token_sign

    def counting(reference: str, payload: bytes, mechanism: str) -> bytes:
        signed.append(reference)
        return real(reference, payload, mechanism)

    monkeypatch.setattr(keystore_pkcs11, "_token_sign", counting)
    return signed


def test_anonymous_health_probes_make_the_token_sign_at_most_once_a_minute(
    hsm_hierarchy, officer, monkeypatch
):
    signed = _count_token_signatures(monkeypatch)
    anonymous = client_for(None)

    for _ in range(5):
        response = anonymous.get("/health/")
        assert "checks" not in response.json()  # the verdict only

    assert len(signed) == 1
    # Callers allowed details check afresh; the minute over, anonymous probes once more.
    assert client_for(officer).get("/health/").json()["checks"]["ca_keys"]["status"] == "ok"
    assert len(signed) == 2
    monkeypatch.setattr(health, "CA_KEY_CHECK_SECONDS", 0.0)
    anonymous.get("/health/")
    assert len(signed) == 3


def test_a_stuck_hsm_fails_health_and_enrolment_quickly(
    hsm_hierarchy, officer, employee, monkeypatch
):
    """PKCS#11 calls have no timeout: a thread inside a hung C_Sign holds the lock, and
    every other caller gives up after a bounded wait instead of hanging with it."""
    keystore.check_ca_key(hsm_hierarchy.issuing)  # the session is open; the key is known
    monkeypatch.setattr(keystore, "HEALTH_WAIT_SECONDS", 0.3)
    monkeypatch.setattr(keystore_pkcs11, "SIGN_WAIT_SECONDS", 0.5)
    held, release = threading.Event(), threading.Event()

    def hung_call():
        with keystore_pkcs11._LOCK:
            held.set()
            release.wait(10)

    stuck = threading.Thread(target=hung_call)
    stuck.start()
    timer = threading.Timer(6, release.set)  # without a bounded wait, the test ends anyway
    timer.start()
    try:
        held.wait()
        started = time.monotonic()
        response = client_for(officer).get("/health/")
        health_took = time.monotonic() - started
        started = time.monotonic()
        enrolled = token_client(employee).post(ENROLLMENTS, csr_body(new_key()), format="json")
        enrol_took = time.monotonic() - started
    finally:
        release.set()
        stuck.join()
        timer.cancel()

    assert response.status_code == 503
    entry = response.json()["checks"]["ca_keys"]["authorities"]["issuing"]
    assert entry["status"] == "fail"
    assert "The HSM is busy" in entry["error"]
    assert health_took < 3
    assert enrolled.status_code == 503, enrolled.content
    assert enrol_took < 3
    keystore.check_ca_key(hsm_hierarchy.issuing)  # and it signs again once the call returns


def test_health_fails_for_a_missing_key_file_too(hierarchy, settings, officer):
    (settings.PKIPORTAL_KEY_DIR / hierarchy.issuing.key_reference).unlink()
    keystore._PROCESS_KEYS.clear()

    response = client_for(officer).get("/health/")

    assert response.status_code == 503
    assert response.json()["checks"]["ca_keys"]["status"] == "fail"
