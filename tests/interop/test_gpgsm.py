"""GnuPG's gpgsm signs, verifies, encrypts and checks CRLs with what the portal issues.

A throwaway GNUPGHOME per test, set up as the repository page tells users: import the CA
certificates, trust the root in trustlist.txt. dirmngr fetches the CRLs from the URLs in
the certificates through a local HTTP proxy that answers with what /pki/ serves, so the
CRL check is real and offline. The CAs are RSA, the portal's default (create_pki).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cryptography.hazmat.primitives import hashes, serialization

from django.test import Client

from enrollment import keystore, services
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.pkcs12 import Pkcs12Format
from tests.conftest import ROOT_PASSPHRASE
from tests.pki import run_tool

pytestmark = [
    pytest.mark.interop,
    pytest.mark.django_db,
    pytest.mark.skipif(shutil.which("gpgsm") is None, reason="gpgsm (package gpgsm) absent"),
]

PASSWORD = "a long pkcs12 password"
MESSAGE = b"Content-Type: text/plain\r\n\r\nThe quarterly numbers are attached.\r\n"


def served(path: str) -> bytes:
    response = Client().get(path)
    assert response.status_code == 200, path
    return response.content


class CrlProxy(ThreadingHTTPServer):
    """An HTTP proxy for dirmngr that answers ``GET http://host/pki/<name>.crl`` from a dict."""

    def __init__(self, crls: dict[str, bytes]) -> None:
        self.crls = crls
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _CrlHandler)


