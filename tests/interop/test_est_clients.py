"""EST (RFC 7030) as the tools a script uses see it: curl posts what `openssl req` made
(base64 DER, application/pkcs10) to the live server, and `openssl base64`, `pkcs7
-print_certs`, `verify` and `asn1parse` read the answers. (No EST client of its own - libest's
estclient, a Python one - is packaged in Debian or on PyPI here.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from enrollment import services
from enrollment.models import Certificate, CertificateRequest
from tests.pki import OpenSSL, run_tool

pytestmark = [
    pytest.mark.interop,
    # live_server answers from another thread, so rows must be committed; serialized
    # rollback restores the seeded templates for the tests that run after this one.
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

PASSWORD = "correct horse battery staple"  # tests/factories.py
EC_P256 = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


@pytest.fixture
def est(live_server, settings, hierarchy, employee):
    """The live server behind a "proxy" that ends TLS: EST refuses signed-in calls that
    are not HTTPS, and the test server speaks plain HTTP, so curl says X-Forwarded-Proto:
    https as nginx would (USE_X_FORWARDED_PROTO)."""
    settings.PKIPORTAL_EST_ENABLED = True
    settings.PKIPORTAL_EST_DEFAULT_TEMPLATE = "smime-signing"
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    return f"{live_server.url}/.well-known/est"


def curl(
    openssl: OpenSSL,
    url: str,
    out: str,
    *args: str,
    user: str | None = "alice",
    proxied: bool = True,
) -> tuple[int, str]:
    """curl into ``out`` in openssl's folder: the HTTP status and the response headers."""
    headers = openssl.path(f"{out}.headers")
    result = run_tool(
        ["curl", "-sS", "--max-time", "30", "-o", openssl.path(out), "-D", headers,
         "-w", "%{http_code}", *(("-u", f"{user}:{PASSWORD}") if user else ()),
         *(("-H", "X-Forwarded-Proto: https") if proxied else ()), *args, url],
        cwd=openssl.directory,
        text=True,
    )  # fmt: skip
    return int(result.stdout), headers.read_text()


def csr(openssl: OpenSSL, name: str) -> Path:
    """`openssl req` makes a key and a CSR; `openssl base64` encodes its DER, as EST wants."""
    openssl.run(
        "req", "-new", *EC_P256, "-nodes", "-keyout", f"{name}-key.pem",
        "-subj", "/CN=Whatever The Device Says", "-outform", "DER", "-out", f"{name}.der",
    )  # fmt: skip
    openssl.run("base64", "-in", f"{name}.der", "-out", f"{name}.b64")
    return openssl.path(f"{name}.b64")


def enrol(openssl: OpenSSL, url: str, body: Path, out: str) -> tuple[int, str]:
    return curl(openssl, url, out, "-H", "Content-Type: application/pkcs10",
                "--data-binary", f"@{body}")  # fmt: skip


def print_certs(openssl: OpenSSL, b64: str, pem: str) -> str:
    """What `openssl pkcs7 -print_certs` finds in a base64 certs-only answer."""
    openssl.run("base64", "-d", "-in", b64, "-out", f"{b64}.der")
    openssl.run("pkcs7", "-inform", "DER", "-in", f"{b64}.der", "-print_certs", "-out", pem)
    return openssl.path(pem).read_text()


def public_key(openssl: OpenSSL, *args: str) -> str:
    return openssl.run(*args).stdout.decode()


def test_curl_and_openssl_bootstrap_enrol_and_verify(est, openssl):
    status, headers = curl(openssl, f"{est}/cacerts", "cacerts.b64", user=None)
    assert status == 200
    assert "application/pkcs7-mime" in headers
    chain = print_certs(openssl, "cacerts.b64", "chain.pem")
    assert "CN = Test Root CA" in chain
    assert "CN = Test Issuing CA" in chain

    status, headers = enrol(openssl, f"{est}/simpleenroll", csr(openssl, "first"), "cert.b64")

    assert status == 200, openssl.path("cert.b64").read_text()
    assert "application/pkcs7-mime; smime-type=certs-only" in headers
    leaf = print_certs(openssl, "cert.b64", "leaf.pem")
    assert "CN = Alice Andersson\n" in leaf  # the account's name, not the CSR's
    assert "Whatever The Device Says" not in leaf
    verified = openssl.run("verify", "-x509_strict", "-purpose", "smimesign",
                           "-CAfile", "chain.pem", "leaf.pem")  # fmt: skip
    assert verified.stdout.decode().strip() == "leaf.pem: OK"
    assert public_key(openssl, "x509", "-in", "leaf.pem", "-noout", "-pubkey") == public_key(
        openssl, "pkey", "-in", "first-key.pem", "-pubout"
    )
    assert Certificate.objects.get().owner.username == "alice"


