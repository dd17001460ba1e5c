"""The OCSP responder as OpenSSL's and NSS's clients see it, over HTTP on the live server.

`openssl ocsp` sends its request (POST, with a nonce it then checks), verifies the
response's signature against the root it is given and prints the status; a GET made
with the standard library is read back with `openssl ocsp -respin`. NSS (Thunderbird's
library) asks the responder its certificate names, as a mail client does.
"""

from __future__ import annotations

import base64
import shutil
import urllib.request
from urllib.parse import quote

import pytest

from cryptography.hazmat.primitives.serialization import Encoding

from enrollment import ocsp, services
from enrollment.models import CertificateAuthority
from enrollment.x509.keys import KeyAlgorithm, generate_private_key
from tests.pki import run_tool

pytestmark = [
    pytest.mark.interop,
    # live_server answers from another thread, so rows must be committed; serialized
    # rollback restores the seeded templates for the tests that run after this one.
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


@pytest.fixture(autouse=True)
def _nothing_kept():
    ocsp.forget_signed_responses()
    yield
    ocsp.forget_signed_responses()


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, dict(response.headers), response.read()


@pytest.fixture
def portal(live_server, hierarchy, template, employee, openssl):
    """root.pem and issuing.pem as /pki/ serves them, leaf.pem issued by the portal."""
    for slug in ("root", "issuing"):
        status, _, der = fetch(f"{live_server.url}/pki/{slug}.crt")
        assert status == 200
        openssl.write(f"{slug}.der", der)
        openssl.run("x509", "-inform", "DER", "-in", f"{slug}.der", "-out", f"{slug}.pem")
    leaf = services.certificate_issue(
        template=template("smime-dual-use"),
        owner=employee,
        public_key=generate_private_key(KeyAlgorithm.EC_P256).public_key(),
    )
    openssl.write_pem("leaf.pem", leaf.certificate)
    return leaf


def ask(openssl, url: str, *options: str, cert: str = "leaf.pem", issuer: str = "issuing.pem"):
    """`openssl ocsp` against the responder; stdout and stderr together."""
    result = openssl.run(
        "ocsp", *options, "-issuer", issuer, "-cert", cert, "-url", url,
        "-CAfile", "root.pem", "-resp_text",
    )  # fmt: skip
    return result.stdout.decode() + result.stderr.decode()


def test_openssl_finds_a_valid_certificate_good_and_the_signature_sound(
    live_server, portal, openssl
):
    printed = ask(openssl, f"{live_server.url}/pki/ocsp/")

    assert "Response verify OK" in printed
    assert "leaf.pem: good" in printed
    assert "Cert Status: good" in printed
    assert "Responder Id: " in printed  # by key hash
    assert "Next Update:" in printed
    # openssl sent a nonce and checked the echo; it would warn of a missing or wrong one.
    assert "OCSP Nonce" in printed
    assert "WARNING" not in printed
    assert "nonce verify error" not in printed.lower()


def test_openssl_finds_a_revoked_certificate_revoked_with_its_reason_at_once(
    live_server, portal, openssl
):
    url = f"{live_server.url}/pki/ocsp/"
    assert "leaf.pem: good" in ask(openssl, url, "-no_nonce")  # now kept by the server

    services.certificate_revoke(certificate=portal, reason="keyCompromise", actor=None)
    printed = ask(openssl, url, "-no_nonce")

    assert "Response verify OK" in printed
    assert "leaf.pem: revoked" in printed
    assert "Reason: keyCompromise" in printed
    assert "Revocation Time:" in printed


def test_openssl_gets_a_sha256_certid_answered(live_server, portal, openssl):
    printed = ask(openssl, f"{live_server.url}/pki/ocsp/", "-sha256")

    assert "Response verify OK" in printed
    assert "leaf.pem: good" in printed
    assert "Hash Algorithm: sha256" in printed


def test_openssl_gets_unknown_for_a_serial_never_issued(live_server, portal, openssl):
    result = openssl.run(
        "ocsp", "-issuer", "issuing.pem", "-serial", "0x4242424242424242424242",
        "-url", f"{live_server.url}/pki/ocsp/", "-CAfile", "root.pem",
    )  # fmt: skip
    printed = result.stdout.decode() + result.stderr.decode()

    assert "Response verify OK" in printed
    assert "0x4242424242424242424242: unknown" in printed


def test_openssl_is_told_the_offline_roots_certificates_are_not_answered_here(
    live_server, portal, openssl
):
    result = openssl.run(
        "ocsp", "-issuer", "root.pem", "-cert", "issuing.pem",
        "-url", f"{live_server.url}/pki/ocsp/", "-CAfile", "root.pem",
        check=False,
    )  # fmt: skip
    printed = result.stdout.decode() + result.stderr.decode()

    assert "Responder Error: unauthorized (6)" in printed


def test_a_get_answer_reads_back_with_openssl(live_server, portal, openssl):
    """RFC 6960 A.1: GET {url}/{url-encoded base64 of the DER request}."""
    openssl.run(
        "ocsp", "-issuer", "issuing.pem", "-cert", "leaf.pem", "-no_nonce", "-reqout", "req.der"
    )
    encoded = quote(base64.b64encode(openssl.path("req.der").read_bytes()).decode(), safe="")

    status, headers, body = fetch(f"{live_server.url}/pki/ocsp/{encoded}")

    assert status == 200
    assert headers["Content-Type"] == "application/ocsp-response"
    assert headers["Cache-Control"].startswith("public, max-age=")
    assert "ETag" in headers
    openssl.write("resp.der", body)
    result = openssl.run(
        "ocsp", "-respin", "resp.der", "-issuer", "issuing.pem", "-cert", "leaf.pem",
        "-CAfile", "root.pem", "-no_nonce", "-resp_text",
    )  # fmt: skip
    printed = result.stdout.decode() + result.stderr.decode()
    assert "Response verify OK" in printed
    assert "leaf.pem: good" in printed


def test_the_responder_url_in_the_certificate_is_the_one_that_answers(live_server, portal, openssl):
    """What a client does: take the URL from the certificate's AIA (`-ocsp_uri`)."""
    uri = openssl.run("x509", "-in", "leaf.pem", "-noout", "-ocsp_uri").stdout.decode().strip()
    assert uri == "http://pki.example.com/pki/ocsp/"

    printed = ask(openssl, uri.replace("http://pki.example.com", live_server.url))

    assert "leaf.pem: good" in printed


# --- NSS, Thunderbird's library --------------------------------------------------------------


@pytest.fixture
def nss(live_server, hierarchy, template, employee, tmp_path):
    """An NSS database trusting the root for e-mail, and ``issue()``: a certificate whose
    AIA names this live server's responder, added to the database."""
    if shutil.which("ocspclnt") is None:
        pytest.skip("NSS tools (libnss3-tools) absent")
    CertificateAuthority.objects.filter(pk=hierarchy.issuing.pk).update(
        ocsp_url=f"{live_server.url}/pki/ocsp/"
    )
    database = f"sql:{tmp_path / 'db'}"
    (tmp_path / "db").mkdir()

    def tool(*args: str) -> str:
        result = run_tool(list(args), cwd=tmp_path, text=True)
        return result.stdout + result.stderr

    def add(nickname: str, der: bytes, trust: str = ",,") -> None:
        (tmp_path / f"{nickname}.der").write_bytes(der)
        tool("certutil", "-A", "-d", database, "-n", nickname, "-t", trust, "-i", f"{nickname}.der")

    tool("certutil", "-N", "-d", database, "--empty-password")
    add("root", bytes(hierarchy.root.der), "C,C,C")
    add("issuing", bytes(hierarchy.issuing.der))

    def issue(nickname: str):
        certificate = services.certificate_issue(
            template=template("smime-signing"),
            owner=employee,
            public_key=generate_private_key(KeyAlgorithm.EC_P256).public_key(),
        )
        add(nickname, certificate.certificate.public_bytes(Encoding.DER))
        return certificate

    def status(nickname: str) -> str:
        """ocspclnt -S: ask the responder the certificate names, check the answer."""
        return tool("ocspclnt", "-d", database, "-S", nickname)

    return issue, status


def test_nss_asks_the_responder_the_certificate_names_and_finds_it_good(nss):
    issue, status = nss
    issue("alice")

    assert 'Check of certificate "alice" succeeded.' in status("alice")


def test_nss_finds_a_revoked_certificate_revoked(nss):
    issue, status = nss
    certificate = issue("alice")
    services.certificate_revoke(certificate=certificate, reason="keyCompromise", actor=None)

    printed = status("alice")

    assert 'Check of certificate "alice" failed.' in printed
    assert "Peer's Certificate has been revoked." in printed
