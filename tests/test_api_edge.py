"""The API's edge (pkiportal/pagination.py, api.py): bounded pages, JSON errors under /api/."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import Resolver404, URLResolver, clear_url_caches, path

from enrollment.models import CertificateRequest
from pkiportal import urls as portal_urls
from tests.enrollment.api_tools import CERTIFICATES, ENROLLMENTS, PENDING, TOKEN, token_client

pytestmark = pytest.mark.django_db

LISTS = [ENROLLMENTS, CERTIFICATES, PENDING]
BEYOND_BIGINT = str(2**63)


@pytest.fixture
def officer_client(officer):
    return token_client(officer)


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize(
    "limit", [BEYOND_BIGINT, "101", "0", "-1", "1.5", "ten", "", " 5", "+5", "١٢", "9" * 5000]
)
def test_a_limit_that_is_not_a_whole_number_from_1_to_100_is_400_naming_it(
    officer_client, path, limit
):
    response = officer_client.get(path, {"limit": limit})

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert "100" in response.json()["limit"][0]


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("offset", [BEYOND_BIGINT, "-1", "1e3", "", "9" * 5000])
def test_an_offset_that_is_not_a_whole_number_in_range_is_400_naming_it(
    officer_client, path, offset
):
    response = officer_client.get(path, {"offset": offset})

    assert response.status_code == 400
    assert response.json()["offset"]


@pytest.mark.parametrize("path", LISTS)
def test_the_largest_offset_is_an_empty_page_and_one_more_is_400(officer_client, path):
    largest = officer_client.get(path, {"offset": str(2**63 - 1), "limit": "100"})
    beyond = officer_client.get(path, {"offset": BEYOND_BIGINT, "limit": "100"})

    assert largest.status_code == 200
    assert largest.json()["results"] == []
    assert beyond.status_code == 400


def test_a_page_holds_at_most_100_and_links_to_the_next(officer_client, employee, template):
    CertificateRequest.objects.bulk_create(
        CertificateRequest(
            requester=employee,
            template=template("smime-dual-use"),
            key_source="server",
            key_algorithm="ec-p256",
        )
        for _ in range(102)
    )

    first = officer_client.get(PENDING, {"limit": "100"}).json()
    rest = officer_client.get(first["next"]).json()

    assert first["count"] == 102
    assert len(first["results"]) == 100
    assert len(rest["results"]) == 2
    assert len(officer_client.get(PENDING).json()["results"]) == 50  # the default
    assert officer_client.get(PENDING, {"limit": "101"}).status_code == 400


def test_the_schema_documents_the_bounds(client):
    schema = client.get("/api/v1/schema/", {"format": "json"}).json()

    for listing in LISTS:
        parameters = {p["name"]: p for p in schema["paths"][listing]["get"]["parameters"]}
        assert parameters["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100}
        assert parameters["offset"]["schema"]["minimum"] == 0
        assert parameters["offset"]["schema"]["maximum"] == 2**63 - 1


def test_the_directory_documents_its_own_page_bounds(client):
    schema = client.get("/api/v1/schema/", {"format": "json"}).json()

    parameters = {p["name"]: p for p in schema["paths"]["/api/v1/directory/"]["get"]["parameters"]}
    assert parameters["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100}


def test_manage_py_check_imports_the_pagination_class_before_drfs_views():
    """A fresh process, as pre-commit runs it: DRF's check is the first to import it."""
    check = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert check.returncode == 0, check.stderr[-2000:]


# --- errors outside DRF's views -------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"{CERTIFICATES}xyz/",  # not a serial: the resolver fails before DRF runs
        f"{ENROLLMENTS}1.5/",
        "/api/v1/no-such-endpoint/",
        "/api/",
    ],
)
def test_a_404_under_api_is_json_and_elsewhere_the_portals_page(officer_client, path):
    api = officer_client.get(path)
    page = officer_client.get("/no-such-page/")

    assert api.status_code == 404
    assert api["Content-Type"] == "application/json"
    assert api.json() == {"detail": "Not found."}
    assert page.status_code == 404
    assert page["Content-Type"].startswith("text/html")
    assert b"There is nothing here" in page.content


