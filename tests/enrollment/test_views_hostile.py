"""Hostile input at /enroll/: malformed CSRs and form fields never cause a 500 or store a row."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cryptography.hazmat.primitives.serialization import Encoding

from enrollment.models import Certificate, CertificateRequest
from enrollment.x509.csr import parse_csr
from enrollment.x509.errors import X509Error
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.tools import cryptography_csr, row_counts
from tests.enrollment.web import PASSWORD, enrol_url, upload_csr
from tests.pki import KeyPool

pytestmark = pytest.mark.django_db

FAST = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
VALID_ALGORITHMS = {"rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384"}
# One genuine CSR, cut and mangled by the strategies below.
GENUINE = cryptography_csr(KeyPool().get(KeyAlgorithm.EC_P256))
GENUINE_PEM = GENUINE.public_bytes(Encoding.PEM).decode()
GENUINE_DER = GENUINE.public_bytes(Encoding.DER)

junk_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300)
truncated_pem = st.integers(min_value=0, max_value=len(GENUINE_PEM) - 2).map(
    lambda n: GENUINE_PEM[:n]
)


def _still_the_genuine_request(pem: str) -> bool:
    """A "flip" can leave the same request: the same character, base64 bits that carry
    nothing, or padding where the decoder stops early. Such a text is not junk."""
    try:
        return parse_csr(pem).csr.public_bytes(Encoding.DER) == GENUINE_DER
    except X509Error:
        return False


flipped_pem = (
    st.tuples(
        st.integers(min_value=40, max_value=len(GENUINE_PEM) - 40), st.sampled_from("A/+=\x00é")
    )
    .map(lambda cut: GENUINE_PEM[: cut[0]] + cut[1] + GENUINE_PEM[cut[0] + 1 :])
    .filter(lambda pem: not _still_the_genuine_request(pem))
)
wrapped_junk = st.binary(max_size=400).map(
    lambda raw: (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(raw).decode()
        + "-----END CERTIFICATE REQUEST-----\n"
    )
)
wrong_labels = st.sampled_from(
    ["PRIVATE KEY", "CERTIFICATE", "PKCS7", "X509 CRL", "NEW CERTIFICATE REQUEST\x00"]
).map(lambda label: GENUINE_PEM.replace("CERTIFICATE REQUEST", label))
huge = st.integers(min_value=64 * 1024 + 1, max_value=200 * 1024).map(lambda n: "A" * n)
hostile_csr_text = st.one_of(
    junk_text, truncated_pem, flipped_pem, wrapped_junk, wrong_labels, huge,
    junk_text.map(lambda t: t + "\x00" + GENUINE_PEM),
)  # fmt: skip
hostile_csr_bytes = st.one_of(
    st.binary(max_size=2000),
    st.integers(min_value=0, max_value=len(GENUINE_DER) - 1).map(lambda n: GENUINE_DER[:n]),
    st.binary(min_size=1, max_size=8).map(lambda b: GENUINE_DER[:-8] + b),
    st.just(b"\x30" + b"\xff" * (64 * 1024 + 10)),
)


def stored() -> dict[str, int]:
    return {**row_counts(), "CertificateRequest": CertificateRequest.objects.count()}


def assert_refused(response, before) -> None:
    assert response.status_code < 500
    assert response.status_code != 200 or response["Content-Type"].startswith("text/html")
    assert response.status_code in (400, 404, 413)
    assert stored() == before


@FAST
@given(csr=hostile_csr_text)
def test_pasted_junk_is_refused_without_a_trace(employee_client, hierarchy, csr):
    before = stored()

    response = employee_client.post(enrol_url("smime-signing"), {"method": "csr", "csr": csr})

    assert_refused(response, before)


@FAST
@given(data=hostile_csr_bytes, name=st.sampled_from(["r.csr", "r.der", "r.pem", "../../etc"]))
def test_uploaded_junk_is_refused_without_a_trace(employee_client, hierarchy, data, name):
    before = stored()

    response = upload_csr(employee_client, "smime-signing", name=name, data=data)

    assert_refused(response, before)


@FAST
@given(
    method=st.one_of(st.sampled_from(["server", "csr", ""]), junk_text),
    key_algorithm=st.one_of(junk_text, st.sampled_from(["RSA-2048", "ec-p521", "dsa-1024"])),
    password=st.one_of(junk_text, st.just(PASSWORD)),
    confirmation=st.one_of(junk_text, st.just(PASSWORD)),
    fmt=st.one_of(st.sampled_from(["modern", "compatible"]), junk_text),
    renewal_of=st.one_of(st.just(""), junk_text, st.integers().map(str)),
)
def test_hostile_form_fields_are_refused_without_a_trace(
    employee_client, hierarchy, method, key_algorithm, password, confirmation, fmt, renewal_of
):
    assume(key_algorithm not in VALID_ALGORITHMS)  # a valid form would rightly issue
    before = stored()

    response = employee_client.post(
        enrol_url("smime-signing"),
        {
            "method": method,
            "key_algorithm": key_algorithm,
            "pkcs12_password": password,
            "pkcs12_password_confirm": confirmation,
            "pkcs12_format": fmt,
            "renewal_of": renewal_of,
        },
    )

    assert_refused(response, before)


@FAST
@given(slug=junk_text, request_id=st.integers(min_value=-(2**70), max_value=2**70))
def test_hostile_addresses_are_404s(employee_client, hierarchy, slug, request_id):
    before = stored()

    paths = [f"/enroll/{slug}/", f"/certificates/{abs(request_id)}/"]
    paths.append(f"/enroll/requests/{abs(request_id)}/")
    for path in paths:
        response = employee_client.post(path, {"method": "server"})
        assert response.status_code < 500
    assert stored() == before


def test_a_body_over_the_upload_cap_is_refused(employee_client, hierarchy, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    before = stored()

    response = employee_client.post(
        enrol_url("smime-signing"),
        {"method": "csr", "csr": "A" * 5000},
        headers={"Accept": "text/html"},
    )

    assert response.status_code == 413
    assert "Too large" in response.content.decode()
    assert stored() == before
    assert not Certificate.objects.exists()