def test_openssl_x509toreq_reenrols_with_a_new_key(est, openssl):
    assert enrol(openssl, f"{est}/simpleenroll", csr(openssl, "first"), "cert.b64")[0] == 200
    print_certs(openssl, "cert.b64", "leaf.pem")
    # The renewal's CSR repeats the certificate's subject, signed by a new key.
    openssl.run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", "new-key.pem")  # fmt: skip
    openssl.run("x509", "-x509toreq", "-in", "leaf.pem", "-signkey", "new-key.pem",
                "-out", "renew.pem")  # fmt: skip
    openssl.run("req", "-in", "renew.pem", "-outform", "DER", "-out", "renew.der")
    openssl.run("base64", "-in", "renew.der", "-out", "renew.b64")

    status, _ = enrol(openssl, f"{est}/simplereenroll", openssl.path("renew.b64"), "new.b64")

    assert status == 200, openssl.path("new.b64").read_text()
    print_certs(openssl, "new.b64", "new.pem")
    assert public_key(openssl, "x509", "-in", "new.pem", "-noout", "-pubkey") == public_key(
        openssl, "pkey", "-in", "new-key.pem", "-pubout"
    )
    assert sorted(Certificate.objects.values_list("status", flat=True)) == ["revoked", "valid"]


def test_curl_waits_on_202_and_gets_the_certificate_after_approval(est, openssl, approval, officer):
    approval("smime-signing")
    body = csr(openssl, "first")

    status, headers = enrol(openssl, f"{est}/simpleenroll", body, "wait.txt")
    assert status == 202
    assert "retry-after: 600" in headers.lower()
    services.request_approve(request=CertificateRequest.objects.get(), officer=officer)
    status, _ = enrol(openssl, f"{est}/simpleenroll", body, "cert.b64")

    assert status == 200
    assert "CN = Alice Andersson\n" in print_certs(openssl, "cert.b64", "leaf.pem")


def test_csrattrs_parse_as_der_and_a_wrong_password_is_401(est, openssl, template):
    dual_use = template("smime-dual-use")
    dual_use.allowed_key_algorithms = ["ec-p256", "rsa-3072"]
    dual_use.save()

    status, headers = curl(openssl, f"{est}/smime-dual-use/csrattrs", "attrs.b64")
    assert status == 200
    assert "application/csrattrs" in headers
    openssl.run("base64", "-d", "-in", "attrs.b64", "-out", "attrs.der")
    parsed = openssl.run("asn1parse", "-inform", "DER", "-in", "attrs.der").stdout.decode()
    # RFC 9908: each key type an Attribute with its curves or sizes, nothing bare.
    objects = [line.split(":")[-1].strip() for line in parsed.splitlines() if "OBJECT" in line]
    assert objects == ["rsaEncryption", "id-ecPublicKey", "prime256v1"]
    assert [line.split(":")[-1] for line in parsed.splitlines() if "INTEGER" in line] == ["0C00"]
    assert parsed.count("cons: SET") == 2

    status, headers = curl(openssl, f"{est}/csrattrs", "refused.txt", "-u", "alice:wrong",
                           user=None)  # fmt: skip
    assert status == 401
    assert 'www-authenticate: basic realm="est"' in headers.lower()


def test_plain_http_with_a_password_is_refused_unless_the_lab_allows_it(est, openssl, settings):
    body = csr(openssl, "first")
    plain = ("-H", "Content-Type: application/pkcs10", "--data-binary", f"@{body}")

    status, _ = curl(openssl, f"{est}/simpleenroll", "refused.txt", *plain, proxied=False)
    assert status == 403
    assert "HTTPS" in openssl.path("refused.txt").read_text()
    assert not Certificate.objects.exists()

    settings.PKIPORTAL_EST_ALLOW_HTTP = True
    status, _ = curl(openssl, f"{est}/simpleenroll", "cert.b64", *plain, proxied=False)
    assert status == 200
