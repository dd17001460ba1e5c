"""The RA pages' one write that is not a recovery step: recording an audit export."""

from __future__ import annotations

from typing import Any

from accounts.models import User
from enrollment.audit import audit_record


def audit_export_record(
    *,
    actor: User,
    fmt: str,
    filters: dict[str, Any],
    source_address: str | None = None,
) -> None:
    """Reading the whole trail out is itself a privileged action: it leaves an event."""
    audit_record(
        action="audit.export",
        actor=actor,
        source_address=source_address,
        detail={"format": fmt, "filters": filters},
    )
