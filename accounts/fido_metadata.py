"""FIDO metadata (README "Second factor", "FIDO metadata"): the security-key models of the
last imported FIDO Metadata Service BLOB (pkiportal.fido_mds reads and verifies it), by
AAGUID: their names, for the pages that show a key's model, which of them the FIDO
Alliance reports as compromised, whose keys accounts.models.model_allowed no longer counts,
and each model's attestation roots, which a new key claiming the model must chain to
(model_anchors, for accounts.passkeys). Without an import nothing changes: no names, no model
is compromised, no model's roots are asked for.

The compromised models are read once per request (request_started/request_finished set and
drop the memo), not once per key: the account page weighs each of a person's keys, and the
middleware the session's. Outside a request (a command, a task) each question reads anew.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.models import FidoMetadataImport, FidoModel, WebAuthnDevice
from enrollment.audit import audit_record
from enrollment.health import OK, WARN
from pkiportal.attestation import read_anchors
from pkiportal.fido_mds import COMPROMISE_WORDS, COMPROMISED, Blob, MetadataError

logger = logging.getLogger(__name__)

# aaguid -> FidoModel of the compromised models, for the request being answered; None
# outside a request.
_REQUEST_MEMO: ContextVar[dict[str, FidoModel] | None] = ContextVar(
    "pkiportal_fido_compromised", default=None
)
_UNREAD: dict[str, FidoModel] = {}  # a request's memo before its first question


def request_started(**kwargs: Any) -> None:
    _REQUEST_MEMO.set(_UNREAD)


def request_finished(**kwargs: Any) -> None:
    _REQUEST_MEMO.set(None)


def compromised_models() -> dict[str, FidoModel]:
    """The models whose latest status report is a compromise (fido_mds.COMPROMISED), by
    lower-case AAGUID; read at most once per request."""
    memo = _REQUEST_MEMO.get()
    if memo is not None and memo is not _UNREAD:
        return memo
    found = {
        model.aaguid: model
        for model in FidoModel.objects.filter(status__in=COMPROMISED).defer("attestation_roots")
    }
    if memo is not None:
        _REQUEST_MEMO.set(found)
    return found


def models_named(aaguids: Iterable[str]) -> dict[str, FidoModel]:
    """The imported models of these AAGUIDs (one query, none for no AAGUID), by lower-case
    AAGUID: a page's names, read together rather than per row."""
    wanted = {aaguid.lower() for aaguid in aaguids if aaguid}
    if not wanted:
        return {}
    found = FidoModel.objects.filter(aaguid__in=wanted).defer("attestation_roots")
    return {model.aaguid: model for model in found}


def label(aaguid: str, models: dict[str, FidoModel]) -> str:
    """A model as pages show it: "YubiKey 5 Series (cb69481e-…)" where the metadata names
    it, else its AAGUID alone."""
    model = models.get(aaguid.lower())
    if model is None or not model.description:
        return aaguid
    return f"{model.description} ({aaguid})"


def compromise(model: FidoModel | None) -> str:
    """What the FIDO Alliance reports of a compromised model, in words ("" for any other),
    to follow "The FIDO Alliance reports this model as"."""
    if model is None or model.status not in COMPROMISED:
        return ""
    # The words are pkiportal.fido_mds's, looked up in the reader's language where they
    # are in the catalogue (English where not).
    word, why = (_(text) for text in COMPROMISE_WORDS[model.status])
    values = {"word": word, "status": model.status, "why": why}
    if model.status_date:
        # Translators: "compromised (USER_VERIFICATION_BYPASS since 2025-03-01): its PIN or
        # fingerprint check can be bypassed"; status stays the FIDO Alliance's code.
        return _("%(word)s (%(status)s since %(date)s): %(why)s") % {
            **values,
            "date": f"{model.status_date:%Y-%m-%d}",
        }
    return _("%(word)s (%(status)s): %(why)s") % values


@dataclass(frozen=True)
class ModelAnchors:
    """A model's attestation roots as the imported metadata lists them: those that could be
    read (trust anchors: roots, intermediate CAs or batch certificates, as MDS3 allows), and
    how many listed could not."""

    aaguid: str
    anchors: list[x509.Certificate]
    unreadable: int


def model_anchors(aaguid: str) -> ModelAnchors | None:
    """The attestation roots the imported metadata lists for this model (one query), or None
    where it has no entry for the model or the entry lists none: then the configured roots
    alone speak for a key claiming it, as before the metadata. A listed root that cannot be
    read (not base64, not a certificate: the row's word, not the verified BLOB's) is no
    anchor and is logged as a warning; with none readable, no key can prove the model, which
    is safer than taking the key's word for it."""
    model = (
        FidoModel.objects.filter(aaguid=aaguid.lower()).only("aaguid", "attestation_roots").first()
    )
    if model is None or not model.attestation_roots:
        return None
    anchors, problems = read_anchors(model.attestation_roots)
    for problem in problems:
        logger.warning(
            "FIDO metadata: an attestation root of model %s cannot be used (%s): it is no "
            "anchor, and a new key claiming the model must chain to another of its roots "
            "(refused if none is left); import a current BLOB",
            model.aaguid,
            problem,
        )
    return ModelAnchors(aaguid=model.aaguid, anchors=anchors, unreadable=len(problems))


