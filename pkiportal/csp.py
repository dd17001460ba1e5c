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

from typing import Any

from csp.constants import UNSAFE_INLINE
from csp.middleware import CSPMiddleware, PolicyParts

from rest_framework.renderers import BrowsableAPIRenderer


class PortalCSPMiddleware(CSPMiddleware):
    def get_policy_parts(
        self, request: Any, response: Any, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        if isinstance(getattr(response, "accepted_renderer", None), BrowsableAPIRenderer):
            parts.update = {**(parts.update or {}), "style-src-attr": [UNSAFE_INLINE]}
        return parts
