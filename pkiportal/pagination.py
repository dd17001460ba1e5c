"""Bounded limit/offset pages for every list in the API.

A module of its own: DRF imports DEFAULT_PAGINATION_CLASS during its system checks, and
pkiportal.api imports rest_framework.views, whose APIView needs pkiportal.api's renderer:
one module would import itself half-made.
"""

from __future__ import annotations

import re
from typing import Any

from rest_framework import pagination
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request

# ASCII digits only: int() would also take " 5", "+5", "1_0" and other scripts' digits.
_WHOLE_NUMBER = re.compile(r"[0-9]{1,19}")


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    """DRF's limit/offset pages, bounded, with a 400 naming a bad parameter.

    DRF ignores a bad value silently and hands a huge one to the database, which fails
    with a 500. A page holds at most 100 rows: twice the default, enough for scripts that
    walk `next`, while one request can no longer read and serialise a whole table.
    Offsets stop at 2**63 - 1, the largest the databases' SQL OFFSET takes.
    """

    max_limit = 100
    max_offset = 2**63 - 1

    def get_limit(self, request: Request) -> int | None:
        """None (no PAGE_SIZE and no ?limit=) leaves the list unpaginated, as in DRF."""
        limit = self._whole_number(request, self.limit_query_param, 1, self.max_limit)
        return self.default_limit if limit is None else limit

    def get_offset(self, request: Request) -> int:
        return self._whole_number(request, self.offset_query_param, 0, self.max_offset) or 0

    @staticmethod
    def _whole_number(request: Request, name: str, low: int, high: int) -> int | None:
        value = request.query_params.get(name)
        if value is None:
            return None
        if not _WHOLE_NUMBER.fullmatch(value) or not low <= int(value) <= high:
            raise ValidationError({name: [f"Give a whole number from {low} to {high}."]})
        return int(value)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = super().get_schema_operation_parameters(view)
        bounds = {
            self.limit_query_param: {"minimum": 1, "maximum": self.max_limit},
            self.offset_query_param: {"minimum": 0, "maximum": self.max_offset},
        }
        for parameter in parameters:
            parameter["schema"].update(bounds[parameter["name"]])
        return parameters
