"""serializers.valid_csr_body: the CSR enrolment body checked without a DRF serializer
gives what the serializer gives, and leaves everything else to it."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from enrollment.api.serializers import CsrEnrollmentIn, CsrIn, valid_csr_body
from enrollment.x509.csr import MAX_CSR_BYTES

pytestmark = pytest.mark.django_db

PEM = "-----BEGIN CERTIFICATE REQUEST-----\nMIIBxzCCAW0CAQAw\n-----END CERTIFICATE REQUEST-----\n"

texts = st.one_of(
    st.just(PEM),
    st.text(max_size=30),
    st.text(alphabet=" \t\n\r\x0b\x0c\x00AB-", max_size=12),
    st.sampled_from(["a\ud800b", "\udfff", "caf\u00e9 \U0001f600", " \u2003 ", "x\x00"]),
    st.integers(MAX_CSR_BYTES - 2, MAX_CSR_BYTES + 2).map(lambda n: " " + "A" * n + "\n"),
)
slugs = st.sampled_from(
    ["smime-signing", "smime-dual-use", "no-such-template", "", " smime-signing", "a/b", "x" * 51]
)
values = st.one_of(
    texts,
    slugs,
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
bodies = st.fixed_dictionaries(
    {"csr": st.one_of(texts, texts, values), "template": st.one_of(slugs, slugs, values)},
    optional={
        "key_algorithm": values,
        "pkcs12_password": values,
        "mailbox": values,
        "other": values,
    },
) | st.fixed_dictionaries({}, optional={"csr": values, "template": values})
EDGES = [
    "  \n",
    "MIIB\x00xyz",
    "a\ud800b",
    " " + "A" * MAX_CSR_BYTES + "\n",
    "A" * (MAX_CSR_BYTES + 1),
]


def serializer_says(shape: type, body: object) -> dict[str, object] | None:
    serializer = shape(data=body, context={})
    return dict(serializer.validated_data) if serializer.is_valid() else None


@hypothesis_settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies, names_template=st.booleans())
@example(
    body={"template": "smime-signing", "csr": PEM, "key_algorithm": "ec-p256"}, names_template=True
)
@example(
    body={"template": "smime-signing", "csr": PEM, "pkcs12_password": None}, names_template=False
)
@example(body={"template": "no-such-template", "csr": PEM}, names_template=True)
@example(body={"template": "smime-signing", "csr": 12345}, names_template=True)
def test_a_body_taken_without_the_serializer_is_one_it_takes_the_same(
    body: dict[str, object], names_template: bool
) -> None:
    fast = valid_csr_body(body, names_template=names_template)
    if fast is not None:
        assert fast == serializer_says(CsrEnrollmentIn if names_template else CsrIn, body)


@pytest.mark.parametrize("csr", EDGES)
@pytest.mark.parametrize("names_template", [True, False])
def test_edges_of_the_csr_field_are_the_serializers(csr: str, names_template: bool) -> None:
    body = {"template": "smime-signing", "csr": csr}
    fast = valid_csr_body(body, names_template=names_template)
    said = serializer_says(CsrEnrollmentIn if names_template else CsrIn, body)
    assert fast == said if fast is not None else said is None


@pytest.mark.parametrize("names_template", [True, False])
def test_a_well_formed_body_is_taken_without_the_serializer(names_template: bool) -> None:
    body = {"template": "smime-signing", "csr": "\n" + PEM}
    fast = valid_csr_body(body, names_template=names_template)
    assert fast is not None
    assert fast == serializer_says(CsrEnrollmentIn if names_template else CsrIn, body)
    assert fast["csr"] == PEM.strip()
