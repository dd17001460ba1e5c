"""Content-Security-Policy: django-csp's middleware, and the one page type it must relax.

Every page of ours loads scripts and styles from our own origin only, so the policy in
settings forbids inline script and style outright: an injected <script> or onclick=
does not run on a page where people type PKCS#12 and sign-in passwords. Third-party
pages were brought in line where we could: Swagger UI's inline <style> and start-up
script are files (templates/drf_spectacular/, SpectacularSwaggerSplitView), and the
browsable API drops pygments' inline <style> (pkiportal.api.BrowsableAPIRenderer). DRF's
templates still carry a few style="float: right" attributes; on its pages, and only
there, inline style *attributes* are allowed. Scripts stay as strict, and img-src keeps
a style attribute from sending anything to another origin.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from csp.constants import HEADER, HEADER_REPORT_ONLY, UNSAFE_INLINE
from csp.middleware import CheckableLazyObject, CSPMiddleware, PolicyParts
from csp.utils import build_policy

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from rest_framework.renderers import BrowsableAPIRenderer


class PortalCSPMiddleware(CSPMiddleware):
    def get_policy_parts(
        self, request: Any, response: Any, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        if _browsable(response):
            parts.update = {**(parts.update or {}), "style-src-attr": [UNSAFE_INLINE]}
        return parts

    def process_response(self, request: Any, response: Any) -> Any:
        """django-csp rebuilds the same header text for every response (5 % of the
        instructions of an authenticated API answer); ours differ only by the browsable
        API's exception, so the two texts are built once per settings and reused.
        Anything per-response (a nonce, a view's csp_* decorator, exemptions, excluded
        prefixes, DEBUG error pages) goes the library's own way."""
        if not _plain(request, response):
            return super().process_response(request, response)
        browsable = _browsable(response)
        headers = _CACHED.get(browsable)
        if headers is None:
            headers = _CACHED[browsable] = tuple(
                (header, text)
                for header, report_only in ((HEADER, False), (HEADER_REPORT_ONLY, True))
                if (
                    text := build_policy(
                        **asdict(self.get_policy_parts(request, response, report_only)),
                        report_only=report_only,
                    )
                )
            )
        for header, text in headers:
            if header not in response:
                response[header] = text
        request.csp_nonce = CheckableLazyObject(self._csp_nonce_post_response)
        return response


# (browsable API answer?) -> the (header, text) pairs every plain response carries.
_CACHED: dict[bool, tuple[tuple[str, str], ...]] = {}

_PER_RESPONSE = tuple(
    f"_csp_{name}{suffix}"
    for name in ("config", "update", "replace", "exempt")
    for suffix in ("", "_ro")
)


def _browsable(response: Any) -> bool:
    return isinstance(getattr(response, "accepted_renderer", None), BrowsableAPIRenderer)


def _plain(request: Any, response: Any) -> bool:
    if getattr(request, "_csp_nonce", None) is not None:
        return False
    if settings.DEBUG and response.status_code in (500, 404):
        return False
    if any(getattr(response, name, None) is not None for name in _PER_RESPONSE):
        return False
    return not _excludes_prefixes()


# Whether either policy excludes URL prefixes (then the library decides, per path): read
# once per settings, as the header texts are. Asking the settings for the report-only
# policy, unset here, costs an AttributeError raised and caught for every response.
_EXCLUDES: list[bool] = []


def _excludes_prefixes() -> bool:
    if not _EXCLUDES:
        _EXCLUDES.append(
            any(
                (getattr(settings, name, None) or {}).get("EXCLUDE_URL_PREFIXES")
                for name in ("CONTENT_SECURITY_POLICY", "CONTENT_SECURITY_POLICY_REPORT_ONLY")
            )
        )
    return _EXCLUDES[0]


@receiver(setting_changed)
def _forget(setting: str, **kwargs: Any) -> None:
    if setting.startswith("CONTENT_SECURITY_POLICY"):
        _CACHED.clear()
        _EXCLUDES.clear()