@pytest.mark.parametrize(
    "path",
    [
        "api/v1/enrollments/",
        "api/v1/enrollments/7/collect/",
        "api/v1/certificates/1a2b/revoke/",
        "api/v1/auth/token/",
        "api/v1/no-such-endpoint/",
    ],
)
def test_no_web_pattern_takes_an_api_path_so_the_api_may_come_first(path):
    """pkiportal/urls.py puts the API's include before the web pages' to resolve API calls
    cheaply; that routes every path as before only while no other pattern matches one."""
    for pattern in portal_urls.urlpatterns:
        if str(pattern.pattern).startswith("api/"):
            continue
        if isinstance(pattern, URLResolver):
            with pytest.raises(Resolver404):
                pattern.resolve(path)
        else:
            assert pattern.resolve(path) is None, pattern


SECRET = "connection string postgres://portal:hunter2@db/pki"


def fails(request: HttpRequest) -> HttpResponse:
    raise RuntimeError(SECRET)


def forbids(request: HttpRequest) -> HttpResponse:
    raise PermissionDenied(SECRET)


@pytest.fixture
def failing_urls(monkeypatch):
    """Views that fail, added to the portal's own URLconf: its handlers are under test."""
    failing = [
        path("api/v1/fails/", fails),
        path("fails/", fails),
        path("api/v1/forbids/", forbids),
    ]
    monkeypatch.setattr(portal_urls, "urlpatterns", [*failing, *portal_urls.urlpatterns])
    clear_url_caches()
    yield
    monkeypatch.undo()
    clear_url_caches()


def test_a_500_under_api_is_json_without_details_and_elsewhere_html(failing_urls):
    client = Client(raise_request_exception=False)

    api = client.get("/api/v1/fails/")
    page = client.get("/fails/")

    assert api.status_code == 500
    assert api["Content-Type"] == "application/json"
    assert api.json() == {"detail": "A server error occurred."}
    assert page.status_code == 500
    assert page["Content-Type"].startswith("text/html")
    for response in (api, page):
        assert b"hunter2" not in response.content
        assert b"RuntimeError" not in response.content


def test_a_403_or_400_raised_outside_drf_under_api_is_json(failing_urls, settings):
    settings.ALLOWED_HOSTS = ["testserver"]
    client = Client()

    forbidden = client.get("/api/v1/forbids/")
    bad_host = client.get(CERTIFICATES, HTTP_HOST="evil.example")

    assert forbidden.status_code == 403
    assert forbidden.json() == {"detail": "You do not have permission to perform this action."}
    assert b"hunter2" not in forbidden.content
    assert bad_host.status_code == 400
    assert bad_host.json() == {"detail": "Bad request."}


def test_the_api_module_can_be_the_first_thing_a_script_imports():
    """pkiportal.api names its renderer in DRF's settings: importing it first once failed
    on a circular import (DRF's views, loading, asked for the renderer not yet defined)."""
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); import pkiportal.api"],
        cwd=settings.BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "pkiportal.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr[-2000:]


NESTED_TOO_DEEP = "[" * 100_000 + "]" * 100_000  # within the size cap, past the parser's depth


def test_json_nested_too_deep_is_a_400_naming_it(officer_client):
    body = '{"template": "smime-signing", "csr": ' + NESTED_TOO_DEEP + "}"

    response = officer_client.post(ENROLLMENTS, body, content_type="application/json")

    assert response.status_code == 400
    assert "nested too deeply" in response.json()["detail"]
    assert not CertificateRequest.objects.exists()


def test_json_nested_too_deep_beside_basic_credentials_is_a_400(employee):
    """Minting a token: a 500 here put the Basic credentials into the error report."""
    credentials = base64.b64encode(b"alice:correct horse battery staple").decode()

    response = Client().post(
        TOKEN,
        NESTED_TOO_DEEP,
        content_type="application/json",
        headers={"Authorization": f"Basic {credentials}"},
    )

    assert response.status_code == 400
    assert "nested too deeply" in response.json()["detail"]
