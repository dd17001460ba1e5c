"""DRF's content negotiation, its choice remembered for the Accept headers clients send."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

# (Accept, format, the view's renderers) -> (which renderer, the media type answered).
_Key = tuple[str | None, str | None, tuple[tuple[type, str, str], ...]]
_chosen: dict[_Key, tuple[int, str]] = {}
# Accept is the client's to choose: a client sending new ones each time only makes this
# start over, never grow past this.
_REMEMBERED = 256


class ContentNegotiation(DefaultContentNegotiation):
    """DRF's choice of renderer, worked out once per Accept header, format and renderers.

    DefaultContentNegotiation parses the Accept header and matches it against each
    renderer on every call (~55,000 instructions of every API call, bench/
    enroll_instructions.py), though scripts send the same header each time. The choice
    depends on nothing else, so the same inputs get the same renderer and media type;
    what DRF refuses (404, 406) it refuses each time, as before."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[Any, str]:
        renderers = list(renderers)
        key: _Key = (
            request.headers.get("accept"),
            format_suffix or request.query_params.get(self.settings.URL_FORMAT_OVERRIDE),
            tuple((type(r), r.media_type, r.format) for r in renderers),
        )
        chosen = _chosen.get(key)
        if chosen is not None:
            index, media_type = chosen
            return renderers[index], media_type
        renderer, media_type = super().select_renderer(request, renderers, format_suffix)
        if len(_chosen) >= _REMEMBERED:
            _chosen.clear()
        _chosen[key] = (renderers.index(renderer), media_type)
        return renderer, media_type