class _CrlHandler(BaseHTTPRequestHandler):
    server: CrlProxy

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.requests.append(self.path)
        body = self.server.crls.get(self.path.rsplit("/", 1)[-1])
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/pkix-crl")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class Gpgsm:
    """gpgsm in a throwaway GNUPGHOME (short path: agent sockets live there)."""

    def __init__(self, home: Path, proxy: CrlProxy) -> None:
        self.home = home
        self.proxy = proxy
        (home / "gpg-agent.conf").write_text("allow-loopback-pinentry\n")
        host, port = proxy.server_address[:2]
        (home / "dirmngr.conf").write_text(f"http-proxy http://{host}:{port}\n")

    def run(
        self, *args: str | Path, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """``gpgsm --batch *args``; with ``check`` a failure raises showing gpgsm's stderr."""
        return run_tool(
            ["gpgsm", "--homedir", self.home, "--batch", "--pinentry-mode", "loopback", *args],
            cwd=self.home, input=input, check=check,
        )  # fmt: skip

    def import_pkcs12(self, bundle: Path, password: str) -> subprocess.CompletedProcess[bytes]:
        """gpgsm reads the passphrase from a file descriptor, not from ``--passphrase``."""
        return self.run(
            "--passphrase-fd", "0", "--import", bundle, input=password.encode(), check=False
        )

    def kill(self) -> None:
        subprocess.run(
            ["gpgconf", "--homedir", str(self.home), "--kill", "all"], check=False, timeout=30
        )


@pytest.fixture
def rsa_hierarchy(db, tmp_path):
    """The default shape of create_pki: RSA root and issuing CA (2048 bits: fast)."""
    return services.pki_create(
        root=services.CaSpec("Test Root CA", "root", KeyAlgorithm.RSA_2048, 3650),
        issuing=services.CaSpec("Test Issuing CA", "issuing", KeyAlgorithm.RSA_2048, 1825),
        base_url="http://pki.example.com",
        root_key_path=tmp_path / "offline" / "root-key.pem",
        root_passphrase=ROOT_PASSPHRASE,
        organization_name="Example Org",
        country_name="GB",
    )


@pytest.fixture
def crls() -> dict[str, bytes]:
    """What the proxy serves; a test fills it from /pki/ once its revocations are in."""
    return {}


@pytest.fixture
def gpgsm(crls: dict[str, bytes]) -> Iterator[Gpgsm]:
    proxy = CrlProxy(crls)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    home = Path(tempfile.mkdtemp(prefix="gpgsm-"))
    tool = Gpgsm(home, proxy)
    try:
        yield tool
    finally:
        tool.kill()
        proxy.shutdown()
        proxy.server_close()
        shutil.rmtree(home, ignore_errors=True)


def trust_the_portal(gpgsm: Gpgsm, openssl, root_slug: str = "root") -> None:
    """The repository page's gpgsm steps: import the CAs, trust the root's SHA-1 with S."""
    root = openssl.write("root.der", served(f"/pki/{root_slug}.crt"))
    issuing = openssl.write("issuing.der", served("/pki/issuing.crt"))
    gpgsm.run("--import", root, issuing)
    openssl.run("x509", "-inform", "DER", "-in", "root.der", "-out", "root.pem")
    fingerprint = openssl.run("x509", "-in", "root.pem", "-noout", "-fingerprint", "-sha1")
    colons = fingerprint.stdout.decode().strip().split("=", 1)[1]
    (gpgsm.home / "trustlist.txt").write_text(f"{colons} S\n")


def publish(crls: dict[str, bytes], root, key_path: Path) -> None:
    """Sign the root's CRL with the offline key, then serve both CRLs as /pki/ does."""
    services.crl_publish(
        ca=root,
        offline_key=keystore.OfflineKey(key_path, ROOT_PASSPHRASE),
        validity=timedelta(days=365),
    )
    for slug in ("root", "issuing"):
        crls[f"{slug}.crl"] = served(f"/pki/{slug}.crl")


def issue(template, owner, slug: str = "smime-dual-use", fmt=Pkcs12Format.COMPATIBLE,
          algorithm=KeyAlgorithm.RSA_2048):  # fmt: skip
    return services.certificate_issue_with_server_key(
        template=template(slug), owner=owner, key_algorithm=algorithm,
        pkcs12_password=PASSWORD, pkcs12_format=fmt,
    )  # fmt: skip


# What GnuPG 2.2's minip12 prints when it cannot decrypt a PKCS#12's certificate bag and
# retries the password in other character sets.
GPGSM_22_MISREAD = b"decryption failed; trying charset"
# A compatible-format PKCS#12 the portal made in a CI run (a throwaway test key, PASSWORD):
# OpenSSL and NSS open it, GnuPG 2.2.40's gpgsm does not, every time.
MISREAD_BY_GPGSM_22 = Path(__file__).parent / "data" / "gpgsm22-rejects.p12"


def test_gpgsm_22_misreads_a_pkcs12_openssl_and_nss_open(openssl, tmp_path):
    """Now and then a compatible PKCS#12 the portal makes (3DES, SHA-1 MAC, random salts)
    is refused by GnuPG 2.2's gpgsm with "decryption failed" while OpenSSL and NSS read it:
    GnuPG's fault, which README (Mail clients) tells people about. Seen twice in CI runs,
    never in 246 made in a loop for one self-signed certificate; this one is kept so the
    claim stays checked, and a gpgsm that reads it fails this test."""
    bundle = MISREAD_BY_GPGSM_22.read_bytes()
    openssl.run("pkcs12", "-legacy", "-in", openssl.write("m.p12", bundle), "-passin",
                f"pass:{PASSWORD}", "-noout")  # fmt: skip
    nss = tmp_path / "nss"
    nss.mkdir()
    run_tool(["certutil", "-N", "-d", f"sql:{nss}", "--empty-password"], cwd=tmp_path)
    imported = run_tool(["pk12util", "-i", MISREAD_BY_GPGSM_22, "-d", f"sql:{nss}",
                         "-W", PASSWORD], cwd=tmp_path)  # fmt: skip
    assert b"PKCS12 IMPORT SUCCESSFUL" in imported.stdout + imported.stderr
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    refused = subprocess.run(
        ["gpgsm", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
         "--passphrase-fd", "0", "--import", str(MISREAD_BY_GPGSM_22)],
        input=PASSWORD.encode(), capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, timeout=30)
    assert GPGSM_22_MISREAD in refused.stderr, refused.stderr.decode()


def pem(certificate) -> bytes:
    return certificate.certificate.public_bytes(serialization.Encoding.PEM)


def sha1(certificate) -> str:
    return certificate.certificate.fingerprint(hashes.SHA1()).hex().upper()


def test_gpgsm_signs_and_encrypts_with_a_portal_pkcs12_and_openssl_agrees(
    rsa_hierarchy, template, employee, colleague, gpgsm, crls, openssl, tmp_path
):
    alice, bundle = issue(template, employee)
    bob, bob_bundle = issue(template, colleague)
    publish(crls, rsa_hierarchy[0], tmp_path / "offline" / "root-key.pem")
    trust_the_portal(gpgsm, openssl)
    imported = gpgsm.import_pkcs12(openssl.write("alice.p12", bundle), PASSWORD)
    if GPGSM_22_MISREAD in imported.stderr:
        # GnuPG 2.2's own bug, not the file's (test_gpgsm_22_misreads_a_pkcs12_openssl_and_nss_
        # open): it opens in openssl, and a new one (new salts) is read by gpgsm.
        openssl.run("pkcs12", "-legacy", "-in", "alice.p12", "-passin", f"pass:{PASSWORD}",
                    "-noout")  # fmt: skip
        alice, bundle = issue(template, employee)
        imported = gpgsm.import_pkcs12(openssl.write("alice.p12", bundle), PASSWORD)
    assert b"secret keys imported: 1" in imported.stderr, imported.stderr.decode()
    message = openssl.write("message.txt", MESSAGE)

    # gpgsm signs (checking Alice's chain and CRLs first); openssl verifies against the root.
    gpgsm.run(
        "--passphrase-fd",
        "0",
        "--local-user",
        sha1(alice),
        "--output",
        openssl.path("signed.p7m"),
        "--sign",
        message,
        input=f"{PASSWORD}\n".encode(),
    )
    verified = openssl.run(
        "cms", "-verify", "-inform", "DER", "-in", "signed.p7m", "-CAfile", "root.pem",
        "-purpose", "smimesign", "-out", "verified.txt",
    )  # fmt: skip
    assert b"Verification successful" in verified.stderr
    assert openssl.path("verified.txt").read_bytes() == MESSAGE
    assert "http://pki.example.com:80/pki/issuing.crl" in gpgsm.proxy.requests

    # openssl signs as Bob; gpgsm verifies, Bob's chain and CRL included.
    openssl.run("pkcs12", "-in", openssl.write("bob.p12", bob_bundle), "-passin",
                f"pass:{PASSWORD}", "-nodes", "-nocerts", "-out", "bob.key")  # fmt: skip
    openssl.write("bob.pem", pem(bob))
    openssl.run("cms", "-sign", "-in", message, "-signer", "bob.pem", "-inkey", "bob.key",
                "-outform", "DER", "-out", "bob-signed.p7m", "-nodetach")  # fmt: skip
    checked = gpgsm.run("--verify", openssl.path("bob-signed.p7m"))
    assert b"Good signature" in checked.stderr, checked.stderr.decode()

    # gpgsm encrypts to Bob's portal certificate; openssl decrypts with Bob's key.
    gpgsm.run("--import", openssl.path("bob.pem"))
    gpgsm.run(
        "--recipient", sha1(bob), "--output", openssl.path("sealed.p7m"), "--encrypt", message
    )
    openssl.run("cms", "-decrypt", "-inform", "DER", "-in", "sealed.p7m", "-recip", "bob.pem",
                "-inkey", "bob.key", "-out", "opened.txt")  # fmt: skip
    assert openssl.path("opened.txt").read_bytes() == MESSAGE

    # And the reverse: openssl encrypts to Alice, gpgsm decrypts with the imported key.
    openssl.write("alice.pem", pem(alice))
    openssl.run("cms", "-encrypt", "-aes256", "-in", message, "-outform", "DER",
                "-out", "to-alice.p7m", "alice.pem")  # fmt: skip
    opened = gpgsm.run(
        "--passphrase-fd",
        "0",
        "--decrypt",
        openssl.path("to-alice.p7m"),
        input=f"{PASSWORD}\n".encode(),
    )
    assert opened.stdout == MESSAGE


def test_gpgsm_refuses_a_signature_by_a_revoked_certificate(
    rsa_hierarchy, template, employee, gpgsm, crls, openssl, tmp_path
):
    revoked, bundle = issue(template, employee, "smime-signing")
    services.certificate_revoke(certificate=revoked, reason="keyCompromise")
    services.crl_publish(ca=rsa_hierarchy[1])  # what the on-commit task does
    publish(crls, rsa_hierarchy[0], tmp_path / "offline" / "root-key.pem")
    trust_the_portal(gpgsm, openssl)
    openssl.run("pkcs12", "-in", openssl.write("p.p12", bundle), "-passin",
                f"pass:{PASSWORD}", "-nodes", "-nocerts", "-out", "key.pem")  # fmt: skip
    openssl.write("leaf.pem", pem(revoked))
    openssl.run("cms", "-sign", "-in", openssl.write("m.txt", MESSAGE), "-signer", "leaf.pem",
                "-inkey", "key.pem", "-outform", "DER", "-out", "s.p7m", "-nodetach")  # fmt: skip

    result = gpgsm.run("--verify", openssl.path("s.p7m"), check=False)

    assert result.returncode != 0
    assert b"certificate has been revoked" in result.stderr, result.stderr.decode()


# Findings with gpgsm/dirmngr 2.2.40 (Debian 12), limits of that GnuPG, not of the portal.
# Strict: when a newer GnuPG passes, the mark must go.
def gnupg_22(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"GnuPG 2.2: {reason}")


@gnupg_22(
    "minip12 reads PBKDF2-params without the optional prf, so the modern format's "
    'hmacWithSHA256 stops it at "pkcs5PBES2-params"; use the compatible format'
)
def test_gpgsm_imports_the_modern_pkcs12(rsa_hierarchy, template, employee, gpgsm, openssl):
    _certificate, bundle = issue(template, employee, fmt=Pkcs12Format.MODERN)
    trust_the_portal(gpgsm, openssl)
    imported = gpgsm.import_pkcs12(openssl.write("alice.p12", bundle), PASSWORD)
    assert b"secret keys imported: 1" in imported.stderr, imported.stderr.decode()


@gnupg_22("minip12 reads RSA keys only; an EC key bag crashes gpgsm (SIGSEGV)")
def test_gpgsm_imports_an_ec_pkcs12(rsa_hierarchy, template, employee, gpgsm, openssl):
    _certificate, bundle = issue(template, employee, algorithm=KeyAlgorithm.EC_P256)
    trust_the_portal(gpgsm, openssl)
    imported = gpgsm.import_pkcs12(openssl.write("alice.p12", bundle), PASSWORD)
    assert b"secret keys imported: 1" in imported.stderr, imported.stderr.decode()


@gnupg_22(
    "dirmngr verifies CRL signatures as RSA only: an ECDSA-signed CRL fails with "
    '"Provided object is too short", so nothing under an EC issuing CA validates'
)
def test_gpgsm_checks_the_crl_of_an_ec_issuing_ca(
    hierarchy, template, employee, gpgsm, crls, openssl
):
    signer, bundle = issue(template, employee, algorithm=KeyAlgorithm.EC_P256)
    publish(crls, hierarchy.root, hierarchy.root_key_path)
    trust_the_portal(gpgsm, openssl)
    openssl.run("pkcs12", "-in", openssl.write("p.p12", bundle), "-passin",
                f"pass:{PASSWORD}", "-nodes", "-nocerts", "-out", "key.pem")  # fmt: skip
    openssl.write("leaf.pem", pem(signer))
    openssl.run("cms", "-sign", "-in", openssl.write("m.txt", MESSAGE), "-signer", "leaf.pem",
                "-inkey", "key.pem", "-outform", "DER", "-out", "s.p7m", "-nodetach")  # fmt: skip

    checked = gpgsm.run("--verify", openssl.path("s.p7m"))

    assert b"Good signature" in checked.stderr, checked.stderr.decode()


def repository_page_steps(page: str) -> list[list[str]]:
    """The manual CRL steps the repository page gives for gpgsm, as argument lists."""
    import html
    import re
    import shlex

    blocks = re.findall(r"<pre>(.*?)</pre>", page, re.S)
    steps = next(block for block in blocks if "loadcrl" in block)
    return [shlex.split(line) for line in html.unescape(steps).splitlines() if line.strip()]


def test_the_repository_pages_manual_crl_steps_work_in_gpgsm(
    rsa_hierarchy, template, employee, gpgsm, crls, openssl, tmp_path
):
    """Where dirmngr cannot fetch a CRL (here the proxy serves none), the page's steps load
    them by hand. GnuPG 2.2 refuses a bare `loadcrl` of a CRL with an authorityKeyIdentifier
    (every CRL here) unless dirmngr already holds the CA certificates up to the root, and
    reads the file from its own working directory: the steps cache every CA first (in
    whatever order the page lists them: PostgreSQL and SQLite list them differently) and
    give the full path."""
    signer, bundle = issue(template, employee, "smime-signing")
    publish({}, rsa_hierarchy[0], tmp_path / "offline" / "root-key.pem")  # proxy: nothing
    trust_the_portal(gpgsm, openssl)
    for slug in ("root", "issuing"):
        openssl.write(f"{slug}.crt", served(f"/pki/{slug}.crt"))
        openssl.write(f"{slug}.crl", served(f"/pki/{slug}.crl"))
    openssl.run("pkcs12", "-in", openssl.write("p.p12", bundle), "-passin",
                f"pass:{PASSWORD}", "-nodes", "-nocerts", "-out", "key.pem")  # fmt: skip
    openssl.write("leaf.pem", pem(signer))
    openssl.run("cms", "-sign", "-in", openssl.write("m.txt", MESSAGE), "-signer", "leaf.pem",
                "-inkey", "key.pem", "-outform", "DER", "-out", "s.p7m", "-nodetach")  # fmt: skip
    assert gpgsm.run("--verify", openssl.path("s.p7m"), check=False).returncode != 0  # no CRL

    page = Client().get("/pki/").content.decode()
    steps = repository_page_steps(page)
    assert [step[0] for step in steps] == ["openssl", "dirmngr-client"] * 2 + ["gpgsm"] * 2
    environment = {**os.environ, "GNUPGHOME": str(gpgsm.home), "PWD": str(openssl.path("."))}
    for step in steps:
        step = [part.replace("$PWD", str(openssl.path("."))) for part in step]
        if step[0] == "gpgsm":
            step[1:1] = ["--homedir", str(gpgsm.home)]
        done = subprocess.run(
            step, cwd=openssl.path("."), env=environment, capture_output=True, timeout=60
        )
        assert done.returncode == 0, (step, done.stderr.decode(errors="replace"))
        assert b"Unknown IPC inquire" not in done.stderr

    checked = gpgsm.run("--verify", openssl.path("s.p7m"))
    assert b"Good signature" in checked.stderr, checked.stderr.decode()
    assert gpgsm.proxy.requests  # dirmngr did try the URLs first
