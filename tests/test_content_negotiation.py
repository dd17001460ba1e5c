"""pkiportal.negotiation.ContentNegotiation: DRF's choice of renderer, remembered."""

from __future__ import annotations

import pytest

from django.http import Http404
from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory
from rest_framework.views import APIView

from pkiportal import negotiation

RENDERERS = APIView.renderer_classes  # settings: JSON, then the browsable API
BROWSABLE = RENDERERS[1]
ACCEPTS = [
    None,
    "*/*",
    "application/json",
    "application/json; indent=4",
    "text/html",
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "application/*",
    "text/*; q=0.5, application/json",
    "application/xml",  # 406
    "",
]


def _choice(conneg, accept, query="", suffix=None):
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    request = Request(APIRequestFactory().get(f"/api/v1/enrollments/{query}", **headers))
    renderers = [renderer() for renderer in RENDERERS]
    try:
        renderer, media_type = conneg.select_renderer(request, renderers, suffix)
    except (NotAcceptable, Http404) as exc:
        return type(exc)
    return type(renderer), media_type, renderers.index(renderer)


@pytest.mark.parametrize("query", ["", "?format=json", "?format=api", "?format=xml", "?x=1"])
@pytest.mark.parametrize("accept", ACCEPTS)
def test_the_same_choice_as_drfs_the_first_time_and_after(accept, query):
    negotiation._chosen.clear()
    drf = _choice(DefaultContentNegotiation(), accept, query)

    assert _choice(negotiation.ContentNegotiation(), accept, query) == drf
    assert _choice(negotiation.ContentNegotiation(), accept, query) == drf


def test_a_format_suffix_or_parameter_counts_as_drf_counts_it():
    negotiation._chosen.clear()
    ours = negotiation.ContentNegotiation()
    assert _choice(ours, "*/*") == (JSONRenderer, "application/json", 0)

    assert _choice(ours, "*/*", suffix="api") == _choice(
        DefaultContentNegotiation(), "*/*", suffix="api"
    )
    assert _choice(ours, "*/*", suffix="api")[0] is BROWSABLE
    assert _choice(ours, "*/*", "?format=api")[0] is BROWSABLE


def test_what_it_remembers_stays_bounded():
    negotiation._chosen.clear()
    ours = negotiation.ContentNegotiation()

    for n in range(negotiation._REMEMBERED * 2 + 5):
        assert _choice(ours, f"application/json; v={n}") == (
            JSONRenderer,
            f"application/json; v={n}",
            0,
        )

    assert 0 < len(negotiation._chosen) <= negotiation._REMEMBERED
