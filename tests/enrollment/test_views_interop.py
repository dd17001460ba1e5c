"""Two colleagues enrol through the web pages and then mail each other with the openssl CLI.

Alice brings a CSR made by `openssl req` (claiming to be someone else); Bob lets the portal
generate his key and downloads the .p12. Each signs a message the other verifies against
the root from /pki/, and each encrypts a reply the other decrypts.
"""

from __future__ import annotations

import pytest

from enrollment.models import Certificate
from tests.conftest import client_for
from tests.enrollment.tools import EC_P256, openssl_csr
from tests.enrollment.web import PASSWORD, enrol_with_csr, enrol_with_portal_key

pytestmark = [pytest.mark.interop, pytest.mark.django_db]


@pytest.fixture
def colleagues(employee, colleague, hierarchy, openssl):
    """alice.pem/alice-key.pem from her CSR, bob.pem/bob-key.pem from his .p12, the root."""
    alice, bob = client_for(employee), client_for(colleague)

    csr = openssl_csr(openssl, "alice", *EC_P256).read_text()
    response = enrol_with_csr(alice, "smime-dual-use", csr=csr)
    assert response.status_code == 302, response.content
    page = alice.get(response["Location"]).content.decode()
    assert "Your request asked for mallory@evil.example" in page
    mine = Certificate.objects.get(owner=employee)
    openssl.write("alice.pem", alice.get(f"/certificates/{mine.pk}/download/pem/").content)

    p12 = enrol_with_portal_key(bob, "smime-dual-use", algorithm="ec-p256")
    assert p12["Content-Type"] == "application/x-pkcs12"
    openssl.write("bob.p12", p12.content)
    passin = f"-passin=pass:{PASSWORD}"
    openssl.run("pkcs12", "-in", "bob.p12", passin, "-nocerts", "-nodes", "-out", "bob-key.pem")
    openssl.run("pkcs12", "-in", "bob.p12", passin, "-clcerts", "-nokeys", "-out", "bob.pem")

    anonymous = client_for(None)
    openssl.write("root.der", anonymous.get("/pki/root.crt").content)
    openssl.write("issuing.der", anonymous.get("/pki/issuing.crt").content)
    openssl.run("x509", "-inform", "DER", "-in", "root.der", "-out", "root.pem")
    openssl.run("x509", "-inform", "DER", "-in", "issuing.der", "-out", "issuing.pem")
    return openssl


@pytest.mark.parametrize(("sender", "recipient"), [("alice", "bob"), ("bob", "alice")])
def test_colleagues_sign_and_encrypt_to_each_other(colleagues, sender, recipient):
    openssl = colleagues
    for person in (sender, recipient):
        openssl.run("pkey", "-in", f"{person}-key.pem", "-check", "-noout")
        subject = openssl.run("x509", "-in", f"{person}.pem", "-noout", "-subject").stdout
        assert {"alice": b"Alice Andersson", "bob": b"Bob Brown"}[person] in subject
    openssl.write("hello.txt", f"Hello {recipient}, this is {sender}.\n".encode())

    openssl.run(
        "cms", "-sign", "-in", "hello.txt", "-signer", f"{sender}.pem",
        "-inkey", f"{sender}-key.pem", "-certfile", "issuing.pem", "-out", "signed.eml",
    )  # fmt: skip
    verified = openssl.run(
        "cms", "-verify", "-in", "signed.eml", "-CAfile", "root.pem", "-out", "verified.txt"
    )

    assert b"Verification successful" in verified.stderr
    # S/MIME canonicalises line ends to CRLF (RFC 8551 3.1.1).
    verified_text = openssl.path("verified.txt").read_bytes().replace(b"\r\n", b"\n")
    assert verified_text == openssl.path("hello.txt").read_bytes()

    openssl.write("reply.txt", f"Got it, {sender}. Secret reply from {recipient}.\n".encode())
    openssl.run(
        "cms", "-encrypt", "-aes256", "-in", "reply.txt", "-out", "reply.eml", f"{sender}.pem"
    )
    openssl.run(
        "cms", "-decrypt", "-in", "reply.eml", "-recip", f"{sender}.pem",
        "-inkey", f"{sender}-key.pem", "-out", "decrypted.txt",
    )  # fmt: skip

    decrypted = openssl.path("decrypted.txt").read_bytes().replace(b"\r\n", b"\n")
    assert decrypted == openssl.path("reply.txt").read_bytes()
    assert b"Secret reply" not in openssl.path("reply.eml").read_bytes()


def test_a_forged_signature_does_not_verify(colleagues):
    openssl = colleagues
    openssl.write("hello.txt", b"Pay Mallory.\n")
    openssl.run(
        "cms", "-sign", "-in", "hello.txt", "-signer", "bob.pem", "-inkey", "bob-key.pem",
        "-certfile", "issuing.pem", "-out", "signed.eml",
    )  # fmt: skip
    tampered = openssl.path("signed.eml").read_bytes().replace(b"Pay Mallory.", b"Pay Eve!!!.")
    openssl.write("tampered.eml", tampered)

    result = openssl.run(
        "cms", "-verify", "-in", "tampered.eml", "-CAfile", "root.pem", check=False
    )

    assert result.returncode != 0


def test_the_openssl_command_on_a_csrs_page_makes_a_working_pkcs12(employee, hierarchy, openssl):
    """The page's command, run as shown on the files the page offers, gives a .p12 with
    the key, the certificate and its chain."""
    import html
    import re

    alice = client_for(employee)
    csr = openssl_csr(openssl, "alice", *EC_P256).read_text()
    response = enrol_with_csr(alice, "smime-signing", csr=csr)
    page = html.unescape(alice.get(response["Location"]).content.decode())
    [command] = re.findall(r"<code>(openssl pkcs12 -export [^<]+)</code>", page)
    mine = Certificate.objects.get(owner=employee)
    chain_file = command.split(" -in ")[1].split()[0]
    openssl.write(chain_file, alice.get(f"/certificates/{mine.pk}/download/chain/").content)
    openssl.path("alice-key.pem").rename(openssl.path("key.pem"))

    openssl.run(*command.split()[1:], "-passout", f"pass:{PASSWORD}")

    certificates = openssl.run(
        "pkcs12", "-in", "me.p12", f"-passin=pass:{PASSWORD}", "-nokeys"
    ).stdout
    assert certificates.count(b"BEGIN CERTIFICATE") == 3
    assert b"Alice Andersson" in certificates
    openssl.run("pkcs12", "-in", "me.p12", f"-passin=pass:{PASSWORD}", "-nocerts", "-nodes",
                "-out", "key-again.pem")  # fmt: skip
    assert (
        openssl.run("pkey", "-in", "key-again.pem", "-pubout").stdout
        == openssl.run("pkey", "-in", "key.pem", "-pubout").stdout
    )
