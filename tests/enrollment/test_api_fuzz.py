"""Hostile bodies at the enrolment endpoints: always a 4xx JSON answer, never a 500,
and nothing stored when the answer is a refusal."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from enrollment.models import CertificateRequest
from tests.enrollment.api_tools import ENROLLMENTS, PASSWORD, token_client
from tests.enrollment.tools import cryptography_csr, row_counts

pytestmark = pytest.mark.django_db

FUZZ = hypothesis_settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SLUGS = ["smime-signing", "smime-encryption", "smime-dual-use"]
# Made once: ECDSA signatures vary in length, and hypothesis needs the same base each run.
VALID_CSR_DER = cryptography_csr(ec.generate_private_key(ec.SECP256R1())).public_bytes(Encoding.DER)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
hostile_text = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=200).map(lambda t: t + "\x00"),
    st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()),  # base64 of junk
    st.text(alphabet="ABCD=+/-_ \n", max_size=120),  # invalid base64
    st.integers(min_value=1, max_value=200_000).map(lambda n: "A" * n),  # huge
    st.binary(max_size=300).map(
        lambda b: (
            "-----BEGIN CERTIFICATE REQUEST-----\n"
            + base64.b64encode(b).decode()
            + "\n-----END CERTIFICATE REQUEST-----\n"
        )
    ),
    st.sampled_from(
        [
            "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n",  # no END line
            "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
            "0" * 64,
        ]
    ),
)


@st.composite
def damaged_csrs(draw) -> str:
    """A real CSR, truncated or with bytes flipped: the parser's hardest cases."""
    der = bytearray(VALID_CSR_DER)
    if draw(st.booleans()):
        der = der[: draw(st.integers(min_value=0, max_value=len(der) - 1))]
    else:
        for _ in range(draw(st.integers(min_value=1, max_value=4))):
            position = draw(st.integers(min_value=0, max_value=len(der) - 1))
            der[position] ^= draw(st.integers(min_value=1, max_value=255))
    body = base64.b64encode(bytes(der)).decode()
    if draw(st.booleans()):
        return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----"
    return body


def template_values() -> st.SearchStrategy:
    return st.one_of(st.sampled_from(SLUGS), st.text(max_size=60), json_values)


csr_bodies = st.fixed_dictionaries(
    {"template": template_values(), "csr": st.one_of(hostile_text, damaged_csrs())},
    optional={"key_algorithm": json_values, "pkcs12_password": json_values},
)


server_key_bodies = st.fixed_dictionaries(
    {
        "template": template_values(),
        "key_algorithm": st.one_of(st.just("ec-p256"), st.text(max_size=20), json_values),
    },
    optional={
        "pkcs12_password": st.one_of(st.just(PASSWORD), hostile_text, json_values),
        "pkcs12_format": st.one_of(st.sampled_from(["modern", "compatible"]), json_values),
    },
)


def stored() -> dict[str, int]:
    return {**row_counts(), "CertificateRequest": CertificateRequest.objects.count()}


def assert_refused_cleanly(client, body) -> None:
    before = stored()
    payload = body if isinstance(body, bytes) else json.dumps(body)

    response = client.post(ENROLLMENTS, payload, content_type="application/json")

    # 503 is deliberate: the PKI cannot issue (no key recovery agent), whatever was sent.
    assert response.status_code < 500 or response.status_code == 503, response.content[:500]
    assert response["Content-Type"] == "application/json"
    if response.status_code >= 400:
        assert response.json(), "an error names what was wrong"
        assert stored() == before  # nor an audit event, a key, a CRL


@FUZZ
@given(body=csr_bodies)
def test_hostile_csr_bodies_never_500_and_store_nothing(hierarchy, employee, body):
    assert_refused_cleanly(token_client(employee), body)


@FUZZ
@given(body=server_key_bodies)
def test_hostile_portal_key_bodies_never_500_and_store_nothing(hierarchy, employee, body):
    assert_refused_cleanly(token_client(employee), body)


@FUZZ
@given(body=json_values)
def test_any_json_value_as_the_body_is_refused_cleanly(hierarchy, employee, body):
    assert_refused_cleanly(token_client(employee), body)


@FUZZ
@given(raw=st.binary(max_size=500))
def test_bytes_that_are_not_json_are_refused_cleanly(hierarchy, employee, raw):
    assert_refused_cleanly(token_client(employee), raw)


@FUZZ
@given(
    common_name=st.text(min_size=1, max_size=64),
    email=st.text(alphabet=st.characters(max_codepoint=127), max_size=80),  # IA5String
    template=st.sampled_from(["smime-signing", "smime-dual-use"]),
)
def test_validly_signed_csrs_with_hostile_names_never_500(
    hierarchy, employee, ec_p256_key, settings, common_name, email, template
):
    """Proof of possession passes, so the claimed names reach the database as text."""
    settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE = 1000
    settings.PKIPORTAL_ENROLL_RATE_PER_HOUR = 1000
    try:
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), False)
            .sign(ec_p256_key, hashes.SHA256())
        )
    except ValueError:
        assume(False)  # cryptography will not even encode it; neither would a client
    body = {"template": template, "csr": csr.public_bytes(Encoding.PEM).decode()}

    assert_refused_cleanly(token_client(employee), body)