@dataclass(frozen=True)
class KeyRow:
    """A person's key with its model as the metadata knows it, for a page's list."""

    key: WebAuthnDevice
    model: FidoModel | None
    compromise: str  # compromise(model)


def key_rows(keys: Iterable[WebAuthnDevice]) -> list[KeyRow]:
    """Each key with its model: one query for the whole list."""
    keys = list(keys)
    named = models_named(key.aaguid for key in keys)
    rows = []
    for key in keys:
        model = named.get(key.aaguid.lower())
        rows.append(KeyRow(key=key, model=model, compromise=compromise(model)))
    return rows


class MetadataRollback(MetadataError):
    """A BLOB no newer than the one imported: refused, whatever it says."""


@dataclass(frozen=True)
class Imported:
    record: FidoMetadataImport
    previous: int | None  # the serial number it replaced
    compromised: int  # models reported compromised
    keys_affected: int  # people's attested keys of those models


def metadata_import(*, blob: Blob, source: str) -> Imported:
    """Replace the imported models with ``blob``'s, in one transaction, audited
    (fido_metadata.import, by the system, saying whether and with which CRLs the chain's
    revocation was checked). Refused (MetadataRollback) unless its serial number exceeds
    the last import's: an attacker, or a stale mirror, could otherwise bring back a BLOB
    from before a model was reported compromised."""
    with transaction.atomic():
        # Two imports at once: the second waits, then finds the first's number.
        latest = FidoMetadataImport.objects.select_for_update().order_by("-number").first()
        if latest is not None and blob.number <= latest.number:
            raise MetadataRollback(
                f"This BLOB's serial number ({blob.number}) is not greater than that of the "
                f"imported one ({latest.number}): an older or the same BLOB is refused, so "
                "that metadata never goes back. Download the current BLOB."
            )
        FidoModel.objects.all().delete()
        FidoModel.objects.bulk_create(
            FidoModel(
                aaguid=entry.aaguid,
                description=entry.description,
                status=entry.status,
                status_date=entry.status_date,
                attestation_roots=list(entry.attestation_roots),
            )
            for entry in blob.entries
        )
        record = FidoMetadataImport.objects.create(
            number=blob.number, next_update=blob.next_update, models_count=len(blob.entries)
        )
        compromised = sorted(e.aaguid for e in blob.entries if e.status in COMPROMISED)
        keys_affected = WebAuthnDevice.objects.filter(attested=True, aaguid__in=compromised).count()
        audit_record(
            action="fido_metadata.import",
            target=record,
            detail={
                "number": blob.number,
                "previous": latest.number if latest is not None else None,
                "next_update": blob.next_update.isoformat(),
                "models": len(blob.entries),
                "compromised": compromised,
                "keys_affected": keys_affected,
                "signer": blob.signer,
                "source": source[:200],
                # False: the operator imported without CRLs (--no-revocation-check).
                "revocation_checked": blob.revocation is not None,
                "crls": [
                    {
                        "certificate": used.certificate,
                        "issuer": used.issuer,
                        "number": used.number,
                        "this_update": used.this_update.isoformat(),
                    }
                    for used in blob.revocation or ()
                ],
            },
        )
    _REQUEST_MEMO.set(None if _REQUEST_MEMO.get() is None else _UNREAD)
    logger.info("FIDO metadata no. %s imported: %s models", blob.number, len(blob.entries))
    return Imported(
        record=record,
        previous=latest.number if latest is not None else None,
        compromised=len(compromised),
        keys_affected=keys_affected,
    )


def metadata_check() -> dict[str, Any]:
    """/health/'s "fido_metadata": a warning once the imported BLOB is past its nextUpdate
    (a compromise reported since would go unseen); fine without an import. One query."""
    latest = (
        FidoMetadataImport.objects.order_by("-number")
        .values("number", "next_update", "imported_at")
        .first()
    )
    if latest is None:
        return {"status": OK, "mode": "not imported"}
    result = {
        "status": OK,
        "number": latest["number"],
        "next_update": latest["next_update"].isoformat(),
        "imported_at": latest["imported_at"].isoformat(),
    }
    if latest["next_update"] < timezone.now().date():
        result["status"] = WARN
        result["problems"] = [
            f"The FIDO metadata (no. {latest['number']}) was due to be replaced on "
            f"{latest['next_update']:%Y-%m-%d}: download the current BLOB and run "
            "manage.py import_fido_metadata."
        ]
    return result
