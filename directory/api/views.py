"""The lookup API a mail gateway or client plug-in calls: GET /api/v1/directory/."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from directory import selectors
from directory.api.serializers import DirectoryCertificateOut, LookupIn, LookupOut
from directory.permissions import DirectoryReadable
from directory.selectors import MAX_PAGE_SIZE


def _help(field: str) -> Any:
    """An input field's help text, which doubles as its OpenAPI description: a lazy text,
    worded in the language the schema is rendered in."""
    return LookupIn().fields[field].help_text or ""


PARAMETERS = [
    OpenApiParameter("q", OpenApiTypes.STR, description=_help("q")),
    OpenApiParameter("email", OpenApiTypes.EMAIL, description=_help("email")),
    OpenApiParameter(
        "include_inactive",
        OpenApiTypes.BOOL,
        description=_help("include_inactive"),
    ),
    OpenApiParameter("after", OpenApiTypes.STR, description=_help("after")),
    OpenApiParameter(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
        description=_help("limit"),
    ),
]


class DirectoryLookupView(APIView):
    permission_classes = [DirectoryReadable]

    @extend_schema(
        operation_id="directory_lookup",
        summary="Find certificates by e-mail address or search people",
        description=(
            "`?email=` gives the certificates to encrypt to that address: valid, not "
            "revoked, encryption-capable (encryption or dual-use), for their holder's "
            "current address, newest first, each with its PEM and chain. `?q=` searches "
            "people by name, e-mail or unit and gives their valid certificates (all "
            "purposes; `include_inactive` adds expired and revoked ones), a page of people "
            "at a time, following `next`. Each certificate says whether a sender can "
            "encrypt to it (`usable_for_encryption`: a signing-only one cannot, nor one for "
            "an address its holder no longer has, `for_current_address` false) and which of "
            "its holder's to encrypt to (`recommended_for_encryption`: the newest usable "
            "one). Open to anonymous callers only when PKIPORTAL_DIRECTORY_PUBLIC is true."
        ),
        parameters=PARAMETERS,
        responses={
            200: LookupOut,
            400: OpenApiResponse(OpenApiTypes.OBJECT, description="Bad query: `{field: [..]}`."),
            401: OpenApiResponse(OpenApiTypes.OBJECT, description="Not signed in."),
            403: OpenApiResponse(OpenApiTypes.OBJECT, description="Not signed in."),
        },
        tags=["directory"],
    )
    def get(self, request: Request) -> Response:
        params = LookupIn(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        next_url = None
        if "email" in data:
            certificates = selectors.certificates_for_email(email=data["email"])
        else:
            try:
                page = selectors.certificate_search(
                    query=data["q"],
                    include_inactive=data["include_inactive"],
                    after=data.get("after"),
                    limit=data["limit"],
                )
            except selectors.PageGone as exc:
                raise ValidationError({"after": [str(exc)]}) from exc
            certificates = page.certificates
            if page.next_after is not None:
                query = request.query_params.copy()
                query["after"] = page.next_after
                next_url = request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
        context = {"request": request, "chains": selectors.ca_chain_pems()}
        # The stubs type a serializer's instance as one object, not many=True's list.
        out = DirectoryCertificateOut(certificates, many=True, context=context)  # type: ignore[arg-type]
        results = out.data
        return Response({"next": next_url, "results": results})
