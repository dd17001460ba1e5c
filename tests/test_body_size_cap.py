"""pkiportal.middleware.body_size_cap: a body over DATA_UPLOAD_MAX_MEMORY_SIZE is refused
with 413 before anything reads it, a multipart upload included."""

from __future__ import annotations

import pytest

from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import multipartparser
from django.test import Client
from django.test.client import BOUNDARY, encode_multipart

from enrollment.models import Certificate, CertificateRequest
from pkiportal.api import TOO_LARGE
from tests.enrollment.api_tools import ENROLLMENTS, token_client
from tests.enrollment.web import enrol_url

pytestmark = pytest.mark.django_db

CAP = 4096


@pytest.fixture(autouse=True)
def cap(settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = CAP


@pytest.fixture
def parsed(monkeypatch) -> list[int]:
    """Each multipart body Django parses (and so streams to memory or a temporary file)."""
    seen: list[int] = []
    original = multipartparser.MultiPartParser.parse

    def parse(self, *args, **kwargs):
        seen.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(multipartparser.MultiPartParser, "parse", parse)
    return seen


def upload(size: int) -> SimpleUploadedFile:
    return SimpleUploadedFile("big.csr", b"A" * size, content_type="application/pkcs10")


def test_an_anonymous_upload_with_a_csrf_cookie_is_refused_unread(hierarchy, parsed):
    """CsrfViewMiddleware reads the form of a POST that carries its cookie, before the
    view sends the anonymous visitor to sign in: that read was the upload's write."""
    browser = Client(enforce_csrf_checks=True)
    browser.cookies["csrftoken"] = "A" * 32

    response = browser.post(
        enrol_url("smime-signing"),
        {"method": "csr", "csr_file": upload(5 * CAP), "csrfmiddlewaretoken": "A" * 32},
    )

    assert response.status_code == 413
    assert parsed == []


def test_a_signed_in_upload_over_the_cap_gets_a_page_saying_so(employee_client, hierarchy, parsed):
    response = employee_client.post(
        enrol_url("smime-signing"),
        {"method": "csr", "csr_file": upload(2 * CAP)},
        headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"},  # a browser's
    )

    assert response.status_code == 413
    assert "Too large" in response.content.decode()
    assert "4 KiB" in response.content.decode()
    assert parsed == []
    assert not CertificateRequest.objects.exists()


def test_an_api_upload_over_the_cap_is_a_413_in_json(hierarchy, employee, parsed):
    response = token_client(employee).post(
        ENROLLMENTS,
        {"template": "smime-signing", "csr": upload(2 * CAP)},
        format="multipart",
    )

    assert response.status_code == 413
    assert response.json() == {"detail": TOO_LARGE}
    assert parsed == []
    assert not Certificate.objects.exists()


def test_a_body_at_the_cap_reaches_the_view(employee_client, hierarchy, parsed):
    """Read, and the form's own check answers: the file is no CSR."""
    overhead = len(encode_multipart(BOUNDARY, {"method": "csr", "csr_file": upload(0)}))
    body = {"method": "csr", "csr_file": upload(CAP - overhead)}

    response = employee_client.post(enrol_url("smime-signing"), body)

    assert response.status_code == 400  # the form again, with its error
    assert "not valid base64" in response.content.decode()
    assert parsed == [1]
    assert not CertificateRequest.objects.exists()


def test_a_protocol_client_gets_the_reason_as_text(hierarchy, settings):
    """EST's and OCSP's clients read errors as text, not a page."""
    settings.PKIPORTAL_EST_ENABLED = True

    response = Client().post(
        "/.well-known/est/simpleenroll", "A" * (2 * CAP), content_type="application/pkcs10"
    )

    assert response.status_code == 413
    assert response["Content-Type"] == "text/plain; charset=utf-8"  # as EST answers errors
    assert response.content.decode() == f"{TOO_LARGE}\n"
